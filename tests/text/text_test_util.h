/* tests/text/text_test_util.h - helpers shared by the text-layer tests:
 * reading golden JSON files from tests/data, id-list comparison with a
 * readable diff, UTF-8 validity, a monotonic clock and a seeded RNG.
 */
#ifndef DR_TESTS_TEXT_UTIL_H
#define DR_TESTS_TEXT_UTIL_H

#include "deltarun_text.h"
#include "text/utf8.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DATA(p) DR_TEST_DATA "/" p

static inline json_t *load_json(const char *path) {
    json_error_t err;
    json_t *j = json_load_file(path, 0, &err);
    if (!j)
        printf("cannot load %s: line %d: %s\n", path, err.line, err.text);
    return j;
}

/* ids of a JSON array into a dr_tokens (caller frees). */
static inline dr_tokens json_ids(const json_t *arr) {
    dr_tokens t = {0};
    size_t i;
    const json_t *v;
    json_array_foreach(arr, i, v) dr_tokens_push(&t, (int32_t)json_integer_value(v));
    return t;
}

static inline void print_ids(const char *label, const int32_t *ids, size_t n) {
    printf("  %s (%zu):", label, n);
    for (size_t i = 0; i < n && i < 64; i++)
        printf(" %d", ids[i]);
    printf(n > 64 ? " ...\n" : "\n");
}

/* true if equal; otherwise prints both lists and the first difference */
static inline bool ids_equal(const int32_t *a, size_t na, const int32_t *b, size_t nb) {
    size_t i = 0;
    while (i < na && i < nb && a[i] == b[i])
        i++;
    if (i == na && i == nb)
        return true;
    printf("  first difference at index %zu\n", i);
    print_ids("got     ", a, na);
    print_ids("expected", b, nb);
    return false;
}

static inline bool valid_utf8(const char *s, size_t n) {
    return dr_utf8_invalid_at((const uint8_t *)s, n) == n;
}

static inline double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static inline uint64_t rng_next(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* Stream-decode ids; returns true if the concatenation equals `expect`
 * and every emitted piece is valid UTF-8. */
static inline bool stream_check(const dr_tokenizer *tok, const int32_t *ids, size_t n,
                                const char *expect, size_t expect_len, bool skip_special) {
    dr_stream_decoder *sd;
    if (dr_stream_decoder_new(tok, skip_special, &sd) != DR_OK)
        return false;
    char *acc = malloc(expect_len * 3 + 64 + n * 64);
    size_t al = 0;
    bool ok = acc != NULL;
    for (size_t i = 0; i < n && ok; i++) {
        const char *t;
        size_t l;
        if (dr_stream_decoder_push(sd, ids[i], &t, &l) != DR_OK) {
            printf("  stream push failed: %s\n", dr_last_error());
            ok = false;
            break;
        }
        if (!valid_utf8(t, l)) {
            printf("  stream piece %zu is not valid UTF-8\n", i);
            ok = false;
        }
        memcpy(acc + al, t, l);
        al += l;
    }
    const char *t;
    size_t l;
    dr_stream_decoder_finish(sd, &t, &l);
    if (ok) {
        memcpy(acc + al, t, l);
        al += l;
        ok = valid_utf8(t, l) && al == expect_len && memcmp(acc, expect, al) == 0;
        if (!ok)
            printf("  stream text differs: got %zu bytes, expected %zu\n", al, expect_len);
    }
    free(acc);
    dr_stream_decoder_free(sd);
    return ok;
}

#endif
