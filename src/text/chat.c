/* text/chat.c - chat prompts: the dr_chat_prompt buffer that records which
 * bytes are template markup, the built-in renderers of the Qwen family
 * (plain ChatML, Qwen3, Qwen3.5/3.6) behind the dr_chat_renderer interface,
 * template detection, and chat encoding.
 *
 * The Qwen3 renderer follows the chat_template of Qwen3 tokenizer_config.json
 * (as in tests/data/dense-f32/tokenizer_config.json); the Qwen3.5 renderer
 * the Qwen3.5/3.6 chat_template.jinja (trimmed message text, generation
 * prompt opening <think>). Tools are not rendered: a "tool" message becomes
 * the template's <tool_response> block, tool definitions are not supported.
 */
#include "text/tok_internal.h"
#include "text/utf8.h"
#include "util/status.h"

#include <stdlib.h>
#include <string.h>

/* ---- prompt buffer ---------------------------------------------------------------- */

static dr_status append(dr_chat_prompt *p, const char *s, size_t len, bool markup) {
    if (len == 0)
        return DR_OK;
    if (!s)
        return DR_FAIL(DR_ERR_ARG, "chat prompt: NULL text");
    if (p->len + len + 1 > p->cap) {
        size_t nc = p->cap ? p->cap : 256;
        while (nc < p->len + len + 1)
            nc *= 2;
        char *nt = realloc(p->text, nc);
        if (!nt)
            return DR_FAIL(DR_ERR_NOMEM, "chat prompt: out of memory");
        p->text = nt;
        p->cap = nc;
    }
    if (markup) {
        bool extend = p->n_markup > 0 && p->markup[p->n_markup - 1].end == p->len;
        if (!extend && p->n_markup == p->cap_markup) {
            size_t nc = p->cap_markup ? p->cap_markup * 2 : 16;
            dr_text_span *nm = realloc(p->markup, nc * sizeof *nm);
            if (!nm)
                return DR_FAIL(DR_ERR_NOMEM, "chat prompt: out of memory");
            p->markup = nm;
            p->cap_markup = nc;
        }
        if (extend)
            p->markup[p->n_markup - 1].end = p->len + len;
        else
            p->markup[p->n_markup++] = (dr_text_span){p->len, p->len + len};
    }
    memcpy(p->text + p->len, s, len);
    p->len += len;
    p->text[p->len] = '\0';
    return DR_OK;
}

dr_status dr_chat_prompt_markup(dr_chat_prompt *p, const char *s, size_t len) {
    return append(p, s, len, true);
}

dr_status dr_chat_prompt_content(dr_chat_prompt *p, const char *s, size_t len) {
    return append(p, s, len, false);
}

void dr_chat_prompt_free(dr_chat_prompt *p) {
    if (!p)
        return;
    free(p->text);
    free(p->markup);
    memset(p, 0, sizeof *p);
}

dr_chat_params dr_chat_default_params(void) {
    return (dr_chat_params){.add_generation_prompt = true, .enable_thinking = true};
}

/* ---- string views (the Python string methods the templates use) --------------------- */

typedef struct sv {
    const char *s;
    size_t n;
} sv;

static sv sv_of(const char *s) { return (sv){s ? s : "", s ? strlen(s) : 0}; }

static sv lstrip_nl(sv v) {
    while (v.n && v.s[0] == '\n')
        v.s++, v.n--;
    return v;
}

static sv rstrip_nl(sv v) {
    while (v.n && v.s[v.n - 1] == '\n')
        v.n--;
    return v;
}

/* Python str.strip(): whitespace per str.isspace, on valid UTF-8 (other
 * bytes are never stripped). */
