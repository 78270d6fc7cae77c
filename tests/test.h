/* tests/test.h - the two-macro harness every C test uses.
 *
 * CHECK(cond, fmt, ...) records a failure with a message and continues;
 * TEST_DONE() prints "N passed, N failed" and returns the exit code.
 * Tests that compare numbers print the measured value next to the tolerance.
 */
#ifndef DR_TESTS_TEST_H
#define DR_TESTS_TEST_H

#include <stdio.h>

static int t_passed, t_failed;

#define CHECK(cond, ...)                                          \
    do {                                                          \
        if (cond) {                                               \
            t_passed++;                                           \
        } else {                                                  \
            t_failed++;                                           \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);           \
            printf(__VA_ARGS__);                                  \
            printf("\n");                                         \
        }                                                         \
    } while (0)

/* A check that also prints the line when it passes (for measured errors). */
#define CHECK_SHOW(cond, ...)                                     \
    do {                                                          \
        printf("%s ", (cond) ? "ok  " : "FAIL");                  \
        printf(__VA_ARGS__);                                      \
        printf("\n");                                             \
        if (cond)                                                 \
            t_passed++;                                           \
        else                                                      \
            t_failed++;                                           \
    } while (0)

/* The greedy pick's rule (util/argmax.h) written as its definition, a
 * left-to-right scan with `>`: what the library's picks are checked against. */
static inline int test_argmax_rule(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

#define TEST_DONE()                                               \
    (printf("%d passed, %d failed\n", t_passed, t_failed), t_failed ? 1 : 0)

#endif
