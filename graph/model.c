/* Builds the model's tensor table: parameters in one allocation carved into
 * named tensors (GPT-2 / Hugging Face names), gradients and AdamW moments in
 * blocks of the same layout, each tensor registered as StarPU data. */
#include "graph/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "graph/train_step.h"
#include "runtime/engine/mpi.h"
#include "runtime/engine/splitmix.h"
#include "runtime/io/specio.h"

struct builder {
  struct eellm_model *m;
  size_t cap;
  unsigned stage; /* owner of the tensors added next */
};

/* Appends tensor `prefix``name` [rows, cols] (rows 0: a vector) to the table. */
static int add_tensor(struct builder *b, const char *prefix, const char *name, size_t rows,
                      size_t cols, int decay) {
  struct eellm_model *m = b->m;
  if (m->n_tensors == b->cap) {
    b->cap = b->cap ? 2 * b->cap : 64;
    m->tensors = realloc(m->tensors, b->cap * sizeof *m->tensors);
    if (!m->tensors) abort();
  }
  struct eellm_tensor *t = &m->tensors[m->n_tensors];
  memset(t, 0, sizeof *t);
  snprintf(t->name, sizeof t->name, "%s%s", prefix, name);
  t->rows = rows;
  t->cols = cols;
  t->numel = (rows ? rows : 1) * cols;
  t->offset = m->n_params;
  t->decay = decay;
  t->owner = b->stage;
  t->updater = -1;
  t->part.split = EELLM_SPLIT_NONE;
  t->part.groups = 1;
  m->n_params += t->numel;
  return (int)m->n_tensors++;
}

/* Marks tensor i as split by tensor parallelism (with tp above 1 only: tp 1
 * keeps every tensor whole). */
static void split_tensor(struct builder *b, int i, enum eellm_split split, unsigned groups) {
  if (i < 0 || b->m->place.layout.tp == 1) return;
  b->m->tensors[i].part.split = split;
  b->m->tensors[i].part.groups = groups;
}

/* A norm's gain, and its bias for layernorm with biases (`name` is "ln_1.", ...). */
static void add_norm(struct builder *b, const char *prefix, const char *name, int *w, int *bias) {
  const Eellm__Model *s = b->m->spec;
  char field[32];
  snprintf(field, sizeof field, "%sweight", name);
  *w = add_tensor(b, prefix, field, 0, s->d_model, 0);
  *bias = -1;
  if (s->norm == EELLM__MODEL__NORM__LAYERNORM && s->bias) {
    snprintf(field, sizeof field, "%sbias", name);
    *bias = add_tensor(b, prefix, field, 0, s->d_model, 0);
  }
}

/* A linear layer stored [in, out] (Conv1D layout) with an optional bias:
 * column-parallel under tensor parallelism (its outputs split in `groups` runs,
 * the bias alike), or row-parallel with groups 0 (its inputs split, the bias
 * whole: added once, after the parts are summed). */
static void add_linear(struct builder *b, const char *prefix, const char *name, size_t in,
                       size_t out, unsigned groups, int *w, int *bias) {
  char field[32];
  snprintf(field, sizeof field, "%sweight", name);
  *w = add_tensor(b, prefix, field, in, out, 1);
  split_tensor(b, *w, groups ? EELLM_SPLIT_COLS : EELLM_SPLIT_ROWS, groups ? groups : 1);
  *bias = -1;
  if (b->m->spec->bias) {
    snprintf(field, sizeof field, "%sbias", name);
    *bias = add_tensor(b, prefix, field, 0, out, 0);
    if (groups) split_tensor(b, *bias, EELLM_SPLIT_COLS, groups);
  }
}

/* An output head [V, D] (lm_head, and wte which a tied head shares): its
 * vocabulary rows split under tensor parallelism. */
static int add_head(struct builder *b, const char *prefix, const char *name, size_t rows) {
  int i = add_tensor(b, prefix, name, rows, b->m->spec->d_model, 1);
  split_tensor(b, i, EELLM_SPLIT_ROWS, 1);
  return i;
}

/* An MLP's ln_2 (unless shared, below), c_fc and c_proj. */
static void add_mlp_linears(struct builder *b, const char *prefix, struct eellm_layer_params *p) {
  size_t d = b->m->spec->d_model;
  unsigned halves = b->m->fc_out / b->m->d_ffn; /* SwiGLU's gate | up */
  add_linear(b, prefix, "mlp.c_fc.", d, b->m->fc_out, halves, &p->fc_w, &p->fc_b);
  add_linear(b, prefix, "mlp.c_proj.", b->m->d_ffn, d, 0, &p->proj_w, &p->proj_b);
}

