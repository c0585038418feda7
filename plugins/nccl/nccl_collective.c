/* nccl_collective.c - the "nccl" collective backend: collectives on cuda tensors through NCCL,
 * on a stream of its own. The communicator is non-blocking (ncclConfig_t.blocking = 0) so that
 * every wait can poll for errors and give up at the timeout with ncclCommAbort. */
#define _GNU_SOURCE
#include "nabla_collective.h"

#include <cuda_runtime.h>
#include <nccl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const nb_host *host;
static char version[64] = "NCCL";

typedef struct comm {
    ncclComm_t nccl;
    cudaStream_t stream;
    int device;
    int rank, world;
    double timeout_s;
    bool broken;
    int64_t *scratch; /* 12 int64 on the device: the call check, and barriers */
    int64_t *pinned;  /* and their host copy, page-locked so that copies stay asynchronous and
                       * a wait for a dead peer can still time out */
} comm;

typedef struct request {
    cudaEvent_t done;
    int kind;
} request;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void pause_briefly(unsigned spin)
{
    long us = spin < 10 ? 1L << spin : 1000;
    nanosleep(&(struct timespec){.tv_nsec = us * 1000}, NULL);
}

static nb_status cuda_fail(const char *what, cudaError_t e)
{
    return host->error(e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver ? NB_NO_DEVICE
                                                                                  : NB_DEVICE_ERROR,
                       "nccl: %s: %s", what, cudaGetErrorString(e));
}

/* Waits until NCCL has no operation in progress on c, the deadline passes (abort) or an error. */
static nb_status settle(comm *c, const char *what, double deadline)
{
    for (unsigned spin = 0;; spin++) {
        ncclResult_t r = ncclInProgress;
        ncclResult_t e = ncclCommGetAsyncError(c->nccl, &r);
        if (e != ncclSuccess)
            r = e;
        if (r == ncclSuccess)
            return NB_OK;
        if (r != ncclInProgress) {
            c->broken = true;
            return host->error(NB_DEVICE_ERROR, "nccl: %s failed on rank %d of %d: %s", what,
                               c->rank, c->world, ncclGetErrorString(r));
        }
        if (now_s() > deadline) {
            c->broken = true;
            ncclCommAbort(c->nccl);
            c->nccl = NULL;
            return host->error(NB_DEVICE_ERROR, "nccl: %s timed out after %.1f s on rank %d of "
                               "%d: a peer rank died, stalled, or did not issue the same "
                               "collective", what, c->timeout_s, c->rank, c->world);
        }
        pause_briefly(spin);
    }
}

static int env_int(const char *name, int fallback)
{
    const char *s = getenv(name);
    return s && *s ? atoi(s) : fallback;
}

