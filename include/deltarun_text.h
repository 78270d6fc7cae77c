/* deltarun_text.h - the text layer of libdeltarun: tokenizer, chat format,
 * streaming detokenization.
 *
 * A dr_tokenizer is loaded from a Hugging Face `tokenizer.json` (byte-level
 * BPE, as shipped by the Qwen2/Qwen3/Qwen3.5/Qwen3-Next families) plus the
 * optional `tokenizer_config.json`, `generation_config.json` and
 * `chat_template.jinja` next to it. Encoding reproduces Hugging Face
 * `tokenizers` exactly: added tokens are split out first, the rest is
 * normalized (NFC), split by the pre-tokenizer regex (Oniguruma, the engine
 * `tokenizers` uses) and merged by BPE rank.
 *
 * Chat prompts are rendered by a dr_chat_renderer (a small interface: the
 * built-in Qwen renderers now, a Jinja engine later). A rendered prompt keeps
 * track of which bytes are the template's own markup and which are message
 * text, so dr_chat_encode() turns `<|im_end|>` into a control token only
 * where the template wrote it: a user who types `<|im_end|>` gets plain text.
 *
 * Errors: every fallible call returns a dr_status (deltarun.h) and leaves the
 * message in dr_last_error(). Nothing here exits or aborts on bad input.
 *
 * Threads: a loaded tokenizer is read-only except for its BPE cache, which
 * a mutex inside the tokenizer guards: encoding calls on one tokenizer from
 * several threads are safe but run one at a time; decoding calls run in
 * parallel. Streaming decoders and prompts belong to one thread each.
 * Global state: only Oniguruma's one-time library initialisation, done once
 * per process (pthread_once) by the first tokenizer load.
 */
#ifndef DELTARUN_TEXT_H
#define DELTARUN_TEXT_H

#include "deltarun.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- token lists --------------------------------------------------------- */

/* A growable list of token ids. Zero-initialise it ({0}) before first use;
 * encoding functions append to it; free with dr_tokens_free. */
typedef struct dr_tokens {
    int32_t *ids; /* ids[0..n) */
    size_t n;     /* number of ids */
    size_t cap;   /* allocated capacity of ids */
} dr_tokens;

/* Append one id. Fails only with DR_ERR_NOMEM (list unchanged). */
dr_status dr_tokens_push(dr_tokens *t, int32_t id);

/* Release the list's memory and zero it. Accepts NULL. Can't fail. */
void dr_tokens_free(dr_tokens *t);

/* ---- loading ------------------------------------------------------------- */

typedef struct dr_tokenizer dr_tokenizer;

typedef struct dr_tokenizer_options {
    /* Replaces the pattern of every Split pre-tokenizer in the file (NULL:
     * keep the file's). Used to build the Qwen3.5-regex variant of a Qwen3
     * file without a second copy on disk. */
    const char *split_regex_override;
    /* Do not read tokenizer_config.json / generation_config.json /
     * chat_template.jinja next to tokenizer.json. */
    bool no_sidecar_files;
} dr_tokenizer_options;

/* Load a tokenizer. `path` is a model directory (containing tokenizer.json)
 * or the path of a tokenizer.json; sidecar files (tokenizer_config.json,
 * generation_config.json, chat_template.jinja) are read from the same
 * directory when present. On success *out owns the tokenizer (free with
 * dr_tokenizer_free). On failure *out is NULL and dr_last_error() names the
 * file and the field that was wrong, or the unsupported component type.
 * Errors: DR_ERR_IO (unreadable), DR_ERR_FORMAT (malformed JSON or values,
 * merges naming unknown tokens), DR_ERR_UNSUPPORTED (a normalizer,
 * pre-tokenizer, model, decoder or post-processor this build does not
 * implement), DR_ERR_NOMEM. */
dr_status dr_tokenizer_load(const char *path, dr_tokenizer **out);

