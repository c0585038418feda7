/* nabla-info - lists the plugins Nabla found (with the reason any failed), their ABI versions,
 * their devices, and which ops each device runs with a kernel of its own. */
#include "nabla.h"
#include "nabla_plugin.h" /* the ABI version this core speaks */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const nb_dtype dtypes[] = {NB_DTYPE_F32, NB_DTYPE_F64, NB_DTYPE_I32,  NB_DTYPE_I64,
                                  NB_DTYPE_BOOL, NB_DTYPE_U8,  NB_DTYPE_F16, NB_DTYPE_BF16};

/* native: the device's own kernel; fallback: runs on the CPU because NABLA_CPU_FALLBACK=1 is
 * set; cpu-only: would run on the CPU with NABLA_CPU_FALLBACK=1, an error without it. */
static const char *coverage(const char *device, const char *op, nb_dtype dt, bool fallback)
{
    if (nb_device_has_kernel(device, op, dt))
        return "native";
    if (strcmp(device, "cpu:0") != 0 && nb_device_has_kernel("cpu", op, dt))
        return fallback ? "fallback" : "cpu-only";
    return "-";
}

static void print_coverage(const char *device)
{
    const char *env = getenv("NABLA_CPU_FALLBACK");
    bool fallback = env && strcmp(env, "1") == 0;
    printf("    %-24s", "op");
    for (size_t d = 0; d < sizeof dtypes / sizeof *dtypes; d++)
        printf(" %-8s", nb_dtype_name(dtypes[d]));
    printf("\n");
    for (size_t k = 0; k < nb_op_count(); k++) {
        printf("    %-24s", nb_op_name(k));
        for (size_t d = 0; d < sizeof dtypes / sizeof *dtypes; d++)
            printf(" %-8s", coverage(device, nb_op_name(k), dtypes[d], fallback));
        printf("\n");
    }
}

/* The plugin's own lines about the device (GEMM library, program cache...), indented. */
static void print_device_info(const char *device)
{
    char info[4096];
    if (nb_device_info(device, info, sizeof info) != NB_OK) {
        printf("    (no device info: %s)\n", nb_last_error());
        return;
    }
    for (char *line = info; *line;) {
        char *end = strchr(line, '\n');
        if (end)
            *end = '\0';
        printf("    %s\n", line);
        if (!end)
            break;
        line = end + 1;
    }
}

int main(int argc, char **argv)
{
    bool ops = argc > 1 && strcmp(argv[1], "--ops") == 0;
    if (argc > 1 && !ops) {
        fprintf(stderr, "usage: nabla-info [--ops]\n"
                        "  lists plugins, devices and (with --ops) each device's op coverage:\n"
                        "  native, fallback (runs on the CPU: NABLA_CPU_FALLBACK=1), cpu-only\n"
                        "  (would fall back if NABLA_CPU_FALLBACK=1 were set) or -\n");
        return 2;
    }
    if (nb_init() != NB_OK) {
        fprintf(stderr, "nabla-info: %s\n", nb_last_error());
        return 1;
    }
    printf("Nabla %d.%d.%d, plugin ABI %d.%d\n", NABLA_VERSION_MAJOR, NABLA_VERSION_MINOR,
           NABLA_VERSION_PATCH, NB_PLUGIN_ABI_MAJOR, NB_PLUGIN_ABI_MINOR);
    printf("default device: %s\n\n", nb_default_device());
    size_t n = nb_plugin_count();
    if (n == 0)
        printf("no plugins found (set NABLA_PLUGIN_PATH to a folder with nabla_plugin_*.so)\n");
    for (size_t i = 0; i < n; i++) {
        nb_plugin_info info;
        if (nb_plugin_get(i, &info) != NB_OK)
            continue;
        if (!info.loaded) {
            printf("plugin %s: NOT LOADED\n  file: %s\n  reason: %s\n\n", info.name, info.path,
                   info.note);
            continue;
        }
        printf("plugin %s %s (ABI %u.%u), %zu kernels\n  file: %s\n  devices: %d%s%s\n",
               info.name, info.version, info.abi_major, info.abi_minor, info.n_kernels,
               info.path, info.devices, *info.note ? " - " : "", info.note);
        for (int d = 0; d < info.devices; d++) {
            char dev[64];
            snprintf(dev, sizeof dev, "%s:%d", info.name, d);
            int native = 0;
            for (size_t k = 0; k < nb_op_count(); k++)
                for (size_t t = 0; t < sizeof dtypes / sizeof *dtypes; t++)
                    native += nb_device_has_kernel(dev, nb_op_name(k), dtypes[t]);
            char name[512];
            if (nb_device_name(dev, name, sizeof name) != NB_OK)
                snprintf(name, sizeof name, "(no name: %s)", nb_last_error());
            printf("  %s: %s\n    %d native (op, dtype) kernels of %zu ops\n", dev, name, native,
                   nb_op_count());
            print_device_info(dev);
            if (ops)
                print_coverage(dev);
        }
        printf("\n");
    }
    /* Collective backends (process groups, DDP) load on demand; show whether each would. */
    static const char *backends[] = {"mpi", "nccl"};
    for (size_t i = 0; i < sizeof backends / sizeof *backends; i++) {
        nb_process_group_backend_info b;
        if (nb_process_group_backend_get(backends[i], &b) != NB_OK)
            continue;
        if (b.loaded)
            printf("collective backend %s: %s, reaches %s tensors\n  file: %s\n", b.name,
                   b.version, b.devices, b.path);
        else
            printf("collective backend %s: NOT AVAILABLE\n  reason: %s\n", b.name, b.note);
    }
    return nb_shutdown() == NB_OK ? 0 : 1;
}
