/* Submits one micro-batch's forward and backward as StarPU tasks.
 *
 * Residual stream: resid[0] is the embedding output, resid[k] the output of
 * layer k (1-based); exit e reads resid[layer_e] (an MLP exit reads layer
 * layer_e's post-attention residual). Backward keeps one gradient buffer `dres`
 * per micro-batch and stage and updates it in place, layer by layer, as llm.c
 * does; entering a stage copies the gradient that arrived from the next one.
 *
 * Each exit's forward and backward are submitted right after the forward of
 * the layer it reads, at a lower priority: they depend on nothing deeper, so
 * the scheduler runs them whenever a worker would otherwise idle. They leave
 * the exit's gradient w.r.t. its input in a buffer of its own, added into
 * `dres` when the backward reaches that layer: the only gradient that crosses
 * a stage boundary stays the ordinary activation gradient (EE-LLM's rule).
 *
 * Pipeline stages: every task runs on the stage that owns the layer or exit it
 * belongs to (its MPI rank), and every buffer a task writes belongs to that
 * stage; StarPU-MPI moves what other stages read. Activation buffers are
 * recycled per stage over `window` micro-batch slots (1F1B's P - s on stage
 * s), so micro-batch m + window waits for micro-batch m's backward to release
 * them: activation memory stays flat however many micro-batches a step has. */
#include "graph/step.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codelets/codelets.h"
#include "runtime/engine/mpi.h"

enum { PRIO_EXIT = 0, PRIO_FORWARD = 1, PRIO_BACKWARD = 2 };

/* The buffers one (mode, stage, slot) used, in the order it asked for them. */
struct act_pool {
  starpu_data_handle_t *h;
  size_t *key;                      /* columns of a float matrix, or ~elements of a 4-byte vector */
  size_t n, cap, next;
};

struct eellm_step {
  size_t n_micro;                   /* micro-batches submitted since the last wait */
  /* Loss statistics (sum, count) per micro-batch index and exit, kept across steps. */
  double **stats;
  starpu_data_handle_t **stats_h;
  size_t n_stats;
  float *ones;                      /* the default loss mask */
  /* Buffers kept across steps per mode (forward only, training), stage and
   * slot: reused, they cost neither allocation nor page faults, and their
   * number bounds the memory of a pipeline. */
  struct act_pool *pools[2];        /* [stage * max_window + slot] */
  size_t max_window;
  double *loss;                     /* n_exits: result of the last wait */
  starpu_data_handle_t *logits;     /* n_exits: the latest micro-batch's logits */
};

/* What one micro-batch's submission needs at hand. */
struct micro {
  struct eellm_model *m;
  int backward;
  size_t n_rows;                    /* B * T */
  int index;                        /* micro-batch index since the last wait */
  unsigned stage;                   /* stage of the tasks being submitted */
  struct act_pool **entered;        /* per stage: its pool for this micro-batch, once entered */
  starpu_data_handle_t tokens, targets, mask;
};

static struct eellm_step *step_of(struct eellm_model *m) {
  if (!m->step) {
    m->step = calloc(1, sizeof *m->step);
    if (!m->step) abort();
    for (unsigned st = 0; st < m->pp; st++)
      if (m->window[st] > m->step->max_window) m->step->max_window = m->window[st];
    for (int mode = 0; mode < 2; mode++) {
      m->step->pools[mode] = calloc(m->pp * m->step->max_window, sizeof *m->step->pools[mode]);
      if (!m->step->pools[mode]) abort();
    }
  }
  return m->step;
}

/* Makes `stage` the one whose tasks and buffers come next. */
static void enter(struct micro *mb, unsigned stage) {
  mb->stage = stage;
  if (mb->entered[stage]) return;
  struct eellm_step *s = mb->m->step;
  size_t slot = (size_t)mb->index % mb->m->window[stage];
  struct act_pool *p = &s->pools[mb->backward][stage * s->max_window + slot];
  p->next = 0;
  mb->entered[stage] = p;
}

/* The current stage's buffer at this point of its sequence when it has this
 * shape, else a new one (owned by the stage, allocated by StarPU on first write). */
