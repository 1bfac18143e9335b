/* StarPU glue of the softmax cross-entropy over the vocabulary with a loss mask,
 * a temperature and an optional per-row confidence weight (kernels in
 * cpu/crossentropy.c and cuda/crossentropy.cu), and of its vocabulary-parallel
 * form (host only for now: its kernels have no GPU twins yet; the exchange of
 * row statistics is collective.c's). */
#include "glue.h"

struct xent_args {
  float temperature;
  float scale; /* backward only */
  int dynamic; /* weigh each row by its largest probability */
};

EELLM_CODELET(xent_fwd)
EELLM_CODELET(xent_fwd_bwd)

/* logits [N, V] (R), targets [N] int32 (R), mask [N] (R), stats [2] double (W). */
static void xent_fwd_cpu(void *buffers[], void *cl_arg) {
  const struct xent_args *args = cl_arg;
  struct eellm_tensor_view z = eellm_tensor_view(buffers[0]);
  eellm_cpu_xent_fwd(z.rows, z.cols, (const float *)z.ptr, z.ld,
                     (const int32_t *)STARPU_VECTOR_GET_PTR(buffers[1]),
                     (const float *)STARPU_VECTOR_GET_PTR(buffers[2]), args->temperature,
                     args->dynamic, (double *)STARPU_VECTOR_GET_PTR(buffers[3]));
}

/* logits [N, V] (R), targets [N] int32 (R), mask [N] (R), stats [2] double (W),
 * dlogits [N, V] (W), and with CUDA work (SCRATCH) for xent_fwd_cuda. */
static void xent_fwd_bwd_cpu(void *buffers[], void *cl_arg) {
  const struct xent_args *args = cl_arg;
  struct eellm_tensor_view z = eellm_tensor_view(buffers[0]), dz = eellm_tensor_view(buffers[4]);
  eellm_cpu_xent_fwd_bwd(z.rows, z.cols, (const float *)z.ptr, z.ld,
                         (const int32_t *)STARPU_VECTOR_GET_PTR(buffers[1]),
                         (const float *)STARPU_VECTOR_GET_PTR(buffers[2]), args->scale,
                         args->temperature, args->dynamic,
                         (double *)STARPU_VECTOR_GET_PTR(buffers[3]), (float *)dz.ptr, dz.ld);
}

#ifdef STARPU_USE_CUDA
/* As xent_fwd_cpu, with work (SCRATCH): the rows' losses. */
static void xent_fwd_cuda(void *buffers[], void *cl_arg) {
  const struct xent_args *args = cl_arg;
  struct eellm_tensor_view z = eellm_tensor_view(buffers[0]);
  eellm_cuda_xent_fwd(z.rows, z.cols, (const float *)z.ptr, z.ld,
                      (const int32_t *)STARPU_VECTOR_GET_PTR(buffers[1]),
                      (const float *)STARPU_VECTOR_GET_PTR(buffers[2]), args->temperature,
                      args->dynamic, (double *)STARPU_VECTOR_GET_PTR(buffers[3]),
                      (void *)STARPU_VECTOR_GET_PTR(buffers[4]), starpu_cuda_get_local_stream());
}

/* The two kernels one after the other on the worker's stream (the GPU's are
 * not fused yet: the backward reads the forward's count). */
static void xent_fwd_bwd_cuda(void *buffers[], void *cl_arg) {
  const struct xent_args *args = cl_arg;
  struct eellm_tensor_view z = eellm_tensor_view(buffers[0]), dz = eellm_tensor_view(buffers[4]);
  const int32_t *targets = (const int32_t *)STARPU_VECTOR_GET_PTR(buffers[1]);
  const float *mask = (const float *)STARPU_VECTOR_GET_PTR(buffers[2]);
  double *stats = (double *)STARPU_VECTOR_GET_PTR(buffers[3]);
  cudaStream_t stream = starpu_cuda_get_local_stream();
  eellm_cuda_xent_fwd(z.rows, z.cols, (const float *)z.ptr, z.ld, targets, mask, args->temperature,
                      args->dynamic, stats, (void *)STARPU_VECTOR_GET_PTR(buffers[5]), stream);
  eellm_cuda_xent_bwd(z.rows, z.cols, (const float *)z.ptr, z.ld, targets, mask, stats, args->scale,
                      args->temperature, args->dynamic, (float *)dz.ptr, dz.ld, stream);
}
#endif

static void check_temperature(float temperature) {
  if (!(temperature > 0)) {
    fprintf(stderr, "eellm: cross-entropy temperature %g must be positive\n", temperature);
    abort();
  }
}

void eellm_insert_xent_fwd(starpu_data_handle_t logits, starpu_data_handle_t targets,
                           starpu_data_handle_t mask, starpu_data_handle_t stats,
                           float temperature, int dynamic,
                           const struct eellm_task_info *info) {
  check_temperature(temperature);
  struct xent_args args = {temperature, 0, dynamic};
  struct starpu_data_descr buffers[5] = {
      {logits, STARPU_R},
      {targets, STARPU_R},
      {mask, STARPU_R},
      {stats, STARPU_W},
  };
  int n = eellm_add_scratch(
      buffers, 4,
      EELLM_WORK_BYTES(0, eellm_cuda_xent_fwd_work_bytes(starpu_matrix_get_ny(logits))));
  eellm_submit(&xent_fwd_cl, buffers, n, &args, sizeof args, info);
}

