/* The steps of early-exit generation as StarPU tasks on the transformer
 * (transformer.h), with cached attention; runtime/generate/generate.c sets up
 * each call.
 *
 * One step feeds each unfinished sequence's rows that lack keys and values at
 * the deepest layer (its whole prompt at first, then its newest token, plus,
 * under RECOMPUTE, the tokens that left early since) through the layers, as
 * tasks on packed rows. At each allowed exit an exit head runs on the newest
 * row of every sequence still undecided, and a task turns its logits into
 * choices (confidence, token). Nothing waits for them: an asynchronous acquire
 * of the choices calls back, the callback emits the tokens whose confidence
 * passes and submits what follows, up to the next decision. So the workers
 * never idle while a host thread wakes up between two decisions. Then:
 * - RECOMPUTE drops the decided sequences' rows: deeper layers never see them
 *   in this step, and the next step starts again from the first position the
 *   deepest layer lacks, recomputing the shallow layers' keys and values;
 * - PIPELINE keeps every row going through every layer, so the layers up to
 *   the next decision go in before this one is known; once all sequences have
 *   decided, the rest of the step is submitted at lower priorities and the next
 *   step right after it: each layer's task of the next step waits (RW on that
 *   layer's cache) only for the same layer of this one, so the next token runs
 *   through the first stages while the later ones fill their caches.
 *   Within one process the stages rank the catch-up work: the shallower a
 *   stage, the sooner the next token needs its caches, the higher its tasks'
 *   priority.
 * Under MPI each rank is one stage of the model (its placement): a layer's or
 * exit's tasks run on the rank holding its weights and cache, and write
 * activations from that stage's pool; StarPU-MPI moves the residual stream
 * from stage to stage, and each decision to every rank (await_choices), so
 * every rank submits the same steps, and a token that exits on stage s lets
 * stage 0 start the next one while the later ranks fill their caches.
 * Every attention task reads and writes its layer's cache handle, so StarPU's
 * sequential consistency orders the writes and reads of keys and values. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codelets/collective.h"
#include "codelets/cpu/kernels.h"
#include "eellm/tokenizer.h"
#include "graph/gen_step.h"
#include "runtime/engine/mpi.h"
#include "runtime/engine/splitmix.h"

void *gen_xmalloc(size_t bytes) {
  void *p = malloc(bytes ? bytes : 1);
  if (!p) {
    fprintf(stderr, "eellm generate: out of memory (%zu bytes)\n", bytes);
    abort();
  }
  return p;
}

static void *keep(struct call *c, size_t bytes) {
  if (c->n_kept == c->cap_kept) {
    c->cap_kept = c->cap_kept ? 2 * c->cap_kept : 64;
    c->kept = realloc(c->kept, c->cap_kept * sizeof *c->kept);
    if (!c->kept) abort();
  }
  return c->kept[c->n_kept++] = gen_xmalloc(bytes);
}

static void free_kept(struct call *c) {
  for (size_t i = 0; i < c->n_kept; i++) free(c->kept[i]);
  c->n_kept = 0;
}

/* An activation [rows, cols]. */
static starpu_data_handle_t temp(struct call *c, size_t rows, size_t cols) {
  return eellm_pool_matrix(c->pool, rows, cols);
}

/* Makes the model's stage `stage` the one whose tasks and activations come next. */
static void enter(struct call *c, unsigned stage) {
  c->stage = stage;
  c->pool = c->pools[stage];
}

static struct eellm_task_info task_info(const struct call *c, enum eellm_task_kind kind, int prio,
                                        int layer) {
  struct eellm_task_info ti = {.priority = prio,
                               .node = eellm_stage_rank(&c->m->place, c->stage),
                               .kind = kind,
                               .micro = c->step,
                               .layer = layer};
  return ti;
}

/* A task input: a vector set to n elements of elemsize bytes. */
static starpu_data_handle_t input(struct call *c, const void *data, size_t n, size_t elemsize) {
  starpu_data_handle_t h = eellm_pool_vector(c->pool, n, elemsize);
  struct eellm_task_info ti = task_info(c, EELLM_KIND_OTHER, c->prio_decide, -1);
  eellm_insert_vector_set(h, data, &ti);
  return h;
}

/* Flow f's positions and slots (f->positions_h, f->slots_h) and, when extra is not
 * NULL, its n_extra elements (the flow's tokens, or the rows it is gathered from,
 * returned) as inputs set by one task: one hand-over where a step starts, not three. */
static starpu_data_handle_t flow_inputs(struct call *c, struct flow *f, const int32_t *extra,
                                        size_t n_extra) {
  starpu_data_handle_t t[3] = {eellm_pool_vector(c->pool, f->n, sizeof(int32_t)),
                               eellm_pool_vector(c->pool, f->n, sizeof(int32_t)), NULL};
  const void *data[3] = {f->positions, f->slots, extra};
  unsigned k = 2;
  if (extra) t[k++] = eellm_pool_vector(c->pool, n_extra, sizeof *extra);
  struct eellm_task_info ti = task_info(c, EELLM_KIND_OTHER, c->prio_decide, -1);
  eellm_insert_tensors_set(t, data, k, &ti);
  f->positions_h = t[0];
  f->slots_h = t[1];
  return t[2];
}

