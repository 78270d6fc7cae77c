/* text/bytelevel.c - byte <-> code point table of the byte-level alphabet.
 *
 * Bytes 0x21-0x7E, 0xA1-0xAC and 0xAE-0xFF stand for themselves; the other
 * 68 bytes are numbered upwards from U+0100 in byte order. The table is
 * computed, so there is no mutable global state.
 */
#include "text/bytelevel.h"

#include <stdbool.h>

static bool is_self(unsigned b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

uint32_t dr_bytelevel_char(uint8_t b) {
    if (is_self(b))
        return b;
    /* rank of b among the non-self bytes below it */
    unsigned n = 0;
    for (unsigned c = 0; c < b; c++)
        n += !is_self(c);
    return 0x100 + n;
}

int dr_bytelevel_byte(uint32_t cp) {
    if (cp < 0x100)
        return is_self(cp) ? (int)cp : -1;
    if (cp >= 0x100 + 68)
        return -1;
    unsigned want = cp - 0x100, n = 0;
    for (unsigned c = 0; c < 256; c++) {
        if (!is_self(c)) {
            if (n == want)
                return (int)c;
            n++;
        }
    }
    return -1;
}