static starpu_data_handle_t pooled(struct micro *mb, size_t key) {
  struct act_pool *p = mb->entered[mb->stage];
  if (p->next < p->n && p->key[p->next] == key) return p->h[p->next++];
  if (p->next == p->cap) {
    p->cap = p->cap ? 2 * p->cap : 256;
    p->h = realloc(p->h, p->cap * sizeof *p->h);
    p->key = realloc(p->key, p->cap * sizeof *p->key);
    if (!p->h || !p->key) abort();
  }
  if (p->next < p->n) starpu_data_unregister_submit(p->h[p->next]);
  else p->n++;
  starpu_data_handle_t *h = &p->h[p->next];
  if ((long)key >= 0)
    starpu_matrix_data_register(h, -1, 0, key, key, mb->n_rows, sizeof(float));
  else
    starpu_vector_data_register(h, -1, 0, ~key, 4);
  eellm_mpi_register(*h, (int)mb->stage);
  p->key[p->next] = key;
  return p->h[p->next++];
}

/* An activation [B * T, cols] of the current stage. */
static starpu_data_handle_t act(struct micro *mb, size_t cols) { return pooled(mb, cols); }

/* A vector of B * T 4-byte values (token ids, mask) of the current stage. */
static starpu_data_handle_t input(struct micro *mb) { return pooled(mb, ~mb->n_rows); }

static void free_pools(struct eellm_model *m, struct eellm_step *s) {
  for (int mode = 0; mode < 2; mode++) {
    for (size_t i = 0; i < m->pp * s->max_window; i++) {
      struct act_pool *p = &s->pools[mode][i];
      for (size_t j = 0; j < p->n; j++) starpu_data_unregister(p->h[j]);
      free(p->h);
      free(p->key);
    }
    free(s->pools[mode]);
  }
}

static starpu_data_handle_t param(const struct micro *mb, int i) {
  return i < 0 ? NULL : mb->m->tensors[i].param;
}

static starpu_data_handle_t grad(const struct micro *mb, int i) {
  return eellm_model_grad_on(mb->m, i, mb->stage);
}

static struct eellm_task_info info(const struct micro *mb, enum eellm_task_kind kind, int prio,
                                   int layer) {
  struct eellm_task_info i = {.priority = prio, .node = (int)mb->stage, .kind = kind,
                              .micro = mb->index, .layer = layer};
  return i;
}

static enum eellm_norm_kind norm_kind(const struct eellm_model *m) {
  return m->spec->norm == EELLM__MODEL__NORM__RMSNORM ? EELLM_RMSNORM : EELLM_LAYERNORM;
}

/* ---- layers ------------------------------------------------------------ */

struct mlp_acts {
  starpu_data_handle_t ln, ln_stats, fc, act, out;
};

struct layer_acts {
  starpu_data_handle_t ln1, ln1_stats, qkv, att, lse, r;
  struct mlp_acts mlp;
};

/* Gradient scratch of one branch (backbone, or one exit) of a micro-batch. */
struct grad_scratch {
  starpu_data_handle_t dact, dfc, dln, datt, dqkv;
};

static void scratch_init(struct micro *mb, struct grad_scratch *g) {
  const struct eellm_model *m = mb->m;
  g->dact = act(mb, m->d_ffn);
  g->dfc = act(mb, m->fc_out);
  g->dln = act(mb, m->spec->d_model);
  g->datt = act(mb, m->spec->d_model);
  g->dqkv = act(mb, 3 * m->spec->d_model);
}

/* out [N, D] = r + proj(act(fc(norm(r)))) */
static void mlp_forward(struct micro *mb, const struct eellm_layer_params *p,
                        starpu_data_handle_t r, struct mlp_acts *a,
                        const struct eellm_task_info *ti) {
  const struct eellm_model *m = mb->m;
  size_t d = m->spec->d_model;
  a->ln = act(mb, d);
  a->ln_stats = act(mb, 2);
  a->fc = act(mb, m->fc_out);
  a->act = act(mb, m->d_ffn);
  a->out = act(mb, d);
  eellm_insert_norm_fwd(r, param(mb, p->ln2_w), param(mb, p->ln2_b), a->ln, a->ln_stats,
                        norm_kind(m), m->spec->norm_eps, ti);
  eellm_insert_linear_fwd(a->ln, param(mb, p->fc_w), param(mb, p->fc_b), NULL, a->fc, 0, ti);
  eellm_insert_activation_fwd(a->fc, a->act, (enum eellm_activation)m->spec->activation, ti);
  eellm_insert_linear_fwd(a->act, param(mb, p->proj_w), param(mb, p->proj_b), r, a->out, 0, ti);
}

