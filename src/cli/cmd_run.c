/* cli/cmd_run.c - `deltarun run`: the Qwen chat format, streamed replies.
 *
 * One-shot (-p) renders [system,] user with the generation prompt and streams
 * the reply until end of turn. Without -p it is an interactive chat that keeps
 * the session between turns: each turn appends only its own tokens (closing
 * the previous reply with <|im_end|>), so the history is never re-evaluated.
 * Ctrl-C stops the current reply; Ctrl-D quits.
 */
#include "cli/cmd_run.h"

#include "cli/args.h"
#include "deltarun_text.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static volatile sig_atomic_t g_interrupted;

static void on_sigint(int sig) {
    (void)sig;
    g_interrupted = 1;
}

typedef struct {
    const char *dir, *prompt, *system;
    bool no_think, raw;
    long n_predict; /* < 0: until end of turn or a full context */
    dr_sampler_params smp;
    dr_session_params sp;
    dr_model_params mp;
} run_opts;

typedef struct {
    dr_model *m;
    dr_session *s;
    dr_tokenizer *tok;
    dr_sampler *smp;
    dr_stream_decoder *sd;
    float *logits;
    int n_vocab, n_tok;
    bool greedy;  /* plain argmax: picked by the backend, logits stay where they are */
    int32_t next; /* with greedy: the token the last evaluation picked */
} runner;

static const char *const run_help =
    "usage: deltarun run MODEL_DIR [-p PROMPT] [options]\n"
    "\n"
    "Chat with a model. With -p, render the prompt in the model's chat format\n"
    "(Qwen ChatML), stream the reply to stdout and stop at the end of the turn.\n"
    "Without -p, start an interactive chat that keeps the conversation state\n"
    "between turns: Ctrl-C stops the current reply, Ctrl-D quits.\n"
    "\n"
    "  -p, --prompt TEXT     one-shot prompt (the user message)\n"
    "  --system TEXT         system message\n"
    "  --no-think            thinking off: the prompt closes an empty <think> block\n"
    "  --raw                 no chat format: the text is continued as is\n"
    "  -n N                  stop after N generated tokens (default: end of turn)\n"
    "  --ctx N               context capacity in tokens (default 4096)\n"
    "  --device DEV          cpu (default), cuda or cuda:N\n"
    "  -t, --threads N       CPU threads (default 0 = one per core)\n"
    "\n"
    "Sampling (default: --temp 0.7 --top-k 20 --top-p 0.95, seed from the clock):\n"
    "  --greedy, --temp T, --top-k K, --top-p P, --min-p M, --repeat-penalty R,\n"
    "  --repeat-last-n N, --seed S   (as in `deltarun generate --help`)\n";

/* ---- options ---- */

static int parse(int argc, char **argv, run_opts *o) {
    o->smp = dr_sampler_default_params();
    o->smp.temperature = 0.7f;
    o->smp.top_k = 20;
    o->smp.top_p = 0.95f;
    o->smp.seed = (uint64_t)time(NULL);
    o->sp = dr_session_default_params();
    o->mp = dr_model_default_params();
    o->n_predict = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        long n;
        int r = dr_cli_sampling_flag(argc, argv, &i, &o->smp);
        if (r < 0)
            return 1;
        if (r > 0)
            continue;
        if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) {
            if (!(o->prompt = dr_cli_value(argc, argv, &i)))
                return 1;
        } else if (!strcmp(a, "--system")) {
            if (!(o->system = dr_cli_value(argc, argv, &i)))
                return 1;
        } else if (!strcmp(a, "--no-think")) {
            o->no_think = true;
        } else if (!strcmp(a, "--raw")) {
            o->raw = true;
        } else if (!strcmp(a, "-n") || !strcmp(a, "--ctx") || !strcmp(a, "-t") || !strcmp(a, "--threads")) {
            if (!(v = dr_cli_value(argc, argv, &i)))
                return 1;
            if (!dr_cli_int(v, strcmp(a, "-n") ? 0 : -1, 1 << 24, &n))
                return dr_cli_err("%s: expected a count, got \"%s\"", a, v);
            if (!strcmp(a, "-n"))
                o->n_predict = n;
            else if (!strcmp(a, "--ctx"))
                o->sp.n_ctx = n > 0 ? (int)n : 1;
            else
                o->mp.n_threads = (int)n;
        } else if (!strcmp(a, "--device")) {
            if (!(o->mp.device = dr_cli_value(argc, argv, &i)))
                return 1;
        } else if (a[0] != '-' && !o->dir) {
            o->dir = a;
        } else {
            return dr_cli_err("run: unexpected argument \"%s\" (see --help)", a);
        }
    }
    if (!o->dir)
        return dr_cli_err("run: missing MODEL_DIR (see --help)");
    if (o->raw && o->system)
        return dr_cli_err("run: --system needs the chat format (drop --raw)");
    return 0;
}

