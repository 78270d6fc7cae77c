/* format/config.c - config.json -> dr_hparams, with validation.
 *
 * Every value is range-checked here so that model code can trust the
 * dimensions (positive, divisible where heads are grouped, consistent list
 * lengths). Errors name the file and the field.
 */
#include "format/config.h"

#include "util/status.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DIM_MAX (1 << 24) /* any single dimension above this is a corrupt config */

typedef struct {
    json_t *text; /* object holding the text-model fields */
    json_t *root; /* top level */
    const char *label;
} cfg;

/* Integer field; `def` < 0 means required. */
static dr_status get_int(const cfg *c, const char *key, long def, long lo, long hi, int *out) {
    json_t *v = json_object_get(c->text, key);
    if (!v || json_is_null(v)) {
        if (def < 0)
            return DR_FAIL(DR_ERR_FORMAT, "%s: missing field \"%s\"", c->label, key);
        *out = (int)def;
        return DR_OK;
    }
    if (!json_is_integer(v))
        return DR_FAIL(DR_ERR_FORMAT, "%s: field \"%s\" must be an integer", c->label, key);
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return DR_FAIL(DR_ERR_FORMAT, "%s: field \"%s\" = %lld, expected %ld..%ld", c->label, key,
                       (long long)x, lo, hi);
    *out = (int)x;
    return DR_OK;
}

/* Number field of obj: *found false (and *out untouched) when absent or
 * null; an error when present with another type. */
static dr_status get_number(json_t *obj, const char *key, const char *label, double *out, bool *found) {
    json_t *v = json_object_get(obj, key);
    *found = false;
    if (!v || json_is_null(v))
        return DR_OK;
    if (!json_is_number(v))
        return DR_FAIL(DR_ERR_FORMAT, "%s: field \"%s\" must be a number", label, key);
    *out = json_number_value(v);
    *found = true;
    return DR_OK;
}

static dr_status get_bool(json_t *obj, const char *key, bool def, const char *label, bool *out) {
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return DR_OK;
    }
    if (!json_is_boolean(v))
        return DR_FAIL(DR_ERR_FORMAT, "%s: field \"%s\" must be true or false", label, key);
    *out = json_is_true(v);
    return DR_OK;
}

static dr_status parse_arch(cfg *c, dr_hparams *hp) {
    json_t *mt = json_object_get(c->text, "model_type");
    if (!json_is_string(mt))
        mt = json_object_get(c->root, "model_type");
    if (!json_is_string(mt))
        return DR_FAIL(DR_ERR_FORMAT, "%s: missing string field \"model_type\"", c->label);
    const char *s = json_string_value(mt);
    snprintf(hp->model_type, sizeof hp->model_type, "%s", s);
    if (!strcmp(s, "qwen3_5") || !strcmp(s, "qwen3_5_text"))
        hp->arch = DR_ARCH_QWEN3_5;
    else if (!strcmp(s, "qwen3_5_moe") || !strcmp(s, "qwen3_5_moe_text"))
        hp->arch = DR_ARCH_QWEN3_5_MOE;
    else if (!strcmp(s, "qwen3_next"))
        hp->arch = DR_ARCH_QWEN3_NEXT;
    else
        return DR_FAIL(DR_ERR_UNSUPPORTED,
                       "%s: model_type \"%s\" is not supported (expected qwen3_5, qwen3_5_text, "
                       "qwen3_5_moe, qwen3_5_moe_text or qwen3_next)",
                       c->label, s);
    return DR_OK;
}

static dr_status parse_layer_types(cfg *c, dr_hparams *hp) {
    json_t *lt = json_object_get(c->text, "layer_types");
    if (lt && !json_is_null(lt)) {
        if (!json_is_array(lt) || json_array_size(lt) != (size_t)hp->n_layers)
            return DR_FAIL(DR_ERR_FORMAT, "%s: \"layer_types\" must be a list of %d strings", c->label,
                           hp->n_layers);
        for (int i = 0; i < hp->n_layers; i++) {
            const char *s = json_string_value(json_array_get(lt, (size_t)i));
            if (s && !strcmp(s, "full_attention"))
                hp->is_attn[i] = true;
            else if (s && !strcmp(s, "linear_attention"))
                hp->is_attn[i] = false;
            else
                return DR_FAIL(DR_ERR_FORMAT,
                               "%s: layer_types[%d] must be \"linear_attention\" or \"full_attention\"",
                               c->label, i);
        }
        return DR_OK;
    }
    int interval;
    DR_TRY(get_int(c, "full_attention_interval", 4, 1, DR_MAX_LAYERS, &interval));
    for (int i = 0; i < hp->n_layers; i++)
        hp->is_attn[i] = (i + 1) % interval == 0;
    return DR_OK;
}

