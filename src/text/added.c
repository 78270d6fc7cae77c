/* text/added.c - added tokens: a byte trie over their contents and the
 * matching rules of tokenizers' AddedVocabulary::find_matches.
 *
 * Matching is leftmost-longest and non-overlapping (as the aho-corasick
 * automaton tokenizers builds): scan for the first position where some
 * token starts, take the longest token there, continue after it. A match
 * that is rejected (single_word not satisfied, or a special token outside
 * the trusted spans) is skipped and its text stays ordinary text. Accepted
 * matches grow over whitespace on the left (lstrip) or right (rstrip).
 */
#include "text/tok_internal.h"
#include "text/utf8.h"
#include "util/status.h"

#include <stdlib.h>
#include <string.h>

/* ---- trie ------------------------------------------------------------------ */

static int32_t new_node(dr_trie *t, uint8_t byte) {
    if (t->n == t->cap) {
        size_t nc = t->cap ? t->cap * 2 : 64;
        dr_trie_node *nn = realloc(t->nodes, nc * sizeof *nn);
        if (!nn)
            return -1;
        t->nodes = nn;
        t->cap = nc;
    }
    dr_trie_node *nd = &t->nodes[t->n];
    nd->child = nd->sibling = nd->token = -1;
    nd->byte = byte;
    return (int32_t)t->n++;
}

bool dr_trie_add(dr_trie *t, const char *s, size_t len, int32_t ti) {
    if (len == 0)
        return true;
    if (t->n == 0) {
        for (int i = 0; i < 256; i++)
            t->root_child[i] = -1;
        if (new_node(t, 0) < 0)
            return false;
    }
    const uint8_t *u = (const uint8_t *)s;
    int32_t cur = t->root_child[u[0]];
    if (cur < 0) {
        cur = new_node(t, u[0]);
        if (cur < 0)
            return false;
        t->root_child[u[0]] = cur;
        t->first[u[0] >> 3] |= (uint8_t)(1u << (u[0] & 7));
    }
    for (size_t i = 1; i < len; i++) {
        int32_t c = t->nodes[cur].child;
        while (c >= 0 && t->nodes[c].byte != u[i])
            c = t->nodes[c].sibling;
        if (c < 0) {
            c = new_node(t, u[i]);
            if (c < 0)
                return false;
            t->nodes[c].sibling = t->nodes[cur].child;
            t->nodes[cur].child = c;
        }
        cur = c;
    }
    /* the same content twice: the later token wins (as a HashMap insert) */
    t->nodes[cur].token = ti;
    t->n_tokens++;
    return true;
}

void dr_trie_free(dr_trie *t) {
    free(t->nodes);
    memset(t, 0, sizeof *t);
}

/* Longest token starting at s[0]; returns its length (0: none), *ti its index. */
static size_t longest_at(const dr_trie *t, const uint8_t *s, size_t len, int32_t *ti) {
    size_t best = 0;
    int32_t cur = t->root_child[s[0]];
    size_t i = 1;
    while (cur >= 0) {
        if (t->nodes[cur].token >= 0) {
            best = i;
            *ti = t->nodes[cur].token;
        }
        if (i == len)
            break;
        int32_t c = t->nodes[cur].child;
        while (c >= 0 && t->nodes[c].byte != s[i])
            c = t->nodes[c].sibling;
        cur = c;
        i++;
    }
    return best;
}

/* ---- whitespace / word tests (Rust regex \s and \w semantics) -------------- */

/* Code point ending at s[0..end) (end >= 1, valid UTF-8). */
static uint32_t last_cp(const uint8_t *s, size_t end, size_t *start) {
    size_t i = end - 1;
    while (i > 0 && (s[i] & 0xC0) == 0x80)
        i--;
    size_t n;
    *start = i;
    return dr_utf8_decode(s + i, &n);
}

static size_t trailing_space_start(const uint8_t *s, size_t end) {
    while (end > 0) {
        size_t st;
        if (!dr_unicode_is_space(last_cp(s, end, &st)))
            break;
        end = st;
    }
    return end;
}

static size_t leading_space_len(const uint8_t *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        size_t n;
        if (!dr_unicode_is_space(dr_utf8_decode(s + i, &n)))
            break;
        i += n;
    }
    return i;
}

/* ---- matching ---------------------------------------------------------------- */

static bool push_match(dr_matches *out, size_t start, size_t stop, int32_t id) {
    if (out->n == out->cap) {
        size_t nc = out->cap ? out->cap * 2 : 16;
        dr_match *nm = realloc(out->m, nc * sizeof *nm);
        if (!nm)
            return false;
        out->m = nm;
        out->cap = nc;
    }
    out->m[out->n++] = (dr_match){start, stop, id};
    return true;
}

static bool is_trusted(const dr_text_span *tr, size_t n, size_t a, size_t b) {
    /* binary search: last span with begin <= a */
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (tr[mid].begin <= a)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo > 0 && b <= tr[lo - 1].end;
}

dr_status dr_added_find(const dr_tokenizer *tok, const dr_trie *t, const uint8_t *s, size_t len,
                        const dr_text_span *trusted, size_t n_trusted, size_t base,
                        bool trust_all, dr_matches *out) {
    if (t->n_tokens == 0)
        return DR_OK;
    size_t pos = 0, start_offset = 0;
    while (pos < len) {
        if (!(t->first[s[pos] >> 3] & (1u << (s[pos] & 7)))) {
            pos++;
            continue;
        }
        int32_t ti = -1;
        size_t mlen = longest_at(t, s + pos, len - pos, &ti);
        if (mlen == 0) {
            pos++;
            continue;
        }
        size_t start = pos, stop = pos + mlen;
        pos = stop;
        const dr_added_token *at = &tok->added[ti];
        if (at->special && !trust_all &&
            !is_trusted(trusted, n_trusted, base + start, base + stop))
            continue;
        if (at->single_word) {
            size_t st;
            bool start_space = start == 0 || !dr_unicode_is_word(last_cp(s, start, &st));
            size_t n;
            bool stop_space = stop == len || !dr_unicode_is_word(dr_utf8_decode(s + stop, &n));
            if (!start_space || !stop_space)
                continue;
        }
        if (at->lstrip) {
            size_t ns = trailing_space_start(s, start);
            start = ns > start_offset ? ns : start_offset;
        }
        if (at->rstrip)
            stop += leading_space_len(s + stop, len - stop);
        if (!push_match(out, start, stop, at->id))
            return DR_FAIL(DR_ERR_NOMEM, "added tokens: out of memory");
        start_offset = stop;
        /* rstrip may have consumed text past pos; aho-corasick keeps
         * searching from the raw match end, and so do we. */
    }
    return DR_OK;
}