static nb_status comm_new(const nb_collective_init *init, void **out, int32_t *rank,
                          int32_t *world)
{
    if (!init || !out || !rank || !world)
        return host->error(NB_NULL_ARGUMENT, "nccl: comm_new got a NULL argument");
    if (init->rank < 0 || init->world_size < 1)
        return host->error(NB_INVALID_ARGUMENT, "nccl: needs the rank and world size: run under "
                           "mpirun or torchrun, or set opts.rank and opts.world_size");
    if (init->world_size > 1 && !init->bootstrap_bcast)
        return host->error(NB_INVALID_ARGUMENT, "nccl: %d ranks need a way to share NCCL's "
                           "unique id: set opts.bootstrap (e.g. an mpi group) or opts.init_file",
                           init->world_size);
    int count = 0;
    cudaError_t ce = cudaGetDeviceCount(&count);
    if (ce != cudaSuccess)
        return cuda_fail("no usable CUDA device (cudaGetDeviceCount)", ce);
    if (count == 0)
        return host->error(NB_NO_DEVICE, "nccl: no CUDA device");
    comm *c = calloc(1, sizeof *c);
    if (!c)
        return host->error(NB_OUT_OF_MEMORY, "nccl: out of memory");
    c->rank = init->rank;
    c->world = init->world_size;
    c->timeout_s = init->timeout_s;
    /* One GPU per rank on a node: the launcher's local rank picks it. */
    int local = env_int("OMPI_COMM_WORLD_LOCAL_RANK", env_int("LOCAL_RANK", c->rank));
    c->device = local % count;
    nb_status st = NB_OK;
    if ((ce = cudaSetDevice(c->device)) != cudaSuccess ||
        (ce = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) != cudaSuccess ||
        (ce = cudaMalloc((void **)&c->scratch, 12 * sizeof *c->scratch)) != cudaSuccess ||
        (ce = cudaMallocHost((void **)&c->pinned, 12 * sizeof *c->pinned)) != cudaSuccess) {
        st = cuda_fail("setting up the device", ce);
        goto fail;
    }
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    ncclResult_t r = ncclSuccess;
    if (c->rank == 0 && (r = ncclGetUniqueId(&id)) != ncclSuccess) {
        st = host->error(NB_DEVICE_ERROR, "nccl: ncclGetUniqueId: %s", ncclGetErrorString(r));
        goto fail;
    }
    if (c->world > 1 && (st = init->bootstrap_bcast(init->bootstrap_ctx, &id, sizeof id)) != NB_OK)
        goto fail;
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    r = ncclCommInitRankConfig(&c->nccl, c->world, id, c->rank, &config);
    if (r != ncclSuccess && r != ncclInProgress) {
        st = host->error(NB_DEVICE_ERROR, "nccl: ncclCommInitRankConfig: %s",
                         ncclGetErrorString(r));
        goto fail;
    }
    if ((st = settle(c, "joining the group", now_s() + c->timeout_s)) != NB_OK)
        goto fail;
    *out = c;
    *rank = c->rank;
    *world = c->world;
    return NB_OK;
fail:
    if (c->nccl)
        ncclCommAbort(c->nccl);
    if (c->scratch)
        cudaFree(c->scratch);
    if (c->pinned)
        cudaFreeHost(c->pinned);
    if (c->stream)
        cudaStreamDestroy(c->stream);
    free(c);
    return st;
}

static void comm_free(void *p)
{
    comm *c = p;
    if (!c)
        return;
    cudaSetDevice(c->device);
    if (c->nccl) {
        /* Finalize flushes outstanding work and can wait on peers: bounded like the rest. */
        if (!c->broken && ncclCommFinalize(c->nccl) != ncclInternalError)
            settle(c, "leaving the group", now_s() + c->timeout_s);
        if (c->broken && c->nccl)
            ncclCommAbort(c->nccl);
        else if (c->nccl)
            ncclCommDestroy(c->nccl);
    }
    cudaFree(c->scratch);
    cudaFreeHost(c->pinned);
    cudaStreamDestroy(c->stream);
    free(c);
}

static bool nccl_type(nb_dtype dtype, ncclDataType_t *t)
{
    switch (dtype) {
    case NB_DTYPE_F32: *t = ncclFloat32; return true;
    case NB_DTYPE_F64: *t = ncclFloat64; return true;
    case NB_DTYPE_I32: *t = ncclInt32; return true;
    case NB_DTYPE_I64: *t = ncclInt64; return true;
    case NB_DTYPE_BOOL: *t = ncclUint8; return true;
    case NB_DTYPE_U8: *t = ncclUint8; return true;
    case NB_DTYPE_F16: *t = ncclFloat16; return true;
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 19, 0) || defined(__CUDA_BF16_TYPES_EXIST__)
    case NB_DTYPE_BF16: *t = ncclBfloat16; return true; /* declared unconditionally from 2.19 */
#endif
    default: return false;
    }
}

static ncclRedOp_t nccl_op(nb_collective_reduce op, bool is_bool)
{
    /* On 0/1 bytes, or is max and and is min. */
    switch (op) {
    case NB_COLLECTIVE_PROD: return is_bool ? ncclMin : ncclProd;
    case NB_COLLECTIVE_MIN: return ncclMin;
    case NB_COLLECTIVE_MAX: return ncclMax;
    default: return is_bool ? ncclMax : ncclSum;
    }
}

static bool on_device(const comm *c, const nb_collective_buffer *b)
{
    return b->device_type && strcmp(b->device_type, "cuda") == 0 && b->device == c->device;
}

static const char *kind_name(int kind)
{
    static const char *names[] = {"allreduce", "broadcast", "allgather", "barrier"};
    return kind >= 0 && kind < 4 ? names[kind] : "collective";
}

/* NCCL checks nothing across ranks: agree on (kind, op, root, dtype, count, check) first with
 * one MIN-allreduce of the fields and their complements (min of ~x is ~max of x), as the mpi
 * backend does, so ranks that disagree all fail before data moves. */
