/* cli/prompt.c - --prompt TEXT for `generate` and `logits`. */
#include "cli/prompt.h"

#include "cli/args.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int dr_cli_prompt_ids(const char *model_dir, const char *text, int32_t **ids, int *n) {
    dr_tokenizer *tok = NULL;
    dr_tokens t = {0};
    if (dr_tokenizer_load(model_dir, &tok) != DR_OK)
        return dr_cli_lib_err();
    int rc = 0;
    if (dr_tokenize(tok, text, strlen(text), true, &t) != DR_OK) {
        fprintf(stderr, "deltarun: --prompt: %s\n", dr_last_error());
        rc = 2;
    } else if (t.n == 0) {
        rc = dr_cli_err("--prompt: the text gives no tokens");
    } else {
        *ids = malloc(t.n * sizeof **ids);
        if (!*ids)
            rc = dr_cli_err("out of memory");
        else {
            memcpy(*ids, t.ids, t.n * sizeof **ids);
            *n = (int)t.n;
        }
    }
    dr_tokens_free(&t);
    dr_tokenizer_free(tok);
    return rc;
}
