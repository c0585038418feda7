/* mpi_collective.c - the "mpi" collective backend: host-memory collectives through MPI. One
 * communication thread makes every MPI call (MPI_THREAD_SERIALIZED) and polls nonblocking
 * collectives, so that each one ends within the group's timeout whatever its peers do. */
#define _GNU_SOURCE
#include "nabla_collective.h"

#include <errno.h>
#include <math.h>
#include <mpi.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const nb_host *host;

typedef struct comm {
    MPI_Comm mpi;
    double timeout_s;
    int rank, world;
    bool broken; /* a collective timed out: MPI's state with the peers is unknown */
} comm;

enum job_kind { JOB_INIT, JOB_FREE, JOB_COLLECTIVE, JOB_FINALIZE };

/* One piece of work for the communication thread; the caller waits for `done`. */
typedef struct job {
    enum job_kind kind;
    comm *c;
    nb_collective_args args;
    struct job *next;
    bool done;
    bool abandoned; /* the caller gave up waiting (MPI_Init past the timeout): the thread frees it */
    nb_status status;
    char msg[768];
} job;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work_cv = PTHREAD_COND_INITIALIZER, done_cv = PTHREAD_COND_INITIALIZER;
static job *head, *tail;
static pthread_t thread;
static bool thread_running, initialized, finalized;
static bool init_stuck; /* MPI_Init outlived its timeout: MPI may never become usable here */
static atomic_bool exiting; /* the process is in exit(): pending collectives give up */
static bool any_broken;
static char version[128] = "MPI";

static const char *kind_name(int kind)
{
    static const char *names[] = {"allreduce", "broadcast", "allgather", "barrier"};
    return kind >= 0 && kind < 4 ? names[kind] : "collective";
}

static const char *dtype_name(int dtype)
{
    static const char *names[] = {"float32", "float64", "int32", "int64",
                                  "bool",    "uint8",   "float16", "bfloat16"};
    return dtype >= 0 && dtype < 8 ? names[dtype] : "unknown dtype";
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static nb_status fail(job *j, nb_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static nb_status fail(job *j, nb_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->msg, sizeof j->msg, fmt, ap);
    va_end(ap);
    return j->status = st;
}

static nb_status mpi_fail(job *j, const char *call, int rc)
{
    char err[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, err, &len) != MPI_SUCCESS)
        snprintf(err, sizeof err, "error %d", rc);
    return fail(j, NB_DEVICE_ERROR, "mpi: %s failed: %s", call, err);
}

/* float16 and bfloat16 have no MPI type: they travel as 16-bit words. */
static bool mpi_type(nb_dtype dtype, MPI_Datatype *t)
{
    switch (dtype) {
    case NB_DTYPE_F32: *t = MPI_FLOAT; return true;
    case NB_DTYPE_F64: *t = MPI_DOUBLE; return true;
    case NB_DTYPE_I32: *t = MPI_INT32_T; return true;
    case NB_DTYPE_I64: *t = MPI_INT64_T; return true;
    case NB_DTYPE_BOOL: *t = MPI_UINT8_T; return true;
    case NB_DTYPE_U8: *t = MPI_UINT8_T; return true;
    case NB_DTYPE_F16: *t = MPI_UINT16_T; return true;
    case NB_DTYPE_BF16: *t = MPI_UINT16_T; return true;
    default: return false;
    }
}

/* ---- reductions of 16-bit floats ----
 * MPI's own operations do not know these types, so they reduce through user-defined ones: each
 * pairwise step widens both operands to float, combines them, and rounds to nearest even once,
 * as NCCL's 16-bit reductions do. MIN and MAX propagate NaN, as torch.minimum and maximum do. */

static float half_sum(float a, float b) { return a + b; }
static float half_prod(float a, float b) { return a * b; }
static float half_min(float a, float b) { return isnan(a) || isnan(b) ? a + b : a < b ? a : b; }
static float half_max(float a, float b) { return isnan(a) || isnan(b) ? a + b : a > b ? a : b; }