static void add_mlp(struct builder *b, const char *prefix, struct eellm_layer_params *p) {
  add_norm(b, prefix, "ln_2.", &p->ln2_w, &p->ln2_b);
  add_mlp_linears(b, prefix, p);
}

static void add_layer(struct builder *b, const char *prefix, struct eellm_layer_params *p) {
  size_t d = b->m->spec->d_model;
  add_norm(b, prefix, "ln_1.", &p->ln1_w, &p->ln1_b);
  add_linear(b, prefix, "attn.c_attn.", d, 3 * d, 3, &p->qkv_w, &p->qkv_b);
  add_linear(b, prefix, "attn.c_proj.", d, d, 0, &p->o_w, &p->o_b);
  add_mlp(b, prefix, p);
}

static const struct eellm_layer_params no_layer = {-1, -1, -1, -1, -1, -1,
                                                   -1, -1, -1, -1, -1, -1};

static void add_exit(struct builder *b, unsigned k) {
  struct eellm_model *m = b->m;
  const Eellm__Exit *e = m->spec->exits[k];
  struct eellm_exit_params *x = &m->exits[k];
  char prefix[32];
  snprintf(prefix, sizeof prefix, "exits.%u.", k);
  x->layer = e->layer;
  x->structure = e->structure;
  x->temperature = e->temperature;
  x->dynamic_weight = e->dynamic_weight;
  x->block = no_layer;
  x->lnf_w = x->lnf_b = -1;
  if (e->structure == EELLM__EXIT__STRUCTURE__MLP &&
      e->mlp_input == EELLM__EXIT__MLP_INPUT__LAYER_NORM_OUTPUT) {
    /* The layer's own ln_2: the exit's branch reads the same ln_2(r) as the layer's MLP. */
    x->block.ln2_w = m->layers[e->layer - 1].ln2_w;
    x->block.ln2_b = m->layers[e->layer - 1].ln2_b;
    add_mlp_linears(b, prefix, &x->block);
  } else if (e->structure == EELLM__EXIT__STRUCTURE__MLP) {
    add_mlp(b, prefix, &x->block);
  }
  if (e->structure == EELLM__EXIT__STRUCTURE__BLOCK) {
    char block_prefix[32];
    snprintf(block_prefix, sizeof block_prefix, "exits.%u.h.", k);
    add_layer(b, block_prefix, &x->block);
  }
  if (e->structure != EELLM__EXIT__STRUCTURE__PLAIN) add_norm(b, prefix, "ln_f.", &x->lnf_w, &x->lnf_b);
  x->head_w = e->tied ? m->head_w : add_head(b, prefix, "lm_head.weight", m->spec->vocab_size);
}

static void build_table(struct eellm_model *m) {
  struct builder b = {m, 0, 0};
  const Eellm__Model *s = m->spec;
  m->wte = add_head(&b, "", "transformer.wte.weight", s->vocab_size);
  m->wpe = s->positions == EELLM__MODEL__POSITIONS__LEARNED
               ? add_tensor(&b, "", "transformer.wpe.weight", s->context_length, s->d_model, 1)
               : -1;
  for (unsigned i = 0; i < s->n_layers; i++) {
    char prefix[32];
    snprintf(prefix, sizeof prefix, "transformer.h.%u.", i);
    b.stage = m->place.layer_stage[i];
    add_layer(&b, prefix, &m->layers[i]);
  }
  b.stage = eellm_exit_stage(&m->place, s->n_exits);
  add_norm(&b, "transformer.", "ln_f.", &m->lnf_w, &m->lnf_b);
  m->head_w = s->tie_embeddings ? m->wte : add_head(&b, "", "lm_head.weight", s->vocab_size);
  for (unsigned k = 0; k < s->n_exits; k++) {
    b.stage = eellm_exit_stage(&m->place, k);
    add_exit(&b, k);
  }
}

/* The part of t that tensor index k holds (eellm_tp_range, codelets/collective.h). */
static struct eellm_part part_at(const struct eellm_model *m, const struct eellm_tensor *t,
                                 unsigned k) {
  struct eellm_part p = t->part;
  p.rows = t->rows;
  p.cols = t->cols;
  p.lo = 0;
  if (p.split == EELLM_SPLIT_ROWS) eellm_tp_range(t->rows, m->place.layout.tp, k, &p.lo, &p.rows);
  if (p.split == EELLM_SPLIT_COLS) {
    size_t run;
    eellm_tp_range(t->cols / p.groups, m->place.layout.tp, k, &p.lo, &run);
    p.cols = run * p.groups;
  }
  p.numel = (p.rows ? p.rows : 1) * p.cols;
  return p;
}

