/* cli/main.c - the `deltarun` command: dispatch to subcommands. */
#include "cli/args.h"
#include "cli/cmd_bench.h"
#include "cli/cmd_model.h"
#include "cli/cmd_quantize.h"
#include "cli/cmd_run.h"
#include "cli/cmd_tokenize.h"

#include <stdio.h>
#include <string.h>

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} command;

static const command g_commands[] = {
    {"run", dr_cli_run, "chat with a model (one-shot with -p, else interactive)"},
    {"generate", dr_cli_generate, "continue a prompt (ids or raw text) without the chat format"},
    {"logits", dr_cli_logits, "write the logits of every prompt position to a safetensors file"},
    {"info", dr_cli_info, "print a model's architecture summary"},
    {"tokenize", dr_cli_tokenize, "text to token ids (JSON); --bench measures the tokenizer"},
    {"detokenize", dr_cli_detokenize, "token ids to text"},
    {"bench", dr_cli_bench, "measure prefill / decode speed against the memory-bandwidth floor"},
    {"quantize", dr_cli_quantize, "write an MLX-format 8/4-bit copy of a model"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: deltarun COMMAND [options]   (deltarun COMMAND --help for details)\n\n"
               "Runs Qwen3.5 / Qwen3.6 / Qwen3-Next models from a Hugging Face directory\n"
               "(config.json + safetensors), with an fp32 recurrent state.\n\n"
               "Commands:\n");
    for (size_t i = 0; i < sizeof g_commands / sizeof g_commands[0]; i++)
        fprintf(f, "  %-10s %s\n", g_commands[i].name, g_commands[i].summary);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 1;
    }
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof g_commands / sizeof g_commands[0]; i++)
        if (!strcmp(argv[1], g_commands[i].name))
            return g_commands[i].run(argc - 1, argv + 1);
    dr_cli_err("unknown command \"%s\"", argv[1]);
    usage(stderr);
    return 1;
}
