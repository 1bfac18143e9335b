/* The transformer's layers, exit bodies and heads as tasks (transformer.h).
 *
 * Tensor parallelism (Megatron-LM): each rank of a tensor-parallel group runs
 * these tasks on its part of every split tensor (graph/model.h) with the
 * widths of its share (m->share): its heads, its hidden units, its vocabulary
 * rows. Activations between the parts are whole on every rank; a
 * row-parallel product leaves a partial sum that eellm_tp_sum completes
 * (Megatron's g in forward), and so does the input gradient of a
 * column-parallel product (its f in backward). */
#include "graph/transformer.h"

#include "codelets/collective.h"

starpu_data_handle_t eellm_param(const struct eellm_model *m, int tensor) {
  return tensor < 0 ? NULL : m->tensors[tensor].param;
}

starpu_data_handle_t eellm_grad(const struct eellm_pass *p, int tensor) {
  return eellm_model_grad_on(p->m, tensor, p->stage);
}

enum eellm_norm_kind eellm_norm_kind(const struct eellm_model *m) {
  return m->spec->norm == EELLM__MODEL__NORM__RMSNORM ? EELLM_RMSNORM : EELLM_LAYERNORM;
}

starpu_data_handle_t eellm_act(const struct eellm_pass *p, size_t cols) {
  return eellm_pool_matrix(p->pool, p->rows, cols);
}

void eellm_grad_scratch_init(const struct eellm_pass *p, struct eellm_grad_scratch *g) {
  const struct eellm_model *m = p->m;
  g->dact = eellm_act(p, m->share.ffn);
  g->dfc = eellm_act(p, m->share.fc);
  g->dln = eellm_act(p, m->spec->d_model);
  g->datt = eellm_act(p, m->share.att);
  g->dqkv = eellm_act(p, 3 * m->share.att);
}

void eellm_tp_sum(const struct eellm_pass *p, starpu_data_handle_t x,
                  const struct eellm_task_info *ti) {
  const struct eellm_model *m = p->m;
  if (m->tp_comm != MPI_COMM_NULL) eellm_insert_allreduce_sum(x, m->seq_h[p->stage], m->tp_comm, ti);
}

/* y [rows, D] = norm(x) with gain and bias tensors; stats [rows, 2] kept for backward. */
static void norm_forward(const struct eellm_pass *p, int gain, int bias, starpu_data_handle_t x,
                         starpu_data_handle_t *y, starpu_data_handle_t *stats,
                         const struct eellm_task_info *ti) {
  const struct eellm_model *m = p->m;
  *y = eellm_act(p, m->spec->d_model);
  *stats = eellm_act(p, 2);
  eellm_insert_norm_fwd(x, eellm_param(m, gain), eellm_param(m, bias), *y, *stats,
                        eellm_norm_kind(m), m->spec->norm_eps, ti);
}

/* y [rows, M] = x @ W + b (+ residual), with weight and bias tensors w, b. */
static void linear_forward(const struct eellm_pass *p, starpu_data_handle_t x, int w, int b,
                           starpu_data_handle_t residual, starpu_data_handle_t y,
                           const struct eellm_task_info *ti) {
  eellm_insert_linear_fwd(x, eellm_param(p->m, w), eellm_param(p->m, b), residual, y, 0, ti);
}

/* y [rows, M] = x @ W + b + residual for a row-parallel W: each rank's product
 * on its part of x's columns, the bias and residual added once, then the sum. */
static void row_parallel_forward(const struct eellm_pass *p, starpu_data_handle_t x, int w, int b,
                                 starpu_data_handle_t residual, starpu_data_handle_t y,
                                 const struct eellm_task_info *ti) {
  int first = p->m->share.first;
  linear_forward(p, x, w, first ? b : -1, first ? residual : NULL, y, ti);
  eellm_tp_sum(p, y, ti);
}

/* dx = dy @ W^T; the stage's gradients of w and b accumulate. */
static void linear_backward(const struct eellm_pass *p, starpu_data_handle_t x, int w, int b,
                            starpu_data_handle_t dy, starpu_data_handle_t dx,
                            const struct eellm_task_info *ti) {
  eellm_insert_linear_bwd(x, eellm_param(p->m, w), dy, dx, eellm_grad(p, w), eellm_grad(p, b), 0, 0,
                          ti);
}

/* ---- layers ------------------------------------------------------------ */

void eellm_mlp_forward(const struct eellm_pass *p, const struct eellm_layer_params *w,
                       starpu_data_handle_t r, struct eellm_mlp_acts *a,
                       const struct eellm_task_info *ti) {
  const struct eellm_model *m = p->m;
  norm_forward(p, w->ln2_w, w->ln2_b, r, &a->ln, &a->ln_stats, ti);
  a->fc = eellm_act(p, m->share.fc);
  a->act = eellm_act(p, m->share.ffn);
  a->out = eellm_act(p, m->spec->d_model);
  linear_forward(p, a->ln, w->fc_w, w->fc_b, NULL, a->fc, ti);
  eellm_insert_activation_fwd(a->fc, a->act, (enum eellm_activation)m->spec->activation, ti);
  row_parallel_forward(p, a->act, w->proj_w, w->proj_b, r, a->out, ti);
}

