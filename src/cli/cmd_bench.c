/* cli/cmd_bench.c - `deltarun bench`: prefill and decode speed of a model
 * directory or of random weights of a config's shape, against the memory
 * bandwidth floor measured in the same run.
 *
 * Floor: a decoded token must read every weight it uses (all dense matrices,
 * lm_head, the k routed experts) plus the GDN states (read and written) and
 * the KV cache; at the measured read bandwidth B that takes bytes / B
 * seconds, so decode can't beat B / bytes tokens per second. B is the median
 * of BW_REPS read passes (the VM's bandwidth jumps between two levels, and
 * the best pass overstates what a decode sees); the best is reported too. Results go to
 * stdout (a table, or one JSON object with --json); progress to stderr.
 */
#include "cli/cmd_bench.h"

#include "cli/args.h"
#include "model/model.h"
#include "model/synthetic.h"
#include "ops/cpu/amx.h"
#include "ops/cpu/simd.h"
#include "util/argmax.h"
#include "util/cpu_features.h"
#include "util/threadpool.h"
#ifdef DR_WITH_CUDA
#include "ops/cuda/cuda_ops.h"
#endif

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#define BENCH_MAX_REPS 100 /* -r */

static const char *const bench_help =
    "usage: deltarun bench (MODEL_DIR | --synthetic CONFIG.json) [options]\n"
    "\n"
    "Time a prefill of -p random prompt tokens (one block) and -n decoded tokens\n"
    "(greedy, one at a time, the pick made where the logits are), and compare decode with the memory-bandwidth floor:\n"
    "the bytes a decoded token must read (weights it uses, GDN states read and\n"
    "written, KV cache) over a read bandwidth measured in the same run with the\n"
    "same threads: the median of 9 passes over 1 GiB (the best pass is printed\n"
    "too, with the fraction it would give). Results to stdout, progress to stderr.\n"
    "\n"
    "  --synthetic FILE      random weights of the shape in FILE (a config.json;\n"
    "                        see bench/configs/), built in memory\n"
    "  --quant Q             synthetic weights as bf16 (default), f16, f32, or\n"
    "                        MLX-affine q8 / q4 (group 64, quantized from bf16;\n"
    "                        the MoE router and shared-expert gate at 8 bits,\n"
    "                        as `deltarun quantize` writes them)\n"
    "  --quant-random        with q8 / q4: write random packed values and one\n"
    "                        bf16 (scale, bias) per matrix directly instead of\n"
    "                        quantizing bf16 weights (the 4-bit search takes\n"
    "                        minutes for 35B-sized models); same bytes, layout\n"
    "                        and speed, no accuracy meaning\n"
    "  --layers N            synthetic: only the first N layers of the config\n"
    "  --ctx N               context capacity of the session (default p + n + 1):\n"
    "                        shows whether a model fits with a long context\n"
    "  --seed S              synthetic: weight and prompt seed (default 1)\n"
    "  -p N                  prompt tokens (default 512)\n"
    "  -n N                  decoded tokens (default 128)\n"
    "  -r, --reps N          run the prefill and the decode N times (fresh\n"
    "                        sessions, same weights and prompt) and report the\n"
    "                        median of each (default 1: one cold pass, whose\n"
    "                        prefill includes first-use costs such as scratch\n"
    "                        allocation and, on CUDA, cuBLAS's set-up for each\n"
    "                        GEMM shape); --json lists every run\n"
    "  --serial              also evaluate the prompt one token at a time and\n"
    "                        report the prefill speed-up over that\n"
    "  --host-logits         decode by copying each token's logits to the host and\n"
    "                        picking there (what sampling with a temperature\n"
    "                        does) instead of the backend's greedy pick\n"
    "  --bf16-dot            BF16 decode through vdpbf16ps (AVX512_BF16 CPUs)\n"
    "                        instead of widening weights in registers\n"
    "  --json                print one JSON object instead of the table\n"
    "  --device DEV          cpu (default), cuda or cuda:N (the floor then uses the\n"
    "                        GPU's device-to-device copy bandwidth)\n"
    "  -t, --threads N       CPU threads (default 0 = one per core)\n";

