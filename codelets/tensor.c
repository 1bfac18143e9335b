/* StarPU glue of the whole-tensor helpers on matrix or vector handles (kernels
 * in cpu/tensor.c and cuda/tensor.cu): zero, dst += alpha * src, dst = src, and
 * setting a vector from bytes carried by the task itself, on the host (the bytes
 * are in main memory; StarPU moves the result to where its readers run). */
#include "glue.h"

struct axpy_args {
  float alpha;
};

EELLM_CODELET(zero)
EELLM_CODELET(axpy)
EELLM_CODELET(copy)
EELLM_CODELET_CPU(vector_set)

/* Aborts unless dst and src have one shape and element size (a graph's bug). */
static void check_same_shape(const char *op, const struct eellm_tensor_view *dst,
                             const struct eellm_tensor_view *src) {
  if (dst->rows != src->rows || dst->cols != src->cols || dst->elemsize != src->elemsize) {
    fprintf(stderr, "eellm: %s of [%zu, %zu] into [%zu, %zu]\n", op, src->rows, src->cols,
            dst->rows, dst->cols);
    abort();
  }
}

/* t: [R, C] matrix or [C] vector, any element size; padding past C is left alone. */
static void zero_cpu(void *buffers[], void *cl_arg) {
  (void)cl_arg;
  struct eellm_tensor_view t = eellm_tensor_view(buffers[0]);
  eellm_cpu_zero(t.rows, t.cols, t.elemsize, t.ptr, t.ld);
}

/* dst, src: float [R, C] matrices or [C] vectors of the same shape; dst += alpha * src. */
static void axpy_cpu(void *buffers[], void *cl_arg) {
  const struct axpy_args *args = cl_arg;
  struct eellm_tensor_view dst = eellm_tensor_view(buffers[0]);
  struct eellm_tensor_view src = eellm_tensor_view(buffers[1]);
  check_same_shape("axpy", &dst, &src);
  eellm_cpu_axpy(dst.rows, dst.cols, args->alpha, (const float *)src.ptr, src.ld,
                 (float *)dst.ptr, dst.ld);
}

/* dst, src: [R, C] matrices or [C] vectors of one shape and element size; dst = src. */
static void copy_cpu(void *buffers[], void *cl_arg) {
  (void)cl_arg;
  struct eellm_tensor_view dst = eellm_tensor_view(buffers[0]);
  struct eellm_tensor_view src = eellm_tensor_view(buffers[1]);
  check_same_shape("copy", &dst, &src);
  eellm_cpu_copy(dst.rows, dst.cols, dst.elemsize, src.ptr, src.ld, dst.ptr, dst.ld);
}

#ifdef STARPU_USE_CUDA
static void zero_cuda(void *buffers[], void *cl_arg) {
  (void)cl_arg;
  struct eellm_tensor_view t = eellm_tensor_view(buffers[0]);
  eellm_cuda_zero(t.rows, t.cols, t.elemsize, t.ptr, t.ld, starpu_cuda_get_local_stream());
}

static void axpy_cuda(void *buffers[], void *cl_arg) {
  const struct axpy_args *args = cl_arg;
  struct eellm_tensor_view dst = eellm_tensor_view(buffers[0]);
  struct eellm_tensor_view src = eellm_tensor_view(buffers[1]);
  check_same_shape("axpy", &dst, &src);
  eellm_cuda_axpy(dst.rows, dst.cols, args->alpha, (const float *)src.ptr, src.ld, (float *)dst.ptr,
                  dst.ld, starpu_cuda_get_local_stream());
}

static void copy_cuda(void *buffers[], void *cl_arg) {
  (void)cl_arg;
  struct eellm_tensor_view dst = eellm_tensor_view(buffers[0]);
  struct eellm_tensor_view src = eellm_tensor_view(buffers[1]);
  check_same_shape("copy", &dst, &src);
  eellm_cuda_copy(dst.rows, dst.cols, dst.elemsize, src.ptr, src.ld, dst.ptr, dst.ld,
                  starpu_cuda_get_local_stream());
}
#endif

/* v [N] or [R, C] (W) = cl_arg's N (R * C, row by row) elements. */
static void vector_set_cpu(void *buffers[], void *cl_arg) {
  struct eellm_tensor_view v = eellm_tensor_view(buffers[0]);
  eellm_cpu_copy(v.rows, v.cols, v.elemsize, cl_arg, v.cols, v.ptr, v.ld);
}

void eellm_insert_zero(starpu_data_handle_t t, const struct eellm_task_info *info) {
  struct starpu_data_descr buffers[] = {{t, STARPU_W}};
  eellm_submit(&zero_cl, buffers, 1, NULL, 0, info);
}

void eellm_insert_axpy(starpu_data_handle_t dst, starpu_data_handle_t src, float alpha,
                       const struct eellm_task_info *info) {
  struct axpy_args args = {.alpha = alpha};
  struct starpu_data_descr buffers[] = {{dst, STARPU_RW}, {src, STARPU_R}};
  eellm_submit(&axpy_cl, buffers, 2, &args, sizeof args, info);
}

void eellm_insert_copy(starpu_data_handle_t dst, starpu_data_handle_t src,
                       const struct eellm_task_info *info) {
  struct starpu_data_descr buffers[] = {{dst, STARPU_W}, {src, STARPU_R}};
  eellm_submit(&copy_cl, buffers, 2, NULL, 0, info);
}

void eellm_insert_vector_set(starpu_data_handle_t v, const void *data,
                             const struct eellm_task_info *info) {
  struct starpu_data_descr buffers[] = {{v, STARPU_W}};
  /* eellm_submit copies data into the task's argument now. */
  eellm_submit(&vector_set_cl, buffers, 1, data,
               starpu_vector_get_nx(v) * starpu_vector_get_elemsize(v), info);
}

void eellm_insert_matrix_set(starpu_data_handle_t m, const void *data,
                             const struct eellm_task_info *info) {
  struct starpu_data_descr buffers[] = {{m, STARPU_W}};
  eellm_submit(&vector_set_cl, buffers, 1, data,
               starpu_matrix_get_nx(m) * starpu_matrix_get_ny(m) * starpu_matrix_get_elemsize(m),
               info);
}
