/* StarPU glue of the next-token choice and exit confidence (kernels in
 * cpu/sample.c and, greedy only, cuda/sample.cu): two codelets, next_token
 * (greedy) and next_token_sampled, which stays on the host (top-k / top-p sort
 * each row). */
#include "glue.h"

struct next_token_args {
  struct eellm_sampling s;
  int has_uniforms, has_limits;
  size_t row0; /* choices are those of rows row0 .. (a block of a split choice) */
};

EELLM_CODELET(next_token)
EELLM_CODELET_CPU(next_token_sampled)

/* logits [M, V] (R), uniforms [M] float (R, optional), limits [M] (R, optional),
 * choices (W) of rows row0 .. row0 + its length - 1, work (SCRATCH, with
 * uniforms or limits). */
static void next_token_cpu(void *buffers[], void *cl_arg) {
  const struct next_token_args *args = cl_arg;
  int b = 0;
  struct eellm_tensor_view z = eellm_tensor_view(buffers[b++]);
  const float *uniforms = NULL;
  const struct eellm_row_limit *limits = NULL;
  if (args->has_uniforms) uniforms = (const float *)STARPU_VECTOR_GET_PTR(buffers[b++]);
  if (args->has_limits)
    limits = (const struct eellm_row_limit *)STARPU_VECTOR_GET_PTR(buffers[b++]);
  struct eellm_token_choice *choices =
      (struct eellm_token_choice *)STARPU_VECTOR_GET_PTR(buffers[b]);
  size_t rows = STARPU_VECTOR_GET_NX(buffers[b++]), r0 = args->row0;
  void *work = uniforms || limits ? (void *)STARPU_VECTOR_GET_PTR(buffers[b]) : NULL;
  eellm_cpu_next_token(rows, z.cols, (const float *)z.ptr + r0 * z.ld, z.ld,
                       uniforms ? uniforms + r0 : NULL, limits ? limits + r0 : NULL, &args->s,
                       choices, work);
}

static void next_token_sampled_cpu(void *buffers[], void *cl_arg) {
  next_token_cpu(buffers, cl_arg);
}

#ifdef STARPU_USE_CUDA
/* logits [M, V] (R), choices [M] (W); greedy. */
static void next_token_cuda(void *buffers[], void *cl_arg) {
  const struct next_token_args *args = cl_arg;
  struct eellm_tensor_view z = eellm_tensor_view(buffers[0]);
  eellm_cuda_next_token_greedy(z.rows, z.cols, (const float *)z.ptr, z.ld, &args->s,
                               (struct eellm_token_choice *)STARPU_VECTOR_GET_PTR(buffers[1]),
                               starpu_cuda_get_local_stream());
}
#endif

/* Several rows of a large vocabulary are split into row blocks, a task each
 * (all reading the whole logits), once they hold SPLIT_MIN_LOGITS logits. */
#define SPLIT_MIN_LOGITS ((size_t)1 << 16)

void eellm_insert_next_token(starpu_data_handle_t logits, starpu_data_handle_t uniforms,
                             starpu_data_handle_t limits, starpu_data_handle_t choices,
                             const struct eellm_sampling *sampling,
                             const struct eellm_task_info *info) {
  if (starpu_vector_get_elemsize(choices) != sizeof(struct eellm_token_choice) ||
      (limits && starpu_vector_get_elemsize(limits) != sizeof(struct eellm_row_limit)) ||
      (sampling->temperature > 0) != (uniforms != NULL)) {
    fprintf(stderr,
            "eellm: next_token: choices must hold struct eellm_token_choice, limits "
            "struct eellm_row_limit, and uniforms come with a temperature > 0 only\n");
    abort();
  }
  struct next_token_args args = {*sampling, uniforms != NULL, limits != NULL, 0};
  struct starpu_data_descr buffers[5];
  int n = 0;
  buffers[n++] = (struct starpu_data_descr){logits, STARPU_R};
  if (uniforms) buffers[n++] = (struct starpu_data_descr){uniforms, STARPU_R};
  if (limits) buffers[n++] = (struct starpu_data_descr){limits, STARPU_R};
  size_t rows = starpu_matrix_get_ny(logits), V = starpu_matrix_get_nx(logits);
  unsigned blocks = rows * V >= SPLIT_MIN_LOGITS ? eellm_split_count(rows) : 1;
  starpu_data_handle_t parts[EELLM_SPLIT_MAX] = {choices};
  if (blocks > 1) eellm_split_outputs(choices, blocks, parts);
  struct starpu_codelet *cl = uniforms || limits ? &next_token_sampled_cl : &next_token_cl;
  size_t work = eellm_cpu_next_token_work_bytes(V, uniforms != NULL, limits != NULL);
  for (unsigned i = 0; i < blocks; i++) {
    args.row0 = eellm_split_at(rows, blocks, i);
    buffers[n] = (struct starpu_data_descr){parts[i], STARPU_W};
    struct eellm_task_info block = eellm_split_info(info, i);
    eellm_submit(cl, buffers, eellm_add_scratch(buffers, n + 1, work), &args, sizeof args,
                 blocks > 1 ? &block : info);
  }
  if (blocks > 1) eellm_join_outputs(choices, blocks, parts, info);
}
