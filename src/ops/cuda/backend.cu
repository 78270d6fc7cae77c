/* ops/cuda/backend.cu - the CUDA backend: creation, memory slots, weight
 * upload and the ops table. Kernels live in the other files of this folder.
 */
#include "cuda_common.cuh"
#include "cuda_ops.h"
#include "quant.cuh"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Round 3's PDL launches of the norms and the fused GDN step (cuda_common.cuh
 * pdl_norm / pdl_gdn): measured in docs/CUDA.md, "Decode round 3". */
#define DR_CUDA_PDL_NORM_DEFAULT 0
#define DR_CUDA_PDL_GDN_DEFAULT 0

extern "C" void dr_cuda_note_fail(dr_cuda_ctx *cx, const char *file, int line, const char *stmt, cudaError_t e) {
    if (cx->capturing) { /* the recording is dropped and the step runs again without it */
        cx->cap_bad = 1;
        return;
    }
    if (!cx->failed) /* keep the first message: later ones are usually consequences */
        dr_fail_at(file, line, dr_cuda_status(e), "CUDA: %s failed: %s", stmt, cudaGetErrorString(e));
    cx->failed = 1;
}

extern "C" void dr_cuda_note_blas(dr_cuda_ctx *cx, const char *file, int line, const char *stmt, cublasStatus_t s) {
    if (!cx->failed)
        dr_fail_at(file, line, DR_ERR_DEVICE, "cuBLAS: %s failed: status %d", stmt, (int)s);
    cx->failed = 1;
}

void *dr_cuda_zeroed(dr_cuda_ctx *cx, size_t n) {
    if (cx->capturing) {
        cx->cap_bad = 1;
        return NULL;
    }
    void *p = NULL;
    DR_CUDA_NOTE(cx, cudaMalloc(&p, n));
    if (p)
        DR_CUDA_NOTE(cx, cudaMemsetAsync(p, 0, n, cx->stream));
    return p;
}

void *dr_cuda_scratch(dr_cuda_ctx *cx, int slot, size_t n) {
    if (n <= cx->scr_n[slot])
        return cx->scr[slot];
    if (cx->capturing) { /* can't wait while recording: the step runs again without it */
        cx->cap_bad = 1;
        return NULL;
    }
    cx->scr_gen++;
    /* the old buffer may still be read by queued kernels */
    DR_CUDA_NOTE(cx, cudaStreamSynchronize(cx->stream));
    cudaFree(cx->scr[slot]);
    cx->scr[slot] = NULL;
    cx->scr_n[slot] = 0;
    size_t want = n + n / 4; /* grow geometrically: prefill sizes vary */
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, want);
    if (e != cudaSuccess) {
        dr_cuda_note_fail(cx, __FILE__, __LINE__, "cudaMalloc(scratch)", e);
        return NULL;
    }
    cx->scr[slot] = p;
    cx->scr_n[slot] = want;
    return p;
}

cudaError_t dr_cuda_h2d(dr_cuda_ctx *cx, void *dst, const void *src, size_t n) {
    static int legacy = -1; /* DR_CUDA_LEGACY_COPY=1: the old unordered cudaMemcpy (same-call A/B only) */
    if (legacy < 0) {
        const char *e = getenv("DR_CUDA_LEGACY_COPY");
        legacy = e && e[0] == '1';
    }
    if (!n)
        return cudaSuccess;
    if (legacy)
        return cudaMemcpy(dst, src, n, cudaMemcpyHostToDevice);
    return cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, cx->stream);
}

int32_t *dr_cuda_host_ids(dr_cuda_ctx *cx, size_t n) {
    if (n <= cx->ids_host_n)
        return cx->ids_host;
    DR_CUDA_NOTE(cx, cudaStreamSynchronize(cx->stream)); /* a queued copy may read it */
    cudaFreeHost(cx->ids_host);
    cx->ids_host = NULL;
    cx->ids_host_n = 0;
    size_t want = n < 4096 ? 4096 : n + n / 4;
    void *p = NULL;
    cudaError_t e = cudaMallocHost(&p, want * sizeof(int32_t));
    if (e != cudaSuccess) {
        dr_cuda_note_fail(cx, __FILE__, __LINE__, "cudaMallocHost(ids)", e);
        return NULL;
    }
    cx->ids_host = (int32_t *)p;
    cx->ids_host_n = want;
    return cx->ids_host;
}

