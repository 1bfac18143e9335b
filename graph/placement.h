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
 * head and the loss statistics it writes live on the last stage; the gradient
 * norm's reduction and host-side gathers go to the root, rank 0. Tensor and
 * data parallelism are not built yet: tp and dp are 1, and a stage's tasks run
 * on the rank of (stage, this process's tensor and data coordinates). */
#ifndef EELLM_GRAPH_PLACEMENT_H
#define EELLM_GRAPH_PLACEMENT_H

#include <stddef.h>
#include <stdint.h>

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
};

/* The rank at coords, and the coords of a rank, in Megatron-LM's order. */
int eellm_layout_rank(const struct eellm_layout *l, struct eellm_coords c);
struct eellm_coords eellm_layout_coords(const struct eellm_layout *l, int rank);

/* The layer (0-based) whose stage runs exit e: the layer it reads (POST) or
 * the next one (PRE). Also what the stage split charges the exit's cost to. */
unsigned eellm_exit_home_layer(const Eellm__Exit *e);

/* Places spec's layers and exits on pp stages (stage_layers as in
 * eellm_model_spec_stage_split) for a run of n_ranks processes (0: one process, no MPI).
 * 0, or -1 with a one-line error (a rank count that does not match the layout,
 * a stage count out of 1..n_layers or above EELLM_MAX_STAGES, a given split
 * that does not cover the layers, out of memory). */
int eellm_placement_init(struct eellm_placement *p, const Eellm__Model *spec,
                         struct eellm_layout layout, const uint32_t *stage_layers,
                         size_t n_stage_layers, int n_ranks, int rank, char *err, size_t errlen);
void eellm_placement_free(struct eellm_placement *p);

/* The rank that runs stage s's tasks and owns the buffers they write. */
int eellm_stage_rank(const struct eellm_placement *p, unsigned stage);
/* The stage of exit k; k == n_exits is the final head (the last stage). */
unsigned eellm_exit_stage(const struct eellm_placement *p, unsigned k);
/* The rank that gathers figures from every stage (the gradient norm). */
int eellm_root_rank(void);

#endif
