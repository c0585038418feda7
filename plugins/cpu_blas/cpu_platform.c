/* cpu_platform.c - what the cpu_blas plugin learns about the machine it runs on: the ISA level
 * its own kernels may use (from cpuid, never the model), the BLAS library it loads at run time
 * with an OpenBLAS core that matches those features, and the worker threads it stops at
 * shutdown. */
#include "cpu_internal.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#ifdef _OPENMP
#include <omp.h>
/* OpenMP 5.0's pause (libgomp has it since GCC 9, while still reporting _OPENMP 4.5); weak, so
 * a runtime without it leaves its pool running instead of failing to load. */
#if defined(__GNUC__) && (__GNUC__ >= 9 || defined(__clang__))
#define NBC_OMP_PAUSE 1
#pragma weak omp_pause_resource_all
#endif
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#ifndef NBC_BLAS_SONAME
#define NBC_BLAS_SONAME "libopenblas.so.0"
#endif

nbc_isa nbc_isa_level = NBC_ISA_BASELINE;
nbc_blas_fns nbc_blas;

static void *blas_handle;
static nbc_isa isa_detected;
static bool isa_capped;    /* NABLA_CPU_ISA asked for less than the CPU has */
static char isa_note[96];  /* why the level in use differs from the CPU's, if it does */
static char core_note[160]; /* how the BLAS core was chosen */
static char cpu_model[64];
static const char *sbgemm_note = "";

static const char *const isa_names[] = {"baseline x86-64", "x86-64-v3 (AVX2+FMA)",
                                        "x86-64-v4 (AVX-512)"};
static const char *const isa_keys[] = {"baseline", "avx2", "avx512"};

/* ---- CPU features ---- */

#if defined(__x86_64__) || defined(__i386__)
static uint64_t xgetbv0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

/* The level needs both the instructions and the OS saving their registers (XCR0). */
static nbc_isa detect_isa(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return NBC_ISA_BASELINE;
    const bool fma = c & (1u << 12), movbe = c & (1u << 22), osxsave = c & (1u << 27),
               avx = c & (1u << 28), f16c = c & (1u << 29);
    if (!osxsave || !avx)
        return NBC_ISA_BASELINE;
    const uint64_t xcr0 = xgetbv0();
    if ((xcr0 & 0x6) != 0x6)
        return NBC_ISA_BASELINE;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return NBC_ISA_BASELINE;
    const bool bmi1 = b & (1u << 3), avx2 = b & (1u << 5), bmi2 = b & (1u << 8);
    const bool v4 = (b & (1u << 16)) && (b & (1u << 17)) && (b & (1u << 28)) &&
                    (b & (1u << 30)) && (b & (1u << 31)) && (xcr0 & 0xe0) == 0xe0;
    unsigned ea = 0, eb = 0, ec = 0, ed = 0;
    __get_cpuid(0x80000001, &ea, &eb, &ec, &ed);
    const bool lzcnt = ec & (1u << 5);
    if (!(avx2 && fma && bmi1 && bmi2 && f16c && movbe && lzcnt))
        return NBC_ISA_BASELINE;
    return v4 ? NBC_ISA_AVX512 : NBC_ISA_AVX2;
}

static void read_cpu_model(void)
{
    unsigned r[12];
    if (__get_cpuid(0x80000000, &r[0], &r[1], &r[2], &r[3]) && r[0] >= 0x80000004) {
        for (unsigned k = 0; k < 3; k++)
            __get_cpuid(0x80000002 + k, &r[4 * k], &r[4 * k + 1], &r[4 * k + 2], &r[4 * k + 3]);
        char brand[49];
        memcpy(brand, r, 48);
        brand[48] = 0;
        const char *s = brand;
        while (*s == ' ')
            s++;
        snprintf(cpu_model, sizeof cpu_model, "%s", s);
    }
}
#else
static nbc_isa detect_isa(void) { return NBC_ISA_BASELINE; }
static void read_cpu_model(void) {}
#endif

/* NABLA_CPU_ISA=baseline|avx2|avx512 caps the level, as if the CPU had no wider ISA. */
static void choose_isa(void)
{
    isa_detected = detect_isa();
    nbc_isa_level = isa_detected;
    isa_note[0] = 0;
    isa_capped = false;
    const char *cap = getenv("NABLA_CPU_ISA");
    if (!cap || !*cap)
        return;
    for (int k = 0; k <= NBC_ISA_AVX512; k++)
        if (strcasecmp(cap, isa_keys[k]) == 0) {
            if ((nbc_isa)k < nbc_isa_level) {
                nbc_isa_level = (nbc_isa)k;
                isa_capped = true;
            }
            snprintf(isa_note, sizeof isa_note, " (NABLA_CPU_ISA=%s; the CPU has %s)", cap,
                     isa_keys[isa_detected]);
            return;
        }
    snprintf(isa_note, sizeof isa_note,
             " (NABLA_CPU_ISA='%.24s' ignored: expected baseline, avx2 or avx512)", cap);
}

/* ---- the BLAS library ---- */

