/* Loss and optimizer codelets as real StarPU tasks against double-precision
 * references: cross-entropy statistics and dlogits (finite differences of
 * scale * mean masked CE), whole and vocabulary-parallel, per-tensor sums of squares, the clip scale over
 * many of them, and three consecutive AdamW steps; on every backend of the
 * build (tu_for_each_backend). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "codelets/codelets.h"
#include "codelets/collective.h"
#include "codelets/cpu/kernels.h"
#include "testutil.h"

/* ---- cross-entropy ------------------------------------------------------ */

enum mask_kind { MASK_PARTIAL, MASK_FULL, MASK_EMPTY };

struct xent_case {
  size_t N, V;
  float temperature, scale;
  enum mask_kind mask;
};

struct xent_ref {
  const struct xent_case *c;
  double *logits; /* [N, V], perturbed in place by tu_fd */
  const int32_t *targets;
  const float *mask;
};

/* Sum over masked rows of -log softmax(logits / T)[target]; *count = mask sum. */
static double ref_ce_sum(const struct xent_ref *r, double *count) {
  const struct xent_case *c = r->c;
  double sum = 0;
  *count = 0;
  for (size_t n = 0; n < c->N; n++) {
    if (r->mask[n] == 0) continue;
    const double *z = r->logits + n * c->V;
    double max = -INFINITY, exps = 0;
    for (size_t j = 0; j < c->V; j++) max = fmax(max, z[j] / c->temperature);
    for (size_t j = 0; j < c->V; j++) exps += exp(z[j] / c->temperature - max);
    sum += r->mask[n] * (max + log(exps) - z[r->targets[n]] / c->temperature);
    *count += r->mask[n];
  }
  return sum;
}

/* scale * mean masked cross-entropy (0 for an empty mask). */
static double ref_scaled_mean(void *ctx) {
  const struct xent_ref *r = ctx;
  double count, sum = ref_ce_sum(r, &count);
  return count > 0 ? r->c->scale * sum / count : 0;
}

/* A case's inputs: logits in [-4, 4), the case's mask, and targets (masked-out
 * rows carry an ignore index that must never be read). */
struct xent_inputs {
  float *logits, *mask;
  int32_t *targets;
};

static struct xent_inputs xent_inputs(const struct xent_case *c) {
  struct xent_inputs in = {tu_alloc(c->N * c->V), tu_alloc(c->N), malloc(c->N * sizeof(int32_t))};
  if (!in.targets) abort();
  tu_fill(in.logits, c->N * c->V, -4, 4);
  for (size_t n = 0; n < c->N; n++) {
    int on = c->mask == MASK_FULL || (c->mask == MASK_PARTIAL && n % 3 != 1);
    in.mask[n] = on ? 1.0f : 0.0f;
    in.targets[n] = on ? (int32_t)(tu_uniform(0, 1) * (double)c->V) : -1;
  }
  return in;
}

/* stats (and dlogits unless NULL) against the double-precision references; frees the targets. */
static void xent_check(const struct xent_case *c, char *name, size_t len, size_t size,
                       struct xent_inputs in, const double *stats, const float *dlogits) {
  struct xent_ref r = {c, tu_to_f64(in.logits, c->N * c->V), in.targets, in.mask};
  double want_stats[2];
  want_stats[0] = ref_ce_sum(&r, &want_stats[1]);
  float got_stats[2] = {(float)stats[0], (float)stats[1]};
  snprintf(name + len, size - len, " stats (loss sum, mask count)");
  tu_check(name, got_stats, want_stats, 2, 1e-6, 1e-9);
  if (dlogits) {
    double *grad = tu_alloc_f64(c->N * c->V);
    for (size_t i = 0; i < c->N * c->V; i++)
      grad[i] = tu_fd(ref_scaled_mean, &r, r.logits, i, 1e-5);
    snprintf(name + len, size - len, " dlogits vs finite differences");
    tu_check(name, dlogits, grad, c->N * c->V, 1e-4, 1e-8);
  }
  free(in.targets);
}

