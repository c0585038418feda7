/* cuda_host.c - host-side decisions of the cuda plugin that need no GPU to test: can this
 * build's fatbin run on a device of a given compute capability, the words for a missing or
 * too old driver, and the grid layout of a reduction. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_host.h"

#ifndef NBCU_CUDA_ARCHS
#define NBCU_CUDA_ARCHS ""
#endif
const char nbcu_built_archs[] = NBCU_CUDA_ARCHS;

int nbcu_archs_run_on(const char *archs, int major, int minor)
{
    int dev = major * 10 + minor, runs = 0;
    const char *p = archs ? archs : "";
    while (*p) {
        while (*p == ' ' || *p == ';' || *p == ',')
            p++;
        if (!*p)
            break;
        const char *start = p;
        while (*p && *p != ' ' && *p != ';' && *p != ',')
            p++;
        char item[32];
        size_t n = (size_t)(p - start);
        if (n >= sizeof item)
            return -1;
        memcpy(item, start, n);
        item[n] = '\0';
        if (!isdigit((unsigned char)item[0]))
            return -1; /* all, all-major, native: only the device can tell */
        char *end;
        long cc = strtol(item, &end, 10);
        int specific = *end == 'a'; /* 90a: only on 9.0 itself */
        if (specific || *end == 'f')
            end++;
        int real = 1, virt = 1;
        if (strcmp(end, "-real") == 0)
            virt = 0;
        else if (strcmp(end, "-virtual") == 0)
            real = 0;
        else if (*end)
            return -1;
        if (real && (specific ? cc == dev : cc / 10 == major && cc % 10 <= minor))
            runs = 1;
        if (virt && !specific && cc <= dev)
            runs = 1;
    }
    return runs;
}

void nbcu_driver_reason(char *buf, size_t len, int err, const char *err_name, int libcuda,
                        const char *dl_error, int driver_version, int runtime_version)
{
    int rmaj = runtime_version / 1000, rmin = runtime_version % 1000 / 10;
    if (!libcuda) {
        snprintf(buf, len, "CUDA driver not found (libcuda.so.1: %s); cudaGetDeviceCount "
                 "returned %d (%s)", dl_error && *dl_error ? dl_error : "not loadable", err,
                 err_name);
        return;
    }
    /* cudaErrorInsufficientDriver: the driver is older than the runtime the plugin carries.
     * CUDA 13 needs driver branch R580 or newer; other majors are named by their version. */
    if (err == 35) {
        if (rmaj == 13)
            snprintf(buf, len, "CUDA driver too old for CUDA 13 (needs R580+): the installed "
                     "driver supports CUDA %d.%d; cudaGetDeviceCount returned 35 (%s)",
                     driver_version / 1000, driver_version % 1000 / 10, err_name);
        else
            snprintf(buf, len, "CUDA driver too old for CUDA %d.%d: the installed driver "
                     "supports CUDA %d.%d; cudaGetDeviceCount returned 35 (%s)", rmaj, rmin,
                     driver_version / 1000, driver_version % 1000 / 10, err_name);
        return;
    }
    if (err == 100) { /* cudaErrorNoDevice */
        snprintf(buf, len, "no CUDA device found: cudaGetDeviceCount returned 100 (%s)",
                 err_name);
        return;
    }
    snprintf(buf, len, "CUDA unavailable: cudaGetDeviceCount returned %d (%s)", err, err_name);
}

nbcu_reduce_plan nbcu_plan_reduce(int64_t kept_stride, int64_t red_stride, int64_t n_out,
                                  int64_t n_red)
{
    nbcu_reduce_plan p = {0, 1};
    /* Few outputs over many elements: one block each would leave most of the GPU idle (a full
     * sum would run on one SM), so each output is split into chunks of about 16K elements,
     * about 4096 blocks in all. */
    if (n_red >= 65536 && n_out < 1024) {
        int64_t want = (n_red + 16383) / 16384, cap = 4096 / n_out;
        p.chunks = want < cap ? want : cap;
        if (p.chunks < 1)
            p.chunks = 1;
        if (p.chunks > 1)
            return p;
    }
    /* A thread per output where neighbouring outputs are neighbours in memory and the reduced
     * elements are not (a sum over dim 0), or where each output folds too few elements to
     * fill a warp. */
    if (n_out > 1 && ((kept_stride == 1 && red_stride != 1) || n_red < 32))
        p.columns = 1;
    return p;
}