/* The transformer on n rows of this step, attending over the caches at the
 * flow's positions. */
static struct eellm_pass pass_of(const struct call *c, size_t n) {
  return (struct eellm_pass){.m = c->m, .rows = n, .pool = c->pool, .stage = c->stage,
                             .positions = c->f.positions_h, .slots = c->f.slots_h};
}

/* c->f.x [n, D] = the embedding of n tokens (an input) at the flow's positions: under tensor
 * parallelism each rank's vocabulary rows, positions added once, then the sum. */
static void embed_flow(struct call *c, starpu_data_handle_t tokens, size_t n) {
  const struct eellm_model *m = c->m;
  struct eellm_task_info ti = task_info(c, EELLM_KIND_FORWARD, c->prio_decide, -1);
  c->f.x = temp(c, n, m->spec->d_model);
  eellm_insert_embed_at(tokens, c->f.positions_h, eellm_param(m, m->wte),
                        m->share.first ? eellm_param(m, m->wpe) : NULL, c->f.x, m->share.vocab_lo,
                        &ti);
  struct eellm_pass p = pass_of(c, n);
  eellm_tp_sum(&p, c->f.x, &ti);
}

/* ---- the layers --------------------------------------------------------------- */

/* Backbone layer l on the flow, and the private layer of a BLOCK exit reading
 * its output when that exit may fire (its cache needs every row). */
static void submit_layer(struct call *c, unsigned l, int prio) {
  enter(c, c->m->place.layer_stage[l]);
  struct eellm_task_info ti = task_info(c, EELLM_KIND_FORWARD, prio, (int)l);
  struct eellm_pass p = pass_of(c, c->f.n);
  struct eellm_layer_acts a;
  eellm_layer_forward(&p, &c->m->layers[l], c->f.x, c->g->cache[l], &a, &ti);
  c->f.x = a.mlp.out;
  c->f.r = a.r;
  int k = c->g->exit_at[l];
  if (k < 0 || !c->allowed[l] || c->m->exits[k].structure != EELLM__EXIT__STRUCTURE__BLOCK) return;
  struct eellm_head h = eellm_head_of(c->m, (unsigned)k);
  enter(c, eellm_exit_stage(&c->m->place, (unsigned)k));
  ti = task_info(c, EELLM_KIND_FORWARD, prio, (int)l);
  p = pass_of(c, c->f.n);
  c->f.block = eellm_body_forward(&p, &h, c->f.x, c->g->cache[c->m->spec->n_layers + (unsigned)k],
                                  &a, &ti);
}

/* ---- heads -------------------------------------------------------------------- */

/* Whether rows (M of them) are the flow's rows in order. */
static int every_row(const struct call *c, const int32_t *rows, size_t M) {
  if (M != c->f.n) return 0;
  for (size_t i = 0; i < M; i++)
    if (rows[i] != (int32_t)i) return 0;
  return 1;
}

/* Logits [M, V] of head h on the flow rows `rows` (M of them): an MLP exit's
 * body runs on those rows alone, a BLOCK exit's layer ran on every row. The
 * head reads its input in place where the rows are all of the flow's (no
 * gather task on the chain: decoding at full depth). */
static starpu_data_handle_t head_logits(struct call *c, const struct eellm_head *h,
                                        const int32_t *rows, size_t M,
                                        const struct eellm_task_info *ti) {
  int block = h->structure == EELLM__EXIT__STRUCTURE__BLOCK;
  starpu_data_handle_t src = block ? c->f.block : eellm_body_input(h, c->f.x, c->f.r);
  starpu_data_handle_t y = src;
  if (!every_row(c, rows, M)) {
    y = temp(c, M, c->m->spec->d_model);
    eellm_insert_gather_rows(src, input(c, rows, M, sizeof *rows), y, ti);
  }
  struct eellm_pass p = pass_of(c, M);
  struct eellm_layer_acts body;
  if (!block) y = eellm_body_forward(&p, h, y, NULL, &body, ti);
  struct eellm_head_acts a;
  starpu_data_handle_t logits = eellm_head_forward(&p, h, y, &a, ti);
  if (c->m->tp_comm == MPI_COMM_NULL) return logits;
  /* Each rank's vocabulary columns, side by side: decisions read whole rows. */
  starpu_data_handle_t whole = temp(c, M, c->m->spec->vocab_size);
  eellm_insert_allgather_cols(logits, whole, c->m->seq_h[c->stage], c->m->tp_comm, ti);
  return whole;
}

/* The limits of a head row of sequence q whose input is token `before`, for the
 * token `ahead` tokens after q's next one. */
static struct eellm_row_limit row_limit(const struct call *c, const struct sequence *q,
                                        uint16_t before, unsigned ahead) {
  float top_p = q->top_p;
  for (unsigned k = 0; k < ahead; k++) top_p = eellm_gen_next_top_p(c->o, top_p);
  int ban = c->o->prevent_newline_after_colon && before == c->g->colon;
  return (struct eellm_row_limit){top_p, ban ? c->g->newline : -1};
}

