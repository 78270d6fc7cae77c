/* ops/cuda/quant.cu - MLX affine 4/8-bit weights on the GPU (FORMATS.md 2.1,
 * model/tensor.h dr_quant; reference semantics ops/cpu/matmul_quant.c:
 * w = scale * q + bias, fp32 math).
 *
 * Device layout of one quantized tensor (one allocation, t->dev), default:
 * the repacked layout (section "repacked layout (v2)" below: rows permuted
 * for the tensor-core GEMV's A fragments, (scale, bias) interleaved), read by
 * q2_gemv_kernel, q2_dp4a_kernel (one token, 4-bit, 16-bit scales: the
 * decode default, with the norm-in, residual-add and SwiGLU epilogues),
 * q2_dequant_split_kernel, q2_embed_kernel and the q2_moe_* kernels (the
 * MoE decode block: routing and the shared expert in them, session 29).
 * DR_CUDA_QGEMV_V2=0 (read once, at the first upload, for the process): the
 * file layout below and the kernels written for it, kept as
 * the same-run baseline. File layout: the packed
 * words as in the file ([rows, in * bits / 32] uint32), then scales and then
 * biases ([rows, in / group_size] in the file's sb dtype), each part starting
 * on a 256-byte boundary. Nothing is widened: decode streams the same bytes
 * the file holds.
 *
 *  - Decode GEMV (T <= 8 in one pass): each lane owns 16-byte pieces of a
 *    row (32 4-bit or 16 8-bit values, always inside one group since groups
 *    are >= 32 values and pieces are aligned), loaded with
 *    ld.global.nc.L1::no_allocate and PDL like the bf16 gemv_rows_kernel.
 *    Per piece dot(w, x) = scale * dot(q, x) + bias * sum(x): per value one
 *    byte permute (q -> 2^23 + q as a float), one subtract and one FMA;
 *    sum(x) is shared by the R rows a warp owns. Persistent warps load the
 *    next batch before unpacking the current one; x sits in shared memory in
 *    piece-major order (details at qgemv_kernel).
 *    Tensor-core variant (qgemv_mma_kernel, mma.sync bf16 with x split into
 *    hi + lo): the default for 4-bit at T > 1 and for lm_head-sized
 *    matrices at T = 1 (qgemv_mma_try says where and why).
 *  - Prefill (T > 32): rows are dequantized in chunks into bf16 hi/lo
 *    (W = hi + lo, |W - hi - lo| <= 2^-16 |W|) and x is split the same way;
 *    y = hi*xhi + hi*xlo + lo*xhi, three cuBLAS bf16 GEMMs accumulating in
 *    fp32: fp32-grade (the dropped lo*lo term is below 2^-16). 8 < T <= 32
 *    runs the GEMV per block of 8 tokens (weights re-read, no scratch).
 *  - Embedding rows dequantized exactly as the CPU (scale * q, then + bias).
 *  - MoE decode (T <= 4): gate/up of every (token, pick) in one launch, then
 *    down fused with the weighted sum over picks (repacked layout: a warp's
 *    lanes spread over the picks' pieces, every weight load issued before x
 *    is staged). MoE prefill goes through moe.cu's grouped path, whose
 *    per-expert products call dr_cuda_mm_w (here) for quantized experts.
 */
#include "cuda_common.cuh"
#include "cuda_ops.h"
#include "moe_route.cuh"
#include "prefill.cuh"
#include "quant.cuh"

#include <stdlib.h>
#include <string.h>

#define QG_MAX_T 8    /* GEMV for T <= this in one pass */
#define QG_BLOCK_T 32 /* GEMV in blocks of 8 tokens up to this */
#define QG_SETS 4
#define QG_LOADS 4 /* 16-byte loads per lane in one batch (two batches in flight while loading) */

typedef __nv_bfloat16 bf16;

/* ---- layout ---- */

static size_t align256(size_t n) { return (n + 255) & ~(size_t)255; }

static size_t q_rows(const dr_tensor *t) { return (size_t)dr_tensor_rows(t); }

/* Byte offsets of the scales and biases in the device block, and its size. */
static void q_offsets(const dr_tensor *t, size_t *s_off, size_t *b_off, size_t *total) {
    const size_t rows = q_rows(t), n = (size_t)t->ne[t->ndim - 1];
    const size_t pk = rows * n * (size_t)t->q.bits / 8;
    const size_t sb = rows * (n / (size_t)t->q.group_size) * dr_dtype_size(t->q.sb_dtype);
    *s_off = align256(pk);
    *b_off = *s_off + align256(sb);
    *total = *b_off + sb;
}

typedef struct qmat {
    const uint4 *w;
    const void *s, *b;
} qmat;

static qmat q_parts(const dr_tensor *t) {
    size_t so, bo, tot;
    q_offsets(t, &so, &bo, &tot);
    qmat m;
    m.w = (const uint4 *)t->dev;
    m.s = (const char *)t->dev + so;
    m.b = (const char *)t->dev + bo;
    return m;
}

static bool q2_on(void);
static dr_status q2_upload(dr_cuda_ctx *cx, dr_tensor *t, const char *nm);

dr_status dr_cuda_quant_upload(dr_cuda_ctx *cx, dr_tensor *t) {
    const char *nm = t->name ? t->name : "?";
    const int64_t n = t->ne[t->ndim - 1];
    if (t->q.bits != 4 && t->q.bits != 8)
        return DR_FAIL(DR_ERR_UNSUPPORTED, "tensor %s: %d-bit quantization, the CUDA backend runs 4 and 8", nm,
                       t->q.bits);
    if ((t->q.group_size != 32 && t->q.group_size != 64 && t->q.group_size != 128) || n % t->q.group_size)
        return DR_FAIL(DR_ERR_UNSUPPORTED, "tensor %s: group size %d for rows of %lld (need 32, 64 or 128 dividing it)",
                       nm, t->q.group_size, (long long)n);
    if (t->q.sb_dtype != DR_DT_BF16 && t->q.sb_dtype != DR_DT_F16 && t->q.sb_dtype != DR_DT_F32)
        return DR_FAIL(DR_ERR_UNSUPPORTED, "tensor %s: scales/biases in %s (need BF16, F16 or F32)", nm,
                       dr_dtype_name(t->q.sb_dtype));
    if (!t->data || !t->q.scales || !t->q.biases)
        return DR_FAIL(DR_ERR_ARG, "tensor %s: quantized tensor without packed data, scales or biases", nm);
    if (cx->failed)
        return DR_FAIL(DR_ERR_DEVICE, "CUDA backend: an earlier kernel failed (%s)", dr_last_error());
    if (q2_on())
        return q2_upload(cx, t, nm);
    size_t so, bo, tot;
    q_offsets(t, &so, &bo, &tot);
    const size_t pk = q_rows(t) * (size_t)n * (size_t)t->q.bits / 8, sb = tot - bo;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, tot);
    if (e != cudaSuccess) {
        cudaGetLastError();
        size_t fr = 0, all = 0;
        cudaMemGetInfo(&fr, &all);
        return DR_FAIL(dr_cuda_status(e),
                       "tensor %s: cannot allocate %zu bytes (%d-bit packed + scales + biases) on the GPU (%zu of %zu "
                       "MiB free): %s",
                       nm, tot, t->q.bits, fr >> 20, all >> 20, cudaGetErrorString(e));
    }
    char *d = (char *)p;
    if ((e = dr_cuda_h2d(cx, d, t->data, pk)) != cudaSuccess ||
        (e = dr_cuda_h2d(cx, d + so, t->q.scales, sb)) != cudaSuccess ||
        (e = dr_cuda_h2d(cx, d + bo, t->q.biases, sb)) != cudaSuccess) {
        cudaFree(p);
        return DR_FAIL(dr_cuda_status(e), "tensor %s: upload of %zu quantized bytes failed: %s", nm, tot,
                       cudaGetErrorString(e));
    }
    t->dev = p;
    return DR_OK;
}

/* ---- device helpers ---- */

static __device__ __forceinline__ float ld_sb(const void *p, dr_dtype dt, size_t i) {
    if (dt == DR_DT_BF16)
        return __bfloat162float(__ldg((const bf16 *)p + i));
    if (dt == DR_DT_F16)
        return __half2float(__ldg((const __half *)p + i));
    return __ldg((const float *)p + i);
}


/* byte i of v as a float 2^23 + byte (exact), minus 2^23: the value */
#define QB(v, i) (__uint_as_float(__byte_perm((v), 0x4B000000u, 0x7440u | (i))) - 8388608.0f)

/* The four values of float4 number f (0 .. E/4-1) of a 16-byte piece. */
template <int BITS> static __device__ __forceinline__ void q4vals(const uint4 &u, int f, float *o) {
    const unsigned w[4] = {u.x, u.y, u.z, u.w};
    if (BITS == 8) {
        const unsigned v = w[f];
        o[0] = QB(v, 0), o[1] = QB(v, 1), o[2] = QB(v, 2), o[3] = QB(v, 3);
    } else { /* values 4f .. 4f+3: nibbles 4 (f % 2) .. of word f / 2 */
        const unsigned v = w[f >> 1];
        const unsigned lo = v & 0x0F0F0F0Fu, hi = (v >> 4) & 0x0F0F0F0Fu; /* even / odd nibbles */
        if (f & 1) {
            o[0] = QB(lo, 2), o[1] = QB(hi, 2), o[2] = QB(lo, 3), o[3] = QB(hi, 3);
        } else {
            o[0] = QB(lo, 0), o[1] = QB(hi, 0), o[2] = QB(lo, 1), o[3] = QB(hi, 1);
        }
    }
}

/* ---- decode GEMV ---- */

struct qgemv_set {
    const uint4 *W[QG_SETS];
    const void *S[QG_SETS], *B[QG_SETS];
    float *y[QG_SETS];
    int row0[QG_SETS + 1];
    int nm;
};

/* Row pointers of group g (rows g*R .. g*R+R-1 of the concatenated set): the
 * packed row and its scale / bias rows (bytes), for the loads. */
template <int R> struct qrows {
    const uint4 *w[R];
    const char *s[R], *b[R];
};

template <int R>
static __device__ __forceinline__ void qrows_of(qrows<R> &q, const qgemv_set &set, int g, int rows, int nv, int G,
                                                int sbsz) {
#pragma unroll
    for (int r = 0; r < R; r++) {
        const int row = g * R + r < rows ? g * R + r : g * R; /* past the end: re-read, result dropped */
        const uint4 *W = set.W[0];
        const void *S = set.S[0], *B = set.B[0];
        int b = 0;
#pragma unroll
        for (int j = 1; j < QG_SETS; j++) /* constant indices: the set stays in the parameter bank */
            if (j < set.nm && row >= set.row0[j])
                W = set.W[j], S = set.S[j], B = set.B[j], b = set.row0[j];
        q.w[r] = W + (size_t)(row - b) * nv;
        q.s[r] = (const char *)S + (size_t)(row - b) * G * sbsz;
        q.b[r] = (const char *)B + (size_t)(row - b) * G * sbsz;
    }
}

/* Persistent warps: warp w takes row groups w, w + W, ... (W = warps in the
 * grid), each group R rows; a batch is QG_LOADS / R pieces of each of the
 * R rows per lane. The next batch (of this group or the
 * warp's next one) is loaded before the current one is computed, so a warp
 * keeps its loads in flight while it unpacks; rows in 4-bit are short (a
 * 2048-wide row is 2 pieces per lane), so without this each warp would wait
 * for one small load and then only compute. Fixed summation order per row
 * (deterministic). x must be 16-byte aligned. */
template <int BITS, int MT, int R, bool XS>
__global__ void __launch_bounds__(256, 2) qgemv_kernel(const qgemv_set set, const float *__restrict__ x, int T, int n,
                                                       int gsh, dr_dtype sdt) {
    DR_TL_SCOPE();
    extern __shared__ float4 xs4[]; /* XS: x [T][E/4][nv] float4, see below */
    constexpr int E = 128 / BITS; /* values per piece */
    constexpr int U = QG_LOADS / R;
    dr_pdl_trigger();
    const int lane = threadIdx.x & 31;
    const int nw = gridDim.x * (blockDim.x >> 5);
    const int rows = set.row0[set.nm], ngroups = (rows + R - 1) / R;
    const int nv = n / E, G = nv >> gsh, sbsz = sdt == DR_DT_F32 ? 4 : 2;
    int lg = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lv = 0; /* load cursor: group, first piece */
    const bool active = lg < ngroups;
    qrows<R> q;
    if (active)
        qrows_of<R>(q, set, lg, rows, nv, G, sbsz);
    uint4 ua[U][R], ub[U][R];
    float sa[U][R], ba[U][R], sb[U][R], bb[U][R];
#define QG_FETCH(u_, s_, b_)                                                                          \
    _Pragma("unroll") for (int j = 0; j < U; j++) {                                                   \
        const int v = lv + lane + 32 * j;                                                             \
        _Pragma("unroll") for (int r = 0; r < R; r++) {                                               \
            if (v < nv) {                                                                             \
                u_[j][r] = dr_ld_w(q.w[r] + v);                                                          \
                s_[j][r] = ld_sb(q.s[r], sdt, v >> gsh);                                              \
                b_[j][r] = ld_sb(q.b[r], sdt, v >> gsh);                                              \
            } else {                                                                                  \
                u_[j][r] = make_uint4(0, 0, 0, 0);                                                    \
                s_[j][r] = b_[j][r] = 0.0f;                                                           \
            }                                                                                         \
        }                                                                                             \
    }
    if (active)
        QG_FETCH(ua, sa, ba);
    dr_pdl_wait();
    /* XS: x staged once per (persistent) block, float4 f of piece p at
       [f][p]: a lane reads piece v's x as it reads its weights, consecutive
       16-byte slots across the warp (conflict-free). Read from L1 directly,
       each lane's x is 128 (4-bit) or 64 bytes away from its neighbour's,
       so one warp load touches 32 lines: that, not the unpacking, bounded
       the first version (~5 values / clock / SM). */
    if (XS) {
        const int n4 = n / 4;
        for (int i = threadIdx.x; i < T * n4; i += blockDim.x) {
            const int t = i / n4, k = i - t * n4;
            xs4[((size_t)t * (E / 4) + (k % (E / 4))) * nv + k / (E / 4)] = __ldg((const float4 *)x + i);
        }
        __syncthreads();
    }
    if (!active)
        return;
    float acc[R][MT];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < MT; t++)
            acc[r][t] = 0.0f;
    for (;;) {
        const int cg = lg, cv = lv; /* the batch in ua */
        lv += 32 * U;
        if (lv >= nv) {
            lv = 0;
            lg += nw;
            if (lg < ngroups)
                qrows_of<R>(q, set, lg, rows, nv, G, sbsz);
        }
        const bool more = lg < ngroups;
        if (more)
            QG_FETCH(ub, sb, bb);
#pragma unroll
        for (int j = 0; j < U; j++) {
            const int v = cv + lane + 32 * j;
            if (v < nv) {
#pragma unroll
                for (int t = 0; t < MT; t++) {
                    if (t < T) {
                        const float4 *xv = (const float4 *)(x + (size_t)t * n + (size_t)v * E);
                        const float4 *xsv = xs4 + (size_t)t * (E / 4) * nv + v;
                        /* two partial sums per row: half the FMA chain */
                        float dq[R][2], sx = 0.0f;
#pragma unroll
                        for (int r = 0; r < R; r++)
                            dq[r][0] = dq[r][1] = 0.0f;
#pragma unroll
                        for (int f = 0; f < E / 4; f++) {
                            const float4 xx = XS ? xsv[(size_t)f * nv] : __ldg(xv + f);
                            sx += (xx.x + xx.y) + (xx.z + xx.w);
#pragma unroll
                            for (int r = 0; r < R; r++) {
                                float qv[4];
                                q4vals<BITS>(ua[j][r], f, qv);
                                float d_ = dq[r][f & 1];
                                d_ = fmaf(qv[0], xx.x, d_);
                                d_ = fmaf(qv[1], xx.y, d_);
                                d_ = fmaf(qv[2], xx.z, d_);
                                dq[r][f & 1] = fmaf(qv[3], xx.w, d_);
                            }
                        }
#pragma unroll
                        for (int r = 0; r < R; r++)
                            acc[r][t] = fmaf(sa[j][r], dq[r][0] + dq[r][1], fmaf(ba[j][r], sx, acc[r][t]));
                    }
                }
            }
        }
        if (cv + 32 * U >= nv) { /* the group's last batch: reduce and store */
#pragma unroll
            for (int r = 0; r < R; r++) {
                const int row = cg * R + r;
                float *Y = set.y[0];
                int b = 0, e = set.row0[1];
#pragma unroll
                for (int j = 1; j < QG_SETS; j++)
                    if (j < set.nm && row >= set.row0[j])
                        Y = set.y[j], b = set.row0[j], e = set.row0[j + 1];
#pragma unroll
                for (int t = 0; t < MT; t++) {
                    const float s_ = dr_warp_sum(acc[r][t]);
                    acc[r][t] = 0.0f;
                    if (lane == 0 && row < rows && t < T)
                        Y[(size_t)t * (e - b) + (row - b)] = s_;
                }
            }
        }
        if (!more)
            break;
#pragma unroll
        for (int j = 0; j < U; j++)
#pragma unroll
            for (int r = 0; r < R; r++)
                ua[j][r] = ub[j][r], sa[j][r] = sb[j][r], ba[j][r] = bb[j][r];
    }
#undef QG_FETCH
}

#define QG_XS_MAX (96 << 10) /* x staged in shared memory up to this many bytes per block */

template <int BITS, int MT, int R, bool XS>
static void qgemv_launch_k(dr_cuda_ctx *cx, const qgemv_set &set, const float *x, int T, int n, int gsh,
                           dr_dtype sdt) {
    const int rows = set.row0[set.nm];
    const size_t smem = XS ? (size_t)T * n * sizeof(float) : 0;
    void (*k)(const qgemv_set, const float *, int, int, int, dr_dtype) = qgemv_kernel<BITS, MT, R, XS>;
    static int per_sm = 0;         /* resident blocks per SM at smem bytes of x (cached) */
    static size_t per_sm_smem = 1; /* impossible value: not computed yet */
    if (per_sm_smem != smem) {
        if (XS)
            cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, QG_XS_MAX);
        if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k, 256, smem) != cudaSuccess || per_sm < 1)
            per_sm = 1;
        cudaGetLastError();
        per_sm_smem = smem;
    }
    const size_t want = dr_cdiv(dr_cdiv((size_t)rows, (size_t)R), 8),
                 cap = (size_t)per_sm * (cx->n_sm > 0 ? cx->n_sm : 132);
    dim3 grid((unsigned)(want < cap ? want : cap)), block(256);
    dr_cuda_launch(cx, true, k, grid, block, smem, set, x, T, n, gsh, sdt);
}