/* Copies part p of a tensor of `cols` columns between the tensor in full
 * layout and the part, contiguous (to_part: full -> part). */
static void copy_part(const struct eellm_part *p, size_t cols, float *full, float *part,
                      int to_part) {
  size_t rows = p->rows ? p->rows : 1, run = p->cols / p->groups;
  float *base = full + (p->split == EELLM_SPLIT_ROWS ? p->lo * cols : 0);
  for (size_t r = 0; r < rows; r++)
    for (unsigned g = 0; g < p->groups; g++) {
      float *f = base + r * cols + (p->split == EELLM_SPLIT_COLS ? g * (cols / p->groups) + p->lo : 0);
      float *q = part + r * p->cols + g * run;
      memcpy(to_part ? q : f, to_part ? f : q, run * sizeof(float));
    }
}

/* Where this process's share of each copy lives: split tensors' parts in the
 * part blocks, whole tensors in the model's blocks. */
static void set_parts(struct eellm_model *m) {
  const Eellm__Model *s = m->spec;
  unsigned tp = m->place.layout.tp, t = m->place.self.tensor;
  for (size_t i = 0; i < m->n_tensors; i++) {
    struct eellm_tensor *x = &m->tensors[i];
    x->part = part_at(m, x, t);
    x->part.offset = x->part.split == EELLM_SPLIT_NONE ? x->offset : m->n_part;
    if (x->part.split != EELLM_SPLIT_NONE) m->n_part += x->part.numel;
  }
  size_t lo, n;
  eellm_tp_range(s->n_heads, tp, t, &lo, &n);
  m->share.heads = (unsigned)n;
  m->share.att = n * (s->d_model / s->n_heads);
  m->share.ffn = m->d_ffn / tp;
  m->share.fc = m->fc_out / tp;
  eellm_tp_range(s->vocab_size, tp, t, &m->share.vocab_lo, &m->share.vocab);
  m->share.first = t == 0;
}

float *eellm_model_copy_block(const struct eellm_model *m, enum eellm_copy c) {
  float *const blocks[] = {m->params, m->grads, m->adam_m, m->adam_v};
  return blocks[c];
}

static float *part_block(const struct eellm_model *m, const struct eellm_tensor *t,
                         enum eellm_copy c) {
  if (t->part.split == EELLM_SPLIT_NONE) return eellm_model_copy_block(m, c);
  float *const blocks[] = {m->part_params, m->part_grads, m->part_m, m->part_v};
  return blocks[c];
}

float *eellm_model_part(const struct eellm_model *m, size_t i, enum eellm_copy c) {
  const struct eellm_tensor *t = &m->tensors[i];
  return part_block(m, t, c) + t->part.offset;
}

starpu_data_handle_t eellm_model_copy_handle(const struct eellm_model *m, size_t i,
                                             enum eellm_copy c) {
  const struct eellm_tensor *t = &m->tensors[i];
  starpu_data_handle_t const handles[] = {t->param, t->grad, t->m, t->v};
  return handles[c];
}

void eellm_model_put_part(struct eellm_model *m, size_t i, enum eellm_copy c, const float *full) {
  const struct eellm_tensor *t = &m->tensors[i];
  starpu_data_handle_t h = eellm_model_copy_handle(m, i, c);
  starpu_data_acquire(h, STARPU_W);
  copy_part(&t->part, t->cols, (float *)full, eellm_model_part(m, i, c), 1);
  starpu_data_release(h);
}

/* Rank 0 takes part k of the tensor from rank `from` into the full layout at
 * `full`; `from` sends it (host-side, as both call in the same order). */
static void take_part(struct eellm_model *m, size_t i, enum eellm_copy c, unsigned k, int from,
                      float *full) {
  const struct eellm_tensor *t = &m->tensors[i];
  starpu_data_handle_t h = eellm_model_copy_handle(m, i, c);
  if (eellm_rank() == from) {
    starpu_data_acquire(h, STARPU_R);
    float *part = eellm_model_part(m, i, c);
    if (from != 0) eellm_mpi_move(part, t->part.numel, from, 0);
    else if (part != full) copy_part(&t->part, t->cols, full, part, 0);
    starpu_data_release(h);
    return;
  }
  struct eellm_part p = part_at(m, t, k);
  if (p.split == EELLM_SPLIT_NONE) { /* into the memory of rank 0's own handle */
    starpu_data_acquire(h, STARPU_W);
    eellm_mpi_move(full, p.numel, from, 0);
    starpu_data_release(h);
    return;
  }
  float *buf = malloc(p.numel * sizeof *buf);
  if (!buf) abort();
  eellm_mpi_move(buf, p.numel, from, 0);
  copy_part(&p, t->cols, full, buf, 0);
  free(buf);
}

