/* ops/cpu/amx_detect.c - whether the AMX prefill of amx.c can run on this
 * CPU (dr_amx_enabled, ops/cpu/amx.h).
 *
 * Not in amx.c: that file is compiled with AVX-512 and AMX flags, and the
 * compiler may use those instructions anywhere in it. An ASan build did, in
 * the check itself (vmovdqu8 to poison the stack's shadow), and every CPU
 * without AVX-512 died there with SIGILL. This file gets no ISA flags, so
 * the question is safe to ask on any x86-64. DR_AMX_BUILT (cpu.cmake) says
 * that amx.c was compiled with the tile kernels.
 */
#include "ops/cpu/amx.h"

#if defined(__x86_64__) && defined(DR_AMX_BUILT)
#include <cpuid.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static bool g_on;

/* CPUID leaf 7: AMX-BF16 is EDX bit 22, AMX-TILE bit 24; then ask Linux for
 * the tile state (ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), without which
 * the first tile instruction faults. */
static void detect(void) {
    unsigned a, b, c, d;
    const bool cpu = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 22 & 1) && (d >> 24 & 1);
    const char *e = getenv("DR_CPU_AMX"); /* 0: off, for A/B runs */
    g_on = cpu && !(e && strcmp(e, "0") == 0) && syscall(SYS_arch_prctl, 0x1023, 18) == 0;
}

bool dr_amx_enabled(void) {
    pthread_once(&g_once, detect);
    return g_on;
}
#else /* no AMX in this build: the fp32 path always runs */
bool dr_amx_enabled(void) { return false; }
#endif
