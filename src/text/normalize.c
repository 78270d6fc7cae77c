/* text/normalize.c - the normalizer step of the encode pipeline: Unicode
 * normal forms through utf8proc, applied in sequence.
 *
 * Only the parts of a span that a normal form can change go through
 * utf8proc. A "quick" character is a starter that no normal form of the
 * sequence alters and that never composes with what precedes it, so text can
 * be cut in front of it: NF(a + b) = NF(a) + NF(b) when b starts with one
 * (Unicode UAX #15, stable code points). Every run of non-quick characters
 * is normalized together with the one character before it (which a
 * following mark may compose with); everything else is copied. Plain ASCII,
 * Latin, Cyrillic, CJK and punctuation text thus never reaches utf8proc.
 */
#include "text/tok_internal.h"
#include "text/utf8.h"
#include "util/status.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* For NFC alone: a starter without a canonical decomposition that is not
 * the second half of any composition (those are marks and the Hangul medial
 * vowel and final consonant jamo). */
static bool nfc_inert(uint32_t cp) {
    if ((cp >= 0x1161 && cp <= 0x1175) || (cp >= 0x11A8 && cp <= 0x11C2))
        return false;
    const utf8proc_property_t *p = utf8proc_get_property((utf8proc_int32_t)cp);
    if (p->combining_class != 0)
        return false;
    if (p->category == UTF8PROC_CATEGORY_MN || p->category == UTF8PROC_CATEGORY_MC ||
        p->category == UTF8PROC_CATEGORY_ME)
        return false;
    return p->decomp_seqindex == UINT16_MAX || p->decomp_type != 0;
}

static bool is_quick(const dr_normalizer *nz, uint32_t cp) {
    if (cp < nz->quick_below)
        return true;
    return nz->nfc_only && nfc_inert(cp);
}

typedef struct obuf {
    uint8_t *p;
    size_t n, cap;
} obuf;

static bool obuf_put(obuf *o, const uint8_t *s, size_t n) {
    if (o->n + n > o->cap) {
        size_t nc = o->cap ? o->cap * 2 : 256;
        while (nc < o->n + n)
            nc *= 2;
        uint8_t *np = realloc(o->p, nc);
        if (!np)
            return false;
        o->p = np;
        o->cap = nc;
    }
    memcpy(o->p + o->n, s, n);
    o->n += n;
    return true;
}

/* Run every normalizer step over s[0..len) and append the result to o. */
static dr_status normalize_run(const dr_normalizer *nz, const uint8_t *s, size_t len, obuf *o) {
    uint8_t *cur = (uint8_t *)s;
    size_t cur_len = len;
    for (int i = 0; i < nz->n; i++) {
        utf8proc_uint8_t *dst = NULL;
        utf8proc_ssize_t r =
            utf8proc_map(cur, (utf8proc_ssize_t)cur_len, &dst, (utf8proc_option_t)nz->opts[i]);
        if (cur != s)
            free(cur);
        if (r < 0) {
            free(dst);
            if (r == UTF8PROC_ERROR_NOMEM)
                return DR_FAIL(DR_ERR_NOMEM, "normalizer: out of memory");
            return DR_FAIL(DR_ERR_ARG, "normalizer: %s", utf8proc_errmsg(r));
        }
        cur = dst;
        cur_len = (size_t)r;
    }
    bool ok = obuf_put(o, cur, cur_len);
    if (cur != s)
        free(cur);
    return ok ? DR_OK : DR_FAIL(DR_ERR_NOMEM, "normalizer: out of memory");
}

dr_status dr_normalize(const dr_normalizer *nz, const uint8_t *s, size_t len, uint8_t **out,
                       size_t *out_len) {
    *out = (uint8_t *)s;
    *out_len = len;
    if (nz->n == 0)
        return DR_OK;
    obuf o = {0};
    size_t copied = 0;  /* s[0..copied) is already in o */
    size_t prev = 0;    /* start of the character before i */
    size_t i = 0;
    while (i < len) {
        size_t n = 1;
        uint32_t cp = s[i] < 0x80 ? s[i] : dr_utf8_decode(s + i, &n);
        if (is_quick(nz, cp)) {
            prev = i;
            i += n;
            continue;
        }
        /* a run of non-quick characters, with the character before it */
        size_t a = i > 0 ? prev : 0, b = i + n;
        while (b < len) {
            size_t m = 1;
            uint32_t c = s[b] < 0x80 ? s[b] : dr_utf8_decode(s + b, &m);
            if (is_quick(nz, c))
                break;
            b += m;
        }
        dr_status st = DR_OK;
        if (a > copied && !obuf_put(&o, s + copied, a - copied))
            st = DR_FAIL(DR_ERR_NOMEM, "normalizer: out of memory");
        if (st == DR_OK)
            st = normalize_run(nz, s + a, b - a, &o);
        if (st != DR_OK) {
            free(o.p);
            return st;
        }
        copied = b;
        prev = i = b;
    }
    if (copied == 0) /* nothing changed */
        return DR_OK;
    if (copied < len && !obuf_put(&o, s + copied, len - copied)) {
        free(o.p);
        return DR_FAIL(DR_ERR_NOMEM, "normalizer: out of memory");
    }
    *out = o.p;
    *out_len = o.n;
    return DR_OK;
}
