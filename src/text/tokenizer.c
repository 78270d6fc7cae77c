/* text/tokenizer.c - loading a tokenizer: tokenizer.json (model, added
 * tokens, normalizer, pre-tokenizer, decoder, post-processor) through
 * jansson, plus the sidecar files tokenizer_config.json (eos_token,
 * chat_template), generation_config.json (eos_token_id) and
 * chat_template.jinja. Also the vocabulary accessors.
 *
 * Every value read from a file is type-checked; a failure names the file
 * and the JSON path of the offending field. Component types this build does
 * not implement are refused with their name (DR_ERR_UNSUPPORTED), never
 * silently ignored.
 */
#include "text/tok_internal.h"
#include "text/bytelevel.h"
#include "text/utf8.h"
#include "util/status.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <utf8proc.h>

#define MAX_TOKEN_ID (1 << 24) /* ids beyond this are refused (memory bound) */

/* GPT-2's pre-tokenizer pattern, used by ByteLevel with use_regex: true. */
static const char GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* ---- small helpers ------------------------------------------------------------- */

static dr_status read_file(const char *path, char **buf, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return DR_FAIL(DR_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    char *b = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 65536 + 1 > cap) {
            size_t nc = cap ? cap * 2 : 1 << 20;
            char *nb = realloc(b, nc);
            if (!nb) {
                free(b);
                fclose(f);
                return DR_FAIL(DR_ERR_NOMEM, "%s: out of memory reading the file", path);
            }
            b = nb;
            cap = nc;
        }
        size_t r = fread(b + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0) {
            if (ferror(f)) {
                free(b);
                fclose(f);
                return DR_FAIL(DR_ERR_IO, "%s: read error", path);
            }
            break;
        }
    }
    fclose(f);
    b[n] = '\0';
    *buf = b;
    *len = n;
    return DR_OK;
}

static bool file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static char *join_path(const char *dir, const char *file) {
    size_t a = strlen(dir), b = strlen(file);
    char *p = malloc(a + b + 2);
    if (!p)
        return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, file, b + 1);
    return p;
}

static char *xstrndup(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

static const char *type_name(const json_t *j) {
    switch (json_typeof(j)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    default:
        return "null";
    }
}

/* Optional boolean field: absent or null gives `def`. */
static dr_status get_bool(const char *file, const json_t *obj, const char *where, const char *key,
                          bool def, bool *out) {
    const json_t *v = json_object_get(obj, key);
    *out = def;
    if (!v || json_is_null(v))
        return DR_OK;
    if (!json_is_boolean(v))
        return DR_FAIL(DR_ERR_FORMAT, "%s: %s.%s: expected a boolean, found %s", file, where, key,
                       type_name(v));
    *out = json_is_true(v);
    return DR_OK;
}

/* The "type" string of a component object. */
static dr_status get_type(const char *file, const json_t *obj, const char *where,
                          const char **type) {
    if (!json_is_object(obj))
        return DR_FAIL(DR_ERR_FORMAT, "%s: %s: expected an object, found %s", file, where,
                       type_name(obj));
    const json_t *t = json_object_get(obj, "type");
    if (!json_is_string(t))
        return DR_FAIL(DR_ERR_FORMAT, "%s: %s.type: expected a string, found %s", file, where,
                       t ? type_name(t) : "nothing");
    *type = json_string_value(t);
    return DR_OK;
}

static dr_status get_id(const char *file, const json_t *v, const char *where, int32_t *id) {
    if (!json_is_integer(v))
        return DR_FAIL(DR_ERR_FORMAT, "%s: %s: expected an integer token id, found %s", file, where,
                       v ? type_name(v) : "nothing");
    json_int_t x = json_integer_value(v);
    if (x < 0 || x >= MAX_TOKEN_ID)
        return DR_FAIL(DR_ERR_FORMAT, "%s: %s: token id %lld out of range [0, %d)", file, where,
                       (long long)x, MAX_TOKEN_ID);
    *id = (int32_t)x;
    return DR_OK;
}

/* ---- components ------------------------------------------------------------------ */

static dr_status parse_normalizer(dr_tokenizer *tok, const json_t *j, const char *where,
                                  int depth) {
    if (!j || json_is_null(j))
        return DR_OK;
    const char *type;
    DR_TRY(get_type(tok->name, j, where, &type));
    int opt = 0;
    uint32_t quick = 0;
    if (strcmp(type, "Sequence") == 0) {
        const json_t *arr = json_object_get(j, "normalizers");
        if (!json_is_array(arr))
            return DR_FAIL(DR_ERR_FORMAT, "%s: %s.normalizers: expected an array", tok->name,
                           where);
        if (depth > 4)
            return DR_FAIL(DR_ERR_UNSUPPORTED, "%s: %s: normalizer Sequence nested too deeply",
                           tok->name, where);
        size_t i;
        const json_t *e;
        json_array_foreach(arr, i, e) {
            char sub[128];
            snprintf(sub, sizeof sub, "%s.normalizers[%zu]", where, i);
            DR_TRY(parse_normalizer(tok, e, sub, depth + 1));
        }
        return DR_OK;
    } else if (strcmp(type, "NFC") == 0) {
        opt = UTF8PROC_STABLE | UTF8PROC_COMPOSE;
        quick = 0x300; /* nothing below U+0300 composes or changes under NFC */
    } else if (strcmp(type, "NFD") == 0) {
        opt = UTF8PROC_STABLE | UTF8PROC_DECOMPOSE;
        quick = 0xC0;
    } else if (strcmp(type, "NFKC") == 0) {
        opt = UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT;
        quick = 0xA0;
    } else if (strcmp(type, "NFKD") == 0) {
        opt = UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT;
        quick = 0xA0;
    } else {
        return DR_FAIL(DR_ERR_UNSUPPORTED,
                       "%s: %s: normalizer type \"%s\" is not supported (supported: NFC, NFD, "
                       "NFKC, NFKD, Sequence, null)",
                       tok->name, where, type);
    }
    if (tok->norm.n == DR_NORM_MAX)
        return DR_FAIL(DR_ERR_UNSUPPORTED, "%s: %s: more than %d normalizers", tok->name, where,
                       DR_NORM_MAX);
    if (tok->norm.n == 0 || quick < tok->norm.quick_below)
        tok->norm.quick_below = quick;
    tok->norm.opts[tok->norm.n++] = opt;
    tok->norm.nfc_only = tok->norm.n == 1 && strcmp(type, "NFC") == 0;
    return DR_OK;
}

static dr_status add_pre_step(dr_tokenizer *tok, const char *where, dr_pre_step st) {
    if (tok->pre.n == DR_PRE_MAX) {
        if (st.re)
            onig_free(st.re);
        return DR_FAIL(DR_ERR_UNSUPPORTED, "%s: %s: more than %d pre-tokenizers", tok->name,
                       where, DR_PRE_MAX);
    }
    tok->pre.steps[tok->pre.n++] = st;
    return DR_OK;
}

/* Escape a literal for Oniguruma (Split with a "String" pattern). */
static char *regex_escape(const char *s, size_t *out_len) {
    size_t n = strlen(s);
    char *o = malloc(2 * n + 1), *p = o;
    if (!o)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (strchr("\\^$.|?*+()[]{}", s[i]) && s[i])
            *p++ = '\\';
        *p++ = s[i];
    }
    *p = '\0';
    *out_len = (size_t)(p - o);
    return o;
}

