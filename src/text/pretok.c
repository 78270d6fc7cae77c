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

/* ---- fast path for the two Qwen patterns ------------------------------------------
 *
 *   qwen2:  (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|
 *            ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 *   qwen35: the same with [\p{L}\p{M}]+ and [^\s\p{L}\p{M}\p{N}]
 *
 * Every character starts a match of these patterns, so the leftmost match
 * from position i starts at i. fast_match() computes that match the way the
 * backtracking engine does (alternatives in order, greedy with backtrack),
 * but only while every character it has to look at is ASCII, where \p{L} is
 * [A-Za-z], \p{N} [0-9], \p{M} empty and \s [\t\n\v\f\r ]. Whenever it would
 * need a non-ASCII character (Unicode classes, case folding such as
 * U+017F for 's') it gives up and Oniguruma finds the match instead. Tests
 * compare both paths on random text (tag-fast-split). */

static const char QWEN2_PATTERN[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char QWEN35_PATTERN[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| "
    "?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

dr_fast_kind dr_regex_fast_kind(const char *pattern, size_t len) {
    if (len == sizeof QWEN2_PATTERN - 1 && memcmp(pattern, QWEN2_PATTERN, len) == 0)
        return DR_FAST_QWEN2;
    if (len == sizeof QWEN35_PATTERN - 1 && memcmp(pattern, QWEN35_PATTERN, len) == 0)
        return DR_FAST_QWEN35;
    return DR_FAST_NONE;
}

enum { C_OTHER = 0, C_L = 1, C_N = 2, C_S = 4, C_NL = 8, C_HI = 16 };

/* ASCII class table: letter, digit, whitespace, CR/LF; C_HI marks >= 0x80 */
static uint8_t cls(uint8_t c) {
    if (c >= 0x80)
        return C_HI;
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return C_L;
    if (c >= '0' && c <= '9')
        return C_N;
    if (c == '\r' || c == '\n')
        return C_S | C_NL;
    if (c == ' ' || (c >= 0x09 && c <= 0x0D))
        return C_S;
    return C_OTHER;
}

/* End of the match starting at s[i] (i < len), or 0 if Oniguruma must decide. */
static size_t fast_match(const uint8_t *s, size_t i, size_t len) {
    uint8_t c0 = cls(s[i]);
    if (c0 == C_HI)
        return 0;
    uint8_t c1 = i + 1 < len ? cls(s[i + 1]) : C_OTHER;
    bool has1 = i + 1 < len;
    /* (?i:'s|'t|'re|'ve|'m|'ll|'d) */
    if (s[i] == '\'' && has1) {
        if (c1 == C_HI)
            return 0;
        uint8_t a = (uint8_t)(s[i + 1] | 0x20);
        if (c1 == C_L && (a == 's' || a == 't' || a == 'm' || a == 'd'))
            return i + 2;
        if (c1 == C_L && (a == 'r' || a == 'v' || a == 'l') && i + 2 < len) {
            uint8_t b = s[i + 2];
            if (b >= 0x80)
                return 0;
            b |= 0x20;
            if ((a == 'l' && b == 'l') || (a != 'l' && b == 'e'))
                return i + 3;
        }
    }
    /* [^\r\n\p{L}\p{N}]?\p{L}+ (letters-or-marks in qwen35; no ASCII marks) */
    size_t run = 0;
    if (c0 != C_L && c0 != C_N && !(c0 & C_NL) && has1 && (c1 == C_L || c1 == C_HI)) {
        if (c1 == C_HI)
            return 0;
        run = i + 1;
    } else if (c0 == C_L) {
        run = i;
    }
    if (run) {
    letters:
        while (run < len && cls(s[run]) == C_L)
            run++;
        if (run < len && s[run] >= 0x80)
            return 0; /* the run may go on with a non-ASCII letter */
        return run;
    }
    if (c0 == C_L) { /* run == 0 only when i == 0 */
        run = i;
        goto letters;
    }
    /* \p{N} */
    if (c0 == C_N)
        return i + 1;
    /*  ?[^\s\p{L}\p{N}]+[\r\n]* */
    size_t p = 0;
    bool in_p = false;
    if (s[i] == ' ' && has1 && (c1 == C_OTHER || c1 == C_HI)) {
        if (c1 == C_HI)
            return 0;
        p = i + 1;
        in_p = true;
    } else if (c0 == C_OTHER) {
        p = i;
        in_p = true;
    }
    if (in_p) {
        while (p < len && cls(s[p]) == C_OTHER)
            p++;
        if (p < len && s[p] >= 0x80)
            return 0; /* may continue with non-ASCII punctuation */
        while (p < len && (s[p] == '\r' || s[p] == '\n'))
            p++;
        return p;
    }
    /* whitespace: \s*[\r\n]+ | \s+(?!\S) | \s+ */
    size_t j = i, last_nl = len;
    while (j < len && (cls(s[j]) & C_S)) {
        if (s[j] == '\r' || s[j] == '\n')
            last_nl = j;
        j++;
    }
    if (j < len && s[j] >= 0x80)
        return 0; /* the run may go on with Unicode whitespace */
    if (last_nl != len)
        return last_nl + 1;
    if (j == len || j - i < 2)
        return j;
    return j - 1;
}

/* Split s by regex `re`, Isolated: matches and the gaps between them each
 * become a piece, in order (empty ones dropped). Empty matches are handled
 * as the onig crate's find_iter does (no empty match right after a match). */
static dr_status split_isolated(dr_pretok *p, int step, OnigRegex re, bool fast, const uint8_t *s,
                                size_t len, dr_piece_fn fn, void *ctx) {
    const uint8_t *end = s + len;
    size_t last_end = 0, prev = 0;
    bool have_last = false;
    size_t last_match_end = 0;
    while (last_end <= len) {
        if (fast && last_end < len) {
            size_t me = fast_match(s, last_end, len);
            if (me) {
                DR_TRY(run_from(p, step + 1, s + last_end, me - last_end, fn, ctx));
                prev = last_end = last_match_end = me;
                have_last = true;
                if (me == len)
                    break;
                continue;
            }
        }
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
        return split_isolated(p, step, st->re, st->fast != DR_FAST_NONE, s, len, fn, ctx);
    /* ByteLevel: the byte mapping itself happens in the BPE model */
    if (st->add_prefix_space && s[0] != ' ') {
        uint8_t *buf = malloc(len + 1);
        if (!buf)
            return DR_FAIL(DR_ERR_NOMEM, "pre-tokenizer: out of memory");
        buf[0] = ' ';
        memcpy(buf + 1, s, len);
        dr_status st2 = st->re ? split_isolated(p, step, st->re, false, buf, len + 1, fn, ctx)
                               : run_from(p, step + 1, buf, len + 1, fn, ctx);
        free(buf);
        return st2;
    }
    if (st->re)
        return split_isolated(p, step, st->re, false, s, len, fn, ctx);
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