/* xent_fwd (the loss alone), or xent_fwd_bwd (the loss and its gradient). */
static void xent_run(const struct eellm_task_info *ti, const struct xent_case *c, int backward) {
  char name[128];
  int len = snprintf(name, sizeof name, "xent_fwd%s N%zu V%zu T%.2g scale %.2g mask %d",
                     backward ? "_bwd" : "", c->N, c->V, c->temperature, c->scale, (int)c->mask);
  struct xent_inputs in = xent_inputs(c);
  float *dlogits = tu_alloc(c->N * c->V);
  double *stats = tu_alloc_f64(2);
  for (size_t i = 0; i < c->N * c->V; i++) dlogits[i] = NAN; /* mode W: overwritten unread */
  stats[0] = stats[1] = NAN;
  starpu_data_handle_t h_logits = tu_matrix(in.logits, c->N, c->V);
  starpu_data_handle_t h_targets = tu_vector_i32(in.targets, c->N), h_mask = tu_vector(in.mask, c->N);
  starpu_data_handle_t h_stats = tu_vector_f64(stats, 2);
  if (backward)
    eellm_insert_xent_fwd_bwd(h_logits, h_targets, h_mask, h_stats, tu_matrix(dlogits, c->N, c->V),
                              c->scale, c->temperature, 0, ti);
  else
    eellm_insert_xent_fwd(h_logits, h_targets, h_mask, h_stats, c->temperature, 0, ti);
  tu_sync_all();
  xent_check(c, name, (size_t)len, sizeof name, in, stats, backward ? dlogits : NULL);
}

static void xent_case(const struct eellm_task_info *ti, void *ctx) { xent_run(ti, ctx, 0); }
static void xent_fused_case(const struct eellm_task_info *ti, void *ctx) { xent_run(ti, ctx, 1); }

/* The vocabulary-parallel cross-entropy on the logits split in two uneven
 * parts (columns of one matrix, as two ranks would hold them): each part's
 * row statistics, combined by the all-reduce's kernel, give the loss
 * statistics and each part's columns of dlogits, checked against the same
 * references as the whole row's codelets. */
static void xent_parallel_case(const struct eellm_task_info *ti, void *ctx) {
  const struct xent_case *c = ctx;
  char name[128];
  int len = snprintf(name, sizeof name, "vocab-parallel xent N%zu V%zu T%.2g scale %.2g mask %d",
                     c->N, c->V, c->temperature, c->scale, (int)c->mask);
  struct xent_inputs in = xent_inputs(c);
  float *dlogits = tu_alloc(c->N * c->V);
  float *rowstats[2] = {tu_alloc(3 * c->N), tu_alloc(3 * c->N)};
  double *stats = tu_alloc_f64(2);
  size_t lo[2], n[2];
  for (unsigned k = 0; k < 2; k++) {
    eellm_tp_range(c->V, 2, k, &lo[k], &n[k]);
    eellm_insert_xent_part_stats(tu_matrix_ld(in.logits + lo[k], c->N, n[k], c->V),
                                 tu_vector_i32(in.targets, c->N), tu_matrix(rowstats[k], c->N, 3),
                                 lo[k], c->temperature, ti);
  }
  tu_sync_all();
  eellm_cpu_softmax_stats_combine(rowstats[0], rowstats[1], c->N);
  starpu_data_handle_t h_targets = tu_vector_i32(in.targets, c->N), h_mask = tu_vector(in.mask, c->N);
  starpu_data_handle_t h_rowstats = tu_matrix(rowstats[0], c->N, 3), h_stats = tu_vector_f64(stats, 2);
  eellm_insert_xent_stats_fwd(h_rowstats, h_mask, h_stats, 0, ti);
  for (unsigned k = 0; k < 2; k++)
    eellm_insert_xent_part_bwd(tu_matrix_ld(in.logits + lo[k], c->N, n[k], c->V), h_targets, h_mask,
                               h_rowstats, h_stats, tu_matrix_ld(dlogits + lo[k], c->N, n[k], c->V),
                               lo[k], c->scale, c->temperature, 0, ti);
  tu_sync_all();
  xent_check(c, name, (size_t)len, sizeof name, in, stats, dlogits);
}

/* ---- tensors with padded rows, seen flat -------------------------------- */

/* A float tensor of rows x cols elements, rows ld apart, registered as a
 * matrix or (rows = 1, ld = cols) a vector. */