static nb_status agree(comm *c, const nb_collective_args *a)
{
    enum { N = 6 };
    static const char *fields[N] = {"collective", "reduce op", "root", "dtype", "element count",
                                    "shape"};
    int64_t *v = c->pinned;
    const int64_t mine[N] = {a->kind, a->kind == NB_COLLECTIVE_ALLREDUCE ? a->op : 0,
                             a->kind == NB_COLLECTIVE_BROADCAST ? a->root : 0,
                             a->kind == NB_COLLECTIVE_BARRIER ? 0 : a->send.dtype,
                             a->kind == NB_COLLECTIVE_BARRIER ? 0 : (int64_t)a->send.count,
                             (int64_t)a->check};
    for (int k = 0; k < N; k++) {
        v[k] = mine[k];
        v[N + k] = ~mine[k];
    }
    cudaSetDevice(c->device);
    cudaError_t ce = cudaMemcpyAsync(c->scratch, v, 2 * N * sizeof *v, cudaMemcpyHostToDevice,
                                     c->stream);
    if (ce != cudaSuccess)
        return cuda_fail("checking the call", ce);
    ncclResult_t r = ncclAllReduce(c->scratch, c->scratch, 2 * N, ncclInt64, ncclMin, c->nccl,
                                   c->stream);
    if (r != ncclSuccess && r != ncclInProgress)
        return host->error(NB_DEVICE_ERROR, "nccl: checking the call: %s", ncclGetErrorString(r));
    double deadline = now_s() + c->timeout_s;
    nb_status st = settle(c, "checking that every rank issued the collective", deadline);
    if (st != NB_OK)
        return st;
    ce = cudaMemcpyAsync(v, c->scratch, 2 * N * sizeof *v, cudaMemcpyDeviceToHost, c->stream);
    for (unsigned spin = 0; ce == cudaSuccess; spin++) {
        ce = cudaStreamQuery(c->stream);
        if (ce == cudaSuccess)
            break;
        if (ce != cudaErrorNotReady)
            break;
        if ((st = settle(c, "checking that every rank issued the collective", deadline)) != NB_OK)
            return st;
        if (now_s() > deadline) {
            c->broken = true;
            ncclCommAbort(c->nccl);
            c->nccl = NULL;
            return host->error(NB_DEVICE_ERROR, "nccl: %s timed out after %.1f s on rank %d of "
                               "%d (checking that every rank issued it): a peer rank died, "
                               "stalled, or did not issue the same collective",
                               kind_name(a->kind), c->timeout_s, c->rank, c->world);
        }
        pause_briefly(spin);
    }
    if (ce != cudaSuccess)
        return cuda_fail("checking the call", ce);
    for (int k = 0; k < N; k++)
        if (v[k] != ~v[N + k])
            return host->error(k == 3 ? NB_DTYPE_UNSUPPORTED : k >= 4 ? NB_SHAPE_MISMATCH
                                                                      : NB_INVALID_ARGUMENT,
                               "nccl: ranks disagree on a collective: rank %d of %d issued %s of "
                               "%zu elements, but across ranks the %s ranges %lld..%lld",
                               c->rank, c->world, kind_name(a->kind), a->send.count, fields[k],
                               (long long)v[k], (long long)~v[N + k]);
    return NB_OK;
}