/* rope_parameters {rope_theta, partial_rotary_factor}, or the legacy top-level keys. */
static dr_status parse_rope(cfg *c, dr_hparams *hp) {
    double theta = hp->arch == DR_ARCH_QWEN3_NEXT ? 10000.0 : 10000000.0, factor = 0.25;
    const char *rkey = "rope_parameters";
    json_t *rp = json_object_get(c->text, rkey);
    if (!rp || json_is_null(rp))
        rp = json_object_get(c->text, rkey = "rope_scaling");
    if (rp && !json_is_null(rp) && !json_is_object(rp)) /* not silently the defaults */
        return DR_FAIL(DR_ERR_FORMAT, "%s: field \"%s\" must be an object", c->label, rkey);
    bool found = false;
    if (json_is_object(rp))
        DR_TRY(get_number(rp, "rope_theta", c->label, &theta, &found));
    if (!found)
        DR_TRY(get_number(c->text, "rope_theta", c->label, &theta, &found));
    found = false;
    if (json_is_object(rp))
        DR_TRY(get_number(rp, "partial_rotary_factor", c->label, &factor, &found));
    if (!found)
        DR_TRY(get_number(c->text, "partial_rotary_factor", c->label, &factor, &found));
    if (json_is_object(rp)) {
        json_t *type = json_object_get(rp, "rope_type");
        const char *ts = json_string_value(type);
        if (type && !json_is_null(type) && !ts)
            return DR_FAIL(DR_ERR_FORMAT, "%s: field \"%s.rope_type\" must be a string", c->label, rkey);
        if (ts && strcmp(ts, "default") != 0)
            return DR_FAIL(DR_ERR_UNSUPPORTED, "%s: rope_type \"%s\" is not supported (only \"default\")",
                           c->label, ts);
    }
    if (!(theta > 1.0) || !(factor > 0.0 && factor <= 1.0))
        return DR_FAIL(DR_ERR_FORMAT, "%s: rope_theta %g / partial_rotary_factor %g out of range",
                       c->label, theta, factor);
    hp->rope_theta = (float)theta;
    hp->d_rot = (int)(hp->d_head * factor);
    if (hp->d_rot % 2 != 0 || hp->d_rot < 2)
        return DR_FAIL(DR_ERR_FORMAT, "%s: rotary dims head_dim*partial_rotary_factor = %d must be even",
                       c->label, hp->d_rot);
    return DR_OK;
}

static dr_status parse_moe(cfg *c, dr_hparams *hp) {
    bool moe_arch = hp->arch != DR_ARCH_QWEN3_5;
    int def_e = hp->arch == DR_ARCH_QWEN3_NEXT ? 512 : 256, def_k = hp->arch == DR_ARCH_QWEN3_NEXT ? 10 : 8;
    if (!moe_arch)
        return DR_OK;
    DR_TRY(get_int(c, "num_experts", def_e, 0, 1 << 16, &hp->n_experts));
    DR_TRY(get_int(c, "num_experts_per_tok", def_k, 1, 1 << 16, &hp->n_experts_used));
    DR_TRY(get_int(c, "moe_intermediate_size", 512, 1, DIM_MAX, &hp->d_ff_expert));
    DR_TRY(get_int(c, "shared_expert_intermediate_size", 512, 0, DIM_MAX, &hp->d_ff_shared));
    if (hp->n_experts > 0 && hp->n_experts_used > hp->n_experts)
        return DR_FAIL(DR_ERR_FORMAT, "%s: num_experts_per_tok %d > num_experts %d", c->label,
                       hp->n_experts_used, hp->n_experts);
    if (hp->arch == DR_ARCH_QWEN3_5_MOE) { /* every layer MoE, always renormalised (MODEL.md 6.2) */
        hp->norm_topk = true;
        for (int i = 0; i < hp->n_layers; i++)
            hp->is_moe[i] = hp->n_experts > 0;
        return DR_OK;
    }
    /* Qwen3-Next: per-layer rule (MODEL.md 1.2) */
    DR_TRY(get_bool(c->text, "norm_topk_prob", true, c->label, &hp->norm_topk));
    int step;
    DR_TRY(get_int(c, "decoder_sparse_step", 1, 1, DR_MAX_LAYERS, &step));
    json_t *only = json_object_get(c->text, "mlp_only_layers");
    if (only && !json_is_null(only) && !json_is_array(only))
        return DR_FAIL(DR_ERR_FORMAT, "%s: \"mlp_only_layers\" must be a list of layer indices", c->label);
    for (int i = 0; i < hp->n_layers; i++)
        hp->is_moe[i] = hp->n_experts > 0 && (i + 1) % step == 0;
    for (size_t j = 0; j < json_array_size(only); j++) {
        json_t *v = json_array_get(only, j);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= hp->n_layers)
            return DR_FAIL(DR_ERR_FORMAT, "%s: mlp_only_layers[%zu] is not a layer index", c->label, j);
        hp->is_moe[json_integer_value(v)] = false;
    }
    return DR_OK;
}

