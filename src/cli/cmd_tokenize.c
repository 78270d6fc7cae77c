/* cli/cmd_tokenize.c - `deltarun tokenize` (text -> ids as JSON, and the
 * single-thread tokenizer benchmark) and `deltarun detokenize` (ids ->
 * text). Thin wrappers over include/deltarun_text.h.
 */
#include "cli/cmd_tokenize.h"

#include "deltarun_text.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static const char TOKENIZE_HELP[] =
    "usage: deltarun tokenize MODEL_DIR|tokenizer.json (--text TEXT | --file FILE) [--no-special]\n"
    "       deltarun tokenize MODEL_DIR|tokenizer.json --bench FILE [--runs N]\n"
    "\n"
    "Encode text with the model's tokenizer.json and print the token ids as a JSON\n"
    "array on one line. No BOS/EOS is added.\n"
    "\n"
    "  --text TEXT    the text to encode (UTF-8)\n"
    "  --file FILE    encode the contents of FILE ('-' reads standard input)\n"
    "  --no-special   encode special tokens such as <|im_end|> as plain text\n"
    "                 (non-special added tokens like <think> still match)\n"
    "  --bench FILE   time loading, encoding FILE and decoding the result on one\n"
    "                 thread; prints load ms, MB/s and tokens/s (the first encode\n"
    "                 runs with an empty BPE cache and is reported separately)\n"
    "  --runs N       repetitions for --bench (default 5)\n"
    "  -h, --help     show this help\n";

static const char DETOKENIZE_HELP[] =
    "usage: deltarun detokenize MODEL_DIR|tokenizer.json --ids IDS [--skip-special]\n"
    "\n"
    "Decode token ids and print the text exactly, with no newline added.\n"
    "Bytes that do not form valid UTF-8 are printed as U+FFFD.\n"
    "\n"
    "  --ids IDS        ids separated by commas and/or spaces; the JSON array\n"
    "                   printed by `deltarun tokenize` is accepted as is\n"
    "  --skip-special   leave out special tokens (<|im_start|>, <|im_end|>, ...)\n"
    "  -h, --help       show this help\n";

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Read a whole file ("-": stdin). Returns NULL (message printed) on error. */
static char *read_all(const char *cmd, const char *path, size_t *len) {
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "deltarun %s: %s: %s\n", cmd, path, strerror(errno));
        return NULL;
    }
    size_t n = 0, cap = 1 << 16;
    char *b = malloc(cap);
    while (b) {
        if (n == cap) {
            char *nb = realloc(b, cap * 2);
            if (!nb) {
                free(b);
                b = NULL;
                break;
            }
            b = nb;
            cap *= 2;
        }
        size_t r = fread(b + n, 1, cap - n, f);
        n += r;
        if (r == 0)
            break;
    }
    bool err = !b || ferror(f);
    if (f != stdin)
        fclose(f);
    if (err) {
        fprintf(stderr, "deltarun %s: %s: read failed\n", cmd, path);
        free(b);
        return NULL;
    }
    *len = n;
    return b;
}

static bool is_flag(const char *a, const char *name) { return strcmp(a, name) == 0; }

