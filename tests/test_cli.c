/* tests/test_cli.c - the `deltarun` command as a user runs it: help texts,
 * exit codes and messages on bad input, `generate` reproducing the golden
 * greedy tokens, `logits --split` reproducing the golden incremental logits.
 * Usage: test_cli PATH_TO_DELTARUN */
#include "golden_util.h"
#include "test.h"

#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *g_bin;

/* Run `deltarun ARGS`, capturing stdout+stderr into out (truncated); returns the exit status. */
static int run(char *out, size_t cap, const char *args) {
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "'%s' %s 2>&1", g_bin, args);
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    while (fgetc(p) != EOF) {
    }
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_help_and_errors(void) {
    static char out[1 << 16];
    CHECK(run(out, sizeof out, "--help") == 0 && strstr(out, "generate") && strstr(out, "logits"),
          "--help: %s", out);
    const char *cmds[] = {"generate", "logits", "info"};
    for (int i = 0; i < 3; i++) {
        char a[64];
        snprintf(a, sizeof a, "%s --help", cmds[i]);
        CHECK(run(out, sizeof out, a) == 0 && strstr(out, "usage: deltarun"), "%s: %s", a, out);
    }
    CHECK(run(out, sizeof out, "") == 1, "no command should exit 1");
    CHECK(run(out, sizeof out, "frobnicate") == 1 && strstr(out, "unknown command"), "unknown command: %s", out);
    CHECK(run(out, sizeof out, "generate " DR_TEST_DATA "/dense-f32 --ids 1,x") == 1 && strstr(out, "--ids"),
          "bad ids: %s", out);
    CHECK(run(out, sizeof out, "generate " DR_TEST_DATA "/dense-f32 --ids 1 --bogus") == 1 &&
              strstr(out, "--bogus"),
          "unknown option: %s", out);
    CHECK(run(out, sizeof out, "generate " DR_TEST_DATA "/dense-f32 --ids 1 --top-p 2") == 1, "bad top-p: %s", out);
    CHECK(run(out, sizeof out, "generate " DR_TEST_DATA "/dense-f32 --ids 99999 -n 1") == 2 &&
              strstr(out, "99999"),
          "out-of-vocab id: %s", out);
    CHECK(run(out, sizeof out, "info /nonexistent-model-dir") == 2 && strstr(out, "config.json"),
          "missing model: %s", out);
    CHECK(run(out, sizeof out, "logits " DR_TEST_DATA "/dense-f32 --ids 1,2") == 1 && strstr(out, "--out"),
          "logits without --out: %s", out);
    CHECK(run(out, sizeof out, "info " DR_TEST_DATA "/next-f32") == 0 && strstr(out, "qwen3_next") &&
              strstr(out, "GGGA"),
          "info: %s", out);
}

/* generate --greedy --ignore-eos after prompt 0 equals the golden tokens. */
static void test_generate(const char *fx) {
    char path[512], args[4096], expect[4096] = "", out[1 << 14];
    snprintf(path, sizeof path, DR_TEST_DATA "/%s/golden.json", fx);
    json_t *root = json_load_file(path, 0, NULL);
    json_t *p0 = json_array_get(json_object_get(root, "prompts"), 0);
    json_t *ids = json_object_get(p0, "input_ids"), *greedy = json_object_get(p0, "greedy");
    size_t o = (size_t)snprintf(args, sizeof args, "generate %s/%s --greedy --ignore-eos -n %zu --ids ",
                                DR_TEST_DATA, fx, json_array_size(greedy));
    for (size_t i = 0; i < json_array_size(ids) && o < sizeof args; i++)
        o += (size_t)snprintf(args + o, sizeof args - o, i ? ",%lld" : "%lld",
                              (long long)json_integer_value(json_array_get(ids, i)));
    o = 0;
    for (size_t i = 0; i < json_array_size(greedy); i++)
        o += (size_t)snprintf(expect + o, sizeof expect - o, i ? ",%lld" : "%lld",
                              (long long)json_integer_value(json_array_get(greedy, i)));
    strcat(expect, "\n");
    int rc = run(out, sizeof out, args);
    CHECK_SHOW(rc == 0 && strcmp(out, expect) == 0, "generate %s: %zu greedy tokens identical", fx,
               json_array_size(greedy));
    if (strcmp(out, expect))
        printf("  got      %s  expected %s", out, expect);
    json_decref(root);
}

/* logits --split 70 on dense-f32 prompt 1 equals logits_incremental. */
static void test_logits(void) {
    dr_st_file g, f;
    CHECK(dr_st_open(DR_TEST_DATA "/dense-f32/golden.safetensors", &g) == DR_OK, "%s", dr_last_error());
    int32_t *ids;
    int T = golden_ids(&g, "p1.input_ids", &ids);
    char args[8192], out[4096], tmp[] = "/tmp/dr_cli_XXXXXX";
    int fd = mkstemp(tmp);
    close(fd);
    size_t o = (size_t)snprintf(args, sizeof args, "logits %s/dense-f32 --split 70 --out %s --ids ", DR_TEST_DATA,
                                tmp);
    for (int i = 0; i < T; i++)
        o += (size_t)snprintf(args + o, sizeof args - o, i ? ",%d" : "%d", (int)ids[i]);
    CHECK(run(out, sizeof out, args) == 0, "logits: %s", out);
    CHECK(dr_st_open(tmp, &f) == DR_OK, "%s", dr_last_error());
    const dr_st_tensor *t = dr_st_file_find(&f, "logits");
    float *want;
    size_t n = golden_f32(&g, "p1.logits_incremental", &want);
    CHECK(t && t->ndim == 2 && t->shape[0] == T && dr_st_numel(t) == n, "logits tensor shape");
    if (t && dr_st_numel(t) == n) {
        float e = max_abs_diff((const float *)t->data, want, n);
        CHECK_SHOW(e <= 1e-3f, "logits --split 70 file vs golden incremental: max |d| %.3g (tol 1e-3)", e);
    }
    free(want);
    free(ids);
    dr_st_close(&f);
    dr_st_close(&g);
    unlink(tmp);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        printf("usage: test_cli PATH_TO_DELTARUN\n");
        return 2;
    }
    g_bin = argv[1];
    test_help_and_errors();
    const char *fx[] = {"dense-f32", "moe-bf16", "moe-bf16-fused", "next-f32", "long-bf16"};
    for (int i = 0; i < 5; i++)
        test_generate(fx[i]);
    test_logits();
    return TEST_DONE();
}