#define HALF_REDUCER(TYPE, WIDEN, ROUND, OP)                                                   \
    static void reduce_##TYPE##_##OP(void *in, void *inout, int *len, MPI_Datatype *type)      \
    {                                                                                          \
        (void)type;                                                                            \
        const uint16_t *a = in;                                                                \
        uint16_t *b = inout;                                                                   \
        for (int i = 0; i < *len; i++)                                                         \
            b[i] = ROUND(half_##OP(WIDEN(a[i]), WIDEN(b[i])));                                 \
    }
#define HALF_REDUCERS(TYPE, WIDEN, ROUND)                                                      \
    HALF_REDUCER(TYPE, WIDEN, ROUND, sum)                                                      \
    HALF_REDUCER(TYPE, WIDEN, ROUND, prod)                                                     \
    HALF_REDUCER(TYPE, WIDEN, ROUND, min)                                                      \
    HALF_REDUCER(TYPE, WIDEN, ROUND, max)
HALF_REDUCERS(f16, nb_f16_to_f32, nb_f32_to_f16)
HALF_REDUCERS(bf16, nb_bf16_to_f32, nb_f32_to_bf16)

/* [0] float16, [1] bfloat16; by nb_collective_reduce (SUM, PROD, MIN, MAX). Created on the
 * communication thread once MPI is up, freed before MPI_Finalize. */
static MPI_User_function *const half_fns[2][4] = {
    {reduce_f16_sum, reduce_f16_prod, reduce_f16_min, reduce_f16_max},
    {reduce_bf16_sum, reduce_bf16_prod, reduce_bf16_min, reduce_bf16_max},
};
static MPI_Op half_ops[2][4];
static int half_ops_made; /* how many of half_ops exist, in row-major order; 8 when all */

static int make_half_ops(void)
{
    for (; half_ops_made < 8; half_ops_made++) {
        int rc = MPI_Op_create(half_fns[half_ops_made / 4][half_ops_made % 4], 1,
                               &half_ops[half_ops_made / 4][half_ops_made % 4]);
        if (rc != MPI_SUCCESS)
            return rc;
    }
    return MPI_SUCCESS;
}

static void free_half_ops(void)
{
    for (; half_ops_made > 0; half_ops_made--)
        MPI_Op_free(&half_ops[(half_ops_made - 1) / 4][(half_ops_made - 1) % 4]);
}

static MPI_Op mpi_op(nb_collective_reduce op, nb_dtype dtype)
{
    int k = op == NB_COLLECTIVE_PROD ? 1 : op == NB_COLLECTIVE_MIN ? 2
          : op == NB_COLLECTIVE_MAX  ? 3 : 0;
    if (dtype == NB_DTYPE_F16 || dtype == NB_DTYPE_BF16)
        return half_ops[dtype == NB_DTYPE_BF16][k];
    if (dtype == NB_DTYPE_BOOL)
        return k == 1 || k == 2 ? MPI_LAND : MPI_LOR;
    static const MPI_Op ops[4] = {MPI_SUM, MPI_PROD, MPI_MIN, MPI_MAX};
    return ops[k];
}

/* Polls a nonblocking operation until it completes, the deadline passes or the process exits.
 * Open MPI moves a nonblocking collective forward only inside MPI calls (a large allreduce is
 * many rounds), so the first milliseconds poll with a yield between tests; after that a waiting
 * rank sleeps 50 us between tests and leaves the cores to the ranks still computing. */
static nb_status poll_request(job *j, MPI_Request *req, double deadline, const char *what)
{
    comm *c = j->c;
    for (unsigned spin = 0;; spin++) {
        int flag = 0;
        int rc = MPI_Test(req, &flag, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) {
            c->broken = any_broken = true;
            return mpi_fail(j, what, rc);
        }
        if (flag)
            return NB_OK;
        if (exiting) {
            c->broken = any_broken = true;
            return fail(j, NB_STATE, "mpi: %s abandoned: the process is exiting", what);
        }
        if (now_s() > deadline) {
            c->broken = any_broken = true;
            return fail(j, NB_DEVICE_ERROR, "mpi: %s timed out after %.1f s on rank %d of %d: a "
                        "peer rank died, stalled, or did not issue the same collective",
                        what, c->timeout_s, c->rank, c->world);
        }
        if (spin < 4096)
            sched_yield();
        else
            nanosleep(&(struct timespec){.tv_nsec = 50 * 1000}, NULL);
    }
}

/* Every rank contributes (kind, op, root, dtype, count, check) and their complements to one
 * MIN-allreduce, which yields each field's minimum and maximum: any difference means the ranks
 * issued different calls, and they all see it before any data moves. */
static nb_status agree(job *j, double deadline)
{
    const nb_collective_args *a = &j->args;
    enum { N = 6 };
    static const char *fields[N] = {"collective", "reduce op", "root", "dtype", "element count",
                                    "shape"};
    int64_t v[2 * N] = {a->kind, a->op, a->root, a->send.dtype, (int64_t)a->send.count,
                        (int64_t)a->check};
    if (a->kind == NB_COLLECTIVE_BARRIER)
        v[1] = v[2] = v[3] = v[4] = 0;
    if (a->kind != NB_COLLECTIVE_ALLREDUCE)
        v[1] = 0;
    if (a->kind != NB_COLLECTIVE_BROADCAST)
        v[2] = 0;
    for (int k = 0; k < N; k++)
        v[N + k] = ~v[k]; /* min of ~x is ~max of x */
    int64_t r[2 * N];
    MPI_Request req;
    int rc = MPI_Iallreduce(v, r, 2 * N, MPI_INT64_T, MPI_MIN, j->c->mpi, &req);
    if (rc != MPI_SUCCESS)
        return mpi_fail(j, "MPI_Iallreduce", rc);
    char what[96];
    snprintf(what, sizeof what, "%s (checking that every rank issued it)", kind_name(a->kind));
    nb_status st = poll_request(j, &req, deadline, what);
    if (st != NB_OK)
        return st;
    for (int k = 0; k < N; k++) {
        int64_t lo = r[k], hi = ~r[N + k];
        if (lo == hi)
            continue;
        char range[128];
        if (k == 0)
            snprintf(range, sizeof range, "%s..%s", kind_name((int)lo), kind_name((int)hi));
        else if (k == 3)
            snprintf(range, sizeof range, "%s..%s", dtype_name((int)lo), dtype_name((int)hi));
        else if (k == 5)
            snprintf(range, sizeof range, "differs");
        else
            snprintf(range, sizeof range, "%lld..%lld", (long long)lo, (long long)hi);
        return fail(j, k == 3 ? NB_DTYPE_UNSUPPORTED : k >= 4 ? NB_SHAPE_MISMATCH
                                                               : NB_INVALID_ARGUMENT,
                    "mpi: ranks disagree on a collective: rank %d of %d issued %s of %zu %s "
                    "elements, but across ranks the %s is %s", j->c->rank, j->c->world,
                    kind_name(a->kind), a->send.count, dtype_name(a->send.dtype), fields[k],
                    range);
    }
    return NB_OK;
}

static void run_collective(job *j)
{
    comm *c = j->c;
    const nb_collective_args *a = &j->args;
    if (c->broken) {
        fail(j, NB_STATE, "mpi: process group is broken by an earlier timeout or error; create "
             "a new job");
        return;
    }
    double deadline = now_s() + c->timeout_s;
    if (agree(j, deadline) != NB_OK)
        return;
    MPI_Datatype type = MPI_BYTE;
    if (a->kind != NB_COLLECTIVE_BARRIER && !mpi_type(a->send.dtype, &type)) {
        fail(j, NB_DTYPE_UNSUPPORTED, "mpi: no MPI type for dtype %d", (int)a->send.dtype);
        return;
    }
    char *send = a->send.handle ? (char *)a->send.handle + a->send.offset : NULL;
    char *recv = a->recv.handle ? (char *)a->recv.handle + a->recv.offset : NULL;
    int count = (int)a->send.count;
    MPI_Request req;
    int rc;
    const char *call;
    switch (a->kind) {
    case NB_COLLECTIVE_ALLREDUCE:
        if (count == 0)
            return;
        call = "MPI_Iallreduce";
        rc = MPI_Iallreduce(MPI_IN_PLACE, send, count, type,
                            mpi_op(a->op, a->send.dtype), c->mpi, &req);
        break;
    case NB_COLLECTIVE_BROADCAST:
        if (count == 0)
            return;
        call = "MPI_Ibcast";
        rc = MPI_Ibcast(send, count, type, a->root, c->mpi, &req);
        break;
    case NB_COLLECTIVE_ALLGATHER:
        if (count == 0)
            return;
        call = "MPI_Iallgather";
        rc = MPI_Iallgather(send, count, type, recv, count, type, c->mpi, &req);
        break;
    default:
        call = "MPI_Ibarrier";
        rc = MPI_Ibarrier(c->mpi, &req);
        break;
    }
    if (rc != MPI_SUCCESS) {
        mpi_fail(j, call, rc);
        return;
    }
    char what[96];
    snprintf(what, sizeof what, "%s of %d %s elements", kind_name(a->kind), count,
             dtype_name(a->send.dtype));
    poll_request(j, &req, deadline, a->kind == NB_COLLECTIVE_BARRIER ? "barrier" : what);
}

static void run_init(job *j)
{
    int flag = 0, provided = 0;
    MPI_Initialized(&flag);
    if (!flag) {
        int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided);
        if (rc != MPI_SUCCESS) {
            mpi_fail(j, "MPI_Init_thread", rc);
            return;
        }
        initialized = true;
    } else {
        MPI_Query_thread(&provided);
    }
    if (provided < MPI_THREAD_SERIALIZED) {
        fail(j, NB_STATE, "mpi: MPI runs at thread level %d; this backend calls MPI from its own "
             "thread and needs MPI_THREAD_SERIALIZED (%d)", provided, MPI_THREAD_SERIALIZED);
        return;
    }
    comm *c = j->c;
    int rc = MPI_Comm_dup(MPI_COMM_WORLD, &c->mpi);
    if (rc != MPI_SUCCESS) {
        mpi_fail(j, "MPI_Comm_dup", rc);
        return;
    }
    MPI_Comm_set_errhandler(c->mpi, MPI_ERRORS_RETURN);
    MPI_Comm_rank(c->mpi, &c->rank);
    MPI_Comm_size(c->mpi, &c->world);
    if (half_ops_made < 8 && (rc = make_half_ops()) != MPI_SUCCESS) {
        free_half_ops();
        MPI_Comm_free(&c->mpi);
        mpi_fail(j, "MPI_Op_create", rc);
        return;
    }
}

