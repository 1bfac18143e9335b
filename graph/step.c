/* Submits one micro-batch's forward and backward as StarPU tasks.
 *
 * Residual stream: resid[0] is the embedding output, resid[k] the output of
 * layer k (1-based); exit e reads resid[layer_e] (an MLP exit reads layer
 * layer_e's post-attention residual). Backward keeps one gradient buffer `dres`
 * per micro-batch and updates it in place, layer by layer, as llm.c does.
 *
 * Each exit's forward and backward are submitted right after the forward of
 * the layer it reads, at a lower priority: they depend on nothing deeper, so
 * the scheduler runs them whenever a worker would otherwise idle. They leave
 * the exit's gradient w.r.t. its input in a buffer of its own, added into
 * `dres` when the backward reaches that layer: the only gradient that crosses
 * a stage boundary stays the ordinary activation gradient (EE-LLM's rule). */
#include "graph/step.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codelets/codelets.h"

enum { PRIO_EXIT = 0, PRIO_FORWARD = 1, PRIO_BACKWARD = 2 };

/* Loss statistics (sum, count) of every exit of every micro-batch since the last wait. */
struct eellm_step {
  size_t n_micro, cap_micro;
  double **stats;                   /* per micro-batch: n_exits x (sum, count) */
  starpu_data_handle_t **stats_h;   /* per micro-batch: n_exits handles */
  float *ones;                      /* default loss mask */
  starpu_data_handle_t *owned;      /* handles to unregister at the end of the micro-batch */
  size_t n_owned, cap_owned;
  /* Activation buffers kept across steps, per mode (forward only, training) and
   * micro-batch slot: reused, they cost neither allocation nor page faults. */
  struct act_pool *pools[2];
  size_t n_pools[2];
  double *loss;                     /* n_exits: result of the last wait */
};

/* The activations one micro-batch slot used, in the order it asked for them. */
struct act_pool {
  starpu_data_handle_t *h;
  size_t *cols;
  size_t n, cap, next;
};

/* What one micro-batch's submission needs at hand. */
struct micro {
  struct eellm_model *m;
  struct act_pool *pool;
  size_t n_rows;                    /* B * T */
  starpu_data_handle_t tokens, targets, mask;
  int index;
};

static starpu_data_handle_t own(struct micro *mb, starpu_data_handle_t h) {
  struct eellm_step *s = mb->m->step;
  if (s->n_owned == s->cap_owned) {
    s->cap_owned = s->cap_owned ? 2 * s->cap_owned : 256;
    s->owned = realloc(s->owned, s->cap_owned * sizeof *s->owned);
    if (!s->owned) abort();
  }
  s->owned[s->n_owned++] = h;
  return h;
}

/* An activation [rows, cols]: the slot's buffer at this point of the sequence
 * when it has that shape, else a new one, allocated by StarPU on first write. */
static starpu_data_handle_t act(struct micro *mb, size_t cols) {
  struct act_pool *p = mb->pool;
  if (p->next < p->n && p->cols[p->next] == cols) return p->h[p->next++];
  if (p->next == p->cap) {
    p->cap = p->cap ? 2 * p->cap : 256;
    p->h = realloc(p->h, p->cap * sizeof *p->h);
    p->cols = realloc(p->cols, p->cap * sizeof *p->cols);
    if (!p->h || !p->cols) abort();
  }
  if (p->next < p->n) starpu_data_unregister_submit(p->h[p->next]);
  else p->n++;
  starpu_matrix_data_register(&p->h[p->next], -1, 0, cols, cols, mb->n_rows, sizeof(float));
  p->cols[p->next] = cols;
  return p->h[p->next++];
}

static struct act_pool *pool_of(struct eellm_step *s, int backward, size_t slot) {
  if (slot >= s->n_pools[backward]) {
    s->pools[backward] = realloc(s->pools[backward], (slot + 1) * sizeof *s->pools[backward]);
    if (!s->pools[backward]) abort();
    memset(s->pools[backward] + s->n_pools[backward], 0,
           (slot + 1 - s->n_pools[backward]) * sizeof *s->pools[backward]);
    s->n_pools[backward] = slot + 1;
  }
  struct act_pool *p = &s->pools[backward][slot];
  p->next = 0;
  return p;
}

