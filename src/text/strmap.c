/* text/strmap.c - open-addressing byte-string hash map (see strmap.h).
 *
 * Load factor stays below 1/2; keys live in a single growable arena so a
 * 150k-entry vocabulary costs two allocations, not 150k.
 */
#include "text/strmap.h"

#include <stdlib.h>
#include <string.h>

#define EMPTY UINT32_MAX

static uint64_t load64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static uint64_t mix64(uint64_t h) {
    h ^= h >> 32;
    h *= 0xD6E8FEB86659FD93ULL;
    h ^= h >> 32;
    h *= 0xD6E8FEB86659FD93ULL;
    h ^= h >> 32;
    return h;
}

uint64_t dr_hash_bytes(const void *p, size_t len) {
    const uint8_t *s = p;
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ (uint64_t)len;
    while (len >= 8) {
        h = (h ^ load64(s)) * 0xFF51AFD7ED558CCDULL;
        h ^= h >> 29;
        s += 8;
        len -= 8;
    }
    uint64_t tail = 0;
    for (size_t i = 0; i < len; i++)
        tail |= (uint64_t)s[i] << (8 * i);
    h = (h ^ tail) * 0xC4CEB9FE1A85EC53ULL;
    return mix64(h);
}

static bool resize_slots(dr_strmap *m, size_t ncap) {
    dr_strmap_slot *ns = malloc(ncap * sizeof *ns);
    if (!ns)
        return false;
    for (size_t i = 0; i < ncap; i++)
        ns[i].key_len = EMPTY;
    for (size_t i = 0; i < m->cap; i++) {
        dr_strmap_slot *s = &m->slots[i];
        if (s->key_len == EMPTY)
            continue;
        size_t j = s->hash & (ncap - 1);
        while (ns[j].key_len != EMPTY)
            j = (j + 1) & (ncap - 1);
        ns[j] = *s;
    }
    free(m->slots);
    m->slots = ns;
    m->cap = ncap;
    return true;
}

static dr_strmap_slot *find(const dr_strmap *m, const void *key, size_t len, uint32_t h) {
    if (!m->cap)
        return NULL;
    size_t j = h & (m->cap - 1);
    for (;;) {
        dr_strmap_slot *s = &m->slots[j];
        if (s->key_len == EMPTY)
            return s;
        if (s->hash == h && s->key_len == len &&
            (len == 0 || memcmp(m->keys + s->key_off, key, len) == 0))
            return s;
        j = (j + 1) & (m->cap - 1);
    }
}

static bool grow_slots(dr_strmap *m) { return resize_slots(m, m->cap ? m->cap * 2 : 64); }

bool dr_strmap_reserve(dr_strmap *m, size_t n, size_t key_bytes) {
    size_t want = 64;
    while (want < 2 * n)
        want *= 2;
    if (want > m->cap && !resize_slots(m, want))
        return false;
    if (key_bytes > m->keys_cap) {
        char *nk = realloc(m->keys, key_bytes);
        if (!nk)
            return false;
        m->keys = nk;
        m->keys_cap = key_bytes;
    }
    return true;
}

bool dr_strmap_put(dr_strmap *m, const void *key, size_t len, int32_t val) {
    uint32_t h = (uint32_t)dr_hash_bytes(key, len);
    dr_strmap_slot *s = find(m, key, len, h);
    if (s && s->key_len != EMPTY) {
        s->val = val;
        return true;
    }
    if ((m->n + 1) * 2 > m->cap) {
        if (!grow_slots(m))
            return false;
    }
    if (len >= EMPTY || m->keys_len + len + 1 > (size_t)UINT32_MAX)
        return false;
    if (m->keys_len + len + 1 > m->keys_cap) {
        size_t nc = m->keys_cap ? m->keys_cap : 4096;
        while (nc < m->keys_len + len + 1)
            nc *= 2;
        char *nk = realloc(m->keys, nc);
        if (!nk)
            return false;
        m->keys = nk;
        m->keys_cap = nc;
    }
    s = find(m, key, len, h);
    s->key_off = (uint32_t)m->keys_len;
    s->key_len = (uint32_t)len;
    s->hash = h;
    s->val = val;
    if (len)
        memcpy(m->keys + m->keys_len, key, len);
    m->keys[m->keys_len + len] = '\0';
    m->keys_len += len + 1;
    m->n++;
    return true;
}

int32_t *dr_strmap_get(const dr_strmap *m, const void *key, size_t len) {
    dr_strmap_slot *s = find(m, key, len, (uint32_t)dr_hash_bytes(key, len));
    return s && s->key_len != EMPTY ? &s->val : NULL;
}

const char *dr_strmap_key_of(const dr_strmap *m, const int32_t *val, size_t *len) {
    const dr_strmap_slot *s =
        (const dr_strmap_slot *)((const char *)val - offsetof(dr_strmap_slot, val));
    if (len)
        *len = s->key_len;
    return m->keys + s->key_off;
}

void dr_strmap_clear(dr_strmap *m) {
    for (size_t i = 0; i < m->cap; i++)
        m->slots[i].key_len = EMPTY;
    m->n = 0;
    m->keys_len = 0;
}

void dr_strmap_free(dr_strmap *m) {
    if (!m)
        return;
    free(m->slots);
    free(m->keys);
    memset(m, 0, sizeof *m);
}
