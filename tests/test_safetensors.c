/* test_safetensors.c - the safetensors reader against valid, malformed,
 * truncated and randomly corrupted input, and the directory / shard logic.
 *
 * Every malformed image must give an error (with a message in
 * dr_last_error()), never a crash; ASan/UBSan builds catch over-reads
 * because each image is copied into a buffer of exactly its size.
 */
#include "format/safetensors.h"
#include "util/status.h"

#include "test.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- helpers ---- */

static char g_tmp[256];

static void path_in(char *buf, size_t n, const char *dir, const char *name) {
    snprintf(buf, n, "%s/%s", dir, name);
}

static int write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f)
        return 0;
    int ok = fwrite(data, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

static unsigned char *read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc(len > 0 ? (size_t)len : 1);
    if (b && fread(b, 1, (size_t)len, f) != (size_t)len) {
        free(b);
        b = NULL;
    }
    fclose(f);
    *n = (size_t)len;
    return b;
}

/* Remove every file in dir, then dir. */
static void rm_dir(const char *dir) {
    static const char *names[] = {"model.safetensors", "model.safetensors.index.json",
                                  "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                                  "rt.safetensors", "empty.safetensors", "other.txt"};
    char p[512];
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        path_in(p, sizeof p, dir, names[i]);
        unlink(p);
    }
    rmdir(dir);
}

static char *make_subdir(const char *name) {
    static char buf[8][512];
    static int k;
    char *p = buf[k++ % 8];
    snprintf(p, 512, "%s/%s", g_tmp, name);
    mkdir(p, 0700);
    return p;
}

/* An image: u64 length of `hdr` | hdr | `data_len` bytes (0x11 each), in a
 * malloc'd buffer of exactly that size. `hlen_override` (if not ~0) replaces
 * the length field. */
static unsigned char *image(const char *hdr, size_t data_len, uint64_t hlen_override, size_t *size) {
    size_t hl = strlen(hdr);
    *size = 8 + hl + data_len;
    unsigned char *b = malloc(*size ? *size : 1);
    uint64_t n = hlen_override != ~(uint64_t)0 ? hlen_override : hl;
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(n >> (8 * i));
    memcpy(b + 8, hdr, hl);
    memset(b + 8 + hl, 0x11, data_len);
    return b;
}

static uint64_t hdr_len(const unsigned char *b) {
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | b[i];
    return n;
}

/* Checks a successful parse makes sense: every tensor inside the buffer and,
 * for known dtypes, byte count = size x numel. Returns 1 if all good. */
static int parse_is_sane(const dr_st_file *f, const unsigned char *buf, size_t size) {
    for (int i = 0; i < f->n_tensors; i++) {
        const dr_st_tensor *t = &f->tensors[i];
        const unsigned char *d = t->data;
        if (!t->name || t->ndim < 0 || t->ndim > DR_ST_MAX_DIMS)
            return 0;
        if (d < buf || d > buf + size || t->nbytes > (uint64_t)(buf + size - d))
            return 0;
        for (int k = 0; k < t->ndim; k++)
            if (t->shape[k] < 0)
                return 0;
        if (t->dtype != DR_DT_UNKNOWN) {
            /* numel * size with overflow detection */
            uint64_t n = dr_dtype_size(t->dtype);
            int ovf = 0;
            for (int k = 0; k < t->ndim; k++) {
                uint64_t s = (uint64_t)t->shape[k];
                if (s && n > UINT64_MAX / s)
                    ovf = 1;
                n *= s;
            }
            if (ovf || n != t->nbytes)
                return 0;
        }
    }
    return 1;
}

/* Parse `hdr` + data; expect failure with status `want` and a message that
 * contains `needle` (if not NULL). */
static void expect_fail(const char *what, const char *hdr, size_t data_len, uint64_t hlen, dr_status want,
                        const char *needle) {
    size_t size;
    unsigned char *b = image(hdr, data_len, hlen, &size);
    dr_st_file f;
    dr_error_clear();
    dr_status st = dr_st_parse(b, size, "img.safetensors", &f);
    const char *msg = dr_last_error();
    CHECK(st == want, "%s: status %d (%s), want %d; msg: %s", what, st, dr_status_str(st), want, msg);
    CHECK(msg[0] != '\0', "%s: empty error message", what);
    CHECK(strstr(msg, "img.safetensors") != NULL, "%s: message does not name the file: %s", what, msg);
    if (needle)
        CHECK(strstr(msg, needle) != NULL, "%s: message lacks '%s': %s", what, needle, msg);
    CHECK(f.n_tensors == 0 && f.tensors == NULL, "%s: output not cleared after failure", what);
    if (st == DR_OK)
        dr_st_close(&f);
    free(b);
}

