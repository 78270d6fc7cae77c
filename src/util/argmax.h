/* util/argmax.h - the greedy pick, one definition for every caller.
 *
 * The index of the largest of x[0..n): ties go to the lowest index, NaN never
 * wins (a NaN at index 0 stays the answer, as a plain left-to-right scan with
 * `>` gives). The CUDA argmax slot reproduces exactly this rule.
 */
#ifndef DR_UTIL_ARGMAX_H
#define DR_UTIL_ARGMAX_H

#include <stdint.h>

int32_t dr_argmax_f32(const float *x, int n);

#endif
