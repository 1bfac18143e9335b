/* StarPU glue of the global gradient norm (per-tensor sums of squares, then one
 * clip scale) and the AdamW update (kernels in cpu/optimizer.c and
 * cuda/optimizer.cu). */
#include <math.h>

#include "glue.h"

struct clip_args {
  float max_norm;
  int n_sumsqs;
};

struct adamw_args {
  struct eellm_adamw_step hp;
  int has_clip;
};

EELLM_CODELET(sumsq)
EELLM_CODELET(clip_scale)
EELLM_CODELET(adamw)

/* grad [R, C] or [n] (R), sumsq [1] double (W). */
static void sumsq_cpu(void *buffers[], void *cl_arg) {
  (void)cl_arg;
  struct eellm_tensor_view g = eellm_tensor_view(buffers[0]);
  ((double *)STARPU_VECTOR_GET_PTR(buffers[1]))[0] =
      eellm_cpu_sumsq(g.rows, g.cols, (const float *)g.ptr, g.ld);
}

/* sumsq_0 .. sumsq_{n-1} [1] double (R), clip [2] float (W): norm, scale,
 * work (SCRATCH, with CUDA). */
static void clip_scale_cpu(void *buffers[], void *cl_arg) {
  const struct clip_args *args = cl_arg;
  int n = args->n_sumsqs;
  double total = 0;
  for (int i = 0; i < n; i++) total += ((const double *)STARPU_VECTOR_GET_PTR(buffers[i]))[0];
  eellm_cpu_clip_scale(total, args->max_norm, (float *)STARPU_VECTOR_GET_PTR(buffers[n]));
}

/* Views the four tensors with one common row length: a padded matrix fixes it,
 * contiguous tensors are flat and take any. Aborts if the layouts disagree. */
static void common_rows(struct eellm_tensor_view views[4]) {
  size_t n = views[0].rows * views[0].cols, cols = n;
  for (int i = 0; i < 4; i++)
    if (views[i].rows > 1 && views[i].ld != views[i].cols) cols = views[i].cols;
  for (int i = 0; i < 4; i++) {
    int fits = views[i].rows * views[i].cols == n;
    int contiguous = views[i].rows == 1 || views[i].ld == views[i].cols;
    if (fits && contiguous && cols > 0 && n % cols == 0)
      views[i] = (struct eellm_tensor_view){views[i].ptr, n / cols, cols, cols, views[i].elemsize};
    if (!fits || views[i].cols != cols) {
      fprintf(stderr, "eellm: adamw: parameter, gradient and moments have different layouts\n");
      abort();
    }
  }
}

/* param (RW), grad (R), m (RW), v (RW): matrices or vectors of equal size, seen
 * with one common row length. */
static void adamw_views(void *buffers[], struct eellm_tensor_view t[4]) {
  for (int i = 0; i < 4; i++) t[i] = eellm_tensor_view(buffers[i]);
  common_rows(t);
}

/* param, grad, m, v (adamw_views); clip [2] float (R, optional). A non-finite
 * gradient norm in clip[0] skips the step: parameter and moments stay as they
 * are, bit for bit. */
static void adamw_cpu(void *buffers[], void *cl_arg) {
  const struct adamw_args *args = cl_arg;
  if (args->has_clip && !isfinite(((const float *)STARPU_VECTOR_GET_PTR(buffers[4]))[0])) return;
  struct eellm_tensor_view t[4];
  adamw_views(buffers, t);
  float grad_scale =
      args->has_clip ? ((const float *)STARPU_VECTOR_GET_PTR(buffers[4]))[1] : 1.0f;
  eellm_cpu_adamw(t[0].rows, t[0].cols, (float *)t[0].ptr, t[0].ld, (const float *)t[1].ptr,
                  t[1].ld, (float *)t[2].ptr, t[2].ld, (float *)t[3].ptr, t[3].ld, &args->hp,
                  grad_scale);
}