static dr_status parse_pretok(dr_tokenizer *tok, const json_t *j, const char *where,
                              const dr_tokenizer_options *opts, int depth) {
    if (!j || json_is_null(j))
        return DR_OK;
    const char *type;
    DR_TRY(get_type(tok->name, j, where, &type));
    if (tok->pre.byte_level)
        return DR_FAIL(DR_ERR_UNSUPPORTED,
                       "%s: %s: a %s pre-tokenizer after ByteLevel is not supported (ByteLevel "
                       "must come last)",
                       tok->name, where, type);
    if (strcmp(type, "Sequence") == 0) {
        const json_t *arr = json_object_get(j, "pretokenizers");
        if (!json_is_array(arr))
            return DR_FAIL(DR_ERR_FORMAT, "%s: %s.pretokenizers: expected an array", tok->name,
                           where);
        if (depth > 4)
            return DR_FAIL(DR_ERR_UNSUPPORTED, "%s: %s: pre-tokenizer Sequence nested too deeply",
                           tok->name, where);
        size_t i;
        const json_t *e;
        json_array_foreach(arr, i, e) {
            char sub[128];
            snprintf(sub, sizeof sub, "%s.pretokenizers[%zu]", where, i);
            DR_TRY(parse_pretok(tok, e, sub, opts, depth + 1));
        }
        return DR_OK;
    }
    if (strcmp(type, "Split") == 0) {
        const json_t *pat = json_object_get(j, "pattern");
        const json_t *beh = json_object_get(j, "behavior");
        bool invert;
        DR_TRY(get_bool(tok->name, j, where, "invert", false, &invert));
        if (!json_is_string(beh))
            return DR_FAIL(DR_ERR_FORMAT, "%s: %s.behavior: expected a string", tok->name, where);
        if (strcmp(json_string_value(beh), "Isolated") != 0)
            return DR_FAIL(DR_ERR_UNSUPPORTED,
                           "%s: %s: Split behavior \"%s\" is not supported (supported: Isolated)",
                           tok->name, where, json_string_value(beh));
        if (invert)
            return DR_FAIL(DR_ERR_UNSUPPORTED, "%s: %s: Split with invert: true is not supported",
                           tok->name, where);
        if (!json_is_object(pat))
            return DR_FAIL(DR_ERR_FORMAT, "%s: %s.pattern: expected an object", tok->name, where);
        const json_t *re = json_object_get(pat, "Regex"), *str = json_object_get(pat, "String");
        dr_pre_step st = {.kind = DR_PRE_SPLIT};
        dr_status s;
        if (json_is_string(re)) {
            const char *p = json_string_value(re);
            size_t n = json_string_length(re);
            if (opts && opts->split_regex_override) {
                p = opts->split_regex_override;
                n = strlen(p);
            }
            s = dr_regex_compile(p, n, &st.re);
            st.fast = dr_regex_fast_kind(p, n);
        } else if (json_is_string(str)) {
            size_t n;
            char *esc = regex_escape(json_string_value(str), &n);
            if (!esc)
                return DR_FAIL(DR_ERR_NOMEM, "%s: out of memory", tok->name);
            s = dr_regex_compile(esc, n, &st.re);
            free(esc);
        } else {
            return DR_FAIL(DR_ERR_FORMAT,
                           "%s: %s.pattern: expected {\"Regex\": string} or {\"String\": string}",
                           tok->name, where);
        }
        if (s != DR_OK)
            return dr_error_prefix(s, "%s: %s.pattern: ", tok->name, where);
        return add_pre_step(tok, where, st);
    }
    if (strcmp(type, "ByteLevel") == 0) {
        dr_pre_step st = {.kind = DR_PRE_BYTELEVEL};
        bool use_regex;
        DR_TRY(get_bool(tok->name, j, where, "add_prefix_space", true, &st.add_prefix_space));
        DR_TRY(get_bool(tok->name, j, where, "use_regex", true, &use_regex));
        if (use_regex)
            DR_TRY(dr_regex_compile(GPT2_PATTERN, sizeof GPT2_PATTERN - 1, &st.re));
        DR_TRY(add_pre_step(tok, where, st));
        tok->pre.byte_level = true;
        return DR_OK;
    }
    return DR_FAIL(DR_ERR_UNSUPPORTED,
                   "%s: %s: pre-tokenizer type \"%s\" is not supported (supported: Split, "
                   "ByteLevel, Sequence, null)",
                   tok->name, where, type);
}