/* x in shared memory when it fits (T <= 2; DR_CUDA_QGEMV_XS=0: read from L1, the baseline) */
template <int BITS, int MT, int R>
static void qgemv_launch(dr_cuda_ctx *cx, const qgemv_set &set, const float *x, int T, int n, int gs, dr_dtype sdt) {
    int gsh = 0; /* log2 of pieces per group */
    while ((128 / BITS) << gsh < gs)
        gsh++;
    static int xs_on = -1;
    if (MT <= 2 && dr_env_on("DR_CUDA_QGEMV_XS", &xs_on) && (size_t)T * n * sizeof(float) <= QG_XS_MAX)
        qgemv_launch_k<BITS, MT, R, (MT <= 2)>(cx, set, x, T, n, gsh, sdt);
    else
        qgemv_launch_k<BITS, MT, R, false>(cx, set, x, T, n, gsh, sdt);
}

/* rows per warp: short rows (a few pieces per lane) are grouped so that a
 * batch still has 8 loads per lane; T > 2 keeps one row (the accumulators
 * grow with T) */
template <int BITS, int MT>
static void qgemv_pick(dr_cuda_ctx *cx, const qgemv_set &set, const float *x, int T, int n, int gs, dr_dtype sdt) {
    static int force = -1; /* DR_CUDA_QGEMV_R=1/2/4: rows per warp forced (T <= 2; measurements) */
    if (force < 0) {
        const char *e = getenv("DR_CUDA_QGEMV_R");
        force = e ? atoi(e) : 0;
    }
    const int ppl = (n / (128 / BITS) + 31) / 32; /* pieces per lane and row */
    const int R = MT > 2 ? 1 : force ? force : ppl <= 2 ? 4 : ppl <= 4 ? 2 : 1;
    if (R == 4) /* (MT > 2 instantiates R = 1 only) */
        qgemv_launch<BITS, MT, (MT <= 2 ? 4 : 1)>(cx, set, x, T, n, gs, sdt);
    else if (R == 2)
        qgemv_launch<BITS, MT, (MT <= 2 ? 2 : 1)>(cx, set, x, T, n, gs, sdt);
    else
        qgemv_launch<BITS, MT, 1>(cx, set, x, T, n, gs, sdt);
}

/* ---- decode GEMV on the tensor cores (mma.sync m16n8k16 bf16, fp32 accumulate) ----
 *
 * Why: the FMA kernel above spends ~4 lane instructions per 4-bit value
 * (permute, subtract, FMA, x loads and sum(x) adds) and is issue-bound at
 * ~1.1 TB/s. Here a packed word v becomes bf16 pairs with one shift, one
 * LOP3 and one HFMA2 per 2 values: ((v >> 4s) & 0x000F000F) | 0x43004300
 * is the pair (128 + q, 128 + q') exactly (bf16's ulp at 128 is 1), minus
 * 128 is q exactly; the products run on the tensor cores.
 *
 * x is split once per block into hi = bf16(x), lo = bf16(x - hi) (relative
 * error ~2^-17, fp32-grade) and staged in shared memory. Group scales must
 * multiply dot(q_piece, x_piece) before pieces are summed, so every MMA
 * column is tied to one piece: thread (g = lane / 4, c = lane % 4) holds
 * piece p of row g and of row g + 8 (p = 4 * chunk + c: the 4 threads of a
 * quad hold 4 different pieces, always each inside one group); its A slots
 * of 8 MMAs cover its 32 nibbles of both rows. B column n = 2c' + h holds x_h
 * of thread c' 's piece in c' 's k slots and zero elsewhere, so after the 8
 * MMAs the C elements (row g, columns 2c and 2c + 1) of thread (g, c) are
 * exactly dot(q, x_hi) and dot(q, x_lo) of its own piece, and the thread
 * applies its own scale and bias: acc += s * (c_hi + c_lo) + b * sum(x).
 * Only the 8 threads with c == g / 2 read x; the others read a zero slot.
 *
 * 8-bit values are split into nibble planes, q = ql + 16 qh: the same
 * nibble unpack gives ql and qh, and the staged x of a qh slot is 16 x
 * (exact), so 8-bit pieces (16 values, 32 nibbles) run the same MMAs.
 *
 * Slot order: nibble pair s (0..3) of word i (0..3) of a piece is A register
 * P(i, s) = nibbles at bits 4s and 16 + 4s; MMA m = 2i + s / 2 takes
 * P(i, 2(m%2)) (k 2c, 2c+1) and P(i, 2(m%2)+1) (k 2c+8, 2c+9); staged slot
 * 8i + 2s + half holds the matching x coefficient (qm_stage).
 *
 * Tiles of 16 rows; KW warps of a block split a tile's chunks (4 pieces per
 * quad row) and add their partial sums in shared memory in a fixed order
 * (deterministic). Persistent blocks, the next batch loaded before the
 * current one is unpacked, PDL wait after the first weight loads. */

#define QM_TPB 256
/* Default (H200, docs/CUDA.md "Tensor-core GEMV"): 4-bit only, and at T = 1
 * only where every warp owns whole tiles (KW = 1: lm_head-sized matrices,
 * +43-55% there); at T = 1 on 4096-12288-row matrices the FMA kernel was
 * 4-14% faster, and 8-bit ran slower than the FMA kernel at T = 1. */
#define QM_DEFAULT_BITS 4

/* D = A B + D, m16n8k16 bf16 (not volatile: the scheduler may move it) */
static __device__ __forceinline__ void qm_mma(float c[4], const uint32_t a0, const uint32_t a1, const uint32_t a2,
                                              const uint32_t a3, const uint32_t b0, const uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/* nibble pair s of word v as bf16x2 (q, q') */
static __device__ __forceinline__ uint32_t qm_pair(uint32_t v, int s) {
    const uint32_t t = ((v >> (4 * s)) & 0x000F000Fu) | 0x43004300u;
    __nv_bfloat162 h = *(const __nv_bfloat162 *)&t;
    const uint32_t m128 = 0x43004300u;
    h = __hsub2(h, *(const __nv_bfloat162 *)&m128);
    return *(const uint32_t *)&h;
}

/* row pointers (packed, scales, biases) of row `row` of the set; past the
 * end: row 0 (re-read, result dropped) */
static __device__ __forceinline__ void qm_row(const qgemv_set &set, int row, int rows, int nv, int G, int sbsz,
                                              const uint4 **w, const char **s, const char **b) {
    if (row >= rows)
        row = 0;
    const uint4 *W = set.W[0];
    const void *S = set.S[0], *B = set.B[0];
    int r0 = 0;
#pragma unroll
    for (int j = 1; j < QG_SETS; j++)
        if (j < set.nm && row >= set.row0[j])
            W = set.W[j], S = set.S[j], B = set.B[j], r0 = set.row0[j];
    *w = W + (size_t)(row - r0) * nv;
    *s = (const char *)S + (size_t)(row - r0) * G * sbsz;
    *b = (const char *)B + (size_t)(row - r0) * G * sbsz;
}

/* hi/lo of v (times coef, a power of 2: exact) into slot `slot` of the
 * staged piece at d (64 bytes hi, then 64 bytes lo) */
static __device__ __forceinline__ void qm_put(char *d, int slot, float v, float coef) {
    const __nv_bfloat16 hi = __float2bfloat16_rn(v);
    const float lo = v - __bfloat162float(hi);
    ((__nv_bfloat16 *)d)[slot] = __float2bfloat16_rn(coef * __bfloat162float(hi));
    ((__nv_bfloat16 *)d)[32 + slot] = __float2bfloat16_rn(coef * lo);
}

/* Stage x [T, n] (whole block): thread i takes float4 i (coalesced), writes
 * its hi/lo slots and adds the piece sum over the F lanes of one piece by a
 * fixed xor tree (deterministic). Slot of value e of a piece: 4-bit
 * 8 (e / 8) + 2 (e % 4) + (e / 4) % 2; 8-bit 8 (e / 4) + 2 s + (e % 4) / 2
 * with s = 2 (e % 2) (coefficient 1, low nibble) and s + 1 (16, high). */
template <int BITS>
static __device__ __forceinline__ void qm_stage(char *xb, float *xsum, const float *x, int T, int n, int nv) {
    constexpr int F = 128 / BITS / 4; /* float4 per piece */
    const int n4 = n / 4, total = T * n4, lane = threadIdx.x & 31;
    for (int base = threadIdx.x - lane; base < total; base += QM_TPB) { /* whole warps: the shuffles */
        const int i = base + lane;
        const bool ok = i < total;
        const float4 v = ok ? __ldg((const float4 *)x + i) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        const int t = i / n4, k = i - t * n4, f = k % F, tp = t * nv + k / F;
        if (ok) {
            char *d = xb + (size_t)tp * 128;
            const float e[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int j = 0; j < 4; j++) {
                if (BITS == 4) {
                    qm_put(d, 8 * (f >> 1) + 2 * j + (f & 1), e[j], 1.0f);
                } else {
                    const int sl = 8 * f + 4 * (j & 1) + (j >> 1);
                    qm_put(d, sl, e[j], 1.0f);
                    qm_put(d, sl + 2, e[j], 16.0f);
                }
            }
        }
        float sum = (v.x + v.y) + (v.z + v.w);
#pragma unroll
        for (int o = 1; o < F; o <<= 1)
            sum += __shfl_xor_sync(0xffffffffu, sum, o);
        if (ok && f == 0)
            xsum[tp] = sum;
    }
}

/* shared memory: x staged [T][nv][h][32 bf16] (64 bytes a slot), sums
 * [T][nv] floats, a 64-byte zero slot, then 2 x [8 warps][16 rows][MT]
 * partial sums */
static size_t qm_smem(int T, int MT, int nv) {
    return (size_t)T * nv * 128 + (size_t)T * nv * 4 + 64 + 2 * 8 * 16 * (size_t)MT * 4;
}

template <int BITS, int MT>
__global__ void __launch_bounds__(QM_TPB, MT <= 2 ? 2 : 1) qgemv_mma_kernel(const qgemv_set set, const float *__restrict__ x, int T,
                                                              int n, int gsh, dr_dtype sdt, int KW) {
    DR_TL_SCOPE();
    extern __shared__ uint4 qm_sm[];
    constexpr int E = 128 / BITS; /* values per piece */
    dr_pdl_trigger();
    const int nv = n / E, nc = nv / 4, G = nv >> gsh, sbsz = sdt == DR_DT_F32 ? 4 : 2;
    const int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3, w = threadIdx.x >> 5;
    const int sub = w / KW, kw = w % KW, tpb = 8 / KW; /* tiles per block step */
    const int rows = set.row0[set.nm], nsteps = (rows + 16 * tpb - 1) / (16 * tpb);
    char *smc = (char *)qm_sm;
    const uint4 *xb = qm_sm;
    const float *xsum = (const float *)(smc + (size_t)T * nv * 128);
    const uint4 *zero = (const uint4 *)(smc + (size_t)T * nv * 132);
    float *red = (float *)(smc + (size_t)T * nv * 132 + 64);
    const bool owner = c == (g >> 1);
    const int h = g & 1;

    int ls = blockIdx.x, lci = kw; /* load cursor: block step, first chunk of the batch */
    const uint4 *pw[2];
    const char *ps[2], *pb[2];
    uint4 ua[2][2], ub[2][2]; /* [chunk][row g / g + 8] */
    float sa[2][2], ba[2][2], sb_[2][2], bb_[2][2];
    auto rows_of = [&](int st) {
        const int r = (st * tpb + sub) * 16 + g;
        qm_row(set, r, rows, nv, G, sbsz, &pw[0], &ps[0], &pb[0]);
        qm_row(set, r + 8, rows, nv, G, sbsz, &pw[1], &ps[1], &pb[1]);
    };
    auto fetch = [&](uint4 (&u)[2][2], float (&s_)[2][2], float (&b_)[2][2]) {
#pragma unroll
        for (int k = 0; k < 2; k++) {
            const int ci = lci + k * KW;
#pragma unroll
            for (int r = 0; r < 2; r++) {
                if (ci < nc) {
                    const int p = 4 * ci + c;
                    u[k][r] = dr_ld_w(pw[r] + p);
                    s_[k][r] = ld_sb(ps[r], sdt, p >> gsh);
                    b_[k][r] = ld_sb(pb[r], sdt, p >> gsh);
                } else {
                    u[k][r] = make_uint4(0, 0, 0, 0);
                    s_[k][r] = b_[k][r] = 0.0f;
                }
            }
        }
    };
    /* advance the load cursor to the warp's next batch */
    auto advance = [&]() {
        lci += 2 * KW;
        if (lci >= nc) {
            lci = kw;
            ls += gridDim.x;
            if (ls < nsteps)
                rows_of(ls);
        }
    };
    /* two batches in flight before x is staged (a 4096-wide tile of 8 warps
       is often all a block has to load) */
    int cs = ls, cci = lci; /* the batch in ua */
    if (ls < nsteps) {
        rows_of(ls);
        fetch(ua, sa, ba);
        advance();
        if (ls < nsteps)
            fetch(ub, sb_, bb_);
    }
    dr_pdl_wait();
    qm_stage<BITS>(smc, (float *)xsum, x, T, n, nv);
    if (threadIdx.x < 4)
        ((uint4 *)zero)[threadIdx.x] = make_uint4(0, 0, 0, 0);
    __syncthreads();
    if (blockIdx.x >= nsteps)
        return;

    float acc[2][MT];
#pragma unroll
    for (int r = 0; r < 2; r++)
#pragma unroll
        for (int t = 0; t < MT; t++)
            acc[r][t] = 0.0f;
    int buf = 0;
    for (;;) {
#pragma unroll
        for (int k = 0; k < 2; k++) {
            const int ci = cci + k * KW;
            if (ci >= nc) /* warp-uniform */
                break;
            const int p = 4 * ci + c;
            /* word by word: 8 A registers live, one 16-byte B read per
               token and word (MMAs 2i and 2i + 1); two accumulator chains
               for T <= 2 */
            constexpr int NCH = MT <= 2 ? 2 : 1;
            float cc[MT][NCH][4];
#pragma unroll
            for (int t = 0; t < MT; t++)
#pragma unroll
                for (int j = 0; j < NCH; j++)
                    cc[t][j][0] = cc[t][j][1] = cc[t][j][2] = cc[t][j][3] = 0.0f;
            const uint4 *xo = owner ? xb + (size_t)(p * 2 + h) * 4 : zero;
            const size_t xt = owner ? (size_t)nv * 8 : 0; /* uint4 per token */
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const uint32_t w0 = (&ua[k][0].x)[i], w1 = (&ua[k][1].x)[i];
                uint32_t A0[4], A1[4];
#pragma unroll
                for (int s2 = 0; s2 < 4; s2++)
                    A0[s2] = qm_pair(w0, s2), A1[s2] = qm_pair(w1, s2);
#pragma unroll
                for (int t = 0; t < MT; t++) {
                    if (t < T) {
                        const uint4 bq = xo[t * xt + i];
                        qm_mma(cc[t][0], A0[0], A1[0], A0[1], A1[1], bq.x, bq.y);
                        qm_mma(cc[t][NCH - 1], A0[2], A1[2], A0[3], A1[3], bq.z, bq.w);
                    }
                }
            }
#pragma unroll
            for (int t = 0; t < MT; t++) {
                if (t < T) {
                    float d0 = cc[t][0][0] + cc[t][0][1], d1 = cc[t][0][2] + cc[t][0][3];
                    if (NCH == 2)
                        d0 += cc[t][NCH - 1][0] + cc[t][NCH - 1][1], d1 += cc[t][NCH - 1][2] + cc[t][NCH - 1][3];
                    const float sx = xsum[t * nv + p];
                    acc[0][t] = fmaf(sa[k][0], d0, fmaf(ba[k][0], sx, acc[0][t]));
                    acc[1][t] = fmaf(sa[k][1], d1, fmaf(ba[k][1], sx, acc[1][t]));
                }
            }
        }
        if (cci + 2 * KW >= nc && KW == 1) { /* a warp per tile: the quad sums are the rows */
#pragma unroll
            for (int r = 0; r < 2; r++)
#pragma unroll
                for (int t = 0; t < MT; t++) {
                    float v = acc[r][t];
                    v += __shfl_xor_sync(0xffffffffu, v, 1);
                    v += __shfl_xor_sync(0xffffffffu, v, 2);
                    acc[r][t] = 0.0f;
                    const int row = (cs * tpb + sub) * 16 + r * 8 + g;
                    if (c == 0 && t < T && row < rows) {
                        float *Y = set.y[0];
                        int b0 = 0, e0 = set.row0[1];
#pragma unroll
                        for (int j = 1; j < QG_SETS; j++)
                            if (j < set.nm && row >= set.row0[j])
                                Y = set.y[j], b0 = set.row0[j], e0 = set.row0[j + 1];
                        Y[(size_t)t * (e0 - b0) + (row - b0)] = v;
                    }
                }
        } else if (cci + 2 * KW >= nc) { /* the warp's last batch of the step: reduce and store */
            float *rb = red + (size_t)buf * 8 * 16 * MT;
#pragma unroll
            for (int r = 0; r < 2; r++)
#pragma unroll
                for (int t = 0; t < MT; t++) {
                    float v = acc[r][t];
                    v += __shfl_xor_sync(0xffffffffu, v, 1);
                    v += __shfl_xor_sync(0xffffffffu, v, 2);
                    if (c == 0)
                        rb[((size_t)w * 16 + r * 8 + g) * MT + t] = v;
                    acc[r][t] = 0.0f;
                }
            __syncthreads();
            for (int i = threadIdx.x; i < tpb * 16 * T; i += QM_TPB) {
                const int st = i / (16 * T), rr = (i / T) % 16, t = i % T;
                const int row = (cs * tpb + st) * 16 + rr;
                float v = 0.0f;
                for (int j = 0; j < KW; j++)
                    v += rb[((size_t)(st * KW + j) * 16 + rr) * MT + t];
                if (row < rows) {
                    float *Y = set.y[0];
                    int b0 = 0, e0 = set.row0[1];
#pragma unroll
                    for (int j = 1; j < QG_SETS; j++)
                        if (j < set.nm && row >= set.row0[j])
                            Y = set.y[j], b0 = set.row0[j], e0 = set.row0[j + 1];
                    Y[(size_t)t * (e0 - b0) + (row - b0)] = v;
                }
            }
            buf ^= 1;
        }
        if (ls >= nsteps) /* (the cursor is at the batch in ub) */
            break;
#pragma unroll
        for (int k = 0; k < 2; k++)
#pragma unroll
            for (int r = 0; r < 2; r++)
                ua[k][r] = ub[k][r], sa[k][r] = sb_[k][r], ba[k][r] = bb_[k][r];
        cs = ls, cci = lci;
        advance();
        if (ls < nsteps)
            fetch(ub, sb_, bb_);
    }
}

