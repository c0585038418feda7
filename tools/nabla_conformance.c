/* nabla_conformance.c - the nabla-conformance command: runs the op table of tests/conformance on
 * every chosen device and prints the op x dtype matrix (pass, fail, composite, fallback,
 * unsupported) with one summary line per device. Exit 0: no failure; 1: a failure; 77: no device. */
#include "conformance.h"
#include "large.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXIT_SKIP 77
#define MAX_DEVICES 64

static void usage(FILE *f)
{
    fprintf(f, "usage: nabla-conformance [--device D] [--plugin PATH] [--op NAME] [--report FILE.md]"
               " [--verbose] [--large]\n"
               "  --device D      a device (\"cpu:0\") or a type (\"opencl\": all its devices)\n"
               "  --plugin PATH   load this plugin and test its devices\n"
               "  --op NAME       only this op (repeatable)\n"
               "  --report FILE   also write the matrix as a Markdown table\n"
               "  --verbose       print unsupported checks and accepted error messages too\n"
               "  --large         instead of the op matrix, the large tier: one op per family on\n"
               "                  a tensor of more than 2^31 elements (needs about 6 GiB)\n"
               "Without --device or --plugin, every device of every loaded plugin is tested.\n");
}

static const char *short_name(conf_result r)
{
    static const char *names[] = {"-", "pass", "comp", "fallbk", "unsup", "FAIL"};
    return names[r];
}

typedef struct device_result {
    char name[64];
    conf_cell_out (*cells)[NB_DTYPE_COUNT + 1]; /* per op: dtypes, then the error inputs */
    conf_counts total;
    conf_counts gradgrad; /* second derivatives, also counted in total */
} device_result;

/* Appends the devices of plugin info `pi` to list. */
static int add_plugin_devices(const nb_plugin_info *pi, char list[][64], int n)
{
    for (int d = 0; d < pi->devices && n < MAX_DEVICES; d++)
        snprintf(list[n++], 64, "%s:%d", pi->name, d);
    return n;
}

static bool op_selected(const conf_op *op, char **ops, int n_ops)
{
    if (n_ops == 0)
        return true;
    for (int k = 0; k < n_ops; k++)
        if (strcmp(ops[k], op->name) == 0)
            return true;
    return false;
}

static void print_matrix(FILE *f, const device_result *dr, char **ops, int n_ops, bool md)
{
    if (md) {
        fprintf(f, "\n### %s\n\n| op |", dr->name);
        for (int d = 0; d < NB_DTYPE_COUNT; d++)
            fprintf(f, " %s |", nb_dtype_name((nb_dtype)d));
        fprintf(f, " errors | gradgrad |\n|---|");
        for (int d = 0; d <= NB_DTYPE_COUNT + 1; d++)
            fprintf(f, "---|");
        fprintf(f, "\n");
    } else {
        fprintf(f, "\n%-34s", dr->name);
        for (int d = 0; d < NB_DTYPE_COUNT; d++)
            fprintf(f, " %-7s", nb_dtype_name((nb_dtype)d));
        fprintf(f, " errors  gradgrad\n");
    }
    for (int32_t k = 0; k < conf_n_ops; k++) {
        const conf_op *op = &conf_ops[k];
        if (!op_selected(op, ops, n_ops))
            continue;
        fprintf(f, md ? "| %s |" : "%-34s", op->name);
        for (int d = 0; d <= NB_DTYPE_COUNT; d++) {
            conf_result r = dr->cells[k][d].cell;
            fprintf(f, md ? " %s |" : " %-7s", md ? conf_result_name(r) : short_name(r));
        }
        /* gradgradcheck: the worst over the op's samples, "-" for ops without one */
        conf_result g = CONF_NONE;
        for (int d = 0; d < NB_DTYPE_COUNT; d++)
            for (int r = g + 1; r < CONF_RESULT_COUNT; r++)
                if (dr->cells[k][d].gradgrad.n[r])
                    g = (conf_result)r;
        fprintf(f, md ? " %s |" : " %-7s", md ? conf_result_name(g) : short_name(g));
        fprintf(f, "\n");
    }
}

