/* cli/cmd_model.c - `deltarun logits`, `deltarun generate`, `deltarun info`.
 *
 * Each command parses its flags strictly (unknown flag or bad value: message
 * and exit status 1), loads the model, and reports library errors with
 * dr_last_error() (exit status 2).
 */
#include "cli/cmd_model.h"

#include "cli/args.h"
#include "cli/prompt.h"
#include "format/safetensors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Shared options of the model commands. */
typedef struct {
    const char *dir;
    int32_t *ids;
    int n_ids;
    const char *prompt; /* --prompt TEXT, tokenized at open */
    dr_session_params sp;
    dr_model_params mp;
} model_opts;

/* Handles --device and -t/--threads. 1 consumed, 0 not ours, -1 error. */
static int backend_flag(int argc, char **argv, int *i, dr_model_params *mp) {
    const char *a = argv[*i], *v;
    long n;
    if (!strcmp(a, "--device")) {
        if (!(v = dr_cli_value(argc, argv, i)))
            return -1;
        mp->device = v; /* validated by dr_model_load_ex */
        return 1;
    }
    if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
        if (!(v = dr_cli_value(argc, argv, i)))
            return -1;
        if (!dr_cli_int(v, 0, 1024, &n))
            return dr_cli_err("%s: expected a thread count (0 = one per core), got \"%s\"", a, v), -1;
        mp->n_threads = (int)n;
        return 1;
    }
    return 0;
}

#define BACKEND_HELP                                                                  \
    "  --device DEV          cpu (default), cuda or cuda:N\n"                         \
    "  -t, --threads N       CPU threads (default 0 = one per core)\n"

/* Handles MODEL_DIR, --ids, --ctx, --state-dtype, --device, --threads.
 * 1 consumed, 0 not ours, -1 error. */
static int model_flag(int argc, char **argv, int *i, model_opts *o) {
    const char *a = argv[*i], *v;
    long n;
    int r = backend_flag(argc, argv, i, &o->mp);
    if (r)
        return r;
    if (a[0] != '-') {
        if (o->dir)
            return dr_cli_err("unexpected argument \"%s\" (model directory already given)", a), -1;
        o->dir = a;
        return 1;
    }
    if (!strcmp(a, "--ids")) {
        if (!(v = dr_cli_value(argc, argv, i)))
            return -1;
        free(o->ids);
        o->ids = NULL;
        return dr_cli_ids(v, &o->ids, &o->n_ids) ? 1 : -1;
    }
    if (!strcmp(a, "--prompt")) {
        if (!(o->prompt = dr_cli_value(argc, argv, i)))
            return -1;
        return 1;
    }
    if (!strcmp(a, "--ctx")) {
        if (!(v = dr_cli_value(argc, argv, i)))
            return -1;
        if (!dr_cli_int(v, 1, 1 << 24, &n))
            return dr_cli_err("--ctx: expected a token count, got \"%s\"", v), -1;
        o->sp.n_ctx = (int)n;
        return 1;
    }
    if (!strcmp(a, "--state-dtype")) {
        if (!(v = dr_cli_value(argc, argv, i)))
            return -1;
        if (!strcmp(v, "f32"))
            o->sp.state_dtype = DR_STATE_F32;
        else if (!strcmp(v, "bf16"))
            o->sp.state_dtype = DR_STATE_BF16;
        else
            return dr_cli_err("--state-dtype: expected f32 or bf16, got \"%s\"", v), -1;
        return 1;
    }
    return 0;
}

/* Load the model and a session sized for the prompt plus `extra` tokens. */
static int open_model(model_opts *o, int extra, dr_model **m, dr_session **s) {
    if (!o->dir)
        return dr_cli_err("missing MODEL_DIR (see --help)");
    if (o->ids && o->prompt)
        return dr_cli_err("give either --ids or --prompt, not both");
    if (!o->ids && !o->prompt)
        return dr_cli_err("missing --ids or --prompt (see --help)");
    if (o->prompt) {
        int rc = dr_cli_prompt_ids(o->dir, o->prompt, &o->ids, &o->n_ids);
        if (rc)
            return rc;
    }
    if (dr_model_load_ex(o->dir, &o->mp, m) != DR_OK)
        return dr_cli_lib_err();
    long need = (long)o->n_ids + extra;
    if (o->sp.n_ctx < need)
        o->sp.n_ctx = need > (1 << 24) ? (1 << 24) : (int)need;
    if (dr_session_new(*m, &o->sp, s) != DR_OK)
        return dr_cli_lib_err();
    return 0;
}

