/* Global gradient norm (per-tensor sums of squares, then one clip scale) and
 * the AdamW update with PyTorch's torch.optim.AdamW semantics. */
#include "codelets.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

/* A float matrix or vector seen as `rows` rows of `cols` elements, `ld` apart. */
struct rows_view {
  float *ptr;
  size_t rows, cols, ld;
};

/* Both interfaces start with their id, so the buffer says which one it is. */
static struct rows_view rows_view(void *buffer) {
  if (*(const enum starpu_data_interface_id *)buffer == STARPU_MATRIX_INTERFACE_ID)
    return (struct rows_view){(float *)STARPU_MATRIX_GET_PTR(buffer), STARPU_MATRIX_GET_NY(buffer),
                              STARPU_MATRIX_GET_NX(buffer), STARPU_MATRIX_GET_LD(buffer)};
  size_t n = STARPU_VECTOR_GET_NX(buffer);
  return (struct rows_view){(float *)STARPU_VECTOR_GET_PTR(buffer), 1, n, n};
}

/* grad [R, C] or [n] (R), sumsq [1] double (W). */
static void sumsq_cpu(void *buffers[], void *cl_arg) {
  (void)cl_arg;
  struct rows_view g = rows_view(buffers[0]);
  double *sumsq = (double *)STARPU_VECTOR_GET_PTR(buffers[1]);
  double sum = 0;
  for (size_t r = 0; r < g.rows; r++) {
    const float *row = g.ptr + r * g.ld;
    for (size_t c = 0; c < g.cols; c++) sum += (double)row[c] * row[c];
  }
  sumsq[0] = sum;
}

struct clip_args {
  float max_norm;
};

/* sumsq_0 .. sumsq_{n-1} [1] double (R), clip [2] float (W): norm, scale. */
static void clip_scale_cpu(void *buffers[], void *cl_arg) {
  const struct clip_args *args = cl_arg;
  unsigned n = STARPU_TASK_GET_NBUFFERS(starpu_task_get_current()) - 1;
  double total = 0;
  for (unsigned i = 0; i < n; i++) total += ((const double *)STARPU_VECTOR_GET_PTR(buffers[i]))[0];
  double norm = sqrt(total);
  double scale = 1;
  if (args->max_norm > 0) scale = fmin(1.0, args->max_norm / (norm + 1e-6));
  float *clip = (float *)STARPU_VECTOR_GET_PTR(buffers[n]);
  clip[0] = (float)norm;
  clip[1] = (float)scale;
}

struct adamw_args {
  struct eellm_adamw_step hp;
  int has_clip;
};

/* Per-step constants, computed in double as PyTorch does in Python. */
struct adamw_consts {
  float lr, beta1, beta2, eps, decay, step_size, bias2_sqrt, grad_scale;
};

static void adamw_elements(float *p, const float *g, float *m, float *v, size_t n,
                           const struct adamw_consts *k) {
  for (size_t i = 0; i < n; i++) {
    float grad = g[i] * k->grad_scale;
    m[i] = k->beta1 * m[i] + (1 - k->beta1) * grad;
    v[i] = k->beta2 * v[i] + (1 - k->beta2) * grad * grad;
    float denom = sqrtf(v[i]) / k->bias2_sqrt + k->eps;
    p[i] = p[i] * k->decay - k->step_size * m[i] / denom;
  }
}

/* Views the four tensors with one common row length: a padded matrix fixes it,
 * contiguous tensors are flat and take any. Aborts if the layouts disagree. */
static void common_rows(struct rows_view views[4]) {
  size_t n = views[0].rows * views[0].cols, cols = n;
  for (int i = 0; i < 4; i++)
    if (views[i].rows > 1 && views[i].ld != views[i].cols) cols = views[i].cols;
  for (int i = 0; i < 4; i++) {
    int fits = views[i].rows * views[i].cols == n;
    int contiguous = views[i].rows == 1 || views[i].ld == views[i].cols;
    if (fits && contiguous && cols > 0 && n % cols == 0)
      views[i] = (struct rows_view){views[i].ptr, n / cols, cols, cols};
    if (!fits || views[i].cols != cols) {
      fprintf(stderr, "eellm: adamw: parameter, gradient and moments have different layouts\n");
      abort();
    }
  }
}

/* param (RW), grad (R), m (RW), v (RW): matrices or vectors of equal size;
 * clip [2] float (R, optional). */
