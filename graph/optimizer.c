/* The optimizer step as tasks: the data-parallel gradient all-reduce,
 * per-tensor squared gradient norms (summed over a tensor's parts), one task combining them into the clip
 * factor, one AdamW task per trainable tensor (ZeRO-1: on one replica, then
 * broadcast).
 * Also the learning-rate and exit-weight schedules. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "codelets/codelets.h"
#include "codelets/collective.h"
#include "graph/model.h"
#include "graph/train_step.h"

enum { PRIO_OPTIMIZER = 3 };

double eellm_train_spec_lr_at(const Eellm__Train *train, unsigned step) {
  const Eellm__AdamW *opt = train->optimizer;
  double peak = opt ? opt->lr : 3e-4;
  const Eellm__LRSchedule *s = train->lr_schedule;
  if (!s) return peak;
  if (step <= s->warmup_steps) return peak * step / s->warmup_steps;
  if (s->kind == EELLM__LRSCHEDULE__KIND__CONSTANT) return peak;
  unsigned decay = s->decay_steps ? s->decay_steps : train->steps;
  double span = decay > s->warmup_steps ? decay - s->warmup_steps : 1;
  double progress = fmin(1.0, (step - s->warmup_steps) / span);
  return s->min_lr + 0.5 * (1 + cos(M_PI * progress)) * (peak - s->min_lr);
}

double eellm_exit_spec_weight_at(const Eellm__Exit *exit, unsigned step) {
  const Eellm__WeightSchedule *s = exit->schedule;
  if (!s || s->warmup_steps == 0 || step >= s->warmup_steps) return exit->loss_weight;
  double x = (double)step / s->warmup_steps;
  double f = s->shape == EELLM__WEIGHT_SCHEDULE__SHAPE__COSINE ? 0.5 * (1 - cos(M_PI * x)) : x;
  return s->init + (exit->loss_weight - s->init) * f;
}

/* Gradients of tied heads accumulated on other stages join their owner's. */
static void reduce_shadows(eellm_model *m) {
  struct eellm_task_info ti = {.priority = PRIO_OPTIMIZER, .kind = EELLM_KIND_COLLECTIVE,
                               .micro = -1, .layer = -1};
  for (size_t i = 0; i < m->n_shadows; i++) {
    const struct eellm_tensor *t = &m->tensors[m->shadows[i].tensor];
    if (t->frozen) continue;
    ti.node = eellm_stage_rank(&m->place, t->owner);
    eellm_insert_axpy(t->grad, m->shadows[i].grad, 1.0f, &ti);
  }
}

/* Data parallelism: each replica's gradients summed over its data-parallel
 * group, tensor by tensor once all its contributions (shadows included) are
 * in. Submitted after the last micro-batch, last tensors first (roughly the
 * order in which backward finishes them): each runs as soon as its gradient is
 * final, while the backward of earlier layers goes on. Every replica submits
 * the same tensors in the same order, which the sequencing handle keeps. A
 * worker blocks in an all-reduce only once the tensor's last contribution on
 * its rank is in, after all of that rank's forward work: the ranks it waits
 * for need nothing more from it, so replicas cannot wait on each other in a
 * cycle. */
static void allreduce_grads(eellm_model *m) {
  if (m->dp_comm == MPI_COMM_NULL) return;
  struct eellm_task_info ti = {
      .priority = PRIO_OPTIMIZER, .kind = EELLM_KIND_COLLECTIVE, .micro = -1, .layer = -1};
  for (size_t i = m->n_tensors; i-- > 0;) {
    const struct eellm_tensor *t = &m->tensors[i];
    if (t->frozen) continue;
    ti.node = eellm_stage_rank(&m->place, t->owner);
    eellm_insert_allreduce_sum(t->grad, m->seq_h[t->owner], m->dp_comm, &ti);
  }
}

/* ZeRO-1: the replica that updated a tensor hands it to the others. */
static void broadcast_updates(eellm_model *m) {
  if (m->dp_comm == MPI_COMM_NULL) return;
  struct eellm_task_info ti = {
      .priority = PRIO_OPTIMIZER, .kind = EELLM_KIND_COLLECTIVE, .micro = -1, .layer = -1};
  for (size_t i = 0; i < m->n_tensors; i++) {
    const struct eellm_tensor *t = &m->tensors[i];
    if (t->frozen || t->updater < 0) continue;
    ti.node = eellm_stage_rank(&m->place, t->owner);
    eellm_insert_bcast(t->param, m->seq_h[t->owner], m->dp_comm, t->updater, &ti);
  }
}

