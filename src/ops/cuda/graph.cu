/* ops/cuda/graph.cu - single-token steps recorded as CUDA graphs and
 * replayed (ops.h step_begin / step_end / graph_free).
 *
 * A decode step launches a few hundred small kernels; replaying them as one
 * graph removes the per-launch cost. The step's token id and position live
 * in ctx->step_dev (written by one tiny kernel per step, outside the graph);
 * while a step is open, embed, rope, attention and kv_store read them there.
 * The attention grid is shaped for a capacity (the next power of two >= the
 * position + 1, at least 256 keys): empty key slices contribute nothing, so
 * one recording serves every position up to its capacity.
 *
 * Per sequence (the caller's handle) and variant (logits or not, bf16 state):
 * the first step at a capacity runs normally with the step open (it sizes
 * the scratch buffers for that grid), the next one is recorded, instantiated
 * and launched, later ones replay it. A recording is dropped when its
 * capacity changes or a scratch buffer it uses moved (ctx->scr_gen); one that
 * fails (ctx->cap_bad: something could not be done while recording) runs
 * again without it, and after two failures the variant stays unrecorded.
 */
#include "cuda_common.cuh"
#include "cuda_ops.h"

#include <stdlib.h>

#define GR_VARIANTS 4
#define GR_MIN_CAP 256

typedef struct {
    cudaGraphExec_t exec;
    int cap;         /* capacity of exec */
    unsigned gen;    /* ctx->scr_gen when recorded */
    int warm_cap;    /* capacity of the last normal step with the step open */
    unsigned warm_gen;
    int fails;
} gr_variant;

typedef struct {
    gr_variant v[GR_VARIANTS];
    int rec;         /* variant being recorded */
} dr_cuda_graph;

static int g_graphs = -1; /* -1: read DR_CUDA_GRAPHS on first use */
static long g_count[3];   /* recordings made, replays, recordings that failed */

extern "C" void dr_cuda_graph_counts(long *recorded, long *replayed, long *failed) {
    *recorded = g_count[0];
    *replayed = g_count[1];
    *failed = g_count[2];
}

extern "C" void dr_cuda_set_graphs(int on) { g_graphs = on ? 1 : 0; }

static int graphs_on(void) {
    if (g_graphs < 0) {
        const char *e = getenv("DR_CUDA_GRAPHS");
        g_graphs = e && e[0] == '0' ? 0 : 1;
    }
    return g_graphs;
}

__global__ void step_set_kernel(int32_t *st, int32_t token, int32_t pos) {
    st[0] = token;
    st[1] = pos;
}

static int capacity(int pos) {
    int c = GR_MIN_CAP;
    while (c < pos + 1 && c < (1 << 30))
        c *= 2;
    return c;
}

static void drop(gr_variant *v) {
    if (v->exec)
        cudaGraphExecDestroy(v->exec);
    v->exec = NULL;
    v->cap = 0;
}

int dr_cuda_step_begin(void *ctx, void **graph, int32_t token, int pos, int variant) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    cx->step_on = 0;
    if (!graphs_on() || cx->failed || cx->capturing || variant < 0 || variant >= GR_VARIANTS)
        return DR_STEP_RUN;
    if (!cx->step_dev) {
        void *p = NULL;
        if (cudaMalloc(&p, 2 * sizeof(int32_t)) != cudaSuccess) {
            cudaGetLastError();
            return DR_STEP_RUN;
        }
        cx->step_dev = (int32_t *)p;
    }
    if (!*graph) {
        *graph = calloc(1, sizeof(dr_cuda_graph));
        if (!*graph)
            return DR_STEP_RUN;
    }
    dr_cuda_graph *g = (dr_cuda_graph *)*graph;
    gr_variant *v = &g->v[variant];
    if (v->fails >= 2)
        return DR_STEP_RUN;
    step_set_kernel<<<1, 1, 0, cx->stream>>>(cx->step_dev, token, pos);
    DR_CUDA_LAUNCHED(cx);
    const int cap = capacity(pos);
    cx->step_on = 1;
    cx->step_cap = cap;
    if (v->exec && (v->cap != cap || v->gen != cx->scr_gen))
        drop(v);
    if (v->exec) {
        DR_CUDA_NOTE(cx, cudaGraphLaunch(v->exec, cx->stream));
        g_count[1]++;
        cx->step_on = 0;
        return DR_STEP_REPLAYED;
    }
    if (v->warm_cap == cap && v->warm_gen == cx->scr_gen) {
        if (cudaStreamBeginCapture(cx->stream, cudaStreamCaptureModeRelaxed) == cudaSuccess) {
            cx->capturing = 1;
            cx->cap_bad = 0;
            g->rec = variant;
            return DR_STEP_RECORD;
        }
        cudaGetLastError();
        v->fails++;
    }
    v->warm_cap = cap; /* warm_gen is set when this normal step has grown what it needs */
    v->warm_gen = cx->scr_gen - 1;
    g->rec = variant;
    return DR_STEP_RUN;
}

bool dr_cuda_step_end(void *ctx, void *graph) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    if (!cx->capturing) {
        if (cx->step_on && graph) /* a normal step: the scratch it grew is now in place */
            ((dr_cuda_graph *)graph)->v[((dr_cuda_graph *)graph)->rec].warm_gen = cx->scr_gen;
        cx->step_on = 0;
        return true;
    }
    dr_cuda_graph *g = (dr_cuda_graph *)graph;
    gr_variant *v = &g->v[g->rec];
    cudaGraph_t gr = NULL;
    cudaError_t e = cudaStreamEndCapture(cx->stream, &gr);
    cx->capturing = 0;
    cx->step_on = 0;
    cudaGraphExec_t ex = NULL;
    if (e == cudaSuccess && !cx->cap_bad && gr)
        e = cudaGraphInstantiate(&ex, gr, 0);
    if (gr)
        cudaGraphDestroy(gr);
    if (e != cudaSuccess || cx->cap_bad || !ex) {
        cudaGetLastError(); /* not sticky: the step runs again without the recording */
        if (ex)
            cudaGraphExecDestroy(ex);
        cx->cap_bad = 0;
        v->fails++;
        g_count[2]++;
        v->warm_cap = 0;
        return false;
    }
    drop(v);
    v->exec = ex;
    v->cap = cx->step_cap;
    v->gen = cx->scr_gen;
    DR_CUDA_NOTE(cx, cudaGraphLaunch(ex, cx->stream));
    g_count[0]++;
    return true;
}

void dr_cuda_graph_free(void *ctx, void *graph) {
    dr_cuda_ctx *cx = (dr_cuda_ctx *)ctx;
    if (!graph)
        return;
    dr_cuda_graph *g = (dr_cuda_graph *)graph;
    if (cx->stream)
        cudaStreamSynchronize(cx->stream); /* a replay may still run */
    for (int i = 0; i < GR_VARIANTS; i++)
        drop(&g->v[i]);
    free(g);
}