#define QM_SMEM_MAX (227 << 10) /* staged x per block at most (else the FMA kernel) */

/* The tensor-core GEMV when it applies (DR_CUDA_QGEMV_MMA != 0, whole
 * chunks of 4 pieces, staged x fits); false: the caller runs the FMA kernel. */
template <int BITS, int MT>
static bool qgemv_mma_try(dr_cuda_ctx *cx, const qgemv_set &set, const float *x, int T, int n, int gs,
                          dr_dtype sdt) {
    /* DR_CUDA_QGEMV_MMA: "0" off, else the digits name the bits it runs
       wherever it applies ("48": both); unset: the measured default */
    static int on = -1, dflt = 1;
    if (on < 0) {
        const char *e = getenv("DR_CUDA_QGEMV_MMA");
        dflt = !e;
        on = e ? (strchr(e, '4') ? 4 : 0) | (strchr(e, '8') ? 8 : 0) : QM_DEFAULT_BITS;
    }
    static size_t smem_max = 0; /* the device's opt-in limit (163 KB on sm_80), at most QM_SMEM_MAX */
    if (!smem_max) {
        int dev = 0, v = 0;
        if (cudaGetDevice(&dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess)
            v = 48 << 10;
        cudaGetLastError();
        v -= DR_TL_SMEM; /* (a timeline build's scope) */
        smem_max = (size_t)v < QM_SMEM_MAX ? (size_t)v : QM_SMEM_MAX;
    }
    const int nv = n / (128 / BITS), nc = nv / 4;
    const size_t smem = qm_smem(T, MT, nv);
    if (!(on & BITS) || nv < 4 || nv % 4 || smem > smem_max)
        return false;
    int gsh = 0;
    while ((128 / BITS) << gsh < gs)
        gsh++;
    /* warps per tile: 1 (no shared-memory reduction, no barrier) when the
       tiles alone fill two blocks of 8 warps per SM, else up to 8 (a chunk
       at least each) */
    const int rows = set.row0[set.nm], tiles = (rows + 15) / 16, fill = 16 * (cx->n_sm > 0 ? cx->n_sm : 132);
    static int kw_force = -1; /* DR_CUDA_QGEMV_KW=1/2/4/8: warps per tile forced (measurements) */
    if (kw_force < 0) {
        const char *e = getenv("DR_CUDA_QGEMV_KW");
        kw_force = e ? atoi(e) : 0;
    }
    int KW = 1;
    while (KW < 8 && 2 * KW <= nc && (kw_force ? KW < kw_force : tiles * KW < fill))
        KW *= 2;
    if (dflt && T == 1 && KW > 1)
        return false;
    void (*k)(const qgemv_set, const float *, int, int, int, dr_dtype, int) = qgemv_mma_kernel<BITS, MT>;
    static int per_sm = 0;
    static size_t per_sm_smem = 0;
    if (per_sm_smem != smem) {
        cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_max);
        if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k, QM_TPB, smem) != cudaSuccess || per_sm < 1)
            per_sm = 1;
        cudaGetLastError();
        per_sm_smem = smem;
    }
    const int tpb = 8 / KW;
    const size_t want = dr_cdiv((size_t)rows, (size_t)(16 * tpb)),
                 cap = (size_t)per_sm * (cx->n_sm > 0 ? cx->n_sm : 132);
    dim3 grid((unsigned)(want < cap ? want : cap)), block(QM_TPB);
    dr_cuda_launch(cx, true, k, grid, block, smem, set, x, T, n, gsh, sdt, KW);
    return true;
}

template <int BITS>
static void qgemv_bits(dr_cuda_ctx *cx, const qgemv_set &set, const float *x, int T, int n, int gs, dr_dtype sdt) {
    if (T == 1) {
        if (!qgemv_mma_try<BITS, 1>(cx, set, x, T, n, gs, sdt))
            qgemv_pick<BITS, 1>(cx, set, x, T, n, gs, sdt);
    } else if (T == 2) {
        if (!qgemv_mma_try<BITS, 2>(cx, set, x, T, n, gs, sdt))
            qgemv_pick<BITS, 2>(cx, set, x, T, n, gs, sdt);
    } else if (T <= 4) {
        if (!qgemv_mma_try<BITS, 4>(cx, set, x, T, n, gs, sdt))
            qgemv_pick<BITS, 4>(cx, set, x, T, n, gs, sdt);
    } else if (!qgemv_mma_try<BITS, 8>(cx, set, x, T, n, gs, sdt)) {
        qgemv_pick<BITS, 8>(cx, set, x, T, n, gs, sdt);
    }
}

/* T <= QG_MAX_T tokens over the set (all of one bits / group / sb dtype / n) */
static void qgemv_run(dr_cuda_ctx *cx, const qgemv_set &set, const dr_tensor *w0, const float *x, int T) {
    const int n = (int)w0->ne[w0->ndim - 1];
    if (w0->q.bits == 4)
        qgemv_bits<4>(cx, set, x, T, n, w0->q.group_size, w0->q.sb_dtype);
    else
        qgemv_bits<8>(cx, set, x, T, n, w0->q.group_size, w0->q.sb_dtype);
}

static void qset_add(qgemv_set *set, const dr_tensor *w, float *y) {
    const qmat m = q_parts(w);
    const int i = set->nm++;
    set->W[i] = m.w;
    set->S[i] = m.s;
    set->B[i] = m.b;
    set->y[i] = y;
    set->row0[i + 1] = set->row0[i] + (int)w->ne[w->ndim - 2];
}

/* ---- prefill: dequantize to bf16 hi/lo, three GEMMs ---- */

/* rows [r0, r0 + nr) of the matrix -> hi/lo [nr, n]; one thread per word,
 * its 32 / bits values stored as one 16- (4-bit) or 8-byte (8-bit) vector */
template <int BITS>
__global__ void qdequant_split_kernel(bf16 *hi, bf16 *lo, const uint32_t *__restrict__ W, const void *S,
                                      const void *B, dr_dtype sdt, int n, int gs, size_t r0, size_t nr) {
    constexpr int per = 32 / BITS;
    constexpr unsigned mask = (1u << BITS) - 1u;
    const int wpr = n / per, G = n / gs;
    const size_t nw = nr * (size_t)wpr;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < nw; i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = i / wpr;
        const int wi = (int)(i % wpr), e0 = wi * per;
        const unsigned v = __ldg(W + (r0 + r) * wpr + wi);
        const size_t g = (r0 + r) * G + e0 / gs;
        const float s = ld_sb(S, sdt, g), b = ld_sb(B, sdt, g);
        uint32_t h[per / 2], l[per / 2];
#pragma unroll
        for (int j = 0; j < per; j += 2) {
            float w[2], d[2];
#pragma unroll
            for (int k = 0; k < 2; k++) {
                w[k] = __fadd_rn(__fmul_rn(s, (float)((v >> ((j + k) * BITS)) & mask)), b); /* as the CPU */
                d[k] = w[k] - __bfloat162float(__float2bfloat16_rn(w[k]));
            }
            h[j / 2] = dr_pack_bf16(w[0], w[1]);
            l[j / 2] = dr_pack_bf16(d[0], d[1]);
        }
        const size_t o = r * n + e0;
        if (BITS == 4) {
            *(uint4 *)(hi + o) = make_uint4(h[0], h[1], h[per / 2 - 2], h[per / 2 - 1]);
            *(uint4 *)(lo + o) = make_uint4(l[0], l[1], l[per / 2 - 2], l[per / 2 - 1]);
        } else {
            *(uint2 *)(hi + o) = make_uint2(h[0], h[per / 2 - 1]);
            *(uint2 *)(lo + o) = make_uint2(l[0], l[per / 2 - 1]);
        }
    }
}

static unsigned grid_for(const dr_cuda_ctx *cx, size_t n) {
    size_t b = (n + 255) / 256, cap = (size_t)(cx->n_sm > 0 ? cx->n_sm : 132) * 16;
    return (unsigned)(b < 1 ? 1 : b > cap ? cap : b);
}

/* ---- repacked layout (v2, the default; DR_CUDA_QGEMV_V2=0: the file layout and the kernels above) ----
 *
 * Rows stay contiguous (MoE decode, embedding and prefill read single rows),
 * but inside a row the values are permuted on upload so that the decode GEMV
 * feeds mma.sync m16n8k16 A fragments straight from one 16-byte load per
 * lane and row: rows are padded to np values (a multiple of 2 blocks), a
 * block is 128 values (4-bit) or 64 (8-bit) = 4 lanes c x 16 bytes, and the
 * word i of lane c holds (4-bit) the k-steps 2i and 2i + 1 of the block:
 * nibble pair s (bits 4s and 16 + 4s) = k (2c, 2c + 1) + 8 (s % 2) of step
 * 2i + s / 2, i.e. exactly the bf16 pairs a0/a2 of the MMA's row; 8-bit: the
 * word i is step i, bytes (0, 2) = k (2c, 2c + 1), bytes (1, 3) = k
 * (2c + 8, 2c + 9). Padded values are 0.
 * Scales and biases are interleaved per row and group, (s, b) in the file's
 * dtype, [rows][np / gs] (padded groups 0), 256 bytes after the packed words.
 * Same bytes as the file (plus the padding of odd widths).
 */

static int q2_mode = -1; /* decided at the first upload, for the process */
static bool q2_on(void) {
    if (q2_mode < 0) {
        const char *e = getenv("DR_CUDA_QGEMV_V2");
        q2_mode = !(e && e[0] == '0');
    }
    return q2_mode != 0;
}

static int q2_np(int n, int bits) { /* padded width: whole pairs of blocks */
    const int u = bits == 4 ? 256 : 128;
    return (n + u - 1) / u * u;
}

/* k (within the row) of value `pos` (nibble / byte position) of word wd of a
 * repacked row */
static __host__ __device__ __forceinline__ int q2_k(int bits, int wd, int pos) {
    const int blk = wd >> 4, c = (wd >> 2) & 3, i = wd & 3;
    if (bits == 4) {
        const int p = pos & 3;
        return blk * 128 + 16 * (2 * i + (p >> 1)) + 2 * c + 8 * (p & 1) + (pos >> 2);
    }
    return blk * 64 + 16 * i + 2 * c + 8 * (pos & 1) + (pos >> 1);
}

/* word index and bit shift of value k of a repacked row */
static __device__ __forceinline__ int q2_loc(int bits, int k, int *shift) {
    const int ks = k & 15, c = (ks & 7) >> 1, h8 = ks >> 3, odd = ks & 1;
    if (bits == 4) {
        const int blk = k >> 7, j = (k & 127) >> 4;
        *shift = 4 * (2 * (j & 1) + h8) + 16 * odd;
        return blk * 16 + c * 4 + (j >> 1);
    }
    const int blk = k >> 6, j = (k & 63) >> 4;
    *shift = 8 * (h8 + 2 * odd);
    return blk * 16 + c * 4 + j;
}

/* (scale, bias) of pair word(s) p: bf16 / f16 pair in one word, f32 in two */
static __device__ __forceinline__ void q2_sb(const uint32_t *p, int sdt, float *s, float *b) {
    if (sdt == DR_DT_F32) {
        *s = __uint_as_float(p[0]), *b = __uint_as_float(p[1]);
    } else {
        const uint32_t v = p[0];
        if (sdt == DR_DT_BF16) {
            *s = __uint_as_float(v << 16), *b = __uint_as_float(v & 0xFFFF0000u);
        } else {
            *s = __half2float(__ushort_as_half((unsigned short)(v & 0xFFFFu)));
            *b = __half2float(__ushort_as_half((unsigned short)(v >> 16)));
        }
    }
}

/* file layout rows (fw [nr][n*bits/32], fs / fb [nr][n/gs]) -> repacked
 * rows at dw (words) and dsb (pairs); one thread per destination word, then
 * per (row, group) */
__global__ void q2_repack_kernel(uint32_t *dw, uint32_t *dsb, const uint32_t *__restrict__ fw, const char *fs,
                                 const char *fb, int bits, int n, int np, int gs, int sbsz, size_t nr) {
    const int fr = n * bits / 32, rw = np * bits / 32, per = 32 / bits, G = n / gs, Gp = np / gs;
    const unsigned mask = (1u << bits) - 1u;
    const size_t nw = nr * (size_t)rw, ns = nr * (size_t)Gp, stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < nw + ns; i += stride) {
        if (i < nw) {
            const size_t r = i / rw;
            const int wd = (int)(i % rw);
            uint32_t v = 0;
            for (int pos = 0; pos < per; pos++) {
                const int k = q2_k(bits, wd, pos);
                if (k < n) {
                    const uint32_t q = (__ldg(fw + r * fr + k / per) >> ((k % per) * bits)) & mask;
                    v |= q << (pos * bits);
                }
            }
            dw[i] = v;
        } else {
            const size_t j = i - nw, r = j / Gp;
            const int g = (int)(j % Gp);
            uint32_t s = 0, b = 0;
            if (g < G) {
                if (sbsz == 4) {
                    s = ((const uint32_t *)fs)[r * G + g], b = ((const uint32_t *)fb)[r * G + g];
                } else {
                    s = ((const uint16_t *)fs)[r * G + g], b = ((const uint16_t *)fb)[r * G + g];
                }
            }
            if (sbsz == 4)
                dsb[2 * j] = s, dsb[2 * j + 1] = b;
            else
                dsb[j] = s | (b << 16);
        }
    }
}

#define Q2_CHUNK ((size_t)32 << 20) /* file bytes per repack step (DR_SCR_QW scratch) */

static dr_status q2_upload(dr_cuda_ctx *cx, dr_tensor *t, const char *nm) {
    const int n = (int)t->ne[t->ndim - 1], bits = t->q.bits, gs = t->q.group_size, np = q2_np(n, bits);
    const int sbsz = (int)dr_dtype_size(t->q.sb_dtype), G = n / gs;
    const size_t rows = q_rows(t), rw = (size_t)np * bits / 32, so = align256(rows * rw * 4);
    const size_t tot = so + rows * (size_t)(np / gs) * 2 * sbsz;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, tot);
    if (e != cudaSuccess) {
        cudaGetLastError();
        size_t fr = 0, all = 0;
        cudaMemGetInfo(&fr, &all);
        return DR_FAIL(dr_cuda_status(e),
                       "tensor %s: cannot allocate %zu bytes (%d-bit packed + scales + biases) on the GPU (%zu of %zu "
                       "MiB free): %s",
                       nm, tot, bits, fr >> 20, all >> 20, cudaGetErrorString(e));
    }
    const size_t fpr = (size_t)n * bits / 8, fsr = (size_t)G * sbsz, frow = fpr + 2 * fsr;
    size_t cr = Q2_CHUNK / frow;
    cr = cr < 1 ? 1 : cr > rows ? rows : cr;
    char *tmp = rows ? (char *)dr_cuda_scratch(cx, DR_SCR_QW, cr * frow + 512) : NULL;
    if (rows && !tmp) {
        cudaFree(p);
        return DR_FAIL(DR_ERR_DEVICE, "tensor %s: no scratch for the repack: %s", nm, dr_last_error());
    }
    for (size_t r0 = 0; r0 < rows && e == cudaSuccess; r0 += cr) {
        const size_t nr = rows - r0 < cr ? rows - r0 : cr;
        char *tw = tmp, *ts = tmp + align256(nr * fpr), *tb = ts + align256(nr * fsr);
        if ((e = cudaMemcpyAsync(tw, (const char *)t->data + r0 * fpr, nr * fpr, cudaMemcpyHostToDevice,
                                 cx->stream)) != cudaSuccess ||
            (e = cudaMemcpyAsync(ts, (const char *)t->q.scales + r0 * fsr, nr * fsr, cudaMemcpyHostToDevice,
                                 cx->stream)) != cudaSuccess ||
            (e = cudaMemcpyAsync(tb, (const char *)t->q.biases + r0 * fsr, nr * fsr, cudaMemcpyHostToDevice,
                                 cx->stream)) != cudaSuccess)
            break;
        const size_t work = nr * rw + nr * (size_t)(np / gs);
        q2_repack_kernel<<<grid_for(cx, work), 256, 0, cx->stream>>>(
            (uint32_t *)p + r0 * rw, (uint32_t *)((char *)p + so) + r0 * (size_t)(np / gs) * (sbsz / 2),
            (const uint32_t *)tw, ts, tb, bits, n, np, gs, sbsz, nr);
        e = cudaGetLastError();
        if (e == cudaSuccess)
            e = cudaStreamSynchronize(cx->stream); /* the scratch is reused by the next chunk's copies */
    }
    if (e != cudaSuccess) {
        cudaFree(p);
        return DR_FAIL(dr_cuda_status(e), "tensor %s: upload / repack of %zu quantized bytes failed: %s", nm, tot,
                       cudaGetErrorString(e));
    }
    t->dev = p;
    return DR_OK;
}

/* geometry of a repacked tensor */
struct q2geo {
    int rows, n, np, gs, rq; /* rq: uint4 per row */
    int gsh;                 /* log2(gs): gs is 32, 64 or 128 (checked at upload) */
    int sbw;                 /* 32-bit words per (s, b) pair: 1 or 2 */
    size_t sb_off;           /* bytes from the block start */
};

static q2geo q2_geo(const dr_tensor *t) {
    q2geo g;
    g.rows = (int)q_rows(t);
    g.n = (int)t->ne[t->ndim - 1];
    g.np = q2_np(g.n, t->q.bits);
    g.gs = t->q.group_size;
    g.gsh = g.gs == 32 ? 5 : g.gs == 64 ? 6 : 7;
    g.rq = g.np * t->q.bits / 128;
    g.sbw = t->q.sb_dtype == DR_DT_F32 ? 2 : 1;
    g.sb_off = align256((size_t)g.rows * g.rq * 16);
    return g;
}

/* ---- v2 decode GEMV on the tensor cores ----
 *
 * A tile is 16 rows; lane (g, c) of a warp loads 16 bytes of row g and of row
 * g + 8 per block (its 4 A-fragment words of 8 or 4 MMAs), so a warp reads
 * 16 rows x 64 contiguous bytes per block load, every byte used. B columns
 * are (token, hi / lo) pairs: column 2t + h of column block nb = t / 4 holds
 * x_h of token t (x = hi + lo in bf16, relative error 2^-17), so thread
 * (g, c)'s accumulators are rows g, g + 8 of token 4 nb + c, hi and lo. The
 * C fragment is flushed per segment (a group, or a batch when the group is
 * longer): acc += s (c_hi + c_lo) + b * sum(x over the segment), sum in fp32
 * from x itself. x is staged per block in shared memory in fragment order:
 * uint4 [k / 32][2T columns][c] = b0, b1 of two k-steps (conflict-free:
 * 8 lanes read 128 consecutive bytes). Tiles are split over KW warps of a
 * block by batches (BLK blocks) and summed in shared memory in a fixed
 * order (deterministic); persistent blocks; the next batch is loaded before
 * the current one is computed; PDL wait after the first weight loads.
 */