/* Runs jobs in order of posting until the process ends. */
static void *comm_thread(void *arg)
{
    (void)arg; /* never returns: see at_exit */
    pthread_mutex_lock(&lock);
    for (;;) {
        while (!head)
            pthread_cond_wait(&work_cv, &lock);
        job *j = head;
        head = j->next;
        if (!head)
            tail = NULL;
        pthread_mutex_unlock(&lock);
        j->status = NB_OK;
        switch (j->kind) {
        case JOB_INIT: run_init(j); break;
        case JOB_COLLECTIVE: run_collective(j); break;
        case JOB_FREE:
            if (!j->c->broken)
                MPI_Comm_free(&j->c->mpi);
            break;
        case JOB_FINALIZE:
            /* MPI_Finalize synchronises with every peer: after a timeout it could hang. */
            if (initialized && !finalized && !any_broken) {
                free_half_ops();
                MPI_Finalize();
            }
            finalized = true;
            break;
        }
        pthread_mutex_lock(&lock);
        j->done = true;
        if (j->abandoned) { /* nobody waits for it any more; the late rank did arrive */
            init_stuck = false;
            free(j->c);
            free(j);
            continue;
        }
        pthread_cond_broadcast(&done_cv);
    }
    return NULL;
}

static void post(job *j)
{
    pthread_mutex_lock(&lock);
    j->next = NULL;
    if (tail)
        tail->next = j;
    else
        head = j;
    tail = j;
    pthread_cond_signal(&work_cv);
    pthread_mutex_unlock(&lock);
}