/* As dr_tokenizer_load, with options (opts may be NULL: defaults). */
dr_status dr_tokenizer_load_ex(const char *path, const dr_tokenizer_options *opts,
                               dr_tokenizer **out);

/* Load from tokenizer.json bytes in memory (no sidecar files are read).
 * `name` labels error messages (NULL: "tokenizer.json"). Same errors as
 * dr_tokenizer_load. The buffer is not retained. */
dr_status dr_tokenizer_load_buffer(const char *json, size_t len, const char *name,
                                   const dr_tokenizer_options *opts, dr_tokenizer **out);

/* Free a tokenizer. Accepts NULL. Stream decoders made from it must be freed
 * first. */
void dr_tokenizer_free(dr_tokenizer *tok);

/* ---- vocabulary ---------------------------------------------------------- */

/* One more than the largest token id (model vocab and added tokens). Ids
 * below it may still be holes (no token). Can't fail. */
int32_t dr_tokenizer_n_vocab(const dr_tokenizer *tok);

/* Id of the token whose string is exactly `str` (NUL-terminated): an added
 * token's content (e.g. "<|im_end|>") or a vocabulary entry in its stored,
 * byte-level form (e.g. "Ġworld"). Added tokens win, as in `tokenizers`.
 * Returns -1 if there is none. Can't fail. */
int32_t dr_tokenizer_token_id(const dr_tokenizer *tok, const char *str);

/* The stored string of token `id` (byte-level form for vocabulary entries,
 * the content for added tokens), NUL-terminated, owned by the tokenizer;
 * *len (if non-NULL) gets its length. NULL if `id` names no token. */
const char *dr_tokenizer_token_str(const dr_tokenizer *tok, int32_t id, size_t *len);

/* The raw bytes token `id` decodes to (may be part of a UTF-8 character),
 * owned by the tokenizer, *len gets the length. NULL if `id` names no token. */
const uint8_t *dr_tokenizer_token_bytes(const dr_tokenizer *tok, int32_t id, size_t *len);

/* True if `id` is an added token marked "special": true (skipped when
 * decoding with skip_special). False for unknown ids. Can't fail. */
bool dr_tokenizer_is_special(const dr_tokenizer *tok, int32_t id);

/* The end-of-sequence ids from tokenizer_config.json ("eos_token") and
 * generation_config.json ("eos_token_id", an int or a list), deduplicated,
 * in that order; *n gets the count (0 if neither file names one). The array
 * is owned by the tokenizer. Can't fail. */
const int32_t *dr_tokenizer_eos_ids(const dr_tokenizer *tok, size_t *n);

/* True if generation must stop at `id`: any eos id, or the ChatML
 * end-of-turn `<|im_end|>`, or `<|endoftext|>`, when the vocabulary has
 * them. Can't fail. */
bool dr_tokenizer_is_eog(const dr_tokenizer *tok, int32_t id);

/* The chat template text (chat_template.jinja, else tokenizer_config.json
 * "chat_template"), owned by the tokenizer; NULL if none was found. */
const char *dr_tokenizer_chat_template(const dr_tokenizer *tok);

/* ---- encoding ------------------------------------------------------------ */

/* Encode `len` bytes of UTF-8 text and append the ids to `out`.
 * parse_special true: every added token in the text becomes its id (what
 * `tokenizers` does by default). false: added tokens marked special (e.g.
 * `<|im_end|>`) are encoded as plain text; non-special added tokens (Qwen3's
 * `<think>`, `<tool_call>`) still match, as in `tokenizers` with
 * split_special_tokens and llama.cpp with parse_special off.
 * No BOS/EOS is added. Invalid UTF-8 gets DR_ERR_ARG naming the byte offset
 * (nothing appended). On any failure `out` keeps its previous ids. */
dr_status dr_tokenize(const dr_tokenizer *tok, const char *text, size_t len, bool parse_special,
                      dr_tokens *out);

/* A byte range [begin, end) of a text. */
typedef struct dr_text_span {
    size_t begin, end;
} dr_text_span;