/* The value following option argv[*i], or NULL (message printed). */
static const char *opt_value(const char *cmd, int argc, char **argv, int *i) {
    if (*i + 1 >= argc) {
        fprintf(stderr, "deltarun %s: %s needs a value (see --help)\n", cmd, argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

/* Anything but a known option: the first one is MODEL_DIR (or
 * tokenizer.json); an unknown option or a second positional is a usage error
 * (message printed, false). */
static bool positional(const char *cmd, const char *a, const char **model) {
    if (a[0] == '-' && a[1]) {
        fprintf(stderr, "deltarun %s: unknown option %s (see --help)\n", cmd, a);
        return false;
    }
    if (*model) {
        fprintf(stderr, "deltarun %s: unexpected argument \"%s\" (see --help)\n", cmd, a);
        return false;
    }
    *model = a;
    return true;
}

static dr_tokenizer *load(const char *cmd, const char *path) {
    dr_tokenizer *tok;
    if (dr_tokenizer_load(path, &tok) != DR_OK) {
        fprintf(stderr, "deltarun %s: %s\n", cmd, dr_last_error());
        return NULL;
    }
    return tok;
}

static int bench(const char *model, const char *file, int runs) {
    const char *cmd = "tokenize";
    size_t len;
    char *text = read_all(cmd, file, &len);
    if (!text)
        return 1;
    struct stat sb;
    const char *tj = model;
    char buf[4096];
    if (stat(model, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        snprintf(buf, sizeof buf, "%s/tokenizer.json", model);
        tj = buf;
    }
    double t0 = now_s();
    dr_tokenizer *tok = load(cmd, model);
    double t_load = now_s() - t0;
    if (!tok) {
        free(text);
        return 1;
    }
    long long tj_size = stat(tj, &sb) == 0 ? (long long)sb.st_size : -1;
    printf("tokenizer  %s (%.1f MB)\n", tj, tj_size / 1e6);
    printf("load       %.1f ms (tokenizer.json and sidecar files)\n", t_load * 1e3);
    printf("input      %s: %zu bytes\n", file, len);

    dr_tokens ids = {0};
    double cold = 0, best_enc = 1e30, best_dec = 1e30;
    size_t out_len = 0;
    int rc = 0;
    for (int r = 0; r < runs && rc == 0; r++) {
        ids.n = 0;
        t0 = now_s();
        if (dr_tokenize(tok, text, len, true, &ids) != DR_OK) {
            fprintf(stderr, "deltarun %s: %s\n", cmd, dr_last_error());
            rc = 1;
            break;
        }
        double t = now_s() - t0;
        if (r == 0)
            cold = t;
        if (t < best_enc)
            best_enc = t;
    }
    for (int r = 0; r < runs && rc == 0; r++) {
        char *out;
        t0 = now_s();
        if (dr_detokenize(tok, ids.ids, ids.n, false, &out, &out_len) != DR_OK) {
            fprintf(stderr, "deltarun %s: %s\n", cmd, dr_last_error());
            rc = 1;
            break;
        }
        double t = now_s() - t0;
        if (t < best_dec)
            best_dec = t;
        free(out);
    }
    if (rc == 0) {
        printf("tokens     %zu (%.2f bytes/token)\n", ids.n, ids.n ? (double)len / ids.n : 0.0);
        printf("encode     first run (empty cache): %.1f MB/s, %.0f tokens/s\n", len / cold / 1e6,
               ids.n / cold);
        printf("encode     best of %d: %.1f MB/s, %.0f tokens/s\n", runs, len / best_enc / 1e6,
               ids.n / best_enc);
        printf("decode     best of %d: %.1f MB/s (of text), %.0f tokens/s\n", runs,
               out_len / best_dec / 1e6, ids.n / best_dec);
    }
    dr_tokens_free(&ids);
    dr_tokenizer_free(tok);
    free(text);
    return rc;
}

int dr_cli_tokenize(int argc, char **argv) {
    const char *cmd = "tokenize";
    const char *model = NULL, *text = NULL, *file = NULL, *bench_file = NULL;
    bool parse_special = true;
    int runs = 5;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (is_flag(a, "-h") || is_flag(a, "--help")) {
            fputs(TOKENIZE_HELP, stdout);
            return 0;
        } else if (is_flag(a, "--text")) {
            if (!(text = opt_value(cmd, argc, argv, &i)))
                return 2;
        } else if (is_flag(a, "--file")) {
            if (!(file = opt_value(cmd, argc, argv, &i)))
                return 2;
        } else if (is_flag(a, "--bench")) {
            if (!(bench_file = opt_value(cmd, argc, argv, &i)))
                return 2;
        } else if (is_flag(a, "--runs")) {
            const char *v = opt_value(cmd, argc, argv, &i);
            if (!v)
                return 2;
            char *end;
            long n = strtol(v, &end, 10);
            if (*end || n < 1 || n > 1000) {
                fprintf(stderr, "deltarun %s: --runs: expected an integer in 1..1000, got \"%s\"\n",
                        cmd, v);
                return 2;
            }
            runs = (int)n;
        } else if (is_flag(a, "--no-special")) {
            parse_special = false;
        } else if (!positional(cmd, a, &model)) {
            return 2;
        }
    }
    if (!model) {
        fprintf(stderr, "deltarun %s: missing MODEL_DIR or tokenizer.json (see --help)\n", cmd);
        return 2;
    }
    if (bench_file) {
        if (text || file) {
            fprintf(stderr, "deltarun %s: --bench takes no --text/--file\n", cmd);
            return 2;
        }
        return bench(model, bench_file, runs);
    }
    if (!text == !file) {
        fprintf(stderr, "deltarun %s: give exactly one of --text or --file (see --help)\n", cmd);
        return 2;
    }
    size_t len = 0;
    char *buf = NULL;
    if (file) {
        if (!(buf = read_all(cmd, file, &len)))
            return 1;
        text = buf;
    } else {
        len = strlen(text);
    }
    dr_tokenizer *tok = load(cmd, model);
    if (!tok) {
        free(buf);
        return 1;
    }
    dr_tokens ids = {0};
    int rc = 0;
    if (dr_tokenize(tok, text, len, parse_special, &ids) != DR_OK) {
        fprintf(stderr, "deltarun %s: %s\n", cmd, dr_last_error());
        rc = 1;
    } else {
        putchar('[');
        for (size_t i = 0; i < ids.n; i++)
            printf(i ? ", %d" : "%d", ids.ids[i]);
        puts("]");
    }
    dr_tokens_free(&ids);
    dr_tokenizer_free(tok);
    free(buf);
    return rc;
}

/* Parse "1,2, 3" or "[1, 2, 3]" into ids. false (message printed) on error. */
static bool parse_ids(const char *cmd, const char *s, dr_tokens *out) {
    const char *p = s;
    bool any = false;
    while (*p) {
        if (*p == ',' || *p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' ||
            (*p == '[' && !any) || *p == ']') {
            p++;
            continue;
        }
        if (*p < '0' || *p > '9') {
            fprintf(stderr, "deltarun %s: --ids: unexpected \"%c\" at position %zu in \"%s\"\n",
                    cmd, *p, (size_t)(p - s), s);
            return false;
        }
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (errno || v > INT32_MAX) {
            fprintf(stderr, "deltarun %s: --ids: %.*s is out of range\n", cmd, (int)(end - p), p);
            return false;
        }
        if (dr_tokens_push(out, (int32_t)v) != DR_OK) {
            fprintf(stderr, "deltarun %s: out of memory\n", cmd);
            return false;
        }
        any = true;
        p = end;
    }
    return true;
}

int dr_cli_detokenize(int argc, char **argv) {
    const char *cmd = "detokenize";
    const char *model = NULL, *ids_arg = NULL;
    bool skip_special = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (is_flag(a, "-h") || is_flag(a, "--help")) {
            fputs(DETOKENIZE_HELP, stdout);
            return 0;
        } else if (is_flag(a, "--ids")) {
            if (!(ids_arg = opt_value(cmd, argc, argv, &i)))
                return 2;
        } else if (is_flag(a, "--skip-special")) {
            skip_special = true;
        } else if (!positional(cmd, a, &model)) {
            return 2;
        }
    }
    if (!model || !ids_arg) {
        fprintf(stderr, "deltarun %s: need MODEL_DIR|tokenizer.json and --ids (see --help)\n", cmd);
        return 2;
    }
    dr_tokens ids = {0};
    if (!parse_ids(cmd, ids_arg, &ids)) {
        dr_tokens_free(&ids);
        return 2;
    }
    dr_tokenizer *tok = load(cmd, model);
    if (!tok) {
        dr_tokens_free(&ids);
        return 1;
    }
    char *text;
    size_t len;
    int rc = 0;
    if (dr_detokenize(tok, ids.ids, ids.n, skip_special, &text, &len) != DR_OK) {
        fprintf(stderr, "deltarun %s: %s\n", cmd, dr_last_error());
        rc = 1;
    } else {
        fwrite(text, 1, len, stdout);
        fflush(stdout);
        free(text);
    }
    dr_tokens_free(&ids);
    dr_tokenizer_free(tok);
    return rc;
}