static void summary(FILE *f, const device_result *dr)
{
    const int64_t *n = dr->total.n;
    fprintf(f, "conformance: device %s: %lld pass, %lld fail, %lld composite, %lld fallback, "
            "%lld unsupported\n", dr->name, (long long)n[CONF_PASS], (long long)n[CONF_FAIL],
            (long long)n[CONF_COMPOSITE], (long long)n[CONF_FALLBACK],
            (long long)n[CONF_UNSUPPORTED]);
    const int64_t *g = dr->gradgrad.n;
    fprintf(f, "conformance: device %s: gradgradcheck %lld pass, %lld fail, %lld composite, "
            "%lld fallback, %lld unsupported (of the totals above)\n", dr->name,
            (long long)(g[CONF_PASS]), (long long)g[CONF_FAIL], (long long)g[CONF_COMPOSITE],
            (long long)g[CONF_FALLBACK], (long long)g[CONF_UNSUPPORTED]);
}

int main(int argc, char **argv)
{
    const char *device = NULL, *plugin = NULL, *report = NULL;
    bool large = false;
    char **ops = calloc((size_t)argc, sizeof *ops);
    int n_ops = 0;
    if (!ops)
        return 1;
    for (int k = 1; k < argc; k++) {
        const char *a = argv[k];
        bool has_value = k + 1 < argc;
        if (!strcmp(a, "--device") && has_value)
            device = argv[++k];
        else if (!strcmp(a, "--plugin") && has_value)
            plugin = argv[++k];
        else if (!strcmp(a, "--op") && has_value)
            ops[n_ops++] = argv[++k];
        else if (!strcmp(a, "--report") && has_value)
            report = argv[++k];
        else if (!strcmp(a, "--verbose"))
            conf_verbose = true;
        else if (!strcmp(a, "--large"))
            large = true;
        else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            free(ops);
            return 0;
        } else {
            fprintf(stderr, "nabla-conformance: unknown or incomplete argument '%s'\n", a);
            usage(stderr);
            free(ops);
            return 2;
        }
    }
    for (int k = 0; k < n_ops; k++) {
        bool known = false;
        for (int32_t j = 0; j < conf_n_ops; j++)
            known |= !strcmp(conf_ops[j].name, ops[k]);
        if (!known) {
            fprintf(stderr, "nabla-conformance: unknown op '%s' (see the op column of a full run)\n",
                    ops[k]);
            free(ops);
            return 2;
        }
    }
    if (nb_init() != NB_OK) {
        fprintf(stderr, "nabla-conformance: nb_init failed: %s\n", nb_last_error());
        free(ops);
        return 1;
    }

    static char devices[MAX_DEVICES][64];
    int n_dev = 0;
    if (plugin) {
        nb_status st = nb_plugin_load(plugin);
        if (st != NB_OK) {
            fprintf(stderr, "nabla-conformance: cannot load plugin %s: %s\n", plugin, nb_last_error());
            free(ops);
            nb_shutdown();
            return 1;
        }
        /* the core records plugins by their resolved path ("./x.so" is "/cwd/x.so" there) */
        char resolved[PATH_MAX];
        const char *want = realpath(plugin, resolved) ? resolved : plugin;
        for (size_t k = nb_plugin_count(); k-- > 0;) {
            nb_plugin_info pi;
            if (nb_plugin_get(k, &pi) == NB_OK && pi.loaded && pi.path && !strcmp(pi.path, want)) {
                n_dev = add_plugin_devices(&pi, devices, 0);
                if (pi.devices == 0)
                    printf("conformance: plugin %s has no device: %s\n", pi.name, pi.note);
                break;
            }
        }
    } else if (device) {
        char canon[64];
        if (strchr(device, ':')) {
            if (nb_device_parse(device, canon, sizeof canon) != NB_OK) {
                printf("conformance: no device %s: %s\n", device, nb_last_error());
                free(ops);
                nb_shutdown();
                return EXIT_SKIP;
            }
            snprintf(devices[n_dev++], 64, "%s", canon);
        } else {
            int count = nb_device_count(device);
            if (count <= 0)
                printf("conformance: no %s device%s%s\n", device, count < 0 ? ": " : "",
                       count < 0 ? nb_last_error() : "");
            for (int d = 0; d < count && n_dev < MAX_DEVICES; d++)
                snprintf(devices[n_dev++], 64, "%s:%d", device, d);
        }
    } else {
        for (size_t k = 0; k < nb_plugin_count(); k++) {
            nb_plugin_info pi;
            if (nb_plugin_get(k, &pi) == NB_OK && pi.loaded)
                n_dev = add_plugin_devices(&pi, devices, n_dev);
        }
    }
    if (n_dev == 0) {
        printf("conformance: no device to test (skipped)\n");
        free(ops);
        nb_shutdown();
        return EXIT_SKIP;
    }
    nb_clear_error();

    if (large) {
        conf_large_counts all = {0};
        for (int i = 0; i < n_dev; i++) {
            conf_large_counts c;
            conf_check_large(devices[i], &c);
            printf("conformance: large tier on %s: %d pass, %d fail, %d skipped\n", devices[i],
                   c.pass, c.fail, c.skip);
            all.pass += c.pass, all.fail += c.fail, all.skip += c.skip;
        }
        free(ops);
        nb_status st = nb_shutdown();
        if (st != NB_OK)
            printf("FAIL nb_shutdown: %s\n", nb_last_error());
        return all.fail || st != NB_OK ? 1 : all.pass == 0 ? EXIT_SKIP : 0;
    }

    device_result *results = calloc((size_t)n_dev, sizeof *results);
    bool failed = false, oom = !results;
    for (int i = 0; i < n_dev && !oom; i++) {
        device_result *dr = &results[i];
        snprintf(dr->name, sizeof dr->name, "%s", devices[i]);
        dr->cells = calloc((size_t)conf_n_ops, sizeof *dr->cells);
        if (!dr->cells) {
            oom = true;
            break;
        }
        for (int32_t k = 0; k < conf_n_ops; k++) {
            const conf_op *op = &conf_ops[k];
            if (!op_selected(op, ops, n_ops))
                continue;
            for (int d = 0; d < NB_DTYPE_COUNT; d++)
                conf_check_cell(op, (nb_dtype)d, dr->name, &dr->cells[k][d]);
            conf_check_errors(op, dr->name, &dr->cells[k][NB_DTYPE_COUNT]);
            for (int d = 0; d <= NB_DTYPE_COUNT; d++)
                for (int r = 0; r < CONF_RESULT_COUNT; r++) {
                    dr->total.n[r] += dr->cells[k][d].counts.n[r];
                    dr->gradgrad.n[r] += dr->cells[k][d].gradgrad.n[r];
                }
            fflush(stdout);
        }
        failed |= dr->total.n[CONF_FAIL] > 0;
    }
    if (oom) {
        fprintf(stderr, "nabla-conformance: out of memory\n");
        failed = true;
    }

    FILE *md = NULL;
    if (report && !(md = fopen(report, "w"))) {
        fprintf(stderr, "nabla-conformance: cannot write %s\n", report);
        failed = true;
    }
    if (md)
        fprintf(md, "# Nabla conformance\n\nEach cell is the worst result of its checks: FAIL > "
                    "unsupported > fallback > composite > pass; `-` means the op does not take "
                    "that dtype.\n");
    for (int i = 0; i < n_dev && results && results[i].cells; i++) {
        print_matrix(stdout, &results[i], ops, n_ops, false);
        if (md) {
            print_matrix(md, &results[i], ops, n_ops, true);
            fprintf(md, "\n");
            summary(md, &results[i]);
        }
    }
    printf("\n");
    for (int i = 0; i < n_dev && results && results[i].cells; i++)
        summary(stdout, &results[i]);
    if (md)
        fclose(md);
    for (int i = 0; i < n_dev && results; i++)
        free(results[i].cells);
    free(results);
    free(ops);
    nb_status st = nb_shutdown();
    if (st != NB_OK) {
        printf("FAIL nb_shutdown: %s\n", nb_last_error());
        failed = true;
    }
    return failed ? 1 : 0;
}
