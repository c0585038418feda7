/* cuda_host.h - the cuda plugin's pure host-side decisions, kept free of CUDA calls so that a
 * unit test checks them on a machine without a GPU: which devices this build's kernels can run
 * on, why CUDA is unavailable when it is, and how a reduction is laid out on the grid. */
#ifndef NABLA_CUDA_HOST_H
#define NABLA_CUDA_HOST_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The architectures the plugin was built for, as CMAKE_CUDA_ARCHITECTURES lists them with
 * spaces between entries ("75-real 80-real 90 ..."). */
extern const char nbcu_built_archs[];

/* 1 when code built for `archs` runs on a device of compute capability major.minor: a cubin of
 * the same major and a minor not above the device's (an "a" cubin only on its own capability),
 * or PTX of a capability not above the device's (the driver compiles it). 0 when none does.
 * -1 when `archs` holds an entry this cannot judge (all, all-major, native): ask the device. */
int nbcu_archs_run_on(const char *archs, int major, int minor);

/* The reason CUDA is unavailable, for nabla-info: `err` and `err_name` are what
 * cudaGetDeviceCount returned, `libcuda` is 1 when libcuda.so.1 could be loaded (then
 * `driver_version` is cuDriverGetVersion's, e.g. 12040), else `dl_error` says why not.
 * `runtime_version` is the CUDA runtime's (e.g. 13000). */
void nbcu_driver_reason(char *buf, size_t len, int err, const char *err_name, int libcuda,
                        const char *dl_error, int driver_version, int runtime_version);

/* How a reduction runs, from the input strides (elements) of the innermost kept dim and of the
 * innermost reduced dim, and the counts of outputs and of elements folded into each. */
typedef struct nbcu_reduce_plan {
    int columns;    /* 1: a thread per output, neighbouring outputs in one warp */
    int64_t chunks; /* row path: blocks per output (> 1: partial results and a second pass) */
} nbcu_reduce_plan;
nbcu_reduce_plan nbcu_plan_reduce(int64_t kept_stride, int64_t red_stride, int64_t n_out,
                                  int64_t n_red);

#ifdef __cplusplus
}
#endif
#endif /* NABLA_CUDA_HOST_H */