/* The widest ISA an OpenBLAS core's kernels use; -1 for names this table does not know, which
 * are left alone (a newer OpenBLAS knows cores that this list does not). */
static int core_level(const char *core)
{
    static const struct {
        const char *name;
        int level;
    } cores[] = {
        {"skylakex", NBC_ISA_AVX512},   {"cooperlake", NBC_ISA_AVX512},
        {"sapphirerapids", NBC_ISA_AVX512}, {"haswell", NBC_ISA_AVX2},
        {"zen", NBC_ISA_AVX2},          {"excavator", NBC_ISA_AVX2},
        {"sandybridge", NBC_ISA_BASELINE}, {"bulldozer", NBC_ISA_BASELINE},
        {"piledriver", NBC_ISA_BASELINE}, {"steamroller", NBC_ISA_BASELINE},
        {"prescott", NBC_ISA_BASELINE}, {"core2", NBC_ISA_BASELINE},
        {"penryn", NBC_ISA_BASELINE},   {"dunnington", NBC_ISA_BASELINE},
        {"nehalem", NBC_ISA_BASELINE},  {"atom", NBC_ISA_BASELINE},
        {"opteron", NBC_ISA_BASELINE},  {"opteron_sse3", NBC_ISA_BASELINE},
        {"barcelona", NBC_ISA_BASELINE}, {"bobcat", NBC_ISA_BASELINE},
        {"nano", NBC_ISA_BASELINE},     {"katmai", NBC_ISA_BASELINE},
        {"coppermine", NBC_ISA_BASELINE}, {"northwood", NBC_ISA_BASELINE},
        {"banias", NBC_ISA_BASELINE},
    };
    for (size_t k = 0; k < sizeof cores / sizeof cores[0]; k++)
        if (core && strcasecmp(core, cores[k].name) == 0)
            return cores[k].level;
    return -1;
}

/* The OpenBLAS core for an ISA level; both run on Intel and AMD alike. */
static const char *core_for(nbc_isa level)
{
    return level == NBC_ISA_AVX512 ? "SkylakeX" : level == NBC_ISA_AVX2 ? "Haswell" : "Prescott";
}

static bool resolve_blas(void *h)
{
    nbc_blas = (nbc_blas_fns){0};
    *(void **)&nbc_blas.sgemm_lib = dlsym(h, "cblas_sgemm");
    nbc_blas.sgemm = nbc_blas.sgemm_lib;
    *(void **)&nbc_blas.dgemm = dlsym(h, "cblas_dgemm");
    *(void **)&nbc_blas.get_config = dlsym(h, "openblas_get_config");
    *(void **)&nbc_blas.get_corename = dlsym(h, "openblas_get_corename");
    *(void **)&nbc_blas.get_num_threads = dlsym(h, "openblas_get_num_threads");
    *(void **)&nbc_blas.thread_shutdown = dlsym(h, "blas_thread_shutdown_");
    return nbc_blas.sgemm && nbc_blas.dgemm;
}

static const char *corename(void)
{
    return nbc_blas.get_corename ? nbc_blas.get_corename() : NULL;
}

/* OpenBLAS picks its core from the CPU model when it is loaded, and falls back to an SSE3 core
 * for models it does not know (common on cloud VMs that mask the model). Such a core on a CPU
 * with AVX2 or AVX-512 runs gemm 3-5x slower, so the library is loaded once more with
 * OPENBLAS_CORETYPE naming the core for the CPU's features. A user's own OPENBLAS_CORETYPE is
 * never overridden. */
