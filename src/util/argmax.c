/* util/argmax.c - see argmax.h. */
#include "util/argmax.h"

int32_t dr_argmax_f32(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}