static int parse_ok(const char *what, const char *hdr, size_t data_len, dr_st_file *f, unsigned char **buf) {
    size_t size;
    *buf = image(hdr, data_len, ~(uint64_t)0, &size);
    dr_status st = dr_st_parse(*buf, size, "img.safetensors", f);
    CHECK(st == DR_OK, "%s: status %d, msg: %s", what, st, dr_last_error());
    return st == DR_OK;
}

/* ---- tests ---- */

static void test_round_trip(void) {
    const char *names[] = {"w.matrix", "w.vector", "scalar", "empty"};
    int ndims[] = {2, 1, 0, 2};
    int64_t shapes[4][DR_ST_MAX_DIMS] = {{3, 5}, {7}, {0}, {0, 4}};
    float m[15], v[7], s[1] = {-2.5f}, e[1] = {0};
    for (int i = 0; i < 15; i++)
        m[i] = (float)i * 0.25f - 1.0f;
    for (int i = 0; i < 7; i++)
        v[i] = 1e-3f * (float)(i * i) + 1e30f * (i == 6);
    const float *datas[] = {m, v, s, e};
    char path[512];
    path_in(path, sizeof path, g_tmp, "rt.safetensors");
    dr_status st = dr_st_write_f32(path, 4, names, ndims, (const int64_t(*)[DR_ST_MAX_DIMS])shapes, datas);
    CHECK(st == DR_OK, "write_f32: %s", dr_last_error());
    dr_st_file f;
    st = dr_st_open(path, &f);
    CHECK(st == DR_OK, "open round trip: %s", dr_last_error());
    if (st != DR_OK)
        return;
    CHECK(f.n_tensors == 4, "round trip: %d tensors", f.n_tensors);
    /* header length is a multiple of 8 so F32 data is aligned */
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--)
        hl = (hl << 8) | ((const unsigned char *)f.map)[i];
    CHECK(hl % 8 == 0, "header length %llu not 8-aligned", (unsigned long long)hl);
    for (int i = 0; i < 4; i++) {
        const dr_st_tensor *t = dr_st_file_find(&f, names[i]);
        CHECK(t != NULL, "round trip: %s missing", names[i]);
        if (!t)
            continue;
        CHECK(t->dtype == DR_DT_F32 && strcmp(t->dtype_name, "F32") == 0, "%s: dtype %s", names[i],
              t->dtype_name);
        CHECK(t->ndim == ndims[i], "%s: ndim %d want %d", names[i], t->ndim, ndims[i]);
        int same_shape = 1;
        for (int k = 0; k < ndims[i]; k++)
            same_shape &= t->shape[k] == shapes[i][k];
        CHECK(same_shape, "%s: shape differs", names[i]);
        uint64_t n = dr_st_numel(t);
        CHECK(t->nbytes == n * 4, "%s: %llu bytes for %llu elements", names[i], (unsigned long long)t->nbytes,
              (unsigned long long)n);
        CHECK(n == 0 || memcmp(t->data, datas[i], n * 4) == 0, "%s: values differ after round trip", names[i]);
        CHECK(t->file && strcmp(t->file, path) == 0, "%s: file %s", names[i], t->file ? t->file : "(null)");
    }
    CHECK(dr_st_file_find(&f, "nope") == NULL, "find of an absent name returned a tensor");
    dr_st_close(&f);
    dr_st_close(&f); /* closing a zeroed struct is fine */
}