static nb_status load_blas(void)
{
    const char *user_core = getenv("OPENBLAS_CORETYPE");
    void *h = dlopen(NBC_BLAS_SONAME, RTLD_NOW | RTLD_LOCAL);
    if (!h)
        return NBC_ERR(NB_PLUGIN_LOAD, "cpu plugin: cannot load its BLAS library %s: %s",
                       NBC_BLAS_SONAME, dlerror());
    if (!resolve_blas(h)) {
        dlclose(h);
        return NBC_ERR(NB_PLUGIN_LOAD, "cpu plugin: %s has no cblas_sgemm/cblas_dgemm",
                       NBC_BLAS_SONAME);
    }
    const char *core = corename();
    const int have = core_level(core);
    core_note[0] = 0;
    if (user_core && *user_core) {
        if (!core || strcasecmp(core, user_core) != 0)
            snprintf(core_note, sizeof core_note,
                     "%s (OPENBLAS_CORETYPE='%.32s' was not taken by OpenBLAS)", core ? core : "?",
                     user_core);
        else
            snprintf(core_note, sizeof core_note, "%s (from OPENBLAS_CORETYPE)", core);
    } else if ((have == NBC_ISA_BASELINE && nbc_isa_level > NBC_ISA_BASELINE) ||
               (isa_capped && have > (int)nbc_isa_level)) {
        /* Reload with the core for the level in use: wider when OpenBLAS fell back to a
         * generic core, narrower only when NABLA_CPU_ISA asked for it. */
        const char *want = core_for(nbc_isa_level);
        char detected[32];
        snprintf(detected, sizeof detected, "%s", core);
        dlclose(h);
        void *still = dlopen(NBC_BLAS_SONAME, RTLD_NOW | RTLD_NOLOAD);
        if (still) {
            /* Another part of the process loaded the library first: its core stays. */
            h = still;
            resolve_blas(h);
            snprintf(core_note, sizeof core_note,
                     "%s (the CPU supports %s, but the library was already loaded)", detected,
                     want);
        } else {
            setenv("OPENBLAS_CORETYPE", want, 1);
            h = dlopen(NBC_BLAS_SONAME, RTLD_NOW | RTLD_LOCAL);
            unsetenv("OPENBLAS_CORETYPE");
            if (!h || !resolve_blas(h))
                return NBC_ERR(NB_PLUGIN_LOAD, "cpu plugin: reloading %s failed: %s",
                               NBC_BLAS_SONAME, h ? "no cblas symbols" : dlerror());
            core = corename();
            snprintf(core_note, sizeof core_note,
                     "%s (chosen for %s; OpenBLAS's own pick was %s)", core ? core : "?",
                     isa_capped ? "NABLA_CPU_ISA" : "the CPU's features", detected);
        }
    } else {
        snprintf(core_note, sizeof core_note, "%s", core ? core : "not OpenBLAS");
    }
    /* Worker threads may outlive a later dlclose; the library stays mapped. */
    dlopen(NBC_BLAS_SONAME, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
    blas_handle = h;
    return NB_OK;
}

/* cblas_sbgemm (bfloat16 inputs, float32 accumulation and output) is looked up at run time:
 * OpenBLAS exports it only when built with BUILD_BFLOAT16, and Debian's 0.3.21 declares it in
 * cblas.h without exporting it. NABLA_CPU_SBGEMM=0 leaves it unused, as if absent;
 * NABLA_CPU_SBGEMM=reference puts the plugin's own loop with the same signature in its place,
 * so that the path that calls it is tested on machines whose library has none. Read at every
 * open, so a test can switch between runs. */
static void choose_sbgemm(void)
{
    *(void **)&nbc_blas.sbgemm = blas_handle ? dlsym(blas_handle, "cblas_sbgemm") : NULL;
    sbgemm_note = nbc_blas.sbgemm ? "the library's" : "none, bfloat16 matmul widens to sgemm";
    const char *env = getenv("NABLA_CPU_SBGEMM");
    if (env && strcmp(env, "0") == 0) {
        nbc_blas.sbgemm = NULL;
        sbgemm_note = "off (NABLA_CPU_SBGEMM=0), bfloat16 matmul widens to sgemm";
    } else if (env && strcmp(env, "reference") == 0) {
        nbc_blas.sbgemm = nbc_reference_sbgemm;
        sbgemm_note = "the plugin's reference loop (NABLA_CPU_SBGEMM=reference)";
    }
}

nb_status nbc_platform_open(void)
{
    if (!blas_handle) {
        choose_isa();
        read_cpu_model();
        nb_status st = load_blas();
        if (st != NB_OK)
            return st;
    }
    choose_sbgemm();
    nbc_gemm_open();
    return NB_OK;
}

/* Joins the worker threads of OpenMP and OpenBLAS, so that nothing runs after nb_shutdown
 * (leak checkers stop the world at exit and must find one thread). Both pools start again on
 * their next use. */
void nbc_platform_stop_threads(void)
{
#ifdef NBC_OMP_PAUSE
    if (omp_pause_resource_all)
        omp_pause_resource_all(omp_pause_hard);
#endif
    if (nbc_blas.thread_shutdown)
        nbc_blas.thread_shutdown();
}

void nbc_platform_describe(char *buf, size_t len)
{
    snprintf(buf, len, "%s; ISA %s%s; BLAS %s, core %s, sgemm %s, sbgemm %s; %d threads (BLAS %d)",
             cpu_model[0] ? cpu_model : "unknown CPU", isa_names[nbc_isa_level], isa_note,
             nbc_blas.get_config ? nbc_blas.get_config() : NBC_BLAS_SONAME,
             core_note[0] ? core_note : "?", nbc_gemm_describe(), sbgemm_note, nbc_max_threads(),
             nbc_blas.get_num_threads ? nbc_blas.get_num_threads() : 1);
}

/* The same facts, one "topic: value" line each (nb_plugin.device_info, for nabla-info). */
void nbc_platform_info(char *buf, size_t len)
{
    snprintf(buf, len,
             "CPU: %s\nISA: %s%s\nBLAS: %s\nBLAS core: %s\nsgemm: %s\nsbgemm: %s\n"
             "threads: %d (BLAS %d)",
             cpu_model[0] ? cpu_model : "unknown CPU", isa_names[nbc_isa_level], isa_note,
             nbc_blas.get_config ? nbc_blas.get_config() : NBC_BLAS_SONAME,
             core_note[0] ? core_note : "?", nbc_gemm_describe(), sbgemm_note, nbc_max_threads(),
             nbc_blas.get_num_threads ? nbc_blas.get_num_threads() : 1);
}