typedef struct {
    const char *dir, *synthetic, *quant;
    int layers, p, n, threads, reps;
    int ctx;            /* --ctx: session capacity (0: p + n + 1) */
    long seed;
    bool json, serial, bf16_dot, quant_random; /* quant_random: --quant-random */
    bool host_logits;   /* --host-logits: logits to the host every decoded token */
    const char *device;
} bench_opts;

typedef struct {
    double build_s, prefill_s, decode_s, serial_s; /* prefill_s, decode_s: the medians of the runs */
    double prefill_runs[BENCH_MAX_REPS], decode_runs[BENCH_MAX_REPS];
    double weight_bytes, bytes, bw_gbs; /* bw_gbs: the median pass (the floor's bandwidth) */
    double bw_best_gbs;                 /* the best pass */
    long peak_rss_kb;
} bench_res;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ===================== options ===================== */

static int int_opt(int argc, char **argv, int *i, long lo, long hi, int *out) {
    const char *a = argv[*i], *v = dr_cli_value(argc, argv, i);
    long x;
    if (!v)
        return 1;
    if (!dr_cli_int(v, lo, hi, &x))
        return dr_cli_err("%s: expected an integer in %ld..%ld, got \"%s\"", a, lo, hi, v);
    *out = (int)x;
    return 0;
}

static int parse(int argc, char **argv, bench_opts *o) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int rc = 0;
        if (!strcmp(a, "--synthetic"))
            rc = (o->synthetic = dr_cli_value(argc, argv, &i)) ? 0 : 1;
        else if (!strcmp(a, "--quant"))
            rc = (o->quant = dr_cli_value(argc, argv, &i)) ? 0 : 1;
        else if (!strcmp(a, "--device"))
            rc = (o->device = dr_cli_value(argc, argv, &i)) ? 0 : 1;
        else if (!strcmp(a, "--layers"))
            rc = int_opt(argc, argv, &i, 1, DR_MAX_LAYERS, &o->layers);
        else if (!strcmp(a, "-p"))
            rc = int_opt(argc, argv, &i, 1, 1 << 20, &o->p);
        else if (!strcmp(a, "-n"))
            rc = int_opt(argc, argv, &i, 1, 1 << 20, &o->n);
        else if (!strcmp(a, "-r") || !strcmp(a, "--reps"))
            rc = int_opt(argc, argv, &i, 1, BENCH_MAX_REPS, &o->reps);
        else if (!strcmp(a, "--ctx"))
            rc = int_opt(argc, argv, &i, 1, 1 << 24, &o->ctx);
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads"))
            rc = int_opt(argc, argv, &i, 0, 1024, &o->threads);
        else if (!strcmp(a, "--seed")) {
            int s = 1;
            rc = int_opt(argc, argv, &i, 0, 1 << 30, &s);
            o->seed = s;
        } else if (!strcmp(a, "--json"))
            o->json = true;
        else if (!strcmp(a, "--quant-random"))
            o->quant_random = true;
        else if (!strcmp(a, "--serial"))
            o->serial = true;
        else if (!strcmp(a, "--host-logits"))
            o->host_logits = true;
        else if (!strcmp(a, "--bf16-dot"))
            o->bf16_dot = true;
        else if (a[0] != '-' && !o->dir)
            o->dir = a;
        else
            rc = dr_cli_err("bench: unexpected argument \"%s\" (see --help)", a);
        if (rc)
            return rc;
    }
    if (!o->dir == !o->synthetic)
        return dr_cli_err("bench: give either MODEL_DIR or --synthetic CONFIG.json (see --help)");
    if (o->dir && (o->layers || strcmp(o->quant, "bf16")))
        return dr_cli_err("bench: --layers and --quant apply to --synthetic only (quantize a directory with "
                          "`deltarun quantize`)");
    return 0;
}