/* dres: gradient of the MLP's output in, of its input r out (in place). */
static void mlp_backward(struct micro *mb, const struct eellm_layer_params *p,
                         const struct mlp_acts *a, starpu_data_handle_t r,
                         starpu_data_handle_t dres, const struct grad_scratch *g,
                         const struct eellm_task_info *ti) {
  const struct eellm_model *m = mb->m;
  eellm_insert_linear_bwd(a->act, param(mb, p->proj_w), dres, g->dact, grad(mb, p->proj_w),
                          grad(mb, p->proj_b), 0, 0, ti);
  eellm_insert_activation_bwd(a->fc, g->dact, g->dfc, (enum eellm_activation)m->spec->activation,
                              0, ti);
  eellm_insert_linear_bwd(a->ln, param(mb, p->fc_w), g->dfc, g->dln, grad(mb, p->fc_w),
                          grad(mb, p->fc_b), 0, 0, ti);
  eellm_insert_norm_bwd(r, param(mb, p->ln2_w), a->ln_stats, g->dln, dres, grad(mb, p->ln2_w),
                        grad(mb, p->ln2_b), norm_kind(m), 1, ti);
}

/* a->mlp.out [N, D] = transformer layer p applied to x [N, D]. */
static void layer_forward(struct micro *mb, const struct eellm_layer_params *p,
                          starpu_data_handle_t x, struct layer_acts *a,
                          const struct eellm_task_info *ti) {
  const struct eellm_model *m = mb->m;
  size_t d = m->spec->d_model;
  a->ln1 = act(mb, d);
  a->ln1_stats = act(mb, 2);
  a->qkv = act(mb, 3 * d);
  a->att = act(mb, d);
  a->lse = act(mb, m->spec->n_heads);
  a->r = act(mb, d);
  eellm_insert_norm_fwd(x, param(mb, p->ln1_w), param(mb, p->ln1_b), a->ln1, a->ln1_stats,
                        norm_kind(m), m->spec->norm_eps, ti);
  eellm_insert_linear_fwd(a->ln1, param(mb, p->qkv_w), param(mb, p->qkv_b), NULL, a->qkv, 0, ti);
  eellm_insert_attention_fwd(a->qkv, a->att, a->lse, m->seq_len, m->spec->n_heads,
                             m->spec->positions == EELLM__MODEL__POSITIONS__ROPE,
                             m->spec->rope_theta, ti);
  eellm_insert_linear_fwd(a->att, param(mb, p->o_w), param(mb, p->o_b), x, a->r, 0, ti);
  mlp_forward(mb, p, a->r, &a->mlp, ti);
}

/* The attention half of a layer's backward: dres holds d r in, d x out. */
static void attention_backward(struct micro *mb, const struct eellm_layer_params *p,
                               const struct layer_acts *a, starpu_data_handle_t x,
                               starpu_data_handle_t dres, const struct grad_scratch *g,
                               const struct eellm_task_info *ti) {
  const struct eellm_model *m = mb->m;
  eellm_insert_linear_bwd(a->att, param(mb, p->o_w), dres, g->datt, grad(mb, p->o_w),
                          grad(mb, p->o_b), 0, 0, ti);
  eellm_insert_attention_bwd(a->qkv, a->lse, g->datt, g->dqkv, m->seq_len, m->spec->n_heads,
                             m->spec->positions == EELLM__MODEL__POSITIONS__ROPE,
                             m->spec->rope_theta, 0, ti);
  eellm_insert_linear_bwd(a->ln1, param(mb, p->qkv_w), g->dqkv, g->dln, grad(mb, p->qkv_w),
                          grad(mb, p->qkv_b), 0, 0, ti);
  eellm_insert_norm_bwd(x, param(mb, p->ln1_w), a->ln1_stats, g->dln, dres, grad(mb, p->ln1_w),
                        grad(mb, p->ln1_b), norm_kind(m), 1, ti);
}

/* ---- heads --------------------------------------------------------------- */

struct head {
  int norm_w, norm_b, head_w;
  float temperature, loss_scale; /* loss_scale 0: forward only */
  starpu_data_handle_t stats;   /* loss sum and count out */
  starpu_data_handle_t *logits; /* where to keep the logits' handle */
};