struct tensor {
  float *data;
  size_t rows, cols, ld;
  int vector;
};

static struct tensor tensor_new(size_t rows, size_t cols, size_t pad, int vector) {
  struct tensor t = {NULL, vector ? 1 : rows, vector ? rows * cols : cols, 0, vector};
  t.ld = t.cols + (vector ? 0 : pad);
  t.data = tu_alloc(t.rows * t.ld);
  return t;
}

static size_t tensor_size(const struct tensor *t) { return t->rows * t->cols; }
static size_t tensor_extent(const struct tensor *t) { return t->rows * t->ld; }

/* Where flat element i lives in t->data. */
static size_t tensor_offset(const struct tensor *t, size_t i) {
  return (i / t->cols) * t->ld + i % t->cols;
}

/* Fills the elements with uniform values and the padding with `padding`. */
static void tensor_fill(struct tensor *t, double lo, double hi, float padding) {
  for (size_t i = 0; i < tensor_extent(t); i++) t->data[i] = padding;
  for (size_t i = 0; i < tensor_size(t); i++)
    t->data[tensor_offset(t, i)] = (float)tu_uniform(lo, hi);
}

static starpu_data_handle_t tensor_handle(struct tensor *t) {
  if (t->vector) return tu_vector(t->data, t->cols);
  return tu_matrix_ld(t->data, t->rows, t->cols, t->ld);
}

/* ---- sumsq and clip_scale ----------------------------------------------- */

#define N_GRADS 10 /* more than StarPU's 8 static buffers per task */

static void sumsq_clip_test(const struct eellm_task_info *ti, void *ctx) {
  (void)ctx;
  /* rows, cols, pad, vector */
  const size_t shapes[N_GRADS][4] = {{3, 5, 0, 0}, {4, 1, 0, 0}, {1, 7, 0, 0}, {6, 4, 3, 0},
                                     {7, 1, 0, 1}, {1, 1, 0, 1}, {2, 9, 0, 0}, {13, 1, 0, 1},
                                     {5, 5, 2, 0}, {4, 1, 0, 1}};
  struct tensor grads[N_GRADS];
  double sumsq[N_GRADS], want_sumsq[N_GRADS], total = 0;
  starpu_data_handle_t h_sumsq[N_GRADS];
  for (int k = 0; k < N_GRADS; k++) {
    grads[k] = tensor_new(shapes[k][0], shapes[k][1], shapes[k][2], (int)shapes[k][3]);
    tensor_fill(&grads[k], -1, 1, NAN); /* padding must never be read */
    want_sumsq[k] = 0;
    for (size_t i = 0; i < tensor_size(&grads[k]); i++) {
      double g = grads[k].data[tensor_offset(&grads[k], i)];
      want_sumsq[k] += g * g;
    }
    total += want_sumsq[k];
    sumsq[k] = NAN;
    h_sumsq[k] = tu_vector_f64(&sumsq[k], 1);
    eellm_insert_sumsq(tensor_handle(&grads[k]), h_sumsq[k], ti);
  }
  double norm = sqrt(total);
  const float max_norms[4] = {(float)(0.5 * norm), (float)(2 * norm), 0, -1};
  float clips[4][2];
  for (int i = 0; i < 4; i++)
    eellm_insert_clip_scale(h_sumsq, N_GRADS, tu_vector(clips[i], 2), max_norms[i], ti);
  tu_sync_all();

  float got_sumsq[N_GRADS];
  for (int k = 0; k < N_GRADS; k++) got_sumsq[k] = (float)sumsq[k];
  tu_check("sumsq of matrices, padded matrices and vectors", got_sumsq, want_sumsq, N_GRADS, 1e-6,
           0);
  const char *names[4] = {"clip_scale clipping", "clip_scale not clipping", "clip_scale max_norm 0",
                          "clip_scale max_norm -1"};
  for (int i = 0; i < 4; i++) {
    double scale = max_norms[i] > 0 ? fmin(1, max_norms[i] / (norm + 1e-6)) : 1;
    double want[2] = {norm, scale};
    tu_check(names[i], clips[i], want, 2, 1e-6, 0);
  }
}

/* ---- adamw -------------------------------------------------------------- */

