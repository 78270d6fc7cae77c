/* cli/cmd_quantize.c - `deltarun quantize IN_DIR OUT_DIR --bits 4|8 ...`.
 *
 * Parses the flags, runs dr_quant_convert, prints one line per output
 * tensor with its quantization error (stdout) and a progress bar (stderr,
 * when it is a terminal). Exit status: 0 ok, 1 usage error, 2 library error
 * (the message names the file or tensor).
 */
#include "cli/cmd_quantize.h"

#include "cli/args.h"
#include "quant/convert.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

static const char *const g_help =
    "usage: deltarun quantize IN_DIR OUT_DIR --bits 4|8 [options]\n\n"
    "Writes an MLX-format (mlx-community style) affine-quantized copy of a\n"
    "bf16/f16/f32 Hugging Face Qwen3.5 / Qwen3.6 / Qwen3-Next directory:\n"
    "uint32-packed .weight with .scales/.biases per group (w = scale*q + bias),\n"
    "names as mlx-lm writes them (language_model.model.*, experts stacked under\n"
    "switch_mlp, norms with +1 folded, conv1d as [C, K, 1]), config.json with\n"
    "\"quantization\" and \"quantization_config\", plus generation_config.json and\n"
    "tokenizer files when present. Vision and MTP tensors are not written.\n\n"
    "Kept at higher precision: A_log, dt_bias, conv1d and all norms (unquantized);\n"
    "the MoE router (mlp.gate) and shared_expert_gate at 8 bits; a matrix whose\n"
    "row length is not a multiple of the group size stays unquantized.\n"
    "Refuses (writing nothing) when a quantized row collapses to all zeros\n"
    "although its source row is not.\n\n"
    "Options:\n"
    "  --bits N             4 or 8 (required)\n"
    "  --group-size N       32, 64 or 128 (default 64)\n"
    "  --embed-bits N       embedding: 4, 8, or 16 = unquantized (default: --bits)\n"
    "  --lm-head-bits N     untied lm_head: 4, 8, or 16 = unquantized (default: --bits)\n"
    "  --force              replace OUT_DIR if it exists and is not empty\n"
    "                       (only a directory of regular files is replaced)\n"
    "  -t, --threads N      quantization threads (default 0 = one per core)\n"
    "  -q, --quiet          no per-tensor lines\n"
    "  -h, --help           this text\n\n"
    "Output: one line per tensor: bits/group (or \"keep\"), name, shape, and for\n"
    "quantized tensors the max |w - dequant(w)| and the relative RMS error\n"
    "sqrt(sum err^2 / sum w^2). The result is written to OUT_DIR.partial-PID\n"
    "and renamed to OUT_DIR at the end.\n";

typedef struct {
    bool quiet, tty;
    int last_pct;
} ui;

static void clear_bar(ui *u) {
    if (u->tty && u->last_pct >= 0)
        fprintf(stderr, "\r%60s\r", "");
}

static void on_progress(void *user, uint64_t done, uint64_t total) {
    ui *u = user;
    int pct = total ? (int)(done * 100 / total) : 100;
    if (!u->tty || pct == u->last_pct)
        return;
    u->last_pct = pct;
    char bar[41];
    int fill = pct * 40 / 100;
    for (int i = 0; i < 40; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[40] = '\0';
    fprintf(stderr, "\rquantize [%s] %3d%%", bar, pct);
    fflush(stderr);
}

static void on_tensor(void *user, const dr_convert_report *r) {
    ui *u = user;
    if (u->quiet)
        return;
    char shape[96];
    size_t o = (size_t)snprintf(shape, sizeof shape, "[");
    for (int i = 0; i < r->ndim && o < sizeof shape; i++)
        o += (size_t)snprintf(shape + o, sizeof shape - o, i ? ",%lld" : "%lld", (long long)r->shape[i]);
    if (o < sizeof shape)
        snprintf(shape + o, sizeof shape - o, "]");
    clear_bar(u);
    if (r->bits)
        printf("[%d/%d] q%d g%-3d %-64s %-16s max|err| %.3e  rel-rms %.3e\n", r->index, r->count, r->bits,
               r->group_size, r->name, shape, r->stats.max_abs, r->stats.rel_rms);
    else
        printf("[%d/%d] keep %-4s %-64s %-16s %s\n", r->index, r->count, r->dtype, r->name, shape, r->note);
    fflush(stdout);
    u->last_pct = -1; /* redraw the bar */
}

/* Options -> *o; 0 ok, 1 usage error (printed), -1 help printed. */
static int parse(int argc, char **argv, dr_convert_opts *o, ui *u) {
    const char *dirs[2] = {NULL, NULL};
    int nd = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        long n;
        int *target = NULL;
        long lo = 0, hi = 0;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(g_help, stdout);
            return -1;
        } else if (!strcmp(a, "--force")) {
            o->force = true;
        } else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
            u->quiet = true;
        } else if (!strcmp(a, "--bits")) {
            target = &o->bits, lo = 1, hi = 64; /* exact values checked by dr_quant_convert */
        } else if (!strcmp(a, "--group-size")) {
            target = &o->group_size, lo = 1, hi = 4096;
        } else if (!strcmp(a, "--embed-bits")) {
            target = &o->embed_bits, lo = 1, hi = 64;
        } else if (!strcmp(a, "--lm-head-bits")) {
            target = &o->lm_head_bits, lo = 1, hi = 64;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            target = &o->n_threads, lo = 0, hi = 1024;
        } else if (a[0] == '-') {
            return dr_cli_err("quantize: unknown option \"%s\" (see deltarun quantize --help)", a);
        } else if (nd < 2) {
            dirs[nd++] = a;
        } else {
            return dr_cli_err("quantize: unexpected argument \"%s\" (IN_DIR and OUT_DIR already given)", a);
        }
        if (!target)
            continue;
        if (!(v = dr_cli_value(argc, argv, &i)))
            return 1;
        if (!dr_cli_int(v, lo, hi, &n))
            return dr_cli_err("quantize: %s: expected a number in %ld..%ld, got \"%s\"", a, lo, hi, v);
        *target = (int)n;
    }
    if (nd < 2)
        return dr_cli_err("quantize: IN_DIR and OUT_DIR are required (see deltarun quantize --help)");
    if (!o->bits)
        return dr_cli_err("quantize: --bits 4 or --bits 8 is required");
    o->in_dir = dirs[0];
    o->out_dir = dirs[1];
    return 0;
}

int dr_cli_quantize(int argc, char **argv) {
    ui u = {.tty = isatty(2) != 0, .last_pct = -1};
    dr_convert_opts o = {.group_size = 64, .on_tensor = on_tensor, .on_progress = on_progress, .user = &u};
    int rc = parse(argc, argv, &o, &u);
    if (rc)
        return rc < 0 ? 0 : rc;
    dr_convert_summary sum;
    dr_status st = dr_quant_convert(&o, &sum);
    clear_bar(&u);
    if (st != DR_OK) {
        fprintf(stderr, "deltarun: quantize: %s\n", dr_last_error());
        return st == DR_ERR_ARG ? 1 : 2;
    }
    printf("wrote %s: %d tensors (%d quantized, %d-bit, group %d), %d file(s), %.1f MB from %.1f MB; "
           "worst rel-rms %.3e (%s)\n",
           o.out_dir, sum.n_tensors, sum.n_quantized, o.bits, o.group_size, sum.n_shards, sum.bytes_out / 1e6,
           sum.bytes_in / 1e6, sum.worst_rel_rms, sum.n_quantized ? sum.worst_name : "-");
    return 0;
}
