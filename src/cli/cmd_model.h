/* cli/cmd_model.h - subcommands that run the model: logits, generate, info. */
#ifndef DR_CLI_CMD_MODEL_H
#define DR_CLI_CMD_MODEL_H

int dr_cli_logits(int argc, char **argv);
int dr_cli_generate(int argc, char **argv);
int dr_cli_info(int argc, char **argv);

#endif
