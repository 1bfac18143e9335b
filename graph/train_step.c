/* The training step: each micro-batch's forward and backward as StarPU tasks
 * on the transformer (transformer.h), the losses of every exit, and the wait
 * that reads them back.
 *
 * Residual stream: resid[0] is the embedding output, resid[k] the output of
 * layer k (1-based); exit e reads resid[layer_e] (an MLP exit reads layer
 * layer_e's post-attention residual r; with mlp_input LAYER_NORM_OUTPUT its
 * body recomputes the layer's ln_2(r) with the layer's tensors, so its
 * gradient w.r.t. r already went through that norm, and the norm's gain and
 * bias gradients land in the layer's, as in EE-LLM). Backward keeps one gradient buffer `dres`
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
 * stage; StarPU-MPI moves what other stages read. Activation buffers come from
 * a pool per stage and micro-batch slot, `window` slots per stage (1F1B's P - s
 * on stage s), so micro-batch m + window waits for micro-batch m's backward to
 * release them: activation memory stays flat however many micro-batches a step
 * has.
 *
 * Slices: with one stage and no tensor parallelism a micro-batch runs as the
 * placement's slices of whole sequences (placement.h), each a chain of its own,
 * so that every worker takes part with one micro-batch in flight; their loss
 * gradients are weighed as replicas' are, their weight gradients add up in
 * submission order (the same sums every run), and their loss statistics add up
 * to the micro-batch's. A slice is submitted as a micro-batch of its own.
 *
 * Submission order: a micro-batch's work on each stage is a forward phase
 * (its layers and the exits living there; the embedding on the first stage,
 * the final head's loss and gradient on the last) and a backward phase. With
 * one stage everything is submitted at once, micro-batch after micro-batch. With
 * several, each stage's phases are submitted in 1F1B's order (P - s forwards,
 * then one backward and one forward in turn, the remaining backwards once the
 * step's micro-batches are all in), each phase once what it reads was
 * submitted. The dataflow needs no such order, but a stage's collectives
 * (tensor parallelism's all-reduces) run in submission order: submitted
 * micro-batch by micro-batch, micro-batch m + 1's forward all-reduces would
 * wait for m's backward, and the pipeline would run one micro-batch at a time. */
#include "graph/train_step.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codelets/collective.h"
#include "graph/transformer.h"
#include "runtime/engine/mpi.h"

enum { PRIO_EXIT = 0, PRIO_FORWARD = 1, PRIO_BACKWARD = 2 };

struct eellm_step {
  size_t n_micro; /* micro-batches submitted since the last wait */
  /* Loss statistics (sum, count) per micro-batch index and exit, kept across steps. */
  double **stats;
  starpu_data_handle_t **stats_h;
  size_t n_stats;
  float *ones; /* the default loss mask */
  /* Pools kept across steps per mode (forward only, training), stage and
   * slot: reused, their buffers cost neither allocation nor page faults, and
   * their number bounds the memory of a pipeline. */
  struct eellm_pool **pools[2]; /* [stage * max_window + slot], created on first use */
  size_t max_window;
  double *loss;                 /* n_exits: result of the last wait */
  starpu_data_handle_t *logits; /* [exit * slices + slice]: the latest micro-batch's logits */
  /* Micro-batches whose backward is still to be submitted, by index, and per
   * stage the next micro-batch whose forward and backward phase it submits. */
  struct micro **queued;
  size_t n_queued, cap_queued;
  unsigned *next_forward, *next_backward;
};

/* What one micro-batch's submission needs at hand, from its forward phases to its
 * last backward one. */
struct micro {
  struct eellm_model *m;
  int backward;
  int index;                                  /* slice index since the last wait */
  unsigned slice;                             /* which slice of its micro-batch */
  struct eellm_pass pass;                     /* the slice's rows; the stage being submitted */
  struct eellm_pool **entered;                /* per stage: its pool for this micro-batch */
  starpu_data_handle_t tokens, targets, mask; /* [B * T] */
  starpu_data_handle_t *stats;                /* per exit and the final head: loss sum, count */
  starpu_data_handle_t *resid;                /* n_layers + 1, [B * T, D] */
  struct eellm_layer_acts *acts;              /* n_layers */
  starpu_data_handle_t *exit_dx;              /* per spec exit: d its input, or NULL */
  float *exit_weights;                        /* a copy of the caller's, or NULL */
  float grad_scale;
  int backbone_backward;
  starpu_data_handle_t dres; /* backward: the gradient of the latest stage's input */
  struct eellm_batch share;  /* this slice's inputs: the caller's memory, read by the first
                                stage's forward phase while the submission call lasts */
};