/* ---- memory slots ---- */

static void *cu_alloc(void *ctx, size_t n) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    void *p = NULL;
    if (cudaMalloc(&p, n ? n : 1) != cudaSuccess) {
        cudaGetLastError(); /* an allocation failure is not sticky */
        return NULL;
    }
    /* zero-filled by contract; on the stream so it orders with later work */
    if (cudaMemsetAsync(p, 0, n, cx->stream) != cudaSuccess) {
        cudaFree(p);
        return NULL;
    }
    return p;
}

static void cu_free(void *ctx, void *p) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    if (!p)
        return;
    DR_CUDA_NOTE(cx, cudaStreamSynchronize(cx->stream));
    cudaFree(p);
}

static void cu_upload(void *ctx, void *dst, const void *src, size_t n) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    if (!n)
        return;
    /* from pageable memory the copy is staged before it returns, so the
       caller may reuse src at once */
    DR_CUDA_NOTE(cx, cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, cx->stream));
}

/* Large downloads (a decode step's logits, 1 MB) go through a pinned buffer
 * and one host memcpy: a pageable copy of that size cost a few hundred us per
 * token. A failed pinned allocation falls back to the pageable copy. */
#define DL_PINNED_MIN (64 << 10)
static void cu_download(void *ctx, void *dst, const void *src, size_t n) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    if (!n)
        return;
    if (n >= DL_PINNED_MIN && !cx->capturing) {
        if (n > cx->dl_host_n) {
            cudaFreeHost(cx->dl_host);
            cx->dl_host = NULL;
            cx->dl_host_n = 0;
            void *p = NULL;
            if (cudaMallocHost(&p, n) == cudaSuccess) {
                cx->dl_host = p;
                cx->dl_host_n = n;
            } else {
                cudaGetLastError();
            }
        }
        if (cx->dl_host) {
            DR_CUDA_NOTE(cx, cudaMemcpyAsync(cx->dl_host, src, n, cudaMemcpyDeviceToHost, cx->stream));
            DR_CUDA_NOTE(cx, cudaStreamSynchronize(cx->stream));
            memcpy(dst, cx->dl_host, n);
            return;
        }
    }
    DR_CUDA_NOTE(cx, cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, cx->stream));
    DR_CUDA_NOTE(cx, cudaStreamSynchronize(cx->stream));
}

static void cu_copy(void *ctx, void *dst, const void *src, size_t n) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    if (!n || dst == src)
        return;
    DR_CUDA_NOTE(cx, cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, cx->stream));
}

static void cu_zero(void *ctx, void *p, size_t n) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    if (n)
        DR_CUDA_NOTE(cx, cudaMemsetAsync(p, 0, n, cx->stream));
}

static void cu_sync(void *ctx) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    DR_CUDA_NOTE(cx, cudaStreamSynchronize(cx->stream));
}

/* Free device memory, less a reserve for cuBLAS workspaces, graphs and the
 * context's own allocations made later. */
static size_t cu_mem_free_bytes(void *ctx) {
    (void)ctx;
    size_t fr = 0, tot = 0;
    if (cudaMemGetInfo(&fr, &tot) != cudaSuccess) {
        cudaGetLastError();
        return (size_t)-1; /* unknown: let the allocations report */
    }
    const size_t reserve = (size_t)512 << 20;
    return fr > reserve ? fr - reserve : 0;
}

/* ---- weights ---- */