/* Head `exit` on the flow rows `rows` (M of them, uniforms: their draws, read
 * when sampling; NULL: greedy choices; limits: theirs), and the task that turns
 * its logits into choices. */
static void submit_head_on(struct call *c, unsigned exit, const int32_t *rows,
                           const float *uniforms, const struct eellm_row_limit *limits, size_t M) {
  c->head = eellm_head_of(c->m, exit);
  if (c->g->head_bf16 && eellm_linear_bf16_fits(M)) c->head.head_w_bf16 = c->g->head_bf16[exit];
  enter(c, eellm_exit_stage(&c->m->place, exit));
  int final = exit == c->m->spec->n_exits;
  struct eellm_task_info ti = task_info(c, final ? EELLM_KIND_FORWARD : EELLM_KIND_EXIT,
                                        c->prio_decide, (int)c->head.layer - 1);
  c->logits = head_logits(c, &c->head, rows, M, &ti);
  c->choices = eellm_pool_vector(c->pool, M, sizeof(struct eellm_token_choice));
  const struct eellm_gen_options *o = c->o;
  struct eellm_sampling s = {c->head.temperature, o->rule == EELLM_EXIT_ENTROPY,
                             uniforms ? o->temperature : 0, o->top_k, o->top_p};
  starpu_data_handle_t u = s.temperature > 0 ? input(c, uniforms, M, sizeof *uniforms) : NULL;
  /* Rows differ from o's sampling only under a decay or the ban: else no input task. */
  int limited =
      o->prevent_newline_after_colon || (u && eellm_gen_next_top_p(o, o->top_p) != o->top_p);
  starpu_data_handle_t l = limited ? input(c, limits, M, sizeof *limits) : NULL;
  eellm_insert_next_token(c->logits, u, l, c->choices, &s, &ti);
}

/* Head `exit` on the newest row of each undecided sequence, and its choices. */
static void submit_head(struct call *c, unsigned exit) {
  size_t M = c->n_und;
  int32_t *rows = keep(c, M * sizeof *rows);
  float *uniforms = keep(c, M * sizeof *uniforms);
  struct eellm_row_limit *limits = keep(c, M * sizeof *limits);
  for (size_t i = 0; i < M; i++) {
    const struct sequence *q = &c->seqs[c->undecided[i]];
    for (size_t row = 0; row < c->f.n; row++)
      if (c->f.seq[row] == c->undecided[i]) rows[i] = (int32_t)row;
    uniforms[i] = q->uniform;
    limits[i] = row_limit(c, q, q->tokens[q->len - 1], 0);
  }
  submit_head_on(c, exit, rows, uniforms, limits, M);
}

/* ---- decisions -------------------------------------------------------------------- */

/* Appends a token to sequence s; marks the sequence done when it is. */
static void emit(struct call *c, size_t s, const struct eellm_token_choice *choice,
                 const float *logits) {
  struct sequence *q = &c->seqs[s];
  struct eellm_gen_sequence *out = q->out;
  uint16_t token = (uint16_t)choice->token;
  unsigned layer = c->head.layer;
  out->tokens[out->n] = token;
  out->exit_layers[out->n] = layer;
  out->logprobs[out->n] = choice->logprob;
  if (out->raw_logprobs) out->raw_logprobs[out->n] = choice->raw_logprob;
  if (out->max_probs) out->max_probs[out->n] = choice->raw_maxprob;
  if (out->logits) memcpy(out->logits + out->n * c->g->vocab, logits, c->g->vocab * sizeof *logits);
  out->n++;
  q->tokens[q->len++] = token;
  q->top_p = eellm_gen_next_top_p(c->o, q->top_p);
  if (c->o->on_token) c->o->on_token(c->o->ctx, s, token, layer, choice->logprob);
  q->done = q->len >= q->max_len ||
            (c->o->stop_at_eot && token == eellm_tokenizer_eot_id(c->g->tok));
}

/* Keeps only the rows of the undecided sequences (RECOMPUTE). */
static void narrow_flow(struct call *c) {
  struct flow *f = &c->f;
  size_t n = 0;
  int32_t *rows = keep(c, f->n * sizeof *rows);
  for (size_t row = 0; row < f->n; row++)
    for (size_t i = 0; i < c->n_und; i++)
      if (f->seq[row] == c->undecided[i]) rows[n++] = (int32_t)row;
  if (n == f->n) return;
  struct flow narrow = {.n = n};
  narrow.positions = keep(c, n * sizeof *narrow.positions);
  narrow.slots = keep(c, n * sizeof *narrow.slots);
  narrow.seq = keep(c, n * sizeof *narrow.seq);
  for (size_t i = 0; i < n; i++) {
    narrow.positions[i] = f->positions[rows[i]];
    narrow.slots[i] = f->slots[rows[i]];
    narrow.seq[i] = f->seq[rows[i]];
  }
  enter(c, c->m->place.layer_stage[c->layer]);
  starpu_data_handle_t from = flow_inputs(c, &narrow, rows, n);
  narrow.x = temp(c, n, c->m->spec->d_model);
  struct eellm_task_info ti = task_info(c, EELLM_KIND_FORWARD, c->prio_decide, -1);
  eellm_insert_gather_rows(f->x, from, narrow.x, &ti);
  *f = narrow;
}