static struct eellm_step *step_of(struct eellm_model *m) {
  if (!m->step) {
    m->step = calloc(1, sizeof *m->step);
    if (!m->step) abort();
    for (unsigned st = 0; st < m->place.layout.pp; st++)
      if (m->place.window[st] > m->step->max_window) m->step->max_window = m->place.window[st];
    for (int mode = 0; mode < 2; mode++) {
      m->step->pools[mode] =
          calloc(m->place.layout.pp * m->step->max_window, sizeof *m->step->pools[mode]);
      if (!m->step->pools[mode]) abort();
    }
    m->step->next_forward = calloc(m->place.layout.pp, sizeof *m->step->next_forward);
    m->step->next_backward = calloc(m->place.layout.pp, sizeof *m->step->next_backward);
    if (!m->step->next_forward || !m->step->next_backward) abort();
  }
  return m->step;
}

/* Makes `stage` the one whose tasks and buffers come next. */
static void enter(struct micro *mb, unsigned stage) {
  mb->pass.stage = stage;
  if (!mb->entered[stage]) {
    struct eellm_step *s = mb->m->step;
    size_t slot = (size_t)mb->index % mb->m->place.window[stage];
    struct eellm_pool **p = &s->pools[mb->backward][stage * s->max_window + slot];
    if (!*p && !(*p = eellm_pool_new(eellm_stage_rank(&mb->m->place, stage)))) abort();
    eellm_pool_reset(*p);
    mb->entered[stage] = *p;
  }
  mb->pass.pool = mb->entered[stage];
}

/* An activation [B * T, cols] of the current stage. */
static starpu_data_handle_t act(const struct micro *mb, size_t cols) {
  return eellm_act(&mb->pass, cols);
}

/* A vector of B * T 4-byte values (token ids, mask) of the current stage. */
static starpu_data_handle_t input(const struct micro *mb) {
  return eellm_pool_vector(mb->pass.pool, mb->pass.rows, 4);
}

static struct eellm_task_info info(const struct micro *mb, enum eellm_task_kind kind, int prio,
                                   int layer) {
  struct eellm_task_info i = {.priority = prio,
                              .node = eellm_stage_rank(&mb->m->place, mb->pass.stage),
                              .kind = kind,
                              .micro = mb->index / (int)mb->m->place.slices,
                              .layer = layer};
  return i;
}

/* ---- losses -------------------------------------------------------------- */

/* Where the logits of exit k for mb's slice are kept. */
static starpu_data_handle_t *logits_of(const struct micro *mb, unsigned k) {
  return &mb->m->step->logits[k * mb->m->place.slices + mb->slice];
}

/* What a head's loss needs besides the head. */
struct loss {
  float scale;                  /* 0: forward only */
  starpu_data_handle_t stats;   /* loss sum and count out */
  starpu_data_handle_t *logits; /* where to keep the logits' handle */
};

/* The loss statistics of the logits, and with a scale their gradient into
 * dlogits. Under tensor parallelism each rank holds its vocabulary rows'
 * logits: the ranks combine per-row softmax statistics, never the logits. */