static dr_status parse_decoder(dr_tokenizer *tok, const json_t *j) {
    if (!j || json_is_null(j))
        return DR_FAIL(DR_ERR_UNSUPPORTED,
                       "%s: decoder: null is not supported (supported: ByteLevel)", tok->name);
    const char *type;
    DR_TRY(get_type(tok->name, j, "decoder", &type));
    if (strcmp(type, "ByteLevel") != 0)
        return DR_FAIL(DR_ERR_UNSUPPORTED,
                       "%s: decoder: type \"%s\" is not supported (supported: ByteLevel)",
                       tok->name, type);
    return DR_OK;
}

static dr_status parse_post(dr_tokenizer *tok, const json_t *j) {
    if (!j || json_is_null(j))
        return DR_OK;
    const char *type;
    DR_TRY(get_type(tok->name, j, "post_processor", &type));
    if (strcmp(type, "ByteLevel") != 0) /* ByteLevel only adjusts offsets */
        return DR_FAIL(DR_ERR_UNSUPPORTED,
                       "%s: post_processor: type \"%s\" is not supported (supported: ByteLevel, "
                       "null)",
                       tok->name, type);
    return DR_OK;
}

/* ---- model ------------------------------------------------------------------------ */

static dr_status parse_model_options(dr_tokenizer *tok, const json_t *m) {
    dr_bpe *b = &tok->bpe;
    const json_t *v;
    v = json_object_get(m, "dropout");
    if (v && !json_is_null(v)) {
        if (!json_is_number(v))
            return DR_FAIL(DR_ERR_FORMAT, "%s: model.dropout: expected a number or null",
                           tok->name);
        if (json_number_value(v) != 0.0)
            return DR_FAIL(DR_ERR_UNSUPPORTED,
                           "%s: model.dropout: BPE dropout %g is not supported (encoding must be "
                           "deterministic)",
                           tok->name, json_number_value(v));
    }
    const char *affix[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        v = json_object_get(m, affix[i]);
        if (!v || json_is_null(v))
            continue;
        if (!json_is_string(v))
            return DR_FAIL(DR_ERR_FORMAT, "%s: model.%s: expected a string or null", tok->name,
                           affix[i]);
        if (json_string_length(v) != 0)
            return DR_FAIL(DR_ERR_UNSUPPORTED, "%s: model.%s \"%s\" is not supported", tok->name,
                           affix[i], json_string_value(v));
    }
    DR_TRY(get_bool(tok->name, m, "model", "fuse_unk", false, &b->fuse_unk));
    DR_TRY(get_bool(tok->name, m, "model", "byte_fallback", false, &b->byte_fallback));
    DR_TRY(get_bool(tok->name, m, "model", "ignore_merges", false, &b->ignore_merges));
    return DR_OK;
}

static dr_status parse_vocab(dr_tokenizer *tok, const json_t *vocab, int32_t *max_id) {
    if (!json_is_object(vocab))
        return DR_FAIL(DR_ERR_FORMAT, "%s: model.vocab: expected an object {token: id}, found %s",
                       tok->name, vocab ? type_name(vocab) : "nothing");
    const char *key;
    const json_t *val;
    size_t nv = json_object_size(vocab);
    if (!dr_strmap_reserve(&tok->bpe.vocab, nv, nv * 8 + 4096))
        return DR_FAIL(DR_ERR_NOMEM, "%s: out of memory", tok->name);
    void *iter = json_object_iter((json_t *)vocab);
    while (iter) {
        key = json_object_iter_key(iter);
        val = json_object_iter_value(iter);
        if (!json_is_integer(val) || json_integer_value(val) < 0 ||
            json_integer_value(val) >= MAX_TOKEN_ID)
            return DR_FAIL(DR_ERR_FORMAT, "%s: model.vocab[\"%.80s\"]: expected a token id in [0, %d)",
                           tok->name, key, MAX_TOKEN_ID);
        int32_t id = (int32_t)json_integer_value(val);
        if (!dr_strmap_put(&tok->bpe.vocab, key, strlen(key), id))
            return DR_FAIL(DR_ERR_NOMEM, "%s: out of memory", tok->name);
        if (id > *max_id)
            *max_id = id;
        iter = json_object_iter_next((json_t *)vocab, iter);
    }
    return DR_OK;
}