void eellm_mlp_backward(const struct eellm_pass *p, const struct eellm_layer_params *w,
                        const struct eellm_mlp_acts *a, starpu_data_handle_t r,
                        starpu_data_handle_t dres, const struct eellm_grad_scratch *g,
                        const struct eellm_task_info *ti) {
  const struct eellm_model *m = p->m;
  linear_backward(p, a->act, w->proj_w, w->proj_b, dres, g->dact, ti);
  eellm_insert_activation_bwd(a->fc, g->dact, g->dfc, (enum eellm_activation)m->spec->activation, 0,
                              ti);
  linear_backward(p, a->ln, w->fc_w, w->fc_b, g->dfc, g->dln, ti);
  eellm_tp_sum(p, g->dln, ti);
  eellm_insert_norm_bwd(r, eellm_param(p->m, w->ln2_w), a->ln_stats, g->dln, dres,
                        eellm_grad(p, w->ln2_w), eellm_grad(p, w->ln2_b), eellm_norm_kind(m), 1,
                        ti);
}

static int rope(const struct eellm_model *m) {
  return m->spec->positions == EELLM__MODEL__POSITIONS__ROPE;
}

/* a->att [rows, D] = attention over a->qkv: full, or over `cache` when given. */
static void attention_forward(const struct eellm_pass *p, starpu_data_handle_t cache,
                              struct eellm_layer_acts *a, const struct eellm_task_info *ti) {
  const Eellm__Model *spec = p->m->spec;
  unsigned heads = p->m->share.heads;
  a->att = eellm_act(p, p->m->share.att);
  if (cache) {
    a->lse = NULL;
    eellm_insert_attention_cached(a->qkv, p->positions, p->slots, cache, a->att,
                                  spec->context_length, heads, rope(p->m), spec->rope_theta, ti);
    return;
  }
  a->lse = eellm_act(p, heads);
  eellm_insert_attention_fwd(a->qkv, a->att, a->lse, p->seq_len, heads, rope(p->m),
                             spec->rope_theta, ti);
}

/* t = w's tensors by enum eellm_layer_tensor. */
static void layer_tensors(const struct eellm_model *m, const struct eellm_layer_params *w,
                          starpu_data_handle_t t[EELLM_LAYER_TENSORS]) {
  const int ids[EELLM_LAYER_TENSORS] = {w->ln1_w, w->ln1_b, w->qkv_w,  w->qkv_b,
                                        w->o_w,   w->o_b,   w->ln2_w,  w->ln2_b,
                                        w->fc_w,  w->fc_b,  w->proj_w, w->proj_b};
  for (int i = 0; i < EELLM_LAYER_TENSORS; i++) t[i] = eellm_param(m, ids[i]);
}

/* Decoding's layer as one task where it pays (eellm_layer_cached_fuses): a->r
 * and a->mlp.out only, nothing kept for a backward. Returns 0 where it does not. */
static int fused_layer_forward(const struct eellm_pass *p, const struct eellm_layer_params *w,
                               starpu_data_handle_t x, starpu_data_handle_t cache,
                               struct eellm_layer_acts *a, const struct eellm_task_info *ti) {
  const struct eellm_model *m = p->m;
  starpu_data_handle_t t[EELLM_LAYER_TENSORS];
  layer_tensors(m, w, t);
  if (m->tp_comm != MPI_COMM_NULL || !eellm_layer_cached_fuses(p->rows, t)) return 0;
  const Eellm__Model *spec = m->spec;
  struct eellm_layer_kind kind = {m->share.heads, eellm_norm_kind(m),
                                  spec->norm_eps, (enum eellm_activation)spec->activation,
                                  rope(m),        spec->rope_theta};
  *a = (struct eellm_layer_acts){.r = eellm_act(p, spec->d_model)};
  a->mlp.out = eellm_act(p, spec->d_model);
  eellm_insert_layer_cached(x, t, p->positions, p->slots, cache, a->r, a->mlp.out,
                            spec->context_length, &kind, ti);
  return 1;
}

void eellm_layer_forward(const struct eellm_pass *p, const struct eellm_layer_params *w,
                         starpu_data_handle_t x, starpu_data_handle_t cache,
                         struct eellm_layer_acts *a, const struct eellm_task_info *ti) {
  if (cache && fused_layer_forward(p, w, x, cache, a, ti)) return;
  size_t d = p->m->spec->d_model;
  norm_forward(p, w->ln1_w, w->ln1_b, x, &a->ln1, &a->ln1_stats, ti);
  a->qkv = eellm_act(p, 3 * p->m->share.att);
  linear_forward(p, a->ln1, w->qkv_w, w->qkv_b, NULL, a->qkv, ti);
  attention_forward(p, cache, a, ti);
  a->r = eellm_act(p, d);
  row_parallel_forward(p, a->att, w->o_w, w->o_b, x, a->r, ti);
  eellm_mlp_forward(p, w, a->r, &a->mlp, ti);
}