/* As dr_tokenize, but a special added token is recognised only where it lies
 * entirely inside one of the `n_trusted` spans (sorted, non-overlapping);
 * elsewhere it is plain text. dr_chat_encode uses this with the template's
 * markup spans. DR_ERR_ARG if the spans are unsorted or out of range. */
dr_status dr_tokenize_trusted(const dr_tokenizer *tok, const char *text, size_t len,
                              const dr_text_span *trusted, size_t n_trusted, dr_tokens *out);

/* ---- decoding ------------------------------------------------------------ */

/* Decode ids to text: each token's bytes, concatenated, then made valid
 * UTF-8 by replacing each maximal invalid subsequence with U+FFFD (as Rust's
 * from_utf8_lossy in `tokenizers`). skip_special drops added tokens marked
 * special. On success *text is a malloc'd NUL-terminated string the caller
 * frees, *len (if non-NULL) its length. An id with no token gets DR_ERR_RANGE
 * naming it (*text NULL). */
dr_status dr_detokenize(const dr_tokenizer *tok, const int32_t *ids, size_t n, bool skip_special,
                        char **text, size_t *len);

/* ---- streaming decoder ---------------------------------------------------- */

/* Turns ids into text one at a time for generation, emitting only complete
 * UTF-8 characters: bytes of a character split across tokens are held back
 * until the token that completes it arrives. The concatenation of all
 * pushes plus the final dr_stream_decoder_finish equals dr_detokenize of
 * the whole sequence, and every piece is valid UTF-8. */
typedef struct dr_stream_decoder dr_stream_decoder;

/* Create a decoder for `tok` (which must outlive it). skip_special as in
 * dr_detokenize. Fails only with DR_ERR_NOMEM (*out NULL). */
dr_status dr_stream_decoder_new(const dr_tokenizer *tok, bool skip_special,
                                dr_stream_decoder **out);

/* Feed one id. *text and *len get the newly complete text (possibly empty,
 * never NULL); the pointer is owned by the decoder and valid until its next
 * call. An id with no token gets DR_ERR_RANGE and changes nothing. */
dr_status dr_stream_decoder_push(dr_stream_decoder *sd, int32_t id, const char **text,
                                 size_t *len);

/* End of stream: emits U+FFFD for bytes still held back (an incomplete
 * character) and resets the decoder for reuse. Can't fail; *text and *len as in
 * push. */
void dr_stream_decoder_finish(dr_stream_decoder *sd, const char **text, size_t *len);

/* Drop held-back bytes without emitting them. Can't fail. */
void dr_stream_decoder_reset(dr_stream_decoder *sd);

/* Free a decoder. Accepts NULL. */
void dr_stream_decoder_free(dr_stream_decoder *sd);

/* ---- chat format --------------------------------------------------------- */

/* One message. Strings are NUL-terminated UTF-8 and only read. */
typedef struct dr_chat_message {
    const char *role;    /* "system", "user", "assistant" or "tool" */
    const char *content; /* the text (NULL = "") */
    /* Assistant only, optional: the reasoning of this turn. NULL: taken from
     * a <think>...</think> block inside content, as the Qwen templates do. */
    const char *reasoning_content;
} dr_chat_message;

typedef struct dr_chat_params {
    bool add_generation_prompt; /* end with the opening of an assistant turn */
    bool enable_thinking;       /* false: the prompt closes an empty think block */
    bool preserve_thinking;     /* Qwen3.6 switch: keep reasoning of every
                                   earlier assistant turn (Qwen3.5 format only) */
} dr_chat_params;

/* add_generation_prompt true, enable_thinking true, preserve_thinking false.
 * Can't fail. */
dr_chat_params dr_chat_default_params(void);

/* A rendered prompt: text plus the byte ranges the template itself wrote
 * (its markup), in order. Zero-initialise ({0}) before use; renderers append
 * to it, so several renders (e.g. one per interactive turn) can be chained.
 * Free with dr_chat_prompt_free. */