static sv py_strip(sv v) {
    const uint8_t *s = (const uint8_t *)v.s;
    size_t a = 0, b = v.n;
    while (a < b) {
        dr_utf8_kind kind;
        size_t k = dr_utf8_scan(s + a, b - a, &kind), cl;
        if (kind != DR_UTF8_CHAR || !dr_unicode_is_py_space(dr_utf8_decode(s + a, &cl)))
            break;
        a += k;
    }
    while (b > a) {
        size_t st = b - 1;
        while (st > a && (s[st] & 0xC0) == 0x80 && b - st < 4)
            st--;
        dr_utf8_kind kind;
        size_t k = dr_utf8_scan(s + st, b - st, &kind), cl;
        if (kind != DR_UTF8_CHAR || st + k != b || !dr_unicode_is_py_space(dr_utf8_decode(s + st, &cl)))
            break;
        b = st;
    }
    return (sv){v.s + a, b - a};
}

/* First / last occurrence of needle in v (NULL if none). */
static const char *sv_find(sv v, const char *needle) {
    size_t m = strlen(needle);
    for (size_t i = 0; i + m <= v.n; i++)
        if (memcmp(v.s + i, needle, m) == 0)
            return v.s + i;
    return NULL;
}

static const char *sv_rfind(sv v, const char *needle) {
    size_t m = strlen(needle);
    for (size_t i = v.n + 1; i-- > 0;)
        if (i + m <= v.n && memcmp(v.s + i, needle, m) == 0)
            return v.s + i;
    return NULL;
}

static bool sv_starts(sv v, const char *p) {
    size_t m = strlen(p);
    return v.n >= m && memcmp(v.s, p, m) == 0;
}

static bool sv_ends(sv v, const char *p) {
    size_t m = strlen(p);
    return v.n >= m && memcmp(v.s + v.n - m, p, m) == 0;
}

/* The templates' split of an assistant message without reasoning_content:
 *   reasoning = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n')
 *   content   = content.split('</think>')[-1].lstrip('\n')
 * Applies only when content contains </think>. */
static bool split_think(sv c, sv *reasoning, sv *content) {
    const char *first = sv_find(c, "</think>");
    if (!first)
        return false;
    sv before = rstrip_nl((sv){c.s, (size_t)(first - c.s)});
    const char *open = sv_rfind(before, "<think>");
    if (open)
        before = (sv){open + 7, before.n - (size_t)(open + 7 - before.s)};
    *reasoning = lstrip_nl(before);
    const char *last = sv_rfind(c, "</think>");
    *content = lstrip_nl((sv){last + 8, c.n - (size_t)(last + 8 - c.s)});
    return true;
}

#define MK(p, lit) DR_TRY(dr_chat_prompt_markup((p), (lit), sizeof(lit) - 1))
#define CT(p, v) DR_TRY(dr_chat_prompt_content((p), (v).s, (v).n))

static bool role_is(const dr_chat_message *m, const char *r) {
    return m->role && strcmp(m->role, r) == 0;
}

static dr_status bad_role(size_t i, const dr_chat_message *m) {
    return DR_FAIL(DR_ERR_ARG,
                   "chat: messages[%zu]: role \"%s\" is not supported (system, user, assistant, "
                   "tool)",
                   i, m->role ? m->role : "(null)");
}

static dr_status role_header(dr_chat_prompt *out, const char *role) {
    MK(out, "<|im_start|>");
    DR_TRY(dr_chat_prompt_markup(out, role, strlen(role)));
    MK(out, "\n");
    return DR_OK;
}

/* ---- ChatML ------------------------------------------------------------------------- */

static dr_status render_chatml(const dr_chat_renderer *self, const dr_chat_message *msgs,
                               size_t n, const dr_chat_params *prm, dr_chat_prompt *out) {
    (void)self;
    for (size_t i = 0; i < n; i++) {
        const dr_chat_message *m = &msgs[i];
        if (!role_is(m, "system") && !role_is(m, "user") && !role_is(m, "assistant") &&
            !role_is(m, "tool"))
            return bad_role(i, m);
        DR_TRY(role_header(out, m->role));
        CT(out, sv_of(m->content));
        MK(out, "<|im_end|>\n");
    }
    if (prm->add_generation_prompt)
        MK(out, "<|im_start|>assistant\n");
    return DR_OK;
}

/* ---- Qwen3 -------------------------------------------------------------------------- */