void eellm_model_gather_copy(struct eellm_model *m, size_t i, enum eellm_copy c,
                             unsigned data) {
  const struct eellm_tensor *t = &m->tensors[i];
  unsigned parts = t->part.split == EELLM_SPLIT_NONE ? 1 : m->place.layout.tp;
  float *full = eellm_model_copy_block(m, c) + t->offset;
  for (unsigned k = 0; k < parts; k++) {
    struct eellm_coords holder = {.stage = t->owner, .tensor = k, .data = data};
    int from = eellm_mpi_active() ? eellm_layout_rank(&m->place.layout, holder) : 0;
    if (eellm_rank() == from || eellm_rank() == 0) take_part(m, i, c, k, from, full);
  }
}

/* A handle of t's part over block (NULL: memory StarPU allocates), owned by `stage`. */
static starpu_data_handle_t register_tensor(const struct eellm_model *m,
                                            const struct eellm_tensor *t, float *block,
                                            unsigned stage) {
  starpu_data_handle_t h;
  int home = block ? STARPU_MAIN_RAM : -1;
  uintptr_t ptr = block ? (uintptr_t)(block + t->part.offset) : 0;
  const struct eellm_part *p = &t->part;
  if (t->rows)
    starpu_matrix_data_register(&h, home, ptr, p->cols, p->cols, p->rows, sizeof(float));
  else
    starpu_vector_data_register(&h, home, ptr, p->cols, sizeof(float));
  eellm_mpi_register(h, eellm_stage_rank(&m->place, stage));
  return h;
}

/* A gradient of `tensor` on `stage` unless the stage owns it or has one. */
static void add_shadow(struct eellm_model *m, int tensor, unsigned stage) {
  if (tensor < 0 || m->tensors[tensor].owner == stage) return;
  for (size_t i = 0; i < m->n_shadows; i++)
    if (m->shadows[i].tensor == tensor && m->shadows[i].stage == stage) return;
  struct eellm_shadow *sh = &m->shadows[m->n_shadows++];
  sh->tensor = tensor;
  sh->stage = stage;
  sh->grad = register_tensor(m, &m->tensors[tensor], NULL, stage);
}

/* Head weights read on stages that do not own them get a gradient there, and
 * so does the layer's ln_2 an MLP exit shares (a PRE exit runs on the next
 * layer's stage). */
static void add_shadows(struct eellm_model *m) {
  size_t cap = 3 * (size_t)m->spec->n_exits + 1;
  m->shadows = calloc(cap, sizeof *m->shadows);
  if (!m->shadows) abort();
  for (unsigned k = 0; k <= m->spec->n_exits; k++) {
    unsigned stage = eellm_exit_stage(&m->place, k);
    add_shadow(m, k < m->spec->n_exits ? m->exits[k].head_w : m->head_w, stage);
    if (k == m->spec->n_exits || m->exits[k].structure != EELLM__EXIT__STRUCTURE__MLP) continue;
    add_shadow(m, m->exits[k].block.ln2_w, stage);
    add_shadow(m, m->exits[k].block.ln2_b, stage);
  }
}

int eellm_model_owns(const struct eellm_model *m, size_t i) {
  return !eellm_mpi_active() || eellm_stage_rank(&m->place, m->tensors[i].owner) == eellm_rank();
}

int eellm_model_replica_updates(const struct eellm_model *m, size_t i) {
  int updater = m->tensors[i].updater;
  return updater < 0 || (unsigned)updater == m->place.self.data;
}

int eellm_model_updates(const struct eellm_model *m, size_t i) {
  return eellm_model_owns(m, i) && eellm_model_replica_updates(m, i);
}

void eellm_model_describe_layout(eellm_model *m, char *buf, size_t n) {
  size_t ranks = (size_t)eellm_nranks();
  double *bytes = calloc(ranks, sizeof *bytes);
  if (!bytes) abort();
  bytes[eellm_rank()] = (double)eellm_model_moment_bytes(m);
  eellm_mpi_sum(bytes, (int)ranks);
  eellm_placement_describe(&m->place, m->spec->n_layers, bytes, buf, n);
  free(bytes);
}

