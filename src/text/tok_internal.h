/* text/tok_internal.h - the parts of a dr_tokenizer and the internal API
 * between the text layer's files:
 *
 *   tokenizer.c  loading tokenizer.json + sidecar files into this struct
 *   normalize.c  normalizers (NFC, NFD, NFKC, NFKD through utf8proc)
 *   pretok.c     pre-tokenizers (Split regex via Oniguruma, ByteLevel)
 *   added.c      added-token matching (leftmost-longest trie)
 *   bpe.c        the BPE model: merges by rank, per-piece cache
 *   encode.c     the encode pipeline and decoding
 *   stream.c     streaming decoder
 *   chat.c       chat renderers and chat encoding
 */
#ifndef DR_TEXT_TOK_INTERNAL_H
#define DR_TEXT_TOK_INTERNAL_H

#include "deltarun_text.h"
#include "text/strmap.h"

#include <oniguruma.h>
#include <pthread.h>

/* ---- normalizer ---------------------------------------------------------- */

#define DR_NORM_MAX 8
typedef struct dr_normalizer {
    int n;                 /* number of steps (0: none) */
    int opts[DR_NORM_MAX]; /* utf8proc_option_t of each step */
    uint32_t quick_below;  /* code points below this are never changed and never
                              combine with what precedes them */
    bool nfc_only;         /* the only step is NFC (enables a wider fast path) */
} dr_normalizer;

/* Normalize s[0..len). *out is s itself when nothing changes, else a malloc'd
 * buffer the caller frees. DR_ERR_ARG on invalid UTF-8, DR_ERR_NOMEM. */
dr_status dr_normalize(const dr_normalizer *nz, const uint8_t *s, size_t len, uint8_t **out,
                       size_t *out_len);

/* ---- pre-tokenizer ------------------------------------------------------- */

typedef enum { DR_PRE_SPLIT, DR_PRE_BYTELEVEL } dr_pre_kind;

typedef enum {
    DR_FAST_NONE = 0, /* Oniguruma only */
    DR_FAST_QWEN2,    /* the Qwen2/Qwen3 Split pattern (FORMATS.md 4.3) */
    DR_FAST_QWEN35,   /* the Qwen3.5 Split pattern */
} dr_fast_kind;

typedef struct dr_pre_step {
    dr_pre_kind kind;
    OnigRegex re;          /* Split pattern, or ByteLevel's GPT-2 pattern (NULL: no regex) */
    dr_fast_kind fast;     /* known pattern: ASCII matches are found without Oniguruma */
    bool add_prefix_space; /* ByteLevel: prepend ' ' to pieces not starting with one */
} dr_pre_step;

#define DR_PRE_MAX 8
typedef struct dr_pretok {
    int n;
    dr_pre_step steps[DR_PRE_MAX];
    bool byte_level;    /* a ByteLevel step is present (it must be the last) */
    OnigRegion *region;      /* search scratch (encode holds the lock) */
    OnigMatchParam *mparam;  /* search parameters: no retry limit */
} dr_pretok;

/* Compile `pattern` (UTF-8) with Oniguruma's default syntax, as tokenizers'
 * onig backend does. DR_ERR_FORMAT with Oniguruma's message on failure. */
dr_status dr_regex_compile(const char *pattern, size_t len, OnigRegex *out);

/* Which known pattern `pattern` is exactly (DR_FAST_NONE if neither). */
dr_fast_kind dr_regex_fast_kind(const char *pattern, size_t len);

typedef dr_status (*dr_piece_fn)(void *ctx, const uint8_t *s, size_t len);

/* Run the pre-tokenizer steps over s[0..len), calling fn for every non-empty
 * final piece in order. Propagates fn's failure. */
dr_status dr_pretok_run(dr_pretok *p, const uint8_t *s, size_t len, dr_piece_fn fn, void *ctx);

void dr_pretok_free(dr_pretok *p);

/* ---- added tokens -------------------------------------------------------- */

typedef struct dr_added_token {
    int32_t id;
    char *content;    /* as in the file */
    size_t len;
    char *match;      /* what is searched for: content, NFC'd when normalized */
    size_t match_len;
    bool single_word, lstrip, rstrip, normalized, special;
} dr_added_token;

typedef struct dr_trie_node {
    int32_t child;   /* first child node (-1 none) */
    int32_t sibling; /* next sibling (-1 none) */
    int32_t token;   /* index into tok->added of the token ending here (-1 none) */
    uint8_t byte;    /* edge label from the parent */
} dr_trie_node;

typedef struct dr_trie {
    dr_trie_node *nodes; /* node 0 is the root */
    size_t n, cap;
    int32_t root_child[256]; /* direct table for the root's children */
    uint8_t first[32];       /* bitmap of bytes that start some token */
    size_t n_tokens;
} dr_trie;

typedef struct dr_match {
    size_t start, stop; /* byte range taken out of the text (after lstrip/rstrip) */
    int32_t id;
} dr_match;

typedef struct dr_matches {
    dr_match *m;
    size_t n, cap;
} dr_matches;

