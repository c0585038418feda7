/* fake_collective.c - a collective backend for tests of the core's side of the ABI, without MPI
 * or a GPU: a world of one that reaches only "cuda" buffers (so the core must refuse the others
 * with NB_DEVICE_MISMATCH) and shares a fixed id through the bootstrap, as NCCL would. Built
 * with FAKE_ABI_MAJOR=0 it is a backend from an incompatible ABI, which the core must skip. */
#include "nabla_collective.h"

#include <string.h>

#ifndef FAKE_ABI_MAJOR
#define FAKE_ABI_MAJOR NB_COLLECTIVE_ABI_MAJOR
#endif
#ifndef FAKE_NAME
#define FAKE_NAME "fake"
#endif

static const nb_host *host;
static int the_comm;

static nb_status comm_new(const nb_collective_init *init, void **comm, int32_t *rank,
                          int32_t *world)
{
    if (init->world_size > 1)
        return host->error(NB_INVALID_ARGUMENT, "fake: a world of one only");
    if (init->bootstrap_bcast) {
        char id[16] = "fake-unique-id!";
        nb_status st = init->bootstrap_bcast(init->bootstrap_ctx, id, sizeof id);
        if (st != NB_OK)
            return st;
    }
    *comm = &the_comm;
    *rank = 0;
    *world = 1;
    return NB_OK;
}

static void comm_free(void *comm) { (void)comm; }

static nb_status start(void *comm, const nb_collective_args *a, void **request)
{
    (void)comm;
    if (a->kind != NB_COLLECTIVE_BARRIER && strcmp(a->send.device_type, "cuda") != 0)
        return host->error(NB_DEVICE_MISMATCH, "fake: got a %s buffer", a->send.device_type);
    *request = &the_comm;
    return NB_OK;
}

static nb_status wait_request(void *comm, void *request)
{
    (void)comm;
    (void)request;
    return NB_OK;
}

static const nb_collective table = {
    .abi_major = FAKE_ABI_MAJOR,
    .abi_minor = NB_COLLECTIVE_ABI_MINOR,
    .size = sizeof(nb_collective),
    .name = FAKE_NAME,
    .version = "fake 1",
    .devices = "cuda",
    .comm_new = comm_new,
    .comm_free = comm_free,
    .start = start,
    .wait = wait_request,
};

NB_PLUGIN_EXPORT const nb_collective *nb_collective_entry(const nb_host *h)
{
    host = h;
    return &table;
}
