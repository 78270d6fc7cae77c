/* util/status.c - thread-local error messages and the status-code table.
 *
 * The message buffer is per thread so that two threads loading models at once
 * never see each other's errors; the status code is what functions return.
 */
#include "util/status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define DR_MSG_MAX 2048

static _Thread_local char g_msg[DR_MSG_MAX];
static _Thread_local char g_site[256];

dr_status dr_fail_at(const char *file, int line, dr_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_msg, sizeof g_msg, fmt, ap);
    va_end(ap);
    snprintf(g_site, sizeof g_site, "%s:%d", file, line);
    return st;
}

dr_status dr_error_prefix(dr_status st, const char *fmt, ...) {
    char prefix[512], old[DR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, g_msg, sizeof old);
    size_t np = strlen(prefix), no = strlen(old);
    if (np > DR_MSG_MAX - 1)
        np = DR_MSG_MAX - 1;
    if (no > DR_MSG_MAX - 1 - np)
        no = DR_MSG_MAX - 1 - np;
    memcpy(g_msg, prefix, np);
    memcpy(g_msg + np, old, no);
    g_msg[np + no] = '\0';
    return st;
}

void dr_error_clear(void) {
    g_msg[0] = '\0';
    g_site[0] = '\0';
}

const char *dr_last_error(void) { return g_msg; }

const char *dr_last_error_site(void) { return g_site; }

const char *dr_status_str(dr_status st) {
    static const char *const names[] = {
        [DR_OK] = "ok",
        [DR_ERR_IO] = "i/o error",
        [DR_ERR_FORMAT] = "malformed input",
        [DR_ERR_SHAPE] = "shape mismatch",
        [DR_ERR_UNSUPPORTED] = "unsupported",
        [DR_ERR_NOMEM] = "out of memory",
        [DR_ERR_ARG] = "invalid argument",
        [DR_ERR_RANGE] = "out of range",
        [DR_ERR_DEVICE] = "device error",
    };
    if ((int)st < 0 || (size_t)st >= sizeof names / sizeof names[0] || !names[st])
        return "unknown status";
    return names[st];
}