/* ===================== logits ===================== */

static const char *const logits_help =
    "usage: deltarun logits MODEL_DIR (--ids 3,17,42 | --prompt TEXT) --out FILE [options]\n"
    "\n"
    "Evaluate token ids and write the logits of every position to FILE, a\n"
    "safetensors file with one F32 tensor \"logits\" of shape [T, V].\n"
    "\n"
    "  --ids LIST            comma-separated token ids\n"
    "  --prompt TEXT         text, tokenized with MODEL_DIR's tokenizer.json (special\n"
    "                        tokens like <|im_start|> in it are recognised)\n"
    "  --out FILE            output safetensors file (required)\n"
    "  --split N             evaluate the first N tokens as one block, then the\n"
    "                        rest one token at a time (default: all as one block)\n"
    "  --state-dtype f32|bf16  recurrent-state storage; bf16 is a diagnostic that\n"
    "                        reproduces the bf16-state bug (default f32)\n"
    "  --ctx N               context capacity (default: the prompt length)\n" BACKEND_HELP;

int dr_cli_logits(int argc, char **argv) {
    if (dr_cli_wants_help(argc, argv))
        return fputs(logits_help, stdout), 0;
    model_opts o = {.sp = dr_session_default_params(), .mp = dr_model_default_params()};
    o.sp.n_ctx = 1;
    const char *out = NULL;
    long split = -1;
    int rc = 0;
    for (int i = 1; i < argc && !rc; i++) {
        int r = model_flag(argc, argv, &i, &o);
        if (r < 0)
            rc = 1;
        else if (r > 0)
            continue;
        else if (!strcmp(argv[i], "--out"))
            rc = (out = dr_cli_value(argc, argv, &i)) ? 0 : 1;
        else if (!strcmp(argv[i], "--split")) {
            const char *v = dr_cli_value(argc, argv, &i);
            if (!v || !dr_cli_int(v, 1, 1 << 24, &split))
                rc = dr_cli_err("--split: expected a positive token count");
        } else
            rc = dr_cli_err("logits: unknown option \"%s\" (see --help)", argv[i]);
    }
    if (!rc && !out)
        rc = dr_cli_err("missing --out FILE (see --help)");
    dr_model *m = NULL;
    dr_session *s = NULL;
    float *logits = NULL;
    if (!rc)
        rc = open_model(&o, 0, &m, &s);
    if (!rc && split > o.n_ids)
        rc = dr_cli_err("--split %ld is larger than the %d ids", split, o.n_ids);
    if (!rc) {
        const int T = o.n_ids, V = dr_model_info_get(m)->n_vocab;
        const int first = split > 0 ? (int)split : T;
        logits = malloc((size_t)T * V * sizeof *logits);
        if (!logits)
            rc = dr_cli_err("out of memory for %d x %d logits", T, V);
        if (!rc && dr_session_eval(s, o.ids, first, DR_LOGITS_ALL, logits) != DR_OK)
            rc = dr_cli_lib_err();
        for (int t = first; t < T && !rc; t++)
            if (dr_session_eval(s, o.ids + t, 1, DR_LOGITS_LAST, logits + (size_t)t * V) != DR_OK)
                rc = dr_cli_lib_err();
        const char *name = "logits";
        int nd = 2;
        int64_t shape[1][DR_ST_MAX_DIMS] = {{T, V}};
        const float *data = logits;
        if (!rc && dr_st_write_f32(out, 1, &name, &nd, shape, &data) != DR_OK)
            rc = dr_cli_lib_err();
    }
    free(logits);
    free(o.ids);
    dr_session_free(s);
    dr_model_free(m);
    return rc;
}

/* ===================== generate ===================== */