/* ===================== the model ===================== */

static int quant_of(const char *q, dr_synth_params *sp) {
    if (!strcmp(q, "bf16"))
        sp->dtype = DR_DT_BF16;
    else if (!strcmp(q, "f16"))
        sp->dtype = DR_DT_F16;
    else if (!strcmp(q, "f32"))
        sp->dtype = DR_DT_F32;
    else if (!strcmp(q, "q8") || !strcmp(q, "q4")) {
        sp->dtype = DR_DT_BF16;
        sp->quant_bits = q[1] - '0';
        sp->quant_group = 64;
    } else
        return dr_cli_err("--quant: expected bf16, f16, f32, q8 or q4, got \"%s\"", q);
    return 0;
}

static int open_model(const bench_opts *o, dr_model **m, double *secs) {
    dr_model_params mp = {.device = o->device, .n_threads = o->threads};
    double t0 = now_s();
    if (o->dir) {
        fprintf(stderr, "bench: loading %s\n", o->dir);
        if (dr_model_load_ex(o->dir, &mp, m) != DR_OK)
            return dr_cli_lib_err();
    } else {
        dr_synth_params sp = {.n_layers = o->layers, .seed = (uint64_t)o->seed, .n_threads = o->threads, .mp = mp};
        int rc = quant_of(o->quant, &sp);
        if (rc)
            return rc;
        sp.quant_random = o->quant_random && sp.quant_bits;
        fprintf(stderr, "bench: building random %s weights of %s\n", o->quant, o->synthetic);
        if (dr_model_synthetic(o->synthetic, &sp, m) != DR_OK)
            return dr_cli_lib_err();
    }
    *secs = now_s() - t0;
    return 0;
}

/* ===================== bytes per decoded token ===================== */

static double tensor_bytes(const dr_tensor *t) {
    if (!t->data)
        return 0.0;
    const double rows = (double)t->ne[t->ndim - 2], cols = (double)t->ne[t->ndim - 1];
    if (!t->q.bits)
        return rows * cols * (double)dr_dtype_size(t->dtype);
    const double groups = cols / t->q.group_size;
    return rows * cols * t->q.bits / 8.0 + 2.0 * rows * groups * (double)dr_dtype_size(t->q.sb_dtype);
}

static double expert_bytes(const dr_expert *e) {
    return tensor_bytes(&e->gate) + tensor_bytes(&e->up) + tensor_bytes(&e->down);
}

/* Weights one decoded token reads: every matrix of its path, the k routed
 * experts at their average size, one embedding row. */
static double weight_bytes_per_token(const dr_model *m) {
    const dr_hparams *hp = &m->hp;
    double b = tensor_bytes(&m->w.lm_head) + tensor_bytes(&m->w.embed) / hp->n_vocab;
    for (int l = 0; l < hp->n_layers; l++) {
        const dr_layer_weights *lw = &m->w.layers[l];
        const dr_tensor *mats[] = {&lw->gdn.in_proj_qkv, &lw->gdn.in_proj_z, &lw->gdn.in_proj_b,
                                   &lw->gdn.in_proj_a,   &lw->gdn.out_proj,  &lw->attn.q_proj,
                                   &lw->attn.k_proj,     &lw->attn.v_proj,   &lw->attn.o_proj,
                                   &lw->ffn.gate,        &lw->ffn.up,        &lw->ffn.down,
                                   &lw->ffn.router,      &lw->ffn.sh_gate,   &lw->ffn.sh_up,
                                   &lw->ffn.sh_down,     &lw->ffn.sh_gate_w};
        for (size_t i = 0; i < sizeof mats / sizeof mats[0]; i++)
            b += tensor_bytes(mats[i]);
        if (lw->ffn.experts) {
            double all = 0.0;
            for (int e = 0; e < hp->n_experts; e++)
                all += expert_bytes(&lw->ffn.experts[e]);
            b += all / hp->n_experts * hp->n_experts_used;
        }
    }
    return b;
}