typedef struct dr_chat_prompt {
    char *text;            /* NUL-terminated once anything was appended */
    size_t len, cap;       /* bytes used / allocated in text */
    dr_text_span *markup;  /* markup[0..n_markup): template-written ranges */
    size_t n_markup, cap_markup;
} dr_chat_prompt;

/* Append `len` bytes the template writes itself (role headers, <|im_start|>,
 * think tags): special tokens in them are parsed. DR_ERR_NOMEM, or
 * DR_ERR_ARG for s == NULL with len > 0 (prompt unchanged either way). */
dr_status dr_chat_prompt_markup(dr_chat_prompt *p, const char *s, size_t len);

/* Append `len` bytes of message text: special tokens in it stay plain text.
 * Failures as dr_chat_prompt_markup. */
dr_status dr_chat_prompt_content(dr_chat_prompt *p, const char *s, size_t len);

/* Release the prompt's memory and zero it. Accepts NULL. Can't fail. */
void dr_chat_prompt_free(dr_chat_prompt *p);

/* The renderer interface: anything that turns messages into a prompt
 * (the built-in Qwen renderers; later a Jinja engine running the model's
 * chat_template with `ctx` as its compiled template). */
typedef struct dr_chat_renderer dr_chat_renderer;
struct dr_chat_renderer {
    const char *name; /* e.g. "qwen3" */
    /* Append the rendering of msgs[0..n) to `out` through
     * dr_chat_prompt_markup/_content. Returns DR_ERR_ARG (with a message)
     * for conversations the template rejects, DR_ERR_NOMEM. */
    dr_status (*render)(const dr_chat_renderer *self, const dr_chat_message *msgs, size_t n,
                        const dr_chat_params *params, dr_chat_prompt *out);
    /* Free a heap renderer; NULL for the static built-in ones. */
    void (*destroy)(dr_chat_renderer *self);
    void *ctx; /* the renderer's own state */
};

typedef enum dr_chat_format {
    DR_CHAT_CHATML,  /* plain ChatML: <|im_start|>role\ncontent<|im_end|>\n, no think tags */
    DR_CHAT_QWEN3,   /* Qwen3 / Qwen3-Next: empty think block only when thinking is off;
                        reasoning kept only after the last user query */
    DR_CHAT_QWEN3_5, /* Qwen3.5 / Qwen3.6: prompt opens <think>\n when thinking is on;
                        message text trimmed; system message only first */
} dr_chat_format;

/* Which built-in format a chat template text corresponds to. NULL template:
 * DR_CHAT_QWEN3. *recognized (if non-NULL) is false when the text has none
 * of the markers (ChatML is then returned as a best guess). Can't fail. */
dr_chat_format dr_chat_format_detect(const char *chat_template, bool *recognized);

/* Free a renderer through its destroy slot; accepts NULL and the static
 * built-in renderers (whose destroy is NULL: nothing happens). */
void dr_chat_renderer_free(dr_chat_renderer *r);

/* The static built-in renderer of a format (never freed). Can't fail. */
const dr_chat_renderer *dr_chat_renderer_builtin(dr_chat_format format);

/* The built-in renderer matching the tokenizer's chat template. Can't fail. */
const dr_chat_renderer *dr_tokenizer_chat_renderer(const dr_tokenizer *tok);

/* Render with `r` (calls r->render); appends to `out`. */
dr_status dr_chat_render(const dr_chat_renderer *r, const dr_chat_message *msgs, size_t n,
                         const dr_chat_params *params, dr_chat_prompt *out);

/* Encode a rendered prompt: special tokens are parsed only inside its markup
 * ranges (dr_tokenize_trusted), so message text cannot inject control
 * tokens. Appends to `out`; same errors as dr_tokenize. */
dr_status dr_chat_encode(const dr_tokenizer *tok, const dr_chat_prompt *prompt, dr_tokens *out);

#ifdef __cplusplus
}
#endif

#endif
