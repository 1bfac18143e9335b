/* The transformer as StarPU tasks, described once for training
 * (graph/train_step.c) and generation (graph/gen_step.c): a layer's forward
 * and the two halves of its backward, an MLP, the exits' bodies, and the heads
 * (norm + lm_head, logits). Each function submits the tasks of one piece on
 * the rows of a `struct eellm_pass`, which says what differs between uses:
 * how many rows, where their activations come from, which stage's gradients
 * backward accumulates into, and the attention variant. */
#ifndef EELLM_GRAPH_TRANSFORMER_H
#define EELLM_GRAPH_TRANSFORMER_H

#include "codelets/codelets.h"
#include "graph/model.h"
#include "graph/pool.h"

/* The rows a piece of the transformer runs on. Attention is causal within
 * each sequence of seq_len consecutive rows (training), or, given a layer's
 * cache, over that key/value cache at each row's position and slot. */
struct eellm_pass {
  const struct eellm_model *m;
  size_t rows;                           /* of every activation */
  struct eellm_pool *pool;               /* where activations come from */
  unsigned stage;                        /* whose gradients backward accumulates into */
  unsigned seq_len;                      /* full attention */
  starpu_data_handle_t positions, slots; /* cached attention: [rows] int32 each */
};

/* What a layer's backward reads of its forward. */
struct eellm_mlp_acts {
  starpu_data_handle_t ln, ln_stats, fc, act, out;
};

struct eellm_layer_acts {
  starpu_data_handle_t ln1, ln1_stats, qkv, att, lse, r; /* lse: full attention only */
  struct eellm_mlp_acts mlp;
};

/* Gradient scratch of one branch (backbone, or one exit) of a micro-batch. */
struct eellm_grad_scratch {
  starpu_data_handle_t dact, dfc, dln, datt, dqkv;
};

starpu_data_handle_t eellm_param(const struct eellm_model *m, int tensor);
/* Where the pass's stage accumulates the tensor's gradient; NULL: frozen, or no tensor. */
starpu_data_handle_t eellm_grad(const struct eellm_pass *p, int tensor);
enum eellm_norm_kind eellm_norm_kind(const struct eellm_model *m);
/* An activation [p->rows, cols] from the pass's pool. */
starpu_data_handle_t eellm_act(const struct eellm_pass *p, size_t cols);
void eellm_grad_scratch_init(const struct eellm_pass *p, struct eellm_grad_scratch *g);
/* x (RW) = its sum over the pass's tensor-parallel group (a collective task on
 * the stage's sequencing handle); nothing with tp 1. */
void eellm_tp_sum(const struct eellm_pass *p, starpu_data_handle_t x,
                  const struct eellm_task_info *ti);

/* a->mlp.out [rows, D] = layer w applied to x [rows, D]; a->r the
 * post-attention residual. cache: the layer's key/value cache (cached
 * attention: keys and values of these rows go in), NULL for full attention.
 * With a cache the layer may run as one task (eellm_layer_cached_fuses), which
 * sets only a->r and a->mlp.out: nothing runs backward through cached rows. */
void eellm_layer_forward(const struct eellm_pass *p, const struct eellm_layer_params *w,
                         starpu_data_handle_t x, starpu_data_handle_t cache,
                         struct eellm_layer_acts *a, const struct eellm_task_info *ti);
/* a->out [rows, D] = r + proj(act(fc(norm(r)))). */
void eellm_mlp_forward(const struct eellm_pass *p, const struct eellm_layer_params *w,
                       starpu_data_handle_t r, struct eellm_mlp_acts *a,
                       const struct eellm_task_info *ti);
/* dres: gradient of the MLP's output in, of its input r out (in place). */
void eellm_mlp_backward(const struct eellm_pass *p, const struct eellm_layer_params *w,
                        const struct eellm_mlp_acts *a, starpu_data_handle_t r,
                        starpu_data_handle_t dres, const struct eellm_grad_scratch *g,
                        const struct eellm_task_info *ti);
/* The attention half of a layer's backward (full attention): dres holds d r
 * in, d x out. */
void eellm_attention_backward(const struct eellm_pass *p, const struct eellm_layer_params *w,
                              const struct eellm_layer_acts *a, starpu_data_handle_t x,
                              starpu_data_handle_t dres, const struct eellm_grad_scratch *g,
                              const struct eellm_task_info *ti);

/* An exit's head, or the final head (exit == n_exits). An exit reads layer
 * `layer`'s output x through its body: none for NORM and PLAIN exits, an MLP
 * (ln2, fc, proj) on the layer's post-attention residual r for MLP exits (ln2
 * the layer's own tensors for mlp_input LAYER_NORM_OUTPUT: the body recomputes
 * the layer's ln_2(r), and its backward adds into the layer's ln_2 gradients
 * and returns d r through that norm, which the caller adds to the layer's), a
 * layer of its own on x for BLOCK exits; then norm (none for PLAIN) and
 * lm_head. */
struct eellm_head {
  unsigned exit, layer;
  Eellm__Exit__Structure structure;
  const struct eellm_layer_params *block;
  int norm_w, norm_b, head_w;
  starpu_data_handle_t head_w_bf16; /* NULL, or a bf16 copy of head_w the forward reads */
  float temperature;
  int dynamic_weight; /* the loss weighs each token by the head's confidence */
};

struct eellm_head eellm_head_of(const struct eellm_model *m, unsigned exit);

/* The residual h's body reads: r for MLP exits, x otherwise. */
starpu_data_handle_t eellm_body_input(const struct eellm_head *h, starpu_data_handle_t x,
                                      starpu_data_handle_t r);
/* Exit h's body on in [rows, D] (cache: a BLOCK exit's, as for the layer
 * forward; an MLP exit fills a->mlp only); returns what the head reads: `in`
 * itself when there is no body. */
starpu_data_handle_t eellm_body_forward(const struct eellm_pass *p, const struct eellm_head *h,
                                        starpu_data_handle_t in, starpu_data_handle_t cache,
                                        struct eellm_layer_acts *a,
                                        const struct eellm_task_info *ti);
/* dx: gradient of the body's output in, of its input `in` out (in place). */
void eellm_body_backward(const struct eellm_pass *p, const struct eellm_head *h,
                         const struct eellm_layer_acts *a, starpu_data_handle_t in,
                         starpu_data_handle_t dx, const struct eellm_task_info *ti);

/* What the head's backward reads of its forward. */
struct eellm_head_acts {
  starpu_data_handle_t y, stats; /* the normed input and its statistics; y = x without a norm */
};

/* logits [rows, V] = lm_head(norm(x)) for x [rows, D]; under tensor parallelism
 * the columns of this rank's vocabulary rows (m->share.vocab_lo, .vocab). */
starpu_data_handle_t eellm_head_forward(const struct eellm_pass *p, const struct eellm_head *h,
                                        starpu_data_handle_t x, struct eellm_head_acts *a,
                                        const struct eellm_task_info *ti);
/* dx [rows, D] (overwritten) = the gradient w.r.t. x of dlogits [rows, V]. */
void eellm_head_backward(const struct eellm_pass *p, const struct eellm_head *h,
                         starpu_data_handle_t x, const struct eellm_head_acts *a,
                         starpu_data_handle_t dlogits, starpu_data_handle_t dx,
                         const struct eellm_task_info *ti);

#endif