static void cross_entropy(struct micro *mb, const struct eellm_head *h, const struct loss *l,
                          starpu_data_handle_t logits, starpu_data_handle_t dlogits, int dynamic,
                          const struct eellm_task_info *ti) {
  const struct eellm_model *m = mb->m;
  if (m->tp_comm == MPI_COMM_NULL) {
    if (dlogits)
      eellm_insert_xent_fwd_bwd(logits, mb->targets, mb->mask, l->stats, dlogits, l->scale,
                                h->temperature, dynamic, ti);
    else
      eellm_insert_xent_fwd(logits, mb->targets, mb->mask, l->stats, h->temperature, dynamic, ti);
    return;
  }
  starpu_data_handle_t rowstats = act(mb, 3);
  eellm_insert_xent_part_stats(logits, mb->targets, rowstats, m->share.vocab_lo, h->temperature,
                               ti);
  eellm_insert_allreduce_softmax(rowstats, m->seq_h[mb->pass.stage], m->tp_comm, ti);
  eellm_insert_xent_stats_fwd(rowstats, mb->mask, l->stats, dynamic, ti);
  if (dlogits)
    eellm_insert_xent_part_bwd(logits, mb->targets, mb->mask, rowstats, l->stats, dlogits,
                               m->share.vocab_lo, l->scale, h->temperature, dynamic, ti);
}

/* Loss of head h on x [N, D]; its gradient w.r.t. x goes to dx (overwritten).
 * ti tags the forward tasks, bwd_ti the backward ones, loss_ti the losses. */
static void head_loss(struct micro *mb, const struct eellm_head *h, const struct loss *l,
                      starpu_data_handle_t x, starpu_data_handle_t dx,
                      const struct eellm_task_info *ti, const struct eellm_task_info *bwd_ti,
                      const struct eellm_task_info *loss_ti) {
  struct eellm_head_acts a;
  starpu_data_handle_t logits = eellm_head_forward(&mb->pass, h, x, &a, ti);
  *l->logits = logits;
  /* Dynamic weighting shapes the training loss; forward-only passes report plain CE. */
  int dynamic = h->dynamic_weight && mb->backward;
  starpu_data_handle_t dlogits = l->scale != 0 ? act(mb, mb->m->share.vocab) : NULL;
  cross_entropy(mb, h, l, logits, dlogits, dynamic, loss_ti);
  if (dlogits) eellm_head_backward(&mb->pass, h, x, &a, dlogits, dx, bwd_ti);
}

/* Exit k on resid[layer] (or, for MLP exits, on the layer's post-attention
 * residual r), on the exit's stage: forward, loss and backward down to its
 * input; returns the buffer holding the gradient w.r.t. that input, or NULL if
 * the exit's loss weight is 0. */
static starpu_data_handle_t exit_submit(struct micro *mb, unsigned k, starpu_data_handle_t x,
                                        starpu_data_handle_t r, float loss_scale) {
  const struct eellm_model *m = mb->m;
  unsigned caller_stage = mb->pass.stage;
  enter(mb, eellm_exit_stage(&m->place, k));
  struct eellm_task_info ti = info(mb, EELLM_KIND_EXIT, PRIO_EXIT, 1000 + (int)k);
  struct eellm_task_info loss_ti = info(mb, EELLM_KIND_LOSS, PRIO_EXIT, 1000 + (int)k);
  struct eellm_head h = eellm_head_of(m, k);
  struct loss loss = {loss_scale, mb->stats[k], logits_of(mb, k)};
  starpu_data_handle_t dx = loss_scale != 0 ? act(mb, m->spec->d_model) : NULL;
  starpu_data_handle_t in = eellm_body_input(&h, x, r);
  struct eellm_layer_acts a;
  starpu_data_handle_t body = eellm_body_forward(&mb->pass, &h, in, NULL, &a, &ti);
  head_loss(mb, &h, &loss, body, dx, &ti, &ti, &loss_ti);
  if (dx) eellm_body_backward(&mb->pass, &h, &a, in, dx, &ti);
  enter(mb, caller_stage);
  return dx;
}

static float exit_weight(const struct eellm_model *m, const float *weights, unsigned k) {
  if (weights) return weights[k];
  return k < m->spec->n_exits ? m->spec->exits[k]->loss_weight : 1.0f;
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
  unsigned n_exits = eellm_model_n_exits(m);
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
      eellm_mpi_register(h[k], eellm_stage_rank(&m->place, eellm_exit_stage(&m->place, k)));
    }
    s->stats[index] = slots;
    s->stats_h[index] = h;
    s->n_stats++;
  }
  return s->stats_h[index];
}

/* Loss weight (sum of the mask) of n rows. */
static double mask_weight(const float *mask, size_t n) {
  if (!mask) return (double)n;
  double sum = 0;
  for (size_t i = 0; i < n; i++) sum += mask[i];
  return sum;
}

