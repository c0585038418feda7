/* plugin.c - finds, loads and validates plugins (dlopen + one entry symbol), and keeps the
 * reason each one failed so nabla-info can show it. */
#define _GNU_SOURCE
#include "nabla_internal.h"

#include <dirent.h>
#include <errno.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <link.h>
#include <sys/stat.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

nb_status nbi_plugin_attach(nbi_plugin *p);

struct nbi_plugin {
    char *path;
    void *dl;
    const nb_plugin *api;
    bool loaded;
    nb_status status; /* of the load, repeated when the same file is asked for again */
    char note[512];
    bool enumerated; /* devices are counted on first use: no GPU runtime loads for a cpu run */
    int32_t n_devices;
    nbi_device *devices;
};

static nbi_plugin **plugins;
static size_t n_plugins;

static const nb_host host = {
    .abi_major = NB_PLUGIN_ABI_MAJOR,
    .abi_minor = NB_PLUGIN_ABI_MINOR,
    .size = sizeof(nb_host),
    .error = nbi_error, /* plugins report through the caller's thread-local slot */
    .log = nbi_log,
};

size_t nbi_plugin_total(void) { return n_plugins; }
nbi_plugin *nbi_plugin_at(size_t i) { return i < n_plugins ? plugins[i] : NULL; }
static pthread_mutex_t enum_lock = PTHREAD_MUTEX_INITIALIZER;

/* Counts a plugin's devices the first time anyone asks: asking an OpenCL platform or a CUDA
 * driver loads large runtimes (PoCL brings LLVM: about 70 MB resident), which a run on another
 * device should not pay for. */
static void enumerate(nbi_plugin *p)
{
    pthread_mutex_lock(&enum_lock);
    if (!p->enumerated && p->loaded) {
        nb_status saved_status = nb_last_status();
        char saved[1024];
        snprintf(saved, sizeof saved, "%s", nb_last_error());
        if (nbi_plugin_attach(p) != NB_OK)
            snprintf(p->note, sizeof p->note, "%s", nb_last_error());
        if (saved_status == NB_OK)
            nb_clear_error();
        else
            nbi_error(saved_status, "%s", saved);
        p->enumerated = true;
    }
    pthread_mutex_unlock(&enum_lock);
}

int32_t nbi_plugin_device_count(nbi_plugin *p)
{
    if (!p->enumerated)
        enumerate(p);
    return p->n_devices;
}

int32_t nbi_plugin_devices_known(const nbi_plugin *p) { return p->n_devices; }
nbi_device *nbi_plugin_device(nbi_plugin *p, int32_t i) { return &p->devices[i]; }
const nb_plugin *nbi_plugin_api(const nbi_plugin *p) { return p->loaded ? p->api : NULL; }

static nbi_plugin *find_loaded_type(const char *type)
{
    for (size_t k = 0; k < n_plugins; k++)
        if (plugins[k]->loaded && strcmp(plugins[k]->api->name, type) == 0)
            return plugins[k];
    return NULL;
}

/* dlopen maps a file's segments and faults (SIGBUS) on the first page past its end, so a
 * truncated plugin would take the process down: check the ELF header, the program headers and
 * that every loadable segment lies inside the file first. false, with the reason in why. */
static bool elf_plausible(const char *path, char *why, size_t len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(why, len, "cannot open: %s", strerror(errno));
        return false;
    }
    struct stat st;
    ElfW(Ehdr) eh;
    ElfW(Phdr) ph;
    bool ok = false;
    static const unsigned char ident[] = {ELFMAG0, ELFMAG1, ELFMAG2, ELFMAG3,
                                          sizeof(void *) == 8 ? ELFCLASS64 : ELFCLASS32,
                                          __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ ? ELFDATA2LSB
                                                                                   : ELFDATA2MSB};
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(why, len, "not a regular file");
    } else if (pread(fd, &eh, sizeof eh, 0) != (ssize_t)sizeof eh ||
               memcmp(eh.e_ident, ident, sizeof ident) != 0) {
        snprintf(why, len, "not an ELF shared object for this machine (bad ELF header)");
    } else if (eh.e_type != ET_DYN || eh.e_phentsize != sizeof ph || eh.e_phnum == 0) {
        snprintf(why, len, "ELF file is not a shared object (type %u, %u program headers of %u "
                 "bytes)", (unsigned)eh.e_type, (unsigned)eh.e_phnum, (unsigned)eh.e_phentsize);
    } else if (eh.e_phoff > (uint64_t)st.st_size ||
               (uint64_t)eh.e_phnum * sizeof ph > (uint64_t)st.st_size - eh.e_phoff) {
        snprintf(why, len, "truncated ELF file: program headers end past its %lld bytes",
                 (long long)st.st_size);
    } else {
        ok = true;
        for (unsigned k = 0; ok && k < eh.e_phnum; k++) {
            if (pread(fd, &ph, sizeof ph, (off_t)(eh.e_phoff + k * sizeof ph)) != (ssize_t)sizeof ph) {
                snprintf(why, len, "cannot read program header %u", k);
                ok = false;
            } else if (ph.p_type == PT_LOAD && (ph.p_offset > (uint64_t)st.st_size ||
                                                ph.p_filesz > (uint64_t)st.st_size - ph.p_offset)) {
                snprintf(why, len, "truncated ELF file: segment %u (bytes %llu to %llu) ends past "
                         "its %lld bytes", k, (unsigned long long)ph.p_offset,
                         (unsigned long long)ph.p_offset + ph.p_filesz, (long long)st.st_size);
                ok = false;
            }
        }
    }
    close(fd);
    return ok;
}

