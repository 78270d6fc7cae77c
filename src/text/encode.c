/* text/encode.c - the encode pipeline and plain decoding.
 *
 * Encode, as tokenizers does it: (1) split out added tokens that match the
 * raw text; (2) normalize every other span; (3) split out added tokens that
 * match normalized text; (4) pre-tokenize; (5) BPE each piece. The BPE cache
 * and the scratch lists live on the tokenizer and are guarded by its mutex.
 * Decode: concatenate each token's bytes, then repair UTF-8 lossily.
 */
#include "text/tok_internal.h"
#include "text/utf8.h"
#include "util/status.h"

#include <stdlib.h>
#include <string.h>

dr_status dr_tokens_push(dr_tokens *t, int32_t id) {
    if (t->n == t->cap) {
        size_t nc = t->cap ? t->cap * 2 : 64;
        int32_t *ni = realloc(t->ids, nc * sizeof *ni);
        if (!ni)
            return DR_FAIL(DR_ERR_NOMEM, "out of memory");
        t->ids = ni;
        t->cap = nc;
    }
    t->ids[t->n++] = id;
    return DR_OK;
}

void dr_tokens_free(dr_tokens *t) {
    if (!t)
        return;
    free(t->ids);
    memset(t, 0, sizeof *t);
}

/* ---- encode ------------------------------------------------------------------------ */

typedef struct enc_ctx {
    dr_tokenizer *tok;
    dr_tokens *out;
} enc_ctx;

static dr_status on_piece(void *ctx, const uint8_t *s, size_t len) {
    enc_ctx *c = ctx;
    return dr_bpe_encode(&c->tok->bpe, s, len, c->out);
}

/* Steps (3)-(5) on one normalized span. */
static dr_status encode_normalized(enc_ctx *c, const uint8_t *s, size_t len, bool trust_all) {
    dr_tokenizer *tok = c->tok;
    if (tok->trie_norm.n_tokens == 0)
        return dr_pretok_run(&tok->pre, s, len, on_piece, c);
    dr_matches *m = &tok->m_norm;
    m->n = 0;
    DR_TRY(dr_added_find(tok, &tok->trie_norm, s, len, NULL, 0, 0, trust_all, m));
    size_t cur = 0;
    for (size_t i = 0; i < m->n; i++) {
        dr_match mt = m->m[i];
        if (mt.start > cur)
            DR_TRY(dr_pretok_run(&tok->pre, s + cur, mt.start - cur, on_piece, c));
        DR_TRY(dr_tokens_push(c->out, mt.id));
        if (mt.stop > cur)
            cur = mt.stop;
    }
    if (cur < len)
        DR_TRY(dr_pretok_run(&tok->pre, s + cur, len - cur, on_piece, c));
    return DR_OK;
}

/* Steps (2)-(5) on one raw span [a, b) of the text. */
static dr_status encode_span(enc_ctx *c, const uint8_t *text, size_t a, size_t b,
                             const dr_text_span *tr, size_t ntr, bool trust_all) {
    uint8_t *norm;
    size_t nlen;
    DR_TRY(dr_normalize(&c->tok->norm, text + a, b - a, &norm, &nlen));
    /* normalized-text matches cannot be mapped back to byte offsets, so a
     * special token there counts as trusted only if the whole span is */
    bool span_trusted = trust_all;
    if (!span_trusted && ntr) {
        for (size_t i = 0; i < ntr && !span_trusted; i++)
            span_trusted = tr[i].begin <= a && b <= tr[i].end;
    }
    dr_status st = encode_normalized(c, norm, nlen, span_trusted);
    if (norm != text + a)
        free(norm);
    return st;
}

static dr_status encode_locked(dr_tokenizer *tok, const uint8_t *s, size_t len,
                               const dr_text_span *tr, size_t ntr, bool trust_all,
                               dr_tokens *out) {
    enc_ctx c = {tok, out};
    dr_matches *m = &tok->m_raw;
    m->n = 0;
    DR_TRY(dr_added_find(tok, &tok->trie_raw, s, len, tr, ntr, 0, trust_all, m));
    size_t cur = 0;
    /* m_raw is not touched by encode_span (it uses m_norm) */
    for (size_t i = 0; i < m->n; i++) {
        dr_match mt = m->m[i];
        if (mt.start > cur)
            DR_TRY(encode_span(&c, s, cur, mt.start, tr, ntr, trust_all));
        DR_TRY(dr_tokens_push(out, mt.id));
        if (mt.stop > cur)
            cur = mt.stop;
    }
    if (cur < len)
        DR_TRY(encode_span(&c, s, cur, len, tr, ntr, trust_all));
    return DR_OK;
}