/* Sequences, and rows, of each replica's share of a micro-batch. */
static size_t share_sequences(const eellm_model *m) { return m->micro_batch / m->place.layout.dp; }

static size_t share_rows(const eellm_model *m) { return share_sequences(m) * m->seq_len; }

/* Token ids, targets and mask enter the graph on stage 0, carried by tasks. */
static void load_inputs(struct micro *mb, const struct eellm_batch *batch) {
  struct eellm_step *s = mb->m->step;
  if (!batch->mask && !s->ones) {
    size_t rows = share_rows(mb->m); /* the longest slice's, and more */
    s->ones = malloc(rows * sizeof *s->ones);
    if (!s->ones) abort();
    for (size_t i = 0; i < rows; i++) s->ones[i] = 1;
  }
  enter(mb, 0);
  struct eellm_task_info ti = info(mb, EELLM_KIND_OTHER, PRIO_FORWARD, -1);
  mb->tokens = input(mb);
  mb->targets = input(mb);
  mb->mask = input(mb);
  starpu_data_handle_t inputs[] = {mb->tokens, mb->targets, mb->mask};
  const void *data[] = {batch->tokens, batch->targets, batch->mask ? batch->mask : s->ones};
  eellm_insert_tensors_set(inputs, data, 3, &ti);
}

/* Exit k's share of a step's loss gradient, with the micro-batch's scale: 0 without backward. */
static float exit_scale(const struct micro *mb, unsigned k) {
  return mb->backward ? exit_weight(mb->m, mb->exit_weights, k) * mb->grad_scale : 0;
}

/* The exits that live on stage `stage` and read resid[layer] (or, MLP exits, layer's r). */
static void exits_at(struct micro *mb, unsigned stage, unsigned layer) {
  const struct eellm_model *m = mb->m;
  for (unsigned n = 0; n < m->spec->n_exits; n++) {
    unsigned k = m->exit_order[n];
    if (m->exits[k].layer != layer || eellm_exit_stage(&m->place, k) != stage) continue;
    mb->exit_dx[k] = exit_submit(mb, k, mb->resid[layer], mb->acts[layer - 1].r, exit_scale(mb, k));
  }
}

/* The final head on the last stage: its loss, and its gradient into mb->dres
 * when the backbone trains (zero when its weight is). */
static void final_head(struct micro *mb) {
  struct eellm_model *m = mb->m;
  unsigned n_layers = m->spec->n_layers, n_exits = m->spec->n_exits;
  struct eellm_task_info fwd = info(mb, EELLM_KIND_FORWARD, PRIO_FORWARD, (int)n_layers);
  struct eellm_task_info loss_ti = info(mb, EELLM_KIND_LOSS, PRIO_BACKWARD, (int)n_layers);
  struct eellm_task_info bwd = info(mb, EELLM_KIND_BACKWARD, PRIO_BACKWARD, (int)n_layers);
  float scale = mb->backbone_backward ? exit_scale(mb, n_exits) : 0;
  struct eellm_head h = eellm_head_of(m, n_exits);
  struct loss loss = {scale, mb->stats[n_exits], logits_of(mb, n_exits)};
  mb->dres = mb->backbone_backward ? act(mb, m->spec->d_model) : NULL;
  head_loss(mb, &h, &loss, mb->resid[n_layers], mb->dres, &fwd, &bwd, &loss_ti);
  if (mb->dres && scale == 0) eellm_insert_zero(mb->dres, &bwd);
}

/* Stage st's forward phase: the embedding on the first stage, its layers, each
 * exit living there once the layer it reads ran, and the final head on the last. */