/* Fault tests: EELLM_FAULT_NAN_GRAD_STEP=S puts a NaN into the first gradient
 * this process updates at step S (waiting for the backward to finish), as a
 * numerical blow-up would, so that the non-finite-norm path can be tested. */
static void fault_nan_gradient(eellm_model *m, unsigned step) {
  const char *at = getenv("EELLM_FAULT_NAN_GRAD_STEP");
  if (!at || !*at || strtoul(at, NULL, 10) != step) return;
  for (size_t i = 0; i < m->n_tensors; i++) {
    struct eellm_tensor *t = &m->tensors[i];
    if (t->frozen || !eellm_model_owns(m, i)) continue;
    starpu_data_acquire(t->grad, STARPU_RW);
    ((float *)starpu_data_get_local_ptr(t->grad))[0] = NAN;
    starpu_data_release(t->grad);
    return;
  }
}

void eellm_model_submit_optimizer(eellm_model *m, const Eellm__AdamW *opt, unsigned step,
                                  double lr) {
  struct eellm_task_info ti = {.priority = PRIO_OPTIMIZER, .kind = EELLM_KIND_OPTIMIZER,
                               .micro = -1, .layer = -1};
  eellm_step_flush(m);
  reduce_shadows(m);
  fault_nan_gradient(m, step);
  allreduce_grads(m);
  starpu_data_handle_t *sumsqs = malloc(m->n_tensors * sizeof *sumsqs);
  if (!sumsqs) abort();
  int n = 0;
  for (size_t i = 0; i < m->n_tensors; i++) {
    if (m->tensors[i].frozen) continue;
    ti.node = eellm_stage_rank(&m->place, m->tensors[i].owner);
    eellm_insert_sumsq(m->tensors[i].grad, m->sumsq_h[i], &ti);
    /* A split tensor's parts add up; a whole one counts once, from any rank. */
    if (m->tp_comm != MPI_COMM_NULL && m->tensors[i].part.split != EELLM_SPLIT_NONE)
      eellm_insert_allreduce_sum(m->sumsq_h[i], m->seq_h[m->tensors[i].owner], m->tp_comm, &ti);
    sumsqs[n++] = m->sumsq_h[i];
  }
  /* The replica's root gathers every stage's squared norms; every stage reads the factor back. */
  ti.node = eellm_root_rank(&m->place);
  ti.kind = EELLM_KIND_COLLECTIVE;
  eellm_insert_clip_scale(sumsqs, n, m->clip_h, opt->grad_clip, &ti);
  ti.kind = EELLM_KIND_OPTIMIZER;
  free(sumsqs);
  for (size_t i = 0; i < m->n_tensors; i++) {
    struct eellm_tensor *t = &m->tensors[i];
    if (t->frozen || !eellm_model_replica_updates(m, i)) continue;
    ti.node = eellm_stage_rank(&m->place, t->owner);
    struct eellm_adamw_step hp = {.lr = (float)lr, .beta1 = opt->beta1, .beta2 = opt->beta2,
                                  .eps = opt->eps,
                                  .weight_decay = t->decay ? opt->weight_decay : 0,
                                  .step = step};
    eellm_insert_adamw(t->param, t->grad, t->m, t->v, m->clip_h, &hp, &ti);
  }
  broadcast_updates(m);
}

/* The replica root's figure: it owns the clip factor. */
double eellm_model_grad_norm(const eellm_model *m) {
  starpu_data_acquire(m->clip_h, STARPU_R);
  double norm = m->clip[0];
  starpu_data_release(m->clip_h);
  return norm;
}

void eellm_model_freeze_backbone(eellm_model *m) {
  m->backbone_frozen = 1;
  for (size_t i = 0; i < m->n_tensors; i++)
    m->tensors[i].frozen = strncmp(m->tensors[i].name, "exits.", 6) != 0;
}