static dr_status parse_dims(cfg *c, dr_hparams *hp) {
    bool moe = hp->arch == DR_ARCH_QWEN3_5_MOE, next = hp->arch == DR_ARCH_QWEN3_NEXT;
    DR_TRY(get_int(c, "num_hidden_layers", moe ? 40 : next ? 48 : 32, 1, DR_MAX_LAYERS, &hp->n_layers));
    DR_TRY(get_int(c, "vocab_size", next ? 151936 : 248320, 1, 1 << 26, &hp->n_vocab));
    DR_TRY(get_int(c, "hidden_size", moe || next ? 2048 : 4096, 1, DIM_MAX, &hp->d_model));
    DR_TRY(get_int(c, "num_attention_heads", 16, 1, 4096, &hp->n_heads));
    DR_TRY(get_int(c, "num_key_value_heads", moe || next ? 2 : 4, 1, 4096, &hp->n_kv_heads));
    DR_TRY(get_int(c, "head_dim", 256, 2, 1 << 16, &hp->d_head));
    DR_TRY(get_int(c, "linear_num_key_heads", 16, 1, 4096, &hp->n_k_heads));
    DR_TRY(get_int(c, "linear_num_value_heads", 32, 1, 4096, &hp->n_v_heads));
    DR_TRY(get_int(c, "linear_key_head_dim", 128, 1, 1 << 16, &hp->d_k));
    DR_TRY(get_int(c, "linear_value_head_dim", 128, 1, 1 << 16, &hp->d_v));
    DR_TRY(get_int(c, "linear_conv_kernel_dim", 4, 1, 64, &hp->d_conv));
    DR_TRY(get_int(c, "intermediate_size", moe ? 0 : next ? 5632 : 12288, 0, DIM_MAX, &hp->d_ff));
    if (hp->n_heads % hp->n_kv_heads != 0)
        return DR_FAIL(DR_ERR_FORMAT, "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d",
                       c->label, hp->n_heads, hp->n_kv_heads);
    if (hp->n_v_heads % hp->n_k_heads != 0)
        return DR_FAIL(DR_ERR_FORMAT,
                       "%s: linear_num_value_heads %d is not a multiple of linear_num_key_heads %d",
                       c->label, hp->n_v_heads, hp->n_k_heads);
    double eps = 1e-6;
    bool found;
    DR_TRY(get_number(c->text, "rms_norm_eps", c->label, &eps, &found));
    if (!(eps > 0 && eps < 1))
        return DR_FAIL(DR_ERR_FORMAT, "%s: rms_norm_eps %g out of range", c->label, eps);
    hp->eps = (float)eps;
    return DR_OK;
}

static dr_status check_unsupported(cfg *c) {
    bool bias = false;
    DR_TRY(get_bool(c->text, "attention_bias", false, c->label, &bias));
    if (bias)
        return DR_FAIL(DR_ERR_UNSUPPORTED, "%s: attention_bias true is not supported", c->label);
    json_t *jact = json_object_get(c->text, "hidden_act");
    if (jact && !json_is_null(jact) && !json_is_string(jact))
        return DR_FAIL(DR_ERR_FORMAT, "%s: field \"hidden_act\" must be a string", c->label);
    const char *act = json_string_value(jact);
    if (act && strcmp(act, "silu") != 0)
        return DR_FAIL(DR_ERR_UNSUPPORTED, "%s: hidden_act \"%s\" is not supported (only \"silu\")",
                       c->label, act);
    return DR_OK;
}