static void forward_phase(struct micro *mb, unsigned st) {
  struct eellm_model *m = mb->m;
  unsigned first, last;
  eellm_stage_layers(&m->place, m->spec->n_layers, st, &first, &last);
  if (st == 0) load_inputs(mb, &mb->share);
  enter(mb, st);
  struct eellm_task_info fwd = info(mb, EELLM_KIND_FORWARD, PRIO_FORWARD, -1);
  if (st == 0) {
    mb->resid[0] = act(mb, m->spec->d_model);
    /* Vocabulary-parallel: each rank embeds the tokens of its rows, the first adds positions. */
    eellm_insert_embed_fwd(mb->tokens, eellm_param(m, m->wte),
                           m->share.first ? eellm_param(m, m->wpe) : NULL, mb->resid[0],
                           m->seq_len, m->share.vocab_lo, &fwd);
    eellm_tp_sum(&mb->pass, mb->resid[0], &fwd);
  }
  exits_at(mb, st, first); /* placed before their layer's next one (PRE) */
  for (unsigned i = first; i <= last; i++) {
    fwd = info(mb, EELLM_KIND_FORWARD, PRIO_FORWARD, (int)i);
    eellm_layer_forward(&mb->pass, &m->layers[i], mb->resid[i], NULL, &mb->acts[i], &fwd);
    mb->resid[i + 1] = mb->acts[i].mlp.out;
    exits_at(mb, st, i + 1);
  }
  if (st == m->place.layout.pp - 1) final_head(mb);
}

/* Adds into dres the gradients of the exits on layer i: those reading its
 * post-attention residual (mlp 1) or its output (mlp 0). */
static void join_exits(const struct micro *mb, unsigned i, int mlp, starpu_data_handle_t dres,
                       const struct eellm_task_info *ti) {
  const struct eellm_model *m = mb->m;
  for (unsigned k = 0; k < m->spec->n_exits; k++)
    if (mb->exit_dx[k] && m->exits[k].layer == i + 1 &&
        (m->exits[k].structure == EELLM__EXIT__STRUCTURE__MLP) == mlp)
      eellm_insert_axpy(dres, mb->exit_dx[k], 1.0f, ti);
}

/* Copies into stage st - 1 what its backward phase reads of stage st's: the
 * gradient of st's input (the only activation gradient that crosses) and the
 * gradients of the exits that live on st but read a layer of st - 1 (PRE).
 * Now, not in that phase: micro-batch m + window's forward recycles stage st's
 * buffers of m, and 1F1B may submit it first. */
static void hand_back(struct micro *mb, unsigned st) {
  const struct eellm_model *m = mb->m;
  enter(mb, st - 1);
  struct eellm_task_info bwd = info(mb, EELLM_KIND_BACKWARD, PRIO_BACKWARD, -1);
  starpu_data_handle_t from_next = mb->dres;
  mb->dres = act(mb, m->spec->d_model);
  eellm_insert_copy(mb->dres, from_next, &bwd);
  for (unsigned k = 0; k < m->spec->n_exits; k++) {
    if (!mb->exit_dx[k] || eellm_exit_stage(&m->place, k) != st ||
        m->place.layer_stage[m->exits[k].layer - 1] == st)
      continue;
    starpu_data_handle_t dx = act(mb, m->spec->d_model);
    eellm_insert_copy(dx, mb->exit_dx[k], &bwd);
    mb->exit_dx[k] = dx;
  }
}

/* Stage st's backward phase: its layers' backward from mb->dres, and the
 * embedding's on the first stage. */
static void backward_phase(struct micro *mb, unsigned st) {
  const struct eellm_model *m = mb->m;
  struct eellm_grad_scratch g;
  struct eellm_task_info bwd;
  enter(mb, st);
  eellm_grad_scratch_init(&mb->pass, &g);
  for (unsigned i = m->spec->n_layers; i-- > 0;) {
    if (m->place.layer_stage[i] != st) continue;
    bwd = info(mb, EELLM_KIND_BACKWARD, PRIO_BACKWARD, (int)i);
    join_exits(mb, i, 0, mb->dres, &bwd);
    eellm_mlp_backward(&mb->pass, &m->layers[i], &mb->acts[i].mlp, mb->acts[i].r, mb->dres, &g,
                       &bwd);
    join_exits(mb, i, 1, mb->dres, &bwd);
    eellm_attention_backward(&mb->pass, &m->layers[i], &mb->acts[i], mb->resid[i], mb->dres, &g,
                             &bwd);
  }
  if (st != 0) {
    hand_back(mb, st);
    return;
  }
  bwd = info(mb, EELLM_KIND_BACKWARD, PRIO_BACKWARD, -1);
  eellm_insert_embed_bwd(mb->tokens, mb->dres, eellm_grad(&mb->pass, m->wte),
                         eellm_grad(&mb->pass, m->wpe), m->seq_len, m->share.vocab_lo, &bwd);
}

