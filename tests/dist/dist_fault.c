/* dist_fault.c - what the other ranks see when one fails (run under mpirun -np 2):
 *   stall: rank 1 never joins the collective; rank 0 must fail within its 2 s timeout and say so.
 *   exit:  rank 1 dies mid-training; the job must end instead of hanging.
 *   late:  rank 1 never creates its group; rank 0's MPI_Init must give up within 2 s. */
#include "nabla.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define TIMEOUT_S 2.0

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";
    if (strcmp(mode, "stall") != 0 && strcmp(mode, "exit") != 0 && strcmp(mode, "late") != 0) {
        fprintf(stderr, "usage: dist_fault stall|exit|late\n");
        return 2;
    }
    if (strcmp(mode, "late") == 0) {
        const char *r = getenv("OMPI_COMM_WORLD_RANK");
        if (!r)
            r = getenv("PMI_RANK");
        int me = r ? atoi(r) : 0;
        if (me == 1) {
            sleep(30); /* killed by mpirun once rank 0 gives up */
            return 0;
        }
        double t0 = now_s();
        nb_process_group *pg = nb_process_group_new((nb_process_group_opts){.timeout_s = TIMEOUT_S});
        double waited = now_s() - t0;
        if (pg || waited < TIMEOUT_S * 0.9 || waited > TIMEOUT_S * 3 + 1) {
            printf("rank %d: %s after %.1f s with a %.1f s timeout: %s\n", me,
                   pg ? "joined a group without rank 1" : "failed", waited, TIMEOUT_S,
                   pg ? "" : nb_last_error());
            return 1;
        }
        printf("rank %d: failed as expected after %.1f s: %s\n", me, waited, nb_last_error());
        fflush(stdout);
        return 3;
    }
    nb_process_group *pg = nb_process_group_new((nb_process_group_opts){.timeout_s = TIMEOUT_S});
    if (!pg) {
        fprintf(stderr, "dist_fault: %s\n", nb_last_error());
        return 1;
    }
    int rank = nb_process_group_rank(pg);
    nb_tensor *t = nb_ones(NB_SHAPE(1000), (nb_opts){0});
    if (strcmp(mode, "stall") == 0 && rank == 1) {
        sleep(30); /* killed by mpirun once rank 0 gives up */
        return 0;
    }
    double t0 = now_s();
    nb_status st = NB_OK;
    for (int step = 0; step < 1000 && st == NB_OK; step++) {
        if (strcmp(mode, "exit") == 0 && rank == 1 && step == 3)
        {
            printf("rank 1: dying at step 3\n");
            fflush(stdout);
            _exit(1); /* a crash: no cleanup, no MPI_Finalize */
        }
        t0 = now_s();
        st = nb_work_finish(nb_allreduce(pg, t, NB_REDUCE_OP_SUM));
    }
    double waited = now_s() - t0;
    if (st == NB_OK) {
        printf("rank %d: every collective succeeded, expected a failure\n", rank);
        return 1;
    }
    /* The wait must end close to the timeout: not early, and not much later. */
    if (waited < TIMEOUT_S * 0.9 || waited > TIMEOUT_S * 3 + 1) {
        printf("rank %d: failed after %.1f s with a %.1f s timeout: %s\n", rank, waited,
               TIMEOUT_S, nb_last_error());
        return 1;
    }
    printf("rank %d: failed as expected after %.1f s: %s\n", rank, waited, nb_last_error());
    fflush(stdout);
    return 3; /* nonzero: mpirun takes the stalled rank down */
}