size_t eellm_model_moment_bytes(const struct eellm_model *m) {
  size_t floats = 0;
  for (size_t i = 0; i < m->n_tensors; i++)
    if (!m->tensors[i].frozen && eellm_model_updates(m, i)) floats += m->tensors[i].part.numel;
  return 2 * floats * sizeof(float);
}

starpu_data_handle_t eellm_model_grad_on(const struct eellm_model *m, int i, unsigned stage) {
  if (i < 0 || m->tensors[i].frozen) return NULL;
  if (m->tensors[i].owner == stage) return m->tensors[i].grad;
  for (size_t k = 0; k < m->n_shadows; k++)
    if (m->shadows[k].tensor == i && m->shadows[k].stage == stage) return m->shadows[k].grad;
  fprintf(stderr, "eellm: no gradient of %s on stage %u\n", m->tensors[i].name, stage);
  abort();
}

/* A zeroed block of n floats whose pages become resident only when written:
 * a pipeline stage, or a model that never trains, pays only for what it uses
 * (the tensors it owns, the gradients it computes). */
static float *alloc_block(size_t n) {
  void *p = mmap(NULL, (n ? n : 1) * sizeof(float), PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

static void free_block(float *p, size_t n) {
  if (p) munmap(p, (n ? n : 1) * sizeof(float));
}

/* Exits in the order of the layer they read, for submission: one exit per
 * layer (the spec check makes sure), so a pass over the layers. */
static int sort_exits(struct eellm_model *m) {
  unsigned n = m->spec->n_exits, n_layers = m->spec->n_layers;
  unsigned *on_layer = calloc((size_t)n_layers + 1, sizeof *on_layer); /* 1 + exit, 0: none */
  if (!on_layer) return -1;
  for (unsigned k = 0; k < n; k++) on_layer[m->exits[k].layer] = k + 1;
  unsigned next = 0;
  for (unsigned l = 1; l <= n_layers; l++)
    if (on_layer[l]) m->exit_order[next++] = on_layer[l] - 1;
  free(on_layer);
  return 0;
}

static Eellm__Model *copy_spec(const Eellm__Model *spec) {
  size_t len;
  uint8_t *buf = eellm_spec_pack(&spec->base, &len);
  if (!buf) return NULL;
  Eellm__Model *copy = eellm__model__unpack(NULL, len, buf);
  free(buf);
  return copy;
}

eellm_model *eellm_model_create(const Eellm__Model *spec, unsigned micro_batch, unsigned seq_len,
                                char *err, size_t errlen) {
  return eellm_model_create_pipelined(spec, micro_batch, seq_len, 1, NULL, 0, err, errlen);
}

eellm_model *eellm_model_create_pipelined(const Eellm__Model *spec, unsigned micro_batch,
                                          unsigned seq_len, unsigned pp,
                                          const uint32_t *stage_layers, size_t n_stage_layers,
                                          char *err, size_t errlen) {
  Eellm__Parallelism par = EELLM__PARALLELISM__INIT;
  par.pp = pp;
  par.stage_layers = (uint32_t *)stage_layers;
  par.n_stage_layers = n_stage_layers;
  return eellm_model_create_parallel(spec, micro_batch, seq_len, &par, err, errlen);
}

/* ZeRO-1: each stage's trainable tensors go to the replica with the fewest
 * floats so far, largest first (ties: the lower data index). DeepSpeed shards
 * one flat buffer; whole tensors keep every AdamW task as it is and still give
 * each replica about 1/dp of the moments when a stage has many tensors. */
static int share_out_updates(struct eellm_model *m) {
  unsigned dp = m->place.layout.dp;
  size_t *order = malloc(m->n_tensors * sizeof *order);
  uint64_t *load = calloc((size_t)m->place.layout.pp * dp, sizeof *load);
  if (!order || !load) {
    free(order);
    free(load);
    return -1;
  }
  for (size_t i = 0; i < m->n_tensors; i++) order[i] = i;
  for (size_t i = 1; i < m->n_tensors; i++) /* insertion sort: stable, numel descending */
    for (size_t j = i; j > 0 && m->tensors[order[j]].numel > m->tensors[order[j - 1]].numel; j--) {
      size_t swap = order[j];
      order[j] = order[j - 1];
      order[j - 1] = swap;
    }
  for (size_t k = 0; k < m->n_tensors; k++) {
    struct eellm_tensor *t = &m->tensors[order[k]];
    uint64_t *stage_load = load + (size_t)t->owner * dp;
    unsigned best = 0;
    for (unsigned d = 1; d < dp; d++) best = stage_load[d] < stage_load[best] ? d : best;
    t->updater = (int)best;
    stage_load[best] += t->numel;
  }
  free(order);
  free(load);
  return 0;
}

/* With replicas or tensor parallelism, the groups' communicators and one
 * sequencing handle per stage, owned by the stage's rank: every collective
 * task of a rank, on either communicator, takes its stage's handle
 * (collective.h), so each rank runs them in submission order. One order for
 * both groups: the ranks of a tensor-parallel group submit the same flow, and
 * so do those of a data-parallel group, so the k-th collective of a rank is
 * the k-th of each peer, and a rank never waits in one group's collective
 * while a peer waits in the other's. */
static int setup_collectives(struct eellm_model *m, char *err, size_t errlen) {
  if (eellm_placement_dp_comm(&m->place, &m->dp_comm, err, errlen) != 0 ||
      eellm_placement_tp_comm(&m->place, &m->tp_comm, err, errlen) != 0)
    return -1;
  if (m->dp_comm == MPI_COMM_NULL && m->tp_comm == MPI_COMM_NULL) return 0;
  unsigned pp = m->place.layout.pp;
  m->seq_bytes = calloc(pp, 1);
  m->seq_h = calloc(pp, sizeof *m->seq_h);
  if (!m->seq_bytes || !m->seq_h) {
    snprintf(err, errlen, "out of memory building the model");
    return -1;
  }
  for (unsigned st = 0; st < pp; st++) {
    starpu_variable_data_register(&m->seq_h[st], STARPU_MAIN_RAM, (uintptr_t)&m->seq_bytes[st], 1);
    eellm_mpi_register(m->seq_h[st], eellm_stage_rank(&m->place, st));
  }
  return 0;
}

/* The CPU workers that slices of a micro-batch share may spread over: every
 * rank's, the fewest of any (ranks slice alike, so their loss statistics line
 * up); 1 where a GPU works, which wants whole micro-batches, and where the
 * placement slices nothing (then the ranks need not meet here). */
static unsigned slice_workers(const struct eellm_placement *p) {
  if (p->layout.pp > 1 || p->layout.tp > 1) return 1;
  int workers = starpu_cuda_worker_get_count() > 0 ? 1 : (int)starpu_cpu_worker_get_count();
  if (eellm_mpi_active()) /* every replica creates the model, as it splits dp_comm */
    MPI_Allreduce(MPI_IN_PLACE, &workers, 1, MPI_INT, MPI_MIN, eellm_mpi_comm());
  return workers > 1 ? (unsigned)workers : 1;
}

eellm_model *eellm_model_create_parallel(const Eellm__Model *spec_in, unsigned micro_batch,
                                         unsigned seq_len, const Eellm__Parallelism *par, char *err,
                                         size_t errlen) {
  struct eellm_model *m = calloc(1, sizeof *m);
  if (m) m->dp_comm = m->tp_comm = MPI_COMM_NULL;
  if (!m || !(m->spec = copy_spec(spec_in))) {
    snprintf(err, errlen, "out of memory building the model");
    free(m);
    return NULL;
  }
  /* From here on only the packed-and-unpacked copy counts: fields whose has_
   * flag is unset take their schema defaults, as in a file. */
  const Eellm__Model *spec = m->spec;
  if (eellm_model_spec_check(spec, "model spec", err, errlen) != 0) {
    eellm_model_destroy(m);
    return NULL;
  }
  Eellm__Parallelism one = EELLM__PARALLELISM__INIT;
  if (!par) par = &one;
  if (micro_batch < 1 || seq_len < 1 || seq_len > spec->context_length) {
    snprintf(err, errlen, "micro-batch %u x %u tokens: need at least one sequence of 1..%u tokens",
             micro_batch, seq_len, spec->context_length);
    eellm_model_destroy(m);
    return NULL;
  }
  if (par->dp < 1 || micro_batch % par->dp != 0 || par->zero_stage > 1) {
    snprintf(err, errlen,
             "micro-batch of %u sequences over dp %u replicas, zero_stage %u: dp must "
             "divide the sequences and zero_stage be 0 or 1",
             micro_batch, par->dp, par->zero_stage);
    eellm_model_destroy(m);
    return NULL;
  }
  struct eellm_layout layout = {.pp = par->pp, .tp = par->tp, .dp = par->dp};
  if (eellm_placement_init(&m->place, spec, layout, par->stage_layers, par->n_stage_layers,
                           eellm_mpi_active() ? eellm_nranks() : 0, eellm_rank(), err,
                           errlen) != 0) {
    eellm_model_destroy(m);
    return NULL;
  }
  eellm_placement_set_slices(&m->place, slice_workers(&m->place), micro_batch / par->dp);
  m->micro_batch = micro_batch;
  m->seq_len = seq_len;
  m->d_ffn = eellm_model_spec_ffn_size(spec);
  m->fc_out = eellm_fc_out(spec);
  m->layers = calloc(spec->n_layers, sizeof *m->layers);
  m->exits = calloc(spec->n_exits + 1, sizeof *m->exits);
  m->exit_order = calloc(spec->n_exits + 1, sizeof *m->exit_order);
  if (!m->layers || !m->exits || !m->exit_order) goto oom;
  build_table(m);
  set_parts(m);
  if (sort_exits(m) != 0) goto oom;
  if (par->zero_stage == 1 && share_out_updates(m) != 0) goto oom;
  m->params = alloc_block(m->n_params);
  m->grads = alloc_block(m->n_params);
  m->adam_m = alloc_block(m->n_params);
  m->adam_v = alloc_block(m->n_params);
  if (!m->params || !m->grads || !m->adam_m || !m->adam_v) goto oom;
  if (m->n_part) {
    m->part_params = alloc_block(m->n_part);
    m->part_grads = alloc_block(m->n_part);
    m->part_m = alloc_block(m->n_part);
    m->part_v = alloc_block(m->n_part);
    if (!m->part_params || !m->part_grads || !m->part_m || !m->part_v) goto oom;
  }
  for (size_t i = 0; i < m->n_tensors; i++) {
    struct eellm_tensor *t = &m->tensors[i];
    t->param = register_tensor(m, t, part_block(m, t, EELLM_COPY_PARAM), t->owner);
    t->grad = register_tensor(m, t, part_block(m, t, EELLM_COPY_GRAD), t->owner);
    t->m = register_tensor(m, t, part_block(m, t, EELLM_COPY_M), t->owner);
    t->v = register_tensor(m, t, part_block(m, t, EELLM_COPY_V), t->owner);
  }
  add_shadows(m);
  m->sumsq = calloc(m->n_tensors, sizeof *m->sumsq);
  m->sumsq_h = calloc(m->n_tensors, sizeof *m->sumsq_h);
  if (!m->sumsq || !m->sumsq_h) goto oom;
  for (size_t i = 0; i < m->n_tensors; i++) {
    starpu_vector_data_register(&m->sumsq_h[i], STARPU_MAIN_RAM, (uintptr_t)&m->sumsq[i], 1,
                                sizeof(double));
    eellm_mpi_register(m->sumsq_h[i], eellm_stage_rank(&m->place, m->tensors[i].owner));
  }
  starpu_vector_data_register(&m->clip_h, STARPU_MAIN_RAM, (uintptr_t)m->clip, 2, sizeof(float));
  eellm_mpi_register(m->clip_h, eellm_root_rank(&m->place));
  if (setup_collectives(m, err, errlen) != 0) {
    eellm_model_destroy(m);
    return NULL;
  }
  return m;
oom:
  snprintf(err, errlen,
           "out of memory building the model: %zu parameters need %.1f GiB for weights, "
           "gradients and AdamW moments",
           m->n_params, 16.0 * m->n_params / (1024.0 * 1024 * 1024));
  eellm_model_destroy(m);
  return NULL;
}

void eellm_model_destroy(eellm_model *m) {
  if (!m) return;
  if (m->n_tensors) eellm_mpi_quiesce();
  eellm_step_free(m);
  for (size_t i = 0; i < m->n_tensors; i++) {
    struct eellm_tensor *t = &m->tensors[i];
    if (!t->param) continue;
    starpu_data_unregister(t->param);
    starpu_data_unregister(t->grad);
    starpu_data_unregister(t->m);
    starpu_data_unregister(t->v);
  }
  for (size_t i = 0; m->sumsq_h && i < m->n_tensors; i++)
    if (m->sumsq_h[i]) starpu_data_unregister(m->sumsq_h[i]);
  if (m->clip_h) starpu_data_unregister(m->clip_h);
  for (size_t i = 0; i < m->n_shadows; i++) starpu_data_unregister(m->shadows[i].grad);
  for (unsigned st = 0; m->seq_h && st < m->place.layout.pp; st++)
    if (m->seq_h[st]) starpu_data_unregister(m->seq_h[st]);
  free(m->seq_h);
  free(m->seq_bytes);
  if (m->dp_comm != MPI_COMM_NULL) MPI_Comm_free(&m->dp_comm);
  if (m->tp_comm != MPI_COMM_NULL) MPI_Comm_free(&m->tp_comm);
  free_block(m->part_params, m->n_part);
  free_block(m->part_grads, m->n_part);
  free_block(m->part_m, m->n_part);
  free_block(m->part_v, m->n_part);
  free(m->shadows);
  eellm_placement_free(&m->place);
  free(m->sumsq);
  free(m->sumsq_h);
  free_block(m->params, m->n_params);
  free_block(m->grads, m->n_params);
  free_block(m->adam_m, m->n_params);
  free_block(m->adam_v, m->n_params);
  free(m->tensors);
  free(m->layers);
  free(m->exits);
  free(m->exit_order);
  eellm_model_spec_free(m->spec);
  free(m);
}

/* Normal numbers from splitmix64 and Box-Muller: the same weights on every machine. */
struct normal_rng {
  uint64_t state;
};

static double uniform01(struct normal_rng *r) {
  return ((eellm_splitmix64_next(&r->state) >> 11) + 0.5) / 9007199254740992.0;
}

static double normal(struct normal_rng *r) {
  double u1 = uniform01(r), u2 = uniform01(r);
  return sqrt(-2 * log(u1)) * cos(2 * M_PI * u2);
}

static int is_residual_projection(const char *name) {
  return strstr(name, "c_proj.weight") != NULL;
}

void eellm_model_init(eellm_model *m, uint64_t seed) {
  starpu_task_wait_for_all();
  double std = m->spec->init_std;
  double residual_std = std / sqrt(2.0 * m->spec->n_layers);
  for (size_t i = 0; i < m->n_tensors; i++) {
    struct eellm_tensor *t = &m->tensors[i];
    /* A stream per tensor: the same weights whichever stage draws them. */
    struct normal_rng rng = {(seed * 0x2545f4914f6cdd1dull + 1) ^ (i * EELLM_SPLITMIX64_GAMMA)};
    if (!eellm_model_owns(m, i)) continue;
    /* A split tensor draws the whole stream and keeps its part. */
    int whole = t->part.split == EELLM_SPLIT_NONE;
    float *p = whole ? m->params + t->offset : malloc(t->numel * sizeof *p);
    if (!p) abort();
    if (whole) starpu_data_acquire(t->param, STARPU_W);
    int is_gain = !t->rows && strstr(t->name, "ln_") && strstr(t->name, ".weight");
    double s = is_residual_projection(t->name) ? residual_std : std;
    for (size_t j = 0; j < t->numel; j++)
      p[j] = t->rows ? (float)(s * normal(&rng)) : is_gain ? 1.0f : 0.0f;
    if (whole) {
      starpu_data_release(t->param);
      continue;
    }
    eellm_model_put_part(m, i, EELLM_COPY_PARAM, p);
    free(p);
  }
}

int eellm_model_find(const struct eellm_model *m, const char *name) {
  for (size_t i = 0; i < m->n_tensors; i++)
    if (strcmp(m->tensors[i].name, name) == 0) return (int)i;
  return -1;
}

const Eellm__Model *eellm_model_spec(const eellm_model *m) { return m->spec; }

void eellm_model_set_tokenizer(eellm_model *m, const char *name) {
  snprintf(m->tokenizer, sizeof m->tokenizer, "%s", name ? name : "");
}

const char *eellm_model_tokenizer(const eellm_model *m) {
  return m->tokenizer[0] ? m->tokenizer : NULL;
}
unsigned eellm_model_micro_batch(const eellm_model *m) { return m->micro_batch; }
unsigned eellm_model_seq_len(const eellm_model *m) { return m->seq_len; }
size_t eellm_model_n_tensors(const eellm_model *m) { return m->n_tensors; }
size_t eellm_model_n_params(const eellm_model *m) { return m->n_params; }
const char *eellm_model_tensor_name(const eellm_model *m, size_t i) { return m->tensors[i].name; }

void eellm_model_tensor_shape(const eellm_model *m, size_t i, size_t *rows, size_t *cols) {
  *rows = m->tensors[i].rows;
  *cols = m->tensors[i].cols;
}

float *eellm_model_tensor_data(eellm_model *m, size_t i) { return m->params + m->tensors[i].offset; }
float *eellm_model_tensor_grad(eellm_model *m, size_t i) { return m->grads + m->tensors[i].offset; }

void eellm_model_sync(eellm_model *m) {
  eellm_step_flush(m);
  starpu_task_wait_for_all();
  if (!eellm_gathers(&m->place)) return;
  for (size_t i = 0; i < m->n_tensors; i++) {
    eellm_model_gather_copy(m, i, EELLM_COPY_PARAM, 0);
    eellm_model_gather_copy(m, i, EELLM_COPY_GRAD, 0);
  }
}