static nb_status start(void *p, const nb_collective_args *a, void **out)
{
    comm *c = p;
    if (!c || !a || !out)
        return host->error(NB_NULL_ARGUMENT, "nccl: start got a NULL argument");
    if (c->broken)
        return host->error(NB_STATE, "nccl: process group is broken by an earlier timeout or "
                           "error; create a new job");
    ncclDataType_t type = ncclUint8;
    if (a->kind != NB_COLLECTIVE_BARRIER) {
        if (!nccl_type(a->send.dtype, &type))
            return host->error(NB_DTYPE_UNSUPPORTED, "nccl: dtype %d is not supported",
                               (int)a->send.dtype);
        if (!on_device(c, &a->send) || (a->kind == NB_COLLECTIVE_ALLGATHER &&
                                        !on_device(c, &a->recv)))
            return host->error(NB_DEVICE_MISMATCH, "nccl: this rank's group runs on cuda:%d, "
                               "got a buffer on %s:%d", c->device, a->send.device_type,
                               (int)a->send.device);
    }
    nb_status st = agree(c, a);
    if (st != NB_OK)
        return st;
    request *r = calloc(1, sizeof *r);
    if (!r)
        return host->error(NB_OUT_OF_MEMORY, "nccl: out of memory");
    r->kind = a->kind;
    cudaSetDevice(c->device);
    char *send = a->send.handle ? (char *)a->send.handle + a->send.offset : NULL;
    char *recv = a->recv.handle ? (char *)a->recv.handle + a->recv.offset : NULL;
    size_t n = a->send.count;
    ncclResult_t res = ncclSuccess;
    switch (a->kind) {
    case NB_COLLECTIVE_ALLREDUCE:
        if (n)
            res = ncclAllReduce(send, send, n, type, nccl_op(a->op, a->send.dtype == NB_DTYPE_BOOL),
                                c->nccl, c->stream);
        break;
    case NB_COLLECTIVE_BROADCAST:
        if (n)
            res = ncclBroadcast(send, send, n, type, a->root, c->nccl, c->stream);
        break;
    case NB_COLLECTIVE_ALLGATHER:
        if (n)
            res = ncclAllGather(send, recv, n, type, c->nccl, c->stream);
        break;
    default:
        res = ncclAllReduce(c->scratch, c->scratch, 1, ncclInt64, ncclSum, c->nccl, c->stream);
        break;
    }
    if (res != ncclSuccess && res != ncclInProgress)
        st = host->error(NB_DEVICE_ERROR, "nccl: launching the collective: %s",
                         ncclGetErrorString(res));
    if (st == NB_OK && res == ncclInProgress)
        st = settle(c, "launching the collective", now_s() + c->timeout_s);
    cudaError_t ce;
    if (st == NB_OK && (ce = cudaEventCreateWithFlags(&r->done, cudaEventDisableTiming)) !=
                           cudaSuccess)
        st = cuda_fail("cudaEventCreate", ce);
    if (st == NB_OK && (ce = cudaEventRecord(r->done, c->stream)) != cudaSuccess) {
        cudaEventDestroy(r->done);
        st = cuda_fail("cudaEventRecord", ce);
    }
    if (st != NB_OK) {
        free(r);
        return st;
    }
    *out = r;
    return NB_OK;
}

static nb_status wait_request(void *p, void *q)
{
    comm *c = p;
    request *r = q;
    if (!c || !r)
        return host->error(NB_NULL_ARGUMENT, "nccl: wait got a NULL argument");
    double deadline = now_s() + c->timeout_s;
    nb_status st = NB_OK;
    for (unsigned spin = 0;; spin++) {
        cudaError_t e = cudaEventQuery(r->done);
        if (e == cudaSuccess)
            break;
        if (e != cudaErrorNotReady) {
            st = cuda_fail("waiting for the collective", e);
            break;
        }
        if (c->broken) {
            st = host->error(NB_STATE, "nccl: process group is broken");
            break;
        }
        /* An error or a stall on the peers shows up here, not in the event. */
        if ((st = settle(c, "the collective", deadline)) != NB_OK)
            break;
        if (now_s() > deadline) {
            c->broken = true;
            ncclCommAbort(c->nccl);
            c->nccl = NULL;
            st = host->error(NB_DEVICE_ERROR, "nccl: collective timed out after %.1f s on rank "
                             "%d of %d: a peer rank died, stalled, or did not issue the same "
                             "collective", c->timeout_s, c->rank, c->world);
            break;
        }
        pause_briefly(spin);
    }
    cudaEventDestroy(r->done);
    free(r);
    return st;
}

static const nb_collective table = {
    .abi_major = NB_COLLECTIVE_ABI_MAJOR,
    .abi_minor = NB_COLLECTIVE_ABI_MINOR,
    .size = sizeof(nb_collective),
    .name = "nccl",
    .version = version,
    .devices = "cuda",
    .comm_new = comm_new,
    .comm_free = comm_free,
    .start = start,
    .wait = wait_request,
};

NB_PLUGIN_EXPORT const nb_collective *nb_collective_entry(const nb_host *h)
{
    if (!h || h->abi_major != NB_PLUGIN_ABI_MAJOR)
        return NULL;
    host = h;
    int v = 0;
    if (ncclGetVersion(&v) == ncclSuccess)
        snprintf(version, sizeof version, "NCCL %d.%d.%d", v / 10000, v / 100 % 100, v % 100);
    return &table;
}