/* Loss of head h on x [N, D]; its gradient w.r.t. x goes to dx (overwritten).
 * ti tags the forward tasks, bwd_ti the backward ones, loss_ti the losses. */
static void head_forward_backward(struct micro *mb, const struct head *h, starpu_data_handle_t x,
                                  starpu_data_handle_t dx, const struct eellm_task_info *ti,
                                  const struct eellm_task_info *bwd_ti,
                                  const struct eellm_task_info *loss_ti) {
  const struct eellm_model *m = mb->m;
  size_t d = m->spec->d_model, v = m->spec->vocab_size;
  starpu_data_handle_t y = x, stats = NULL;
  if (h->norm_w >= 0) {
    y = act(mb, d);
    stats = act(mb, 2);
    eellm_insert_norm_fwd(x, param(mb, h->norm_w), param(mb, h->norm_b), y, stats, norm_kind(m),
                          m->spec->norm_eps, ti);
  }
  starpu_data_handle_t logits = act(mb, v);
  eellm_insert_linear_fwd(y, param(mb, h->head_w), NULL, NULL, logits, 1, ti);
  *h->logits = logits;
  eellm_insert_xent_fwd(logits, mb->targets, mb->mask, h->stats, h->temperature, loss_ti);
  if (h->loss_scale == 0) return;
  starpu_data_handle_t dlogits = act(mb, v);
  eellm_insert_xent_bwd(logits, mb->targets, mb->mask, h->stats, dlogits, h->loss_scale,
                        h->temperature, loss_ti);
  if (h->norm_w < 0) {
    eellm_insert_linear_bwd(y, param(mb, h->head_w), dlogits, dx, grad(mb, h->head_w), NULL, 1, 0,
                            bwd_ti);
    return;
  }
  starpu_data_handle_t dy = act(mb, d);
  eellm_insert_linear_bwd(y, param(mb, h->head_w), dlogits, dy, grad(mb, h->head_w), NULL, 1, 0,
                          bwd_ti);
  eellm_insert_norm_bwd(x, param(mb, h->norm_w), stats, dy, dx, grad(mb, h->norm_w),
                        grad(mb, h->norm_b), norm_kind(m), 0, bwd_ti);
}

/* Exit k on resid[layer] (or, for MLP exits, on the layer's post-attention
 * residual r), on the exit's stage: forward, loss and backward down to its
 * input; returns the buffer holding the gradient w.r.t. that input, or NULL if
 * the exit's loss weight is 0. */
static starpu_data_handle_t exit_submit(struct micro *mb, unsigned k, starpu_data_handle_t x,
                                        starpu_data_handle_t r, float loss_scale,
                                        starpu_data_handle_t stats) {
  const struct eellm_model *m = mb->m;
  const struct eellm_exit_params *e = &m->exits[k];
  unsigned caller_stage = mb->stage;
  enter(mb, m->exit_stage[k]);
  struct eellm_task_info ti = info(mb, EELLM_KIND_EXIT, PRIO_EXIT, 1000 + (int)k);
  struct eellm_task_info loss_ti = info(mb, EELLM_KIND_LOSS, PRIO_EXIT, 1000 + (int)k);
  struct head h = {e->lnf_w, e->lnf_b, e->head_w, e->temperature, loss_scale, stats,
                   &m->step->logits[k]};
  starpu_data_handle_t dx = loss_scale != 0 ? act(mb, m->spec->d_model) : NULL;
  struct grad_scratch g;
  if (e->structure == EELLM__EXIT__STRUCTURE__MLP) {
    struct mlp_acts a;
    mlp_forward(mb, &e->block, r, &a, &ti);
    head_forward_backward(mb, &h, a.out, dx, &ti, &ti, &loss_ti);
    if (dx) {
      scratch_init(mb, &g);
      mlp_backward(mb, &e->block, &a, r, dx, &g, &ti);
    }
  } else if (e->structure == EELLM__EXIT__STRUCTURE__BLOCK) {
    struct layer_acts a;
    layer_forward(mb, &e->block, x, &a, &ti);
    head_forward_backward(mb, &h, a.mlp.out, dx, &ti, &ti, &loss_ti);
    if (dx) {
      scratch_init(mb, &g);
      mlp_backward(mb, &e->block, &a.mlp, a.r, dx, &g, &ti);
      attention_backward(mb, &e->block, &a, x, dx, &g, &ti);
    }
  } else {
    head_forward_backward(mb, &h, x, dx, &ti, &ti, &loss_ti);
  }
  enter(mb, caller_stage);
  return dx;
}

