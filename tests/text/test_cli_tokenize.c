/* test_cli_tokenize - the `deltarun tokenize` / `deltarun detokenize`
 * subcommands (src/cli/cmd_tokenize.c, compiled into this test): output of
 * the main forms, --help, --bench, and clear errors with exit status 2 for
 * bad arguments, 1 for failures while running.
 */
#include "../test.h"
#include "text_test_util.h"
#include "cli/cmd_tokenize.h"

#include <fcntl.h>
#include <unistd.h>

static char out[1 << 16], err[1 << 16];

/* Run a subcommand with stdout/stderr captured into out/err. */
static int run(int (*fn)(int, char **), int argc, char **argv) {
    fflush(stdout);
    fflush(stderr);
    FILE *fo = tmpfile(), *fe = tmpfile();
    int so = dup(1), se = dup(2);
    dup2(fileno(fo), 1);
    dup2(fileno(fe), 2);
    int rc = fn(argc, argv);
    fflush(stdout);
    fflush(stderr);
    dup2(so, 1);
    dup2(se, 2);
    close(so);
    close(se);
    rewind(fo);
    rewind(fe);
    size_t n = fread(out, 1, sizeof out - 1, fo);
    out[n] = 0;
    n = fread(err, 1, sizeof err - 1, fe);
    err[n] = 0;
    fclose(fo);
    fclose(fe);
    return rc;
}

#define ARGV(...) ((char *[]){__VA_ARGS__, NULL})
#define NARG(...) ((int)(sizeof((char *[]){__VA_ARGS__}) / sizeof(char *)))
#define TOK(...) run(dr_cli_tokenize, NARG(__VA_ARGS__), ARGV(__VA_ARGS__))
#define DETOK(...) run(dr_cli_detokenize, NARG(__VA_ARGS__), ARGV(__VA_ARGS__))

int main(void) {
    char *q3 = DATA("tokenizer/qwen3");
    char *small = DATA("dense-f32/tokenizer.json");
    int rc;

    rc = TOK("tokenize", q3, "--text", "Hello, world!");
    CHECK(rc == 0 && strcmp(out, "[9707, 11, 1879, 0]\n") == 0, "tokenize --text: rc %d \"%s\"",
          rc, out);
    rc = TOK("tokenize", q3, "--text", "<|im_end|>");
    CHECK(rc == 0 && strcmp(out, "[151645]\n") == 0, "special token parsed: \"%s\"", out);
    rc = TOK("tokenize", q3, "--text", "<|im_end|>", "--no-special");
    CHECK(rc == 0 && strstr(out, "151645") == NULL && out[0] == '[', "--no-special: \"%s\"", out);
    rc = TOK("tokenize", q3, "--text", "");
    CHECK(rc == 0 && strcmp(out, "[]\n") == 0, "empty text: \"%s\"", out);

    char path[] = "/tmp/dr_cli_tok_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0 && write(fd, "What is 2+2?", 12) == 12, "temp file");
    close(fd);
    rc = TOK("tokenize", q3, "--file", path);
    CHECK(rc == 0 && strcmp(out, "[3838, 374, 220, 17, 10, 17, 30]\n") == 0, "--file: \"%s\"",
          out);
    rc = TOK("tokenize", small, "--bench", path, "--runs", "2");
    CHECK(rc == 0 && strstr(out, "MB/s") && strstr(out, "tokens/s") && strstr(out, "load"),
          "--bench report:\n%s%s", out, err);
    printf("%s", out);

    rc = DETOK("detokenize", q3, "--ids", "[9707, 11, 1879, 0]");
    CHECK(rc == 0 && strcmp(out, "Hello, world!") == 0, "detokenize JSON ids: \"%s\"", out);
    rc = DETOK("detokenize", q3, "--ids", "151644,872,198,6023,151645", "--skip-special");
    CHECK(rc == 0 && strcmp(out, "user\nhi") == 0, "detokenize --skip-special: \"%s\"", out);
    rc = DETOK("detokenize", q3, "--ids", "99999999");
    CHECK(rc == 1 && strstr(err, "99999999"), "unknown id: rc %d, %s", rc, err);

    struct {
        int (*fn)(int, char **);
        int argc;
        char **argv;
        const char *needle;
    } bad[] = {
        {dr_cli_tokenize, 1, ARGV("tokenize"), "missing MODEL_DIR"},
        {dr_cli_tokenize, 2, ARGV("tokenize", q3), "exactly one of --text or --file"},
        {dr_cli_tokenize, 5, ARGV("tokenize", q3, "--text", "a", "--file"), "--file needs a value"},
        {dr_cli_tokenize, 6, ARGV("tokenize", q3, "--text", "a", "--file", path),
         "exactly one of"},
        {dr_cli_tokenize, 5, ARGV("tokenize", q3, "--text", "a", "--frobnicate"),
         "unknown option --frobnicate"},
        {dr_cli_tokenize, 5, ARGV("tokenize", q3, "extra", "--text", "a"), "unexpected argument"},
        {dr_cli_tokenize, 6, ARGV("tokenize", q3, "--bench", path, "--runs", "0"), "--runs"},
        {dr_cli_detokenize, 2, ARGV("detokenize", q3), "--ids"},
        {dr_cli_detokenize, 4, ARGV("detokenize", q3, "--ids", "1,x"), "unexpected \"x\""},
        {dr_cli_detokenize, 4, ARGV("detokenize", q3, "--ids", "-5"), "unexpected \"-\""},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rc = run(bad[i].fn, bad[i].argc, bad[i].argv);
        CHECK(rc == 2 && strstr(err, bad[i].needle), "bad args %zu: rc %d, stderr \"%s\"", i, rc,
              err);
    }
    rc = TOK("tokenize", "/nonexistent", "--text", "a");
    CHECK(rc == 1 && strstr(err, "/nonexistent"), "missing model: rc %d %s", rc, err);
    rc = TOK("tokenize", q3, "--file", "/nonexistent/file");
    CHECK(rc == 1 && strstr(err, "/nonexistent/file"), "missing file: rc %d %s", rc, err);
    rc = TOK("tokenize", "--help");
    CHECK(rc == 0 && strstr(out, "usage: deltarun tokenize") && strstr(out, "--bench"),
          "tokenize --help");
    rc = DETOK("detokenize", "-h");
    CHECK(rc == 0 && strstr(out, "usage: deltarun detokenize"), "detokenize -h");
    unlink(path);
    return TEST_DONE();
}
