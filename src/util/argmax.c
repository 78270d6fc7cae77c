/* util/argmax.c - see argmax.h. */
#include "util/argmax.h"

int32_t dr_argmax_f32(const float *x, int n) {
    int32_t best = 0;
    float bv = n > 0 ? x[0] : 0.0f; /* x[best] kept in a register: the scan is not a chain of reloads */
    for (int i = 1; i < n; i++)
        if (x[i] > bv) {
            bv = x[i];
            best = i;
        }
    return best;
}

int32_t dr_argmax_f32_from(const float *x, int i0, int i1) {
    int32_t best = -1;
    float bv = 0.0f;
    for (int i = i0; i < i1; i++)
        if (x[i] == x[i] && (best < 0 || x[i] > bv)) { /* NaN skipped */
            bv = x[i];
            best = i;
        }
    return best;
}
