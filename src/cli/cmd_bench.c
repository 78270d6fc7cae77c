/* cli/cmd_bench.c - `deltarun bench` (being written for the CPU-speed issue). */
#include "cli/cmd_bench.h"

#include "cli/args.h"

int dr_cli_bench(int argc, char **argv) {
    (void)argc;
    (void)argv;
    return dr_cli_err("bench: not available in this build yet");
}