/* With the choices (and logits) acquired: emits the tokens that pass (all of
 * them at the final head), releases the data. */
static void take_choices(struct call *c) {
  const struct eellm_token_choice *choices =
      (const struct eellm_token_choice *)starpu_vector_get_local_ptr(c->choices);
  const float *logits = NULL;
  size_t ld = 0;
  if (c->o->keep_logits) {
    logits = (const float *)starpu_matrix_get_local_ptr(c->logits);
    ld = starpu_matrix_get_local_ld(c->logits);
  }
  int final = c->head.exit == c->m->spec->n_exits;
  size_t still = 0, before = c->n_und;
  for (size_t i = 0; i < before; i++)
    if (choices[i].token < 0 && !c->bad_layer) c->bad_layer = c->head.layer;
  if (c->bad_layer) { /* non-finite logits: the call stops, every sequence as it is */
    for (size_t s = 0; s < c->n_seqs; s++) c->seqs[s].done = 1;
    before = 0;
  }
  for (size_t i = 0; i < before; i++) {
    if (final || choices[i].confidence >= c->o->threshold)
      emit(c, c->undecided[i], &choices[i], logits ? logits + i * ld : NULL);
    else
      c->undecided[still++] = c->undecided[i];
  }
  c->n_und = still;
  starpu_data_release(c->choices);
  if (logits) starpu_data_release(c->logits);
  if (c->o->method == EELLM_GEN_RECOMPUTE && still > 0 && still < before &&
      c->layer < c->m->spec->n_layers)
    narrow_flow(c);
}

/* ---- steps ------------------------------------------------------------------------ */

/* One draw per unfinished sequence and step: a sequence's stream depends on
 * its own steps alone, whatever else is in the batch. */
static void draw_uniforms(struct call *c) {
  for (size_t s = 0; s < c->n_seqs; s++) {
    if (c->seqs[s].done) continue;
    c->seqs[s].uniform = (float)(eellm_splitmix64_next(&c->seqs[s].rng) >> 40) * 0x1p-24f;
  }
}

/* The next parity's pools, reset, and stage 0 entered. */
static void begin_pools(struct call *c) {
  c->pools = c->g->pools[c->g->steps++ % 2];
  for (unsigned st = 0; st < c->m->place.layout.pp; st++) eellm_pool_reset(c->pools[st]);
  enter(c, 0);
}

/* A step for the unfinished sequences: their rows (positions through .. len - 1
 * of each), embedded. Returns 0 when every sequence has finished. */
static int begin_step(struct call *c) {
  struct flow *f = &c->f;
  memset(f, 0, sizeof *f);
  c->n_und = 0;
  for (size_t s = 0; s < c->n_seqs; s++)
    if (!c->seqs[s].done) {
      f->n += c->seqs[s].len - c->seqs[s].through;
      c->undecided[c->n_und++] = s;
    }
  if (c->n_und == 0) return 0;
  begin_pools(c);
  f->positions = keep(c, f->n * sizeof *f->positions);
  f->slots = keep(c, f->n * sizeof *f->slots);
  f->seq = keep(c, f->n * sizeof *f->seq);
  int32_t *tokens = keep(c, f->n * sizeof *tokens);
  size_t row = 0;
  for (size_t i = 0; i < c->n_und; i++) {
    struct sequence *q = &c->seqs[c->undecided[i]];
    for (size_t p = q->through; p < q->len; p++, row++) {
      f->positions[row] = (int32_t)p;
      f->slots[row] = (int32_t)c->undecided[i];
      f->seq[row] = c->undecided[i];
      tokens[row] = q->tokens[p];
    }
  }
  embed_flow(c, flow_inputs(c, f, tokens, f->n), f->n);
  draw_uniforms(c);
  c->layer = 0;
  c->next_point = 0;
  c->in_step = 1;
  return 1;
}

/* Every sequence has its token: PIPELINE submits the rest of every row's
 * forward, which only fills the caches; rows that went through every layer
 * (all of them under PIPELINE) count as through. */
static void end_step(struct call *c) {
  unsigned n_layers = c->m->spec->n_layers;
  int pipeline = c->o->method == EELLM_GEN_PIPELINE;
  for (; pipeline && c->layer < n_layers; c->layer++)
    submit_layer(c, c->layer, c->prio_decide - 1 - (int)c->place.layer_stage[c->layer]);
  for (size_t row = 0; row < c->f.n; row++)
    if (c->layer == n_layers) c->seqs[c->f.seq[row]].through = (size_t)c->f.positions[row] + 1;
  free_kept(c);
  c->step++;
  c->in_step = 0;
}