#define Q2_TPB 256

struct q2_set {
    const uint4 *W[QG_SETS];
    const uint32_t *SB[QG_SETS];
    float *y[QG_SETS];
    int rows[QG_SETS];
    int t0[QG_SETS + 1]; /* first tile of each matrix; t0[nm] = tiles */
    int nm;
};

/* 4-bit: nibble pair s of v as bf16x2 (q, q') (128 + q exact, minus 128) */
static __device__ __forceinline__ uint32_t q2_p4(uint32_t v, int s) {
    return qm_pair(v, s);
}

/* 8-bit: bytes (h, h + 2) of v as bf16x2: q = 16 qh + ql, both exact */
static __device__ __forceinline__ uint32_t q2_p8(uint32_t v, int h) {
    const uint32_t lo = ((v >> (8 * h)) & 0x000F000Fu) | 0x43004300u;      /* 128 + ql */
    const uint32_t hi = ((v >> (8 * h + 4)) & 0x000F000Fu) | 0x45004500u;  /* 2048 + 16 qh */
    const uint32_t c1 = 0x45084508u;                                       /* 2176 */
    __nv_bfloat162 a = __hsub2(*(const __nv_bfloat162 *)&hi, *(const __nv_bfloat162 *)&c1); /* 16 qh - 128 */
    a = __hadd2(a, *(const __nv_bfloat162 *)&lo);
    return *(const uint32_t *)&a;
}

template <int BITS, int NB, int GSH, bool SB32>
__global__ void __launch_bounds__(Q2_TPB, NB == 1 ? 2 : 1)
    q2_gemv_kernel(const q2_set set, const float *__restrict__ x, int T, int n, int np, int KW, int sdt) {
    DR_TL_SCOPE();
    extern __shared__ uint4 q2_sm[];
    constexpr int KB = BITS == 4 ? 128 : 64, SPB = KB / 16, BLK = SB32 ? 1 : 2, KBAT = BLK * KB;
    constexpr int GS = 32 << GSH, SEG = GS < KBAT ? GS : KBAT, SPS = SEG / 16;
    constexpr int SBW = SB32 ? 2 : 1, NGR = KBAT >= GS ? KBAT / GS : 1, NSW = NGR * SBW;
    dr_pdl_trigger();
    const int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3, w = threadIdx.x >> 5;
    const int sub = w / KW, kw = w % KW, tpb = 8 / KW;
    const int ntiles = set.t0[set.nm], nsteps = (ntiles + tpb - 1) / tpb, nbat = np / KBAT;
    const int rq = np * BITS / 128, Gp = np / GS, ncol = 2 * T, njp = np / 32, nseg = np / SEG;
    uint4 *xs = q2_sm;
    float *sx = (float *)(q2_sm + (size_t)njp * ncol * 4);
    float *red = sx + (size_t)T * nseg; /* [2][8 warps][16 rows][4 NB] */

    int ls = blockIdx.x, lb = kw; /* load cursor: step, batch */
    const uint4 *pw[2];
    const uint32_t *psb[2];
    auto rows_of = [&](int st) {
        int tile = st * tpb + sub;
        tile = tile < ntiles ? tile : 0; /* past the end: re-read tile 0, dropped */
        int m = 0;
#pragma unroll
        for (int j = 1; j < QG_SETS; j++)
            if (j < set.nm && tile >= set.t0[j])
                m = j;
        const uint4 *W = set.W[0];
        const uint32_t *S = set.SB[0];
        int rows = set.rows[0], t0 = 0;
#pragma unroll
        for (int j = 1; j < QG_SETS; j++)
            if (j == m)
                W = set.W[j], S = set.SB[j], rows = set.rows[j], t0 = set.t0[j];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            int lr = (tile - t0) * 16 + r * 8 + g;
            lr = lr < rows ? lr : 0;
            pw[r] = W + (size_t)lr * rq + c;
            psb[r] = S + (size_t)lr * Gp * SBW;
        }
    };
    uint4 ua[BLK][2], ub[BLK][2];
    uint32_t sa[2][NSW], sb[2][NSW];
    auto fetch = [&](uint4 (&u)[BLK][2], uint32_t (&s)[2][NSW]) {
#pragma unroll
        for (int k = 0; k < BLK; k++)
#pragma unroll
            for (int r = 0; r < 2; r++)
                u[k][r] = dr_ld_w(pw[r] + (size_t)(lb * BLK + k) * 4);
        const int g0 = lb * KBAT / GS;
#pragma unroll
        for (int r = 0; r < 2; r++)
#pragma unroll
            for (int i = 0; i < NSW; i++)
                s[r][i] = __ldg(psb[r] + (size_t)g0 * SBW + i);
    };
    auto advance = [&]() {
        lb += KW;
        if (lb >= nbat) {
            lb = kw;
            ls += gridDim.x;
            if (ls < nsteps)
                rows_of(ls);
        }
    };
    int cs = ls, cb = lb; /* the batch in ua */
    if (ls < nsteps) {
        rows_of(ls);
        fetch(ua, sa);
        advance();
        if (ls < nsteps)
            fetch(ub, sb);
    }
    dr_pdl_wait();
    /* stage x: hi / lo in fragment order, then the segment sums */
    for (int i = threadIdx.x; i < njp * T * 4; i += Q2_TPB) {
        const int cc = i & 3, t = (i >> 2) % T, jp = (i >> 2) / T;
        uint32_t hw[4], lw[4];
#pragma unroll
        for (int q = 0; q < 4; q++) {
            const int k = 32 * jp + 8 * q + 2 * cc;
            const float2 v = k < n ? __ldg((const float2 *)(x + (size_t)t * n + k)) : make_float2(0.0f, 0.0f);
            dr_split2(v.x, v.y, hw[q], lw[q]);
        }
        xs[((size_t)jp * ncol + 2 * t) * 4 + cc] = make_uint4(hw[0], hw[1], hw[2], hw[3]);
        xs[((size_t)jp * ncol + 2 * t + 1) * 4 + cc] = make_uint4(lw[0], lw[1], lw[2], lw[3]);
    }
    for (int i = threadIdx.x; i < T * nseg; i += Q2_TPB) {
        const int t = i / nseg, k0 = (i % nseg) * SEG;
        float s = 0.0f;
        if (k0 < n) {
            const float4 *xp = (const float4 *)(x + (size_t)t * n + k0);
#pragma unroll 4
            for (int j = 0; j < SEG / 4; j++) {
                const float4 v = __ldg(xp + j);
                s += (v.x + v.y) + (v.z + v.w);
            }
        }
        sx[i] = s;
    }
    __syncthreads();
    if (blockIdx.x >= nsteps)
        return;

    float acc[NB][2];
#pragma unroll
    for (int b = 0; b < NB; b++)
        acc[b][0] = acc[b][1] = 0.0f;
    int buf = 0;
    for (;;) {
        float C[NB][4];
#pragma unroll
        for (int b = 0; b < NB; b++)
            C[b][0] = C[b][1] = C[b][2] = C[b][3] = 0.0f;
        const uint4 zero4 = make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int k = 0; k < BLK; k++) {
            uint4 Bq[NB];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const uint32_t w0 = (&ua[k][0].x)[i], w1 = (&ua[k][1].x)[i];
                /* the step pair of this word (4-bit: steps 2i, 2i + 1; 8-bit: step i of pair i / 2) */
                const int kk = cb * KBAT + k * KB + (BITS == 4 ? 32 * i : 16 * i);
                if (BITS == 4 || (i & 1) == 0) {
#pragma unroll
                    for (int b = 0; b < NB; b++) {
                        const int col = 8 * b + g;
                        Bq[b] = col < ncol ? xs[((size_t)(kk >> 5) * ncol + col) * 4 + c] : zero4;
                    }
                }
                static_assert(BITS == 4 || BITS == 8, "bits");
                if (BITS == 4) {
                    const uint32_t a0 = q2_p4(w0, 0), a1 = q2_p4(w1, 0), a2 = q2_p4(w0, 1), a3 = q2_p4(w1, 1);
                    const uint32_t e0 = q2_p4(w0, 2), e1 = q2_p4(w1, 2), e2 = q2_p4(w0, 3), e3 = q2_p4(w1, 3);
#pragma unroll
                    for (int b = 0; b < NB; b++)
                        qm_mma(C[b], a0, a1, a2, a3, Bq[b].x, Bq[b].y);
                    const int st0 = k * SPB + 2 * i; /* step within the batch (segments are >= 2 steps) */
#pragma unroll
                    for (int b = 0; b < NB; b++)
                        qm_mma(C[b], e0, e1, e2, e3, Bq[b].z, Bq[b].w);
                    if ((st0 + 2) % SPS == 0) {
                        const int si = (st0 + 2) / SPS - 1, gi = (si * SEG / GS) * SBW;
                        float s0, b0, s1, b1;
                        q2_sb(&sa[0][gi], SB32 ? DR_DT_F32 : sdt, &s0, &b0);
                        q2_sb(&sa[1][gi], SB32 ? DR_DT_F32 : sdt, &s1, &b1);
#pragma unroll
                        for (int b = 0; b < NB; b++) {
                            const int t = 4 * b + c;
                            const float xsum = t < T ? sx[(size_t)t * nseg + cb * (KBAT / SEG) + si] : 0.0f;
                            acc[b][0] = fmaf(s0, C[b][0] + C[b][1], fmaf(b0, xsum, acc[b][0]));
                            acc[b][1] = fmaf(s1, C[b][2] + C[b][3], fmaf(b1, xsum, acc[b][1]));
                            C[b][0] = C[b][1] = C[b][2] = C[b][3] = 0.0f;
                        }
                    }
                } else {
                    const uint32_t a0 = q2_p8(w0, 0), a1 = q2_p8(w1, 0), a2 = q2_p8(w0, 1), a3 = q2_p8(w1, 1);
#pragma unroll
                    for (int b = 0; b < NB; b++)
                        qm_mma(C[b], a0, a1, a2, a3, (i & 1) ? Bq[b].z : Bq[b].x, (i & 1) ? Bq[b].w : Bq[b].y);
                    const int st = k * SPB + i;
                    if ((st + 1) % SPS == 0) {
                        const int si = (st + 1) / SPS - 1, gi = (si * SEG / GS) * SBW;
                        float s0, b0, s1, b1;
                        q2_sb(&sa[0][gi], SB32 ? DR_DT_F32 : sdt, &s0, &b0);
                        q2_sb(&sa[1][gi], SB32 ? DR_DT_F32 : sdt, &s1, &b1);
#pragma unroll
                        for (int b = 0; b < NB; b++) {
                            const int t = 4 * b + c;
                            const float xsum = t < T ? sx[(size_t)t * nseg + cb * (KBAT / SEG) + si] : 0.0f;
                            acc[b][0] = fmaf(s0, C[b][0] + C[b][1], fmaf(b0, xsum, acc[b][0]));
                            acc[b][1] = fmaf(s1, C[b][2] + C[b][3], fmaf(b1, xsum, acc[b][1]));
                            C[b][0] = C[b][1] = C[b][2] = C[b][3] = 0.0f;
                        }
                    }
                }
            }
        }
        if (cb + KW >= nbat) { /* the warp's last batch of this step: its rows are done */
            const int tile = cs * tpb + sub;
            if (KW == 1) {
                if (tile < ntiles) {
                    int m = 0;
#pragma unroll
                    for (int j = 1; j < QG_SETS; j++)
                        if (j < set.nm && tile >= set.t0[j])
                            m = j;
                    float *Y = set.y[0];
                    int rows = set.rows[0], t0 = 0;
#pragma unroll
                    for (int j = 1; j < QG_SETS; j++)
                        if (j == m)
                            Y = set.y[j], rows = set.rows[j], t0 = set.t0[j];
#pragma unroll
                    for (int b = 0; b < NB; b++)
#pragma unroll
                        for (int r = 0; r < 2; r++) {
                            const int lr = (tile - t0) * 16 + r * 8 + g, t = 4 * b + c;
                            if (lr < rows && t < T)
                                Y[(size_t)t * rows + lr] = acc[b][r];
                        }
                }
            } else {
                float *rb = red + (size_t)buf * 8 * 16 * 4 * NB;
#pragma unroll
                for (int b = 0; b < NB; b++)
#pragma unroll
                    for (int r = 0; r < 2; r++)
                        rb[((size_t)w * 16 + r * 8 + g) * 4 * NB + 4 * b + c] = acc[b][r];
                __syncthreads();
                for (int i = threadIdx.x; i < tpb * 16 * T; i += Q2_TPB) {
                    const int st = i / (16 * T), rr = (i / T) % 16, t = i % T;
                    const int tl = cs * tpb + st;
                    if (tl >= ntiles)
                        continue;
                    float v = 0.0f;
                    for (int j = 0; j < KW; j++)
                        v += rb[((size_t)(st * KW + j) * 16 + rr) * 4 * NB + t];
                    int m = 0;
#pragma unroll
                    for (int j = 1; j < QG_SETS; j++)
                        if (j < set.nm && tl >= set.t0[j])
                            m = j;
                    float *Y = set.y[0];
                    int rows = set.rows[0], t0 = 0;
#pragma unroll
                    for (int j = 1; j < QG_SETS; j++)
                        if (j == m)
                            Y = set.y[j], rows = set.rows[j], t0 = set.t0[j];
                    const int lr = (tl - t0) * 16 + rr;
                    if (lr < rows)
                        Y[(size_t)t * rows + lr] = v;
                }
                buf ^= 1;
            }
#pragma unroll
            for (int b = 0; b < NB; b++)
                acc[b][0] = acc[b][1] = 0.0f;
        }
        if (ls >= nsteps) /* (the cursor is at the batch in ub) */
            break;
#pragma unroll
        for (int k = 0; k < BLK; k++)
#pragma unroll
            for (int r = 0; r < 2; r++)
                ua[k][r] = ub[k][r];
#pragma unroll
        for (int r = 0; r < 2; r++)
#pragma unroll
            for (int i = 0; i < NSW; i++)
                sa[r][i] = sb[r][i];
        cs = ls, cb = lb;
        advance();
        if (ls < nsteps)
            fetch(ub, sb);
    }
}

/* shared memory of the v2 GEMV: staged x (64 bytes per 32 values and column,
 * 2T columns), segment sums, reduction buffers */
static size_t q2_smem(int T, int np, int gs, int bits, bool sb32) {
    const int kbat = (bits == 4 ? 128 : 64) * (sb32 ? 1 : 2), seg = gs < kbat ? gs : kbat;
    return (size_t)(np / 32) * 2 * T * 64 + (size_t)T * (np / seg) * 4 + 2 * 8 * 16 * 8 * 4;
}

template <int BITS, int NB, int GSH, bool SB32>
static void q2_launch(dr_cuda_ctx *cx, const q2_set &set, const float *x, int T, int n, int np, int sdt,
                      size_t smem, size_t smem_max) {
    void (*k)(const q2_set, const float *, int, int, int, int, int) = q2_gemv_kernel<BITS, NB, GSH, SB32>;
    static int per_sm = 0;
    static size_t per_sm_smem = 0;
    if (per_sm_smem != smem) {
        cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_max);
        if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k, Q2_TPB, smem) != cudaSuccess || per_sm < 1)
            per_sm = 1;
        cudaGetLastError();
        per_sm_smem = smem;
    }
    constexpr int KBAT = (BITS == 4 ? 128 : 64) * (SB32 ? 1 : 2);
    const int tiles = set.t0[set.nm], nbat = np / KBAT, nsm = cx->n_sm > 0 ? cx->n_sm : 132;
    const size_t cap = (size_t)per_sm * nsm;
    static int kw_force = -1; /* DR_CUDA_QGEMV_KW=1/2/4/8: warps per tile forced (measurements) */
    if (kw_force < 0) {
        const char *e = getenv("DR_CUDA_QGEMV_KW");
        kw_force = e ? atoi(e) : 0;
    }
    /* warps per tile: the fewest rounds of batches per warp (persistent
       blocks: rounds of steps times batches per warp and step), each
       doubling of KW charged 15% (the shared-memory reduction and its
       barrier; the old tensor-core kernel ran lm_head 37% slower at KW = 8
       than at KW = 1 on the H200) */
    int KW = 1;
    double best = 1e300;
    for (int kw = 1, l2 = 0; kw <= 8 && kw <= nbat; kw *= 2, l2++) {
        const size_t steps = dr_cdiv((size_t)tiles, (size_t)(8 / kw));
        const double cost =
            (double)(dr_cdiv(steps, cap) * (size_t)dr_cdiv((size_t)nbat, (size_t)kw)) * (1.0 + 0.15 * l2);
        if (kw_force ? kw == kw_force : cost < best)
            best = cost, KW = kw;
    }
    const size_t steps = dr_cdiv((size_t)tiles, (size_t)(8 / KW));
    dim3 grid((unsigned)(steps < cap ? steps : cap)), block(Q2_TPB);
    dr_cuda_launch(cx, true, k, grid, block, smem, set, x, T, n, np, KW, sdt);
}

template <int BITS, int NB, bool SB32>
static void q2_gs(dr_cuda_ctx *cx, const q2_set &set, const float *x, int T, int n, int np, int gs, int sdt,
                  size_t smem, size_t smem_max) {
    if (gs == 32)
        q2_launch<BITS, NB, 0, SB32>(cx, set, x, T, n, np, sdt, smem, smem_max);
    else if (gs == 64)
        q2_launch<BITS, NB, 1, SB32>(cx, set, x, T, n, np, sdt, smem, smem_max);
    else
        q2_launch<BITS, NB, 2, SB32>(cx, set, x, T, n, np, sdt, smem, smem_max);
}