static dr_status cu_weight_upload(void *ctx, dr_tensor *t) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    if (t->dev)
        return DR_OK; /* a view shared with another entry (tied lm_head) */
    if (t->q.bits && t->q.tiled_rows) /* only a CPU backend makes that layout, on its own model */
        return DR_FAIL(DR_ERR_UNSUPPORTED, "tensor %s: rows in the CPU's decode layout, expected file order",
                       t->name ? t->name : "?");
    if (t->q.bits)
        return dr_cuda_quant_upload(cx, t); /* quant.cu */
    if (t->dtype != DR_DT_F32 && t->dtype != DR_DT_BF16 && t->dtype != DR_DT_F16)
        return DR_FAIL(DR_ERR_UNSUPPORTED, "tensor %s: dtype %s is not supported by the CUDA backend",
                       t->name ? t->name : "?", dr_dtype_name(t->dtype));
    if (cx->failed)
        return DR_FAIL(DR_ERR_DEVICE, "CUDA backend: an earlier kernel failed (%s)", dr_last_error());
    size_t n = dr_dtype_size(t->dtype);
    for (int i = 0; i < t->ndim; i++)
        n *= (size_t)t->ne[i];
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, n ? n : 1);
    if (e != cudaSuccess) {
        cudaGetLastError();
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        return DR_FAIL(dr_cuda_status(e), "tensor %s: cannot allocate %zu bytes on the GPU (%zu of %zu MiB free): %s",
                       t->name ? t->name : "?", n, fr >> 20, tot >> 20, cudaGetErrorString(e));
    }
    e = dr_cuda_h2d(cx, p, t->data, n);
    if (e != cudaSuccess) {
        cudaFree(p);
        return DR_FAIL(dr_cuda_status(e), "tensor %s: upload of %zu bytes failed: %s", t->name ? t->name : "?", n,
                       cudaGetErrorString(e));
    }
    t->dev = p;
    return DR_OK;
}

static void cu_weight_free(void *ctx, dr_tensor *t) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    if (!t->dev)
        return;
    DR_CUDA_NOTE(cx, cudaStreamSynchronize(cx->stream));
    cudaFree(t->dev);
    t->dev = NULL;
}

/* ---- timeline (measurement builds only: timeline.cuh) ---- */

#ifdef DR_CUDA_TIMELINE
#define TL_UNITS 32
#define TL_CAP (1u << 22) /* records (192 MiB) */
static dr_tl_binder tl_units[TL_UNITS];
static int tl_n_units;
static dr_tl_rec *tl_buf;
static unsigned *tl_count;

int dr_tl_register(dr_tl_binder b) {
    if (tl_n_units < TL_UNITS)
        tl_units[tl_n_units++] = b;
    return 0;
}

/* Allocate the record buffer and point every unit's kernels at it when
 * DR_CUDA_TIMELINE names a file (one backend at a time). */
static void tl_start(void) {
    if (!getenv("DR_CUDA_TIMELINE") || tl_buf)
        return;
    if (cudaMalloc(&tl_buf, (size_t)TL_CAP * sizeof *tl_buf) != cudaSuccess ||
        cudaMalloc(&tl_count, sizeof *tl_count) != cudaSuccess) {
        fprintf(stderr, "timeline: no device memory for the records\n");
        return;
    }
    cudaMemset(tl_count, 0, sizeof *tl_count);
    for (int i = 0; i < tl_n_units; i++)
        tl_units[i](tl_buf, tl_count, TL_CAP);
    cudaDeviceSynchronize();
}

static void tl_dump(void) {
    const char *path = getenv("DR_CUDA_TIMELINE");
    if (!tl_buf || !path)
        return;
    unsigned n = 0;
    cudaDeviceSynchronize();
    cudaMemcpy(&n, tl_count, sizeof n, cudaMemcpyDeviceToHost);
    const unsigned keep = n < TL_CAP ? n : TL_CAP;
    dr_tl_rec *h = (dr_tl_rec *)malloc((size_t)keep * sizeof *h + 1);
    FILE *f = fopen(path, "wb");
    if (h && f && cudaMemcpy(h, tl_buf, (size_t)keep * sizeof *h, cudaMemcpyDeviceToHost) == cudaSuccess)
        fwrite(h, sizeof *h, keep, f);
    if (f)
        fclose(f);
    fprintf(stderr, "timeline: %u records to %s (%u dropped)\n", keep, path, n - keep);
    free(h);
    for (int i = 0; i < tl_n_units; i++)
        tl_units[i](NULL, NULL, 0);
    cudaFree(tl_buf), cudaFree(tl_count);
    tl_buf = NULL, tl_count = NULL;
}
#else
static void tl_start(void) {}
static void tl_dump(void) {}
#endif

/* ---- lifecycle ---- */

