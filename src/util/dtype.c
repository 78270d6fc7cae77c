/* util/dtype.c - dtype names, sizes and the f16 conversion. */
#include "util/dtype.h"

static const struct {
    const char *name;
    size_t size;
} g_dtypes[DR_DT_COUNT] = {
    [DR_DT_UNKNOWN] = {"?", 0},  [DR_DT_F32] = {"F32", 4},  [DR_DT_F16] = {"F16", 2},
    [DR_DT_BF16] = {"BF16", 2},  [DR_DT_F64] = {"F64", 8},  [DR_DT_I64] = {"I64", 8},
    [DR_DT_I32] = {"I32", 4},    [DR_DT_I16] = {"I16", 2},  [DR_DT_I8] = {"I8", 1},
    [DR_DT_U64] = {"U64", 8},    [DR_DT_U32] = {"U32", 4},  [DR_DT_U16] = {"U16", 2},
    [DR_DT_U8] = {"U8", 1},      [DR_DT_BOOL] = {"BOOL", 1},
};

size_t dr_dtype_size(dr_dtype dt) { return (unsigned)dt < DR_DT_COUNT ? g_dtypes[dt].size : 0; }

const char *dr_dtype_name(dr_dtype dt) { return (unsigned)dt < DR_DT_COUNT ? g_dtypes[dt].name : "?"; }

dr_dtype dr_dtype_from_name(const char *s) {
    for (int i = 1; i < DR_DT_COUNT; i++)
        if (strcmp(s, g_dtypes[i].name) == 0)
            return (dr_dtype)i;
    return DR_DT_UNKNOWN;
}

float dr_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: renormalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400u)) {
                man <<= 1;
                exp--;
            }
            u = sign | (exp << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}