static size_t q2_smem_max(void) {
    static size_t m = 0; /* the device's opt-in limit, at most QM_SMEM_MAX */
    if (!m) {
        int dev = 0, v = 0;
        if (cudaGetDevice(&dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess)
            v = 48 << 10;
        cudaGetLastError();
        v -= DR_TL_SMEM; /* (a timeline build's scope) */
        m = (size_t)v < QM_SMEM_MAX ? (size_t)v : QM_SMEM_MAX;
    }
    return m;
}

/* ---- v2 decode GEMV on dp4a (one token, 4-bit, bf16 / f16 scales) ----
 *
 * The tensor-core kernel above issues ~2.2 instructions a weight through
 * chains of unpack -> HSUB2 -> MMA and holds 109 registers (2 blocks an SM):
 * ncu put it at 22-32% of DRAM throughput on the 9B / 0.8B shapes, its
 * warps stalled on fixed-latency dependencies and on memory (docs/CUDA.md,
 * session 28). This kernel takes x to integers instead, as the CPU's
 * quant_avx2_digits.c does: per group of gs values a step sx = max |x| /
 * (127 2^16) and X = round(x / sx) = d2 2^16 + d1 2^8 + d0 with int8
 * digits, so sum q X is exact in int32 through dp4a (four products an
 * instruction): per word, one AND and one shift-AND split the nibbles into
 * even and odd bytes and six dp4a take them against three digit levels,
 * ~1.5 instructions a weight. The dot is then sum_g s_g sx_g t_g + b_g X_g,
 * t_g the digit sums recombined in fp32 (exact below 2^24), X_g the sum of
 * x over the group (a fixed shuffle tree: deterministic).
 *
 * Each block stages the digits of x in the repacked order (the nibbles of
 * each word split even / odd; 24 int32 per 16-byte vector) in shared
 * memory. A warp owns R rows at a time and walks them lane-strided by 16-byte
 * vectors, U vectors a row per batch. Batches come by cp.async through a
 * ring of QD_ST stages that each thread owns alone (it reads back only what
 * it copied: no barrier), QD_ST - 1 batches ahead, the next rows' once a
 * row's vectors are done, so the bytes in flight cost no registers.
 * Persistent warps; the first batches are issued before the PDL wait.
 * Epilogues (EPI): QD_NORM stages RMSNorm(x; gain) instead of x (the block
 * sums the squares first: rmsnorm_matmul_n); QD_ADD adds the products to y
 * (matmul_add_rmsnorm without a norm: the residual add).
 */

#define QD_TPB 256
#define QD_MINB 3 /* blocks an SM: 24 warps, <= 85 registers */
#define QD_SJ 4   /* float4 of x a thread loads at once when staging (4096 values a block) */
/* stages of the ring: one batch ahead. On the H200 3 and 4 stages (2 blocks
   an SM by shared memory, against 3 by registers) were 0-4% slower on the 9B
   matrices and both lm_heads (docs/CUDA.md, session 28). */
#define QD_ST 2
/* epilogues; QD_SWIGLU*: the set is (gate, up) of equal rows, a warp's R
   rows are R / 2 gate rows and the same up rows, y = silu(gate) * up */
enum { QD_PLAIN, QD_NORM, QD_ADD, QD_SWIGLU, QD_SWIGLU_NORM };

/* float4 f0 + threadIdx.x + QD_TPB j of x into v[j] (zeros past n) */
static __device__ __forceinline__ void qd_load(float4 (&v)[QD_SJ], const float *x, int n, int f0) {
#pragma unroll
    for (int j = 0; j < QD_SJ; j++) {
        const int f = f0 + threadIdx.x + QD_TPB * j;
        v[j] = 4 * f < n ? __ldg((const float4 *)x + f) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
}

static __device__ __forceinline__ float qd_sumsq(const float4 (&v)[QD_SJ]) {
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < QD_SJ; j++)
        ss += v[j].x * v[j].x + v[j].y * v[j].y + v[j].z * v[j].z + v[j].w * v[j].w;
    return ss;
}

/* Stage x [n] (zero-padded to np) as digits, steps and group sums; the whole
 * block; thread t takes float4 f = t + QD_TPB j, its group's lanes reduce
 * with shuffles (gs / 4 lanes: 8, 16 or 32).
 * With gain, x * gain / rms(x) (the bf16 GEMVs' gn_scale): the first 4096
 * values' loads (x and gain together) serve both the sum of squares and the
 * staging, so a row of up to 4096 values costs the norm one block sum and
 * no second round trip. */
template <int GS>
static __device__ __forceinline__ void qd_stage(signed char *dig, float *sx, float *xg, const float *x, int n,
                                                int np, const float *gain, float eps, float *red) {
    constexpr int GL = GS / 4; /* lanes a group */
    const int nf = np / 4;
    float4 v[QD_SJ], g[QD_SJ];
    qd_load(v, x, n, 0);
    float inv = 1.0f;
    if (gain) {
        qd_load(g, gain, n, 0); /* with x, not behind the block sum */
        float ss = qd_sumsq(v);
        for (int f0 = QD_SJ * QD_TPB; 4 * f0 < n; f0 += QD_SJ * QD_TPB) {
            float4 t[QD_SJ];
            qd_load(t, x, n, f0);
            ss += qd_sumsq(t);
        }
        inv = 1.0f / sqrtf(dr_block_sum(ss, red) / (float)n + eps);
    }
    for (int f0 = 0; f0 < nf; f0 += QD_SJ * QD_TPB) {
        if (f0) {
            qd_load(v, x, n, f0);
            if (gain)
                qd_load(g, gain, n, f0);
        }
#pragma unroll
        for (int j = 0; j < QD_SJ; j++) {
            const int f = f0 + threadIdx.x + QD_TPB * j;
            if (f >= nf) /* whole warps past the end (nf is a multiple of 64): the shuffles stay whole */
                continue;
            if (gain)
                v[j] = make_float4(v[j].x * g[j].x * inv, v[j].y * g[j].y * inv, v[j].z * g[j].z * inv,
                                   v[j].w * g[j].w * inv);
            float m = fmaxf(fmaxf(fabsf(v[j].x), fabsf(v[j].y)), fmaxf(fabsf(v[j].z), fabsf(v[j].w)));
            float s = (v[j].x + v[j].y) + (v[j].z + v[j].w);
#pragma unroll
            for (int o = 1; o < GL; o <<= 1) {
                m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
                s += __shfl_xor_sync(0xffffffffu, s, o);
            }
            const float step = m > 0.0f ? m / (127.0f * 65536.0f) : 1.0f;
            if ((threadIdx.x & (GL - 1)) == 0)
                sx[4 * f / GS] = step, xg[4 * f / GS] = s;
            const float e4[4] = {v[j].x, v[j].y, v[j].z, v[j].w};
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int X = __float2int_rn(e4[e] / step); /* |X| <= 127 2^16 */
                const int d0 = ((X & 255) ^ 128) - 128, X1 = (X - d0) >> 8;
                const int d1 = ((X1 & 255) ^ 128) - 128, d2 = (X1 - d1) >> 8;
                int bit;
                const int wd = q2_loc(4, 4 * f + e, &bit), p = bit >> 2; /* nibble p of word wd */
                signed char *b = dig + (size_t)wd * 24 + 4 * (p & 1) + (p >> 1);
                b[0] = (signed char)d2, b[8] = (signed char)d1, b[16] = (signed char)d0;
            }
        }
    }
}

/* cp.async of a vector's NB bytes of (s, b) words (.ca: the 4 lanes of a
 * block read the same ones; the weights go by prefill.cuh's dr_cp16z, .cg);
 * zeros and no read when !ok */
template <int NB> static __device__ __forceinline__ void qd_cp_sb(void *s, const void *g, bool ok) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(s);
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(a), "l"(g), "n"(NB), "r"(ok ? NB : 0));
}

/* Matrix m of the set that holds tile (16 rows) `tile`: constant indices
 * only, so the set stays in the parameter bank */
struct q2_mat {
    const uint4 *W;
    const uint32_t *S;
    float *Y;
    int rows, t0;
};
static __device__ __forceinline__ q2_mat q2_mat_of(const q2_set &set, int tile) {
    int m = 0;
#pragma unroll
    for (int j = 1; j < QG_SETS; j++)
        if (j < set.nm && tile >= set.t0[j])
            m = j;
    q2_mat r = {set.W[0], set.SB[0], set.y[0], set.rows[0], 0};
#pragma unroll
    for (int j = 1; j < QG_SETS; j++)
        if (j == m)
            r = (q2_mat){set.W[j], set.SB[j], set.y[j], set.rows[j], set.t0[j]};
    return r;
}

/* The row pointers (packed, (s, b)) of row group rg (R rows of one tile) */
template <int R, bool SW>
static __device__ __forceinline__ void qd_rows(const q2_set &set, int rg, int nv, int ng, const uint4 *(&pw)[R],
                                               const uint32_t *(&ps)[R]) {
    if (SW) { /* rows rg R/2 .. of gate (m = 0), then the same rows of up (m = 1) */
#pragma unroll
        for (int r = 0; r < R; r++) {
            int lr = rg * (R / 2) + r % (R / 2);
            lr = lr < set.rows[0] ? lr : 0; /* past the end: row 0 again, dropped */
            pw[r] = set.W[r < R / 2 ? 0 : 1] + (size_t)lr * nv;
            ps[r] = set.SB[r < R / 2 ? 0 : 1] + (size_t)lr * ng;
        }
        return;
    }
    const q2_mat mt = q2_mat_of(set, rg * R / 16);
#pragma unroll
    for (int r = 0; r < R; r++) {
        int lr = rg * R - 16 * mt.t0 + r;
        lr = lr < mt.rows ? lr : 0; /* padding rows of the last tile: row 0 again, dropped */
        pw[r] = mt.W + (size_t)lr * nv;
        ps[r] = mt.S + (size_t)lr * ng;
    }
}

/* y of the R rows of row group rg (lane 0 holds the sums) */
template <int R, bool SW>
static __device__ __forceinline__ void qd_store(const q2_set &set, int rg, const float (&acc)[R], bool add) {
    if (SW) {
#pragma unroll
        for (int j = 0; j < R / 2; j++)
            if (rg * (R / 2) + j < set.rows[0])
                set.y[0][rg * (R / 2) + j] = dr_dev_silu(acc[j]) * acc[j + R / 2];
        return;
    }
    const q2_mat mt = q2_mat_of(set, rg * R / 16);
#pragma unroll
    for (int r = 0; r < R; r++) {
        const int lr = rg * R - 16 * mt.t0 + r;
        if (lr < mt.rows)
            mt.Y[lr] = add ? mt.Y[lr] + acc[r] : acc[r];
    }
}

/* row groups of R rows: tiles of 16 rows, or (swiglu) R / 2 rows of gate and up */
static __host__ __device__ __forceinline__ int qd_groups(const q2_set &set, int R, bool sw) {
    return sw ? (set.rows[0] + R / 2 - 1) / (R / 2) : set.t0[set.nm] * (16 / R);
}

/* shared memory: the ring (QD_ST stages of R U 16-byte vectors and R U NGV
 * (s, b) words per thread), the staged x, 32 floats for the norm's sum */
static size_t qd_smem(int RU, int np, int gs) {
    return (size_t)QD_ST * RU * (16 + 4 * (128 / gs)) * QD_TPB + (size_t)np / 32 * 96 + (size_t)np / gs * 8 + 128;
}

template <int GSH, int R, int U, int EPI>
__global__ void __launch_bounds__(QD_TPB, QD_MINB) q2_dp4a_kernel(const q2_set set, const float *__restrict__ x, int n,
                                                                 int np, int sdt, const float *gain, float eps) {
    DR_TL_SCOPE();
    extern __shared__ int4 qd_sm[];
    constexpr int GS = 32 << GSH, NGV = 128 / GS, WPG = 4 / NGV, RU = R * U, S = QD_ST;
    dr_pdl_trigger();
    const int nv = np / 32, ng = np / GS, lane = threadIdx.x & 31, tid = threadIdx.x;
    const int nwarp = gridDim.x * (QD_TPB / 32), wid = blockIdx.x * (QD_TPB / 32) + (threadIdx.x >> 5);
    constexpr bool SW = EPI == QD_SWIGLU || EPI == QD_SWIGLU_NORM;
    const int ngr = qd_groups(set, R, SW);
    uint4 *rw = (uint4 *)qd_sm;                                   /* [S][RU][QD_TPB] */
    uint32_t *rs = (uint32_t *)(rw + (size_t)S * RU * QD_TPB);    /* [S][RU][QD_TPB][NGV] */
    const int4 *dig = (const int4 *)(rs + (size_t)S * RU * QD_TPB * NGV);
    float *sx = (float *)(dig + (size_t)nv * 6), *xg = sx + ng, *sh = xg + ng;
    const float *gn = EPI == QD_NORM || EPI == QD_SWIGLU_NORM ? gain : NULL;

    /* the load cursor (row group lg, first vector lv) runs S - 1 batches ahead */
    int lg = wid, lv = 0;
    const uint4 *pw[R];
    const uint32_t *ps[R];
    if (lg < ngr)
        qd_rows<R, SW>(set, lg, nv, ng, pw, ps);
    auto issue = [&](int slot) { /* the batch at the cursor into slot, then the cursor on */
        if (lg < ngr) {
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int v = lv + lane + 32 * u;
                const bool ok = v < nv;
#pragma unroll
                for (int r = 0; r < R; r++) {
                    const int it = (slot * RU + u * R + r) * QD_TPB + tid;
                    dr_cp16z(rw + it, pw[r] + (ok ? v : 0), ok);
                    qd_cp_sb<4 * NGV>(rs + (size_t)it * NGV, ps[r] + (ok ? (v >> 2) * NGV : 0), ok);
                }
            }
            lv += 32 * U;
            if (lv >= nv) {
                lv = 0;
                lg += nwarp;
                if (lg < ngr)
                    qd_rows<R, SW>(set, lg, nv, ng, pw, ps);
            }
        }
        dr_cp_commit(); /* empty groups past the end keep the count */
    };
#pragma unroll
    for (int j = 0; j < S - 1; j++)
        issue(j);
    dr_pdl_wait();
    if (GS == 32)
        qd_stage<32>((signed char *)dig, sx, xg, x, n, np, gn, eps, sh);
    else if (GS == 64)
        qd_stage<64>((signed char *)dig, sx, xg, x, n, np, gn, eps, sh);
    else
        qd_stage<128>((signed char *)dig, sx, xg, x, n, np, gn, eps, sh);
    __syncthreads();

    float acc[R];
#pragma unroll
    for (int r = 0; r < R; r++)
        acc[r] = 0.0f;
    int slot = 0;
    for (int cg = wid, cv = 0; cg < ngr;) { /* the batch (cg, cv) is in slot */
        dr_cp_wait<S - 2>();
        uint4 w[U][R];
        uint32_t sb[U][R][NGV];
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int r = 0; r < R; r++) {
                const int it = (slot * RU + u * R + r) * QD_TPB + tid;
                w[u][r] = rw[it];
#pragma unroll
                for (int i = 0; i < NGV; i++)
                    sb[u][r][i] = rs[(size_t)it * NGV + i];
            }
        issue(slot == 0 ? S - 1 : slot - 1); /* the slot read one batch ago */
        slot = slot == S - 1 ? 0 : slot + 1;
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int v = cv + lane + 32 * u;
            if (v >= nv)
                break;
            const int g0 = (v >> 2) * NGV;
#pragma unroll
            for (int gi = 0; gi < NGV; gi++) {
                int a2[R], a1[R], a0[R];
#pragma unroll
                for (int r = 0; r < R; r++)
                    a2[r] = a1[r] = a0[r] = 0;
#pragma unroll
                for (int i = gi * WPG; i < (gi + 1) * WPG; i++) {
                    const int4 da = dig[(size_t)v * 6 + (6 * i) / 4];
                    const int4 db = dig[(size_t)v * 6 + (6 * i) / 4 + 1];
                    /* word i's six digit words start at int 6 i: offset 0 or 2 in da */
                    const int o = (6 * i) & 3;
                    const int d0 = o ? da.z : da.x, d1 = o ? da.w : da.y, d2 = o ? db.x : da.z;
                    const int d3 = o ? db.y : da.w, d4 = o ? db.z : db.x, d5 = o ? db.w : db.y;
#pragma unroll
                    for (int r = 0; r < R; r++) {
                        const uint32_t q = i == 0 ? w[u][r].x : i == 1 ? w[u][r].y : i == 2 ? w[u][r].z : w[u][r].w;
                        const int ev = (int)(q & 0x0F0F0F0Fu), od = (int)((q >> 4) & 0x0F0F0F0Fu);
                        a2[r] = __dp4a(od, d1, __dp4a(ev, d0, a2[r]));
                        a1[r] = __dp4a(od, d3, __dp4a(ev, d2, a1[r]));
                        a0[r] = __dp4a(od, d5, __dp4a(ev, d4, a0[r]));
                    }
                }
                const float f = sx[g0 + gi], X = xg[g0 + gi];
#pragma unroll
                for (int r = 0; r < R; r++) {
                    const float t = fmaf((float)a2[r], 65536.0f, (float)(a1[r] * 256 + a0[r])); /* < 2^24 */
                    float s, b;
                    q2_sb(&sb[u][r][gi], sdt, &s, &b);
                    acc[r] = fmaf(s, f * t, acc[r]);
                    if ((v & 3) == 0) /* one lane a block adds each group's bias term */
                        acc[r] = fmaf(b, X, acc[r]);
                }
            }
        }
        cv += 32 * U;
        if (cv >= nv) { /* the last batch of these rows */
#pragma unroll
            for (int r = 0; r < R; r++)
                acc[r] = dr_warp_sum(acc[r]);
            if (lane == 0)
                qd_store<R, SW>(set, cg, acc, EPI == QD_ADD);
#pragma unroll
            for (int r = 0; r < R; r++)
                acc[r] = 0.0f;
            cv = 0;
            cg += nwarp;
        }
    }
    dr_cp_wait<0>(); /* nothing in flight at exit */
}

/* DR_CUDA_QGEMV_DP4A=0: one-token 4-bit GEMVs on the tensor-core kernel and
 * no quantized norm / add epilogues (the same-run baseline);
 * DR_CUDA_QGEMV_RU=41 / 22 forces rows x vectors a warp, =nofill keeps 4 x 1
 * where it leaves over half the card's resident warps without rows
 * (measurements) */
static int qd_mode = -1;

template <int GSH, int R, int U, int EPI>
static void qd_launch_k(dr_cuda_ctx *cx, const q2_set &set, const float *x, int n, int np, int sdt,
                        const float *gain, float eps) {
    void (*k)(const q2_set, const float *, int, int, int, const float *, float) = q2_dp4a_kernel<GSH, R, U, EPI>;
    const size_t smem = qd_smem(R * U, np, 32 << GSH);
    static int per_sm = 0;
    static size_t per_sm_smem = 0;
    if (per_sm_smem != smem) {
        cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)q2_smem_max());
        if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k, QD_TPB, smem) != cudaSuccess || per_sm < 1)
            per_sm = 1;
        cudaGetLastError();
        per_sm_smem = smem;
    }
    const size_t groups = (size_t)qd_groups(set, R, EPI == QD_SWIGLU || EPI == QD_SWIGLU_NORM);
    const size_t cap = (size_t)per_sm * (cx->n_sm > 0 ? cx->n_sm : 132);
    const size_t blocks = dr_cdiv(groups, (size_t)(QD_TPB / 32));
    dr_cuda_launch(cx, true, k, dim3((unsigned)(blocks < cap ? blocks : cap)), dim3(QD_TPB), smem, set, x, n, np,
                   sdt, gain, eps);
}

