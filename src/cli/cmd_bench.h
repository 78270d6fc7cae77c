/* cli/cmd_bench.h - `deltarun bench`. */
#ifndef DR_CLI_CMD_BENCH_H
#define DR_CLI_CMD_BENCH_H
int dr_cli_bench(int argc, char **argv);
#endif