static dr_status merge_token(dr_tokenizer *tok, size_t i, const char *s, size_t n, int32_t *id) {
    const int32_t *p = dr_strmap_get(&tok->bpe.vocab, s, n);
    if (!p)
        return DR_FAIL(DR_ERR_FORMAT, "%s: model.merges[%zu]: token \"%.*s\" is not in the vocabulary",
                       tok->name, i, (int)(n > 80 ? 80 : n), s);
    *id = *p;
    return DR_OK;
}

static dr_status parse_merges(dr_tokenizer *tok, const json_t *merges) {
    if (!json_is_array(merges))
        return DR_FAIL(DR_ERR_FORMAT, "%s: model.merges: expected an array, found %s", tok->name,
                       merges ? type_name(merges) : "nothing");
    size_t n = json_array_size(merges);
    if (n >= (size_t)INT32_MAX)
        return DR_FAIL(DR_ERR_FORMAT, "%s: model.merges: too many merges", tok->name);
    char *buf = NULL;
    size_t cap = 0;
    dr_status st = DR_OK;
    if (!dr_bpe_reserve_merges(&tok->bpe, n))
        return DR_FAIL(DR_ERR_NOMEM, "%s: out of memory", tok->name);
    for (size_t i = 0; i < n && st == DR_OK; i++) {
        const json_t *e = json_array_get(merges, i);
        const char *a, *b;
        size_t la, lb;
        if (json_is_string(e)) {
            /* legacy "a b": exactly one space (real spaces are written Ġ) */
            const char *s = json_string_value(e), *sp = strchr(s, ' ');
            if (!sp || strchr(sp + 1, ' ')) {
                st = DR_FAIL(DR_ERR_FORMAT,
                             "%s: model.merges[%zu]: \"%.80s\" is not two tokens separated by one "
                             "space",
                             tok->name, i, s);
                break;
            }
            a = s;
            la = (size_t)(sp - s);
            b = sp + 1;
            lb = strlen(b);
        } else if (json_is_array(e) && json_array_size(e) == 2 &&
                   json_is_string(json_array_get(e, 0)) && json_is_string(json_array_get(e, 1))) {
            a = json_string_value(json_array_get(e, 0));
            la = json_string_length(json_array_get(e, 0));
            b = json_string_value(json_array_get(e, 1));
            lb = json_string_length(json_array_get(e, 1));
        } else {
            st = DR_FAIL(DR_ERR_FORMAT,
                         "%s: model.merges[%zu]: expected \"a b\" or [\"a\", \"b\"], found %s",
                         tok->name, i, type_name(e));
            break;
        }
        int32_t ia = 0, ib = 0, im;
        if ((st = merge_token(tok, i, a, la, &ia)) != DR_OK ||
            (st = merge_token(tok, i, b, lb, &ib)) != DR_OK)
            break;
        if (la + lb > cap) {
            size_t nc = (la + lb) * 2 + 64;
            char *nb = realloc(buf, nc);
            if (!nb) {
                st = DR_FAIL(DR_ERR_NOMEM, "%s: out of memory", tok->name);
                break;
            }
            buf = nb;
            cap = nc;
        }
        memcpy(buf, a, la);
        memcpy(buf + la, b, lb);
        const int32_t *pm = dr_strmap_get(&tok->bpe.vocab, buf, la + lb);
        if (!pm) {
            st = DR_FAIL(DR_ERR_FORMAT,
                         "%s: model.merges[%zu]: merged token \"%.*s\" is not in the vocabulary",
                         tok->name, i, (int)(la + lb > 80 ? 80 : la + lb), buf);
            break;
        }
        im = *pm;
        if (!dr_bpe_add_merge(&tok->bpe, ia, ib, (int32_t)i, im))
            st = DR_FAIL(DR_ERR_NOMEM, "%s: out of memory", tok->name);
    }
    free(buf);
    return st;
}

static dr_status parse_added(dr_tokenizer *tok, const json_t *arr, int32_t *max_id) {
    if (!arr || json_is_null(arr))
        return DR_OK;
    if (!json_is_array(arr))
        return DR_FAIL(DR_ERR_FORMAT, "%s: added_tokens: expected an array, found %s", tok->name,
                       type_name(arr));
    size_t n = json_array_size(arr);
    tok->added = calloc(n ? n : 1, sizeof *tok->added);
    if (!tok->added)
        return DR_FAIL(DR_ERR_NOMEM, "%s: out of memory", tok->name);
    for (size_t i = 0; i < n; i++) {
        const json_t *e = json_array_get(arr, i);
        char where[64];
        snprintf(where, sizeof where, "added_tokens[%zu]", i);
        if (!json_is_object(e))
            return DR_FAIL(DR_ERR_FORMAT, "%s: %s: expected an object, found %s", tok->name, where,
                           type_name(e));
        dr_added_token at = {0};
        char w2[80];
        snprintf(w2, sizeof w2, "%s.id", where);
        DR_TRY(get_id(tok->name, json_object_get(e, "id"), w2, &at.id));
        const json_t *c = json_object_get(e, "content");
        if (!json_is_string(c))
            return DR_FAIL(DR_ERR_FORMAT, "%s: %s.content: expected a string", tok->name, where);
        if (json_string_length(c) == 0)
            continue; /* tokenizers ignores empty added tokens */
        DR_TRY(get_bool(tok->name, e, where, "single_word", false, &at.single_word));
        DR_TRY(get_bool(tok->name, e, where, "lstrip", false, &at.lstrip));
        DR_TRY(get_bool(tok->name, e, where, "rstrip", false, &at.rstrip));
        DR_TRY(get_bool(tok->name, e, where, "normalized", true, &at.normalized));
        DR_TRY(get_bool(tok->name, e, where, "special", false, &at.special));
        at.len = json_string_length(c);
        at.content = xstrndup(json_string_value(c), at.len);
        if (!at.content)
            return DR_FAIL(DR_ERR_NOMEM, "%s: out of memory", tok->name);
        tok->added[tok->n_added++] = at;
        if (at.id > *max_id)
            *max_id = at.id;
    }
    return DR_OK;
}