static const char *const generate_help_head =
    "usage: deltarun generate MODEL_DIR (--ids 3,17,42 | --prompt TEXT) [-n N] [options]\n"
    "\n"
    "Evaluate the prompt and generate N more tokens, printing their ids\n"
    "comma-separated as they are produced (or their text with --text). Stops\n"
    "early at an end-of-sequence id (from generation_config.json) unless\n"
    "--ignore-eos is given. No chat format is applied: see `deltarun run`.\n"
    "\n"
    "  --ids LIST            comma-separated prompt token ids\n"
    "  --prompt TEXT         prompt text, tokenized with MODEL_DIR's tokenizer.json\n"
    "                        (special tokens like <|im_start|> in it are recognised)\n"
    "  --text                print the generated text instead of ids\n"
    "  -n N                  tokens to generate (default 32)\n"
    "  --ignore-eos          do not stop at end-of-sequence ids\n"
    "  --state-dtype f32|bf16  recurrent-state storage (bf16: diagnostic only)\n"
    "  --ctx N               context capacity (default: prompt + N)\n" BACKEND_HELP;

static bool is_eos(const dr_model_info *in, int32_t t) {
    for (int i = 0; i < in->n_eos; i++)
        if (in->eos_ids[i] == t)
            return true;
    return false;
}

/* Prints generated tokens as ids, or as text through a streaming decoder
 * that holds back incomplete UTF-8 sequences. */
typedef struct {
    dr_tokenizer *tok;     /* NULL: print ids */
    dr_stream_decoder *sd;
    long n;                /* tokens printed */
} emitter;

static int emitter_open(emitter *e, bool text, const char *dir) {
    memset(e, 0, sizeof *e);
    if (!text)
        return 0;
    if (dr_tokenizer_load(dir, &e->tok) != DR_OK || dr_stream_decoder_new(e->tok, true, &e->sd) != DR_OK)
        return dr_cli_lib_err();
    return 0;
}

/* The embedding is padded past the tokenizer's vocabulary (248320 rows for
 * 248077 tokens in Qwen3.5): rows without a token can't be printed as text,
 * so they are never sampled when printing text. */
static void mask_untokenizable(const emitter *e, float *logits, int n_vocab) {
    if (!e->tok)
        return;
    for (int i = dr_tokenizer_n_vocab(e->tok); i < n_vocab; i++)
        logits[i] = -INFINITY;
}

static int emit(emitter *e, int32_t t) {
    if (!e->tok) {
        printf(e->n ? ",%d" : "%d", (int)t);
    } else {
        const char *p;
        size_t n;
        if (dr_stream_decoder_push(e->sd, t, &p, &n) != DR_OK)
            return dr_cli_lib_err();
        fwrite(p, 1, n, stdout);
    }
    e->n++;
    fflush(stdout);
    return 0;
}

static void emitter_close(emitter *e) {
    if (e->sd) {
        const char *p;
        size_t n;
        dr_stream_decoder_finish(e->sd, &p, &n);
        fwrite(p, 1, n, stdout);
    }
    if (e->n)
        printf("\n");
    dr_stream_decoder_free(e->sd);
    dr_tokenizer_free(e->tok);
}

int dr_cli_generate(int argc, char **argv) {
    if (dr_cli_wants_help(argc, argv))
        return printf("%s\n%s", generate_help_head, dr_cli_sampling_help), 0;
    model_opts o = {.sp = dr_session_default_params(), .mp = dr_model_default_params()};
    o.sp.n_ctx = 1;
    dr_sampler_params smp = dr_sampler_default_params();
    long n_gen = 32;
    bool ignore_eos = false, as_text = false;
    int rc = 0;
    for (int i = 1; i < argc && !rc; i++) {
        int r = model_flag(argc, argv, &i, &o);
        if (r == 0)
            r = dr_cli_sampling_flag(argc, argv, &i, &smp);
        if (r < 0)
            rc = 1;
        else if (r > 0)
            continue;
        else if (!strcmp(argv[i], "-n")) {
            const char *v = dr_cli_value(argc, argv, &i);
            if (!v || !dr_cli_int(v, 0, 1 << 24, &n_gen))
                rc = dr_cli_err("-n: expected a token count");
        } else if (!strcmp(argv[i], "--ignore-eos"))
            ignore_eos = true;
        else if (!strcmp(argv[i], "--text"))
            as_text = true;
        else
            rc = dr_cli_err("generate: unknown option \"%s\" (see --help)", argv[i]);
    }
    dr_model *m = NULL;
    dr_session *s = NULL;
    dr_sampler *sampler = NULL;
    float *logits = NULL;
    emitter em = {0};
    if (!rc)
        rc = open_model(&o, (int)n_gen, &m, &s);
    if (!rc && dr_sampler_new(&smp, dr_model_info_get(m)->n_vocab, &sampler) != DR_OK)
        rc = dr_cli_lib_err();
    if (!rc)
        rc = emitter_open(&em, as_text, o.dir);
    if (!rc) {
        const dr_model_info *in = dr_model_info_get(m);
        logits = malloc((size_t)in->n_vocab * sizeof *logits);
        if (!logits)
            rc = dr_cli_err("out of memory");
        for (int i = 0; i < o.n_ids && !rc; i++)
            dr_sampler_accept(sampler, o.ids[i]);
        if (!rc && dr_session_eval(s, o.ids, o.n_ids, DR_LOGITS_LAST, logits) != DR_OK)
            rc = dr_cli_lib_err();
        for (long k = 0; k < n_gen && !rc; k++) {
            mask_untokenizable(&em, logits, in->n_vocab);
            int32_t t = dr_sampler_sample(sampler, logits);
            dr_sampler_accept(sampler, t);
            rc = emit(&em, t);
            if (rc || (!ignore_eos && is_eos(in, t)) || k + 1 == n_gen)
                break;
            if (dr_session_eval(s, &t, 1, DR_LOGITS_LAST, logits) != DR_OK)
                rc = dr_cli_lib_err();
        }
    }
    emitter_close(&em);
    free(logits);
    free(o.ids);
    dr_sampler_free(sampler);
    dr_session_free(s);
    dr_model_free(m);
    return rc;
}

