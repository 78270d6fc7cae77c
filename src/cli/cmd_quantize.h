/* cli/cmd_quantize.h - `deltarun quantize`. */
#ifndef DR_CLI_CMD_QUANTIZE_H
#define DR_CLI_CMD_QUANTIZE_H
int dr_cli_quantize(int argc, char **argv);
#endif
