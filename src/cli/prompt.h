/* cli/prompt.h - turning --prompt text into token ids for the model commands. */
#ifndef DR_CLI_PROMPT_H
#define DR_CLI_PROMPT_H

#include "deltarun_text.h"

/* Tokenize `text` with the tokenizer of MODEL_DIR (special tokens such as
 * <|im_start|> in the text are parsed, as in a raw prompt). On success
 * *ids (malloc'd) and *n are set; on failure prints the error, returns 2. */
int dr_cli_prompt_ids(const char *model_dir, const char *text, int32_t **ids, int *n);

#endif
