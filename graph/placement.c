/* Placement (placement.h): stages from the stage split, exits with their home
 * layer, ranks in Megatron-LM's order. */
#include "graph/placement.h"

#include <stdio.h>
#include <stdlib.h>

#include "codelets/collective.h"
#include "runtime/engine/mpi.h"

int eellm_layout_rank(const struct eellm_layout *l, struct eellm_coords c) {
  return (int)((c.stage * l->dp + c.data) * l->tp + c.tensor);
}

struct eellm_coords eellm_layout_coords(const struct eellm_layout *l, int rank) {
  unsigned r = (unsigned)rank;
  struct eellm_coords c = {.tensor = r % l->tp, .data = r / l->tp % l->dp,
                           .stage = r / (l->tp * l->dp)};
  return c;
}

unsigned eellm_exit_home_layer(const Eellm__Exit *e) {
  return e->placement == EELLM__EXIT__PLACEMENT__PRE ? e->layer : e->layer - 1;
}

/* Tensor parallelism splits the heads and the MLP's hidden units evenly and
 * the vocabulary into near-equal row ranges (eellm_tp_range), so the vocabulary
 * needs no padding and checkpoints keep their shapes. */
static int check_tensor_split(const Eellm__Model *spec, unsigned tp, char *err, size_t errlen) {
  unsigned ffn = eellm_model_spec_ffn_size(spec);
  if (tp >= 1 && spec->n_heads % tp == 0 && ffn % tp == 0 && spec->vocab_size >= tp) return 0;
  if (tp < 1)
    snprintf(err, errlen, "parallelism.tp 0: need at least 1 tensor-parallel rank");
  else if (spec->n_heads % tp != 0)
    snprintf(err, errlen, "parallelism.tp %u does not divide n_heads %u", tp, spec->n_heads);
  else if (ffn % tp != 0)
    snprintf(err, errlen, "parallelism.tp %u does not divide the MLP's %u hidden units (ffn_size)",
             tp, ffn);
  else
    snprintf(err, errlen, "parallelism.tp %u is more than vocab_size %u", tp, spec->vocab_size);
  return -1;
}

/* Activation windows: 1F1B's P - s micro-batches on stage s; one stage keeps
 * two micro-batches' slices apart so that one's backward overlaps the next's forward. */
static void set_windows(struct eellm_placement *p) {
  unsigned pp = p->layout.pp;
  for (unsigned st = 0; st < pp; st++) p->window[st] = pp > 1 ? pp - st : 2 * p->slices;
}

void eellm_placement_set_slices(struct eellm_placement *p, unsigned workers, unsigned sequences) {
  unsigned slices = workers < sequences ? workers : sequences;
  p->slices = p->layout.pp == 1 && p->layout.tp == 1 && slices > 1 ? slices : 1;
  set_windows(p);
}

int eellm_placement_init(struct eellm_placement *p, const Eellm__Model *spec,
                         struct eellm_layout layout, const uint32_t *stage_layers,
                         size_t n_stage_layers, int n_ranks, int rank, char *err, size_t errlen) {
  unsigned pp = layout.pp;
  *p = (struct eellm_placement){.layout = layout, .n_exits = spec->n_exits, .slices = 1};
  if (check_tensor_split(spec, layout.tp, err, errlen) != 0) return -1;
  /* One process may run every stage (generation does), never several replicas. */
  uint64_t ranks = (uint64_t)pp * layout.tp * layout.dp;
  if (pp < 1 || pp > spec->n_layers || pp > EELLM_MAX_STAGES || layout.dp < 1 ||
      (n_ranks > 0 ? ranks != (uint64_t)n_ranks : layout.dp != 1 || layout.tp != 1)) {
    snprintf(err, errlen,
             "%u pipeline stages for %u layers, times %u tensor-parallel ranks, times %u "
             "replicas, on %d ranks",
             pp, spec->n_layers, layout.tp, layout.dp, n_ranks > 0 ? n_ranks : 1);
    return -1;
  }
  if (n_stage_layers > 0) {
    /* The API takes a split from anywhere: it must cover the layers exactly. */
    uint64_t total = 0;
    for (size_t st = 0; st < n_stage_layers; st++) total += stage_layers[st];
    int zero = 0;
    for (size_t st = 0; st < n_stage_layers; st++) zero |= stage_layers[st] == 0;
    if (n_stage_layers != pp || zero || total != spec->n_layers) {
      snprintf(err, errlen,
               "stage_layers: %zu stages of %llu layers in all%s, expected %u stages of %u layers",
               n_stage_layers, (unsigned long long)total, zero ? " (an empty stage)" : "", pp,
               spec->n_layers);
      return -1;
    }
  }
  p->self = eellm_layout_coords(&layout, rank);
  unsigned *split = calloc(pp, sizeof *split);
  p->layer_stage = calloc(spec->n_layers, sizeof *p->layer_stage);
  p->exit_stage = calloc(spec->n_exits + 1, sizeof *p->exit_stage);
  p->window = calloc(pp, sizeof *p->window);
  if (!split || !p->layer_stage || !p->exit_stage || !p->window) {
    free(split);
    eellm_placement_free(p);
    snprintf(err, errlen, "out of memory placing %u layers", spec->n_layers);
    return -1;
  }
  if (eellm_model_spec_stage_split(spec, pp, stage_layers, n_stage_layers, split) != 0) {
    free(split);
    eellm_placement_free(p);
    snprintf(err, errlen, "out of memory splitting %u layers into %u stages", spec->n_layers, pp);
    return -1;
  }
  for (unsigned st = 0, i = 0; st < pp; st++)
    for (unsigned j = 0; j < split[st]; j++) p->layer_stage[i++] = st;
  for (unsigned k = 0; k < spec->n_exits; k++)
    p->exit_stage[k] = p->layer_stage[eellm_exit_home_layer(spec->exits[k])];
  p->exit_stage[spec->n_exits] = pp - 1;
  set_windows(p);
  free(split);
  return 0;
}