static bool is_tool_response(sv c) {
    return sv_starts(c, "<tool_response>") && sv_ends(c, "</tool_response>");
}

static dr_status render_qwen3(const dr_chat_renderer *self, const dr_chat_message *msgs, size_t n,
                              const dr_chat_params *prm, dr_chat_prompt *out) {
    (void)self;
    if (n > 0 && role_is(&msgs[0], "system")) {
        MK(out, "<|im_start|>system\n");
        CT(out, sv_of(msgs[0].content));
        MK(out, "<|im_end|>\n");
    }
    /* the last user message that is a real query (not wrapped tool output) */
    size_t last_query = n ? n - 1 : 0;
    for (size_t k = n; k-- > 0;) {
        if (role_is(&msgs[k], "user") && !is_tool_response(sv_of(msgs[k].content))) {
            last_query = k;
            break;
        }
    }
    for (size_t i = 0; i < n; i++) {
        const dr_chat_message *m = &msgs[i];
        if (role_is(m, "user") || (role_is(m, "system") && i != 0)) {
            DR_TRY(role_header(out, m->role));
            CT(out, sv_of(m->content));
            MK(out, "<|im_end|>\n");
        } else if (role_is(m, "assistant")) {
            sv content = sv_of(m->content), reasoning = {"", 0};
            if (m->reasoning_content)
                reasoning = sv_of(m->reasoning_content);
            else
                split_think(sv_of(m->content), &reasoning, &content);
            if (i > last_query && (i == n - 1 || reasoning.n)) {
                MK(out, "<|im_start|>assistant\n<think>\n");
                CT(out, lstrip_nl(rstrip_nl(reasoning)));
                MK(out, "\n</think>\n\n");
                CT(out, lstrip_nl(content));
            } else {
                MK(out, "<|im_start|>assistant\n");
                CT(out, content);
            }
            MK(out, "<|im_end|>\n");
        } else if (role_is(m, "tool")) {
            if (i == 0 || !role_is(&msgs[i - 1], "tool"))
                MK(out, "<|im_start|>user");
            MK(out, "\n<tool_response>\n");
            CT(out, sv_of(m->content));
            MK(out, "\n</tool_response>");
            if (i == n - 1 || !role_is(&msgs[i + 1], "tool"))
                MK(out, "<|im_end|>\n");
        } else if (!role_is(m, "system")) {
            return bad_role(i, m);
        }
    }
    if (prm->add_generation_prompt) {
        MK(out, "<|im_start|>assistant\n");
        if (!prm->enable_thinking)
            MK(out, "<think>\n\n</think>\n\n");
    }
    return DR_OK;
}

/* ---- Qwen3.5 / Qwen3.6 ---------------------------------------------------------------- */