/* ---- the runner ---- */

static void runner_free(runner *r) {
    free(r->logits);
    dr_stream_decoder_free(r->sd);
    dr_sampler_free(r->smp);
    dr_tokenizer_free(r->tok);
    dr_session_free(r->s);
    dr_model_free(r->m);
}

static int runner_open(runner *r, run_opts *o) {
    memset(r, 0, sizeof *r);
    if (dr_model_load_ex(o->dir, &o->mp, &r->m) != DR_OK || dr_tokenizer_load(o->dir, &r->tok) != DR_OK)
        return dr_cli_lib_err();
    r->n_vocab = dr_model_info_get(r->m)->n_vocab;
    r->n_tok = dr_tokenizer_n_vocab(r->tok) < r->n_vocab ? dr_tokenizer_n_vocab(r->tok) : r->n_vocab;
    r->greedy = !(o->smp.temperature > 0.0f) && o->smp.repeat_penalty == 1.0f;
    if (dr_session_new(r->m, &o->sp, &r->s) != DR_OK || dr_sampler_new(&o->smp, r->n_vocab, &r->smp) != DR_OK ||
        dr_stream_decoder_new(r->tok, true, &r->sd) != DR_OK)
        return dr_cli_lib_err();
    r->logits = malloc((size_t)r->n_vocab * sizeof *r->logits);
    if (!r->logits)
        return dr_cli_err("out of memory");
    return 0;
}

/* Evaluate n ids on top of the session: the logits of the last one kept,
 * or with greedy sampling only the token they pick (padding rows past the
 * tokenizer's vocabulary have no text and are never picked). */
static int eval_ids(runner *r, const int32_t *ids, int n) {
    dr_status st = r->greedy ? dr_session_eval_greedy(r->s, ids, n, r->n_tok, &r->next)
                             : dr_session_eval(r->s, ids, n, DR_LOGITS_LAST, r->logits);
    return st == DR_OK ? 0 : dr_cli_lib_err();
}

static int feed(runner *r, const dr_tokens *t) {
    if (t->n == 0)
        return 0;
    int rc = eval_ids(r, t->ids, (int)t->n);
    if (rc)
        return rc;
    for (size_t i = 0; i < t->n; i++)
        dr_sampler_accept(r->smp, t->ids[i]);
    return 0;
}

static bool is_end(const runner *r, int32_t t) {
    if (dr_tokenizer_is_eog(r->tok, t))
        return true;
    const dr_model_info *in = dr_model_info_get(r->m);
    for (int i = 0; i < in->n_eos; i++)
        if (in->eos_ids[i] == t)
            return true;
    return false;
}

static void print_piece(const char *p, size_t n) {
    fwrite(p, 1, n, stdout);
    fflush(stdout);
}

/* Sample and stream until end of turn, n_predict tokens, Ctrl-C or a full
 * context. Returns 0, or the exit status of an error. */
static int reply(runner *r, long n_predict, int n_ctx) {
    g_interrupted = 0;
    for (long k = 0; n_predict < 0 || k < n_predict; k++) {
        int32_t t = r->next;
        if (!r->greedy) {
            for (int i = r->n_tok; i < r->n_vocab; i++) /* padding rows have no text */
                r->logits[i] = -INFINITY;
            t = dr_sampler_sample(r->smp, r->logits);
        }
        if (is_end(r, t) || g_interrupted)
            break;
        const char *p;
        size_t n;
        if (dr_stream_decoder_push(r->sd, t, &p, &n) != DR_OK)
            return dr_cli_lib_err();
        print_piece(p, n);
        if (dr_session_pos(r->s) >= n_ctx) {
            fprintf(stderr, "\n[context full: %d tokens]", n_ctx);
            break;
        }
        dr_sampler_accept(r->smp, t);
        int rc = eval_ids(r, &t, 1);
        if (rc)
            return rc;
    }
    const char *p;
    size_t n;
    dr_stream_decoder_finish(r->sd, &p, &n);
    print_piece(p, n);
    if (g_interrupted)
        fprintf(stderr, " [stopped]");
    printf("\n");
    fflush(stdout);
    return 0;
}

/* ---- prompts ---- */