static void submit_layers_to(struct call *c, unsigned layer, int prio) {
  for (; c->layer < layer; c->layer++) submit_layer(c, c->layer, prio);
}

static unsigned point_layer(const struct call *c, unsigned point) {
  unsigned exit = c->points[point];
  return exit == c->m->spec->n_exits ? c->m->spec->n_layers : c->m->exits[exit].layer;
}

/* Submits tasks up to the next decision: returns 1 with a head submitted, 0
 * when every sequence has finished. PIPELINE goes on to the layers up to the
 * following decision: every row needs them whatever this decision is. */
static int submit_until_decision(struct call *c) {
  for (;;) {
    if (!c->in_step && !begin_step(c)) return 0;
    if (c->n_und > 0) {
      unsigned point = c->next_point++;
      submit_layers_to(c, point_layer(c, point), c->prio_decide);
      submit_head(c, c->points[point]);
      if (c->o->method == EELLM_GEN_PIPELINE && c->next_point < c->n_points)
        submit_layers_to(c, point_layer(c, c->next_point), c->prio_decide);
      return 1;
    }
    end_step(c);
    if (c->one_step) return 0;
  }
}

/* ---- the chain of decisions ------------------------------------------------------ */

static int second_to_arrive(struct call *c) {
  pthread_mutex_lock(&c->lock);
  int second = ++c->arrivals == 2;
  if (second) c->arrivals = 0;
  pthread_mutex_unlock(&c->lock);
  return second;
}

static void finish(struct call *c) {
  pthread_mutex_lock(&c->lock);
  c->finished = 1;
  pthread_cond_signal(&c->finished_cv);
  pthread_mutex_unlock(&c->lock);
}

static void go_on(struct call *c);

static void on_choices(void *arg) {
  struct call *c = arg;
  if (second_to_arrive(c)) go_on(c);
}

static void on_logits(void *arg) {
  struct call *c = arg;
  starpu_data_acquire_cb(c->choices, STARPU_R, on_choices, c);
}

/* Asks StarPU for the choices (and the logits first, when kept). Under MPI
 * every rank submits the same flow, so each needs every decision before it
 * submits what follows: StarPU-MPI sends the choices (and kept logits) from
 * the head's rank to every other of its pipeline, in submission order (the same on every
 * rank), and each rank's callback reads its own copy. A host-side broadcast
 * would block a thread until the head has run; this keeps every rank's
 * chain asynchronous. */
static void await_choices(struct call *c) {
  eellm_placement_share(&c->m->place, c->choices);
  if (c->o->keep_logits) eellm_placement_share(&c->m->place, c->logits);
  if (c->o->keep_logits)
    starpu_data_acquire_cb(c->logits, STARPU_R, on_logits, c);
  else
    starpu_data_acquire_cb(c->choices, STARPU_R, on_choices, c);
}

/* With the choices at hand: emits, submits up to the next decision and asks
 * for its choices; goes on itself when they came before it let go (a loop, so
 * that choices arriving at once never deepen the stack). */
static void go_on(struct call *c) {
  do {
    take_choices(c);
    if (!submit_until_decision(c)) {
      finish(c);
      return;
    }
    await_choices(c);
  } while (second_to_arrive(c));
}

void gen_call_init(struct call *c) {
  pthread_mutex_init(&c->lock, NULL);
  pthread_cond_init(&c->finished_cv, NULL);
}

void gen_call_end(struct call *c) {
  free_kept(c);
  free(c->kept);
  c->kept = NULL;
  c->cap_kept = 0;
  pthread_cond_destroy(&c->finished_cv);
  pthread_mutex_destroy(&c->lock);
}

/* Runs the chain until it stops (every sequence finished, or the step's end
 * with one_step). */
static void run_chain(struct call *c) {
  c->finished = 0;
  c->arrivals = 0;
  if (!submit_until_decision(c)) {
    finish(c);
  } else {
    await_choices(c);
    if (second_to_arrive(c)) go_on(c);
  }
  pthread_mutex_lock(&c->lock);
  while (!c->finished) pthread_cond_wait(&c->finished_cv, &c->lock);
  pthread_mutex_unlock(&c->lock);
}