static void free_pools(struct eellm_step *s) {
  for (int mode = 0; mode < 2; mode++) {
    for (size_t i = 0; i < s->n_pools[mode]; i++) {
      struct act_pool *p = &s->pools[mode][i];
      for (size_t j = 0; j < p->n; j++) starpu_data_unregister(p->h[j]);
      free(p->h);
      free(p->cols);
    }
    free(s->pools[mode]);
  }
}

static starpu_data_handle_t param(const struct micro *mb, int i) {
  return i < 0 ? NULL : mb->m->tensors[i].param;
}

static starpu_data_handle_t grad(const struct micro *mb, int i) {
  return i < 0 || mb->m->tensors[i].frozen ? NULL : mb->m->tensors[i].grad;
}

static struct eellm_task_info info(const struct micro *mb, enum eellm_task_kind kind, int prio,
                                   int layer) {
  struct eellm_task_info i = {.priority = prio, .kind = kind, .micro = mb->index, .layer = layer};
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
};

/* Loss of head h on x [N, D]; its gradient w.r.t. x goes to dx (overwritten). */
static void head_forward_backward(struct micro *mb, const struct head *h, starpu_data_handle_t x,
                                  starpu_data_handle_t dx, const struct eellm_task_info *ti,
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
  eellm_insert_xent_fwd(logits, mb->targets, mb->mask, h->stats, h->temperature, loss_ti);
  if (h->loss_scale == 0) return;
  starpu_data_handle_t dlogits = act(mb, v);
  eellm_insert_xent_bwd(logits, mb->targets, mb->mask, h->stats, dlogits, h->loss_scale,
                        h->temperature, loss_ti);
  if (h->norm_w < 0) {
    eellm_insert_linear_bwd(y, param(mb, h->head_w), dlogits, dx, grad(mb, h->head_w), NULL, 1, 0,
                            ti);
    return;
  }
  starpu_data_handle_t dy = act(mb, d);
  eellm_insert_linear_bwd(y, param(mb, h->head_w), dlogits, dy, grad(mb, h->head_w), NULL, 1, 0,
                          ti);
  eellm_insert_norm_bwd(x, param(mb, h->norm_w), stats, dy, dx, grad(mb, h->norm_w),
                        grad(mb, h->norm_b), norm_kind(m), 0, ti);
}

/* Exit k on resid[layer] (or, for MLP exits, on the layer's post-attention
 * residual r): forward, loss and backward down to its input; returns the
 * buffer holding the gradient w.r.t. that input, or NULL if the exit's loss
 * weight is 0. */
