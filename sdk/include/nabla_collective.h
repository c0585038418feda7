/* nabla_collective.h - the ABI of collective-communication backends (MPI, NCCL): what a library
 * named nabla_collective_<name>.so exports so that nb_process_group_new can run allreduce,
 * broadcast, allgather and barrier through it. Types, status codes and nb_host come from
 * nabla_plugin.h; the versioning rules are its rules (tables start with major, minor and size,
 * members are only appended, a NULL optional member means "not provided").
 *
 * Buffers cross the ABI as a device plugin sees them: a device type, a device index and that
 * plugin's buffer handle plus a byte offset. A backend lists the device types whose handles it
 * can use directly (for "cpu" a handle is a host address, for "cuda" a CUDA device address); the
 * core stages every other tensor through host memory when the backend lists "cpu", and refuses
 * it otherwise. Buffers are always contiguous.
 *
 * Ordering: collectives start in the order of the start() calls and every rank must issue the
 * same sequence. The core passes a digest of each call (kind, dtype, shape, root) in `check`; a
 * backend compares it across ranks before moving data, so ranks that disagree all get an error
 * instead of a corrupted buffer. A backend bounds every wait by the timeout it was created with:
 * a dead or stuck peer ends in an error, never in a hang.
 */
#ifndef NABLA_COLLECTIVE_H
#define NABLA_COLLECTIVE_H

#include "nabla_plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

#define NB_COLLECTIVE_ABI_MAJOR 1
#define NB_COLLECTIVE_ABI_MINOR 0
#define NB_COLLECTIVE_ENTRY_SYMBOL "nb_collective_entry"

/* Values are part of the ABI and never change. */
typedef enum nb_collective_kind {
    NB_COLLECTIVE_ALLREDUCE = 0, /* send is reduced across ranks in place */
    NB_COLLECTIVE_BROADCAST = 1, /* send of rank `root` is copied into send everywhere */
    NB_COLLECTIVE_ALLGATHER = 2, /* recv = the ranks' send buffers, in rank order */
    NB_COLLECTIVE_BARRIER = 3    /* no buffer */
} nb_collective_kind;

/* Reductions. SUM of bool is logical or, PROD of bool logical and. (Averages are the core's: a
 * sum divided by the world size.) */
typedef enum nb_collective_reduce {
    NB_COLLECTIVE_SUM = 0,
    NB_COLLECTIVE_PROD = 1,
    NB_COLLECTIVE_MIN = 2,
    NB_COLLECTIVE_MAX = 3
} nb_collective_reduce;

/* A contiguous run of elements in device memory. */
typedef struct nb_collective_buffer {
    const char *device_type; /* one of the backend's `devices` ("cpu", "cuda") */
    int32_t device;          /* index within that type */
    void *handle;            /* the device plugin's buffer handle */
    size_t offset;           /* bytes from the buffer's start */
    nb_dtype dtype;
    size_t count;            /* elements; 0 is valid */
} nb_collective_buffer;

/* One collective, as given to start(); the backend copies what it keeps. */
typedef struct nb_collective_args {
    nb_collective_kind kind;
    nb_collective_reduce op;   /* allreduce */
    int32_t root;              /* broadcast: 0 <= root < world size */
    nb_collective_buffer send; /* allreduce and broadcast: read and written; allgather: input */
    nb_collective_buffer recv; /* allgather: world size * send.count elements */
    uint64_t check;            /* digest of the call on this rank: equal on every rank, or error */
} nb_collective_args;

/* How to create a communicator. */
typedef struct nb_collective_init {
    uint32_t size;       /* sizeof(nb_collective_init) as the core was built */
    int32_t rank;        /* -1: the backend takes it from its launcher (mpirun's environment) */
    int32_t world_size;  /* -1: likewise */
    double timeout_s;    /* > 0: the longest any call may wait on other ranks */
    /* Copies `bytes` bytes from rank 0's buf into every other rank's buf (NCCL's unique id),
     * bounded by the timeout. NULL when the user configured no bootstrap. (optional) */
    nb_status (*bootstrap_bcast)(void *ctx, void *buf, size_t bytes);
    void *bootstrap_ctx;
} nb_collective_init;

typedef struct nb_collective {
    uint32_t abi_major;  /* NB_COLLECTIVE_ABI_MAJOR the backend was built against */
    uint32_t abi_minor;  /* NB_COLLECTIVE_ABI_MINOR the backend was built against */
    uint32_t size;       /* sizeof(nb_collective) as the backend was built */
    const char *name;    /* "mpi", "nccl": the <name> of its file */
    const char *version; /* free-form, e.g. the library's version */
    const char *devices; /* comma-separated device types it reaches directly: "cpu", "cuda" */
    /* Joins the group; writes this process's rank and the world size. */
    nb_status (*comm_new)(const nb_collective_init *init, void **comm, int32_t *rank,
                          int32_t *world_size);
    /* Leaves the group; waits for nothing that is still queued (the core waits first). */
    void (*comm_free)(void *comm);
    /* Queues one collective; *request is then handed to wait() exactly once. */
    nb_status (*start)(void *comm, const nb_collective_args *args, void **request);
    /* Waits for a request and frees it; the error (mismatch, timeout, dead peer) comes through
     * nb_host.error on the calling thread. After a timeout the communicator is broken and every
     * later call fails at once. */
    nb_status (*wait)(void *comm, void *request);
    /* ABI 1.0 ends here; later members are appended below with the minor that added them. */
} nb_collective;

/* The entry point: returns the backend's table, or NULL after calling host->error with the
 * reason (library missing, too old). Called once per process. */
typedef const nb_collective *(*nb_collective_entry_fn)(const nb_host *host);

#ifdef __cplusplus
}
#endif
#endif /* NABLA_COLLECTIVE_H */