/* ===================== info ===================== */

static const char *const info_help =
    "usage: deltarun info MODEL_DIR [--device DEV] [-t N]\n"
    "\n"
    "Load a model directory and print its architecture summary.\n" BACKEND_HELP;

static void print_info(const dr_model_info *in) {
    printf("architecture      %s\n", in->arch_name);
    printf("parameters        %llu (%.3f B)\n", (unsigned long long)in->n_params, in->n_params / 1e9);
    printf("weights dtype     %s\n", in->weight_dtype);
    printf("layers            %d (%d Gated DeltaNet, %d full attention)\n", in->n_layers, in->n_gdn_layers,
           in->n_attn_layers);
    printf("layer kinds       %s   (G = Gated DeltaNet, A = attention)\n", in->layer_kinds);
    printf("hidden size       %d\n", in->d_model);
    printf("vocabulary        %d\n", in->n_vocab);
    printf("attention         %d query heads, %d kv heads, head dim %d, rotary dims %d, theta %g\n",
           in->n_heads, in->n_kv_heads, in->d_head, in->d_rot, in->rope_theta);
    printf("gated deltanet    %d key heads, %d value heads, dk %d, dv %d, conv %d\n", in->n_k_heads,
           in->n_v_heads, in->d_k, in->d_v, in->d_conv);
    if (in->d_ff)
        printf("dense mlp         %d\n", in->d_ff);
    if (in->n_moe_layers)
        printf("moe               %d layers, %d experts, top-%d, expert width %d, shared width %d\n",
               in->n_moe_layers, in->n_experts, in->n_experts_used, in->d_ff_expert, in->d_ff_shared);
    printf("tied embeddings   %s\n", in->tied_embeddings ? "yes" : "no");
    printf("eos ids          ");
    for (int i = 0; i < in->n_eos; i++)
        printf(" %d", in->eos_ids[i]);
    printf("\n");
}

int dr_cli_info(int argc, char **argv) {
    if (dr_cli_wants_help(argc, argv))
        return fputs(info_help, stdout), 0;
    dr_model_params mp = dr_model_default_params();
    const char *dir = NULL;
    for (int i = 1; i < argc; i++) {
        int r = backend_flag(argc, argv, &i, &mp);
        if (r < 0)
            return 1;
        if (r > 0)
            continue;
        if (argv[i][0] == '-' || dir)
            return dr_cli_err("info: unexpected argument \"%s\" (see --help)", argv[i]);
        dir = argv[i];
    }
    if (!dir)
        return dr_cli_err("info: missing MODEL_DIR (see --help)");
    dr_model *m;
    if (dr_model_load_ex(dir, &mp, &m) != DR_OK)
        return dr_cli_lib_err();
    print_info(dr_model_info_get(m));
    dr_model_free(m);
    return 0;
}