#ifdef STARPU_USE_CUDA
/* As sumsq_cpu, with work (SCRATCH): the blocks' partial sums. */
static void sumsq_cuda(void *buffers[], void *cl_arg) {
  (void)cl_arg;
  struct eellm_tensor_view g = eellm_tensor_view(buffers[0]);
  eellm_cuda_sumsq(g.rows, g.cols, (const float *)g.ptr, g.ld,
                   (double *)STARPU_VECTOR_GET_PTR(buffers[1]),
                   (void *)STARPU_VECTOR_GET_PTR(buffers[2]), starpu_cuda_get_local_stream());
}

static void clip_scale_cuda(void *buffers[], void *cl_arg) {
  const struct clip_args *args = cl_arg;
  int n = args->n_sumsqs;
  const double **sumsqs = malloc(((size_t)n + 1) * sizeof *sumsqs);
  if (!sumsqs) {
    fprintf(stderr, "eellm: clip_scale: out of memory for %d pointers\n", n);
    abort();
  }
  for (int i = 0; i < n; i++) sumsqs[i] = (const double *)STARPU_VECTOR_GET_PTR(buffers[i]);
  eellm_cuda_clip_scale(
      (size_t)n, sumsqs, args->max_norm, (float *)STARPU_VECTOR_GET_PTR(buffers[n]),
      (void *)STARPU_VECTOR_GET_PTR(buffers[n + 1]), starpu_cuda_get_local_stream());
  free(sumsqs); /* the launches copied the pointers into their parameters */
}

/* As adamw_cpu; the kernel reads clip on the device (and skips a non-finite step). */
static void adamw_cuda(void *buffers[], void *cl_arg) {
  const struct adamw_args *args = cl_arg;
  struct eellm_tensor_view t[4];
  adamw_views(buffers, t);
  struct eellm_adamw_consts k = eellm_cpu_adamw_consts(&args->hp);
  eellm_cuda_adamw(t[0].rows, t[0].cols, (float *)t[0].ptr, t[0].ld, (const float *)t[1].ptr,
                   t[1].ld, (float *)t[2].ptr, t[2].ld, (float *)t[3].ptr, t[3].ld, &k,
                   args->has_clip ? (const float *)STARPU_VECTOR_GET_PTR(buffers[4]) : NULL,
                   starpu_cuda_get_local_stream());
}
#endif

void eellm_insert_sumsq(starpu_data_handle_t grad, starpu_data_handle_t sumsq,
                        const struct eellm_task_info *info) {
  struct starpu_data_descr buffers[3] = {
      {grad, STARPU_R},
      {sumsq, STARPU_W},
  };
  int n = eellm_add_scratch(buffers, 2, EELLM_WORK_BYTES(0, eellm_cuda_sumsq_work_bytes()));
  static const char no_args; /* eellm_submit copies args_size = 0 bytes from here */
  eellm_submit(&sumsq_cl, buffers, n, &no_args, 0, info);
}

void eellm_insert_clip_scale(starpu_data_handle_t *sumsqs, int n, starpu_data_handle_t clip,
                             float max_norm, const struct eellm_task_info *info) {
  struct starpu_data_descr *buffers = malloc(((size_t)n + 2) * sizeof *buffers);
  if (!buffers) {
    fprintf(stderr, "eellm: clip_scale: out of memory for %d buffers\n", n + 2);
    abort();
  }
  for (int i = 0; i < n; i++) buffers[i] = (struct starpu_data_descr){sumsqs[i], STARPU_R};
  buffers[n] = (struct starpu_data_descr){clip, STARPU_W};
  /* On a GPU the running total of the sums lives in work. */
  int n_buffers = eellm_add_scratch(buffers, n + 1, EELLM_WORK_BYTES(0, sizeof(double)));
  struct clip_args args = {max_norm, n};
  eellm_submit(&clip_scale_cl, buffers, n_buffers, &args, sizeof args, info);
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