static void await(job *j)
{
    pthread_mutex_lock(&lock);
    while (!j->done)
        pthread_cond_wait(&done_cv, &lock);
    pthread_mutex_unlock(&lock);
}

/* As await, for at most timeout_s; false (j abandoned to the thread) when it passed. */
static bool await_for(job *j, double timeout_s)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until); /* done_cv runs on the default clock */
    double end = (double)until.tv_sec + 1e-9 * (double)until.tv_nsec + timeout_s;
    until.tv_sec = (time_t)end;
    until.tv_nsec = (long)((end - (double)until.tv_sec) * 1e9);
    pthread_mutex_lock(&lock);
    int rc = 0;
    while (!j->done && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&done_cv, &lock, &until);
    bool done = j->done;
    if (!done)
        j->abandoned = init_stuck = true;
    pthread_mutex_unlock(&lock);
    return done;
}

/* At exit: MPI wants MPI_Finalize before the process ends, from the thread that owns MPI. The
 * thread itself is left waiting for work rather than joined: a thread that has run Open MPI
 * cannot exit cleanly under AddressSanitizer (its signal stack unmap fails), and exit() ends it
 * anyway. */
static void at_exit(void)
{
    exiting = true;
    pthread_mutex_lock(&lock);
    bool stuck = init_stuck;
    pthread_mutex_unlock(&lock);
    if (stuck)
        return; /* the thread is inside MPI_Init, and would never reach the finalize */
    job j = {.kind = JOB_FINALIZE};
    post(&j);
    await(&j);
}