/* Records the plugin (loaded or not). Returns the status of the load. */
static nb_status load_one(const char *path, bool explicit)
{
    char real[PATH_MAX];
    const char *key = realpath(path, real) ? real : path;
    for (size_t k = 0; k < n_plugins; k++)
        if (strcmp(plugins[k]->path, key) == 0)
            return plugins[k]->loaded ? NB_OK
                                      : nbi_error(plugins[k]->status, "plugin %s: %s", key,
                                                  plugins[k]->note);

    nbi_plugin *p = nbi_calloc(1, sizeof *p);
    nbi_plugin **grown = nbi_realloc(plugins, (n_plugins + 1) * sizeof *grown);
    if (!p || !grown || !(p->path = nbi_strdup(key))) {
        nbi_free(p ? p->path : NULL);
        nbi_free(p);
        if (grown)
            plugins = grown;
        return nbi_error(NB_OUT_OF_MEMORY, "plugin %s: out of memory", path);
    }
    plugins = grown;
    plugins[n_plugins++] = p;

    nb_status st = NB_PLUGIN_LOAD;
    /* A bare name (no '/') is found by the dynamic linker's own search, like any library. */
    char why[400];
    if (strchr(key, '/') && !elf_plausible(key, why, sizeof why)) {
        snprintf(p->note, sizeof p->note, "cannot load: %s", why);
        goto fail;
    }
    /* NODELETE: a plugin's worker threads (OpenMP, OpenBLAS) may outlive nb_shutdown, and leak
     * checkers need its frames mapped to name them. */
    p->dl = dlopen(key, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (!p->dl) {
        const char *why = dlerror();
        snprintf(p->note, sizeof p->note, "cannot load: %s", why ? why : "unknown dlopen error");
        goto fail;
    }
    nb_plugin_entry_fn entry = (nb_plugin_entry_fn)dlsym(p->dl, NB_PLUGIN_ENTRY_SYMBOL);
    if (!entry) {
        snprintf(p->note, sizeof p->note, "not a Nabla plugin: no '%s' symbol",
                 NB_PLUGIN_ENTRY_SYMBOL);
        goto fail;
    }
    nb_clear_error();
    p->api = entry(&host);
    if (!p->api) {
        snprintf(p->note, sizeof p->note, "entry point refused to load: %s",
                 *nb_last_error() ? nb_last_error() : "no reason given");
        goto fail;
    }
    const nb_plugin *a = p->api;
    if (a->abi_major != NB_PLUGIN_ABI_MAJOR) {
        st = NB_ABI_MISMATCH;
        snprintf(p->note, sizeof p->note, "ABI major %u, but this core speaks ABI %u.%u",
                 a->abi_major, NB_PLUGIN_ABI_MAJOR, NB_PLUGIN_ABI_MINOR);
        goto fail;
    }
    if (a->size < offsetof(nb_plugin, n_kernels) + sizeof a->n_kernels) {
        st = NB_ABI_MISMATCH;
        snprintf(p->note, sizeof p->note, "plugin table is %u bytes, ABI 1.0 needs at least %zu",
                 a->size, offsetof(nb_plugin, n_kernels) + sizeof a->n_kernels);
        goto fail;
    }
    if (!a->name || !*a->name || !a->device_count || !a->alloc || !a->free || !a->write ||
        !a->read || (!a->kernels && a->n_kernels)) {
        st = NB_ABI_MISMATCH;
        snprintf(p->note, sizeof p->note,
                 "plugin table lacks a required member (name, device_count, alloc, free, write, "
                 "read or kernels)");
        goto fail;
    }
    nbi_plugin *other = find_loaded_type(a->name);
    if (other) {
        snprintf(p->note, sizeof p->note, "device type '%s' is already provided by %s", a->name,
                 other->path);
        goto fail;
    }
    p->loaded = true;
    nb_clear_error();
    return NB_OK;

fail:
    if (p->dl && !p->loaded) {
        dlclose(p->dl);
        p->dl = NULL;
    }
    p->api = NULL;
    p->status = st;
    nbi_log(explicit ? NB_LOG_DEBUG : NB_LOG_INFO, "plugin %s skipped: %s", key, p->note);
    return nbi_error(st, "plugin %s: %s", key, p->note);
}

/* Beside the loaded libnabla (a build tree), then its nabla/ folder (an install, found relative
 * to the library so that the tree can be moved): 0 to 2 folders into dirs. */
int nbi_core_plugin_dirs(char dirs[2][PATH_MAX])
{
    Dl_info info;
    if (!dladdr((void *)nbi_core_plugin_dirs, &info) || !info.dli_fname)
        return 0;
    snprintf(dirs[0], PATH_MAX, "%s", info.dli_fname);
    char *slash = strrchr(dirs[0], '/');
    if (!slash)
        return 0;
    *slash = '\0';
    const size_t n = strlen(dirs[0]), sub = strlen(NB_PLUGIN_SUBDIR);
    if (n + 1 + sub >= PATH_MAX)
        return 1;
    memcpy(dirs[1], dirs[0], n);
    dirs[1][n] = '/';
    memcpy(dirs[1] + n + 1, NB_PLUGIN_SUBDIR, sub + 1);
    return 2;
}

static bool is_plugin_file(const char *name)
{
    size_t n = strlen(name);
    return strncmp(name, "nabla_plugin_", 13) == 0 && n > 16 && strcmp(name + n - 3, ".so") == 0;
}

/* Loads a file, or every nabla_plugin_*.so in a folder (in name order, for stable numbering).
 * A path that does not exist is recorded as a failure only when the user named it. */
static void scan(const char *path, bool named)
{
    DIR *d = opendir(path);
    if (!d) {
        if (named || access(path, F_OK) == 0)
            load_one(path, false);
        return;
    }
    char **names = NULL;
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!is_plugin_file(e->d_name))
            continue;
        char **g = nbi_realloc(names, (n + 1) * sizeof *g);
        if (!g)
            break;
        names = g;
        if (!(names[n] = nbi_strdup(e->d_name)))
            break;
        n++;
    }
    closedir(d);
    for (size_t k = 1; k < n; k++) /* insertion sort: a handful of files */
        for (size_t j = k; j > 0 && strcmp(names[j - 1], names[j]) > 0; j--) {
            char *t = names[j];
            names[j] = names[j - 1];
            names[j - 1] = t;
        }
    for (size_t k = 0; k < n; k++) {
        char full[PATH_MAX];
        snprintf(full, sizeof full, "%s/%s", path, names[k]);
        load_one(full, false);
        nbi_free(names[k]);
    }
    nbi_free(names);
}

