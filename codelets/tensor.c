/* StarPU glue of the whole-tensor helpers on matrix or vector handles (kernels
 * in cpu/tensor.c and cuda/tensor.cu): zero, dst += alpha * src, dst = src, and
 * setting a vector from bytes carried by the task itself, on the host (the bytes
 * are in main memory; StarPU moves the result to where its readers run); and
 * the column blocks of a split task's output, joined on the host. */
#include <stdlib.h>
#include <string.h>

#include "glue.h"

struct axpy_args {
  float alpha;
};

EELLM_CODELET(zero)
EELLM_CODELET(axpy)
EELLM_CODELET(copy)
EELLM_CODELET_CPU(vector_set)
EELLM_CODELET_CPU(join_cols)
EELLM_CODELET_CPU(to_bf16)

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

/* dst [R, C] (matrix or vector), then its column blocks in order, of dst's rows
 * and element size. */
static void join_cols_cpu(void *buffers[], void *cl_arg) {
  (void)cl_arg;
  unsigned n = STARPU_TASK_GET_NBUFFERS(starpu_task_get_current());
  struct eellm_tensor_view dst = eellm_tensor_view(buffers[0]);
  size_t col = 0;
  for (unsigned i = 1; i < n; i++) {
    struct eellm_tensor_view part = eellm_tensor_view(buffers[i]);
    eellm_cpu_copy(part.rows, part.cols, part.elemsize, part.ptr, part.ld,
                   dst.ptr + col * dst.elemsize, dst.ld);
    col += part.cols;
  }
}

/* dst [R, C] of 2-byte elements = src [R, C] floats rounded to bf16. */
static void to_bf16_cpu(void *buffers[], void *cl_arg) {
  (void)cl_arg;
  struct eellm_tensor_view dst = eellm_tensor_view(buffers[0]);
  struct eellm_tensor_view src = eellm_tensor_view(buffers[1]);
  for (size_t r = 0; r < src.rows; r++)
    eellm_cpu_to_bf16(src.cols, (const float *)(src.ptr + r * src.ld * src.elemsize),
                      (uint16_t *)(dst.ptr + r * dst.ld * dst.elemsize));
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

/* Each buffer v [N] or [R, C] (W) in turn = cl_arg's next N (R * C, row by row) elements. */
static void vector_set_cpu(void *buffers[], void *cl_arg) {
  unsigned n = STARPU_TASK_GET_NBUFFERS(starpu_task_get_current());
  const char *data = cl_arg;
  for (unsigned i = 0; i < n; i++) {
    struct eellm_tensor_view v = eellm_tensor_view(buffers[i]);
    eellm_cpu_copy(v.rows, v.cols, v.elemsize, data, v.cols, v.ptr, v.ld);
    data += v.rows * v.cols * v.elemsize;
  }
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

void eellm_insert_tensors_set(const starpu_data_handle_t *t, const void *const *data, unsigned n,
                              const struct eellm_task_info *info) {
  struct starpu_data_descr buffers[EELLM_SET_MAX];
  size_t sizes[EELLM_SET_MAX], bytes = 0;
  for (unsigned i = 0; i < n; i++) {
    buffers[i] = (struct starpu_data_descr){t[i], STARPU_W};
    sizes[i] = starpu_data_get_size(t[i]); /* a vector's or matrix's elements, no padding */
    bytes += sizes[i];
  }
  /* One tensor's bytes are the argument as they are; several are laid end to end. */
  char *joined = NULL;
  if (n > 1) {
    joined = malloc(bytes ? bytes : 1);
    if (!joined) abort(); /* out of memory while submitting */
    size_t at = 0;
    for (unsigned i = 0; i < n; i++) {
      memcpy(joined + at, data[i], sizes[i]);
      at += sizes[i];
    }
  }
  /* eellm_submit copies the argument into the task now. */
  eellm_submit(&vector_set_cl, buffers, (int)n, joined ? joined : data[0], bytes, info);
  free(joined);
}

void eellm_insert_vector_set(starpu_data_handle_t v, const void *data,
                             const struct eellm_task_info *info) {
  eellm_insert_tensors_set(&v, &data, 1, info);
}

void eellm_insert_matrix_set(starpu_data_handle_t m, const void *data,
                             const struct eellm_task_info *info) {
  eellm_insert_tensors_set(&m, &data, 1, info);
}

void eellm_insert_to_bf16(starpu_data_handle_t dst, starpu_data_handle_t src,
                          const struct eellm_task_info *info) {
  struct starpu_data_descr buffers[] = {{dst, STARPU_W}, {src, STARPU_R}};
  eellm_submit(&to_bf16_cl, buffers, 2, NULL, 0, info);
}

void eellm_split_outputs(starpu_data_handle_t dst, unsigned n, starpu_data_handle_t *parts) {
  int matrix = starpu_data_get_interface_id(dst) == STARPU_MATRIX_INTERFACE_ID;
  size_t cols = matrix ? starpu_matrix_get_nx(dst) : starpu_vector_get_nx(dst);
  size_t elemsize = matrix ? starpu_matrix_get_elemsize(dst) : starpu_vector_get_elemsize(dst);
  for (unsigned i = 0; i < n; i++) {
    size_t width = eellm_split_at(cols, n, i + 1) - eellm_split_at(cols, n, i);
    if (matrix)
      starpu_matrix_data_register(&parts[i], -1, 0, width, width, starpu_matrix_get_ny(dst),
                                  elemsize);
    else
      starpu_vector_data_register(&parts[i], -1, 0, width, elemsize);
  }
}

void eellm_join_outputs(starpu_data_handle_t dst, unsigned n, starpu_data_handle_t *parts,
                        const struct eellm_task_info *info) {
  struct starpu_data_descr buffers[EELLM_SPLIT_MAX + 1] = {{dst, STARPU_W}};
  for (unsigned i = 0; i < n; i++) buffers[i + 1] = (struct starpu_data_descr){parts[i], STARPU_R};
  eellm_submit(&join_cols_cl, buffers, (int)n + 1, NULL, 0, info);
  for (unsigned i = 0; i < n; i++) starpu_data_unregister_submit(parts[i]);
}