void eellm_placement_free(struct eellm_placement *p) {
  free(p->layer_stage);
  free(p->exit_stage);
  free(p->window);
  p->layer_stage = p->exit_stage = p->window = NULL;
}

int eellm_stage_rank(const struct eellm_placement *p, unsigned stage) {
  struct eellm_coords c = {.stage = stage, .tensor = p->self.tensor, .data = p->self.data};
  return eellm_layout_rank(&p->layout, c);
}

void eellm_placement_share(const struct eellm_placement *p, starpu_data_handle_t h) {
  for (unsigned st = 0; st < p->layout.pp; st++) eellm_mpi_send_to(h, eellm_stage_rank(p, st));
}

unsigned eellm_exit_stage(const struct eellm_placement *p, unsigned k) {
  return p->exit_stage[k];
}

void eellm_stage_layers(const struct eellm_placement *p, unsigned n_layers, unsigned stage,
                        unsigned *first, unsigned *last) {
  *first = n_layers;
  *last = 0;
  for (unsigned i = 0; i < n_layers; i++)
    if (p->layer_stage[i] == stage) {
      *first = i < *first ? i : *first;
      *last = i;
    }
}

int eellm_root_rank(const struct eellm_placement *p) { return eellm_stage_rank(p, 0); }

int eellm_gathers(const struct eellm_placement *p) { return p->self.data == 0; }

/* *comm = the ranks of group `group` ranked by `key`, for a group of `size` ranks
 * (MPI_COMM_NULL without MPI or for groups of one). */
static int split_comm(unsigned size, int group, int key, const char *what, MPI_Comm *comm,
                      char *err, size_t errlen) {
  *comm = MPI_COMM_NULL;
  if (!eellm_mpi_active() || size == 1) return 0;
  if (eellm_mpi_split(group, key, comm) == 0) return 0;
  snprintf(err, errlen, "MPI_Comm_split of the %s group %d failed", what, group);
  return -1;
}

int eellm_placement_dp_comm(const struct eellm_placement *p, MPI_Comm *comm, char *err,
                            size_t errlen) {
  int group = (int)(p->self.stage * p->layout.tp + p->self.tensor);
  return split_comm(p->layout.dp, group, (int)p->self.data, "data-parallel", comm, err, errlen);
}

int eellm_placement_tp_comm(const struct eellm_placement *p, MPI_Comm *comm, char *err,
                            size_t errlen) {
  int group = (int)(p->self.stage * p->layout.dp + p->self.data);
  return split_comm(p->layout.tp, group, (int)p->self.tensor, "tensor-parallel", comm, err,
                    errlen);
}

void eellm_placement_describe(const struct eellm_placement *p, unsigned n_layers,
                              const double *moment_bytes, char *buf, size_t n) {
  const struct eellm_layout *l = &p->layout;
  size_t used = 0;
  buf[0] = '\0';
  for (int rank = 0; rank < (int)(l->pp * l->tp * l->dp) && used < n; rank++) {
    struct eellm_coords c = eellm_layout_coords(l, rank);
    unsigned first, last;
    eellm_stage_layers(p, n_layers, c.stage, &first, &last);
    int wrote =
        snprintf(buf + used, n - used,
                 "rank %d: stage %u (layers %u-%u), replica %u, tensor %u; AdamW moments "
                 "%.1f KiB\n",
                 rank, c.stage, first + 1, last + 1, c.data, c.tensor, moment_bytes[rank] / 1024);
    if (wrote < 0) return;
    used += (size_t)wrote;
  }
}
