/* text/bpe.c - the BPE model: turns one pre-tokenized piece into ids by
 * applying merges in rank order, exactly as tokenizers' Word::merge_all:
 * a min-heap of candidate merges keyed by (rank, position) over a doubly
 * linked list of symbols, so a piece of n bytes costs O(n log n) even for a
 * megabyte without spaces. Results of pieces up to 256 bytes are cached
 * (the cache is cleared when it grows past a bound).
 */
#include "text/tok_internal.h"
#include "text/bytelevel.h"
#include "text/utf8.h"
#include "util/status.h"

#include <stdlib.h>
#include <string.h>

#define MERGE_EMPTY UINT64_MAX
#define CACHE_MAX_PIECE 256       /* longer pieces are not cached */
#define CACHE_MAX_ENTRIES 200000  /* clear the cache beyond this many pieces */
#define CACHE_MAX_IDS (4u << 20)  /* ... or this many cached ids */

/* ---- pair table ------------------------------------------------------------ */

static uint64_t pair_hash(uint64_t k) {
    k ^= k >> 31;
    k *= 0x7FB5D329728EA185ULL;
    k ^= k >> 27;
    k *= 0x81DADEF4BC2DD44DULL;
    k ^= k >> 33;
    return k;
}

static bool merges_grow(dr_bpe *b) {
    size_t nc = b->merges_cap ? b->merges_cap * 2 : 1024;
    dr_merge_slot *ns = malloc(nc * sizeof *ns);
    if (!ns)
        return false;
    for (size_t i = 0; i < nc; i++)
        ns[i].key = MERGE_EMPTY;
    for (size_t i = 0; i < b->merges_cap; i++) {
        if (b->merges[i].key == MERGE_EMPTY)
            continue;
        size_t j = pair_hash(b->merges[i].key) & (nc - 1);
        while (ns[j].key != MERGE_EMPTY)
            j = (j + 1) & (nc - 1);
        ns[j] = b->merges[i];
    }
    free(b->merges);
    b->merges = ns;
    b->merges_cap = nc;
    return true;
}

bool dr_bpe_reserve_merges(dr_bpe *b, size_t n) {
    while (b->merges_cap < 2 * n)
        if (!merges_grow(b))
            return false;
    return true;
}

bool dr_bpe_add_merge(dr_bpe *b, int32_t left, int32_t right, int32_t rank, int32_t id) {
    if ((b->n_merges + 1) * 2 > b->merges_cap && !merges_grow(b))
        return false;
    uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
    size_t j = pair_hash(key) & (b->merges_cap - 1);
    while (b->merges[j].key != MERGE_EMPTY && b->merges[j].key != key)
        j = (j + 1) & (b->merges_cap - 1);
    if (b->merges[j].key == MERGE_EMPTY)
        b->n_merges++;
    b->merges[j] = (dr_merge_slot){key, rank, id};
    return true;
}

static const dr_merge_slot *merge_get(const dr_bpe *b, int32_t left, int32_t right) {
    if (!b->merges_cap)
        return NULL;
    uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
    size_t j = pair_hash(key) & (b->merges_cap - 1);
    for (;;) {
        const dr_merge_slot *s = &b->merges[j];
        if (s->key == key)
            return s;
        if (s->key == MERGE_EMPTY)
            return NULL;
        j = (j + 1) & (b->merges_cap - 1);
    }
}

/* ---- candidate heap (min on rank, then position) --------------------------- */

/* Heap operations and sift steps done by this thread: a deterministic
 * measure of the merge work, which tests use to check it stays n log n. */
static _Thread_local uint64_t g_bpe_steps;

uint64_t dr_bpe_steps(void) { return g_bpe_steps; }

static bool cand_less(dr_bpe_cand a, dr_bpe_cand c) {
    return a.rank != c.rank ? a.rank < c.rank : a.pos < c.pos;
}

static bool heap_push(dr_bpe *b, size_t *n, dr_bpe_cand c) {
    if (*n == b->heap_cap) {
        size_t nc = b->heap_cap ? b->heap_cap * 2 : 256;
        dr_bpe_cand *nh = realloc(b->heap, nc * sizeof *nh);
        if (!nh)
            return false;
        b->heap = nh;
        b->heap_cap = nc;
    }
    dr_bpe_cand *h = b->heap;
    size_t i = (*n)++;
    g_bpe_steps++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        g_bpe_steps++;
        if (!cand_less(c, h[p]))
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = c;
    return true;
}