void eellm_insert_xent_fwd_bwd(starpu_data_handle_t logits, starpu_data_handle_t targets,
                               starpu_data_handle_t mask, starpu_data_handle_t stats,
                               starpu_data_handle_t dlogits, float scale, float temperature,
                               int dynamic, const struct eellm_task_info *info) {
  check_temperature(temperature);
  struct xent_args args = {temperature, scale, dynamic};
  struct starpu_data_descr buffers[6] = {
      {logits, STARPU_R}, {targets, STARPU_R}, {mask, STARPU_R},
      {stats, STARPU_W},  {dlogits, STARPU_W},
  };
  int n = eellm_add_scratch(
      buffers, 5,
      EELLM_WORK_BYTES(0, eellm_cuda_xent_fwd_work_bytes(starpu_matrix_get_ny(logits))));
  eellm_submit(&xent_fwd_bwd_cl, buffers, n, &args, sizeof args, info);
}

/* ---- vocabulary-parallel -------------------------------------------------- */

struct xent_part_args {
  float temperature;
  float scale; /* backward only */
  int dynamic;
  size_t vocab_lo;
};

EELLM_CODELET_CPU(xent_part_stats)
EELLM_CODELET_CPU(xent_stats_fwd)
EELLM_CODELET_CPU(xent_part_bwd)

/* logits [N, V] (R), targets [N] int32 (R), rowstats [N, 3] (W). */
static void xent_part_stats_cpu(void *buffers[], void *cl_arg) {
  const struct xent_part_args *a = cl_arg;
  struct eellm_tensor_view z = eellm_tensor_view(buffers[0]), s = eellm_tensor_view(buffers[2]);
  eellm_cpu_xent_part_stats(z.rows, z.cols, (const float *)z.ptr, z.ld,
                            (const int32_t *)STARPU_VECTOR_GET_PTR(buffers[1]), a->vocab_lo,
                            a->temperature, (float *)s.ptr);
}

/* rowstats [N, 3] (R), mask [N] (R), stats [2] double (W). */
static void xent_stats_fwd_cpu(void *buffers[], void *cl_arg) {
  const struct xent_part_args *a = cl_arg;
  struct eellm_tensor_view s = eellm_tensor_view(buffers[0]);
  eellm_cpu_xent_stats_fwd(s.rows, (const float *)s.ptr,
                           (const float *)STARPU_VECTOR_GET_PTR(buffers[1]), a->dynamic,
                           (double *)STARPU_VECTOR_GET_PTR(buffers[2]));
}

/* logits [N, V] (R), targets (R), mask (R), rowstats [N, 3] (R), stats [2] (R), dlogits (W). */
static void xent_part_bwd_cpu(void *buffers[], void *cl_arg) {
  const struct xent_part_args *a = cl_arg;
  struct eellm_tensor_view z = eellm_tensor_view(buffers[0]), s = eellm_tensor_view(buffers[3]),
                           dz = eellm_tensor_view(buffers[5]);
  eellm_cpu_xent_part_bwd(z.rows, z.cols, (const float *)z.ptr, z.ld,
                          (const int32_t *)STARPU_VECTOR_GET_PTR(buffers[1]), a->vocab_lo,
                          (const float *)STARPU_VECTOR_GET_PTR(buffers[2]), (const float *)s.ptr,
                          (const double *)STARPU_VECTOR_GET_PTR(buffers[4]), a->scale,
                          a->temperature, a->dynamic, (float *)dz.ptr, dz.ld);
}

void eellm_insert_xent_part_stats(starpu_data_handle_t logits, starpu_data_handle_t targets,
                                  starpu_data_handle_t rowstats, size_t vocab_lo, float temperature,
                                  const struct eellm_task_info *info) {
  struct xent_part_args args = {.temperature = temperature, .vocab_lo = vocab_lo};
  struct starpu_data_descr buffers[] = {{logits, STARPU_R}, {targets, STARPU_R},
                                        {rowstats, STARPU_W}};
  eellm_submit(&xent_part_stats_cl, buffers, 3, &args, sizeof args, info);
}

void eellm_insert_xent_stats_fwd(starpu_data_handle_t rowstats, starpu_data_handle_t mask,
                                 starpu_data_handle_t stats, int dynamic,
                                 const struct eellm_task_info *info) {
  struct xent_part_args args = {.dynamic = dynamic};
  struct starpu_data_descr buffers[] = {{rowstats, STARPU_R}, {mask, STARPU_R}, {stats, STARPU_W}};
  eellm_submit(&xent_stats_fwd_cl, buffers, 3, &args, sizeof args, info);
}

void eellm_insert_xent_part_bwd(starpu_data_handle_t logits, starpu_data_handle_t targets,
                                starpu_data_handle_t mask, starpu_data_handle_t rowstats,
                                starpu_data_handle_t stats, starpu_data_handle_t dlogits,
                                size_t vocab_lo, float scale, float temperature, int dynamic,
                                const struct eellm_task_info *info) {
  struct xent_part_args args = {temperature, scale, dynamic, vocab_lo};
  struct starpu_data_descr buffers[] = {{logits, STARPU_R},   {targets, STARPU_R},
                                        {mask, STARPU_R},     {rowstats, STARPU_R},
                                        {stats, STARPU_R},    {dlogits, STARPU_W}};
  eellm_submit(&xent_part_bwd_cl, buffers, 6, &args, sizeof args, info);
}
