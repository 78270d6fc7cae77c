/* text/utf8.h - UTF-8 helpers of the text layer: strict validation, the
 * "maximal subpart" replacement that Rust's from_utf8_lossy applies, and the
 * few Unicode character classes the tokenizer needs outside the regex.
 */
#ifndef DR_TEXT_UTF8_H
#define DR_TEXT_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Offset of the first byte that is not part of a valid UTF-8 sequence
 * (overlongs, surrogates and code points above U+10FFFF are invalid), or
 * `len` when the whole buffer is valid. Can't fail. */
size_t dr_utf8_invalid_at(const uint8_t *s, size_t len);

typedef enum dr_utf8_kind {
    DR_UTF8_CHAR,    /* s[0..n) is one valid character */
    DR_UTF8_PARTIAL, /* s[0..n), n == len, is a valid but unfinished prefix */
    DR_UTF8_INVALID, /* s[0..n) is a maximal invalid subpart (replace by one U+FFFD) */
} dr_utf8_kind;

/* Classify the sequence starting at s[0] (len >= 1); returns its length
 * n >= 1 and the kind in *kind. Can't fail. */
size_t dr_utf8_scan(const uint8_t *s, size_t len, dr_utf8_kind *kind);

/* Decode the character at s (which must be valid UTF-8 of at least one
 * character), store its length in *n. Can't fail. */
uint32_t dr_utf8_decode(const uint8_t *s, size_t *n);

/* Encode code point `cp` (<= 0x10FFFF) into out[0..4); returns the length. */
size_t dr_utf8_encode(uint32_t cp, uint8_t out[4]);

/* Unicode White_Space (what Rust's char::is_whitespace and regex \s use). */
bool dr_unicode_is_space(uint32_t cp);

/* Python str.isspace(): White_Space plus U+001C..U+001F (Jinja's trim). */
bool dr_unicode_is_py_space(uint32_t cp);

/* Approximation of Rust regex \w: letters, marks, decimal digits, connector
 * punctuation (utf8proc categories L*, M*, Nd, Nl, Pc). */
bool dr_unicode_is_word(uint32_t cp);

#endif
