/* cli/args.h - small argument helpers shared by the subcommands. */
#ifndef DR_CLI_ARGS_H
#define DR_CLI_ARGS_H

#include "deltarun.h"

#include <stdbool.h>

/* Print "deltarun: <msg>" to stderr; returns 1 (the CLI's usage-error code). */
int dr_cli_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Report a library failure: "deltarun: " + dr_last_error() on stderr (the
 * message already names the file, tensor or value); returns 2, the CLI's
 * exit status for a failure while running. */
int dr_cli_lib_err(void);

/* True if -h or --help is among argv[1..argc). */
bool dr_cli_wants_help(int argc, char **argv);

/* Value of option argv[*i] (advances *i); NULL (after printing) if missing. */
const char *dr_cli_value(int argc, char **argv, int *i);

/* Strict number parsing: the whole string must be a number in [lo, hi]. */
bool dr_cli_int(const char *s, long lo, long hi, long *out);
bool dr_cli_float(const char *s, double lo, double hi, double *out);

/* "3,17,42" -> ids (malloc'd). Returns false with a message on bad input. */
bool dr_cli_ids(const char *s, int32_t **ids, int *n);

/* Sampling flags: --greedy --temp --top-k --top-p --min-p --repeat-penalty
 * --repeat-last-n --seed. Returns 1 if argv[*i] was one (consumed), 0 if not,
 * -1 on a bad value (message printed). */
int dr_cli_sampling_flag(int argc, char **argv, int *i, dr_sampler_params *p);

/* The help text of the sampling flags. */
extern const char *const dr_cli_sampling_help;

#endif