template <int R, int U, int EPI>
static void qd_gs(dr_cuda_ctx *cx, const q2_set &set, const float *x, int n, int np, int gs, int sdt,
                  const float *gain, float eps) {
    if (gs == 32)
        qd_launch_k<0, R, U, EPI>(cx, set, x, n, np, sdt, gain, eps);
    else if (gs == 64)
        qd_launch_k<1, R, U, EPI>(cx, set, x, n, np, sdt, gain, eps);
    else
        qd_launch_k<2, R, U, EPI>(cx, set, x, n, np, sdt, gain, eps);
}

/* Whether the dp4a GEMV takes one token of w0's geometry: 4-bit, 16-bit
 * scales, x (and gain) 16-byte aligned, the staging within the shared memory */
static bool qd_fits(const dr_tensor *w0, const float *x, const float *gain, int T) {
    const int n = (int)w0->ne[w0->ndim - 1], gs = w0->q.group_size;
    return dr_env_on("DR_CUDA_QGEMV_DP4A", &qd_mode) && q2_on() && T == 1 && w0->q.bits == 4 &&
           w0->q.sb_dtype != DR_DT_F32 && !((uintptr_t)x & 15) && !((uintptr_t)gain & 15) && n % 4 == 0 &&
           qd_smem(4, q2_np(n, 4), gs) <= q2_smem_max();
}

/* The dp4a GEMV over the set (qd_fits(w0, ...) holds) with epilogue epi */
static void qd_run(dr_cuda_ctx *cx, const q2_set &set, const dr_tensor *w0, const float *x, int epi,
                   const float *gain, float eps) {
    const int n = (int)w0->ne[w0->ndim - 1], gs = w0->q.group_size, np = q2_np(n, 4), sdt = (int)w0->q.sb_dtype;
    static int ru = -1;
    if (ru < 0) {
        const char *e = getenv("DR_CUDA_QGEMV_RU");
        ru = !e ? 0 : strcmp(e, "nofill") ? atoi(e) : 1;
    }
    /* rows x vectors a warp: 4 x 1 up to 4096 values a row, 2 x 2 above (H200,
       docs/CUDA.md session 28: 4 x 1 ran the 2048-wide lm_head at 86% of the
       copy floor against 65% for 2 x 2; 1 x 4 was the slowest everywhere),
       and 2 x 2 where 4 x 1 would leave over half the card's resident warps
       without rows (session 31: q4 decode +5-6% on the 9B and 0.8B, whose
       1024-4096-row matrices then fill the card, +1-3% on the 35B-A3B with
       8 layers, where out_proj ran 64 blocks) */
    const bool sw = epi == QD_SWIGLU || epi == QD_SWIGLU_NORM;
    const bool few = ru == 0 && 2 * qd_groups(set, 4, sw) < QD_MINB * (QD_TPB / 32) * (cx->n_sm > 0 ? cx->n_sm : 132);
    const bool r4 = ru > 1 ? ru == 41 : np <= 4096 && !few;
    if (epi == QD_NORM)
        r4 ? qd_gs<4, 1, QD_NORM>(cx, set, x, n, np, gs, sdt, gain, eps)
           : qd_gs<2, 2, QD_NORM>(cx, set, x, n, np, gs, sdt, gain, eps);
    else if (epi == QD_ADD)
        r4 ? qd_gs<4, 1, QD_ADD>(cx, set, x, n, np, gs, sdt, NULL, 0.0f)
           : qd_gs<2, 2, QD_ADD>(cx, set, x, n, np, gs, sdt, NULL, 0.0f);
    else if (epi == QD_SWIGLU_NORM)
        r4 ? qd_gs<4, 1, QD_SWIGLU_NORM>(cx, set, x, n, np, gs, sdt, gain, eps)
           : qd_gs<2, 2, QD_SWIGLU_NORM>(cx, set, x, n, np, gs, sdt, gain, eps);
    else if (epi == QD_SWIGLU)
        r4 ? qd_gs<4, 1, QD_SWIGLU>(cx, set, x, n, np, gs, sdt, NULL, 0.0f)
           : qd_gs<2, 2, QD_SWIGLU>(cx, set, x, n, np, gs, sdt, NULL, 0.0f);
    else
        r4 ? qd_gs<4, 1, QD_PLAIN>(cx, set, x, n, np, gs, sdt, NULL, 0.0f)
           : qd_gs<2, 2, QD_PLAIN>(cx, set, x, n, np, gs, sdt, NULL, 0.0f);
}

/* T <= QG_MAX_T tokens, all matrices of one geometry; tokens in blocks whose
 * staged x fits the shared memory (the weights are read once per block) */
static void q2_gemv_run(dr_cuda_ctx *cx, const q2_set &set, const dr_tensor *w0, const float *x, int T) {
    const int n = (int)w0->ne[w0->ndim - 1], bits = w0->q.bits, gs = w0->q.group_size, np = q2_np(n, bits);
    const int sdt = (int)w0->q.sb_dtype;
    const bool sb32 = w0->q.sb_dtype == DR_DT_F32;
    if (qd_fits(w0, x, NULL, T)) {
        qd_run(cx, set, w0, x, QD_PLAIN, NULL, 0.0f);
        return;
    }
    const size_t smax = q2_smem_max();
    int tb = T;
    while (tb > 1 && q2_smem(tb, np, gs, bits, sb32) > smax)
        tb = tb > 4 ? 4 : tb / 2;
    if (q2_smem(tb, np, gs, bits, sb32) > smax) {
        dr_fail_at(__FILE__, __LINE__, DR_ERR_UNSUPPORTED, "CUDA quantized GEMV: rows of %d values do not fit", n);
        cx->failed = 1;
        return;
    }
    for (int t0 = 0; t0 < T; t0 += tb) {
        const int tt = T - t0 < tb ? T - t0 : tb;
        q2_set s = set;
        for (int i = 0; i < s.nm; i++)
            s.y[i] = set.y[i] + (size_t)t0 * set.rows[i];
        const float *xt = x + (size_t)t0 * n;
        const size_t smem = q2_smem(tt, np, gs, bits, sb32);
        if (bits == 4) {
            if (tt <= 4)
                sb32 ? q2_gs<4, 1, true>(cx, s, xt, tt, n, np, gs, sdt, smem, smax)
                     : q2_gs<4, 1, false>(cx, s, xt, tt, n, np, gs, sdt, smem, smax);
            else
                sb32 ? q2_gs<4, 2, true>(cx, s, xt, tt, n, np, gs, sdt, smem, smax)
                     : q2_gs<4, 2, false>(cx, s, xt, tt, n, np, gs, sdt, smem, smax);
        } else {
            if (tt <= 4)
                sb32 ? q2_gs<8, 1, true>(cx, s, xt, tt, n, np, gs, sdt, smem, smax)
                     : q2_gs<8, 1, false>(cx, s, xt, tt, n, np, gs, sdt, smem, smax);
            else
                sb32 ? q2_gs<8, 2, true>(cx, s, xt, tt, n, np, gs, sdt, smem, smax)
                     : q2_gs<8, 2, false>(cx, s, xt, tt, n, np, gs, sdt, smem, smax);
        }
    }
}

static void q2_set_add(q2_set *set, const dr_tensor *w, float *y) {
    const q2geo g = q2_geo(w);
    const int i = set->nm++;
    set->W[i] = (const uint4 *)w->dev;
    set->SB[i] = (const uint32_t *)((const char *)w->dev + g.sb_off);
    set->y[i] = y;
    set->rows[i] = g.rows;
    set->t0[i + 1] = set->t0[i] + (g.rows + 15) / 16;
}

/* ys[i] = RMSNorm(x; gain) ws[i]^T for one token when every w is 4-bit of
 * one geometry the dp4a GEMV takes (rmsnorm_matmul_n); false: queued nothing */
bool dr_cuda_quant_rmsnorm_matmul_n(dr_cuda_ctx *cx, int n_w, float *const *ys, const float *x, const float *gain,
                                    float eps, const dr_tensor *const *ws, int T) {
    if (n_w < 1 || n_w > QG_SETS || !qd_fits(ws[0], x, gain, T))
        return false;
    for (int i = 0; i < n_w; i++)
        if (!ws[i]->dev || ws[i]->q.bits != 4 || ws[i]->q.group_size != ws[0]->q.group_size ||
            ws[i]->q.sb_dtype != ws[0]->q.sb_dtype || ws[i]->ne[ws[i]->ndim - 1] != ws[0]->ne[ws[0]->ndim - 1])
            return false;
    q2_set set = {};
    for (int i = 0; i < n_w; i++)
        q2_set_add(&set, ws[i], ys[i]);
    if (set.t0[n_w] > 0)
        qd_run(cx, set, ws[0], x, QD_NORM, gain, eps);
    return true;
}

/* x [1, d] += a w^T for a 4-bit w the dp4a GEMV takes (matmul_add_rmsnorm
 * without a norm); false: queued nothing */
bool dr_cuda_quant_matmul_add(dr_cuda_ctx *cx, float *x, const float *a, const dr_tensor *w, int T) {
    if (!w->dev || !qd_fits(w, a, NULL, T))
        return false;
    q2_set set = {};
    q2_set_add(&set, w, x);
    if (set.t0[1] > 0)
        qd_run(cx, set, w, a, QD_ADD, NULL, 0.0f);
    return true;
}

/* out = silu(gate xn) * (up xn), xn = RMSNorm(x; gain) or (gain NULL) x, for
 * one token on 4-bit gate / up of one geometry (matmul_swiglu); false:
 * not taken, nothing queued */
bool dr_cuda_quant_matmul_swiglu(dr_cuda_ctx *cx, float *out, const float *x, const dr_tensor *gate,
                                 const dr_tensor *up, int T, const float *gain, float eps) {
    if (!gate->dev || !up->dev || !qd_fits(gate, x, gain, T) || up->q.bits != 4 ||
        up->q.group_size != gate->q.group_size || up->q.sb_dtype != gate->q.sb_dtype ||
        q_rows(up) != q_rows(gate) || up->ne[up->ndim - 1] != gate->ne[gate->ndim - 1])
        return false;
    q2_set set = {};
    q2_set_add(&set, gate, out);
    q2_set_add(&set, up, out); /* (y[1] unused: the pair is written to out) */
    if (set.rows[0] > 0)
        qd_run(cx, set, gate, x, gain ? QD_SWIGLU_NORM : QD_SWIGLU, gain, eps);
    return true;
}

/* prefill: rows [r0, r0 + nr) -> hi/lo [nr, n]; one thread per (row, k-step
 * of 16 values): the 4 lanes' words of the step, two 32-byte stores each */
template <int BITS>
__global__ void q2_dequant_split_kernel(bf16 *hi, bf16 *lo, const uint32_t *__restrict__ W,
                                        const uint32_t *__restrict__ SB, int sdt, int n, int np, int gs, size_t r0,
                                        size_t nr) {
    const int ns = n / 16, rw = np * BITS / 32, sbw = sdt == DR_DT_F32 ? 2 : 1, Gp = np / gs;
    const size_t tot = nr * (size_t)ns;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < tot; i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = i / ns;
        const int j = (int)(i % ns);
        const uint32_t *wr = W + (r0 + r) * rw;
        float s, b;
        q2_sb(SB + ((r0 + r) * Gp + (size_t)(j * 16 / gs)) * sbw, sdt, &s, &b);
        float v[16];
#pragma unroll
        for (int c = 0; c < 4; c++) {
            unsigned q[4]; /* k 2c, 2c + 1, 2c + 8, 2c + 9 */
            if (BITS == 4) {
                const uint32_t u = __ldg(wr + (j >> 3) * 16 + c * 4 + ((j & 7) >> 1));
                const int p = 2 * (j & 1);
                q[0] = (u >> (4 * p)) & 15u, q[1] = (u >> (16 + 4 * p)) & 15u;
                q[2] = (u >> (4 * p + 4)) & 15u, q[3] = (u >> (20 + 4 * p)) & 15u;
            } else {
                const uint32_t u = __ldg(wr + (j >> 2) * 16 + c * 4 + (j & 3));
                q[0] = u & 255u, q[1] = (u >> 16) & 255u, q[2] = (u >> 8) & 255u, q[3] = u >> 24;
            }
            const int ko[4] = {2 * c, 2 * c + 1, 2 * c + 8, 2 * c + 9};
#pragma unroll
            for (int e = 0; e < 4; e++)
                v[ko[e]] = __fadd_rn(__fmul_rn(s, (float)q[e]), b); /* as the CPU */
        }
        uint32_t h[8], l[8];
#pragma unroll
        for (int e = 0; e < 8; e++)
            dr_split2(v[2 * e], v[2 * e + 1], h[e], l[e]);
        uint4 *ho = (uint4 *)(hi + r * n + (size_t)j * 16), *lo4 = (uint4 *)(lo + r * n + (size_t)j * 16);
        ho[0] = make_uint4(h[0], h[1], h[2], h[3]), ho[1] = make_uint4(h[4], h[5], h[6], h[7]);
        lo4[0] = make_uint4(l[0], l[1], l[2], l[3]), lo4[1] = make_uint4(l[4], l[5], l[6], l[7]);
    }
}

__global__ void q2_embed_kernel(float *x, const uint32_t *__restrict__ W, const uint32_t *__restrict__ SB, int sdt,
                                int bits, int gs, int np, const int32_t *ids, int H) {
    DR_TL_SCOPE();
    const int t = blockIdx.y, rw = np * bits / 32, sbw = sdt == DR_DT_F32 ? 2 : 1;
    const unsigned mask = (1u << bits) - 1u;
    const size_t row = (size_t)ids[t];
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < H; i += gridDim.x * blockDim.x) {
        int sh;
        const int wd = q2_loc(bits, i, &sh);
        const float q = (float)((__ldg(W + row * rw + wd) >> sh) & mask);
        float s, b;
        q2_sb(SB + (row * (np / gs) + i / gs) * sbw, sdt, &s, &b);
        x[(size_t)t * H + i] = __fadd_rn(__fmul_rn(s, q), b);
    }
}

/* MoE decode on the repacked layout: rows of n values staged for row dots,
 * row j at x + j n for j < nr, then (xsh) one more row at xsh: float4 f of
 * piece p (16 bytes of a row: block p / 4, lane p % 4) of row j at
 * [j][f][p] (np / 4 float4 a row), value order = nibble / byte order of the
 * piece's words (q4vals' order). The rows are one flat range, and each
 * thread issues the loads of Q_SB float4 before it stores them: a loop per
 * row paid one L2 round trip per row (the down kernel stages k + 1 rows of
 * 512 values with 256 threads: 9 trips at k = 8, now 3). Q_SB is 1 for
 * gate/up's one row and 2 for down: on the H200 (session 30, q4 35B-A3B,
 * 40 layers) 4 / 4 decoded 372-379 tok/s, 1 / 4 385-396, 1 / 1 398-399,
 * 1 / 2 398-400; more loads in flight cost registers the weight pieces
 * need. -DQ_SB_GU= / -DQ_SB_DN= (device_s29.sh VARIANTS) time others. */
#ifndef Q_SB_GU
#define Q_SB_GU 1
#endif
#ifndef Q_SB_DN
#define Q_SB_DN 2
#endif
template <int BITS, int Q_SB>
static __device__ __forceinline__ void q2_stage_rows(float4 *xs, const float *x, int nr, const float *xsh, int n,
                                                     int np) {
    constexpr int E = 128 / BITS;
    const int nv = np / E, per = np / 4, total = (nr + (xsh ? 1 : 0)) * per, nt = blockDim.x;
    for (int c0 = threadIdx.x; c0 < total; c0 += Q_SB * nt) {
        float v[Q_SB][4];
#pragma unroll
        for (int b = 0; b < Q_SB; b++) {
            const int c = c0 + b * nt, j = c / per, i = c - j * per, f = i / nv, p = i - f * nv;
            const float *src = j < nr ? x + (size_t)j * n : xsh;
#pragma unroll
            for (int q = 0; q < 4; q++) {
                const int e = 4 * f + q, wd = (p >> 2) * 16 + (p & 3) * 4 + e / (32 / BITS);
                const int k = q2_k(BITS, wd, e % (32 / BITS));
                v[b][q] = c < total && k < n ? src[k] : 0.0f;
            }
        }
#pragma unroll
        for (int b = 0; b < Q_SB; b++)
            if (c0 + b * nt < total)
                xs[c0 + b * nt] = make_float4(v[b][0], v[b][1], v[b][2], v[b][3]);
    }
}

/* q2_stage_rows by 4-byte cp.async copies (Q2_STAGE_CPA, the default): every
 * value of the thread's share is asked for at once and holds no register, so
 * the staging costs one L2 round trip however many rows (the down kernel's
 * k + 1 took three with Q_SB_DN = 2) and cannot spill next to the weight
 * pieces in flight. The caller waits (dr_cp_wait<0>) before its barrier. */
#ifndef Q2_STAGE_CPA
#define Q2_STAGE_CPA 1
#endif
template <int BITS>
static __device__ __forceinline__ void q2_stage_rows_cpa(float4 *xs, const float *x, int nr, const float *xsh, int n,
                                                         int np) {
    constexpr int E = 128 / BITS;
    const int nv = np / E, per = np / 4, total = (nr + (xsh ? 1 : 0)) * per;
    float *xf = (float *)xs;
    for (int c = threadIdx.x; c < total; c += blockDim.x) {
        const int j = c / per, i = c - j * per, f = i / nv, p = i - f * nv;
        const float *src = j < nr ? x + (size_t)j * n : xsh;
#pragma unroll
        for (int q = 0; q < 4; q++) {
            const int e = 4 * f + q, wd = (p >> 2) * 16 + (p & 3) * 4 + e / (32 / BITS);
            const int k = q2_k(BITS, wd, e % (32 / BITS));
            qd_cp_sb<4>(xf + 4 * c + q, src + (k < n ? k : 0), k < n);
        }
    }
    dr_cp_commit();
}

/* x rows staged for the MoE kernels' dots, by either way */
template <int BITS, int Q_SB>
static __device__ __forceinline__ void q2_stage(float4 *xs, const float *x, int nr, const float *xsh, int n, int np) {
    if (Q2_STAGE_CPA) {
        q2_stage_rows_cpa<BITS>(xs, x, nr, xsh, n, np);
        dr_cp_wait<0>();
    } else {
        q2_stage_rows<BITS, Q_SB>(xs, x, nr, xsh, n, np);
    }
}

