/* eellm under MPI: one StarPU-MPI process per pipeline stage of each
 * data-parallel replica. The ranks of a replica submit the same task flow; data
 * ownership decides where tasks run and what StarPU-MPI transfers. Without MPI every function here
 * is the single-process identity (rank 0 of 1). */
#ifndef EELLM_RUNTIME_MPI_H
#define EELLM_RUNTIME_MPI_H

#include <mpi.h>
#include <starpu.h>

#include "eellm.h"

/* Whether eellm runs under StarPU-MPI (eellm_runtime_start_mpi succeeded). */
int eellm_mpi_active(void);
/* The communicator StarPU-MPI uses for tasks and data. */
MPI_Comm eellm_mpi_comm(void);
/* Gives h an MPI identity (a tag, the same on every rank because every rank
 * registers in the same order) and its owner. No-op without MPI. */
void eellm_mpi_register(starpu_data_handle_t h, int owner);
/* Brings h to rank `node` once its writers have run (called by h's owner and by
 * node, asynchronous: node's next access to h waits for its copy). */
void eellm_mpi_send_to(starpu_data_handle_t h, int node);
/* *comm = the ranks of MPI_COMM_WORLD with this color, ordered by key
 * (collective over MPI_COMM_WORLD). 0, or -1. */
int eellm_mpi_split(int color, int key, MPI_Comm *comm);
/* n floats at x go from rank `from` to rank `to` (host-side; both call it,
 * other ranks need not). */
void eellm_mpi_move(float *x, size_t n, int from, int to);
/* Waits for every task and transfer (and, under MPI, for every rank). */
void eellm_mpi_wait(void);
/* The same, then drops StarPU-MPI's cached copies: before unregistering data. */
void eellm_mpi_quiesce(void);

#endif