static dr_bpe_cand heap_pop(dr_bpe *b, size_t *n) {
    dr_bpe_cand *h = b->heap, top = h[0], last = h[--(*n)];
    size_t i = 0;
    g_bpe_steps++;
    for (;;) {
        size_t l = 2 * i + 1;
        if (l >= *n)
            break;
        g_bpe_steps++;
        size_t m = l + 1 < *n && cand_less(h[l + 1], h[l]) ? l + 1 : l;
        if (!cand_less(h[m], last))
            break;
        h[i] = h[m];
        i = m;
    }
    h[i] = last;
    return top;
}

/* Queue the merge of symbol pos with its right neighbour, if there is one. */
static bool queue_pair(dr_bpe *b, size_t *hn, int32_t pos) {
    int32_t nx = b->sym[pos].next;
    if (nx < 0)
        return true;
    const dr_merge_slot *m = merge_get(b, b->sym[pos].id, b->sym[nx].id);
    return !m || heap_push(b, hn, (dr_bpe_cand){m->rank, pos, m->id});
}

/* tokenizers Word::merge_all (without dropout). */
static bool merge_all(dr_bpe *b, int32_t n) {
    size_t hn = 0;
    for (int32_t i = 0; i + 1 < n; i++)
        if (!queue_pair(b, &hn, i))
            return false;
    dr_bpe_sym *sym = b->sym;
    while (hn > 0) {
        dr_bpe_cand top = heap_pop(b, &hn);
        dr_bpe_sym *cur = &sym[top.pos];
        if (cur->len == 0 || cur->next < 0)
            continue;
        int32_t nx = cur->next;
        const dr_merge_slot *m = merge_get(b, cur->id, sym[nx].id);
        if (!m || m->id != top.id)
            continue; /* stale entry: a neighbour changed since it was queued */
        cur->id = top.id;
        cur->len += sym[nx].len;
        cur->next = sym[nx].next;
        sym[nx].len = 0;
        if (cur->next >= 0)
            sym[cur->next].prev = top.pos;
        if (cur->prev >= 0 && !queue_pair(b, &hn, cur->prev))
            return false;
        if (!queue_pair(b, &hn, top.pos))
            return false;
    }
    return true;
}

/* ---- symbols from a piece ---------------------------------------------------- */

static bool sym_reserve(dr_bpe *b, size_t n) {
    if (n <= b->sym_cap)
        return true;
    size_t nc = b->sym_cap ? b->sym_cap : 256;
    while (nc < n)
        nc *= 2;
    dr_bpe_sym *ns = realloc(b->sym, nc * sizeof *ns);
    if (!ns)
        return false;
    b->sym = ns;
    b->sym_cap = nc;
    return true;
}

static void sym_add(dr_bpe *b, int32_t *n, int32_t id, int32_t len) {
    int32_t i = (*n)++;
    b->sym[i] = (dr_bpe_sym){id, i - 1, -1, len};
    if (i > 0)
        b->sym[i - 1].next = i;
}

/* One "character" of the model's input: the vocabulary string `c` of the
 * character (byte-level: the mapped code point). Mirrors BPE::merge_word. */
static void add_char(dr_bpe *b, int32_t *n, const char *c, size_t clen, int32_t id,
                     int32_t *unk_len) {
    if (id >= 0) {
        if (*unk_len) {
            sym_add(b, n, b->unk_id, *unk_len);
            *unk_len = 0;
        }
        sym_add(b, n, id, (int32_t)clen);
        return;
    }
    if (b->byte_fallback) {
        bool all = true;
        for (size_t i = 0; i < clen; i++)
            all = all && b->fallback_id[(uint8_t)c[i]] >= 0;
        if (all) {
            for (size_t i = 0; i < clen; i++)
                sym_add(b, n, b->fallback_id[(uint8_t)c[i]], 1);
            return;
        }
    }
    if (b->unk_id >= 0) {
        if (*unk_len && !b->fuse_unk) {
            sym_add(b, n, b->unk_id, *unk_len);
            *unk_len = 0;
        }
        *unk_len += (int32_t)clen;
    }
    /* no unk token: the character is dropped, as tokenizers does */
}

static bool reserve_ids(dr_tokens *out, size_t n) {
    if (out->n + n > out->cap || !out->ids) {
        size_t nc = out->cap ? out->cap : 64;
        while (nc < out->n + n)
            nc *= 2;
        int32_t *ni = realloc(out->ids, nc * sizeof *ni);
        if (!ni)
            return false;
        out->ids = ni;
        out->cap = nc;
    }
    return true;
}

static bool append_ids(dr_tokens *out, const int32_t *ids, size_t n) {
    if (!reserve_ids(out, n))
        return false;
    memcpy(out->ids + out->n, ids, n * sizeof *ids);
    out->n += n;
    return true;
}

