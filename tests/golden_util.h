/* tests/golden_util.h - reading the reference tensors of a fixture
 * (golden.safetensors) and its prompts (golden.json) for the golden tests. */
#ifndef DR_TESTS_GOLDEN_UTIL_H
#define DR_TESTS_GOLDEN_UTIL_H

#include "format/safetensors.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

/* Tensor `name` of the golden file as a float array (F32 or I64 widened);
 * returns the element count, 0 if missing. Caller frees *out. */
static inline size_t golden_f32(const dr_st_file *g, const char *name, float **out) {
    const dr_st_tensor *t = dr_st_file_find(g, name);
    *out = NULL;
    if (!t)
        return 0;
    size_t n = (size_t)dr_st_numel(t);
    float *v = malloc((n ? n : 1) * sizeof *v);
    for (size_t i = 0; i < n; i++) {
        if (t->dtype == DR_DT_I64) {
            int64_t x;
            memcpy(&x, (const char *)t->data + 8 * i, 8);
            v[i] = (float)x;
        } else {
            v[i] = dr_load_f32(t->data, t->dtype, i);
        }
    }
    *out = v;
    return n;
}

/* Token ids of tensor `name` (I64) as int32. Caller frees. */
static inline int golden_ids(const dr_st_file *g, const char *name, int32_t **out) {
    const dr_st_tensor *t = dr_st_file_find(g, name);
    *out = NULL;
    if (!t || t->dtype != DR_DT_I64)
        return 0;
    int n = (int)dr_st_numel(t);
    int32_t *v = malloc((size_t)(n ? n : 1) * sizeof *v);
    for (int i = 0; i < n; i++) {
        int64_t x;
        memcpy(&x, (const char *)t->data + 8 * (size_t)i, 8);
        v[i] = (int32_t)x;
    }
    *out = v;
    return n;
}

static inline float max_abs_diff(const float *a, const float *b, size_t n) {
    float m = 0.0f;
    for (size_t i = 0; i < n; i++) {
        float d = fabsf(a[i] - b[i]);
        if (!(d <= m)) /* NaN counts as infinite */
            m = isnan(d) ? INFINITY : d;
    }
    return m;
}

#endif
