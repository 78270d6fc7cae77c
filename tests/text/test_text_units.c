/* test_text_units - unit tests of the text layer's internals: UTF-8 scanning
 * and lossy repair, the byte-level alphabet, the NFC fast path against
 * utf8proc on whole strings, and the ASCII fast path of the Qwen split
 * patterns against Oniguruma alone (tag-fast-split), on random text.
 */
#include "../test.h"
#include "text_test_util.h"
#include "text/bytelevel.h"
#include "text/tok_internal.h"

#include <utf8proc.h>

static void test_utf8(void) {
    dr_utf8_kind c;
    CHECK(dr_utf8_scan((const uint8_t *)"\xE4\xBD\xA0", 3, &c) == 3 && c == DR_UTF8_CHAR, "3-byte char");
    CHECK(dr_utf8_scan((const uint8_t *)"\xE4\xBD", 2, &c) == 2 && c == DR_UTF8_PARTIAL, "unfinished prefix");
    CHECK(dr_utf8_scan((const uint8_t *)"\xE4\x41", 2, &c) == 1 && c == DR_UTF8_INVALID, "bad continuation");
    CHECK(dr_utf8_scan((const uint8_t *)"\xE0\x80\x80", 3, &c) == 1 && c == DR_UTF8_INVALID, "overlong E0 80");
    CHECK(dr_utf8_scan((const uint8_t *)"\xED\xA0\x80", 3, &c) == 1 && c == DR_UTF8_INVALID, "surrogate");
    CHECK(dr_utf8_scan((const uint8_t *)"\xF4\x90\x80\x80", 4, &c) == 1 && c == DR_UTF8_INVALID, "> U+10FFFF");
    CHECK(dr_utf8_scan((const uint8_t *)"\xC0\xAF", 2, &c) == 1 && c == DR_UTF8_INVALID, "C0 lead");
    CHECK(dr_utf8_scan((const uint8_t *)"\xF0\x9F\x98", 3, &c) == 3 && c == DR_UTF8_PARTIAL, "emoji prefix");
    CHECK(dr_utf8_scan((const uint8_t *)"\xFF", 1, &c) == 1 && c == DR_UTF8_INVALID,
          "lone invalid lead byte at the end is invalid, not partial");
    CHECK(dr_utf8_scan((const uint8_t *)"\x80", 1, &c) == 1 && c == DR_UTF8_INVALID,
          "lone continuation byte");
    CHECK(dr_utf8_invalid_at((const uint8_t *)"ab\xFF", 3) == 2, "invalid at 2");
    CHECK(dr_utf8_invalid_at((const uint8_t *)"a\xF0\x9F\x98\x80", 5) == 5, "valid emoji");
    uint8_t e[4];
    for (uint32_t cp = 0; cp < 0x110000; cp += 97) {
        if (cp >= 0xD800 && cp < 0xE000)
            continue;
        size_t n = dr_utf8_encode(cp, e), m;
        if (dr_utf8_decode(e, &m) != cp || m != n || dr_utf8_invalid_at(e, n) != n) {
            CHECK(0, "utf8 round trip of U+%04X", cp);
            break;
        }
    }
}

static void test_bytelevel(void) {
    CHECK(dr_bytelevel_char(' ') == 0x120 && dr_bytelevel_char('\n') == 0x10A &&
              dr_bytelevel_char('a') == 'a' && dr_bytelevel_char(0xAD) == 0x143 &&
              dr_bytelevel_char(0) == 0x100,
          "byte-level alphabet anchors");
    int seen[0x200] = {0};
    bool ok = true;
    for (int b = 0; b < 256; b++) {
        uint32_t c = dr_bytelevel_char((uint8_t)b);
        ok = ok && c < 0x200 && !seen[c]++ && dr_bytelevel_byte(c) == b;
    }
    CHECK(ok, "byte-level alphabet is a bijection");
}

/* pool of characters that exercise normalization and the split patterns */
static const char *POOL[] = {
    "a", "b", "Z", "s", "t", "e", "l", "r", "v", "m", "d", "'", "'", "S", "L", "E", " ", " ", " ",
    "\n", "\r", "\t", "\v", "\f", "\x1c", "\x1f", "0", "7", ".", ",", "!", "?", "-", "_", "#", "(",
    "\x7f", "\xc3\xa9" /* é */, "\xcc\x81" /* U+0301 */, "\xcc\xa3" /* U+0323 */,
    "\xc5\xbf" /* ſ */, "\xc2\xa0" /* NBSP */, "\xe3\x80\x80" /* U+3000 */,
    "\xe4\xb8\xad" /* 中 */, "\xe2\x80\x99" /* ’ */, "\xf0\x9f\x91\x8d" /* 👍 */,
    "\xe1\x84\x80" /* Hangul L */, "\xe1\x85\xa1" /* Hangul V */, "\xe1\x86\xa8" /* Hangul T */,
    "\xea\xb0\x80" /* 가 */, "\xe2\x84\xab" /* Angstrom sign */, "\xe0\xa5\x98" /* U+0958 */,
    "\xe0\xa4\x95" /* क */, "\xe0\xa4\xbc" /* nukta */, "\xe0\xa5\x8d" /* virama */,
    "\xd9\xa3" /* Arabic-Indic 3 */, "\xe2\x85\xa0" /* Roman numeral I (Nl) */,
    "\xe2\x80\x8b" /* ZWSP */, "\xe2\x80\xa8" /* LS */, "\xc2\x85" /* NEL */,
    "\xef\xac\x85" /* ﬅ */, "\xe2\x84\xaa" /* Kelvin */, "\xcd\x85" /* U+0345 */,
};
#define NPOOL (sizeof POOL / sizeof POOL[0])