static void cache_put(dr_bpe *b, const uint8_t *s, size_t len, const int32_t *ids, size_t n) {
    if (b->cache.n >= CACHE_MAX_ENTRIES || b->cache_n + n + 1 > CACHE_MAX_IDS) {
        dr_strmap_clear(&b->cache);
        b->cache_n = 0;
    }
    if (b->cache_n + n + 1 > b->cache_cap) {
        size_t nc = b->cache_cap ? b->cache_cap * 2 : 4096;
        while (nc < b->cache_n + n + 1)
            nc *= 2;
        int32_t *ni = realloc(b->cache_ids, nc * sizeof *ni);
        if (!ni)
            return; /* caching is optional */
        b->cache_ids = ni;
        b->cache_cap = nc;
    }
    if (!dr_strmap_put(&b->cache, s, len, (int32_t)b->cache_n))
        return;
    b->cache_ids[b->cache_n] = (int32_t)n;
    memcpy(b->cache_ids + b->cache_n + 1, ids, n * sizeof *ids);
    b->cache_n += n + 1;
}

dr_status dr_bpe_encode(dr_bpe *b, const uint8_t *s, size_t len, dr_tokens *out) {
    bool cacheable = len <= CACHE_MAX_PIECE;
    if (cacheable) {
        const int32_t *off = dr_strmap_get(&b->cache, s, len);
        if (off) {
            const int32_t *e = b->cache_ids + *off;
            if (!append_ids(out, e + 1, (size_t)e[0]))
                return DR_FAIL(DR_ERR_NOMEM, "bpe: out of memory");
            return DR_OK;
        }
    }
    if (len > (size_t)INT32_MAX / 2)
        return DR_FAIL(DR_ERR_ARG, "bpe: piece of %zu bytes is too long", len);
    if (!sym_reserve(b, len + 1))
        return DR_FAIL(DR_ERR_NOMEM, "bpe: out of memory");

    int32_t n = 0, unk_len = 0;
    char cbuf[4];
    if (b->byte_level) {
        for (size_t i = 0; i < len; i++) {
            int32_t id = b->byte_id[s[i]];
            if (id >= 0) {
                add_char(b, &n, NULL, 1, id, &unk_len);
            } else {
                size_t cl = dr_utf8_encode(dr_bytelevel_char(s[i]), (uint8_t *)cbuf);
                add_char(b, &n, cbuf, cl, -1, &unk_len);
            }
        }
    } else {
        size_t i = 0;
        while (i < len) {
            size_t cl;
            dr_utf8_decode(s + i, &cl);
            if (cl > len - i)
                cl = len - i;
            const int32_t *id = dr_strmap_get(&b->vocab, s + i, cl);
            add_char(b, &n, (const char *)s + i, cl, id ? *id : -1, &unk_len);
            i += cl;
        }
    }
    if (unk_len)
        sym_add(b, &n, b->unk_id, unk_len);

    if (b->ignore_merges && n > 1) {
        /* a piece that is itself a vocabulary entry is taken whole */
        size_t cap = b->byte_level ? len * 2 : len;
        char *w = malloc(cap ? cap : 1);
        if (!w)
            return DR_FAIL(DR_ERR_NOMEM, "bpe: out of memory");
        size_t wl = 0;
        if (b->byte_level) {
            for (size_t i = 0; i < len; i++)
                wl += dr_utf8_encode(dr_bytelevel_char(s[i]), (uint8_t *)w + wl);
        } else {
            memcpy(w, s, len);
            wl = len;
        }
        const int32_t *id = dr_strmap_get(&b->vocab, w, wl);
        free(w);
        if (id) {
            b->sym[0] = (dr_bpe_sym){*id, -1, -1, (int32_t)len};
            n = 1;
        }
    }

    if (!merge_all(b, n))
        return DR_FAIL(DR_ERR_NOMEM, "bpe: out of memory");

    /* the surviving symbols, in order */
    size_t n_out = 0;
    for (int32_t i = 0; i < n; i++)
        n_out += b->sym[i].len != 0;
    if (!reserve_ids(out, n_out))
        return DR_FAIL(DR_ERR_NOMEM, "bpe: out of memory");
    int32_t *ids = out->ids + out->n;
    for (int32_t i = 0, k = 0; i < n; i++)
        if (b->sym[i].len)
            ids[k++] = b->sym[i].id;
    out->n += n_out;
    if (cacheable)
        cache_put(b, s, len, ids, n_out);
    return DR_OK;
}

void dr_bpe_free(dr_bpe *b) {
    dr_strmap_free(&b->vocab);
    dr_strmap_free(&b->cache);
    free(b->merges);
    free(b->cache_ids);
    free(b->sym);
    free(b->heap);
    memset(b, 0, sizeof *b);
}
