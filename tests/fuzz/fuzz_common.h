/* fuzz_common.h - what every harness shares: one-time set-up (single-threaded kernels, so a
 * run is reproducible), a reader that turns the fuzzer's bytes into choices, and the leak check
 * after each input (nothing may stay alive once the harness has released what it made). */
#ifndef NB_FUZZ_COMMON_H
#define NB_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nabla.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static inline void fuzz_setup(void)
{
    setenv("OMP_NUM_THREADS", "1", 1);
    setenv("OPENBLAS_NUM_THREADS", "1", 1);
    setenv("NABLA_CPU_FALLBACK", "", 1);
    unsetenv("NABLA_DEVICE");
    if (nb_init() != NB_OK) {
        fprintf(stderr, "fuzz: nb_init failed: %s\n", nb_last_error());
        abort();
    }
    if (nb_device_count("cpu") < 1) {
        fprintf(stderr, "fuzz: no cpu device (is the cpu_blas plugin next to libnabla?)\n");
        abort();
    }
    /* NABLA_FUZZ_DEVICE=opencl:0 runs the chains there instead (tensors made without a device
     * go to the default one): replaying a corpus that way checks another plugin. */
    const char *dev = getenv("NABLA_FUZZ_DEVICE");
    if (dev && *dev && nb_set_default_device(dev) != NB_OK) {
        fprintf(stderr, "fuzz: NABLA_FUZZ_DEVICE=%s: %s\n", dev, nb_last_error());
        abort();
    }
}

/* After every input: a tensor or storage still alive is a leak, reported as a crash. */
static inline void fuzz_check_clean(void)
{
    if (nb_live_tensors() != 0 || nb_live_storages() != 0) {
        fprintf(stderr, "fuzz: leak: %lld tensors and %lld storages alive after the input\n",
                (long long)nb_live_tensors(), (long long)nb_live_storages());
        abort();
    }
    nb_clear_error();
}

/* The input as a stream of choices; past its end every read is 0. */
typedef struct fuzz_bytes {
    const uint8_t *p;
    size_t n, at;
} fuzz_bytes;

static inline uint8_t fuzz_u8(fuzz_bytes *b) { return b->at < b->n ? b->p[b->at++] : 0; }
static inline bool fuzz_done(const fuzz_bytes *b) { return b->at >= b->n; }
static inline uint32_t fuzz_below(fuzz_bytes *b, uint32_t n) { return n ? fuzz_u8(b) % n : 0; }

/* A path of this process for harnesses that must hand the loader a file. */
static inline const char *fuzz_temp_path(const char *suffix)
{
    static char path[256];
    if (!path[0]) {
        const char *dir = getenv("TMPDIR");
        snprintf(path, sizeof path, "%s/nabla-fuzz-%ld%s", dir && *dir ? dir : "/tmp",
                 (long)getpid(), suffix);
    }
    return path;
}

static inline bool fuzz_write_file(const char *path, const uint8_t *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return false;
    bool ok = fwrite(data, 1, size, f) == size;
    return fclose(f) == 0 && ok;
}

#endif