/* ---- speculative decoding (LayerSkip-style self-speculation) ---------------------
 *
 * Simple rather than fast: each phase of a round (a draft pass, the
 * verification) submits its tasks, brings what the host needs back with a
 * blocking acquire and waits for its tasks before the next phase.
 *
 * A round, for every unfinished sequence (positions 0 .. first - 1 complete at
 * every layer, tokens 0 .. len - 1 known, nd = min(draft_tokens, room - 1)
 * drafts so that a round never passes max_len):
 * - draft pass 0 feeds positions first .. len - 1 through layers 1..L, pass j
 *   >= 1 feeds draft j - 1 at position len + j - 1; after pass j < nd the
 *   draft exit gives draft j (position len + j) on the sequence's newest row.
 *   Every pass writes its rows' keys and values into layers 1..L's caches and
 *   leaves their layer-L outputs on the host;
 * - the verification feeds those layer-L outputs, positions first .. len + nd
 *   - 1, through layers L+1..n_layers (writing their caches), and the final
 *   head on positions len - 1 .. len + nd - 1: its greedy token at position
 *   len - 1 + j is the full model's next token after the prefix ending in
 *   draft j - 1. The tokens are emitted one after the other while they equal
 *   the drafts; the first that differs (or the one after every draft) is the
 *   last of the round.
 *   Sampling, the drafts are drawn from the draft exit's distribution q and
 *   the host applies the speculative-sampling rule against the final head's
 *   p (both at the request's temperature and top-k, and the position's own
 *   limits: top-p after top_p_decay, the newline ban): draft j stays with
 *   probability min(1, p/q), else the round's last token is drawn from
 *   norm(max(0, p - q)); after every draft it is drawn from p. So each token
 *   follows the full model's distribution. A sequence's draws come from its own
 *   stream, in a fixed order (the drafts, then the verification's).
 * A round depends on nothing but its sequences' states, so sequences of a
 * session may join (through 0: the first pass feeds the whole prompt) or
 * leave between rounds; eellm_generate runs rounds until all have finished.
 * Then positions 0 .. len' - 2 (len' the new length) hold the keys and values
 * of the kept tokens at every layer: through = len' - 1. Positions from len' -
 * 1 on may hold a rejected draft's: the next round's first pass writes len' - 1
 * and every later position before a row reads it (cached attention stores a
 * task's rows first and reads positions up to the row's own only). */

struct spec_seq {
  size_t s;          /* the sequence */
  size_t first, len; /* its through and len when the round began */
  unsigned nd;       /* drafts this round */
  uint16_t drafts[EELLM_MAX_DRAFT_TOKENS];
  float *x;          /* [len + nd - first, D]: layer L's outputs of positions first .. */
  float *qlogits;    /* sampling: [nd, V], the draft exit's logits of each draft */
};

/* A uniform number in [0, 1) from sequence q's stream: 24 bits (for the
 * next-token task, as draw_uniforms) or 53. */
static float spec_uniform24(struct sequence *q) {
  return (float)(eellm_splitmix64_next(&q->rng) >> 40) * 0x1p-24f;
}

static double spec_uniform53(struct sequence *q) {
  return (double)(eellm_splitmix64_next(&q->rng) >> 11) * 0x1p-53;
}

/* The first id, in id order, at which the cumulative weight exceeds u times the
 * total (the last id of positive weight when rounding leaves none). */
static int32_t spec_pick(const double *w, size_t V, double u) {
  double total = 0, acc = 0;
  for (size_t j = 0; j < V; j++) total += w[j];
  size_t last = 0;
  for (size_t j = 0; j < V; j++) {
    if (w[j] <= 0) continue;
    last = j;
    acc += w[j];
    if (acc > u * total) return (int32_t)j;
  }
  return (int32_t)last;
}

static void spec_phase_end(struct call *c) {
  starpu_task_wait_for_all();
  free_kept(c);
  c->step++;
}

/* The flow of n rows (kept arrays); x is the caller's. Returns the input of its tokens
 * (NULL where tokens is NULL). */
static starpu_data_handle_t spec_flow(struct call *c, size_t n, int32_t *positions, int32_t *slots,
                                      size_t *seq, const int32_t *tokens) {
  struct flow *f = &c->f;
  memset(f, 0, sizeof *f);
  f->n = n;
  f->positions = positions;
  f->slots = slots;
  f->seq = seq;
  return flow_inputs(c, f, tokens, n);
}

