/* Collectives as tasks: MPI calls on a group's communicator inside CPU codelets
 * (MPI runs with MPI_THREAD_MULTIPLE). Apart from codelets.h because only the
 * data-parallel graph code needs MPI's types.
 *
 * Every rank of a communicator must run its collectives in the same order,
 * while StarPU runs ready tasks in any order. Each task therefore also takes
 * `seq`, a sequencing handle of its rank, in mode RW: StarPU then runs the
 * tasks sharing it in submission order, and ranks that submit the same
 * collectives in the same order run them in that order. Their tasks are of kind
 * EELLM_KIND_COLLECTIVE, whatever info says. */
#ifndef EELLM_CODELETS_COLLECTIVE_H
#define EELLM_CODELETS_COLLECTIVE_H

#include <mpi.h>

#include "codelets.h"

/* x (matrix or vector of floats, or vector of doubles; RW) = its sum over the ranks of comm. */
void eellm_insert_allreduce_sum(starpu_data_handle_t x, starpu_data_handle_t seq, MPI_Comm comm,
                                const struct eellm_task_info *info);
/* x (RW) = rank root's x, on every rank of comm. */
void eellm_insert_bcast(starpu_data_handle_t x, starpu_data_handle_t seq, MPI_Comm comm, int root,
                        const struct eellm_task_info *info);

/* [*lo, *lo + *count): the part of n (heads, hidden units, vocabulary rows)
 * that tensor index t of tp holds; near-equal parts, exact when tp divides n. */
void eellm_tp_range(size_t n, unsigned tp, unsigned t, size_t *lo, size_t *count);

/* whole [M, C] (W) = the parts [M, C_k] of the ranks of comm side by side, rank
 * k's holding columns eellm_tp_range(C, ranks, k). */
void eellm_insert_allgather_cols(starpu_data_handle_t part, starpu_data_handle_t whole,
                                 starpu_data_handle_t seq, MPI_Comm comm,
                                 const struct eellm_task_info *info);
/* rowstats [N, 3] (RW): each rank's softmax statistics of its part of the
 * vocabulary (eellm_insert_xent_part_stats) = those of the whole rows. */
void eellm_insert_allreduce_softmax(starpu_data_handle_t rowstats, starpu_data_handle_t seq,
                                    MPI_Comm comm, const struct eellm_task_info *info);

#endif