/* One parameter with its gradient and moments, each with its own layout, and
 * the reference state in double at the same offsets (padding included). */
struct param_group {
  struct tensor p, g, m, v;
  double *want_p, *want_m, *want_v;
};

static const float padding_sentinel = 7.0f;

static struct param_group group_new(struct tensor p, struct tensor g, struct tensor m,
                                    struct tensor v) {
  struct param_group grp = {p, g, m, v, NULL, NULL, NULL};
  tensor_fill(&grp.p, -1, 1, padding_sentinel);
  tensor_fill(&grp.m, 0, 0, padding_sentinel);
  tensor_fill(&grp.v, 0, 0, padding_sentinel);
  grp.want_p = tu_to_f64(grp.p.data, tensor_extent(&grp.p));
  grp.want_m = tu_to_f64(grp.m.data, tensor_extent(&grp.m));
  grp.want_v = tu_to_f64(grp.v.data, tensor_extent(&grp.v));
  return grp;
}

static double grad_sumsq(const struct param_group *grp) {
  double sum = 0;
  for (size_t i = 0; i < tensor_size(&grp->g); i++) {
    double g = grp->g.data[tensor_offset(&grp->g, i)];
    sum += g * g;
  }
  return sum;
}

/* The documented AdamW step in double, gradient scaled by grad_scale. */
static void ref_adamw(struct param_group *grp, const struct eellm_adamw_step *hp,
                      double grad_scale) {
  double b1 = hp->beta1, b2 = hp->beta2;
  for (size_t i = 0; i < tensor_size(&grp->p); i++) {
    double g = grp->g.data[tensor_offset(&grp->g, i)] * grad_scale;
    double *p = &grp->want_p[tensor_offset(&grp->p, i)];
    double *m = &grp->want_m[tensor_offset(&grp->m, i)];
    double *v = &grp->want_v[tensor_offset(&grp->v, i)];
    *m = b1 * *m + (1 - b1) * g;
    *v = b2 * *v + (1 - b2) * g * g;
    double mhat = *m / (1 - pow(b1, hp->step)), vhat = *v / (1 - pow(b2, hp->step));
    *p -= hp->lr * (mhat / (sqrt(vhat) + hp->eps) + hp->weight_decay * *p);
  }
}

enum clip_use { CLIP_ACTIVE, CLIP_INACTIVE, CLIP_NONE };
#define N_GROUPS 3

/* Three steps on three parameter groups: a padded matrix with mixed layouts
 * for its gradient and moments, plain vectors, and matrices padded differently. */
struct adamw_run {
  enum clip_use clip_use;
  float weight_decay;
};