void eellm_attention_backward(const struct eellm_pass *p, const struct eellm_layer_params *w,
                              const struct eellm_layer_acts *a, starpu_data_handle_t x,
                              starpu_data_handle_t dres, const struct eellm_grad_scratch *g,
                              const struct eellm_task_info *ti) {
  const struct eellm_model *m = p->m;
  linear_backward(p, a->att, w->o_w, w->o_b, dres, g->datt, ti);
  eellm_insert_attention_bwd(a->qkv, a->lse, g->datt, g->dqkv, p->seq_len, m->share.heads,
                             rope(m), m->spec->rope_theta, 0, ti);
  linear_backward(p, a->ln1, w->qkv_w, w->qkv_b, g->dqkv, g->dln, ti);
  eellm_tp_sum(p, g->dln, ti);
  eellm_insert_norm_bwd(x, eellm_param(p->m, w->ln1_w), a->ln1_stats, g->dln, dres,
                        eellm_grad(p, w->ln1_w), eellm_grad(p, w->ln1_b), eellm_norm_kind(m), 1,
                        ti);
}

/* ---- exits and heads ----------------------------------------------------- */

struct eellm_head eellm_head_of(const struct eellm_model *m, unsigned exit) {
  if (exit == m->spec->n_exits)
    return (struct eellm_head){.exit = exit, .layer = m->spec->n_layers,
                               .structure = EELLM__EXIT__STRUCTURE__NORM, .norm_w = m->lnf_w,
                               .norm_b = m->lnf_b, .head_w = m->head_w, .temperature = 1.0f};
  const struct eellm_exit_params *e = &m->exits[exit];
  return (struct eellm_head){.exit = exit, .layer = e->layer, .structure = e->structure,
                             .block = &e->block, .norm_w = e->lnf_w, .norm_b = e->lnf_b,
                             .head_w = e->head_w, .temperature = e->temperature,
                             .dynamic_weight = e->dynamic_weight};
}

starpu_data_handle_t eellm_body_input(const struct eellm_head *h, starpu_data_handle_t x,
                                      starpu_data_handle_t r) {
  return h->structure == EELLM__EXIT__STRUCTURE__MLP ? r : x;
}

starpu_data_handle_t eellm_body_forward(const struct eellm_pass *p, const struct eellm_head *h,
                                        starpu_data_handle_t in, starpu_data_handle_t cache,
                                        struct eellm_layer_acts *a,
                                        const struct eellm_task_info *ti) {
  switch (h->structure) {
  case EELLM__EXIT__STRUCTURE__MLP:
    eellm_mlp_forward(p, h->block, in, &a->mlp, ti);
    return a->mlp.out;
  case EELLM__EXIT__STRUCTURE__BLOCK:
    eellm_layer_forward(p, h->block, in, cache, a, ti);
    return a->mlp.out;
  default:
    return in;
  }
}

void eellm_body_backward(const struct eellm_pass *p, const struct eellm_head *h,
                         const struct eellm_layer_acts *a, starpu_data_handle_t in,
                         starpu_data_handle_t dx, const struct eellm_task_info *ti) {
  int block = h->structure == EELLM__EXIT__STRUCTURE__BLOCK;
  if (!block && h->structure != EELLM__EXIT__STRUCTURE__MLP) return;
  struct eellm_grad_scratch g;
  eellm_grad_scratch_init(p, &g);
  eellm_mlp_backward(p, h->block, &a->mlp, block ? a->r : in, dx, &g, ti);
  if (block) eellm_attention_backward(p, h->block, a, in, dx, &g, ti);
}

starpu_data_handle_t eellm_head_forward(const struct eellm_pass *p, const struct eellm_head *h,
                                        starpu_data_handle_t x, struct eellm_head_acts *a,
                                        const struct eellm_task_info *ti) {
  a->y = x;
  a->stats = NULL;
  if (h->norm_w >= 0) norm_forward(p, h->norm_w, h->norm_b, x, &a->y, &a->stats, ti);
  starpu_data_handle_t logits = eellm_act(p, p->m->share.vocab);
  starpu_data_handle_t w = h->head_w_bf16 ? h->head_w_bf16 : eellm_param(p->m, h->head_w);
  eellm_insert_linear_fwd(a->y, w, NULL, NULL, logits, 1, ti);
  return logits;
}

void eellm_head_backward(const struct eellm_pass *p, const struct eellm_head *h,
                         starpu_data_handle_t x, const struct eellm_head_acts *a,
                         starpu_data_handle_t dlogits, starpu_data_handle_t dx,
                         const struct eellm_task_info *ti) {
  starpu_data_handle_t dy = h->norm_w < 0 ? dx : eellm_act(p, p->m->spec->d_model);
  eellm_insert_linear_bwd(a->y, eellm_param(p->m, h->head_w), dlogits, dy, eellm_grad(p, h->head_w),
                          NULL, 1, 0, ti);
  eellm_tp_sum(p, dy, ti);
  if (h->norm_w < 0) return;
  eellm_insert_norm_bwd(x, eellm_param(p->m, h->norm_w), a->stats, dy, dx, eellm_grad(p, h->norm_w),
                        eellm_grad(p, h->norm_b), eellm_norm_kind(p->m), 0, ti);
}
