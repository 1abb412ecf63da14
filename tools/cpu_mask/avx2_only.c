// An LD_PRELOAD library that makes this process see a CPU without AVX-512, VNNI or AVX-VNNI, so that
// ONNX Runtime (which picks its kernels from CPUID, with no setting to override it) runs the AVX2+FMA
// kernels of CPUs such as AMD Zen 3 or Intel before Cascade Lake on a CPU that has more. Linux's
// CPUID faulting (arch_prctl ARCH_SET_CPUID; the cpuid_fault flag in /proc/cpuinfo) turns every
// CPUID into a SIGSEGV; the handler runs the real CPUID with faulting briefly off, clears the bits
// below and steps over the instruction. The setting is per thread and inherited by new threads.
// The kernels run on this CPU's execution units: a proxy for an AVX2-only CPU, not one.
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>
#include <asm/prctl.h>
#include <cpuid.h>

static void set_cpuid(int enabled) { syscall(SYS_arch_prctl, ARCH_SET_CPUID, enabled); }

static void on_segv(int sig, siginfo_t *info, void *context) {
    (void)sig;
    (void)info;
    ucontext_t *uc = context;
    greg_t *r = uc->uc_mcontext.gregs;
    const uint8_t *ip = (const uint8_t *)r[REG_RIP];
    if (ip[0] != 0x0f || ip[1] != 0xa2) {
        signal(SIGSEGV, SIG_DFL);
        return;  // not CPUID: the default action runs when the instruction faults again
    }
    unsigned leaf = (unsigned)r[REG_RAX], sub = (unsigned)r[REG_RCX], a, b, c, d;
    set_cpuid(1);
    __cpuid_count(leaf, sub, a, b, c, d);
    set_cpuid(0);
    if (leaf == 7 && sub == 0) {  // AVX-512 F/DQ/IFMA/PF/ER/CD/BW/VL; VBMI, VBMI2, VNNI, BITALG, VPOPCNTDQ; 4VNNIW, 4FMAPS, VP2INTERSECT, FP16
        b &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) | (1u << 31));
        c &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
        d &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 23));
    } else if (leaf == 7 && sub == 1) {
        a &= ~((1u << 4) | (1u << 5));  // AVX-VNNI, AVX512_BF16
    } else if (leaf == 0xd && sub == 0) {
        a &= ~0xe0u;  // no AVX-512 state components
    }
    r[REG_RAX] = a; r[REG_RBX] = b; r[REG_RCX] = c; r[REG_RDX] = d;
    r[REG_RIP] += 2;
}

__attribute__((constructor)) static void install(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGSEGV, &sa, NULL);
    set_cpuid(0);
}