static void adamw_cpu(void *buffers[], void *cl_arg) {
  const struct adamw_args *args = cl_arg;
  const struct eellm_adamw_step *hp = &args->hp;
  struct rows_view views[4];
  for (int i = 0; i < 4; i++) views[i] = rows_view(buffers[i]);
  common_rows(views);
  double bias1 = 1 - pow(hp->beta1, hp->step), bias2 = 1 - pow(hp->beta2, hp->step);
  struct adamw_consts k = {
      .lr = hp->lr,
      .beta1 = hp->beta1,
      .beta2 = hp->beta2,
      .eps = hp->eps,
      .decay = (float)(1 - (double)hp->lr * hp->weight_decay),
      .step_size = (float)(hp->lr / bias1),
      .bias2_sqrt = (float)sqrt(bias2),
      .grad_scale = args->has_clip ? ((const float *)STARPU_VECTOR_GET_PTR(buffers[4]))[1] : 1.0f,
  };
  for (size_t r = 0; r < views[0].rows; r++) {
    float *row[4];
    for (int i = 0; i < 4; i++) row[i] = views[i].ptr + r * views[i].ld;
    adamw_elements(row[0], row[1], row[2], row[3], views[0].cols, &k);
  }
}

static struct starpu_perfmodel sumsq_model = {.type = STARPU_HISTORY_BASED,
                                              .symbol = "eellm_sumsq"};
static struct starpu_perfmodel clip_scale_model = {.type = STARPU_HISTORY_BASED,
                                                   .symbol = "eellm_clip_scale"};
static struct starpu_perfmodel adamw_model = {.type = STARPU_HISTORY_BASED,
                                              .symbol = "eellm_adamw"};

static struct starpu_codelet sumsq_cl = {
    .cpu_funcs = {sumsq_cpu},
    .cpu_funcs_name = {"sumsq_cpu"},
    .nbuffers = STARPU_VARIABLE_NBUFFERS,
    .model = &sumsq_model,
    .name = "sumsq",
};
static struct starpu_codelet clip_scale_cl = {
    .cpu_funcs = {clip_scale_cpu},
    .cpu_funcs_name = {"clip_scale_cpu"},
    .nbuffers = STARPU_VARIABLE_NBUFFERS,
    .model = &clip_scale_model,
    .name = "clip_scale",
};
static struct starpu_codelet adamw_cl = {
    .cpu_funcs = {adamw_cpu},
    .cpu_funcs_name = {"adamw_cpu"},
    .nbuffers = STARPU_VARIABLE_NBUFFERS,
    .model = &adamw_model,
    .name = "adamw",
};

void eellm_insert_sumsq(starpu_data_handle_t grad, starpu_data_handle_t sumsq,
                        const struct eellm_task_info *info) {
  struct starpu_data_descr buffers[] = {
      {grad, STARPU_R},
      {sumsq, STARPU_W},
  };
  static const char no_args; /* eellm_submit copies args_size = 0 bytes from here */
  eellm_submit(&sumsq_cl, buffers, 2, &no_args, 0, info);
}

void eellm_insert_clip_scale(starpu_data_handle_t *sumsqs, int n, starpu_data_handle_t clip,
                             float max_norm, const struct eellm_task_info *info) {
  struct starpu_data_descr *buffers = malloc(((size_t)n + 1) * sizeof *buffers);
  if (!buffers) {
    fprintf(stderr, "eellm: clip_scale: out of memory for %d buffers\n", n + 1);
    abort();
  }
  for (int i = 0; i < n; i++) buffers[i] = (struct starpu_data_descr){sumsqs[i], STARPU_R};
  buffers[n] = (struct starpu_data_descr){clip, STARPU_W};
  struct clip_args args = {max_norm};
  eellm_submit(&clip_scale_cl, buffers, n + 1, &args, sizeof args, info);
  free(buffers);
}

void eellm_insert_adamw(starpu_data_handle_t param, starpu_data_handle_t grad,
                        starpu_data_handle_t m, starpu_data_handle_t v,
                        starpu_data_handle_t clip, const struct eellm_adamw_step *hp,
                        const struct eellm_task_info *info) {
  struct adamw_args args = {*hp, clip != NULL};
  struct starpu_data_descr buffers[] = {
      {param, STARPU_RW}, {grad, STARPU_R}, {m, STARPU_RW}, {v, STARPU_RW}, {clip, STARPU_R},
  };
  eellm_submit(&adamw_cl, buffers, clip ? 5 : 4, &args, sizeof args, info);
}