static void cu_destroy(dr_ops *self) {
    if (!self)
        return;
    dr_cuda_ctx *cx = (dr_cuda_ctx *)self->ctx;
    if (cx) {
        cudaSetDevice(cx->device);
        if (cx->stream)
            cudaStreamSynchronize(cx->stream);
        tl_dump();
        for (int i = 0; i < DR_SCR_N; i++)
            cudaFree(cx->scr[i]);
        for (int i = 0; i < cx->n_tabs; i++)
            cudaFree((void *)cx->tabs[i].dev), free(cx->tabs[i].host);
        free(cx->tabs);
        cudaFreeHost(cx->ids_host);
        cudaFreeHost(cx->dl_host);
        cudaFree(cx->rope_inv);
        cudaFree(cx->step_dev);
        cudaFree(cx->gdn_cnt);
        cudaFree(cx->am_state);
        cudaFreeHost(cx->am_host);
        cudaFree(cx->mm_cnt);
        cudaFree(cx->moe_ready);
        cudaFree(cx->att_cnt);
        if (cx->blas)
            cublasDestroy(cx->blas);
        if (cx->stream)
            cudaStreamDestroy(cx->stream);
        free(cx);
    }
    free(self);
}

extern "C" dr_status dr_ops_cuda_create(const dr_backend_params *p, dr_ops **out) {
    *out = NULL;
    int n_dev = 0;
    cudaError_t e = cudaGetDeviceCount(&n_dev);
    if (e != cudaSuccess || n_dev == 0) {
        cudaGetLastError();
        return DR_FAIL(DR_ERR_UNSUPPORTED, "device cuda:%d: no CUDA device available (%s)", p->device,
                       e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    }
    if (p->device < 0 || p->device >= n_dev)
        return DR_FAIL(DR_ERR_ARG, "device cuda:%d: this machine has %d CUDA device%s", p->device, n_dev,
                       n_dev == 1 ? "" : "s");
    dr_ops *o = (dr_ops *)calloc(1, sizeof *o);
    dr_cuda_ctx *cx = (dr_cuda_ctx *)calloc(1, sizeof *cx);
    if (!o || !cx) {
        free(o);
        free(cx);
        return DR_FAIL(DR_ERR_NOMEM, "out of memory creating the CUDA backend");
    }
    cx->device = p->device;
    o->ctx = cx;
    o->destroy = cu_destroy;
    dr_status st = DR_OK;
    do {
        cudaDeviceProp prop;
        if ((e = cudaSetDevice(p->device)) != cudaSuccess ||
            (e = cudaGetDeviceProperties(&prop, p->device)) != cudaSuccess ||
            (e = cudaStreamCreateWithFlags(&cx->stream, cudaStreamNonBlocking)) != cudaSuccess) {
            st = DR_FAIL(dr_cuda_status(e), "device cuda:%d: %s", p->device, cudaGetErrorString(e));
            break;
        }
        cx->n_sm = prop.multiProcessorCount;
        tl_start();
        {
            const char *pe = getenv("DR_CUDA_PDL");
            cx->pdl = prop.major >= 9 && !(pe && pe[0] == '0');
            pe = getenv("DR_CUDA_DEC3");
            cx->dec3 = !(pe && pe[0] == '0');
            pe = getenv("DR_CUDA_MOE_DEC");
            cx->moe_dec = cx->dec3 && !(pe && pe[0] == '0');
            pe = getenv("DR_CUDA_PDL_NORM");
            cx->pdl_norm = !cx->dec3 ? 0 : pe && pe[0] >= '0' && pe[0] <= '2' ? pe[0] - '0' : DR_CUDA_PDL_NORM_DEFAULT;
            pe = getenv("DR_CUDA_PDL_GDN");
            cx->pdl_gdn = !cx->dec3 ? 0 : pe && pe[0] >= '0' && pe[0] <= '2' ? pe[0] - '0' : DR_CUDA_PDL_GDN_DEFAULT;
        }
        if (prop.major < 8) {
            st = DR_FAIL(DR_ERR_UNSUPPORTED, "device cuda:%d (%s): compute capability %d.%d, need 8.0 or newer",
                         p->device, prop.name, prop.major, prop.minor);
            break;
        }
        if (cublasCreate(&cx->blas) != CUBLAS_STATUS_SUCCESS) {
            cx->blas = NULL;
            st = DR_FAIL(DR_ERR_DEVICE, "device cuda:%d: cuBLAS initialisation failed", p->device);
            break;
        }
        cublasSetStream(cx->blas, cx->stream);
        /* default math: fp32 GEMMs stay fp32 (TF32 only when asked for),
           bf16 inputs accumulate in fp32 */
        cublasSetMathMode(cx->blas, CUBLAS_DEFAULT_MATH);
    } while (0);
    if (st != DR_OK) {
        cu_destroy(o);
        return st;
    }
    dr_cuda_fill_table(o);
    o->name = "cuda";
    o->weight_upload = cu_weight_upload;
    o->weight_free = cu_weight_free;
    o->sync = cu_sync;
    o->mem_free_bytes = cu_mem_free_bytes;
    o->alloc = cu_alloc;
    o->free = cu_free;
    o->upload = cu_upload;
    o->download = cu_download;
    o->copy = cu_copy;
    o->zero = cu_zero;
    *out = o;
    return DR_OK;
}

extern "C" dr_status dr_cuda_backend_status(const dr_ops *o) {
    const dr_cuda_ctx *cx = (const dr_cuda_ctx *)o->ctx;
    if (cx && cx->failed)
        return DR_ERR_DEVICE; /* the message was recorded when it happened */
    return DR_OK;
}

extern "C" void dr_cuda_fill_table(dr_ops *o) {
    o->matmul = dr_cuda_matmul;
    o->embed = dr_cuda_embed;
    o->rmsnorm = dr_cuda_rmsnorm;
    o->add = dr_cuda_add;
    o->swiglu = dr_cuda_swiglu;
    o->sigmoid_mul = dr_cuda_sigmoid_mul;
    o->sigmoid_scale_rows = dr_cuda_sigmoid_scale_rows;
    o->split_halves = dr_cuda_split_halves;
    o->round_bf16 = dr_cuda_round_bf16;
    o->rope = dr_cuda_rope;
    o->attention = dr_cuda_attention;
    o->attention_block = dr_cuda_attention_block;
    o->gdn_conv = dr_cuda_gdn_conv;
    o->gdn_gates = dr_cuda_gdn_gates;
    o->gdn_recurrent = dr_cuda_gdn_recurrent;
    o->gdn_chunked = dr_cuda_gdn_chunked;
    o->gated_rmsnorm = dr_cuda_gated_rmsnorm;
    o->moe_route = dr_cuda_moe_route;
    o->moe_experts = dr_cuda_moe_experts;
    o->moe_decode = dr_cuda_moe_decode;
    o->kv_store = dr_cuda_kv_store;
    o->matmul_n = dr_cuda_matmul_n;
    o->add_rmsnorm = dr_cuda_add_rmsnorm;
    o->gdn_decode = dr_cuda_gdn_decode;
    o->argmax = dr_cuda_argmax;
    o->matmul_swiglu = dr_cuda_matmul_swiglu, o->matmul_add_rmsnorm = dr_cuda_matmul_add_rmsnorm;
    o->rmsnorm_matmul_n = dr_cuda_rmsnorm_matmul_n;
    o->step_begin = dr_cuda_step_begin;
    o->step_end = dr_cuda_step_end;
    o->graph_free = dr_cuda_graph_free;
}

/* Device-to-device copy bandwidth of GPU `device` in GB/s (bytes read plus
 * bytes written, best of 5 copies of 1 GiB): the decode floor's denominator
 * for `deltarun bench --device cuda`. 0 if it can't run. */
extern "C" double dr_cuda_copy_bandwidth(int device) {
    const size_t n = (size_t)1 << 30;
    void *a = NULL, *b = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    double best = 0.0;
    if (cudaSetDevice(device) != cudaSuccess || cudaMalloc(&a, n) != cudaSuccess || cudaMalloc(&b, n) != cudaSuccess ||
        cudaEventCreate(&e0) != cudaSuccess || cudaEventCreate(&e1) != cudaSuccess)
        goto done;
    cudaMemset(a, 1, n);
    cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice); /* warm-up */
    for (int r = 0; r < 5; r++) {
        float ms = 0.0f;
        cudaEventRecord(e0, 0);
        cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice, 0);
        cudaEventRecord(e1, 0);
        if (cudaEventSynchronize(e1) != cudaSuccess || cudaEventElapsedTime(&ms, e0, e1) != cudaSuccess)
            goto done;
        double gbs = 2.0 * (double)n / (ms * 1e-3) / 1e9;
        best = gbs > best ? gbs : best;
    }
done:
    cudaGetLastError();
    if (e0)
        cudaEventDestroy(e0);
    if (e1)
        cudaEventDestroy(e1);
    cudaFree(a);
    cudaFree(b);
    return best;
}
