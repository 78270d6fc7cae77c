/* cli/cmd_run.h - `deltarun run`: text in, text out (one-shot or chat). */
#ifndef DR_CLI_CMD_RUN_H
#define DR_CLI_CMD_RUN_H
int dr_cli_run(int argc, char **argv);
#endif