nb_status nbi_plugins_discover(void)
{
    /* Discovery must not leave a skipped plugin's reason in the caller's error slot. */
    nb_status saved_status = nb_last_status();
    char saved[1024];
    snprintf(saved, sizeof saved, "%s", nb_last_error());

    /* OpenMP workers that spin between parallel regions starve OpenBLAS's own threads (and
     * everything else) on a small machine: 20x slower training was measured on 2 cores. Ask for
     * sleeping workers unless the user chose; this must happen before a plugin loads libgomp. */
    setenv("OMP_WAIT_POLICY", "PASSIVE", 0);

    const char *env = getenv("NABLA_PLUGIN_PATH");
    if (env && *env) {
        char *list = nbi_strdup(env), *save = NULL;
        for (char *tok = list ? strtok_r(list, ":", &save) : NULL; tok;
             tok = strtok_r(NULL, ":", &save))
            if (*tok)
                scan(tok, true);
        nbi_free(list);
    }
    char dirs[2][PATH_MAX];
    for (int k = 0, n = nbi_core_plugin_dirs(dirs); k < n; k++)
        scan(dirs[k], false);
    if (saved_status == NB_OK)
        nb_clear_error();
    else
        nbi_error(saved_status, "%s", saved);
    return NB_OK;
}

nb_status nb_plugin_load(const char *path)
{
    if (!path)
        return nbi_error(NB_NULL_ARGUMENT, "nb_plugin_load: path is NULL");
    if (!*path) /* dlopen("") would open the main program */
        return nbi_error(NB_INVALID_ARGUMENT, "nb_plugin_load: path is empty, expected a plugin "
                         "file such as nabla_plugin_cpu_blas.so");
    nb_status st = nbi_ensure_init();
    if (st != NB_OK)
        return st;
    return load_one(path, true);
}

