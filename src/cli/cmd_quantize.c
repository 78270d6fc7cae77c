/* cli/cmd_quantize.c - `deltarun quantize` (being written for the CPU-speed issue). */
#include "cli/cmd_quantize.h"

#include "cli/args.h"

int dr_cli_quantize(int argc, char **argv) {
    (void)argc;
    (void)argv;
    return dr_cli_err("quantize: not available in this build yet");
}