/* ---- the micro-batch ------------------------------------------------------ */

static int check_tokens(const struct eellm_model *m, const struct eellm_batch *b, size_t n,
                        char *err, size_t errlen) {
  for (size_t i = 0; i < n; i++) {
    const int32_t *arr = b->tokens;
    const char *what = "token";
    for (int pass = 0; pass < 2; pass++, arr = b->targets, what = "target") {
      if (arr[i] < 0 || (uint32_t)arr[i] >= m->spec->vocab_size) {
        snprintf(err, errlen, "%s id %d at position %zu outside 0..%u (vocab_size)", what,
                 arr[i], i, m->spec->vocab_size - 1);
        return -1;
      }
    }
  }
  return 0;
}

/* Loss-statistics buffers (sum, count per exit) of micro-batch `index`, each
 * owned by its exit's stage; registered once, reused every step. */
static starpu_data_handle_t *stats_of(struct eellm_model *m, size_t index) {
  struct eellm_step *s = m->step;
  unsigned n_exits = eellm_n_exits(m);
  if (index == s->n_stats) {
    s->stats = realloc(s->stats, (index + 1) * sizeof *s->stats);
    s->stats_h = realloc(s->stats_h, (index + 1) * sizeof *s->stats_h);
    if (!s->stats || !s->stats_h) abort();
    double *slots = calloc(2 * n_exits, sizeof *slots);
    starpu_data_handle_t *h = malloc(n_exits * sizeof *h);
    if (!slots || !h) abort();
    for (unsigned k = 0; k < n_exits; k++) {
      starpu_vector_data_register(&h[k], STARPU_MAIN_RAM, (uintptr_t)(slots + 2 * k), 2,
                                  sizeof(double));
      eellm_mpi_register(h[k], (int)(k + 1 < n_exits ? m->exit_stage[k] : m->pp - 1));
    }
    s->stats[index] = slots;
    s->stats_h[index] = h;
    s->n_stats++;
  }
  return s->stats_h[index];
}

static float exit_weight(const struct eellm_model *m, const float *weights, unsigned k) {
  if (weights) return weights[k];
  return k < m->spec->n_exits ? m->spec->exits[k]->loss_weight : 1.0f;
}

/* Token ids, targets and mask enter the graph on stage 0, carried by tasks. */
static void load_inputs(struct micro *mb, const struct eellm_batch *batch) {
  struct eellm_step *s = mb->m->step;
  size_t bytes = mb->n_rows * 4;
  if (!batch->mask && !s->ones) {
    s->ones = malloc(bytes);
    if (!s->ones) abort();
    for (size_t i = 0; i < mb->n_rows; i++) s->ones[i] = 1;
  }
  enter(mb, 0);
  struct eellm_task_info ti = info(mb, EELLM_KIND_OTHER, PRIO_FORWARD, -1);
  mb->tokens = input(mb);
  mb->targets = input(mb);
  mb->mask = input(mb);
  eellm_insert_vector_set(mb->tokens, batch->tokens, &ti);
  eellm_insert_vector_set(mb->targets, batch->targets, &ti);
  eellm_insert_vector_set(mb->mask, batch->mask ? batch->mask : s->ones, &ti);
}

