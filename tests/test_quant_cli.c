/* tests/test_quant_cli.c - `deltarun quantize` end to end.
 *
 * Usage: test_quant_cli PATH_TO_DELTARUN. Runs the binary on the fixtures:
 * help and usage errors, a conversion that loads back, the refusal to
 * overwrite without --force, --embed-bits 16, and the collapsed-row refusal
 * (forced with the DR_QUANT_TEST_COLLAPSE fault-injection hook) leaving
 * nothing behind.
 */
#include "deltarun.h"
#include "format/safetensors.h"
#include "rm_dir.h"
#include "test.h"

#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *g_bin;
static char g_tmp[256], g_out[8192];

/* Run `deltarun quantize ARGS` (with an optional VAR=value prefix); stdout
 * and stderr into g_out. Returns the exit status. */
static int run(const char *env, const char *args) {
    char cmd[2048], log[300];
    snprintf(log, sizeof log, "%s/log.txt", g_tmp);
    snprintf(cmd, sizeof cmd, "%s '%s' quantize %s > '%s' 2>&1", env ? env : "", g_bin, args, log);
    int rc = system(cmd);
    FILE *f = fopen(log, "rb");
    size_t n = f ? fread(g_out, 1, sizeof g_out - 1, f) : 0;
    g_out[n] = '\0';
    if (f)
        fclose(f);
    unlink(log);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static bool exists(const char *dir, const char *file) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, file);
    struct stat sb;
    return stat(p, &sb) == 0;
}

/* Number of entries of g_tmp whose name starts with `prefix`. */
static int count_prefix(const char *prefix) {
    DIR *d = opendir(g_tmp);
    struct dirent *e;
    int n = 0;
    while (d && (e = readdir(d)))
        n += !strncmp(e->d_name, prefix, strlen(prefix));
    if (d)
        closedir(d);
    return n;
}

static void test_usage(void) {
    CHECK(run(NULL, "--help") == 0 && strstr(g_out, "--embed-bits") && strstr(g_out, "--force"), "--help: %s", g_out);
    CHECK(run(NULL, "a b") == 1 && strstr(g_out, "--bits"), "missing --bits: %s", g_out);
    CHECK(run(NULL, "a b --bits 3") == 1 && strstr(g_out, "4 or 8"), "--bits 3: %s", g_out);
    CHECK(!strstr(g_out, "quantize: quantize:"), "the command named once: %s", g_out);
    CHECK(run(NULL, "a --bits 4") == 1 && strstr(g_out, "OUT_DIR"), "one dir: %s", g_out);
    CHECK(run(NULL, "a b --bits 4 --frobnicate") == 1 && strstr(g_out, "unknown option"), "bad flag: %s", g_out);
}

static void test_convert(void) {
    char args[1200], out[400];
    snprintf(out, sizeof out, "%s/long-q4", g_tmp);
    snprintf(args, sizeof args, "'%s/long-bf16' '%s' --bits 4 --group-size 32", DR_TEST_DATA, out);
    int rc = run(NULL, args);
    CHECK_SHOW(rc == 0 && strstr(g_out, "max|err|") && strstr(g_out, "rel-rms") && strstr(g_out, "wrote"),
               "quantize long-bf16 --bits 4: exit %d, per-tensor error lines printed", rc);
    CHECK(exists(out, "config.json") && exists(out, "model.safetensors") && exists(out, "generation_config.json"),
          "output files missing in %s", out);
    dr_model *m = NULL;
    dr_status st = dr_model_load(out, &m); /* outside CHECK_SHOW: it evaluates its condition twice */
    CHECK_SHOW(st == DR_OK, "converted directory loads: %s", st == DR_OK ? "ok" : dr_last_error());
    dr_model_free(m);
    /* not over a non-empty directory without --force */
    rc = run(NULL, args);
    CHECK_SHOW(rc == 1 && strstr(g_out, "--force"), "existing OUT_DIR refused without --force (exit %d)", rc);
    snprintf(args, sizeof args, "'%s/long-bf16' '%s' --bits 8 --embed-bits 16 --force -q", DR_TEST_DATA, out);
    rc = run(NULL, args);
    CHECK_SHOW(rc == 0, "--force replaces it (exit %d): %s", rc, g_out);
    char p[1024];
    snprintf(p, sizeof p, "%s/model.safetensors", out);
    dr_st_file f;
    if (dr_st_open(p, &f) == DR_OK) {
        const dr_st_tensor *e = dr_st_file_find(&f, "language_model.model.embed_tokens.weight");
        const dr_st_tensor *q = dr_st_file_find(&f, "language_model.model.layers.0.mlp.up_proj.weight");
        CHECK_SHOW(e && e->dtype == DR_DT_BF16 && !dr_st_file_find(&f, "language_model.model.embed_tokens.scales") &&
                       q && q->dtype == DR_DT_U32 && q->shape[1] == 64 / 4,
                   "--embed-bits 16 keeps the embedding BF16; up_proj packed 8-bit [128, 16]");
        dr_st_close(&f);
    }
    CHECK(count_prefix("long-q4.") == 0, "temporary directories left behind");
    rm_dir(out);
}

static void test_collapse(void) {
    char args[1200], out[400];
    snprintf(out, sizeof out, "%s/collapse-q4", g_tmp);
    snprintf(args, sizeof args, "'%s/dense-f32' '%s' --bits 4 --group-size 32", DR_TEST_DATA, out);
    int rc = run("DR_QUANT_TEST_COLLAPSE=language_model.model.layers.0.linear_attn.in_proj_qkv", args);
    struct stat sb;
    CHECK_SHOW(rc == 2 && strstr(g_out, "language_model.model.layers.0.linear_attn.in_proj_qkv") &&
                   strstr(g_out, "all zeros") && stat(out, &sb) != 0 && count_prefix("collapse-q4") == 0,
               "collapsed rows: exit %d, nothing written; message: %s", rc,
               strstr(g_out, "deltarun:") ? strstr(g_out, "deltarun:") : g_out);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        printf("usage: test_quant_cli PATH_TO_DELTARUN\n");
        return 2;
    }
    g_bin = argv[1];
    snprintf(g_tmp, sizeof g_tmp, "/tmp/dr_test_quant_cli_XXXXXX");
    if (!mkdtemp(g_tmp))
        return 1;
    test_usage();
    test_convert();
    test_collapse();
    rmdir(g_tmp);
    return TEST_DONE();
}