/* One 16-byte piece v of a repacked row in registers, with the (s, b) words
 * of its four words' groups (SBW words each: 2 for f32 scales), so that a
 * kernel can issue all its weight loads before it stages x. The MoE kernels
 * take the scale dtype as a template argument SDT: with it at run time ptxas
 * kept a copy of the whole dot per dtype, and the q4 down kernel grew to
 * ~9500 instructions (151 KB), which stalled its warps on instruction
 * fetch (session 33, ncu). */
#define Q2_SBW(SDT) ((SDT) == DR_DT_F32 ? 2 : 1)
template <int SBW> struct q2_piece {
    uint4 u;
    uint32_t sb[4 * SBW];
};

template <int BITS, int SBW>
static __device__ __forceinline__ void q2_piece_load(q2_piece<SBW> &p, const void *blk, const q2geo &g, int row, int v,
                                                     bool ok) {
    constexpr int KB = BITS == 4 ? 128 : 64, KW = BITS == 4 ? 32 : 16; /* values a block, a word */
    if (!ok) {
        p.u = make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int i = 0; i < 4 * SBW; i++)
            p.sb[i] = 0;
        return;
    }
    p.u = dr_ld_w((const uint4 *)blk + (size_t)row * g.rq + v);
    const uint32_t *sbp = (const uint32_t *)((const char *)blk + g.sb_off) + (size_t)row * (g.np / g.gs) * SBW;
#pragma unroll
    for (int wi = 0; wi < 4; wi++)
#pragma unroll
        for (int h = 0; h < SBW; h++)
            p.sb[wi * SBW + h] = __ldg(sbp + (size_t)((((v >> 2) * KB + wi * KW) >> g.gsh) * SBW + h));
}

/* piece v . x, x staged by q2_stage_rows (nv pieces a row) */
template <int BITS, int SDT>
static __device__ __forceinline__ float q2_piece_dot(const q2_piece<Q2_SBW(SDT)> &p, int v, int nv, const float4 *xs) {
    constexpr int FW = 32 / BITS / 4; /* float4 per word */
    float acc = 0.0f;
#pragma unroll
    for (int wi = 0; wi < 4; wi++) {
        float s, b, dq = 0.0f, sx = 0.0f;
        q2_sb(&p.sb[wi * Q2_SBW(SDT)], SDT, &s, &b);
#pragma unroll
        for (int ff = 0; ff < FW; ff++) {
            const int f = wi * FW + ff;
            const float4 xx = xs[f * nv + v];
            float q[4];
            q4vals<BITS>(p.u, f, q);
            sx += (xx.x + xx.y) + (xx.z + xx.w);
            dq = fmaf(q[0], xx.x, dq);
            dq = fmaf(q[1], xx.y, dq);
            dq = fmaf(q[2], xx.z, dq);
            dq = fmaf(q[3], xx.w, dq);
        }
        acc = fmaf(s, dq, fmaf(b, sx, acc));
    }
    return acc;
}

/* The batch of NL pieces a lane at c0 of gate row i and up row i (zeros past
 * the row or for a dead warp) */
template <int BITS, int SBW, int NL>
static __device__ __forceinline__ void q2_gu_load(q2_piece<SBW> (&pg)[NL], q2_piece<SBW> (&pu)[NL], const void *gw,
                                                  const void *uw, const q2geo &g, int i, int c0, int lane, bool live) {
#pragma unroll
    for (int j = 0; j < NL; j++) {
        const int v = c0 + lane + 32 * j;
        q2_piece_load<BITS>(pg[j], gw, g, i, v, live && v < g.rq);
        q2_piece_load<BITS>(pu[j], uw, g, i, v, live && v < g.rq);
    }
}

/* act[r, i] = silu(gate[i] . x_t) * (up[i] . x_t): a warp a row i, NL pieces
 * of each matrix a lane in flight, the first NL x 32 loaded before x_t is
 * staged (that L2 round trip then overlaps theirs).
 * - Rows r < R are the picks, r = t k + j, of expert e = idx[r]; with
 *   `logits` warp 0 makes the picks first (route_warp: the route kernel's
 *   arithmetic) and block (0, t k) writes token t's idx and wts.
 * - Rows R + t (sgw, suw: the shared expert's gate and up, the experts'
 *   geometry) are token t's shared expert: no picks to wait for, so its
 *   first pieces load before the PDL wait.
 * - With `ready` (and logits), block (0, t k) raises token t's picks-ready
 *   flag once idx and wts are out, so the down kernel loads its rows
 *   before this kernel ends (moe_gu_route_bf16_kernel's scheme, moe.cu).
 *   It clears the flag first, before it lets the down kernel be scheduled:
 *   the previous layer's down kernel, which read it, has ended by its wait. */
/* Blocks an SM asked of ptxas for the gate/up kernel: 4 holds the q4 g64
 * variant at 64 registers (no spills), 4 blocks an SM, 528 of the 35B-A3B's
 * 576 blocks in the first wave. Plain __launch_bounds__(256) gets 63 today
 * and the same occupancy; the bound keeps it when the kernel grows (an
 * explicit 1 let ptxas take 93, 2 an SM, and decoded 5% slower; session
 * 30, docs/CUDA.md). -DQ_GU_MINB= (device_s29.sh VARIANTS) times others. */
#ifndef Q_GU_MINB
#define Q_GU_MINB 4
#endif
template <int BITS, int SDT, int NL, int PER>
__global__ void __launch_bounds__(256, Q_GU_MINB)
    q2_moe_gate_up_kernel(float *act, const float *x, int32_t *idx, float *wts, const float *logits, int renorm,
                          const void *const *tab, int E, int k, int R, const void *sgw, const void *suw, int *ready,
                          q2geo g) {
    constexpr int SBW = Q2_SBW(SDT);
    DR_TL_SCOPE();
    extern __shared__ float4 xs[];
    __shared__ int pick;
    const int r = blockIdx.y, lane = threadIdx.x & 31, nv = g.rq;
    const int i = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const bool live = i < g.rows, shared = r >= R;
    const int t = shared ? r - R : r / k;
    const bool writer = logits && !shared && blockIdx.x == 0 && r == t * k; /* writes token t's idx and wts */
    q2_piece<SBW> pg[NL], pu[NL];
    const void *gw = sgw, *uw = suw;
    if (!(ready && writer))
        dr_pdl_trigger(); /* the down kernel may be scheduled: it waits for this one or the flag */
    if (!shared) {
        dr_pdl_wait(); /* the logits (or idx) and x come from earlier kernels */
        if (ready && writer)
            md_ready_clear(ready, t);
        if (logits && threadIdx.x < 32) {
            route_publish<PER, true>(logits + (size_t)t * E, E, k, renorm, lane, r - t * k, writer,
                                     idx + (size_t)t * k, wts + (size_t)t * k, ready, t, &pick);
        } else if (!logits && threadIdx.x == 0) {
            pick = idx[r];
        }
        __syncthreads();
        DR_TL_MARK(0, (float)pick);
        gw = tab[pick], uw = tab[E + pick];
    }
    q2_gu_load<BITS>(pg, pu, gw, uw, g, i, 0, lane, live); /* one copy of this code for both kinds of block */
    if (shared)
        dr_pdl_wait_fenced((unsigned)nv); /* x comes from earlier kernels */
    DR_TL_MARK(1, __uint_as_float(pg[0].u.x ^ pu[0].sb[0]));
    q2_stage<BITS, Q_SB_GU>(xs, x + (size_t)t * g.n, 1, NULL, g.n, g.np);
    __syncthreads();
    DR_TL_MARK(2, xs[0].x);
    float gv = 0.0f, uv = 0.0f;
    for (int c0 = 0;;) {
#pragma unroll
        for (int j = 0; j < NL; j++) {
            const int v = c0 + lane + 32 * j;
            if (v < nv) {
                gv += q2_piece_dot<BITS, SDT>(pg[j], v, nv, xs);
                uv += q2_piece_dot<BITS, SDT>(pu[j], v, nv, xs);
            }
        }
        c0 += 32 * NL;
        if (c0 >= nv)
            break;
        q2_gu_load<BITS>(pg, pu, gw, uw, g, i, c0, lane, live);
    }
    gv = dr_warp_sum(gv), uv = dr_warp_sum(uv);
    DR_TL_MARK(3, gv + uv);
    if (live && lane == 0)
        act[(size_t)r * g.rows + i] = dr_dev_silu(gv) * uv;
}

/* p / nv for 0 <= p < 2^21 from rn = 1 / nv in float: (p + 0.5) / nv lies at
 * least 1 / (2 nv) from an integer, and the product's rounding error is
 * below (p / nv) 2^-22, so the truncation is exact. Two instructions where
 * an integer division by a run-time value takes ~20 (the down kernel makes
 * one per piece, in its loads and its dot). */
static __device__ __forceinline__ int q2_div(int p, float rn) {
    return (int)(((float)p + 0.5f) * rn);
}

/* The batch of NL pieces a lane at c0 of the down kernel's row h: piece p
 * of (expert, piece) pair p / nv, p % nv; pair k is the shared expert's
 * (sd). idx through L2: with the picks-ready flag its writer still runs. */
template <int BITS, int SBW, int NL>
static __device__ __forceinline__ void q2_down_load(q2_piece<SBW> (&pc)[NL], const int32_t *it,
                                                    const void *const *tab, int E, int k, const void *sd,
                                                    const q2geo &g, float rn, int h, int c0, int P, int lane,
                                                    bool live) {
    const int nv = g.rq;
#pragma unroll
    for (int j = 0; j < NL; j++) {
        const int p = c0 + lane + 32 * j, js = p < P ? q2_div(p, rn) : 0;
        const void *blk = js < k ? tab[2 * E + __ldcg(it + js)] : sd;
        q2_piece_load<BITS>(pc[j], blk, g, h, p - js * nv, live && p < P);
    }
}

/* y[t, h] = (acc_y ? y[t, h] : 0) + sum_j wts[t, j] (down_e[h] . act[t k + j]),
 * e = idx[t k + j], + with sd (the shared expert's down, the experts'
 * geometry) sigmoid(shs[t]) (sd[h] . act[R + t]): a warp a row h, its lanes
 * over the (expert, piece) pairs, NL a lane in flight, the first ones loaded
 * before the activation rows are staged (slot k: the shared expert's). With
 * `ready` the first ones load once token t's picks-ready flag is up, before
 * the PDL wait (the gate/up kernel may still run). The k (+ 1) weights are
 * staged in shared memory after the rows (sw). */
template <int BITS, int SDT, int NL>
__global__ void __launch_bounds__(256) q2_moe_down_kernel(float *y, const float *act, const int32_t *idx,
                                                          const float *wts, const void *const *tab, int E, int k,
                                                          int R, const void *sd, const float *shs, int acc_y,
                                                          const int *ready, q2geo g) {
    DR_TL_SCOPE();
    extern __shared__ float4 xs[];
    const int t = blockIdx.y, lane = threadIdx.x & 31, nsh = sd ? 1 : 0;
    const int h = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), nv = g.rq, P = (k + nsh) * nv;
    const bool live = h < g.rows;
    const float rn = 1.0f / (float)nv;
    const int32_t *it = idx + (size_t)t * k;
    float *sw = (float *)(xs + (size_t)(k + nsh) * (g.np / 4));
    q2_piece<Q2_SBW(SDT)> pc[NL];
    dr_pdl_trigger();
    if (ready) {
        md_ready_wait(ready + t, lane);
        DR_TL_MARK(0, 0.0f);
    } else {
        dr_pdl_wait(); /* act, idx, wts and shs come from earlier kernels */
    }
    q2_down_load<BITS>(pc, it, tab, E, k, sd, g, rn, h, 0, P, lane, live); /* one copy for both orders */
    if (ready)
        dr_pdl_wait_fenced((unsigned)nv); /* act, wts and shs come from earlier kernels */
    DR_TL_MARK(1, __uint_as_float(pc[0].u.x ^ pc[0].sb[0]));
    if (threadIdx.x < k + nsh)
        sw[threadIdx.x] = (int)threadIdx.x < k ? wts[(size_t)t * k + threadIdx.x] : dr_dev_sigmoid(shs[t]);
    const float y0 = acc_y && live ? y[(size_t)t * g.rows + h] : 0.0f; /* its round trip overlaps the staging */
    q2_stage<BITS, Q_SB_DN>(xs, act + (size_t)t * k * g.n, k, sd ? act + ((size_t)R + t) * g.n : NULL, g.n, g.np);
    __syncthreads();
    DR_TL_MARK(2, xs[0].x);
    float acc = 0.0f;
    for (int c0 = 0;;) {
#pragma unroll
        for (int j = 0; j < NL; j++) {
            const int p = c0 + lane + 32 * j;
            if (p < P) {
                const int js = q2_div(p, rn);
                acc = fmaf(sw[js], q2_piece_dot<BITS, SDT>(pc[j], p - js * nv, nv, xs + (size_t)js * (g.np / 4)),
                           acc);
            }
        }
        c0 += 32 * NL;
        if (c0 >= P)
            break;
        q2_down_load<BITS>(pc, it, tab, E, k, sd, g, rn, h, c0, P, lane, live);
    }
    acc = dr_warp_sum(acc);
    DR_TL_MARK(3, acc);
    if (live && lane == 0)
        y[(size_t)t * g.rows + h] = y0 + acc;
}

/* What one launch pair of the q2 MoE decode kernels takes: with `logits` the
 * gate/up kernel routes (E <= 512), with sg / su / sd the shared expert runs
 * in both (rows R .. R + T - 1 of act). */
struct q2_moe_args {
    float *y, *act;
    const float *x, *logits, *shs;
    int32_t *idx;
    float *wts;
    const void *const *tab;
    const void *sg, *su, *sd;
    int *ready; /* the picks-ready flags (with logits), or NULL */
    int E, k, R, T, renorm, acc_y;
};

/* the gate/up kernel with NL pieces a lane in flight: enough for a whole row
 * up to 4 x 32 */
template <int BITS, int SDT, int PER>
static void q2_moe_gu_launch(dr_cuda_ctx *cx, bool pdl, const q2_moe_args &a, const q2geo &gu, dim3 grid,
                             size_t smem) {
#define Q2_GU(NL)                                                                                                     \
    dr_cuda_launch(cx, pdl, q2_moe_gate_up_kernel<BITS, SDT, NL, PER>, grid, dim3(256), smem, a.act, a.x, a.idx,     \
                   a.wts, a.logits, a.renorm, a.tab, a.E, a.k, a.R, a.sg, a.su, a.ready, gu)
    if (gu.rq <= 32)
        Q2_GU(1);
    else if (gu.rq <= 64)
        Q2_GU(2);
    else
        Q2_GU(4);
#undef Q2_GU
}

/* the q2 MoE decode pair; the down kernel with NL pieces a lane in flight:
 * enough for a row's k (+ 1) experts' pieces up to 8 x 32 */
template <int BITS, int SDT>
static void q2_moe_decode_launch(dr_cuda_ctx *cx, bool pdl, const q2_moe_args &a, const q2geo &gu,
                                 const q2geo &dn) {
    const int H = dn.rows, I = gu.rows, nsh = a.sd ? 1 : 0;
    const size_t s1 = (size_t)gu.np * sizeof(float), s2 = (size_t)(a.k + nsh) * (dn.np + 1) * sizeof(float);
    const dim3 g1(dr_cdiv((size_t)I, 8), (unsigned)(a.R + (a.sg ? a.T : 0))), g2(dr_cdiv((size_t)H, 8), (unsigned)a.T);
    if (a.logits && a.E > 256)
        q2_moe_gu_launch<BITS, SDT, 16>(cx, pdl, a, gu, g1, s1);
    else
        q2_moe_gu_launch<BITS, SDT, 8>(cx, pdl, a, gu, g1, s1);
    if (a.ready && cx->failed) /* the gate/up launch failed: its flags may never be raised */
        return;
    const int n2 = (a.k + nsh) * dn.rq;
#define Q2_DN(NL)                                                                                                     \
    dr_cuda_launch(cx, pdl, q2_moe_down_kernel<BITS, SDT, NL>, g2, dim3(256), s2, a.y, (const float *)a.act,          \
                   (const int32_t *)a.idx, (const float *)a.wts, a.tab, a.E, a.k, a.R, a.sd, a.shs, a.acc_y,        \
                   (const int *)a.ready, dn)
    if (n2 <= 64)
        Q2_DN(2);
    else if (n2 <= 128)
        Q2_DN(4);
    else
        Q2_DN(8);
#undef Q2_DN
}

#define QD_CHUNK_ELEMS ((size_t)32 << 20) /* 128 MiB of hi + lo scratch at most */