static void adamw_test(const struct eellm_task_info *ti, void *ctx) {
  const struct adamw_run *run = ctx;
  enum clip_use clip_use = run->clip_use;
  float weight_decay = run->weight_decay;
  struct param_group groups[N_GROUPS] = {
      group_new(tensor_new(4, 6, 3, 0), tensor_new(4, 6, 0, 0), tensor_new(4, 6, 0, 1),
                tensor_new(4, 6, 0, 0)),
      group_new(tensor_new(11, 1, 0, 1), tensor_new(11, 1, 0, 1), tensor_new(11, 1, 0, 1),
                tensor_new(11, 1, 0, 1)),
      group_new(tensor_new(3, 5, 2, 0), tensor_new(3, 5, 4, 0), tensor_new(3, 5, 1, 0),
                tensor_new(3, 5, 3, 0)),
  };
  /* eps large enough that its place in the formula shows against gradients ~0.03 */
  struct eellm_adamw_step hp = {.lr = 0.01f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-3f,
                                .weight_decay = weight_decay};
  float max_norm = clip_use == CLIP_ACTIVE ? 0.05f : 100.0f;
  for (unsigned step = 1; step <= 3; step++) {
    hp.step = step;
    double sumsq[N_GROUPS], total = 0;
    float clip[2];
    starpu_data_handle_t h_sumsq[N_GROUPS], h_clip = NULL;
    for (int k = 0; k < N_GROUPS; k++) {
      tensor_fill(&groups[k].g, -0.05, 0.05, NAN);
      total += grad_sumsq(&groups[k]);
      h_sumsq[k] = tu_vector_f64(&sumsq[k], 1);
      eellm_insert_sumsq(tensor_handle(&groups[k].g), h_sumsq[k], ti);
    }
    if (clip_use != CLIP_NONE) {
      h_clip = tu_vector(clip, 2);
      eellm_insert_clip_scale(h_sumsq, N_GROUPS, h_clip, max_norm, ti);
    }
    for (int k = 0; k < N_GROUPS; k++)
      eellm_insert_adamw(tensor_handle(&groups[k].p), tensor_handle(&groups[k].g),
                         tensor_handle(&groups[k].m), tensor_handle(&groups[k].v), h_clip, &hp, ti);
    tu_sync_all();

    double norm = sqrt(total);
    double scale = clip_use == CLIP_NONE ? 1 : fmin(1, max_norm / (norm + 1e-6));
    tu_ok((scale < 1) == (clip_use == CLIP_ACTIVE), "adamw test clips exactly when meant to");
    for (int k = 0; k < N_GROUPS; k++) {
      struct param_group *grp = &groups[k];
      ref_adamw(grp, &hp, scale);
      char name[128];
      int len = snprintf(name, sizeof name, "adamw clip %d wd %.1f step %u group %d", (int)clip_use,
                         weight_decay, step, k);
      snprintf(name + len, sizeof name - len, " param");
      tu_check(name, grp->p.data, grp->want_p, tensor_extent(&grp->p), 1e-5, 1e-7);
      snprintf(name + len, sizeof name - len, " m");
      tu_check(name, grp->m.data, grp->want_m, tensor_extent(&grp->m), 1e-5, 1e-9);
      snprintf(name + len, sizeof name - len, " v");
      tu_check(name, grp->v.data, grp->want_v, tensor_extent(&grp->v), 1e-5, 1e-11);
    }
  }
}

int main(void) {
  tu_start();
  tu_seed(23);
  const struct xent_case xent_cases[] = {
      {14, 37, 1.0f, 1.0f, MASK_PARTIAL},  {14, 37, 0.7f, 0.5f, MASK_PARTIAL},
      {3, 1000, 1.0f, 1.0f, MASK_PARTIAL}, {3, 1000, 0.7f, 2.0f, MASK_FULL},
      {5, 37, 1.0f, 1.0f, MASK_EMPTY},     {5, 1000, 0.7f, 1.0f, MASK_EMPTY},
  };
  static const char *const xent_ops[] = {"xent_fwd", NULL};
  for (size_t i = 0; i < sizeof xent_cases / sizeof xent_cases[0]; i++) {
    const struct xent_case *c = &xent_cases[i];
    char what[96];
    snprintf(what, sizeof what, "xent N%zu V%zu T%.2g scale %.2g mask %d", c->N, c->V,
             c->temperature, c->scale, (int)c->mask);
    tu_for_each_backend(what, xent_ops, xent_case, (void *)c);
    static const char *const fused_ops[] = {"xent_fwd_bwd", NULL};
    tu_for_each_backend(what, fused_ops, xent_fused_case, (void *)c);
    static const char *const parallel_ops[] = {"xent_part_stats", "xent_stats_fwd",
                                               "xent_part_bwd", NULL};
    tu_for_each_backend(what, parallel_ops, xent_parallel_case, (void *)c);
  }
  static const char *const clip_ops[] = {"sumsq", "clip_scale", NULL};
  tu_for_each_backend("sumsq and clip_scale", clip_ops, sumsq_clip_test, NULL);
  static const char *const adamw_ops[] = {"sumsq", "clip_scale", "adamw", NULL};
  const enum clip_use clip_uses[3] = {CLIP_ACTIVE, CLIP_INACTIVE, CLIP_NONE};
  for (int i = 0; i < 3; i++)
    for (int wd = 0; wd < 2; wd++) {
      struct adamw_run run = {clip_uses[i], wd ? 0.1f : 0.0f};
      char what[64];
      snprintf(what, sizeof what, "adamw clip %d wd %.1f", (int)run.clip_use, run.weight_decay);
      tu_for_each_backend(what, adamw_ops, adamw_test, &run);
    }
  return tu_finish();
}
