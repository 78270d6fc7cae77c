/* text/bytelevel.h - the GPT-2 byte-level alphabet (tokenizers
 * byte_level.rs `bytes_char`, FORMATS.md 4.2): every byte maps to one
 * printable code point so BPE vocabularies can be stored as text.
 */
#ifndef DR_TEXT_BYTELEVEL_H
#define DR_TEXT_BYTELEVEL_H

#include <stddef.h>
#include <stdint.h>

/* Code point that byte b is written as. Can't fail. */
uint32_t dr_bytelevel_char(uint8_t b);

/* The byte a code point stands for, or -1 if it is not in the alphabet. */
int dr_bytelevel_byte(uint32_t cp);

#endif