static dr_status render_qwen35(const dr_chat_renderer *self, const dr_chat_message *msgs,
                               size_t n, const dr_chat_params *prm, dr_chat_prompt *out) {
    (void)self;
    if (n == 0)
        return DR_FAIL(DR_ERR_ARG, "chat: no messages provided");
    if (role_is(&msgs[0], "system")) {
        MK(out, "<|im_start|>system\n");
        CT(out, py_strip(sv_of(msgs[0].content)));
        MK(out, "<|im_end|>\n");
    }
    size_t last_query = n;
    for (size_t k = n; k-- > 0;) {
        if (role_is(&msgs[k], "user") && !is_tool_response(py_strip(sv_of(msgs[k].content)))) {
            last_query = k;
            break;
        }
    }
    if (last_query == n)
        return DR_FAIL(DR_ERR_ARG, "chat: no user query found in messages");
    for (size_t i = 0; i < n; i++) {
        const dr_chat_message *m = &msgs[i];
        sv content = py_strip(sv_of(m->content));
        if (role_is(m, "system")) {
            if (i != 0)
                return DR_FAIL(DR_ERR_ARG,
                               "chat: messages[%zu]: a system message must be at the beginning",
                               i);
        } else if (role_is(m, "user")) {
            MK(out, "<|im_start|>user\n");
            CT(out, content);
            MK(out, "<|im_end|>\n");
        } else if (role_is(m, "assistant")) {
            sv reasoning = {"", 0};
            if (m->reasoning_content)
                reasoning = sv_of(m->reasoning_content);
            else
                split_think(content, &reasoning, &content);
            reasoning = py_strip(reasoning);
            if (prm->preserve_thinking || i > last_query) {
                MK(out, "<|im_start|>assistant\n<think>\n");
                CT(out, reasoning);
                MK(out, "\n</think>\n\n");
                CT(out, content);
            } else {
                MK(out, "<|im_start|>assistant\n");
                CT(out, content);
            }
            MK(out, "<|im_end|>\n");
        } else if (role_is(m, "tool")) {
            if (i > 0 && !role_is(&msgs[i - 1], "tool"))
                MK(out, "<|im_start|>user");
            MK(out, "\n<tool_response>\n");
            CT(out, content);
            MK(out, "\n</tool_response>");
            if (i == n - 1 || !role_is(&msgs[i + 1], "tool"))
                MK(out, "<|im_end|>\n");
        } else {
            return bad_role(i, m);
        }
    }
    if (prm->add_generation_prompt) {
        MK(out, "<|im_start|>assistant\n");
        if (prm->enable_thinking)
            MK(out, "<think>\n");
        else
            MK(out, "<think>\n\n</think>\n\n");
    }
    return DR_OK;
}

/* ---- registry, detection, encode ------------------------------------------------------ */

static const dr_chat_renderer g_builtin[] = {
    [DR_CHAT_CHATML] = {"chatml", render_chatml, NULL, NULL},
    [DR_CHAT_QWEN3] = {"qwen3", render_qwen3, NULL, NULL},
    [DR_CHAT_QWEN3_5] = {"qwen3_5", render_qwen35, NULL, NULL},
};

void dr_chat_renderer_free(dr_chat_renderer *r) {
    if (r && r->destroy)
        r->destroy(r);
}

const dr_chat_renderer *dr_chat_renderer_builtin(dr_chat_format format) {
    if ((unsigned)format > DR_CHAT_QWEN3_5)
        format = DR_CHAT_QWEN3;
    return &g_builtin[format];
}

dr_chat_format dr_chat_format_detect(const char *t, bool *recognized) {
    if (recognized)
        *recognized = true;
    if (!t)
        return DR_CHAT_QWEN3;
    /* Qwen3.5/3.6 open the think block in the generation prompt:
     * {{- '<think>\n' }} (Qwen3 only ever writes '\n<think>\n' + ...) */
    if (strstr(t, "'<think>\\n'") || strstr(t, "\"<think>\\n\""))
        return DR_CHAT_QWEN3_5;
    if (strstr(t, "<think>"))
        return DR_CHAT_QWEN3;
    if (!strstr(t, "<|im_start|>") && recognized)
        *recognized = false;
    return DR_CHAT_CHATML;
}

const dr_chat_renderer *dr_tokenizer_chat_renderer(const dr_tokenizer *tok) {
    return dr_chat_renderer_builtin(dr_chat_format_detect(tok->chat_template, NULL));
}

dr_status dr_chat_render(const dr_chat_renderer *r, const dr_chat_message *msgs, size_t n,
                         const dr_chat_params *params, dr_chat_prompt *out) {
    if (!r || !r->render || !out || (n && !msgs))
        return DR_FAIL(DR_ERR_ARG, "dr_chat_render: NULL argument");
    dr_chat_params def = dr_chat_default_params();
    return r->render(r, msgs, n, params ? params : &def, out);
}

dr_status dr_chat_encode(const dr_tokenizer *tok, const dr_chat_prompt *prompt, dr_tokens *out) {
    if (!prompt)
        return DR_FAIL(DR_ERR_ARG, "dr_chat_encode: prompt is NULL");
    return dr_tokenize_trusted(tok, prompt->text, prompt->len, prompt->markup, prompt->n_markup,
                               out);
}