static nb_status comm_new(const nb_collective_init *init, void **out, int32_t *rank,
                          int32_t *world)
{
    if (!init || !out || !rank || !world)
        return host->error(NB_NULL_ARGUMENT, "mpi: comm_new got a NULL argument");
    if (finalized)
        return host->error(NB_STATE, "mpi: MPI was finalized; no new group in this process");
    pthread_mutex_lock(&lock);
    bool stuck = init_stuck;
    pthread_mutex_unlock(&lock);
    if (stuck)
        return host->error(NB_STATE, "mpi: an earlier MPI_Init is still waiting for the other "
                           "ranks; no new group until it finishes");
    comm *c = calloc(1, sizeof *c);
    job *j = calloc(1, sizeof *j);
    if (!c || !j) {
        free(c);
        free(j);
        return host->error(NB_OUT_OF_MEMORY, "mpi: out of memory");
    }
    c->timeout_s = init->timeout_s;
    pthread_mutex_lock(&lock);
    bool start = !thread_running;
    if (start && pthread_create(&thread, NULL, comm_thread, NULL) != 0) {
        pthread_mutex_unlock(&lock);
        free(c);
        free(j);
        return host->error(NB_STATE, "mpi: cannot start the communication thread");
    }
    thread_running = true;
    pthread_mutex_unlock(&lock);
    if (start)
        atexit(at_exit);
    j->kind = JOB_INIT;
    j->c = c;
    post(j);
    /* MPI_Init waits for every rank of the job (Open MPI's PMIx fence) and has no timeout of
     * its own: a rank that never arrives would hang this one. Give up at the group's timeout
     * and leave the thread inside MPI_Init; exit does not wait for it (at_exit). */
    if (!await_for(j, c->timeout_s > 0 ? c->timeout_s : 600)) {
        char who[64] = "";
        if (init->rank >= 0)
            snprintf(who, sizeof who, " on rank %d of %d", init->rank, init->world_size);
        return host->error(NB_DEVICE_ERROR, "mpi: MPI_Init did not finish within %.1f s%s: a "
                           "rank never started, or stalled before creating its process group "
                           "(the group's timeout_s)", c->timeout_s, who);
    }
    nb_status st = j->status;
    if (st == NB_OK && init->world_size >= 0 &&
        (init->world_size != c->world || init->rank != c->rank)) {
        st = fail(j, NB_INVALID_ARGUMENT, "mpi: the options say rank %d of %d, but MPI says "
                  "rank %d of %d", init->rank, init->world_size, c->rank, c->world);
        j->kind = JOB_FREE;
        j->done = false;
        post(j);
        await(j);
    }
    if (st != NB_OK) {
        host->error(st, "%s", j->msg);
        free(j);
        free(c);
        return st;
    }
    free(j);
    *out = c;
    *rank = c->rank;
    *world = c->world;
    return NB_OK;
}

