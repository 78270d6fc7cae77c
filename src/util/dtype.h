/* util/dtype.h - element types of tensors and the scalar conversions.
 *
 * Weights stay in their file dtype; kernels widen bf16/f16 to fp32 element by
 * element with the helpers below (unaligned-safe: mmapped tensors may start at
 * any byte).
 */
#ifndef DR_UTIL_DTYPE_H
#define DR_UTIL_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef enum dr_dtype {
    DR_DT_UNKNOWN = 0, /* a dtype string we parse but cannot compute with */
    DR_DT_F32,
    DR_DT_F16,
    DR_DT_BF16,
    DR_DT_F64,
    DR_DT_I64,
    DR_DT_I32,
    DR_DT_I16,
    DR_DT_I8,
    DR_DT_U64,
    DR_DT_U32,
    DR_DT_U16,
    DR_DT_U8,
    DR_DT_BOOL,
    DR_DT_COUNT
} dr_dtype;

/* Bytes per element; 0 for DR_DT_UNKNOWN. */
size_t dr_dtype_size(dr_dtype dt);

/* safetensors spelling ("BF16"); "?" for unknown. */
const char *dr_dtype_name(dr_dtype dt);

/* Parse a safetensors dtype string; DR_DT_UNKNOWN if it is not one we size. */
dr_dtype dr_dtype_from_name(const char *s);

static inline float dr_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Round-to-nearest-even fp32 -> bf16 (NaN kept quiet). */
static inline uint16_t dr_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* fp32 rounded to the nearest bf16 value, returned as fp32. */
static inline float dr_round_bf16(float f) { return dr_bf16_to_f32(dr_f32_to_bf16(f)); }

float dr_f16_to_f32(uint16_t h);

/* Element i of a buffer of dtype dt (F32, F16 or BF16) as fp32. */
static inline float dr_load_f32(const void *base, dr_dtype dt, size_t i) {
    const unsigned char *p = (const unsigned char *)base;
    if (dt == DR_DT_F32) {
        float f;
        memcpy(&f, p + 4 * i, 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, p + 2 * i, 2);
    return dt == DR_DT_BF16 ? dr_bf16_to_f32(h) : dr_f16_to_f32(h);
}

#endif