/* Build the match strings and tries of the added tokens (after the
 * normalizer is known). */
static dr_status build_added(dr_tokenizer *tok) {
    for (size_t i = 0; i < tok->n_added; i++) {
        dr_added_token *at = &tok->added[i];
        at->match = at->content;
        at->match_len = at->len;
        if (at->normalized) {
            uint8_t *o;
            size_t ol;
            dr_status st = dr_normalize(&tok->norm, (const uint8_t *)at->content, at->len, &o, &ol);
            if (st != DR_OK)
                return dr_error_prefix(st, "%s: added_tokens[%zu].content: ", tok->name, i);
            if (o != (uint8_t *)at->content)
                at->match = (char *)o;
            at->match_len = ol;
        }
        dr_trie *t = at->normalized ? &tok->trie_norm : &tok->trie_raw;
        if (!dr_trie_add(t, at->match, at->match_len, (int32_t)i) ||
            !dr_strmap_put(&tok->added_map, at->content, at->len, at->id))
            return DR_FAIL(DR_ERR_NOMEM, "%s: out of memory", tok->name);
    }
    return DR_OK;
}

/* Per-id string and decoded-bytes tables. */
static dr_status build_tables(dr_tokenizer *tok, int32_t max_id) {
    size_t nv = (size_t)max_id + 1;
    tok->n_vocab = max_id + 1;
    tok->flags = calloc(nv, 1);
    tok->str_off = calloc(nv, sizeof *tok->str_off);
    tok->str_len = calloc(nv, sizeof *tok->str_len);
    tok->bytes_off = calloc(nv, sizeof *tok->bytes_off);
    tok->bytes_len = calloc(nv, sizeof *tok->bytes_len);
    if (!tok->flags || !tok->str_off || !tok->str_len || !tok->bytes_off || !tok->bytes_len)
        return DR_FAIL(DR_ERR_NOMEM, "%s: out of memory", tok->name);

    /* the vocabulary's key arena already holds every model string */
    const dr_strmap *v = &tok->bpe.vocab;
    size_t total = v->keys_len;
    for (size_t i = 0; i < tok->n_added; i++)
        total += tok->added[i].len + 1;
    if (total >= UINT32_MAX)
        return DR_FAIL(DR_ERR_FORMAT, "%s: vocabulary strings exceed 4 GiB", tok->name);
    tok->strs = malloc(total ? total : 1);
    tok->bytes = malloc(total ? total : 1); /* decoded bytes are never longer */
    if (!tok->strs || !tok->bytes)
        return DR_FAIL(DR_ERR_NOMEM, "%s: out of memory", tok->name);
    memcpy(tok->strs, v->keys, v->keys_len);
    for (size_t s = 0; s < v->cap; s++) {
        const dr_strmap_slot *sl = &v->slots[s];
        if (sl->key_len == UINT32_MAX)
            continue;
        tok->str_off[sl->val] = sl->key_off;
        tok->str_len[sl->val] = sl->key_len;
        tok->flags[sl->val] = DR_TOKF_PRESENT;
    }
    size_t pos = v->keys_len;
    for (size_t i = 0; i < tok->n_added; i++) {
        const dr_added_token *at = &tok->added[i];
        memcpy(tok->strs + pos, at->content, at->len + 1);
        tok->str_off[at->id] = (uint32_t)pos;
        tok->str_len[at->id] = (uint32_t)at->len;
        tok->flags[at->id] = DR_TOKF_PRESENT | DR_TOKF_ADDED | (at->special ? DR_TOKF_SPECIAL : 0);
        pos += at->len + 1;
    }

    /* decoded bytes: the ByteLevel decoder maps every character back to its
     * byte; a token with a character outside the alphabet is kept as is */
    int16_t inv[0x100 + 68];
    for (size_t c = 0; c < sizeof inv / sizeof inv[0]; c++)
        inv[c] = -1;
    for (int b = 0; b < 256; b++)
        inv[dr_bytelevel_char((uint8_t)b)] = (int16_t)b;
    size_t bpos = 0;
    for (size_t id = 0; id < nv; id++) {
        if (!(tok->flags[id] & DR_TOKF_PRESENT))
            continue;
        const uint8_t *s = (const uint8_t *)tok->strs + tok->str_off[id];
        size_t n = tok->str_len[id], i = 0, o = bpos;
        bool ok = true;
        while (i < n) {
            size_t cl;
            dr_utf8_kind kind;
            dr_utf8_scan(s + i, n - i, &kind);
            uint32_t cp = kind == DR_UTF8_CHAR ? dr_utf8_decode(s + i, &cl) : 0xFFFFFFFF;
            if (kind != DR_UTF8_CHAR || cp >= sizeof inv / sizeof inv[0] || inv[cp] < 0) {
                ok = false;
                break;
            }
            tok->bytes[o++] = (uint8_t)inv[cp];
            i += cl;
        }
        if (!ok) {
            memcpy(tok->bytes + bpos, s, n);
            o = bpos + n;
        }
        tok->bytes_off[id] = (uint32_t)bpos;
        tok->bytes_len[id] = (uint32_t)(o - bpos);
        bpos = o;
    }

    /* byte-level model input: the one-character token of every byte */
    dr_bpe *b = &tok->bpe;
    b->byte_level = tok->pre.byte_level;
    for (int c = 0; c < 256; c++) {
        uint8_t u[4];
        size_t ul = dr_utf8_encode(dr_bytelevel_char((uint8_t)c), u);
        const int32_t *p = dr_strmap_get(&b->vocab, u, ul);
        b->byte_id[c] = p ? *p : -1;
        char fb[8];
        snprintf(fb, sizeof fb, "<0x%02X>", c);
        p = dr_strmap_get(&b->vocab, fb, strlen(fb));
        b->fallback_id[c] = p ? *p : -1;
    }
    return DR_OK;
}