void nbi_plugins_unload(void)
{
    for (size_t k = 0; k < n_plugins; k++) {
        nbi_plugin *p = plugins[k];
        if (p->loaded && p->api->shutdown)
            p->api->shutdown();
        if (p->dl)
            dlclose(p->dl);
        nbi_free(p->devices);
        nbi_free(p->path);
        nbi_free(p);
    }
    nbi_free(plugins);
    plugins = NULL;
    n_plugins = 0;
}

size_t nb_plugin_count(void)
{
    nbi_ensure_init();
    return n_plugins;
}

nb_status nb_plugin_get(size_t i, nb_plugin_info *info)
{
    if (!info)
        return nbi_error(NB_NULL_ARGUMENT, "nb_plugin_get: info is NULL");
    nbi_ensure_init();
    if (i >= n_plugins)
        return nbi_error(NB_INDEX_OUT_OF_RANGE, "nb_plugin_get: index %zu out of range: %zu "
                         "plugins", i, n_plugins);
    nbi_plugin *p = plugins[i];
    int32_t devices = nbi_plugin_device_count(p); /* fills the note of a plugin with none */
    const char *base = strrchr(p->path, '/');
    *info = (nb_plugin_info){
        .name = p->loaded ? p->api->name : (base ? base + 1 : p->path),
        .path = p->path,
        .version = p->loaded && p->api->version ? p->api->version : "",
        .abi_major = p->loaded ? p->api->abi_major : 0,
        .abi_minor = p->loaded ? p->api->abi_minor : 0,
        .loaded = p->loaded,
        .devices = devices,
        .note = p->note,
        .n_kernels = p->loaded ? p->api->n_kernels : 0,
    };
    return NB_OK;
}

/* nb_plugin.device_info exists from ABI 1.2 on, and only inside a table that large: a 1.0 or
 * 1.1 plugin's table ends before it, and what lies beyond is not ours to read. */
static const char *(*device_info_fn(const nb_plugin *a))(int32_t)
{
    if (a->abi_minor < 2 || a->size < offsetof(nb_plugin, device_info) + sizeof a->device_info)
        return NULL;
    return a->device_info;
}

nb_status nb_device_info(const char *device, char *buf, size_t len)
{
    if (!buf || len == 0)
        return nbi_error(NB_NULL_ARGUMENT, "nb_device_info: buf is NULL or of 0 bytes");
    buf[0] = 0;
    nbi_device *d;
    nb_status st = nbi_device_get(device, &d);
    if (st != NB_OK)
        return st;
    const char *(*fn)(int32_t) = device_info_fn(d->api);
    const char *info = fn ? fn(d->index) : NULL;
    snprintf(buf, len, "%s", info ? info : "");
    return NB_OK;
}

/* Fills the plugin's devices; called once the table is validated. */
nb_status nbi_plugin_attach(nbi_plugin *p)
{
    const nb_plugin *a = p->api;
    nb_clear_error();
    int count = a->device_count();
    if (count <= 0) {
        const char *why = a->status_note ? a->status_note() : NULL;
        if (!why || !*why)
            why = *nb_last_error() ? nb_last_error() : "no device found";
        snprintf(p->note, sizeof p->note, "%s", why);
        nb_clear_error();
        return NB_OK;
    }
    p->devices = nbi_calloc((size_t)count, sizeof *p->devices);
    if (!p->devices)
        return nbi_error(NB_OUT_OF_MEMORY, "plugin %s: out of memory", a->name);
    p->n_devices = count;
    bool cpu = strcmp(a->name, "cpu") == 0;
    for (int d = 0; d < count; d++) {
        nbi_device *dev = &p->devices[d];
        dev->plugin = p;
        dev->api = a;
        dev->index = d;
        dev->is_cpu = cpu;
        if (cpu && d == 0)
            snprintf(dev->name, sizeof dev->name, "cpu");
        else
            snprintf(dev->name, sizeof dev->name, "%s:%d", a->name, d);
        for (size_t k = 0; k < a->n_kernels; k++) {
            const nb_kernel_desc *kd = &a->kernels[k];
            int op = kd->op ? nbi_op_lookup(kd->op) : -1;
            /* a 1.0 plugin knows no 16-bit dtype: a value 6 or 7 from it is not ours */
            bool unknown = (unsigned)kd->dtype >= NB_DTYPE_COUNT ||
                           (a->abi_minor < 1 && nbi_dtype_is_16bit(kd->dtype));
            if (op < 0 || unknown || !kd->fn) {
                nbi_log(NB_LOG_DEBUG, "plugin %s: ignoring kernel '%s' (dtype %d)", a->name,
                        kd->op ? kd->op : "(null)", (int)kd->dtype);
                continue;
            }
            dev->kernels[op][kd->dtype] = kd->fn;
        }
    }
    return NB_OK;
}
