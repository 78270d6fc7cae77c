/* ops/cpu/backend.c - the CPU backend table and its (host) memory slots. */
#include "ops/cpu/cpu.h"

#include "util/status.h"

#include <stdlib.h>
#include <string.h>

static void *cpu_alloc(void *ctx, size_t n) {
    (void)ctx;
    return calloc(1, n ? n : 1);
}
static void cpu_free(void *ctx, void *p) {
    (void)ctx;
    free(p);
}
static void cpu_copy(void *ctx, void *dst, const void *src, size_t n) {
    (void)ctx;
    if (n)
        memmove(dst, src, n);
}
static void cpu_zero(void *ctx, void *p, size_t n) {
    (void)ctx;
    if (n)
        memset(p, 0, n);
}

static void cpu_ref_destroy(dr_ops *self) { (void)self; /* static table */ }

static void cpu_destroy(dr_ops *self) { free(self); }

static dr_ops g_cpu_ops = {
    .name = "cpu-ref",
    .ctx = NULL,
    .destroy = cpu_ref_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .copy = cpu_copy,
    .zero = cpu_zero,
    .matmul = dr_cpu_matmul,
    .embed = dr_cpu_embed,
    .rmsnorm = dr_cpu_rmsnorm,
    .add = dr_cpu_add,
    .swiglu = dr_cpu_swiglu,
    .sigmoid_mul = dr_cpu_sigmoid_mul,
    .sigmoid_scale_rows = dr_cpu_sigmoid_scale_rows,
    .split_halves = dr_cpu_split_halves,
    .round_bf16 = dr_cpu_round_bf16,
    .rope = dr_cpu_rope,
    .attention = dr_cpu_attention,
    .gdn_conv = dr_cpu_gdn_conv,
    .gdn_gates = dr_cpu_gdn_gates,
    .gdn_recurrent = dr_cpu_gdn_recurrent,
    .gdn_chunked = dr_cpu_gdn_chunked,
    .gated_rmsnorm = dr_cpu_gated_rmsnorm,
    .moe_route = dr_cpu_moe_route,
    .moe_experts = dr_cpu_moe_experts,
};

dr_ops *dr_ops_cpu_ref(void) { return &g_cpu_ops; }

dr_status dr_ops_cpu_create(const dr_backend_params *p, dr_ops **out) {
    (void)p;
    dr_ops *o = malloc(sizeof *o);
    if (!o)
        return DR_FAIL(DR_ERR_NOMEM, "out of memory creating the CPU backend");
    *o = g_cpu_ops;
    o->name = "cpu";
    o->destroy = cpu_destroy;
    *out = o;
    return DR_OK;
}