static void test_header_errors(void) {
    const uint64_t AUTO = ~(uint64_t)0;
    const char *ok1 = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    dr_st_file f;
    dr_status st;

    /* sizes too small for the length field */
    dr_error_clear();
    st = dr_st_parse("", 0, "img.safetensors", &f);
    CHECK(st == DR_ERR_FORMAT && dr_last_error()[0], "empty buffer: st %d msg %s", st, dr_last_error());
    for (size_t n = 1; n < 8; n++) {
        unsigned char *b = malloc(n);
        memset(b, 0, n);
        dr_error_clear();
        st = dr_st_parse(b, n, "img.safetensors", &f);
        CHECK(st == DR_ERR_FORMAT && strstr(dr_last_error(), "img.safetensors"), "%zu-byte buffer: st %d msg %s",
              n, st, dr_last_error());
        free(b);
    }
    expect_fail("header length 0", "", 0, AUTO, DR_ERR_FORMAT, "header length");
    expect_fail("header length 0 with data", ok1, 8, 0, DR_ERR_FORMAT, "header length");
    expect_fail("header length 1", "{", 0, AUTO, DR_ERR_FORMAT, "header length");
    expect_fail("header length beyond the file", ok1, 8, 100000, DR_ERR_FORMAT, "header length");
    expect_fail("header length = file + 1", ok1, 0, strlen(ok1) + 1, DR_ERR_FORMAT, "header length");
    expect_fail("header length > 100 MB", ok1, 8, 100000001ull, DR_ERR_FORMAT, "header length");
    expect_fail("header length 2^64-1", ok1, 8, UINT64_MAX - 1, DR_ERR_FORMAT, "header length");
    expect_fail("header length 2^63", ok1, 8, 1ull << 63, DR_ERR_FORMAT, "header length");
    expect_fail("non-JSON header", "hello, world", 0, AUTO, DR_ERR_FORMAT, "JSON");
    expect_fail("header cut mid-JSON", "{\"a\":{\"dtype\":\"F32\"", 0, AUTO, DR_ERR_FORMAT, "JSON");
    expect_fail("JSON array", "[1,2,3]", 0, AUTO, DR_ERR_FORMAT, "object");
    expect_fail("JSON string", "\"abc\"", 0, AUTO, DR_ERR_FORMAT, NULL);
    expect_fail("JSON number", "12", 0, AUTO, DR_ERR_FORMAT, NULL);
    expect_fail("entry not an object", "{\"t1\":[1,2]}", 0, AUTO, DR_ERR_FORMAT, "t1");
    expect_fail("entry is null", "{\"t1\":null}", 0, AUTO, DR_ERR_FORMAT, "t1");
    expect_fail("missing dtype", "{\"t2\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, AUTO, DR_ERR_FORMAT, "t2");
    expect_fail("dtype not a string", "{\"t3\":{\"dtype\":5,\"shape\":[2],\"data_offsets\":[0,8]}}", 8, AUTO,
                DR_ERR_FORMAT, "t3");
    expect_fail("missing shape", "{\"t4\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8, AUTO, DR_ERR_FORMAT,
                "t4");
    expect_fail("shape not an array", "{\"t5\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", 8, AUTO,
                DR_ERR_FORMAT, "shape");
    expect_fail("shape element a string",
                "{\"t5b\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", 8, AUTO, DR_ERR_FORMAT,
                "t5b");
    expect_fail("shape element a float", "{\"t5c\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}",
                8, AUTO, DR_ERR_FORMAT, "t5c");
    expect_fail("negative dim", "{\"t6\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, AUTO,
                DR_ERR_FORMAT, "t6");
    expect_fail("negative dims cancelling",
                "{\"t6b\":{\"dtype\":\"F32\",\"shape\":[-1,-2],\"data_offsets\":[0,8]}}", 8, AUTO, DR_ERR_FORMAT,
                "t6b");
    expect_fail("9 dims",
                "{\"t7\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,2],\"data_offsets\":[0,8]}}", 8, AUTO,
                DR_ERR_FORMAT, "t7");
    expect_fail("offsets missing", "{\"t8\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, AUTO, DR_ERR_FORMAT, "t8");
    expect_fail("offsets not a pair (1)", "{\"t8\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8]}}", 8,
                AUTO, DR_ERR_FORMAT, "data_offsets");
    expect_fail("offsets not a pair (3)",
                "{\"t8\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,8]}}", 8, AUTO, DR_ERR_FORMAT,
                "data_offsets");
    expect_fail("offsets not integers",
                "{\"t8\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[\"0\",\"8\"]}}", 8, AUTO, DR_ERR_FORMAT,
                "data_offsets");
    expect_fail("offsets an object",
                "{\"t8\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":{\"0\":8}}}", 8, AUTO, DR_ERR_FORMAT,
                "data_offsets");
    expect_fail("begin > end", "{\"t9\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 16, AUTO,
                DR_ERR_FORMAT, "t9");
    expect_fail("negative begin", "{\"t9\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", 16,
                AUTO, DR_ERR_FORMAT, "t9");
    expect_fail("end beyond the buffer", "{\"t10\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 8,
                AUTO, DR_ERR_FORMAT, "t10");
    expect_fail("end far beyond the buffer",
                "{\"t10\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[9223372036854775800,"
                "9223372036854775807]}}",
                8, AUTO, DR_ERR_FORMAT, "t10");
    expect_fail("byte count too small", "{\"t11\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 16,
                AUTO, DR_ERR_FORMAT, "t11");
    expect_fail("byte count too large", "{\"t11\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                16, AUTO, DR_ERR_FORMAT, "t11");
    expect_fail("byte count for 0-d", "{\"t11\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[0,4]}}", 16,
                AUTO, DR_ERR_FORMAT, "t11");
    expect_fail("shape product overflows 64 bits",
                "{\"t12\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,2],\"data_offsets\":[0,0]}}", 0,
                AUTO, DR_ERR_FORMAT, "t12");
    expect_fail("shape x dtype size overflows 64 bits",
                "{\"t12\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],\"data_offsets\":[0,0]}}", 0, AUTO,
                DR_ERR_FORMAT, "t12");
    /* 2^32 * 2^32 wraps to 0: would match a 0-byte tensor if unchecked */
    expect_fail("shape product wrapping to 0",
                "{\"t13\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,0]}}", 0, AUTO,
                DR_ERR_FORMAT, "t13");
    expect_fail("dim above int64", "{\"t14\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],"
                                   "\"data_offsets\":[0,0]}}",
                0, AUTO, DR_ERR_FORMAT, NULL);
    expect_fail("duplicate keys",
                "{\"dup\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                "\"dup\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                8, AUTO, DR_ERR_FORMAT, NULL);
    expect_fail("second entry bad after a good one",
                "{\"good\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                "\"bad\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,9]}}",
                8, AUTO, DR_ERR_FORMAT, "bad");
    {   /* a NUL byte inside the header (json text and inside a key) */
        const char h[] = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
        for (size_t pos = 1; pos < sizeof h - 1; pos += 3) {
            size_t size;
            unsigned char *b = image(h, 8, ~(uint64_t)0, &size);
            b[8 + pos] = 0;
            dr_st_file f;
            dr_error_clear();
            dr_status st = dr_st_parse(b, size, "img.safetensors", &f);
            CHECK(st == DR_ERR_FORMAT && dr_last_error()[0], "NUL at header byte %zu: st %d", pos, st);
            if (st == DR_OK)
                dr_st_close(&f);
            free(b);
        }
    }
}

static void test_header_accepted(void) {
    dr_st_file f;
    unsigned char *b;
    /* __metadata__ is skipped */
    if (parse_ok("metadata", "{\"__metadata__\":{\"format\":\"pt\"},\"x\":{\"dtype\":\"BF16\",\"shape\":[2,2],"
                             "\"data_offsets\":[0,8]}}",
                 8, &f, &b)) {
        CHECK(f.n_tensors == 1, "metadata: %d tensors (want 1)", f.n_tensors);
        const dr_st_tensor *t = dr_st_file_find(&f, "x");
        CHECK(t && t->dtype == DR_DT_BF16 && t->ndim == 2 && t->nbytes == 8, "metadata: tensor x wrong");
        CHECK(dr_st_file_find(&f, "__metadata__") == NULL, "__metadata__ returned as a tensor");
        CHECK(t && (const unsigned char *)t->data == b + 8 + hdr_len(b), "metadata: data pointer not at header end");
        dr_st_close(&f);
    }
    free(b);
    /* metadata that is not an object is still skipped (reference reader: ignored) */
    if (parse_ok("metadata only", "{\"__metadata__\":{}}", 0, &f, &b)) {
        CHECK(f.n_tensors == 0, "metadata only: %d tensors", f.n_tensors);
        dr_st_close(&f);
    }
    free(b);
    /* empty object: valid, zero tensors */
    if (parse_ok("{}", "{}", 0, &f, &b)) {
        CHECK(f.n_tensors == 0, "{}: %d tensors", f.n_tensors);
        dr_st_close(&f);
    }
    free(b);
    /* unknown dtype: parsed, dtype UNKNOWN, name kept, bytes not checked */
    if (parse_ok("F8_E4M3", "{\"f8\":{\"dtype\":\"F8_E4M3\",\"shape\":[3],\"data_offsets\":[0,3]}}", 3, &f, &b)) {
        const dr_st_tensor *t = dr_st_file_find(&f, "f8");
        CHECK(t && t->dtype == DR_DT_UNKNOWN, "F8_E4M3: dtype %d", t ? (int)t->dtype : -1);
        CHECK(t && strcmp(t->dtype_name, "F8_E4M3") == 0, "F8_E4M3: dtype_name '%s'", t ? t->dtype_name : "");
        CHECK(t && t->nbytes == 3, "F8_E4M3: nbytes");
        dr_st_close(&f);
    }
    free(b);
    /* a very long dtype string is truncated into dtype_name, not overflowed */
    if (parse_ok("long dtype", "{\"q\":{\"dtype\":\"XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX\","
                               "\"shape\":[1],\"data_offsets\":[0,1]}}",
                 1, &f, &b)) {
        const dr_st_tensor *t = dr_st_file_find(&f, "q");
        CHECK(t && t->dtype == DR_DT_UNKNOWN && strlen(t->dtype_name) < sizeof t->dtype_name,
              "long dtype string handled");
        dr_st_close(&f);
    }
    free(b);
    /* every sized dtype, data at the end, 8 dims, zero-size tensor */
    if (parse_ok("dtypes",
                 "{\"a\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]},"
                 "\"b\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[8,16]},"
                 "\"c\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[16,20]},"
                 "\"d\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[20,22]},"
                 "\"e\":{\"dtype\":\"I8\",\"shape\":[1,1,1,1,1,1,1,2],\"data_offsets\":[22,24]},"
                 "\"f\":{\"dtype\":\"BOOL\",\"shape\":[0,5],\"data_offsets\":[24,24]}}",
                 24, &f, &b)) {
        CHECK(f.n_tensors == 6, "dtypes: %d tensors", f.n_tensors);
        const dr_st_tensor *c = dr_st_file_find(&f, "c"), *e = dr_st_file_find(&f, "e"),
                           *z = dr_st_file_find(&f, "f");
        CHECK(c && c->dtype == DR_DT_I32, "I32 dtype");
        CHECK(e && e->ndim == 8 && dr_st_numel(e) == 2, "8-d tensor");
        CHECK(z && z->nbytes == 0 && dr_st_numel(z) == 0, "zero-size tensor");
        dr_st_close(&f);
    }
    free(b);
    /* data buffer longer than needed: fine (trailing bytes unused) */
    if (parse_ok("slack", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 64, &f, &b)) {
        CHECK(f.tensors[0].data == b + 8 + hdr_len(b) + 4, "slack: data pointer");
        dr_st_close(&f);
    }
    free(b);
}

/* Every prefix of a real file is an error (or, for the whole file, valid). */
static void test_truncations(const char *path, size_t full_steps_from) {
    size_t size;
    unsigned char *whole = read_file(path, &size);
    CHECK(whole != NULL, "cannot read %s", path);
    if (!whole)
        return;
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--)
        hl = (hl << 8) | whole[i];
    size_t dense_to = (size_t)hl + 8 + full_steps_from;
    if (dense_to > size)
        dense_to = size;
    int n_ok = 0, n_err = 0, insane = 0, silent = 0;
    size_t n_tried = 0;
    size_t step = size / 40 > 997 ? size / 40 : 997; /* past the dense part: ~40 more cut points */
    for (size_t n = 0; n <= size; n = n < dense_to ? n + 1 : (n + step < size ? n + step : size)) {
        unsigned char *b = malloc(n ? n : 1);
        memcpy(b, whole, n);
        dr_st_file f;
        dr_error_clear();
        dr_status st = dr_st_parse(b, n, "trunc", &f);
        n_tried++;
        if (st == DR_OK) {
            n_ok++;
            insane += !parse_is_sane(&f, b, n);
            dr_st_close(&f);
        } else {
            n_err++;
            silent += dr_last_error()[0] == '\0';
        }
        free(b);
        if (n == size)
            break;
    }
    /* only the complete file parses (trailing data would be fine too, but
     * every tensor of the fixture ends at the end of the file) */
    CHECK_SHOW(n_ok == 1 && insane == 0 && silent == 0,
               "%s: %zu prefixes (all up to header+%zu, then every %zu bytes): %d errors, %d valid (want 1), "
               "%d insane, %d without message",
               path, n_tried, full_steps_from, step, n_err, n_ok, insane, silent);
    free(whole);
}

static uint64_t rng_state = 0x1234abcd9876ef01ull;
static uint64_t rnd(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}

/* Random byte flips in the length field and header JSON. */
static void test_fuzz(const char *path, int iters, double max_seconds) {
    size_t size;
    unsigned char *whole = read_file(path, &size);
    CHECK(whole != NULL, "cannot read %s", path);
    if (!whole)
        return;
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--)
        hl = (hl << 8) | whole[i];
    size_t region = (size_t)hl + 8;
    unsigned char *b = malloc(size);
    int n_ok = 0, n_err = 0, insane = 0, silent = 0, done = 0;
    /* interesting replacement bytes: JSON structure, digits, signs, high bytes */
    static const unsigned char special[] = "{}[]\",:-0123456789eE.\\ \x00\xff\x80";
    clock_t t0 = clock();
    memcpy(b, whole, size);
    for (int it = 0; it < iters; it++) {
        if ((double)(clock() - t0) / CLOCKS_PER_SEC > max_seconds)
            break;
        size_t where[4];
        unsigned char was[4];
        int flips = 1 + (int)(rnd() % 4);
        for (int k = 0; k < flips; k++) {
            size_t pos = (size_t)(rnd() % 10 < 1 ? rnd() % 8 : rnd() % region);
            where[k] = pos;
            was[k] = b[pos];
            uint64_t mode = rnd() % 3;
            if (mode == 0)
                b[pos] ^= (unsigned char)(1u << (rnd() % 8));
            else if (mode == 1)
                b[pos] = special[rnd() % (sizeof special - 1)];
            else
                b[pos] = (unsigned char)rnd();
        }
        /* sometimes also cut the file short (within the header or just after):
         * such images are copied into a buffer of exactly that size */
        size_t n = size;
        unsigned char *c = b;
        if (rnd() % 8 == 0) {
            n = (size_t)(rnd() % (region + 64 < size ? region + 64 : size));
            c = malloc(n ? n : 1);
            memcpy(c, b, n);
        }
        dr_st_file f;
        dr_error_clear();
        dr_status st = dr_st_parse(c, n, "fuzz", &f);
        if (st == DR_OK) {
            n_ok++;
            insane += !parse_is_sane(&f, c, n);
            dr_st_close(&f);
        } else {
            n_err++;
            silent += dr_last_error()[0] == '\0';
        }
        if (c != b)
            free(c);
        for (int k = flips - 1; k >= 0; k--) /* undo, newest first */
            b[where[k]] = was[k];
        done++;
    }
    CHECK_SHOW(insane == 0 && silent == 0 && done >= iters / 4,
               "fuzz %s: %d iterations (%.1f s budget): %d errors, %d valid, %d insane, %d without message", path,
               done, max_seconds, n_err, n_ok, insane, silent);
    free(b);
    free(whole);
}

static void test_open_errors(void) {
    char p[512];
    dr_st_file f;
    path_in(p, sizeof p, g_tmp, "does-not-exist.safetensors");
    dr_error_clear();
    dr_status st = dr_st_open(p, &f);
    CHECK(st == DR_ERR_IO && strstr(dr_last_error(), "does-not-exist"), "open missing: st %d msg %s", st,
          dr_last_error());
    dr_error_clear();
    st = dr_st_open(g_tmp, &f);
    CHECK(st != DR_OK && strstr(dr_last_error(), g_tmp), "open a directory: st %d msg %s", st, dr_last_error());
    path_in(p, sizeof p, g_tmp, "empty.safetensors");
    write_file(p, "", 0);
    dr_error_clear();
    st = dr_st_open(p, &f);
    CHECK(st == DR_ERR_FORMAT && strstr(dr_last_error(), "empty.safetensors"), "open empty file: st %d msg %s", st,
          dr_last_error());
    unlink(p);
}

/* Write a shard with tensors names[] of n floats each, value = base + i. */
static int write_shard(const char *path, int n, const char *const *names, float base) {
    int ndims[8];
    int64_t shapes[8][DR_ST_MAX_DIMS];
    float vals[8][4];
    const float *datas[8];
    for (int i = 0; i < n; i++) {
        ndims[i] = 1;
        shapes[i][0] = 4;
        for (int k = 0; k < 4; k++)
            vals[i][k] = base + (float)(10 * i + k);
        datas[i] = vals[i];
    }
    return dr_st_write_f32(path, n, names, ndims, (const int64_t(*)[DR_ST_MAX_DIMS])shapes, datas) == DR_OK;
}

static void write_text(const char *dir, const char *name, const char *text) {
    char p[512];
    path_in(p, sizeof p, dir, name);
    CHECK(write_file(p, text, strlen(text)), "cannot write %s", p);
}

/* The directory's index replaced by `index`: opening it must fail with
 * `want` and a message that names `needle`. */
static void bad_index(const char *d, const char *index, dr_status want, const char *needle, const char *what) {
    write_text(d, "model.safetensors.index.json", index);
    dr_error_clear();
    dr_st_set s;
    const dr_status st = dr_st_open_dir(d, &s);
    CHECK(st == want && strstr(dr_last_error(), needle), "%s: st %d msg %s", what, st, dr_last_error());
    if (st == DR_OK)
        dr_st_close_set(&s);
}

static void test_dirs(void) {
    dr_st_set s;
    dr_status st;
    char p1[512], p2[512];
    const char *S1 = "model-00001-of-00002.safetensors", *S2 = "model-00002-of-00002.safetensors";

    /* no safetensors at all */
    char *d = make_subdir("empty");
    write_text(d, "other.txt", "hi");
    dr_error_clear();
    st = dr_st_open_dir(d, &s);
    CHECK(st != DR_OK && strstr(dr_last_error(), d), "empty dir: st %d msg %s", st, dr_last_error());
    CHECK(s.n_files == 0 && s.n_tensors == 0, "empty dir: set not cleared");
    rm_dir(d);

    /* directory that does not exist */
    char missing[512];
    path_in(missing, sizeof missing, g_tmp, "no-such-dir");
    dr_error_clear();
    st = dr_st_open_dir(missing, &s);
    CHECK(st != DR_OK && strstr(dr_last_error(), "no-such-dir"), "missing dir: st %d msg %s", st, dr_last_error());

    /* sharded with an index */
    d = make_subdir("sharded");
    const char *n1[] = {"layer.a", "layer.b"}, *n2[] = {"layer.c"};
    path_in(p1, sizeof p1, d, S1);
    path_in(p2, sizeof p2, d, S2);
    CHECK(write_shard(p1, 2, n1, 100.0f) && write_shard(p2, 1, n2, 200.0f), "write shards: %s", dr_last_error());
    write_text(d, "model.safetensors.index.json",
               "{\"metadata\":{\"total_size\":48},\"weight_map\":{\"layer.a\":\"model-00001-of-00002.safetensors\","
               "\"layer.b\":\"model-00001-of-00002.safetensors\",\"layer.c\":\"model-00002-of-00002.safetensors\"}}");
    st = dr_st_open_dir(d, &s);
    CHECK(st == DR_OK, "sharded dir: %s", dr_last_error());
    if (st == DR_OK) {
        CHECK(s.n_files == 2 && s.n_tensors == 3, "sharded: %d files %d tensors", s.n_files, s.n_tensors);
        const dr_st_tensor *a = dr_st_find(&s, "layer.a"), *b = dr_st_find(&s, "layer.b"),
                           *c = dr_st_find(&s, "layer.c");
        CHECK(a && b && c, "sharded: tensors missing");
        CHECK(dr_st_find(&s, "layer.d") == NULL && dr_st_find(&s, "") == NULL, "sharded: found an absent name");
        float v;
        if (a && b && c) {
            memcpy(&v, (const char *)b->data + 4, 4);
            CHECK(v == 111.0f, "layer.b[1] = %g want 111", v);
            memcpy(&v, (const char *)c->data + 12, 4);
            CHECK(v == 203.0f, "layer.c[3] = %g want 203", v);
            CHECK(strstr(a->file, S1) && strstr(c->file, S2), "sharded: file attribution %s / %s", a->file,
                  c->file);
        }
        dr_st_close_set(&s);
    }

    /* index names a tensor that no shard holds */
    bad_index(d, "{\"weight_map\":{\"layer.a\":\"model-00001-of-00002.safetensors\",\"layer.ghost\":"
              "\"model-00002-of-00002.safetensors\",\"layer.c\":\"model-00002-of-00002.safetensors\"}}",
              DR_ERR_FORMAT, "layer.ghost", "index names a missing tensor");

    /* index places a tensor in the wrong shard */
    bad_index(d, "{\"weight_map\":{\"layer.a\":\"model-00002-of-00002.safetensors\",\"layer.c\":"
              "\"model-00002-of-00002.safetensors\"}}",
              DR_ERR_FORMAT, "layer.a", "index names the wrong shard");

    /* index names a shard file that does not exist */
    bad_index(d, "{\"weight_map\":{\"layer.a\":\"model-00001-of-00002.safetensors\",\"layer.z\":"
              "\"model-00009-of-00009.safetensors\"}}",
              DR_ERR_IO, "model-00009-of-00009", "index names a missing shard");

    /* index escaping the directory */
    bad_index(d, "{\"weight_map\":{\"layer.a\":\"../x.safetensors\"}}", DR_ERR_FORMAT, "layer.a", "index with ../");

    /* index: weight_map value not a string / weight_map missing / bad JSON */
    bad_index(d, "{\"weight_map\":{\"layer.a\":3}}", DR_ERR_FORMAT, "layer.a", "weight_map value 3");
    bad_index(d, "{\"metadata\":{}}", DR_ERR_FORMAT, "weight_map", "no weight_map");
    bad_index(d, "{\"weight_map\":{", DR_ERR_FORMAT, "model.safetensors.index.json", "index bad JSON");

    /* tensor duplicated across shards */
    const char *n2dup[] = {"layer.c", "layer.a"};
    CHECK(write_shard(p2, 2, n2dup, 300.0f), "rewrite shard 2");
    write_text(d, "model.safetensors.index.json",
               "{\"weight_map\":{\"layer.a\":\"model-00001-of-00002.safetensors\",\"layer.b\":"
               "\"model-00001-of-00002.safetensors\",\"layer.c\":\"model-00002-of-00002.safetensors\"}}");
    dr_error_clear();
    st = dr_st_open_dir(d, &s); /* (not bad_index: the set it leaves is checked below) */
    CHECK(st == DR_ERR_FORMAT && strstr(dr_last_error(), "layer.a"), "duplicate across shards: st %d msg %s", st,
          dr_last_error());
    CHECK(s.n_files == 0 && s.files == NULL, "duplicate: set not cleared");

    /* no index: model-*.safetensors are globbed; duplicates still caught */
    path_in(p1, sizeof p1, d, "model.safetensors.index.json");
    unlink(p1);
    dr_error_clear();
    st = dr_st_open_dir(d, &s);
    CHECK(st == DR_ERR_FORMAT && strstr(dr_last_error(), "layer.a"), "glob duplicate: st %d msg %s", st,
          dr_last_error());
    CHECK(write_shard(p2, 1, n2, 200.0f), "rewrite shard 2");
    st = dr_st_open_dir(d, &s);
    CHECK(st == DR_OK && s.n_files == 2 && s.n_tensors == 3 && dr_st_find(&s, "layer.c"), "glob shards: st %d %s",
          st, dr_last_error());
    if (st == DR_OK)
        dr_st_close_set(&s);

    /* a corrupt shard: error names that file */
    path_in(p1, sizeof p1, d, S1);
    write_file(p1, "\x10\0\0\0\0\0\0\0{}", 10);
    dr_error_clear();
    st = dr_st_open_dir(d, &s);
    CHECK(st == DR_ERR_FORMAT && strstr(dr_last_error(), S1), "corrupt shard: st %d msg %s", st, dr_last_error());
    rm_dir(d);

    /* plain model.safetensors */
    d = make_subdir("single");
    path_in(p1, sizeof p1, d, "model.safetensors");
    CHECK(write_shard(p1, 2, n1, 5.0f), "write single");
    st = dr_st_open_dir(d, &s);
    CHECK(st == DR_OK && s.n_files == 1 && s.n_tensors == 2, "single file dir: %s", dr_last_error());
    if (st == DR_OK)
        dr_st_close_set(&s);
    rm_dir(d);
}

int main(void) {
    snprintf(g_tmp, sizeof g_tmp, "/tmp/dr_test_st_XXXXXX");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        return 1;
    }
    test_round_trip();
    test_header_errors();
    test_header_accepted();
    test_open_errors();
    test_dirs();

    char small[512];
    path_in(small, sizeof small, g_tmp, "rt.safetensors");
    test_truncations(small, 1000);
    test_truncations(DR_TEST_DATA "/dense-f32/model.safetensors", 4096);
    test_truncations(DR_TEST_DATA "/moe-bf16/model.safetensors", 2048);
    test_fuzz(small, 5000, 3.0);
    test_fuzz(DR_TEST_DATA "/dense-f32/model.safetensors", 3000, 5.0);

    rm_dir(g_tmp);
    return TEST_DONE();
}