static dr_status parse_tokenizer_json(dr_tokenizer *tok, const char *buf, size_t len,
                                      const dr_tokenizer_options *opts) {
    json_error_t err;
    json_t *root = json_loadb(buf, len, 0, &err);
    if (!root)
        return DR_FAIL(DR_ERR_FORMAT, "%s: invalid JSON at line %d, column %d: %s", tok->name,
                       err.line, err.column, err.text);
    dr_status st = DR_OK;
    int32_t max_id = -1;
    if (!json_is_object(root)) {
        st = DR_FAIL(DR_ERR_FORMAT, "%s: expected a JSON object at the top level", tok->name);
        goto done;
    }
    const json_t *model = json_object_get(root, "model");
    if (!json_is_object(model)) {
        st = DR_FAIL(DR_ERR_FORMAT, "%s: model: expected an object, found %s", tok->name,
                     model ? type_name(model) : "nothing");
        goto done;
    }
    const json_t *mt = json_object_get(model, "type");
    if (mt && !json_is_string(mt)) {
        st = DR_FAIL(DR_ERR_FORMAT, "%s: model.type: expected a string", tok->name);
        goto done;
    }
    if (mt && strcmp(json_string_value(mt), "BPE") != 0) {
        st = DR_FAIL(DR_ERR_UNSUPPORTED,
                     "%s: model.type \"%s\" is not supported (supported: BPE)", tok->name,
                     json_string_value(mt));
        goto done;
    }
    if ((st = parse_model_options(tok, model)) != DR_OK ||
        (st = parse_vocab(tok, json_object_get(model, "vocab"), &max_id)) != DR_OK ||
        (st = parse_merges(tok, json_object_get(model, "merges"))) != DR_OK ||
        (st = parse_added(tok, json_object_get(root, "added_tokens"), &max_id)) != DR_OK ||
        (st = parse_normalizer(tok, json_object_get(root, "normalizer"), "normalizer", 0)) !=
            DR_OK ||
        (st = parse_pretok(tok, json_object_get(root, "pre_tokenizer"), "pre_tokenizer", opts,
                           0)) != DR_OK ||
        (st = parse_decoder(tok, json_object_get(root, "decoder"))) != DR_OK ||
        (st = parse_post(tok, json_object_get(root, "post_processor"))) != DR_OK)
        goto done;
    const json_t *unk = json_object_get(model, "unk_token");
    tok->bpe.unk_id = -1;
    if (unk && !json_is_null(unk)) {
        if (!json_is_string(unk)) {
            st = DR_FAIL(DR_ERR_FORMAT, "%s: model.unk_token: expected a string or null",
                         tok->name);
            goto done;
        }
        const int32_t *p = dr_strmap_get(&tok->bpe.vocab, json_string_value(unk),
                                         json_string_length(unk));
        if (!p) {
            st = DR_FAIL(DR_ERR_FORMAT, "%s: model.unk_token \"%s\" is not in the vocabulary",
                         tok->name, json_string_value(unk));
            goto done;
        }
        tok->bpe.unk_id = *p;
    }
    if (max_id < 0) {
        st = DR_FAIL(DR_ERR_FORMAT, "%s: the vocabulary is empty", tok->name);
        goto done;
    }
    if ((st = build_added(tok)) != DR_OK || (st = build_tables(tok, max_id)) != DR_OK)
        goto done;
done:
    json_decref(root);
    return st;
}

/* ---- sidecar files -------------------------------------------------------------- */

static dr_status add_eos(dr_tokenizer *tok, int32_t id) {
    for (size_t i = 0; i < tok->n_eos; i++)
        if (tok->eos[i] == id)
            return DR_OK;
    if (tok->n_eos == sizeof tok->eos / sizeof tok->eos[0])
        return DR_FAIL(DR_ERR_UNSUPPORTED, "more than %zu eos ids",
                       sizeof tok->eos / sizeof tok->eos[0]);
    tok->eos[tok->n_eos++] = id;
    return DR_OK;
}

static dr_status load_json_file(const char *path, json_t **out) {
    char *buf;
    size_t len;
    DR_TRY(read_file(path, &buf, &len));
    json_error_t err;
    *out = json_loadb(buf, len, 0, &err);
    free(buf);
    if (!*out)
        return DR_FAIL(DR_ERR_FORMAT, "%s: invalid JSON at line %d, column %d: %s", path, err.line,
                       err.column, err.text);
    if (!json_is_object(*out)) {
        json_decref(*out);
        *out = NULL;
        return DR_FAIL(DR_ERR_FORMAT, "%s: expected a JSON object at the top level", path);
    }
    return DR_OK;
}