/* State traffic of one decoded token at context length ctx: each GDN layer
 * reads and writes its fp32 state and conv state, each attention layer reads
 * its K and V cache. */
static double state_bytes_per_token(const dr_model *m, double ctx) {
    const dr_hparams *hp = &m->hp;
    double b = 0.0;
    for (int l = 0; l < hp->n_layers; l++)
        if (hp->is_attn[l])
            b += 2.0 * ctx * hp->n_kv_heads * hp->d_head * 4.0;
        else
            b += 2.0 * 4.0 * ((double)hp->n_v_heads * hp->d_k * hp->d_v + (double)hp->d_conv * dr_hp_conv_dim(hp));
    return b;
}

/* ===================== measured bandwidth ===================== */

#define BW_BYTES ((size_t)1 << 30) /* far larger than any cache */
#define BW_TASKS 256
#define BW_REPS 9 /* odd: the median is one pass */

typedef struct {
    const float *buf;
    size_t per; /* floats per task */
    const dr_simd *k;
    volatile float *sink; /* [BW_TASKS], keeps the reads alive */
} bw_job;

static void bw_task(void *arg, int task, int thread) {
    const bw_job *j = arg;
    (void)thread;
    j->sink[task] = j->k->sum(j->buf + (size_t)task * j->per, j->per);
}

