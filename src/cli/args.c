/* cli/args.c - strict parsing of numbers, id lists and sampling flags. */
#include "cli/args.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int dr_cli_err(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("deltarun: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

int dr_cli_lib_err(void) {
    fprintf(stderr, "deltarun: %s\n", dr_last_error());
    return 2;
}

bool dr_cli_wants_help(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help"))
            return true;
    return false;
}

const char *dr_cli_value(int argc, char **argv, int *i) {
    if (*i + 1 >= argc) {
        dr_cli_err("option %s needs a value", argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

bool dr_cli_int(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

bool dr_cli_float(const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || isnan(v) || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

bool dr_cli_ids(const char *s, int32_t **ids, int *n) {
    size_t cap = 1;
    for (const char *p = s; *p; p++)
        cap += *p == ',';
    int32_t *v = malloc(cap * sizeof *v);
    if (!v)
        return dr_cli_err("out of memory"), false;
    int k = 0;
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (errno || end == p || x < 0 || x > INT32_MAX || (*end && *end != ',')) {
            free(v);
            dr_cli_err("--ids: expected comma-separated non-negative integers, got \"%s\"", s);
            return false;
        }
        v[k++] = (int32_t)x;
        p = *end ? end + 1 : end;
    }
    if (k == 0) {
        free(v);
        dr_cli_err("--ids: no token ids given");
        return false;
    }
    *ids = v;
    *n = k;
    return true;
}

const char *const dr_cli_sampling_help =
    "Sampling (default: greedy):\n"
    "  --greedy              always pick the most likely token\n"
    "  --temp T              temperature (> 0 samples; 0 = greedy)\n"
    "  --top-k K             keep the K most likely tokens (0 = off)\n"
    "  --top-p P             nucleus sampling mass in (0, 1] (1 = off)\n"
    "  --min-p M             drop tokens below M x the top probability (0 = off)\n"
    "  --repeat-penalty R    penalise the last --repeat-last-n tokens (1 = off)\n"
    "  --repeat-last-n N     window of the repetition penalty (default 64)\n"
    "  --seed S              random seed (same seed, same output; default 0)\n";

int dr_cli_sampling_flag(int argc, char **argv, int *i, dr_sampler_params *p) {
    const char *a = argv[*i], *v;
    double d;
    long n;
    if (!strcmp(a, "--greedy")) {
        p->temperature = 0.0f;
        return 1;
    }
    if (strcmp(a, "--temp") && strcmp(a, "--top-k") && strcmp(a, "--top-p") && strcmp(a, "--min-p") &&
        strcmp(a, "--repeat-penalty") && strcmp(a, "--repeat-last-n") && strcmp(a, "--seed"))
        return 0;
    if (!(v = dr_cli_value(argc, argv, i)))
        return -1;
    if (!strcmp(a, "--temp") && dr_cli_float(v, 0, 100, &d))
        p->temperature = (float)d;
    else if (!strcmp(a, "--top-k") && dr_cli_int(v, 0, INT32_MAX, &n))
        p->top_k = (int)n;
    else if (!strcmp(a, "--top-p") && dr_cli_float(v, 1e-9, 1, &d))
        p->top_p = (float)d;
    else if (!strcmp(a, "--min-p") && dr_cli_float(v, 0, 1, &d))
        p->min_p = (float)d;
    else if (!strcmp(a, "--repeat-penalty") && dr_cli_float(v, 1e-3, 100, &d))
        p->repeat_penalty = (float)d;
    else if (!strcmp(a, "--repeat-last-n") && dr_cli_int(v, 0, 1 << 20, &n))
        p->repeat_last_n = (int)n;
    else if (!strcmp(a, "--seed") && dr_cli_int(v, 0, LONG_MAX, &n))
        p->seed = (uint64_t)n;
    else
        return dr_cli_err("%s: invalid value \"%s\" (see --help)", a, v), -1;
    return 1;
}