static dr_status read_tokenizer_config(dr_tokenizer *tok, const char *path) {
    json_t *root;
    DR_TRY(load_json_file(path, &root));
    dr_status st = DR_OK;
    const json_t *eos = json_object_get(root, "eos_token");
    if (json_is_object(eos))
        eos = json_object_get(eos, "content");
    if (eos && !json_is_null(eos)) {
        if (!json_is_string(eos)) {
            st = DR_FAIL(DR_ERR_FORMAT, "%s: eos_token: expected a string, {\"content\": string} "
                         "or null", path);
            goto done;
        }
        int32_t id = dr_tokenizer_token_id(tok, json_string_value(eos));
        if (id < 0) {
            st = DR_FAIL(DR_ERR_FORMAT, "%s: eos_token \"%s\" is not a token of the tokenizer",
                         path, json_string_value(eos));
            goto done;
        }
        if ((st = add_eos(tok, id)) != DR_OK)
            goto done;
    }
    const json_t *ct = json_object_get(root, "chat_template");
    if (json_is_array(ct)) {
        /* [{name, template}, ...]: the "default" one, else the first */
        const json_t *pick = NULL;
        size_t i;
        const json_t *e;
        json_array_foreach(ct, i, e) {
            const json_t *nm = json_object_get(e, "name");
            if (!pick || (json_is_string(nm) && strcmp(json_string_value(nm), "default") == 0))
                pick = e;
        }
        ct = pick ? json_object_get(pick, "template") : NULL;
    }
    if (ct && !json_is_null(ct)) {
        if (!json_is_string(ct)) {
            st = DR_FAIL(DR_ERR_FORMAT, "%s: chat_template: expected a string", path);
            goto done;
        }
        if (!tok->chat_template &&
            !(tok->chat_template = xstrndup(json_string_value(ct), json_string_length(ct))))
            st = DR_FAIL(DR_ERR_NOMEM, "%s: out of memory", path);
    }
done:
    json_decref(root);
    return st;
}

static dr_status read_generation_config(dr_tokenizer *tok, const char *path) {
    json_t *root;
    DR_TRY(load_json_file(path, &root));
    dr_status st = DR_OK;
    const json_t *e = json_object_get(root, "eos_token_id");
    if (e && !json_is_null(e)) {
        size_t n = json_is_array(e) ? json_array_size(e) : 1;
        for (size_t i = 0; i < n && st == DR_OK; i++) {
            const json_t *v = json_is_array(e) ? json_array_get(e, i) : e;
            int32_t id;
            if ((st = get_id(path, v, "eos_token_id", &id)) != DR_OK)
                break;
            if (id >= tok->n_vocab || !(tok->flags[id] & DR_TOKF_PRESENT)) {
                st = DR_FAIL(DR_ERR_FORMAT, "%s: eos_token_id %d is not a token of the tokenizer",
                             path, id);
                break;
            }
            st = add_eos(tok, id);
        }
    }
    json_decref(root);
    return st;
}

static dr_status read_sidecars(dr_tokenizer *tok, const char *dir) {
    const char *files[] = {"chat_template.jinja", "tokenizer_config.json",
                           "generation_config.json"};
    dr_status st = DR_OK;
    for (int i = 0; i < 3 && st == DR_OK; i++) {
        char *p = join_path(dir, files[i]);
        if (!p)
            return DR_FAIL(DR_ERR_NOMEM, "out of memory");
        if (file_exists(p)) {
            if (i == 0) {
                size_t len;
                char *t;
                st = read_file(p, &t, &len);
                if (st == DR_OK)
                    tok->chat_template = t;
            } else if (i == 1) {
                st = read_tokenizer_config(tok, p);
            } else {
                st = read_generation_config(tok, p);
            }
        }
        free(p);
    }
    return st;
}

static void mark_eog(dr_tokenizer *tok) {
    for (size_t i = 0; i < tok->n_eos; i++)
        tok->flags[tok->eos[i]] |= DR_TOKF_EOG;
    const char *names[] = {"<|im_end|>", "<|endoftext|>"};
    for (int i = 0; i < 2; i++) {
        int32_t id = dr_tokenizer_token_id(tok, names[i]);
        if (id >= 0)
            tok->flags[id] |= DR_TOKF_EOG;
    }
}

/* ---- public: load / free ----------------------------------------------------------- */

static dr_status tok_new(const char *name, dr_tokenizer **out) {
    dr_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok || !(tok->name = strdup(name))) {
        free(tok);
        return DR_FAIL(DR_ERR_NOMEM, "out of memory");
    }
    tok->bpe.unk_id = -1;
    pthread_mutex_init(&tok->lock, NULL);
    tok->pre.region = onig_region_new();
    tok->pre.mparam = onig_new_match_param();
    if (!tok->pre.region || !tok->pre.mparam) {
        dr_tokenizer_free(tok);
        return DR_FAIL(DR_ERR_NOMEM, "out of memory");
    }
    onig_initialize_match_param(tok->pre.mparam);
    onig_set_retry_limit_in_match_of_match_param(tok->pre.mparam, ~0UL);
    onig_set_retry_limit_in_search_of_match_param(tok->pre.mparam, ~0UL);
    *out = tok;
    return DR_OK;
}