static dr_status encode(const dr_tokenizer *ctok, const char *text, size_t len,
                        const dr_text_span *tr, size_t ntr, bool trust_all, dr_tokens *out) {
    if (!ctok || !out || (!text && len))
        return DR_FAIL(DR_ERR_ARG, "dr_tokenize: NULL argument");
    if (len == 0)
        return DR_OK;
    const uint8_t *s = (const uint8_t *)text;
    size_t bad = dr_utf8_invalid_at(s, len);
    if (bad < len)
        return DR_FAIL(DR_ERR_ARG, "dr_tokenize: input is not valid UTF-8 at byte %zu (0x%02X)",
                       bad, s[bad]);
    /* the tokenizer is logically const: only its cache/scratch change, under the lock */
    dr_tokenizer *tok = (dr_tokenizer *)ctok;
    size_t n0 = out->n;
    pthread_mutex_lock(&tok->lock);
    dr_status st = encode_locked(tok, s, len, tr, ntr, trust_all, out);
    pthread_mutex_unlock(&tok->lock);
    if (st != DR_OK)
        out->n = n0;
    return st;
}

dr_status dr_tokenize(const dr_tokenizer *tok, const char *text, size_t len, bool parse_special,
                      dr_tokens *out) {
    return encode(tok, text, len, NULL, 0, parse_special, out);
}

dr_status dr_tokenize_trusted(const dr_tokenizer *tok, const char *text, size_t len,
                              const dr_text_span *trusted, size_t n_trusted, dr_tokens *out) {
    if (n_trusted && !trusted)
        return DR_FAIL(DR_ERR_ARG, "dr_tokenize_trusted: trusted is NULL");
    for (size_t i = 0; i < n_trusted; i++) {
        if (trusted[i].begin > trusted[i].end || trusted[i].end > len ||
            (i > 0 && trusted[i].begin < trusted[i - 1].end))
            return DR_FAIL(DR_ERR_ARG,
                           "dr_tokenize_trusted: span %zu [%zu, %zu) is unsorted, overlapping or "
                           "past the text (%zu bytes)",
                           i, trusted[i].begin, trusted[i].end, len);
    }
    return encode(tok, text, len, trusted, n_trusted, false, out);
}

/* ---- decode ------------------------------------------------------------------------ */

/* Append the lossy UTF-8 repair of s[0..n) to o (capacity checked by the
 * caller: at most 3 bytes per input byte). Returns bytes written. */
static size_t lossy_copy(const uint8_t *s, size_t n, uint8_t *o) {
    size_t i = 0, w = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            o[w++] = s[i++];
            continue;
        }
        dr_utf8_kind kind;
        size_t k = dr_utf8_scan(s + i, n - i, &kind);
        if (kind == DR_UTF8_CHAR) {
            memcpy(o + w, s + i, k);
            w += k;
        } else {
            o[w++] = 0xEF; /* U+FFFD */
            o[w++] = 0xBF;
            o[w++] = 0xBD;
        }
        i += k;
    }
    return w;
}

dr_status dr_detokenize(const dr_tokenizer *tok, const int32_t *ids, size_t n, bool skip_special,
                        char **text, size_t *len) {
    *text = NULL;
    if (len)
        *len = 0;
    if (n && !ids)
        return DR_FAIL(DR_ERR_ARG, "dr_detokenize: ids is NULL");
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= tok->n_vocab || !(tok->flags[id] & DR_TOKF_PRESENT))
            return DR_FAIL(DR_ERR_RANGE, "dr_detokenize: ids[%zu] = %d is not a token (vocab %d)",
                           i, id, tok->n_vocab);
        if (!(skip_special && (tok->flags[id] & DR_TOKF_SPECIAL)))
            total += tok->bytes_len[id];
    }
    uint8_t *raw = malloc(total ? total : 1);
    uint8_t *o = malloc(total * 3 + 1);
    if (!raw || !o) {
        free(raw);
        free(o);
        return DR_FAIL(DR_ERR_NOMEM, "dr_detokenize: out of memory");
    }
    size_t p = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (skip_special && (tok->flags[id] & DR_TOKF_SPECIAL))
            continue;
        memcpy(raw + p, tok->bytes + tok->bytes_off[id], tok->bytes_len[id]);
        p += tok->bytes_len[id];
    }
    size_t w = lossy_copy(raw, p, o);
    free(raw);
    o[w] = '\0';
    *text = (char *)o;
    if (len)
        *len = w;
    return DR_OK;
}