/* Add token index `ti` with key s[0..len) to the trie. false on NOMEM. */
bool dr_trie_add(dr_trie *t, const char *s, size_t len, int32_t ti);
void dr_trie_free(dr_trie *t);

/* Find the added tokens of trie `t` in s[0..len) the way tokenizers'
 * AddedVocabulary::find_matches does (leftmost-longest, then single_word,
 * lstrip, rstrip). A special token is accepted only if `trusted` covers it
 * (see dr_tokenize_trusted; base = offset of s within the trusted text;
 * trust_all skips the check). Matches are appended to *out. */
dr_status dr_added_find(const dr_tokenizer *tok, const dr_trie *t, const uint8_t *s, size_t len,
                        const dr_text_span *trusted, size_t n_trusted, size_t base,
                        bool trust_all, dr_matches *out);

/* ---- BPE model ----------------------------------------------------------- */

typedef struct dr_merge_slot {
    uint64_t key; /* (left id << 32) | right id; UINT64_MAX: empty */
    int32_t rank; /* position in the merges list (lower merges first) */
    int32_t id;   /* id of the merged token */
} dr_merge_slot;

typedef struct dr_bpe_sym {
    int32_t id;         /* current token id of this symbol */
    int32_t prev, next; /* neighbours in the word (-1 none) */
    int32_t len;        /* bytes covered; 0 once merged into its left neighbour */
} dr_bpe_sym;

typedef struct dr_bpe_cand {
    int32_t rank, pos, id; /* a possible merge of symbol pos with its next */
} dr_bpe_cand;

typedef struct dr_bpe {
    dr_strmap vocab;          /* model vocabulary: stored string -> id */
    dr_merge_slot *merges;    /* pair table, merges_cap slots (power of two) */
    size_t merges_cap, n_merges;
    bool byte_level;          /* pieces are bytes mapped through the alphabet */
    int32_t byte_id[256];     /* byte-level: id of the one-char token of byte b, -1 none */
    int32_t unk_id;           /* -1: unknown characters are dropped, as tokenizers does */
    bool fuse_unk;
    bool byte_fallback;       /* unknown characters become <0xXX> tokens */
    int32_t fallback_id[256]; /* ids of <0x00>..<0xFF> (-1 none) */
    bool ignore_merges;       /* a piece that is a vocab entry is taken whole */
    /* cache: piece bytes -> offset into cache_ids (first entry: count) */
    dr_strmap cache;
    int32_t *cache_ids;
    size_t cache_n, cache_cap;
    /* merge scratch */
    dr_bpe_sym *sym;
    size_t sym_cap;
    dr_bpe_cand *heap;
    size_t heap_cap;
} dr_bpe;

/* Make room for n merges. false on NOMEM. */
bool dr_bpe_reserve_merges(dr_bpe *b, size_t n);

/* Insert merge (left, right) -> id with `rank`; later duplicates replace
 * earlier ones (as a HashMap collect does). false on NOMEM. */
bool dr_bpe_add_merge(dr_bpe *b, int32_t left, int32_t right, int32_t rank, int32_t id);

/* Encode one pre-tokenized piece (raw bytes; byte-level mapping applied
 * here when b->byte_level) and append the ids. DR_ERR_NOMEM only. */
dr_status dr_bpe_encode(dr_bpe *b, const uint8_t *s, size_t len, dr_tokens *out);

/* Merge-heap operations and sift steps done by the calling thread so far
 * (test hook: the merge work must stay n log n on pathological input). */
uint64_t dr_bpe_steps(void);

void dr_bpe_free(dr_bpe *b);

/* ---- the tokenizer --------------------------------------------------------- */

enum {
    DR_TOKF_PRESENT = 1, /* the id names a token */
    DR_TOKF_ADDED = 2,   /* an added token */
    DR_TOKF_SPECIAL = 4, /* an added token with "special": true */
    DR_TOKF_EOG = 8,     /* generation stops here */
};

struct dr_tokenizer {
    char *name;          /* file label for error messages */
    int32_t n_vocab;     /* max id + 1 */
    uint8_t *flags;      /* [n_vocab] DR_TOKF_* */
    char *strs;          /* stored strings of all ids, NUL-separated */
    uint32_t *str_off;   /* [n_vocab] offset into strs */
    uint32_t *str_len;   /* [n_vocab] */
    uint8_t *bytes;      /* decoded bytes of all ids */
    uint32_t *bytes_off; /* [n_vocab] */
    uint32_t *bytes_len; /* [n_vocab] */

    dr_bpe bpe;
    dr_normalizer norm;
    dr_pretok pre;

    dr_added_token *added; /* in file order */
    size_t n_added;
    dr_strmap added_map;   /* content -> id */
    dr_trie trie_raw;      /* added tokens with normalized: false */
    dr_trie trie_norm;     /* added tokens with normalized: true */

    int32_t eos[16];       /* eos ids from the config files */
    size_t n_eos;
    char *chat_template;   /* NULL if none */

    /* Encoding state: the BPE cache and scratch below are guarded by lock. */
    pthread_mutex_t lock;
    dr_matches m_raw, m_norm; /* added-token matches of the current call */
};

#endif
