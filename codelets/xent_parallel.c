/* StarPU glue of the vocabulary-parallel cross-entropy (kernels in
 * cpu/xent_parallel.c; the exchange of row statistics is collective.c's). Host
 * only for now: the kernels have no GPU twins yet. */
#include "glue.h"

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