static void micro_free(struct micro *mb) {
  free(mb->entered);
  free(mb->resid);
  free(mb->acts);
  free(mb->exit_dx);
  free(mb->exit_weights);
  free(mb);
}

/* Submits on every stage the phases that 1F1B lets come next (the file's
 * comment), as long as there are some; with `flush`, every queued backward. A
 * stage submits the forward of micro-batch f while fewer than its window
 * are waiting for their backward, else the backward of b: once the
 * previous stage submitted f's forward, or the next one b's backward. */
static void advance(struct eellm_model *m, int flush) {
  struct eellm_step *s = m->step;
  unsigned pp = m->place.layout.pp;
  for (int progress = 1; progress;) {
    progress = 0;
    for (unsigned st = 0; st < pp; st++) {
      /* One stage: each micro-batch's slices, then their backwards. */
      unsigned f = s->next_forward[st], b = s->next_backward[st];
      unsigned window = pp > 1 ? m->place.window[st] : m->place.slices;
      if (f < s->n_queued && f < b + window) {
        if (st > 0 && s->next_forward[st - 1] <= f) continue;
        forward_phase(s->queued[f], st);
        s->next_forward[st]++;
        progress = 1;
      } else if (b < f && (flush || f == b + window)) {
        if (st + 1 < pp && s->next_backward[st + 1] <= b) continue;
        backward_phase(s->queued[b], st);
        s->next_backward[st]++;
        progress = 1;
      }
    }
  }
}

void eellm_step_flush(struct eellm_model *m) {
  struct eellm_step *s = m->step;
  if (!s || !s->n_queued) return;
  advance(m, 1);
  for (size_t i = 0; i < s->n_queued; i++) micro_free(s->queued[i]);
  s->n_queued = 0;
  memset(s->next_forward, 0, m->place.layout.pp * sizeof *s->next_forward);
  memset(s->next_backward, 0, m->place.layout.pp * sizeof *s->next_backward);
}

/* A micro-batch with the backbone's backward joins the 1F1B queue; others
 * (forward only, or a frozen backbone's) submit every forward phase at once. */
static void submit_phases(struct eellm_model *m, struct micro *mb) {
  struct eellm_step *s = m->step;
  if (!mb->backbone_backward) {
    eellm_step_flush(m);
    for (unsigned st = 0; st < m->place.layout.pp; st++) forward_phase(mb, st);
    micro_free(mb);
    return;
  }
  if (s->n_queued == s->cap_queued) {
    s->cap_queued = s->cap_queued ? 2 * s->cap_queued : 8;
    s->queued = realloc(s->queued, s->cap_queued * sizeof *s->queued);
    if (!s->queued) abort();
  }
  s->queued[s->n_queued++] = mb;
  advance(m, 0);
  /* The first stage's forward reads the caller's inputs: 1F1B always lets it run at once. */
  if (s->next_forward[0] != s->n_queued) abort();
}

/* This replica's share of a micro-batch: sequences [d B / D, (d + 1) B / D).
 * Each loss gradient is a mean over the share's (masked) tokens; weighing it by
 * the share's part of the micro-batch's tokens makes the replicas' gradients
 * sum to the whole micro-batch's. Slices of a share are weighed alike. */
static struct eellm_batch part_of(const struct eellm_batch *whole, size_t first, size_t rows,
                                  size_t whole_rows, float *grad_scale) {
  struct eellm_batch part = {whole->tokens + first, whole->targets + first,
                             whole->mask ? whole->mask + first : NULL};
  double weight = mask_weight(whole->mask, whole_rows);
  if (weight > 0) *grad_scale = (float)(*grad_scale * mask_weight(part.mask, rows) / weight);
  return part;
}