static void qmm_gemm(dr_cuda_ctx *cx, float *y, const float *x, const dr_tensor *w, int T) {
    const int d = (int)(q_rows(w)), n = (int)w->ne[w->ndim - 1];
    const size_t nx = (size_t)T * n;
    bf16 *xh = (bf16 *)dr_cuda_scratch(cx, DR_SCR_SPLIT, 2 * nx * sizeof(bf16));
    if (!xh)
        return;
    bf16 *xl = xh + nx;
    dr_cuda_split_bf16(cx, xh, xl, x, nx);
    size_t cr = QD_CHUNK_ELEMS / (size_t)n;
    cr = cr < 128 ? 128 : cr / 128 * 128; /* whole GEMM tiles */
    cr = cr > (size_t)d ? (size_t)d : cr;
    bf16 *wh = (bf16 *)dr_cuda_scratch(cx, DR_SCR_QW, 2 * cr * (size_t)n * sizeof(bf16));
    if (!wh)
        return;
    bf16 *wl = wh + cr * (size_t)n;
    const qmat m = q_parts(w);
    const float one = 1.0f, zero = 0.0f;
    for (size_t r0 = 0; r0 < (size_t)d; r0 += cr) {
        const size_t nr = (size_t)d - r0 < cr ? (size_t)d - r0 : cr;
        if (q2_on()) {
            const q2geo g = q2_geo(w);
            const uint32_t *W = (const uint32_t *)w->dev, *SB = (const uint32_t *)((const char *)w->dev + g.sb_off);
            if (w->q.bits == 4)
                q2_dequant_split_kernel<4><<<grid_for(cx, nr * n / 16), 256, 0, cx->stream>>>(
                    wh, wl, W, SB, (int)w->q.sb_dtype, n, g.np, g.gs, r0, nr);
            else
                q2_dequant_split_kernel<8><<<grid_for(cx, nr * n / 16), 256, 0, cx->stream>>>(
                    wh, wl, W, SB, (int)w->q.sb_dtype, n, g.np, g.gs, r0, nr);
        } else if (w->q.bits == 4)
            qdequant_split_kernel<4><<<grid_for(cx, nr * n / 8), 256, 0, cx->stream>>>(
                wh, wl, (const uint32_t *)m.w, m.s, m.b, w->q.sb_dtype, n, w->q.group_size, r0, nr);
        else
            qdequant_split_kernel<8><<<grid_for(cx, nr * n / 4), 256, 0, cx->stream>>>(
                wh, wl, (const uint32_t *)m.w, m.s, m.b, w->q.sb_dtype, n, w->q.group_size, r0, nr);
        DR_CUDA_LAUNCHED(cx);
        /* row-major y[T, d] columns r0.. = column-major y^T rows r0.. (ldc d) */
        const bf16 *A[3] = {wh, wh, wl}, *Bx[3] = {xh, xl, xh};
        for (int p = 0; p < 3; p++)
            DR_BLAS_NOTE(cx, cublasGemmEx(cx->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)nr, T, n, &one, A[p], CUDA_R_16BF,
                                          n, Bx[p], CUDA_R_16BF, n, p ? &one : &zero, y + r0, CUDA_R_32F, d,
                                          CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
}

/* ---- slots ---- */

static bool q_not_uploaded(dr_cuda_ctx *cx, const dr_tensor *w, const char *what) {
    if (w->dev)
        return false;
    dr_fail_at(__FILE__, __LINE__, DR_ERR_ARG, "CUDA %s: tensor %s was not uploaded", what, w->name ? w->name : "?");
    cx->failed = 1;
    return true;
}

void dr_cuda_qmm(dr_cuda_ctx *cx, float *y, const float *x, const dr_tensor *w, int T) {
    if (T <= 0 || q_not_uploaded(cx, w, "matmul"))
        return;
    const int d = (int)q_rows(w), n = (int)w->ne[w->ndim - 1];
    if (d <= 0)
        return;
    if (T > QG_BLOCK_T || (uintptr_t)x % 16) {
        qmm_gemm(cx, y, x, w, T);
        return;
    }
    for (int t0 = 0; t0 < T; t0 += QG_MAX_T) { /* the weights are re-read per block of 8 tokens */
        if (q2_on()) {
            q2_set set = {};
            q2_set_add(&set, w, y + (size_t)t0 * d);
            q2_gemv_run(cx, set, w, x + (size_t)t0 * n, T - t0 < QG_MAX_T ? T - t0 : QG_MAX_T);
            continue;
        }
        qgemv_set set = {};
        qset_add(&set, w, y + (size_t)t0 * d);
        qgemv_run(cx, set, w, x + (size_t)t0 * n, T - t0 < QG_MAX_T ? T - t0 : QG_MAX_T);
    }
}

void dr_cuda_mm_w(dr_cuda_ctx *cx, float *y, const float *x, const dr_tensor *w, int T) {
    if (w->q.bits)
        dr_cuda_qmm(cx, y, x, w, T);
    else
        dr_cuda_matmul(cx, y, x, w, T); /* checks the upload */
}

bool dr_cuda_quant_matmul_n(dr_cuda_ctx *cx, int n_w, float *const *ys, const float *x, const dr_tensor *const *ws,
                            int T) {
    bool any = false, same = n_w <= QG_SETS && T <= QG_MAX_T && (uintptr_t)x % 16 == 0;
    for (int i = 0; i < n_w; i++) {
        any = any || ws[i]->q.bits;
        same = same && ws[i]->q.bits == ws[0]->q.bits && ws[i]->q.group_size == ws[0]->q.group_size &&
               ws[i]->q.sb_dtype == ws[0]->q.sb_dtype && ws[i]->ne[ws[i]->ndim - 1] == ws[0]->ne[ws[0]->ndim - 1] &&
               ws[i]->dev;
    }
    if (!any)
        return false;
    if (!same || T <= 0) { /* mixed or prefill: one product each */
        for (int i = 0; i < n_w; i++)
            dr_cuda_mm_w(cx, ys[i], x, ws[i], T);
        return true;
    }
    if (q2_on()) {
        q2_set set = {};
        for (int i = 0; i < n_w; i++)
            q2_set_add(&set, ws[i], ys[i]);
        if (set.t0[n_w] > 0)
            q2_gemv_run(cx, set, ws[0], x, T);
        return true;
    }
    qgemv_set set = {};
    for (int i = 0; i < n_w; i++)
        qset_add(&set, ws[i], ys[i]);
    if (set.row0[n_w] > 0)
        qgemv_run(cx, set, ws[0], x, T);
    return true;
}

/* ---- embedding ---- */

__global__ void qembed_kernel(float *x, const uint32_t *__restrict__ W, const void *S, const void *B, dr_dtype sdt,
                              int bits, int gs, const int32_t *ids, int H) {
    DR_TL_SCOPE();
    const int t = blockIdx.y, per = 32 / bits, wpr = H / per, G = H / gs;
    const unsigned mask = (1u << bits) - 1u;
    const size_t row = (size_t)ids[t];
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < H; i += gridDim.x * blockDim.x) {
        const unsigned v = __ldg(W + row * wpr + i / per);
        const size_t g = row * G + i / gs;
        const float q = (float)((v >> ((i % per) * bits)) & mask);
        x[(size_t)t * H + i] = __fadd_rn(__fmul_rn(ld_sb(S, sdt, g), q), ld_sb(B, sdt, g));
    }
}

void dr_cuda_qembed(dr_cuda_ctx *cx, float *x, const dr_tensor *emb, const int32_t *dids, int T) {
    const int H = (int)emb->ne[emb->ndim - 1];
    dim3 grid(dr_cdiv((size_t)H, 256), (unsigned)T);
    if (q2_on()) {
        const q2geo g = q2_geo(emb);
        q2_embed_kernel<<<grid, 256, 0, cx->stream>>>(x, (const uint32_t *)emb->dev,
                                                      (const uint32_t *)((const char *)emb->dev + g.sb_off),
                                                      (int)emb->q.sb_dtype, emb->q.bits, g.gs, g.np, dids, H);
        DR_CUDA_LAUNCHED(cx);
        return;
    }
    const qmat m = q_parts(emb);
    qembed_kernel<<<grid, 256, 0, cx->stream>>>(x, (const uint32_t *)m.w, m.s, m.b, emb->q.sb_dtype, emb->q.bits,
                                                emb->q.group_size, dids, H);
    DR_CUDA_LAUNCHED(cx);
}

/* ---- MoE decode ---- */

/* The geometry every expert matrix of one kind shares. */
struct qgeo {
    int rows, n, gs;
    size_t s_off, b_off; /* bytes from the block start */
};

static qgeo q_geo(const dr_tensor *t) {
    qgeo g;
    size_t tot;
    g.rows = (int)q_rows(t);
    g.n = (int)t->ne[t->ndim - 1];
    g.gs = t->q.group_size;
    q_offsets(t, &g.s_off, &g.b_off, &tot);
    return g;
}

/* x [n] (global, 16-byte aligned) -> xs, float4 f of piece p at [f][p]
 * (the GEMV's shared layout: a warp's x reads are consecutive). Whole block. */
template <int BITS> static __device__ __forceinline__ void stage_x(float4 *xs, const float *x, int n) {
    constexpr int E4 = 128 / BITS / 4;
    const int nv = n / (4 * E4);
    for (int k = threadIdx.x; k < n / 4; k += blockDim.x)
        xs[(k % E4) * nv + k / E4] = __ldg((const float4 *)x + k);
}

/* One warp: dot of row `row` of a quantized block with x staged by stage_x. */
template <int BITS>
static __device__ __forceinline__ float qdot_warp(const void *blk, const qgeo &g, dr_dtype sdt, int row,
                                                  const float4 *xs) {
    constexpr int E = 128 / BITS;
    const int lane = threadIdx.x & 31, nv = g.n / E, pg = g.gs / E;
    const uint4 *w = (const uint4 *)blk + (size_t)row * nv;
    const void *S = (const char *)blk + g.s_off, *B = (const char *)blk + g.b_off;
    const size_t sb0 = (size_t)row * (g.n / g.gs);
    float acc = 0.0f;
#pragma unroll 2
    for (int v = lane; v < nv; v += 32) {
        const uint4 u = dr_ld_w(w + v);
        const float s = ld_sb(S, sdt, sb0 + v / pg), b = ld_sb(B, sdt, sb0 + v / pg);
        float dq = 0.0f, sx = 0.0f;
#pragma unroll
        for (int f = 0; f < E / 4; f++) {
            const float4 xx = xs[f * nv + v];
            float q[4];
            q4vals<BITS>(u, f, q);
            sx += (xx.x + xx.y) + (xx.z + xx.w);
            dq = fmaf(q[0], xx.x, dq);
            dq = fmaf(q[1], xx.y, dq);
            dq = fmaf(q[2], xx.z, dq);
            dq = fmaf(q[3], xx.w, dq);
        }
        acc = fmaf(s, dq, fmaf(b, sx, acc));
    }
    return dr_warp_sum(acc);
}

/* act[r, i] = silu(gate_e[i] . x_t) * (up_e[i] . x_t), r = t*k + j, e = idx[r];
 * x_t staged in shared memory (H floats) */
template <int BITS>
__global__ void __launch_bounds__(256) qmoe_gate_up_kernel(float *act, const float *x, const int32_t *idx,
                                                           const void *const *tab, int E, int k, qgeo g,
                                                           dr_dtype sdt) {
    DR_TL_SCOPE();
    extern __shared__ float4 xs[];
    const int r = blockIdx.y;
    const int i = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    stage_x<BITS>(xs, x + (size_t)(r / k) * g.n, g.n);
    __syncthreads();
    if (i >= g.rows)
        return;
    const int e = idx[r];
    const float gv = qdot_warp<BITS>(tab[e], g, sdt, i, xs), uv = qdot_warp<BITS>(tab[E + e], g, sdt, i, xs);
    if ((threadIdx.x & 31) == 0)
        act[(size_t)r * g.rows + i] = dr_dev_silu(gv) * uv;
}

/* y[t, h] += sum_j wts[t, j] * (down_e[h] . act[t*k + j]), j in order (as the
 * CPU); the token's k activation rows staged in shared memory (k * I floats) */
template <int BITS>
__global__ void __launch_bounds__(256) qmoe_down_kernel(float *y, const float *act, const int32_t *idx,
                                                        const float *wts, const void *const *tab, int E, int k,
                                                        qgeo g, dr_dtype sdt) {
    DR_TL_SCOPE();
    extern __shared__ float4 xs[];
    const int t = blockIdx.y;
    const int h = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    for (int j = 0; j < k; j++)
        stage_x<BITS>(xs + (size_t)j * (g.n / 4), act + ((size_t)t * k + j) * g.n, g.n);
    __syncthreads();
    if (h >= g.rows)
        return;
    float acc = y[(size_t)t * g.rows + h];
    for (int j = 0; j < k; j++) {
        const size_t r = (size_t)t * k + j;
        const float v = qdot_warp<BITS>(tab[2 * E + idx[r]], g, sdt, h, xs + (size_t)j * (g.n / 4));
        acc += wts[r] * v;
    }
    if ((threadIdx.x & 31) == 0)
        y[(size_t)t * g.rows + h] = acc;
}

/* Whether the q2 / FMA MoE decode kernels take these experts: one
 * quantization for every matrix (one launch reads them all), x aligned, the
 * staged x and the k (+ nsh) activation rows within 48 KB. */
static bool qmoe_ok(const dr_expert *ex, int E, const float *x, int k, int H, int I, int nsh) {
    const dr_tensor *g0 = &ex[0].gate;
    const size_t s1 = (size_t)(q2_on() ? q2_np(H, g0->q.bits) : H) * sizeof(float),
                 s2 = (size_t)(k + nsh) * ((q2_on() ? q2_np(I, g0->q.bits) : I) + 1) * sizeof(float);
    if ((uintptr_t)x % 16 || (H * 4) % 16 || (I * 4) % 16 || s1 > (48 << 10) || s2 > (48 << 10))
        return false;
    for (int e = 0; e < E; e++) {
        const dr_tensor *m[3] = {&ex[e].gate, &ex[e].up, &ex[e].down};
        for (int i = 0; i < 3; i++)
            if (m[i]->q.bits != g0->q.bits || m[i]->q.group_size != g0->q.group_size ||
                m[i]->q.sb_dtype != g0->q.sb_dtype)
                return false;
    }
    return true;
}

/* The q2 pair for the experts ex (their geometry), by bits and scale dtype
 * (BF16, F16 or F32: checked at upload) */
template <int BITS>
static void q2_moe_bits(dr_cuda_ctx *cx, bool pdl, const q2_moe_args &a, const q2geo &gu, const q2geo &dn,
                        dr_dtype sdt) {
    if (sdt == DR_DT_F32)
        q2_moe_decode_launch<BITS, DR_DT_F32>(cx, pdl, a, gu, dn);
    else if (sdt == DR_DT_BF16)
        q2_moe_decode_launch<BITS, DR_DT_BF16>(cx, pdl, a, gu, dn);
    else
        q2_moe_decode_launch<BITS, DR_DT_F16>(cx, pdl, a, gu, dn);
}

static void q2_moe_run(dr_cuda_ctx *cx, bool pdl, const q2_moe_args &a, const dr_expert *ex) {
    const q2geo gu = q2_geo(&ex[0].gate), dn = q2_geo(&ex[0].down);
    if (ex[0].gate.q.bits == 4)
        q2_moe_bits<4>(cx, pdl, a, gu, dn, ex[0].gate.q.sb_dtype);
    else
        q2_moe_bits<8>(cx, pdl, a, gu, dn, ex[0].gate.q.sb_dtype);
}

bool dr_cuda_quant_moe_decode(dr_cuda_ctx *cx, float *y, const float *x, const int32_t *idx, const float *wts,
                              const dr_expert *ex, dr_cuda_expert_tab_fn get_tab, int E, int T, int k, int H, int I) {
    if (!qmoe_ok(ex, E, x, k, H, I, 0))
        return false; /* (the grouped path runs) */
    const void *const *tab = get_tab(cx, ex, E);
    if (!tab)
        return true; /* recorded */
    const int R = T * k;
    float *act = (float *)dr_cuda_scratch(cx, DR_SCR_MOE, (size_t)R * I * sizeof(float));
    if (!act)
        return true;
    if (q2_on()) {
        const q2_moe_args a = {y, act, x, NULL, NULL, (int32_t *)idx, (float *)wts, tab, NULL, NULL, NULL, NULL,
                               E, k, R, T, 0, 1};
        q2_moe_run(cx, false, a, ex);
        return true;
    }
    const dr_dtype sdt = ex[0].gate.q.sb_dtype;
    const size_t s1 = (size_t)H * sizeof(float), s2 = (size_t)k * I * sizeof(float); /* staged x, act rows */
    const dim3 g1(dr_cdiv((size_t)I, 8), (unsigned)R), g2(dr_cdiv((size_t)H, 8), (unsigned)T);
    const qgeo gu = q_geo(&ex[0].gate), dn = q_geo(&ex[0].down);
    if (ex[0].gate.q.bits == 4) {
        qmoe_gate_up_kernel<4><<<g1, 256, s1, cx->stream>>>(act, x, idx, tab, E, k, gu, sdt);
        DR_CUDA_LAUNCHED(cx);
        qmoe_down_kernel<4><<<g2, 256, s2, cx->stream>>>(y, act, idx, wts, tab, E, k, dn, sdt);
    } else {
        qmoe_gate_up_kernel<8><<<g1, 256, s1, cx->stream>>>(act, x, idx, tab, E, k, gu, sdt);
        DR_CUDA_LAUNCHED(cx);
        qmoe_down_kernel<8><<<g2, 256, s2, cx->stream>>>(y, act, idx, wts, tab, E, k, dn, sdt);
    }
    DR_CUDA_LAUNCHED(cx);
    return true;
}

/* Whether w has the quantization and shape [rows, cols] of the experts'
 * matrix like (the shared expert run as one more expert) */
static bool q_same(const dr_tensor *w, const dr_tensor *like, long rows, long cols) {
    return w && w->dev && w->q.bits == like->q.bits && w->q.group_size == like->q.group_size &&
           w->q.sb_dtype == like->q.sb_dtype && (long)q_rows(w) == rows && w->ne[w->ndim - 1] == cols;
}

bool dr_cuda_quant_moe_block(dr_cuda_ctx *cx, float *y, int32_t *idx, float *wts, float *logits,
                             const dr_tensor *router, const float *x, const dr_expert *ex,
                             dr_cuda_expert_tab_fn get_tab, int E, int T, int k, bool renorm, int H, int I,
                             const dr_moe_shared *sh, bool acc) {
    static int on = -1;
    if (!dr_env_on("DR_CUDA_QMOE_BLOCK", &on) || !q2_on() || E > 512 || !qmoe_ok(ex, E, x, k, H, I, sh ? 1 : 0))
        return false;
    if (sh && (!q_same(sh->gate, &ex[0].gate, I, H) || !q_same(sh->up, &ex[0].gate, I, H) ||
               !q_same(sh->down, &ex[0].down, H, I) || !sh->gate_s->dev))
        return false;
    const void *const *tab = get_tab(cx, ex, E);
    if (!tab)
        return true; /* recorded */
    const int R = T * k;
    float *act = (float *)dr_cuda_scratch(cx, DR_SCR_MOE, (size_t)(R + (sh ? T : 0)) * I * sizeof(float));
    if (!act)
        return true;
    /* the picks-ready flags, made outside any recording (DR_CUDA_MOE_EARLY=0: none, the down kernel waits
       for the whole gate/up kernel) */
    static int early = -1;
    if (dr_env_on("DR_CUDA_MOE_EARLY", &early) && !cx->moe_ready &&
        !(cx->moe_ready = (int *)dr_cuda_zeroed(cx, MOE_GEMV_T * sizeof(int))))
        return true; /* first use while recording (the step runs again without it), or failed */
    if (sh) { /* the router's logits and the shared expert's scalar gate: one call */
        float *const ys[2] = {logits, sh->ws_s};
        const dr_tensor *const ws[2] = {router, sh->gate_s};
        dr_cuda_matmul_n(cx, 2, ys, x, ws, T);
    } else {
        dr_cuda_matmul(cx, logits, x, router, T);
    }
    const q2_moe_args a = {y,   act, x,    logits, sh ? sh->ws_s : NULL, idx, wts, tab, sh ? sh->gate->dev : NULL,
                           sh ? sh->up->dev : NULL, sh ? sh->down->dev : NULL, early ? cx->moe_ready : NULL, E, k,
                           R, T, renorm ? 1 : 0, acc ? 1 : 0};
    q2_moe_run(cx, true, a, ex);
    return true;
}
