/* text/pretok.c - pre-tokenizers: Split (regex, behavior Isolated) and
 * ByteLevel, run in sequence over a normalized span.
 *
 * The regex engine is Oniguruma with its default syntax and UTF-8, which is
 * what Hugging Face tokenizers' onig backend compiles patterns with, so
 * \p{L}, \p{M}, \p{N}, (?i:...) and \s+(?!\S) mean exactly what they mean
 * there. Oniguruma's default backtracking limit is lifted (match param)
 * so that megabyte-long runs of whitespace cannot make a search fail; the
 * patterns used here stay linear on such input. Global state: Oniguruma's one-time library initialisation, done
 * once per process through pthread_once.
 */
#include "text/tok_internal.h"
#include "util/status.h"

#include <stdlib.h>
#include <string.h>

static pthread_once_t g_onig_once = PTHREAD_ONCE_INIT;

static void onig_init_once(void) {
    OnigEncoding enc = ONIG_ENCODING_UTF8;
    onig_initialize(&enc, 1);
}

dr_status dr_regex_compile(const char *pattern, size_t len, OnigRegex *out) {
    pthread_once(&g_onig_once, onig_init_once);
    OnigErrorInfo einfo;
    const OnigUChar *p = (const OnigUChar *)pattern;
    int r = onig_new(out, p, p + len, ONIG_OPTION_NONE, ONIG_ENCODING_UTF8, ONIG_SYNTAX_DEFAULT,
                     &einfo);
    if (r != ONIG_NORMAL) {
        OnigUChar msg[ONIG_MAX_ERROR_MESSAGE_LEN];
        onig_error_code_to_str(msg, r, &einfo);
        *out = NULL;
        if (r == ONIGERR_MEMORY)
            return DR_FAIL(DR_ERR_NOMEM, "regex: out of memory");
        return DR_FAIL(DR_ERR_FORMAT, "regex /%.*s/: %s", (int)(len > 200 ? 200 : len), pattern,
                       (const char *)msg);
    }
    return DR_OK;
}

static dr_status run_from(dr_pretok *p, int step, const uint8_t *s, size_t len, dr_piece_fn fn,
                          void *ctx);

/* Split s by regex `re`, Isolated: matches and the gaps between them each
 * become a piece, in order (empty ones dropped). Empty matches are handled
 * as the onig crate's find_iter does (no empty match right after a match). */
static dr_status split_isolated(dr_pretok *p, int step, OnigRegex re, const uint8_t *s, size_t len,
                                dr_piece_fn fn, void *ctx) {
    const uint8_t *end = s + len;
    size_t last_end = 0, prev = 0;
    bool have_last = false;
    size_t last_match_end = 0;
    while (last_end <= len) {
        onig_region_clear(p->region);
        int r = onig_search_with_param(re, s, end, s + last_end, end, p->region, ONIG_OPTION_NONE,
                                       p->mparam);
        if (r == ONIG_MISMATCH)
            break;
        if (r < 0) {
            OnigUChar msg[ONIG_MAX_ERROR_MESSAGE_LEN];
            onig_error_code_to_str(msg, r);
            return DR_FAIL(r == ONIGERR_MEMORY ? DR_ERR_NOMEM : DR_ERR_ARG, "regex search: %s",
                           (const char *)msg);
        }
        size_t ms = (size_t)p->region->beg[0], me = (size_t)p->region->end[0];
        if (me == ms && have_last && last_match_end == me) {
            /* step over one character */
            size_t n = 1;
            while (last_end + n < len && (s[last_end + n] & 0xC0) == 0x80)
                n++;
            last_end += n;
            continue;
        }
        last_end = me;
        have_last = true;
        last_match_end = me;
        if (prev < ms)
            DR_TRY(run_from(p, step + 1, s + prev, ms - prev, fn, ctx));
        if (ms < me)
            DR_TRY(run_from(p, step + 1, s + ms, me - ms, fn, ctx));
        prev = me;
        if (me == len)
            break;
    }
    if (prev < len)
        DR_TRY(run_from(p, step + 1, s + prev, len - prev, fn, ctx));
    return DR_OK;
}

static dr_status run_from(dr_pretok *p, int step, const uint8_t *s, size_t len, dr_piece_fn fn,
                          void *ctx) {
    if (len == 0)
        return DR_OK;
    if (step == p->n)
        return fn(ctx, s, len);
    const dr_pre_step *st = &p->steps[step];
    if (st->kind == DR_PRE_SPLIT)
        return split_isolated(p, step, st->re, s, len, fn, ctx);
    /* ByteLevel: the byte mapping itself happens in the BPE model */
    if (st->add_prefix_space && s[0] != ' ') {
        uint8_t *buf = malloc(len + 1);
        if (!buf)
            return DR_FAIL(DR_ERR_NOMEM, "pre-tokenizer: out of memory");
        buf[0] = ' ';
        memcpy(buf + 1, s, len);
        dr_status st2 = st->re ? split_isolated(p, step, st->re, buf, len + 1, fn, ctx)
                               : run_from(p, step + 1, buf, len + 1, fn, ctx);
        free(buf);
        return st2;
    }
    if (st->re)
        return split_isolated(p, step, st->re, s, len, fn, ctx);
    return run_from(p, step + 1, s, len, fn, ctx);
}

dr_status dr_pretok_run(dr_pretok *p, const uint8_t *s, size_t len, dr_piece_fn fn, void *ctx) {
    return run_from(p, 0, s, len, fn, ctx);
}

void dr_pretok_free(dr_pretok *p) {
    for (int i = 0; i < p->n; i++)
        if (p->steps[i].re)
            onig_free(p->steps[i].re);
    if (p->region)
        onig_region_free(p->region, 1);
    if (p->mparam)
        onig_free_match_param(p->mparam);
    memset(p, 0, sizeof *p);
}