static size_t random_text(uint64_t *rng, char *buf, size_t max_items) {
    size_t n = rng_next(rng) % (max_items + 1), len = 0;
    for (size_t i = 0; i < n; i++) {
        const char *p = POOL[rng_next(rng) % NPOOL];
        size_t l = strlen(p);
        memcpy(buf + len, p, l);
        len += l;
    }
    buf[len] = '\0';
    return len;
}

static void test_nfc(void) {
    dr_normalizer nz = {.n = 1, .opts = {UTF8PROC_STABLE | UTF8PROC_COMPOSE},
                        .quick_below = 0x300, .nfc_only = true};
    uint64_t rng = 0x1234567;
    char buf[64 * 4 + 1];
    int bad = 0, changed = 0;
    const int N = 20000;
    for (int it = 0; it < N; it++) {
        size_t len = random_text(&rng, buf, 48);
        uint8_t *o;
        size_t ol;
        if (dr_normalize(&nz, (const uint8_t *)buf, len, &o, &ol) != DR_OK) {
            bad++;
            continue;
        }
        utf8proc_uint8_t *ref = NULL;
        utf8proc_ssize_t rl = utf8proc_map((const utf8proc_uint8_t *)buf, (utf8proc_ssize_t)len,
                                           &ref, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        if (rl < 0 || (size_t)rl != ol || memcmp(ref, o, ol) != 0) {
            if (bad++ < 3)
                printf("  NFC differs on \"%s\"\n", buf);
        }
        changed += o != (uint8_t *)buf;
        if (o != (uint8_t *)buf)
            free(o);
        free(ref);
    }
    CHECK_SHOW(bad == 0, "NFC fast path equals utf8proc NFC of the whole string: %d/%d differ "
               "(%d strings went through utf8proc)", bad, N, changed);
}

typedef struct pieces {
    char buf[1024];
    size_t len;
} pieces;

static dr_status collect(void *ctx, const uint8_t *s, size_t len) {
    pieces *p = ctx;
    if (p->len + len + 1 < sizeof p->buf) {
        memcpy(p->buf + p->len, s, len);
        p->len += len;
        p->buf[p->len++] = '|';
    }
    return DR_OK;
}

static void test_fast_split(const char *name, const char *pattern, dr_fast_kind want) {
    dr_tokenizer_options o = {.split_regex_override = pattern, .no_sidecar_files = true};
    dr_tokenizer *tok;
    dr_status st = dr_tokenizer_load_ex(DATA("dense-f32/tokenizer.json"), &o, &tok);
    CHECK(st == DR_OK, "load: %s", dr_last_error());
    if (st != DR_OK)
        return;
    CHECK(tok->pre.steps[0].kind == DR_PRE_SPLIT && tok->pre.steps[0].fast == want,
          "%s pattern recognised for the fast path", name);
    uint64_t rng = 0xC0FFEE;
    char buf[64 * 4 + 1];
    int bad = 0;
    const int N = 30000;
    for (int it = 0; it < N; it++) {
        size_t len;
        if (it % 2) {
            len = random_text(&rng, buf, 40);
        } else { /* any ASCII byte, NUL and controls included */
            len = rng_next(&rng) % 32;
            for (size_t k = 0; k < len; k++)
                buf[k] = (char)(rng_next(&rng) % 128);
            buf[len] = '\0';
        }
        pieces a = {0}, b = {0};
        tok->pre.steps[0].fast = want;
        dr_status s1 = dr_pretok_run(&tok->pre, (const uint8_t *)buf, len, collect, &a);
        tok->pre.steps[0].fast = DR_FAST_NONE;
        dr_status s2 = dr_pretok_run(&tok->pre, (const uint8_t *)buf, len, collect, &b);
        if (s1 != DR_OK || s2 != DR_OK || a.len != b.len || memcmp(a.buf, b.buf, a.len) != 0) {
            if (bad++ < 3)
                printf("  split differs on \"%s\":\n    fast: %.*s\n    onig: %.*s\n", buf,
                       (int)a.len, a.buf, (int)b.len, b.buf);
        }
    }
    CHECK_SHOW(bad == 0, "%s: fast split equals Oniguruma on %d random strings (%d differ)", name,
               N, bad);
    dr_tokenizer_free(tok);
}

int main(void) {
    test_utf8();
    test_bytelevel();
    test_nfc();
    test_fast_split("qwen2 pattern",
                    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
                    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
                    DR_FAST_QWEN2);
    test_fast_split("qwen35 pattern",
                    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| "
                    "?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
                    DR_FAST_QWEN35);
    return TEST_DONE();
}
