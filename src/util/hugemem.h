/* util/hugemem.h - host memory on 2 MiB pages where Linux gives them, and an
 * arena of it for data that lives as long as its owner (the CPU backend's
 * copies of the weights).
 *
 * Why: streams that start at random places (a MoE layer's routed experts,
 * ~1-2 MB each) paid ~100 us per fresh region on the dev VM, and 2 MiB
 * pages cut both that and the streaming cost (docs/PERFORMANCE.md, CPU,
 * session 22; likely the page walks, two-dimensional under a hypervisor,
 * though that VM has no TLB counters to show it). Transparent huge pages
 * in "madvise" mode, the common default, give 2 MiB pages only to ranges
 * that ask. A refusal changes nothing but speed. */
#ifndef DR_UTIL_HUGEMEM_H
#define DR_UTIL_HUGEMEM_H

#include <stdbool.h>
#include <stddef.h>

#define DR_HUGE_PAGE ((size_t)2 << 20)

/* Whether asking can get 2 MiB pages: false when transparent huge pages are
 * off ("[never]" in /sys/kernel/mm/transparent_hugepage/enabled). */
bool dr_huge_available(void);

/* Ask for 2 MiB pages in the whole 2 MiB blocks of [p, p + n); returns p. */
void *dr_huge_advise(void *p, size_t n);

/* n bytes, not zeroed, 64-byte aligned (2 MiB aligned and advised when n is
 * at least two huge pages); free() them. NULL when out of memory. */
void *dr_huge_alloc(size_t n);

/* Allocations that are freed together. Zero-initialise (dr_arena a = {0}). */
typedef struct dr_arena_chunk dr_arena_chunk;
typedef struct dr_arena {
    dr_arena_chunk *head; /* newest first */
    size_t chunk_bytes;   /* size of a fresh chunk (0: DR_ARENA_CHUNK) */
} dr_arena;

#define DR_ARENA_CHUNK ((size_t)64 << 20)

/* n bytes, 64-byte aligned, from huge-page chunks; NULL when out of memory.
 * A request larger than a chunk gets a chunk of its own. */
void *dr_arena_alloc(dr_arena *a, size_t n);

/* Every allocation of a, at once; a is empty again. */
void dr_arena_free(dr_arena *a);

#endif
