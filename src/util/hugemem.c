/* util/hugemem.c - see hugemem.h. */
#include "util/hugemem.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

bool dr_huge_available(void) {
#ifdef MADV_HUGEPAGE
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    char line[128] = {0};
    if (f) {
        if (!fgets(line, sizeof line, f))
            line[0] = '\0';
        fclose(f);
    }
    return strstr(line, "[never]") == NULL;
#else
    return false;
#endif
}

void *dr_huge_advise(void *p, size_t n) {
#ifdef MADV_HUGEPAGE
    const uintptr_t a = ((uintptr_t)p + DR_HUGE_PAGE - 1) & ~(uintptr_t)(DR_HUGE_PAGE - 1);
    const uintptr_t b = ((uintptr_t)p + n) & ~(uintptr_t)(DR_HUGE_PAGE - 1);
    if (p && b > a)
        (void)madvise((void *)a, b - a, MADV_HUGEPAGE);
#else
    (void)n;
#endif
    return p;
}

void *dr_huge_alloc(size_t n) {
    const size_t align = n >= 2 * DR_HUGE_PAGE ? DR_HUGE_PAGE : 64;
    if (n > SIZE_MAX - align)
        return NULL;
    return dr_huge_advise(aligned_alloc(align, (n + align - 1) / align * align), n);
}

struct dr_arena_chunk {
    dr_arena_chunk *next;
    char *base;
    size_t size, used;
};

void *dr_arena_alloc(dr_arena *a, size_t n) {
    if (n > SIZE_MAX / 2)
        return NULL;
    n = (n + 63) & ~(size_t)63;
    dr_arena_chunk *c = a->head;
    if (!c || c->size - c->used < n) { /* the rest of the old chunk stays unused (untouched pages cost nothing) */
        const size_t want = a->chunk_bytes ? a->chunk_bytes : DR_ARENA_CHUNK;
        const size_t size = n > want ? (n + DR_HUGE_PAGE - 1) / DR_HUGE_PAGE * DR_HUGE_PAGE : want;
        c = malloc(sizeof *c);
        char *base = c ? dr_huge_alloc(size) : NULL;
        if (!base) {
            free(c);
            return NULL;
        }
        *c = (dr_arena_chunk){.next = a->head, .base = base, .size = size};
        a->head = c;
    }
    void *p = c->base + c->used;
    c->used += n;
    return p;
}

void dr_arena_free(dr_arena *a) {
    while (a->head) {
        dr_arena_chunk *c = a->head;
        a->head = c->next;
        free(c->base);
        free(c);
    }
}
