/* format/mlx.c - parses the MLX "quantization" block of config.json.
 *
 * mlx-lm writes {"group_size": 64, "bits": 4, "mode": "affine", <module
 * path>: {"group_size": .., "bits": ..}, ...} at the top level, duplicated
 * as "quantization_config" (FORMATS.md 2.2). Override values of true/false
 * are accepted as mlx-lm's loader does. Bits and group sizes are only
 * checked for type here; the binder checks them per tensor so that the
 * message can name the tensor.
 */
#include "format/mlx.h"

#include "util/status.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static dr_status get_qint(json_t *o, const char *key, int def, const char *label, const char *where, int *out) {
    json_t *v = json_object_get(o, key);
    if (!v) {
        *out = def;
        return DR_OK;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 1024) /* 0 bits = "false" */
        return DR_FAIL(DR_ERR_FORMAT, "%s: %s \"%s\" must be an integer from 1 to 1024", label, where, key);
    *out = (int)json_integer_value(v);
    return DR_OK;
}

static dr_status add_override(dr_mlx_qconfig *qc, const char *path, json_t *v, const char *label) {
    dr_mlx_qoverride o = {.quantized = true, .bits = qc->bits, .group_size = qc->group_size};
    if (json_is_boolean(v)) {
        o.quantized = json_is_true(v);
    } else {
        char where[256];
        snprintf(where, sizeof where, "quantization[\"%s\"]", path);
        DR_TRY(get_qint(v, "bits", qc->bits, label, where, &o.bits));
        DR_TRY(get_qint(v, "group_size", qc->group_size, label, where, &o.group_size));
    }
    dr_mlx_qoverride *n = realloc(qc->over, (size_t)(qc->n_over + 1) * sizeof *n);
    if (!n || !(o.path = strdup(path))) {
        if (n)
            qc->over = n;
        return DR_FAIL(DR_ERR_NOMEM, "out of memory reading %s", label);
    }
    qc->over = n;
    qc->over[qc->n_over++] = o;
    return DR_OK;
}

static dr_status parse_block(json_t *q, const char *label, dr_mlx_qconfig *qc) {
    json_t *mv = json_object_get(q, "mode");
    const char *mode = json_string_value(mv);
    if (mv && !json_is_null(mv) && !mode)
        return DR_FAIL(DR_ERR_FORMAT, "%s: quantization \"mode\" must be a string", label);
    if (mode && strcmp(mode, "affine") != 0)
        return DR_FAIL(DR_ERR_UNSUPPORTED, "%s: quantization mode \"%s\" is not supported (only \"affine\")",
                       label, mode);
    DR_TRY(get_qint(q, "bits", 4, label, "quantization", &qc->bits));
    DR_TRY(get_qint(q, "group_size", 64, label, "quantization", &qc->group_size));
    qc->present = true;
    const char *key;
    json_t *v;
    json_object_foreach(q, key, v) {
        if (json_is_object(v) || json_is_boolean(v))
            DR_TRY(add_override(qc, key, v, label));
        else if (strchr(key, '.')) /* a module path: only {..}, true or false mean something */
            return DR_FAIL(DR_ERR_FORMAT, "%s: quantization[\"%s\"] must be an object or true/false", label, key);
    }
    return DR_OK;
}

static dr_status parse_root(json_t *root, const char *label, dr_mlx_qconfig *qc) {
    memset(qc, 0, sizeof *qc);
    if (!json_is_object(root))
        return DR_FAIL(DR_ERR_FORMAT, "%s: top level is not a JSON object", label);
    json_t *q = json_object_get(root, "quantization");
    if (!q) {
        q = json_object_get(root, "quantization_config");
        const char *method = json_string_value(json_object_get(q, "quant_method"));
        if (method)
            return DR_FAIL(DR_ERR_UNSUPPORTED,
                           "%s: quantization_config.quant_method \"%s\" is not supported (only MLX affine "
                           "checkpoints)",
                           label, method);
    }
    if (!q || json_is_null(q))
        return DR_OK;
    if (!json_is_object(q))
        return DR_FAIL(DR_ERR_FORMAT, "%s: \"quantization\" must be an object", label);
    dr_status st = parse_block(q, label, qc);
    if (st != DR_OK)
        dr_mlx_qconfig_free(qc);
    return st;
}

dr_status dr_mlx_qconfig_parse(const char *json_text, const char *label, dr_mlx_qconfig *qc) {
    memset(qc, 0, sizeof *qc);
    json_error_t jerr;
    json_t *root = json_loads(json_text, 0, &jerr);
    if (!root)
        return DR_FAIL(DR_ERR_FORMAT, "%s: invalid JSON (%s, line %d)", label, jerr.text, jerr.line);
    dr_status st = parse_root(root, label, qc);
    json_decref(root);
    return st;
}

dr_status dr_mlx_qconfig_load(const char *dir, dr_mlx_qconfig *qc) {
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    memset(qc, 0, sizeof *qc);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root)
        return DR_FAIL(DR_ERR_FORMAT, "%s: %s (line %d)", path, jerr.text, jerr.line);
    dr_status st = parse_root(root, path, qc);
    json_decref(root);
    return st;
}

void dr_mlx_qconfig_free(dr_mlx_qconfig *qc) {
    for (int i = 0; i < qc->n_over; i++)
        free(qc->over[i].path);
    free(qc->over);
    qc->over = NULL;
    qc->n_over = 0;
}

void dr_mlx_qparams(const dr_mlx_qconfig *qc, const char *path, int *bits, int *group_size) {
    *bits = qc->bits;
    *group_size = qc->group_size;
    for (int i = 0; i < qc->n_over; i++)
        if (!strcmp(qc->over[i].path, path)) {
            *bits = qc->over[i].quantized ? qc->over[i].bits : 0;
            *group_size = qc->over[i].group_size;
            return;
        }
}