/* Draft pass j: returns 0 when an exit gave non-finite logits. */
static int spec_draft_pass(struct call *c, struct spec_seq *ss, size_t n, unsigned j) {
  const unsigned L = c->o->draft_exit_layer;
  const size_t D = c->m->spec->d_model;
  begin_pools(c);
  size_t rows = 0;
  for (size_t i = 0; i < n; i++) rows += j == 0 ? ss[i].len - ss[i].first : ss[i].nd >= j;
  int32_t *positions = keep(c, rows * sizeof *positions), *slots = keep(c, rows * sizeof *slots);
  size_t *seq = keep(c, rows * sizeof *seq), *head_of = keep(c, n * sizeof *head_of);
  int32_t *tokens = keep(c, rows * sizeof *tokens), *heads = keep(c, n * sizeof *heads);
  float *uniforms = keep(c, n * sizeof *uniforms);
  struct eellm_row_limit *limits = keep(c, n * sizeof *limits);
  int sampling = c->o->temperature > 0;
  size_t row = 0, M = 0;
  for (size_t i = 0; i < n; i++) {
    struct spec_seq *p = &ss[i];
    const struct sequence *q = &c->seqs[p->s];
    if (j > 0 && p->nd < j) continue;
    size_t from = j == 0 ? p->first : p->len + j - 1, to = j == 0 ? p->len : from + 1;
    for (size_t pos = from; pos < to; pos++, row++) {
      positions[row] = (int32_t)pos;
      slots[row] = (int32_t)p->s;
      seq[row] = p->s;
      tokens[row] = pos < p->len ? q->tokens[pos] : p->drafts[pos - p->len];
    }
    if (p->nd > j) {
      if (sampling) uniforms[M] = spec_uniform24(&c->seqs[p->s]);
      limits[M] = row_limit(c, q, (uint16_t)tokens[row - 1], j);
      heads[M] = (int32_t)(row - 1);
      head_of[M++] = i;
    }
  }
  embed_flow(c, spec_flow(c, rows, positions, slots, seq, tokens), rows);
  for (unsigned l = 0; l < L; l++) submit_layer(c, l, c->prio_decide);
  if (M) submit_head_on(c, (unsigned)c->g->exit_at[L - 1], heads, uniforms, limits, M);
  starpu_data_acquire(c->f.x, STARPU_R);
  const float *x = (const float *)starpu_matrix_get_local_ptr(c->f.x);
  size_t ld = starpu_matrix_get_local_ld(c->f.x);
  for (row = 0; row < rows; row++) {
    struct spec_seq *p = NULL;
    for (size_t i = 0; i < n && !p; i++)
      if (ss[i].s == seq[row]) p = &ss[i];
    memcpy(p->x + ((size_t)positions[row] - p->first) * D, x + row * ld, D * sizeof *x);
  }
  starpu_data_release(c->f.x);
  int ok = 1;
  if (M && sampling) { /* q, for the acceptance rule */
    starpu_data_acquire(c->logits, STARPU_R);
    const float *z = (const float *)starpu_matrix_get_local_ptr(c->logits);
    size_t ldz = starpu_matrix_get_local_ld(c->logits), V = c->g->vocab;
    for (size_t m = 0; m < M; m++)
      memcpy(ss[head_of[m]].qlogits + j * V, z + m * ldz, V * sizeof *z);
    starpu_data_release(c->logits);
  }
  if (M) {
    starpu_data_acquire(c->choices, STARPU_R);
    const struct eellm_token_choice *choices =
        (const struct eellm_token_choice *)starpu_vector_get_local_ptr(c->choices);
    for (size_t m = 0; m < M; m++) {
      if (choices[m].token < 0) ok = 0;
      else ss[head_of[m]].drafts[j] = (uint16_t)choices[m].token;
    }
    starpu_data_release(c->choices);
  }
  spec_phase_end(c);
  if (!ok) c->bad_layer = L;
  return ok;
}