/* Forward of one micro-batch, and its backward when `backward` is set. */
static int submit_micro(eellm_model *m, const struct eellm_batch *batch, const float *exit_weights,
                        float grad_scale, int backward, char *err, size_t errlen) {
  struct micro mb = {.m = m, .backward = backward, .n_rows = (size_t)m->micro_batch * m->seq_len};
  if (check_tokens(m, batch, mb.n_rows, err, errlen) != 0) return -1;
  struct eellm_step *s = step_of(m);
  mb.index = (int)s->n_micro++;
  mb.entered = calloc(m->pp, sizeof *mb.entered);
  starpu_data_handle_t *stats = stats_of(m, (size_t)mb.index);
  if (!s->logits && !(s->logits = calloc(eellm_n_exits(m), sizeof *s->logits))) abort();
  load_inputs(&mb, batch);

  const Eellm__Model *spec = m->spec;
  unsigned n_layers = spec->n_layers, n_exits = spec->n_exits;
  size_t d = spec->d_model;
  starpu_data_handle_t *resid = calloc(n_layers + 1, sizeof *resid);
  struct layer_acts *acts = calloc(n_layers, sizeof *acts);
  starpu_data_handle_t *exit_dx = calloc(n_exits + 1, sizeof *exit_dx);
  if (!mb.entered || !resid || !acts || !exit_dx) abort();

  struct eellm_task_info fwd = info(&mb, EELLM_KIND_FORWARD, PRIO_FORWARD, -1);
  resid[0] = act(&mb, d);
  eellm_insert_embed_fwd(mb.tokens, param(&mb, m->wte), param(&mb, m->wpe), resid[0], m->seq_len,
                         &fwd);
  unsigned next_exit = 0;
  for (unsigned i = 0; i < n_layers; i++) {
    enter(&mb, m->layer_stage[i]);
    fwd = info(&mb, EELLM_KIND_FORWARD, PRIO_FORWARD, (int)i);
    layer_forward(&mb, &m->layers[i], resid[i], &acts[i], &fwd);
    resid[i + 1] = acts[i].mlp.out;
    for (; next_exit < n_exits && m->exits[m->exit_order[next_exit]].layer == i + 1; next_exit++) {
      unsigned k = m->exit_order[next_exit];
      exit_dx[k] = exit_submit(&mb, k, resid[i + 1], acts[i].r,
                               backward ? exit_weight(m, exit_weights, k) * grad_scale : 0,
                               stats[k]);
    }
  }

  /* The final head on the last stage; a frozen backbone (EE-Tuning) needs its loss only. */
  enter(&mb, m->pp - 1);
  fwd = info(&mb, EELLM_KIND_FORWARD, PRIO_FORWARD, (int)n_layers);
  struct eellm_task_info loss_ti = info(&mb, EELLM_KIND_LOSS, PRIO_BACKWARD, (int)n_layers);
  int backbone_backward = backward && !m->backbone_frozen;
  float final_scale = backbone_backward ? exit_weight(m, exit_weights, n_exits) * grad_scale : 0;
  struct head final = {m->lnf_w, m->lnf_b, m->head_w, 1.0f, final_scale, stats[n_exits],
                       &s->logits[n_exits]};
  starpu_data_handle_t dres = backbone_backward ? act(&mb, d) : NULL;
  struct eellm_task_info bwd = info(&mb, EELLM_KIND_BACKWARD, PRIO_BACKWARD, (int)n_layers);
  head_forward_backward(&mb, &final, resid[n_layers], dres, &fwd, &bwd, &loss_ti);
  if (backbone_backward) {
    if (final.loss_scale == 0) eellm_insert_zero(dres, &bwd);
    struct grad_scratch g;
    scratch_init(&mb, &g);
    for (unsigned i = n_layers; i-- > 0;) {
      if (m->layer_stage[i] != mb.stage) {
        /* The gradient arriving from the next stage: the only one that crosses. */
        starpu_data_handle_t from_next = dres;
        enter(&mb, m->layer_stage[i]);
        bwd = info(&mb, EELLM_KIND_BACKWARD, PRIO_BACKWARD, (int)i);
        dres = act(&mb, d);
        eellm_insert_copy(dres, from_next, &bwd);
        scratch_init(&mb, &g);
      }
      bwd = info(&mb, EELLM_KIND_BACKWARD, PRIO_BACKWARD, (int)i);
      for (unsigned k = 0; k < n_exits; k++)
        if (exit_dx[k] && m->exits[k].layer == i + 1 &&
            m->exits[k].structure != EELLM__EXIT__STRUCTURE__MLP)
          eellm_insert_axpy(dres, exit_dx[k], 1.0f, &bwd);
      mlp_backward(&mb, &m->layers[i], &acts[i].mlp, acts[i].r, dres, &g, &bwd);
      for (unsigned k = 0; k < n_exits; k++)
        if (exit_dx[k] && m->exits[k].layer == i + 1 &&
            m->exits[k].structure == EELLM__EXIT__STRUCTURE__MLP)
          eellm_insert_axpy(dres, exit_dx[k], 1.0f, &bwd);
      attention_backward(&mb, &m->layers[i], &acts[i], resid[i], dres, &g, &bwd);
    }
    bwd.layer = -1;
    eellm_insert_embed_bwd(mb.tokens, dres, grad(&mb, m->wte), grad(&mb, m->wpe), m->seq_len,
                           &bwd);
  }
  free(mb.entered);
  free(resid);
  free(acts);
  free(exit_dx);
  return 0;
}

