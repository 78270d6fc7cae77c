/* util/argmax.h - the greedy pick, one definition for every caller.
 *
 * The index of the largest of x[0..n): ties go to the lowest index, NaN never
 * wins (a NaN at index 0 stays the answer, as a plain left-to-right scan with
 * `>` gives). The CUDA argmax slot and the CPU backend's threaded one
 * reproduce exactly this rule.
 */
#ifndef DR_UTIL_ARGMAX_H
#define DR_UTIL_ARGMAX_H

#include <stdint.h>

int32_t dr_argmax_f32(const float *x, int n);

/* One piece of a split scan: the lowest index of the largest non-NaN value
 * in x[i0..i1), -1 if there is none. dr_argmax_f32 equals: the first
 * piece's answer by dr_argmax_f32 itself, then each later piece's (in
 * order) when it is strictly larger. */
int32_t dr_argmax_f32_from(const float *x, int i0, int i1);

#endif
