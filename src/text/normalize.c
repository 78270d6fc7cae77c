/* text/normalize.c - the normalizer step of the encode pipeline: Unicode
 * normal forms through utf8proc, applied in sequence, with a fast path for
 * text whose code points no normal form changes (plain ASCII, most Latin).
 */
#include "text/tok_internal.h"
#include "text/utf8.h"
#include "util/status.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* True if every code point of s is below `limit`. */
static bool all_below(const uint8_t *s, size_t len, uint32_t limit) {
    size_t i = 0;
    while (i < len) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        size_t n;
        if (dr_utf8_decode(s + i, &n) >= limit)
            return false;
        i += n;
    }
    return true;
}

dr_status dr_normalize(const dr_normalizer *nz, const uint8_t *s, size_t len, uint8_t **out,
                       size_t *out_len) {
    *out = (uint8_t *)s;
    *out_len = len;
    if (nz->n == 0 || all_below(s, len, nz->quick_below))
        return DR_OK;
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
    *out = cur;
    *out_len = cur_len;
    return DR_OK;
}
