/* text/strmap.h - a byte-string -> int32 hash map (open addressing, linear
 * probing, keys copied into one arena). Used for the vocabulary, added-token
 * contents and the BPE cache. Not thread-safe; the owner serialises access.
 */
#ifndef DR_TEXT_STRMAP_H
#define DR_TEXT_STRMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct dr_strmap_slot {
    uint32_t key_off; /* offset of the key in `keys` */
    uint32_t key_len; /* key length in bytes; UINT32_MAX marks an empty slot */
    uint32_t hash;    /* low 32 bits of the key's hash */
    int32_t val;
} dr_strmap_slot;

typedef struct dr_strmap {
    dr_strmap_slot *slots; /* cap slots, cap a power of two (0 when empty) */
    size_t cap;            /* number of slots */
    size_t n;              /* number of keys */
    char *keys;            /* key bytes, each followed by a NUL */
    size_t keys_len, keys_cap;
} dr_strmap;

/* 64-bit hash of a byte string. Can't fail. */
uint64_t dr_hash_bytes(const void *p, size_t len);

/* Set key -> val (replacing an existing value). Returns false only when
 * memory runs out or the arena would pass 4 GiB (map unchanged). */
bool dr_strmap_put(dr_strmap *m, const void *key, size_t len, int32_t val);

/* Make room for n keys and key_bytes bytes of keys without rehashing.
 * false only when memory runs out (map unchanged). */
bool dr_strmap_reserve(dr_strmap *m, size_t n, size_t key_bytes);

/* The value of key, or NULL if absent. The pointer stays valid until the
 * next put/clear. Can't fail. */
int32_t *dr_strmap_get(const dr_strmap *m, const void *key, size_t len);

/* Stored copy of the key of a value pointer returned by get (NUL-terminated). */
const char *dr_strmap_key_of(const dr_strmap *m, const int32_t *val, size_t *len);

/* Remove every key, keeping the allocations. Can't fail. */
void dr_strmap_clear(dr_strmap *m);

/* Free the map's memory and zero it. Accepts a zeroed map. */
void dr_strmap_free(dr_strmap *m);

#endif
