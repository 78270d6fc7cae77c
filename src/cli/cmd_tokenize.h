/* cli/cmd_tokenize.h - the `deltarun tokenize` and `deltarun detokenize`
 * subcommands. argv[0] is the subcommand name; both return the process exit
 * status (0 ok, 1 failure while running, 2 bad arguments) and print errors
 * to stderr.
 */
#ifndef DR_CLI_CMD_TOKENIZE_H
#define DR_CLI_CMD_TOKENIZE_H

/* deltarun tokenize MODEL_DIR|tokenizer.json (--text T | --file F) [--no-special]
 * deltarun tokenize MODEL_DIR|tokenizer.json --bench FILE [--runs N] */
int dr_cli_tokenize(int argc, char **argv);

/* deltarun detokenize MODEL_DIR|tokenizer.json --ids 1,2,3 [--skip-special] */
int dr_cli_detokenize(int argc, char **argv);

#endif