static void touch_task(void *arg, int task, int thread) {
    const bw_job *j = arg;
    (void)thread;
    memset((void *)(j->buf + (size_t)task * j->per), 1, j->per * sizeof(float));
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The median of v[0..n) (the mean of the middle two for even n); v is left as is. */
static double median(const double *v, int n) {
    double s[BENCH_MAX_REPS];
    memcpy(s, v, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, cmp_double);
    return n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
}

/* Read bandwidth (GB/s) of BW_REPS passes over a 1 GiB buffer with n_threads
 * threads and the backend's SIMD sum kernel: returns the median, *best the
 * best pass; both 0 if it can't run. */
static double measure_bandwidth(int n_threads, double *best) {
    *best = 0.0;
    float *buf = malloc(BW_BYTES);
    float sink[BW_TASKS];
    dr_pool *pool = NULL;
    if (!buf || dr_pool_new(n_threads, &pool) != DR_OK) {
        free(buf);
        return 0.0;
    }
    bw_job j = {buf, BW_BYTES / sizeof(float) / BW_TASKS, dr_simd_get(), sink};
    dr_pool_run(pool, BW_TASKS, touch_task, &j); /* fault the pages in, each thread its own */
    double gbs[BW_REPS];
    for (int r = 0; r < BW_REPS; r++) {
        double t0 = now_s();
        dr_pool_run(pool, BW_TASKS, bw_task, &j);
        gbs[r] = (double)BW_BYTES / (now_s() - t0) / 1e9;
    }
    dr_pool_free(pool);
    free(buf);
    qsort(gbs, BW_REPS, sizeof gbs[0], cmp_double);
    *best = gbs[BW_REPS - 1];
    return gbs[BW_REPS / 2];
}

static bool is_cuda(const char *dev) { return !strncmp(dev, "cuda", 4); }

/* --device cuda[:N]: the GPU's device-to-device copy bandwidth (bytes read
 * plus written, 1 GiB, best of 5), measured now; 0 without CUDA. */
static double gpu_bandwidth(const char *dev) {
#ifdef DR_WITH_CUDA
    return dr_cuda_copy_bandwidth(dev[4] == ':' ? atoi(dev + 5) : 0);
#else
    (void)dev;
    return 0.0;
#endif
}

/* ===================== the runs ===================== */

static int new_session(dr_model *m, int n_ctx, int n_batch, dr_session **s) {
    dr_session_params sp = dr_session_default_params();
    sp.n_ctx = n_ctx;
    sp.n_batch = n_batch;
    return dr_session_new(m, &sp, s) == DR_OK ? 0 : dr_cli_lib_err();
}

/* Prefill the prompt as one block, then decode greedily. */
static int run_prefill_decode(dr_model *m, const bench_opts *o, const int32_t *ids, float *logits, bench_res *r) {
    dr_session *s = NULL;
    int ctx = o->ctx > o->p + o->n ? o->ctx : o->p + o->n + 1;
    if (new_session(m, ctx, o->p, &s))
        return 2;
    fprintf(stderr, "bench: prefill of %d tokens\n", o->p);
    double t0 = now_s();
    int32_t next = 0;
    int rc = dr_session_eval_greedy(s, ids, o->p, 0, &next) == DR_OK ? 0 : dr_cli_lib_err();
    r->prefill_s = now_s() - t0;
    if (!rc)
        fprintf(stderr, "bench: decode of %d tokens%s\n", o->n, o->host_logits ? " (logits to the host)" : "");
    t0 = now_s();
    for (int i = 0; i < o->n && !rc; i++) {
        dr_status st;
        if (o->host_logits) {
            st = dr_session_eval(s, &next, 1, DR_LOGITS_LAST, logits);
            next = dr_argmax_f32(logits, m->hp.n_vocab);
        } else {
            st = dr_session_eval_greedy(s, &next, 1, 0, &next);
        }
        rc = st == DR_OK ? 0 : dr_cli_lib_err();
    }
    r->decode_s = now_s() - t0;
    dr_session_free(s);
    return rc;
}

/* The same prompt one token at a time (the baseline prefill must beat). */
static int run_serial(dr_model *m, const bench_opts *o, const int32_t *ids, float *logits, bench_res *r) {
    dr_session *s = NULL;
    if (new_session(m, o->p + 1, 1, &s))
        return 2;
    fprintf(stderr, "bench: the prompt one token at a time\n");
    int rc = 0;
    double t0 = now_s();
    for (int i = 0; i < o->p && !rc; i++)
        rc = dr_session_eval(s, ids + i, 1, i + 1 == o->p ? DR_LOGITS_LAST : DR_LOGITS_NONE, logits) == DR_OK
                 ? 0
                 : dr_cli_lib_err();
    r->serial_s = now_s() - t0;
    dr_session_free(s);
    return rc;
}

static int run_all(dr_model *m, const bench_opts *o, bench_res *r) {
    const int V = m->hp.n_vocab;
    int32_t *ids = malloc((size_t)o->p * sizeof *ids);
    float *logits = malloc((size_t)V * sizeof *logits);
    int rc = ids && logits ? 0 : dr_cli_err("out of memory");
    uint64_t x = (uint64_t)o->seed * 0x9E3779B97F4A7C15ull + 12345;
    for (int i = 0; !rc && i < o->p; i++) { /* random prompt ids (xorshift) */
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        ids[i] = (int32_t)(x % (uint64_t)V);
    }
    for (int i = 0; !rc && i < o->reps; i++) {
        if (o->reps > 1)
            fprintf(stderr, "bench: run %d of %d\n", i + 1, o->reps);
        rc = run_prefill_decode(m, o, ids, logits, r);
        r->prefill_runs[i] = r->prefill_s;
        r->decode_runs[i] = r->decode_s;
    }
    if (!rc) {
        r->prefill_s = median(r->prefill_runs, o->reps);
        r->decode_s = median(r->decode_runs, o->reps);
    }
    if (!rc && o->serial)
        rc = run_serial(m, o, ids, logits, r);
    free(ids);
    free(logits);
    return rc;
}

/* ===================== report ===================== */

typedef struct {
    double prefill_tps, decode_tps, ttft_ms, decode_gbs, floor_tps, floor_frac, serial_tps, rss_mb;
    double floor_best_frac; /* against the best bandwidth pass */
} derived;

static derived derive(const bench_opts *o, const bench_res *r) {
    derived d = {0};
    d.prefill_tps = o->p / r->prefill_s;
    d.decode_tps = o->n / r->decode_s;
    d.ttft_ms = 1e3 * r->prefill_s;
    d.decode_gbs = r->bytes * d.decode_tps / 1e9;
    d.floor_tps = r->bw_gbs > 0 ? r->bw_gbs * 1e9 / r->bytes : 0.0;
    d.floor_frac = d.floor_tps > 0 ? d.decode_tps / d.floor_tps : 0.0;
    d.floor_best_frac = r->bw_best_gbs > 0 ? d.decode_tps * r->bytes / (r->bw_best_gbs * 1e9) : 0.0;
    d.serial_tps = r->serial_s > 0 ? o->p / r->serial_s : 0.0;
    d.rss_mb = r->peak_rss_kb / 1024.0;
    return d;
}

/* Whether the CPU's prefill matmuls run on AMX tiles (ops/cpu/amx.h). */
static bool uses_amx(const bench_opts *o) { return strcmp(o->device, "cpu") == 0 && dr_amx_enabled(); }

static void print_json(const bench_opts *o, const dr_model *m, const bench_res *r, const derived *d, int thr) {
    printf("{\"model\": \"%s\", \"synthetic\": %s, \"quant\": \"%s\", \"layers\": %d, \"params\": %llu, "
           "\"device\": \"%s\", \"threads\": %d, \"simd\": \"%s\", \"amx\": %s, \"prompt_tokens\": %d, \"gen_tokens\": %d, "
           "\"prefill_tok_s\": %.3f, \"ttft_ms\": %.1f, \"decode_tok_s\": %.3f, "
           "\"weight_bytes_per_token\": %.0f, \"bytes_per_token\": %.0f, \"decode_gb_s\": %.3f, "
           "\"measured_bandwidth_gb_s\": %.3f, \"measured_bandwidth_best_gb_s\": %.3f, \"floor_tok_s\": %.3f, "
           "\"floor_fraction\": %.4f, \"floor_fraction_best\": %.4f, "
           "\"peak_rss_mb\": %.1f, \"build_s\": %.2f, \"host_logits\": %s",
           o->dir ? o->dir : o->synthetic, o->dir ? "false" : "true", o->dir ? m->info.weight_dtype : o->quant,
           m->hp.n_layers, (unsigned long long)m->info.n_params, o->device, thr,
           dr_simd_level_name(dr_simd_get()->level), uses_amx(o) ? "true" : "false", o->p, o->n, d->prefill_tps,
           d->ttft_ms, d->decode_tps, r->weight_bytes, r->bytes, d->decode_gbs, r->bw_gbs, r->bw_best_gbs, d->floor_tps, d->floor_frac,
           d->floor_best_frac, d->rss_mb, r->build_s, o->host_logits ? "true" : "false");
    if (o->serial)
        printf(", \"serial_prefill_tok_s\": %.3f, \"prefill_speedup\": %.2f", d->serial_tps,
               d->prefill_tps / d->serial_tps);
    printf(", \"reps\": %d, \"prefill_tok_s_runs\": [", o->reps);
    for (int i = 0; i < o->reps; i++)
        printf("%s%.3f", i ? ", " : "", o->p / r->prefill_runs[i]);
    printf("], \"decode_tok_s_runs\": [");
    for (int i = 0; i < o->reps; i++)
        printf("%s%.3f", i ? ", " : "", o->n / r->decode_runs[i]);
    printf("]}\n");
}

static void print_table(const bench_opts *o, const dr_model *m, const bench_res *r, const derived *d, int thr) {
    printf("model      %s%s (%d layers, %s, %.3f B params)\n", o->dir ? "" : "synthetic ",
           o->dir ? o->dir : o->synthetic, m->hp.n_layers, o->dir ? m->info.weight_dtype : o->quant,
           (double)m->info.n_params / 1e9);
    printf("device     %s, %d threads, %s kernels%s\n", o->device, thr, dr_simd_level_name(dr_simd_get()->level),
           uses_amx(o) ? " + AMX tiles (prefill)" : "");
    printf("prefill    %d tokens: %.2f tok/s (time to first token %.0f ms)%s\n", o->p, d->prefill_tps, d->ttft_ms,
           o->reps > 1 ? ", median of the runs" : "");
    if (o->reps > 1) {
        printf("runs       prefill tok/s");
        for (int i = 0; i < o->reps; i++)
            printf(" %.2f", o->p / r->prefill_runs[i]);
        printf("; decode tok/s");
        for (int i = 0; i < o->reps; i++)
            printf(" %.2f", o->n / r->decode_runs[i]);
        printf("\n");
    }
    if (o->serial)
        printf("serial     %d tokens one at a time: %.2f tok/s -> prefill is %.1fx faster\n", o->p, d->serial_tps,
               d->prefill_tps / d->serial_tps);
    printf("decode     %d tokens: %.2f tok/s\n", o->n, d->decode_tps);
    printf("traffic    %.3f GB weights + %.3f GB state/KV per decoded token\n", r->weight_bytes / 1e9,
           (r->bytes - r->weight_bytes) / 1e9);
    if (is_cuda(o->device))
        printf("bandwidth  measured %.2f GB/s (GPU device-to-device copy, 1 GiB); decode moves %.2f GB/s\n",
               r->bw_gbs, d->decode_gbs);
    else
        printf("bandwidth  measured %.2f GB/s median, %.2f GB/s best of %d passes (%d threads, 1 GiB read); "
               "decode moves %.2f GB/s\n",
               r->bw_gbs, r->bw_best_gbs, BW_REPS, thr, d->decode_gbs);
    printf("floor      %.2f tok/s at the measured (median) bandwidth; decode reaches %.1f%% of it (%.1f%% of the "
           "best pass's)\n",
           d->floor_tps, 100.0 * d->floor_frac, 100.0 * d->floor_best_frac);
    printf("memory     peak RSS %.0f MB\n", d->rss_mb);
}

int dr_cli_bench(int argc, char **argv) {
    if (dr_cli_wants_help(argc, argv))
        return fputs(bench_help, stdout), 0;
    bench_opts o = {.quant = "bf16", .p = 512, .n = 128, .reps = 1, .seed = 1, .device = "cpu"};
    int rc = parse(argc, argv, &o);
    if (rc)
        return rc;
    dr_simd_use_bf16_dot(o.bf16_dot);
    dr_model *m = NULL;
    bench_res r = {0};
    if ((rc = open_model(&o, &m, &r.build_s)))
        return rc;
    rc = run_all(m, &o, &r);
    if (!rc) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        r.peak_rss_kb = ru.ru_maxrss; /* before the bandwidth buffer */
        r.weight_bytes = weight_bytes_per_token(m);
        r.bytes = r.weight_bytes + state_bytes_per_token(m, o.p + o.n / 2.0);
        const int thr = o.threads > 0 ? o.threads : dr_cpu_n_cores();
        fprintf(stderr, "bench: measuring memory bandwidth\n");
        if (is_cuda(o.device))
            r.bw_gbs = r.bw_best_gbs = gpu_bandwidth(o.device); /* one number (best of 5) */
        else
            r.bw_gbs = measure_bandwidth(thr, &r.bw_best_gbs);
#ifdef DR_WITH_CUDA
        if (is_cuda(o.device)) {
            long rec = 0, rep = 0, fail = 0;
            dr_cuda_graph_counts(&rec, &rep, &fail);
            fprintf(stderr, "bench: decode step graphs: %ld recorded, %ld replayed, %ld failed\n", rec, rep, fail);
        }
#endif
        derived d = derive(&o, &r);
        if (o.json)
            print_json(&o, m, &r, &d, thr);
        else
            print_table(&o, m, &r, &d, thr);
    }
    dr_model_free(m);
    return rc;
}