/* Slice j of a micro-batch share: whole sequences [j S / n, (j + 1) S / n) of its S. */
static struct micro *slice_of(eellm_model *m, const struct eellm_batch *share, unsigned j,
                              const float *exit_weights, float grad_scale, int backward) {
  struct eellm_step *s = step_of(m);
  size_t seqs = share_sequences(m), n = m->place.slices;
  size_t first = j * seqs / n * m->seq_len, rows = (j + 1) * seqs / n * m->seq_len - first;
  struct micro *mb = calloc(1, sizeof *mb);
  if (!mb) abort();
  *mb = (struct micro){.m = m,
                       .backward = backward,
                       .index = (int)s->n_micro++,
                       .slice = j,
                       .pass = {.m = m, .rows = rows, .seq_len = m->seq_len},
                       .grad_scale = grad_scale,
                       .backbone_backward = backward && !m->backbone_frozen};
  mb->share = part_of(share, first, rows, share_rows(m), &mb->grad_scale);
  unsigned n_exits = eellm_model_n_exits(m);
  mb->entered = calloc(m->place.layout.pp, sizeof *mb->entered);
  mb->resid = calloc(m->spec->n_layers + 1, sizeof *mb->resid);
  mb->acts = calloc(m->spec->n_layers, sizeof *mb->acts);
  mb->exit_dx = calloc(n_exits, sizeof *mb->exit_dx);
  if (exit_weights && (mb->exit_weights = malloc(n_exits * sizeof *mb->exit_weights)))
    memcpy(mb->exit_weights, exit_weights, n_exits * sizeof *mb->exit_weights);
  if (!mb->entered || !mb->resid || !mb->acts || !mb->exit_dx ||
      (exit_weights && !mb->exit_weights))
    abort();
  if (!s->logits && !(s->logits = calloc(n_exits * n, sizeof *s->logits))) abort();
  mb->stats = stats_of(m, (size_t)mb->index);
  return mb;
}

/* Forward of one micro-batch, and its backward when `backward` is set; a
 * frozen backbone (EE-Tuning) needs the final head's loss only. */
static int submit_micro(eellm_model *m, const struct eellm_batch *whole, const float *exit_weights,
                        float grad_scale, int backward, char *err, size_t errlen) {
  if (check_tokens(m, whole, (size_t)m->micro_batch * m->seq_len, err, errlen) != 0) return -1;
  size_t rows = share_rows(m);
  struct eellm_batch share =
      part_of(whole, m->place.self.data * rows, rows, rows * m->place.layout.dp, &grad_scale);
  for (unsigned j = 0; j < m->place.slices; j++)
    submit_phases(m, slice_of(m, &share, j, exit_weights, grad_scale, backward));
  return 0;
}

int eellm_model_submit_forward_backward(eellm_model *m, const struct eellm_batch *batch,
                                        const float *exit_weights, float grad_scale, char *err,
                                        size_t errlen) {
  return submit_micro(m, batch, exit_weights, grad_scale, 1, err, errlen);
}

int eellm_model_submit_forward(eellm_model *m, const struct eellm_batch *batch, char *err,
                               size_t errlen) {
  return submit_micro(m, batch, NULL, 0, 0, err, errlen);
}

void eellm_model_submit_zero_grads(eellm_model *m) {
  struct eellm_task_info ti = {.priority = PRIO_BACKWARD, .kind = EELLM_KIND_OTHER, .micro = -1,
                               .layer = -1};
  for (size_t i = 0; i < m->n_tensors; i++) {
    if (m->tensors[i].frozen) continue;
    ti.node = eellm_stage_rank(&m->place, m->tensors[i].owner);
    eellm_insert_zero(m->tensors[i].grad, &ti);
  }
  for (size_t i = 0; i < m->n_shadows; i++) {
    if (m->tensors[m->shadows[i].tensor].frozen) continue;
    ti.node = eellm_stage_rank(&m->place, m->shadows[i].stage);
    eellm_insert_zero(m->shadows[i].grad, &ti);
  }
}

unsigned eellm_model_n_exits(const eellm_model *m) { return m->spec->n_exits + 1; }

unsigned eellm_model_slices(const eellm_model *m) { return m->place.slices; }

unsigned eellm_model_exit_layer(const eellm_model *m, unsigned k) {
  return k < m->spec->n_exits ? m->exits[k].layer : m->spec->n_layers;
}

