/* text/stream.c - the streaming decoder: ids in, complete UTF-8 out.
 *
 * Byte-level vocabularies split multi-byte characters (emoji, CJK) across
 * tokens. The decoder keeps at most 3 trailing bytes that are a valid but
 * unfinished character and emits them once a later token completes them;
 * invalid bytes become U+FFFD at once, using the same maximal-subpart rule
 * as dr_detokenize, so streamed text equals the one-shot decode.
 */
#include "text/tok_internal.h"
#include "text/utf8.h"
#include "util/status.h"

#include <stdlib.h>
#include <string.h>

struct dr_stream_decoder {
    const dr_tokenizer *tok;
    bool skip_special;
    uint8_t pend[4]; /* held-back bytes of an unfinished character */
    size_t n_pend;
    uint8_t *buf;    /* output of the last call */
    size_t cap;
};

dr_status dr_stream_decoder_new(const dr_tokenizer *tok, bool skip_special,
                                dr_stream_decoder **out) {
    *out = NULL;
    if (!tok)
        return DR_FAIL(DR_ERR_ARG, "dr_stream_decoder_new: tokenizer is NULL");
    dr_stream_decoder *sd = calloc(1, sizeof *sd);
    if (!sd)
        return DR_FAIL(DR_ERR_NOMEM, "dr_stream_decoder_new: out of memory");
    sd->tok = tok;
    sd->skip_special = skip_special;
    *out = sd;
    return DR_OK;
}

static bool reserve(dr_stream_decoder *sd, size_t n) {
    if (n <= sd->cap)
        return true;
    size_t nc = sd->cap ? sd->cap : 64;
    while (nc < n)
        nc *= 2;
    uint8_t *nb = realloc(sd->buf, nc);
    if (!nb)
        return false;
    sd->buf = nb;
    sd->cap = nc;
    return true;
}

dr_status dr_stream_decoder_push(dr_stream_decoder *sd, int32_t id, const char **text,
                                 size_t *len) {
    static const char empty[] = "";
    *text = empty;
    *len = 0;
    const dr_tokenizer *tok = sd->tok;
    if (id < 0 || id >= tok->n_vocab || !(tok->flags[id] & DR_TOKF_PRESENT))
        return DR_FAIL(DR_ERR_RANGE, "stream decoder: id %d is not a token (vocab %d)", id,
                       tok->n_vocab);
    if (sd->skip_special && (tok->flags[id] & DR_TOKF_SPECIAL))
        return DR_OK;
    const uint8_t *tb = tok->bytes + tok->bytes_off[id];
    size_t tn = tok->bytes_len[id];
    /* worst case: every byte (pending + new) becomes a 3-byte U+FFFD */
    if (!reserve(sd, (sd->n_pend + tn) * 3 + 1))
        return DR_FAIL(DR_ERR_NOMEM, "stream decoder: out of memory");
    /* work on pending bytes + token bytes; the token is read in place */
    size_t total = sd->n_pend + tn, i = 0, w = 0;
    uint8_t win[8]; /* a character straddling pend and the token, copied here */
    while (i < total) {
        const uint8_t *p;
        size_t avail;
        if (i < sd->n_pend) {
            /* assemble up to 4 bytes starting at i across the boundary */
            size_t k = 0;
            for (size_t j = i; j < total && k < 4; j++, k++)
                win[k] = j < sd->n_pend ? sd->pend[j] : tb[j - sd->n_pend];
            p = win;
            avail = k;
        } else {
            p = tb + (i - sd->n_pend);
            avail = total - i;
        }
        if (p[0] < 0x80) {
            sd->buf[w++] = p[0];
            i++;
            continue;
        }
        dr_utf8_kind kind;
        size_t k = dr_utf8_scan(p, avail, &kind);
        if (kind == DR_UTF8_CHAR) {
            memcpy(sd->buf + w, p, k);
            w += k;
        } else if (kind == DR_UTF8_PARTIAL && i + k == total) {
            /* unfinished character at the very end: hold it back */
            uint8_t keep[4];
            memcpy(keep, p, k);
            memcpy(sd->pend, keep, k);
            sd->n_pend = k;
            sd->buf[w] = '\0';
            *text = (const char *)sd->buf;
            *len = w;
            return DR_OK;
        } else {
            sd->buf[w++] = 0xEF;
            sd->buf[w++] = 0xBF;
            sd->buf[w++] = 0xBD;
        }
        i += k;
    }
    sd->n_pend = 0;
    sd->buf[w] = '\0';
    *text = (const char *)sd->buf;
    *len = w;
    return DR_OK;
}

void dr_stream_decoder_finish(dr_stream_decoder *sd, const char **text, size_t *len) {
    static const char empty[] = "";
    static const char repl[] = "\xEF\xBF\xBD";
    /* held-back bytes are one unfinished (maximal) prefix: one U+FFFD */
    if (sd->n_pend) {
        *text = repl;
        *len = 3;
    } else {
        *text = empty;
        *len = 0;
    }
    sd->n_pend = 0;
}

void dr_stream_decoder_reset(dr_stream_decoder *sd) { sd->n_pend = 0; }

void dr_stream_decoder_free(dr_stream_decoder *sd) {
    if (!sd)
        return;
    free(sd->buf);
    free(sd);
}