static void comm_free(void *p)
{
    comm *c = p;
    if (!c)
        return;
    job j = {.kind = JOB_FREE, .c = c};
    post(&j);
    await(&j);
    free(c);
}

static nb_status start(void *p, const nb_collective_args *args, void **request)
{
    comm *c = p;
    if (!c || !args || !request)
        return host->error(NB_NULL_ARGUMENT, "mpi: start got a NULL argument");
    MPI_Datatype type;
    if (args->kind != NB_COLLECTIVE_BARRIER) {
        if (!mpi_type(args->send.dtype, &type))
            return host->error(NB_DTYPE_UNSUPPORTED, "mpi: %s of %s is not supported",
                               kind_name(args->kind), dtype_name(args->send.dtype));
        if (strcmp(args->send.device_type, "cpu") != 0 ||
            (args->kind == NB_COLLECTIVE_ALLGATHER && strcmp(args->recv.device_type, "cpu")))
            return host->error(NB_DEVICE_MISMATCH, "mpi: reaches cpu buffers only, got a %s one",
                               args->send.device_type);
        if (args->send.count > 0x7fffffff)
            return host->error(NB_INVALID_ARGUMENT, "mpi: %zu elements in one call (at most "
                               "2^31-1)", args->send.count);
    }
    job *j = calloc(1, sizeof *j);
    if (!j)
        return host->error(NB_OUT_OF_MEMORY, "mpi: out of memory");
    j->kind = JOB_COLLECTIVE;
    j->c = c;
    j->args = *args;
    post(j);
    *request = j;
    return NB_OK;
}

static nb_status wait_request(void *p, void *request)
{
    (void)p;
    job *j = request;
    if (!j)
        return host->error(NB_NULL_ARGUMENT, "mpi: wait got a NULL request");
    await(j);
    nb_status st = j->status;
    if (st != NB_OK)
        host->error(st, "%s", j->msg);
    free(j);
    return st;
}

static const nb_collective table = {
    .abi_major = NB_COLLECTIVE_ABI_MAJOR,
    .abi_minor = NB_COLLECTIVE_ABI_MINOR,
    .size = sizeof(nb_collective),
    .name = "mpi",
    .version = version,
    .devices = "cpu",
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
    char lib[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    if (MPI_Get_library_version(lib, &len) == MPI_SUCCESS) {
        lib[strcspn(lib, ",\n")] = '\0';
        snprintf(version, sizeof version, "%.120s", lib);
    }
    return &table;
}