int eellm_submit_forward_backward(eellm_model *m, const struct eellm_batch *batch,
                                  const float *exit_weights, float grad_scale, char *err,
                                  size_t errlen) {
  return submit_micro(m, batch, exit_weights, grad_scale, 1, err, errlen);
}

int eellm_submit_forward(eellm_model *m, const struct eellm_batch *batch, char *err,
                         size_t errlen) {
  return submit_micro(m, batch, NULL, 0, 0, err, errlen);
}

void eellm_submit_zero_grads(eellm_model *m) {
  struct eellm_task_info ti = {.priority = PRIO_BACKWARD, .kind = EELLM_KIND_OTHER, .micro = -1,
                               .layer = -1};
  for (size_t i = 0; i < m->n_tensors; i++) {
    if (m->tensors[i].frozen) continue;
    ti.node = (int)m->tensors[i].owner;
    eellm_insert_zero(m->tensors[i].grad, &ti);
  }
  for (size_t i = 0; i < m->n_shadows; i++) {
    if (m->tensors[m->shadows[i].tensor].frozen) continue;
    ti.node = (int)m->shadows[i].stage;
    eellm_insert_zero(m->shadows[i].grad, &ti);
  }
}

unsigned eellm_n_exits(const eellm_model *m) { return m->spec->n_exits + 1; }

unsigned eellm_exit_layer(const eellm_model *m, unsigned k) {
  return k < m->spec->n_exits ? m->exits[k].layer : m->spec->n_layers;
}

/* Each stage reads the losses of its own exits; a sum over ranks gives rank 0 all of them. */
void eellm_wait(eellm_model *m) {
  eellm_mpi_wait();
  struct eellm_step *s = step_of(m);
  unsigned n_exits = eellm_n_exits(m);
  free(s->loss);
  s->loss = calloc(n_exits, sizeof *s->loss);
  if (!s->loss) abort();
  for (unsigned k = 0; k < n_exits; k++) {
    unsigned owner = k + 1 < n_exits ? m->exit_stage[k] : m->pp - 1;
    if (eellm_mpi_active() && owner != (unsigned)eellm_rank()) continue;
    size_t counted = 0;
    for (size_t mi = 0; mi < s->n_micro; mi++) {
      starpu_data_acquire(s->stats_h[mi][k], STARPU_R);
      const double *st = s->stats[mi] + 2 * k;
      if (st[1] > 0) {
        s->loss[k] += st[0] / st[1];
        counted++;
      }
      starpu_data_release(s->stats_h[mi][k]);
    }
    if (counted) s->loss[k] /= counted;
  }
  eellm_mpi_sum(s->loss, (int)n_exits);
  s->n_micro = 0;
}

double eellm_exit_loss(const eellm_model *m, unsigned k) {
  return m->step && m->step->loss && k < eellm_n_exits(m) ? m->step->loss[k] : 0.0;
}

int eellm_exit_logits(eellm_model *m, unsigned k, float *out) {
  if (!m->step || !m->step->logits || k >= eellm_n_exits(m) || !m->step->logits[k] ||
      eellm_mpi_active())
    return -1;
  starpu_data_handle_t h = m->step->logits[k];
  starpu_data_acquire(h, STARPU_R);
  const float *logits = (const float *)starpu_matrix_get_local_ptr(h);
  size_t ld = starpu_matrix_get_local_ld(h), cols = starpu_matrix_get_nx(h);
  for (size_t r = 0; r < starpu_matrix_get_ny(h); r++)
    memcpy(out + r * cols, logits + r * ld, cols * sizeof *out);
  starpu_data_release(h);
  return 0;
}

void eellm_step_free(struct eellm_model *m) {
  struct eellm_step *s = m->step;
  if (!s) return;
  for (size_t i = 0; i < s->n_stats; i++) {
    for (unsigned k = 0; k < eellm_n_exits(m); k++) starpu_data_unregister(s->stats_h[i][k]);
    free(s->stats_h[i]);
    free(s->stats[i]);
  }
  free_pools(m, s);
  free(s->stats);
  free(s->stats_h);
  free(s->ones);
  free(s->loss);
  free(s->logits);
  free(s);
  m->step = NULL;
}
