/* text/utf8.c - UTF-8 validation, lossy scanning and character classes.
 *
 * The byte ranges follow the Unicode Standard, Table 3-7 (well-formed UTF-8
 * byte sequences); the lossy scan implements "substitution of maximal
 * subparts", the practice Rust's String::from_utf8_lossy follows.
 */
#include "text/utf8.h"

#include <utf8proc.h>

/* Expected length of a sequence starting with lead byte b (0: invalid lead),
 * and the allowed range of its second byte. */
static int lead_info(uint8_t b, uint8_t *lo, uint8_t *hi) {
    *lo = 0x80;
    *hi = 0xBF;
    if (b < 0x80)
        return 1;
    if (b < 0xC2)
        return 0;
    if (b < 0xE0)
        return 2;
    if (b < 0xF0) {
        if (b == 0xE0)
            *lo = 0xA0; /* no overlongs */
        else if (b == 0xED)
            *hi = 0x9F; /* no surrogates */
        return 3;
    }
    if (b < 0xF5) {
        if (b == 0xF0)
            *lo = 0x90; /* no overlongs */
        else if (b == 0xF4)
            *hi = 0x8F; /* nothing above U+10FFFF */
        return 4;
    }
    return 0;
}

size_t dr_utf8_scan(const uint8_t *s, size_t len, dr_utf8_kind *kind) {
    uint8_t lo, hi;
    int need = lead_info(s[0], &lo, &hi);
    *kind = DR_UTF8_INVALID;
    if (need == 0)
        return 1;
    if (need == 1) {
        *kind = DR_UTF8_CHAR;
        return 1;
    }
    size_t k = 1;
    while (k < len && k < (size_t)need) {
        uint8_t c = s[k];
        uint8_t l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
        if (c < l || c > h)
            return k; /* invalid maximal subpart s[0..k) */
        k++;
    }
    *kind = k == (size_t)need ? DR_UTF8_CHAR : DR_UTF8_PARTIAL;
    return k;
}

size_t dr_utf8_invalid_at(const uint8_t *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        dr_utf8_kind kind;
        size_t n = dr_utf8_scan(s + i, len - i, &kind);
        if (kind != DR_UTF8_CHAR)
            return i;
        i += n;
    }
    return len;
}

uint32_t dr_utf8_decode(const uint8_t *s, size_t *n) {
    uint8_t b = s[0];
    if (b < 0x80) {
        *n = 1;
        return b;
    }
    if (b < 0xE0) {
        *n = 2;
        return ((uint32_t)(b & 0x1F) << 6) | (s[1] & 0x3F);
    }
    if (b < 0xF0) {
        *n = 3;
        return ((uint32_t)(b & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    }
    *n = 4;
    return ((uint32_t)(b & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
           ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
}

size_t dr_utf8_encode(uint32_t cp, uint8_t out[4]) {
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xC0 | (cp >> 6));
        out[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xE0 | (cp >> 12));
        out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | (cp >> 18));
    out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

bool dr_unicode_is_space(uint32_t cp) {
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
           cp == 0x205F || cp == 0x3000;
}

bool dr_unicode_is_py_space(uint32_t cp) {
    return dr_unicode_is_space(cp) || (cp >= 0x1C && cp <= 0x1F);
}

bool dr_unicode_is_word(uint32_t cp) {
    if (cp < 0x80)
        return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') ||
               cp == '_';
    switch (utf8proc_category((utf8proc_int32_t)cp)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_PC:
        return true;
    default:
        return false;
    }
}