/* Tokens of one chat turn: [system,] user, then the assistant opening. */
static int encode_turn(runner *r, const run_opts *o, const char *system, const char *user, dr_tokens *out) {
    dr_chat_message msgs[2];
    size_t n = 0;
    if (system)
        msgs[n++] = (dr_chat_message){.role = "system", .content = system};
    msgs[n++] = (dr_chat_message){.role = "user", .content = user};
    dr_chat_params cp = dr_chat_default_params();
    cp.add_generation_prompt = true;
    cp.enable_thinking = !o->no_think;
    dr_chat_prompt prompt = {0};
    int rc = 0;
    if (dr_chat_render(dr_tokenizer_chat_renderer(r->tok), msgs, n, &cp, &prompt) != DR_OK ||
        dr_chat_encode(r->tok, &prompt, out) != DR_OK)
        rc = dr_cli_lib_err();
    dr_chat_prompt_free(&prompt);
    return rc;
}

/* Plain text (raw mode): special-token strings in it stay text. */
static int encode_raw(runner *r, const char *text, dr_tokens *out) {
    return dr_tokenize(r->tok, text, strlen(text), false, out) == DR_OK ? 0 : dr_cli_lib_err();
}

/* Tokens that close an assistant turn before the next user turn. The
 * built-in renderers are ChatML (the Qwen family). */
static int encode_close(runner *r, dr_tokens *out) {
    static const char close[] = "<|im_end|>\n";
    return dr_tokenize(r->tok, close, sizeof close - 1, true, out) == DR_OK ? 0 : dr_cli_lib_err();
}

/* Evaluate a prompt's tokens, refusing what does not fit the context. */
static int feed_checked(runner *r, const dr_tokens *t, int n_ctx) {
    if (dr_session_pos(r->s) + (long)t->n >= n_ctx)
        return dr_cli_err("the prompt (%zu tokens) does not fit the context (%d tokens, %d used); use --ctx",
                          t->n, n_ctx, dr_session_pos(r->s));
    return feed(r, t);
}

/* ---- modes ---- */

static int one_shot(runner *r, const run_opts *o) {
    dr_tokens t = {0};
    int rc = o->raw ? encode_raw(r, o->prompt, &t) : encode_turn(r, o, o->system, o->prompt, &t);
    if (!rc && t.n == 0)
        rc = dr_cli_err("run: the prompt gives no tokens");
    if (!rc)
        rc = feed_checked(r, &t, o->sp.n_ctx);
    if (!rc)
        rc = reply(r, o->n_predict, o->sp.n_ctx);
    dr_tokens_free(&t);
    return rc;
}

static int interactive(runner *r, const run_opts *o) {
    struct sigaction sa = {0};
    sa.sa_handler = on_sigint; /* no SA_RESTART: Ctrl-C interrupts the line read */
    sigaction(SIGINT, &sa, NULL);
    fprintf(stderr, "deltarun chat (%s). Ctrl-C stops a reply, Ctrl-D quits.\n", o->dir);
    char *line = NULL;
    size_t cap = 0;
    int rc = 0, turn = 0;
    while (!rc) {
        printf("> ");
        fflush(stdout);
        g_interrupted = 0;
        ssize_t n = getline(&line, &cap, stdin);
        if (n < 0) {
            if (errno == EINTR && g_interrupted) { /* Ctrl-C at the prompt: new line */
                clearerr(stdin);
                printf("\n");
                continue;
            }
            printf("\n");
            break; /* Ctrl-D */
        }
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        if (n == 0)
            continue;
        dr_tokens t = {0};
        if (o->raw)
            rc = encode_raw(r, line, &t);
        else {
            if (turn > 0)
                rc = encode_close(r, &t);
            if (!rc)
                rc = encode_turn(r, o, turn == 0 ? o->system : NULL, line, &t);
        }
        if (!rc && feed_checked(r, &t, o->sp.n_ctx) != 0) {
            dr_tokens_free(&t);
            break; /* context full: message printed */
        }
        dr_tokens_free(&t);
        if (!rc)
            rc = reply(r, o->n_predict, o->sp.n_ctx);
        turn++;
    }
    free(line);
    return rc;
}

int dr_cli_run(int argc, char **argv) {
    if (dr_cli_wants_help(argc, argv))
        return fputs(run_help, stdout), 0;
    run_opts o = {0};
    int rc = parse(argc, argv, &o);
    if (rc)
        return rc;
    runner r;
    rc = runner_open(&r, &o);
    if (!rc)
        rc = o.prompt ? one_shot(&r, &o) : interactive(&r, &o);
    runner_free(&r);
    return rc;
}