static starpu_data_handle_t exit_submit(struct micro *mb, unsigned k, starpu_data_handle_t x,
                                        starpu_data_handle_t r, float loss_scale,
                                        starpu_data_handle_t stats) {
  const struct eellm_model *m = mb->m;
  const struct eellm_exit_params *e = &m->exits[k];
  struct eellm_task_info ti = info(mb, EELLM_KIND_EXIT, PRIO_EXIT, 1000 + (int)k);
  struct eellm_task_info loss_ti = info(mb, EELLM_KIND_LOSS, PRIO_EXIT, 1000 + (int)k);
  struct head h = {e->lnf_w, e->lnf_b, e->head_w, e->temperature, loss_scale, stats};
  starpu_data_handle_t dx = loss_scale != 0 ? act(mb, m->spec->d_model) : NULL;
  struct grad_scratch g;
  if (e->structure == EELLM__EXIT__STRUCTURE__MLP) {
    struct mlp_acts a;
    mlp_forward(mb, &e->block, r, &a, &ti);
    head_forward_backward(mb, &h, a.out, dx, &ti, &loss_ti);
    if (!dx) return NULL;
    scratch_init(mb, &g);
    mlp_backward(mb, &e->block, &a, r, dx, &g, &ti);
  } else if (e->structure == EELLM__EXIT__STRUCTURE__BLOCK) {
    struct layer_acts a;
    layer_forward(mb, &e->block, x, &a, &ti);
    head_forward_backward(mb, &h, a.mlp.out, dx, &ti, &loss_ti);
    if (!dx) return NULL;
    scratch_init(mb, &g);
    mlp_backward(mb, &e->block, &a.mlp, a.r, dx, &g, &ti);
    attention_backward(mb, &e->block, &a, x, dx, &g, &ti);
  } else {
    head_forward_backward(mb, &h, x, dx, &ti, &loss_ti);
  }
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

static struct eellm_step *step_of(struct eellm_model *m) {
  if (!m->step) {
    m->step = calloc(1, sizeof *m->step);
    if (!m->step) abort();
  }
  return m->step;
}

/* Registers this micro-batch's loss-statistics buffers (sum, count per exit). */
static starpu_data_handle_t *new_stats(struct eellm_model *m) {
  struct eellm_step *s = step_of(m);
  unsigned n_exits = eellm_n_exits(m);
  if (s->n_micro == s->cap_micro) {
    s->cap_micro = s->cap_micro ? 2 * s->cap_micro : 8;
    s->stats = realloc(s->stats, s->cap_micro * sizeof *s->stats);
    s->stats_h = realloc(s->stats_h, s->cap_micro * sizeof *s->stats_h);
    if (!s->stats || !s->stats_h) abort();
  }
  double *slots = calloc(2 * n_exits, sizeof *slots);
  starpu_data_handle_t *h = malloc(n_exits * sizeof *h);
  if (!slots || !h) abort();
  for (unsigned k = 0; k < n_exits; k++)
    starpu_vector_data_register(&h[k], STARPU_MAIN_RAM, (uintptr_t)(slots + 2 * k), 2,
                                sizeof(double));
  s->stats[s->n_micro] = slots;
  s->stats_h[s->n_micro] = h;
  s->n_micro++;
  return h;
}

/* Unregisters and frees the loss statistics of every micro-batch. */
static void drop_stats(struct eellm_model *m) {
  struct eellm_step *s = m->step;
  for (size_t mi = 0; mi < s->n_micro; mi++) {
    for (unsigned k = 0; k < eellm_n_exits(m); k++) starpu_data_unregister(s->stats_h[mi][k]);
    free(s->stats_h[mi]);
    free(s->stats[mi]);
  }
  s->n_micro = 0;
}

static float exit_weight(const struct eellm_model *m, const float *weights, unsigned k) {
  if (weights) return weights[k];
  return k < m->spec->n_exits ? m->spec->exits[k]->loss_weight : 1.0f;
}

static starpu_data_handle_t input_vector(struct micro *mb, const void *data, size_t elem) {
  starpu_data_handle_t h;
  starpu_vector_data_register(&h, STARPU_MAIN_RAM, (uintptr_t)data, mb->n_rows, elem);
  return own(mb, h);
}

/* Forward of one micro-batch, and its backward when `backward` is set. */
static int submit_micro(eellm_model *m, const struct eellm_batch *batch, const float *exit_weights,
                        float grad_scale, int backward, char *err, size_t errlen) {
  struct micro mb = {.m = m, .n_rows = (size_t)m->micro_batch * m->seq_len};
  if (check_tokens(m, batch, mb.n_rows, err, errlen) != 0) return -1;
  struct eellm_step *s = step_of(m);
  mb.index = (int)s->n_micro;
  mb.pool = pool_of(s, backward, s->n_micro);
  starpu_data_handle_t *stats = new_stats(m);
  if (!batch->mask && !s->ones) {
    s->ones = malloc(mb.n_rows * sizeof *s->ones);
    if (!s->ones) abort();
    for (size_t i = 0; i < mb.n_rows; i++) s->ones[i] = 1;
  }
  mb.tokens = input_vector(&mb, batch->tokens, sizeof(int32_t));
  mb.targets = input_vector(&mb, batch->targets, sizeof(int32_t));
  mb.mask = input_vector(&mb, batch->mask ? batch->mask : s->ones, sizeof(float));

  const Eellm__Model *spec = m->spec;
  unsigned n_layers = spec->n_layers, n_exits = spec->n_exits;
  size_t d = spec->d_model;
  struct eellm_task_info fwd = info(&mb, EELLM_KIND_FORWARD, PRIO_FORWARD, -1);
  starpu_data_handle_t *resid = calloc(n_layers + 1, sizeof *resid);
  struct layer_acts *acts = calloc(n_layers, sizeof *acts);
  starpu_data_handle_t *exit_dx = calloc(n_exits + 1, sizeof *exit_dx);
  if (!resid || !acts || !exit_dx) abort();

  resid[0] = act(&mb, d);
  eellm_insert_embed_fwd(mb.tokens, param(&mb, m->wte), param(&mb, m->wpe), resid[0], m->seq_len,
                         &fwd);
  unsigned next_exit = 0;
  for (unsigned i = 0; i < n_layers; i++) {
    fwd.layer = (int)i;
    layer_forward(&mb, &m->layers[i], resid[i], &acts[i], &fwd);
    resid[i + 1] = acts[i].mlp.out;
    for (; next_exit < n_exits && m->exits[m->exit_order[next_exit]].layer == i + 1; next_exit++) {
      unsigned k = m->exit_order[next_exit];
      exit_dx[k] = exit_submit(&mb, k, resid[i + 1], acts[i].r,
                               backward ? exit_weight(m, exit_weights, k) * grad_scale : 0,
                               stats[k]);
    }
  }

  struct eellm_task_info bwd = info(&mb, EELLM_KIND_BACKWARD, PRIO_BACKWARD, (int)n_layers);
  struct eellm_task_info loss_ti = info(&mb, EELLM_KIND_LOSS, PRIO_BACKWARD, (int)n_layers);
  /* A frozen backbone (EE-Tuning) needs the final loss for reporting only. */
  int backbone_backward = backward && !m->backbone_frozen;
  float final_scale = backbone_backward ? exit_weight(m, exit_weights, n_exits) * grad_scale : 0;
  struct head final = {m->lnf_w, m->lnf_b, m->head_w, 1.0f, final_scale, stats[n_exits]};
  starpu_data_handle_t dres = act(&mb, d);
  head_forward_backward(&mb, &final, resid[n_layers], dres, &fwd, &loss_ti);
  if (!backbone_backward) goto done;
  if (final.loss_scale == 0) eellm_insert_zero(dres, &bwd);
  struct grad_scratch g;
  scratch_init(&mb, &g);
  for (unsigned i = n_layers; i-- > 0;) {
    bwd.layer = (int)i;
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
  eellm_insert_embed_bwd(mb.tokens, dres, grad(&mb, m->wte), grad(&mb, m->wpe), m->seq_len, &bwd);

done:
  /* The input vectors go once their last task has run. */
  for (size_t i = 0; i < s->n_owned; i++) starpu_data_unregister_submit(s->owned[i]);
  s->n_owned = 0;
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
  for (size_t i = 0; i < m->n_tensors; i++)
    if (!m->tensors[i].frozen) eellm_insert_zero(m->tensors[i].grad, &ti);
}

unsigned eellm_n_exits(const eellm_model *m) { return m->spec->n_exits + 1; }

unsigned eellm_exit_layer(const eellm_model *m, unsigned k) {
  return k < m->spec->n_exits ? m->exits[k].layer : m->spec->n_layers;
}

void eellm_wait(eellm_model *m) {
  starpu_task_wait_for_all();
  struct eellm_step *s = step_of(m);
  unsigned n_exits = eellm_n_exits(m);
  free(s->loss);
  s->loss = calloc(n_exits, sizeof *s->loss);
  if (!s->loss) abort();
  for (size_t mi = 0; mi < s->n_micro; mi++)
    for (unsigned k = 0; k < n_exits; k++) starpu_data_acquire(s->stats_h[mi][k], STARPU_R);
  for (unsigned k = 0; k < n_exits; k++) {
    size_t counted = 0;
    for (size_t mi = 0; mi < s->n_micro; mi++) {
      const double *st = s->stats[mi] + 2 * k;
      if (st[1] > 0) {
        s->loss[k] += st[0] / st[1];
        counted++;
      }
    }
    if (counted) s->loss[k] /= counted;
  }
  for (size_t mi = 0; mi < s->n_micro; mi++)
    for (unsigned k = 0; k < n_exits; k++) starpu_data_release(s->stats_h[mi][k]);
  drop_stats(m);
}

double eellm_exit_loss(const eellm_model *m, unsigned k) {
  return m->step && m->step->loss && k < eellm_n_exits(m) ? m->step->loss[k] : 0.0;
}

void eellm_step_free(struct eellm_model *m) {
  struct eellm_step *s = m->step;
  if (!s) return;
  drop_stats(m);
  free_pools(s);
  free(s->stats);
  free(s->stats_h);
  free(s->ones);
  free(s->owned);
  free(s->loss);
  free(s);
  m->step = NULL;
}