dr_status dr_tokenizer_load_buffer(const char *json, size_t len, const char *name,
                                   const dr_tokenizer_options *opts, dr_tokenizer **out) {
    *out = NULL;
    if (!json)
        return DR_FAIL(DR_ERR_ARG, "dr_tokenizer_load_buffer: json is NULL");
    dr_tokenizer *tok;
    DR_TRY(tok_new(name ? name : "tokenizer.json", &tok));
    dr_status st = parse_tokenizer_json(tok, json, len, opts);
    if (st != DR_OK) {
        dr_tokenizer_free(tok);
        return st;
    }
    mark_eog(tok);
    *out = tok;
    return DR_OK;
}

dr_status dr_tokenizer_load_ex(const char *path, const dr_tokenizer_options *opts,
                               dr_tokenizer **out) {
    *out = NULL;
    if (!path)
        return DR_FAIL(DR_ERR_ARG, "dr_tokenizer_load: path is NULL");
    struct stat sb;
    if (stat(path, &sb) != 0)
        return DR_FAIL(DR_ERR_IO, "%s: %s", path, strerror(errno));
    char *dir, *file;
    if (S_ISDIR(sb.st_mode)) {
        dir = strdup(path);
        file = join_path(path, "tokenizer.json");
    } else {
        const char *slash = strrchr(path, '/');
        dir = slash ? xstrndup(path, (size_t)(slash - path) + (slash == path)) : strdup(".");
        file = strdup(path);
    }
    if (!dir || !file) {
        free(dir);
        free(file);
        return DR_FAIL(DR_ERR_NOMEM, "out of memory");
    }
    char *buf = NULL;
    size_t len;
    dr_tokenizer *tok = NULL;
    dr_status st = read_file(file, &buf, &len);
    if (st == DR_OK)
        st = tok_new(file, &tok);
    if (st == DR_OK)
        st = parse_tokenizer_json(tok, buf, len, opts);
    free(buf);
    if (st == DR_OK && !(opts && opts->no_sidecar_files))
        st = read_sidecars(tok, dir);
    free(dir);
    free(file);
    if (st != DR_OK) {
        dr_tokenizer_free(tok);
        return st;
    }
    mark_eog(tok);
    *out = tok;
    return DR_OK;
}

dr_status dr_tokenizer_load(const char *path, dr_tokenizer **out) {
    return dr_tokenizer_load_ex(path, NULL, out);
}

void dr_tokenizer_free(dr_tokenizer *tok) {
    if (!tok)
        return;
    for (size_t i = 0; i < tok->n_added; i++) {
        if (tok->added[i].match != tok->added[i].content)
            free(tok->added[i].match);
        free(tok->added[i].content);
    }
    free(tok->added);
    dr_strmap_free(&tok->added_map);
    dr_trie_free(&tok->trie_raw);
    dr_trie_free(&tok->trie_norm);
    dr_bpe_free(&tok->bpe);
    dr_pretok_free(&tok->pre);
    free(tok->flags);
    free(tok->strs);
    free(tok->str_off);
    free(tok->str_len);
    free(tok->bytes);
    free(tok->bytes_off);
    free(tok->bytes_len);
    free(tok->chat_template);
    free(tok->m_raw.m);
    free(tok->m_norm.m);
    free(tok->name);
    pthread_mutex_destroy(&tok->lock);
    free(tok);
}

/* ---- public: vocabulary ------------------------------------------------------------ */

int32_t dr_tokenizer_n_vocab(const dr_tokenizer *tok) { return tok->n_vocab; }

int32_t dr_tokenizer_token_id(const dr_tokenizer *tok, const char *str) {
    if (!str)
        return -1;
    size_t n = strlen(str);
    const int32_t *p = dr_strmap_get(&tok->added_map, str, n);
    if (!p)
        p = dr_strmap_get(&tok->bpe.vocab, str, n);
    return p ? *p : -1;
}

static bool has_id(const dr_tokenizer *tok, int32_t id) {
    return id >= 0 && id < tok->n_vocab && (tok->flags[id] & DR_TOKF_PRESENT);
}

const char *dr_tokenizer_token_str(const dr_tokenizer *tok, int32_t id, size_t *len) {
    if (!has_id(tok, id))
        return NULL;
    if (len)
        *len = tok->str_len[id];
    return tok->strs + tok->str_off[id];
}

const uint8_t *dr_tokenizer_token_bytes(const dr_tokenizer *tok, int32_t id, size_t *len) {
    if (!has_id(tok, id))
        return NULL;
    if (len)
        *len = tok->bytes_len[id];
    return tok->bytes + tok->bytes_off[id];
}

bool dr_tokenizer_is_special(const dr_tokenizer *tok, int32_t id) {
    return has_id(tok, id) && (tok->flags[id] & DR_TOKF_SPECIAL);
}

const int32_t *dr_tokenizer_eos_ids(const dr_tokenizer *tok, size_t *n) {
    *n = tok->n_eos;
    return tok->eos;
}

bool dr_tokenizer_is_eog(const dr_tokenizer *tok, int32_t id) {
    return has_id(tok, id) && (tok->flags[id] & DR_TOKF_EOG);
}

const char *dr_tokenizer_chat_template(const dr_tokenizer *tok) { return tok->chat_template; }
