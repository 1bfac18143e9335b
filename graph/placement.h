/* Placement: which rank runs each task and owns each buffer. The one place
 * that turns the model's structure into ranks, as my_distrib() does in StarPU's
 * mpi/examples/matrix_decomposition and get_rankof in Chameleon.
 *
 * A run has pp pipeline stages, tp tensor-parallel and dp data-parallel ranks
 * per stage, laid out as in Megatron-LM: tensor-parallel ranks innermost, then
 * data-parallel replicas, then pipeline stages,
 *   rank = (stage * dp + data) * tp + tensor.
 * Layers go to stages in contiguous runs (eellm_model_spec_stage_split); an exit runs on
 * the stage of the layer it reads (POST) or of the next layer (PRE); the final
 * head and the loss statistics it writes live on the last stage.
 *
 * Data parallelism: each of the dp replicas runs the whole pipeline on its own
 * ranks, so a stage's tasks run on the rank of (stage, this process's tensor
 * and data coordinates) and replicas never exchange data through StarPU-MPI's
 * task flow; they meet only in the gradient all-reduce (and ZeRO-1's parameter
 * broadcast) on the data-parallel communicator of their (stage, tensor) group.
 * The gradient norm's reduction goes to the replica's root (its stage 0);
 * host-side gathers (checkpoints) to rank 0, the root of replica 0, from the
 * ranks of replica 0.
 *
 * Tensor parallelism: the tp ranks of a (stage, replica) each hold a part of
 * every split tensor (graph/model.h) and run the same tasks on their parts, so
 * each process submits the task flow of its own tensor index and the ranks of
 * one tensor index form a pipeline of their own; they meet only in the
 * all-reduces of the tensor-parallel communicator of their (stage, replica). */
#ifndef EELLM_GRAPH_PLACEMENT_H
#define EELLM_GRAPH_PLACEMENT_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "codelets/collective.h"
#include "eellm.h"

struct eellm_layout {
  unsigned pp, tp, dp;
};

/* A rank's place in the layout. */
struct eellm_coords {
  unsigned stage, tensor, data;
};

struct eellm_placement {
  struct eellm_layout layout;
  struct eellm_coords self;  /* this process (all 0 without MPI) */
  unsigned n_exits;          /* the spec's exits; exit_stage has one more, the final head */
  unsigned *layer_stage;     /* per layer (0-based) */
  unsigned *exit_stage;      /* per spec exit, then the final head */
  unsigned *window;          /* per stage: micro-batch slots of activations */
  unsigned slices;           /* each micro-batch share runs as this many slices */
};

/* The rank at coords, and the coords of a rank, in Megatron-LM's order. */
int eellm_layout_rank(const struct eellm_layout *l, struct eellm_coords c);
struct eellm_coords eellm_layout_coords(const struct eellm_layout *l, int rank);

/* The layer (0-based) whose stage runs exit e: the layer it reads (POST) or
 * the next one (PRE). Also what the stage split charges the exit's cost to. */
unsigned eellm_exit_home_layer(const Eellm__Exit *e);

/* Places spec's layers and exits on pp stages (stage_layers as in
 * eellm_model_spec_stage_split) for a run of n_ranks processes (0: one process, no MPI,
 * running every stage). 0, or -1 with a one-line error (tp not dividing the heads or the
 * MLP's hidden units, a rank count other than pp x tp x dp, dp or tp above 1 in one process, a stage count out of 1..n_layers or above
 * EELLM_MAX_STAGES, a given split that does not cover the layers, out of memory). */
int eellm_placement_init(struct eellm_placement *p, const Eellm__Model *spec,
                         struct eellm_layout layout, const uint32_t *stage_layers,
                         size_t n_stage_layers, int n_ranks, int rank, char *err, size_t errlen);
void eellm_placement_free(struct eellm_placement *p);

/* Slices: with one stage and no tensor parallelism, each replica's share of a
 * micro-batch (`sequences` sequences) runs as min(workers, sequences) slices of
 * whole sequences, each its own chain of tasks, as replicas do, so that the
 * `workers` CPU workers of every rank (the fewest of any rank) all take part
 * even with one micro-batch in flight; slices meet only in the weight gradients.
 * Otherwise pipelined micro-batches, or the tensor-parallel all-reduces (run in
 * submission order), would gain nothing from them: 1 slice. Sets the windows. */
void eellm_placement_set_slices(struct eellm_placement *p, unsigned workers, unsigned sequences);
/* The rank that runs stage s's tasks and owns the buffers they write. */
int eellm_stage_rank(const struct eellm_placement *p, unsigned stage);
/* The first and last (0-based) of the n_layers layers on `stage` (every stage has one). */
void eellm_stage_layers(const struct eellm_placement *p, unsigned n_layers, unsigned stage,
                        unsigned *first, unsigned *last);
/* The stage of exit k; k == n_exits is the final head (the last stage). */
unsigned eellm_exit_stage(const struct eellm_placement *p, unsigned k);
/* The rank that gathers figures from every stage of this process's replica
 * (the gradient norm): the replica's stage 0. Rank 0 for replica 0. */
int eellm_root_rank(const struct eellm_placement *p);
/* Whether this process takes part in host-side gathers to rank 0 (replica 0's
 * ranks; the other replicas hold the same weights). */
int eellm_gathers(const struct eellm_placement *p);
/* One line per rank into buf (n bytes; truncated to fit): its stage and that
 * stage's layers, its replica and tensor index, and the AdamW moment bytes it
 * keeps (moment_bytes, per rank). */
void eellm_placement_describe(const struct eellm_placement *p, unsigned n_layers,
                              const double *moment_bytes, char *buf, size_t n);
/* This process's data-parallel communicator: the ranks of its (stage, tensor)
 * group, ranked by data index (collective over MPI_COMM_WORLD; MPI_COMM_NULL
 * without MPI or with dp 1). 0, or -1 with a one-line error. */
int eellm_placement_dp_comm(const struct eellm_placement *p, MPI_Comm *comm, char *err,
                            size_t errlen);

/* Brings h, written on one stage, to every stage's rank of this process's
 * pipeline (its tensor and data indices: the ranks that submit the same flow;
 * every one of them calls it). */
void eellm_placement_share(const struct eellm_placement *p, starpu_data_handle_t h);
/* This process's tensor-parallel communicator: the ranks of its (stage, replica), ranked by
 * tensor index (as eellm_placement_dp_comm; MPI_COMM_NULL with tp 1). */
int eellm_placement_tp_comm(const struct eellm_placement *p, MPI_Comm *comm, char *err,
                            size_t errlen);

#endif