/* One eos id: an integer naming a row of the vocabulary. */
static dr_status eos_id(json_t *e, const char *label, const char *what, const dr_hparams *hp, int *out) {
    if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) >= hp->n_vocab)
        return DR_FAIL(DR_ERR_FORMAT, "%s: %s must be a token id from 0 to %d (vocab_size - 1)", label, what,
                       hp->n_vocab - 1);
    *out = (int)json_integer_value(e);
    return DR_OK;
}

/* eos ids: an int, a list of ints, or null / absent (none). Anything else is
 * an error: a silently empty list would let generation run past the end. */
static dr_status parse_eos(json_t *v, const char *label, dr_hparams *hp) {
    hp->n_eos = 0;
    if (!v || json_is_null(v))
        return DR_OK;
    if (json_is_integer(v)) {
        hp->n_eos = 1;
        return eos_id(v, label, "eos_token_id", hp, &hp->eos[0]);
    }
    if (!json_is_array(v))
        return DR_FAIL(DR_ERR_FORMAT, "%s: eos_token_id must be a token id or a list of them", label);
    for (size_t i = 0; i < json_array_size(v) && hp->n_eos < DR_MAX_EOS; i++) {
        char what[64];
        snprintf(what, sizeof what, "eos_token_id[%zu]", i);
        DR_TRY(eos_id(json_array_get(v, i), label, what, hp, &hp->eos[hp->n_eos]));
        hp->n_eos++;
    }
    return DR_OK;
}

static dr_status parse_root(json_t *root, const char *label, dr_hparams *hp) {
    if (!json_is_object(root))
        return DR_FAIL(DR_ERR_FORMAT, "%s: top level is not a JSON object", label);
    cfg c = {.root = root, .text = root, .label = label};
    json_t *tc = json_object_get(root, "text_config");
    if (json_is_object(tc))
        c.text = tc;
    memset(hp, 0, sizeof *hp);
    DR_TRY(parse_arch(&c, hp));
    DR_TRY(check_unsupported(&c));
    DR_TRY(parse_dims(&c, hp));
    DR_TRY(parse_layer_types(&c, hp));
    DR_TRY(parse_rope(&c, hp));
    DR_TRY(parse_moe(&c, hp));
    /* The wrapper-level flag decides tying (MODEL.md 1.1); else the text one. */
    json_t *tie = json_object_get(root, "tie_word_embeddings");
    DR_TRY(get_bool(tie && !json_is_null(tie) ? root : c.text, "tie_word_embeddings", false, label, &hp->tied));
    json_t *eos = json_object_get(c.text, "eos_token_id");
    DR_TRY(parse_eos(eos ? eos : json_object_get(root, "eos_token_id"), label, hp));
    for (int i = 0; i < hp->n_layers; i++)
        if (!hp->is_moe[i] && hp->d_ff <= 0)
            return DR_FAIL(DR_ERR_FORMAT, "%s: layer %d has a dense MLP but intermediate_size is %d", label,
                           i, hp->d_ff);
    return DR_OK;
}

dr_status dr_hparams_parse(const char *json_text, const char *label, dr_hparams *hp) {
    json_error_t jerr;
    json_t *root = json_loads(json_text, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return DR_FAIL(DR_ERR_FORMAT, "%s: invalid JSON (%s, line %d column %d)", label, jerr.text,
                       jerr.line, jerr.column);
    dr_status st = parse_root(root, label, hp);
    json_decref(root);
    return st;
}

dr_status dr_hparams_load(const char *dir, dr_hparams *hp) {
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_error_t jerr;
    FILE *probe = fopen(path, "rb");
    if (!probe)
        return DR_FAIL(DR_ERR_IO, "%s: cannot open (is %s a model directory?)", path, dir);
    fclose(probe);
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return DR_FAIL(DR_ERR_FORMAT, "%s: invalid JSON (%s, line %d column %d)", path, jerr.text, jerr.line,
                       jerr.column);
    dr_status st = parse_root(root, path, hp);
    json_decref(root);
    if (st != DR_OK)
        return st;
    snprintf(path, sizeof path, "%s/generation_config.json", dir);
    probe = fopen(path, "rb");
    if (!probe)
        return DR_OK; /* optional file; config.json's eos stands */
    fclose(probe);
    root = json_load_file(path, 0, &jerr);
    if (!root)
        return DR_FAIL(DR_ERR_FORMAT, "%s: %s (line %d)", path, jerr.text, jerr.line);
    json_t *eos = json_object_get(root, "eos_token_id");
    if (eos)
        st = parse_eos(eos, path, hp);
    json_decref(root);
    return st;
}