/* The verification and the tokens kept: returns 0 on non-finite logits. */
static int spec_verify(struct call *c, struct spec_seq *ss, size_t n) {
  const unsigned L = c->o->draft_exit_layer, n_layers = c->m->spec->n_layers;
  const size_t D = c->m->spec->d_model;
  begin_pools(c);
  size_t rows = 0, M = 0;
  for (size_t i = 0; i < n; i++) {
    rows += ss[i].len + ss[i].nd - ss[i].first;
    M += ss[i].nd + 1;
  }
  int32_t *positions = keep(c, rows * sizeof *positions), *slots = keep(c, rows * sizeof *slots);
  size_t *seq = keep(c, rows * sizeof *seq);
  int32_t *heads = keep(c, M * sizeof *heads);
  struct eellm_row_limit *limits = keep(c, M * sizeof *limits);
  float *x = keep(c, rows * D * sizeof *x);
  size_t row = 0, m = 0;
  for (size_t i = 0; i < n; i++) {
    struct spec_seq *p = &ss[i];
    const struct sequence *q = &c->seqs[p->s];
    for (size_t pos = p->first; pos < p->len + p->nd; pos++, row++) {
      positions[row] = (int32_t)pos;
      slots[row] = (int32_t)p->s;
      seq[row] = p->s;
      memcpy(x + row * D, p->x + (pos - p->first) * D, D * sizeof *x);
      if (pos + 1 < p->len) continue;
      uint16_t before = pos < p->len ? q->tokens[pos] : p->drafts[pos - p->len];
      limits[m] = row_limit(c, q, before, (unsigned)(pos + 1 - p->len));
      heads[m++] = (int32_t)row;
    }
  }
  spec_flow(c, rows, positions, slots, seq, NULL);
  c->f.x = temp(c, rows, D);
  struct eellm_task_info ti = task_info(c, EELLM_KIND_FORWARD, c->prio_decide, -1);
  eellm_insert_matrix_set(c->f.x, x, &ti);
  for (unsigned l = L; l < n_layers; l++) submit_layer(c, l, c->prio_decide);
  submit_head_on(c, c->m->spec->n_exits, heads, NULL, limits, M);
  const float *logits = NULL;
  size_t ld = 0;
  int sampling = c->o->temperature > 0;
  if (c->o->keep_logits || sampling) {
    starpu_data_acquire(c->logits, STARPU_R);
    logits = (const float *)starpu_matrix_get_local_ptr(c->logits);
    ld = starpu_matrix_get_local_ld(c->logits);
  }
  starpu_data_acquire(c->choices, STARPU_R);
  const struct eellm_token_choice *choices =
      (const struct eellm_token_choice *)starpu_vector_get_local_ptr(c->choices);
  int ok = 1;
  for (m = 0; m < M; m++) ok &= choices[m].token >= 0;
  m = 0;
  size_t V = c->g->vocab;
  const struct eellm_gen_options *o = c->o;
  struct eellm_sampling sp = {c->head.temperature, 0, o->temperature, o->top_k, o->top_p};
  struct eellm_sampling sq = sp;
  sq.exit_temperature = eellm_head_of(c->m, (unsigned)c->g->exit_at[L - 1]).temperature;
  double *P = NULL, *Q = NULL, *R = NULL;
  void *work = NULL;
  if (sampling) {
    P = gen_xmalloc(3 * V * sizeof *P);
    Q = P + V;
    R = Q + V;
    work = gen_xmalloc(eellm_cpu_next_token_work_bytes(V, 1, 1));
  }
  for (size_t i = 0; ok && i < n; i++) {
    struct spec_seq *p = &ss[i];
    struct sequence *q = &c->seqs[p->s];
    for (unsigned j = 0; j <= p->nd; j++) {
      const float *z = logits ? logits + (m + j) * ld : NULL;
      const struct eellm_token_choice *ch = &choices[m + j];
      struct eellm_token_choice mine;
      int agrees;
      if (!sampling) {
        agrees = j < p->nd && ch->token == p->drafts[j];
      } else {
        /* Speculative sampling: draft x (drawn from q) stays with probability
         * min(1, p(x) / q(x)); else the token comes from norm(max(0, p - q));
         * after every draft, from p. */
        const struct eellm_row_limit *limit = &limits[m + j];
        eellm_cpu_sampling_probs(z, V, &sp, limit, work, P);
        agrees = 0;
        if (j < p->nd) {
          unsigned x = p->drafts[j];
          eellm_cpu_sampling_probs(p->qlogits + (size_t)j * V, V, &sq, limit, work, Q);
          agrees = spec_uniform53(q) * Q[x] < P[x];
          if (!agrees) {
            double left = 0;
            for (size_t v = 0; v < V; v++) left += R[v] = P[v] > Q[v] ? P[v] - Q[v] : 0;
            if (!(left > 0)) memcpy(R, P, V * sizeof *R);
          }
        }
        int32_t token = agrees ? (int32_t)p->drafts[j] : spec_pick(j < p->nd ? R : P, V,
                                                                    spec_uniform53(q));
        mine = (struct eellm_token_choice){.token = token, .logprob = (float)log(P[token])};
        ch = &mine;
      }
      emit(c, p->s, ch, o->keep_logits ? z : NULL);
      c->spec_accepted += agrees;
      if (q->done || !agrees) break;
    }
    q->through = q->len - 1;
    c->spec_rounds++;
    c->spec_drafted += p->nd;
    m += p->nd + 1;
  }
  free(P);
  free(work);
  starpu_data_release(c->choices);
  if (logits) starpu_data_release(c->logits);
  spec_phase_end(c);
  if (!ok) c->bad_layer = n_layers;
  return ok;
}

/* One round for every unfinished sequence: returns 0 when none was left. */
static int spec_round(struct call *c) {
  const unsigned N = c->o->draft_tokens;
  const size_t D = c->m->spec->d_model;
  struct spec_seq *ss = gen_xmalloc((c->n_seqs ? c->n_seqs : 1) * sizeof *ss);
  size_t n = 0;
  unsigned most = 0;
  for (size_t s = 0; s < c->n_seqs; s++) {
    struct sequence *q = &c->seqs[s];
    if (q->done) continue;
    struct spec_seq *p = &ss[n++];
    p->s = s;
    p->first = q->through;
    p->len = q->len;
    size_t room = q->max_len - q->len; /* >= 1: the sequence is not done */
    p->nd = room - 1 < N ? (unsigned)(room - 1) : N;
    p->x = gen_xmalloc((p->len + p->nd - p->first) * D * sizeof *p->x);
    p->qlogits = c->o->temperature > 0 ? gen_xmalloc(p->nd * c->g->vocab * sizeof(float)) : NULL;
    if (p->nd > most) most = p->nd;
  }
  int ok = 1;
  for (unsigned j = 0; n && ok && j <= most; j++) ok = spec_draft_pass(c, ss, n, j);
  if (n && ok) ok = spec_verify(c, ss, n);
  for (size_t i = 0; i < n; i++) {
    free(ss[i].x);
    free(ss[i].qlogits);
  }
  free(ss);
  if (!ok)
    for (size_t s = 0; s < c->n_seqs; s++) c->seqs[s].done = 1;
  return n && ok;
}

/* ---- the entry points --------------------------------------------------------- */

void gen_run(struct call *c) {
  gen_call_init(c);
  if (c->o->method == EELLM_GEN_SPECULATIVE)
    while (spec_round(c)) continue;
  else
    run_chain(c);
  eellm_mpi_wait();
  gen_call_end(c);
}

void gen_run_step(struct call *c) {
  c->one_step = 1;
  if (c->o->method == EELLM_GEN_SPECULATIVE)
    spec_round(c);
  else
    run_chain(c);
}