/* Each stage of each replica reads the loss statistics (sum, count) of its own
 * exits' shares of every micro-batch (tensor index 0 of a tensor-parallel group:
 * every rank of the group has the same); one sum over all ranks gives every rank
 * each slice's whole statistics, counted once, those of a micro-batch's slices
 * add up to its own, and the mean loss of each exit over the micro-batches follows. */
void eellm_model_wait(eellm_model *m) {
  eellm_step_flush(m);
  eellm_mpi_wait();
  struct eellm_step *s = step_of(m);
  unsigned n_exits = eellm_model_n_exits(m);
  free(s->loss);
  s->loss = calloc(n_exits, sizeof *s->loss);
  double *stats = calloc(2 * s->n_micro * n_exits + 1, sizeof *stats); /* [micro][exit][2] */
  if (!s->loss || !stats) abort();
  for (unsigned k = 0; k < n_exits; k++) {
    int owner = eellm_stage_rank(&m->place, eellm_exit_stage(&m->place, k));
    if (eellm_mpi_active() && (owner != eellm_rank() || m->place.self.tensor != 0)) continue;
    for (size_t mi = 0; mi < s->n_micro; mi++) {
      starpu_data_acquire(s->stats_h[mi][k], STARPU_R);
      memcpy(stats + 2 * (mi * n_exits + k), s->stats[mi] + 2 * k, 2 * sizeof *stats);
      starpu_data_release(s->stats_h[mi][k]);
    }
  }
  eellm_mpi_sum(stats, (int)(2 * s->n_micro * n_exits));
  unsigned slices = m->place.slices;
  for (unsigned k = 0; k < n_exits; k++) {
    size_t counted = 0;
    for (size_t mi = 0; mi < s->n_micro; mi += slices) {
      double sum = 0, count = 0;
      for (size_t j = mi; j < mi + slices; j++) {
        sum += stats[2 * (j * n_exits + k)];
        count += stats[2 * (j * n_exits + k) + 1];
      }
      if (count > 0) {
        s->loss[k] += sum / count;
        counted++;
      }
    }
    if (counted) s->loss[k] /= counted;
  }
  free(stats);
  s->n_micro = 0;
}

double eellm_model_exit_loss(const eellm_model *m, unsigned k) {
  return m->step && m->step->loss && k < eellm_model_n_exits(m) ? m->step->loss[k] : 0.0;
}

int eellm_model_exit_logits(eellm_model *m, unsigned k, float *out) {
  unsigned slices = m->place.slices;
  if (!m->step || !m->step->logits || k >= eellm_model_n_exits(m) || eellm_mpi_active()) return -1;
  for (unsigned j = 0; j < slices; j++)
    if (!m->step->logits[k * slices + j]) return -1;
  for (unsigned j = 0; j < slices; j++) { /* the slices' rows, in order */
    starpu_data_handle_t h = m->step->logits[k * slices + j];
    starpu_data_acquire(h, STARPU_R);
    const float *logits = (const float *)starpu_matrix_get_local_ptr(h);
    size_t ld = starpu_matrix_get_local_ld(h), cols = starpu_matrix_get_nx(h);
    for (size_t r = 0; r < starpu_matrix_get_ny(h); r++, out += cols)
      memcpy(out, logits + r * ld, cols * sizeof *out);
    starpu_data_release(h);
  }
  return 0;
}

void eellm_step_free(struct eellm_model *m) {
  struct eellm_step *s = m->step;
  if (!s) return;
  for (size_t i = 0; i < s->n_queued; i++) micro_free(s->queued[i]);
  free(s->queued);
  free(s->next_forward);
  free(s->next_backward);
  for (size_t i = 0; i < s->n_stats; i++) {
    for (unsigned k = 0; k < eellm_model_n_exits(m); k++) starpu_data_unregister(s->stats_h[i][k]);
    free(s->stats_h[i]);
    free(s->stats[i]);
  }
  for (int mode = 0; mode < 2; mode++) {
    for (size_t i = 0; i < m->place.layout.pp * s->max_window; i++)
      eellm_pool_free(s->pools[mode][i]);
    free(s->pools[mode]);
  }
  free(s->stats);
  free(s->stats_h);
  free(s->ones);
  free(s->loss);
  free(s->logits);
  free(s);
  m->step = NULL;
}
