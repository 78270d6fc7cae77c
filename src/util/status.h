/* util/status.h - the one error channel of libdeltarun.
 *
 * Every fallible library function returns a dr_status and, on failure, leaves
 * a human-readable message in a thread-local buffer read by dr_last_error().
 * DR_FAIL() records the message together with the file:line that detected the
 * problem, so one breakpoint on dr_fail_at() catches every bad-input path.
 * Nothing in the library exits or aborts on bad input.
 */
#ifndef DR_UTIL_STATUS_H
#define DR_UTIL_STATUS_H

#include "deltarun.h"

/* Record a failure: formats the message, remembers where it was raised and
 * returns `st` so callers can write `return DR_FAIL(DR_ERR_FORMAT, "...")`. */
dr_status dr_fail_at(const char *file, int line, dr_status st, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
#define DR_FAIL(st, ...) dr_fail_at(__FILE__, __LINE__, (st), __VA_ARGS__)

/* Prefix the current message with context ("config.json: " + old message).
 * Returns `st` unchanged. Can't fail (truncates if the buffer is full). */
dr_status dr_error_prefix(dr_status st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Clear the thread's error message. */
void dr_error_clear(void);

/* Where the last failure was raised ("src/format/safetensors.c:123"), for tests. */
const char *dr_last_error_site(void);

/* Propagate a failing status. */
#define DR_TRY(expr)                \
    do {                            \
        dr_status dr_try_ = (expr); \
        if (dr_try_ != DR_OK)       \
            return dr_try_;         \
    } while (0)

#endif
