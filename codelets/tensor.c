/* Whole-tensor helpers on matrix or vector handles: zero, dst += alpha * src,
 * dst = src, and filling a tensor with bytes carried by the task itself. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codelets.h"

struct axpy_args {
  float alpha;
};

/* A matrix or vector buffer seen as rows x cols elements with a row stride of ld
 * elements; a vector is one row. */
struct tensor_view {
  char *ptr;
  size_t rows, cols, ld, elemsize;
};

static struct tensor_view view_of(void *buffer) {
  /* Every StarPU interface struct starts with its interface id. */
  enum starpu_data_interface_id id = *(enum starpu_data_interface_id *)buffer;
  if (id == STARPU_VECTOR_INTERFACE_ID) {
    size_t n = STARPU_VECTOR_GET_NX(buffer);
    return (struct tensor_view){(char *)STARPU_VECTOR_GET_PTR(buffer), 1, n, n,
                                STARPU_VECTOR_GET_ELEMSIZE(buffer)};
  }
  if (id == STARPU_MATRIX_INTERFACE_ID)
    return (struct tensor_view){(char *)STARPU_MATRIX_GET_PTR(buffer), STARPU_MATRIX_GET_NY(buffer),
                                STARPU_MATRIX_GET_NX(buffer), STARPU_MATRIX_GET_LD(buffer),
                                STARPU_MATRIX_GET_ELEMSIZE(buffer)};
  fprintf(stderr, "eellm: tensor codelet given neither a matrix nor a vector (interface %d)\n",
          (int)id);
  abort();
}

/* t: [R, C] matrix or [C] vector, any element size; padding past C is left alone. */
static void zero_cpu(void *buffers[], void *cl_arg) {
  (void)cl_arg;
  struct tensor_view t = view_of(buffers[0]);
  for (size_t r = 0; r < t.rows; r++) memset(t.ptr + r * t.ld * t.elemsize, 0, t.cols * t.elemsize);
}

/* dst, src: float [R, C] matrices or [C] vectors of the same shape; dst += alpha * src. */
static void axpy_cpu(void *buffers[], void *cl_arg) {
  const struct axpy_args *args = cl_arg;
  struct tensor_view dst = view_of(buffers[0]), src = view_of(buffers[1]);
  if (dst.rows != src.rows || dst.cols != src.cols) {
    fprintf(stderr, "eellm: axpy on [%zu, %zu] += [%zu, %zu]\n", dst.rows, dst.cols, src.rows,
            src.cols);
    abort();
  }
  for (size_t r = 0; r < dst.rows; r++)
    cblas_saxpy((int)dst.cols, args->alpha, (const float *)src.ptr + r * src.ld, 1,
                (float *)dst.ptr + r * dst.ld, 1);
}

/* dst, src: [R, C] matrices or [C] vectors of one shape and element size; dst = src. */
static void copy_cpu(void *buffers[], void *cl_arg) {
  (void)cl_arg;
  struct tensor_view dst = view_of(buffers[0]), src = view_of(buffers[1]);
  if (dst.rows != src.rows || dst.cols != src.cols || dst.elemsize != src.elemsize) {
    fprintf(stderr, "eellm: copy of [%zu, %zu] into [%zu, %zu]\n", src.rows, src.cols, dst.rows,
            dst.cols);
    abort();
  }
  for (size_t r = 0; r < dst.rows; r++)
    memcpy(dst.ptr + r * dst.ld * dst.elemsize, src.ptr + r * src.ld * src.elemsize,
           dst.cols * dst.elemsize);
}

/* t: a vector of n_bytes bytes, filled from the bytes that follow the size in cl_arg. */
static void load_cpu(void *buffers[], void *cl_arg) {
  const size_t *n_bytes = cl_arg;
  struct tensor_view t = view_of(buffers[0]);
  if (t.rows != 1 || t.cols * t.elemsize != *n_bytes) {
    fprintf(stderr, "eellm: load of %zu bytes into a tensor of %zu\n", *n_bytes,
            t.rows * t.cols * t.elemsize);
    abort();
  }
  memcpy(t.ptr, n_bytes + 1, *n_bytes);
}

static struct starpu_perfmodel zero_model = {.type = STARPU_HISTORY_BASED, .symbol = "eellm_zero"};
static struct starpu_perfmodel axpy_model = {.type = STARPU_HISTORY_BASED, .symbol = "eellm_axpy"};
static struct starpu_perfmodel copy_model = {.type = STARPU_HISTORY_BASED, .symbol = "eellm_copy"};
static struct starpu_perfmodel load_model = {.type = STARPU_HISTORY_BASED, .symbol = "eellm_load"};

static struct starpu_codelet zero_cl = {.cpu_funcs = {zero_cpu},
                                        .cpu_funcs_name = {"zero_cpu"},
                                        .nbuffers = STARPU_VARIABLE_NBUFFERS,
                                        .model = &zero_model,
                                        .name = "zero"};
static struct starpu_codelet axpy_cl = {.cpu_funcs = {axpy_cpu},
                                        .cpu_funcs_name = {"axpy_cpu"},
                                        .nbuffers = STARPU_VARIABLE_NBUFFERS,
                                        .model = &axpy_model,
                                        .name = "axpy"};
static struct starpu_codelet copy_cl = {.cpu_funcs = {copy_cpu},
                                        .cpu_funcs_name = {"copy_cpu"},
                                        .nbuffers = STARPU_VARIABLE_NBUFFERS,
                                        .model = &copy_model,
                                        .name = "copy"};
static struct starpu_codelet load_cl = {.cpu_funcs = {load_cpu},
                                        .cpu_funcs_name = {"load_cpu"},
                                        .nbuffers = STARPU_VARIABLE_NBUFFERS,
                                        .model = &load_model,
                                        .name = "load"};

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

void eellm_insert_load(starpu_data_handle_t t, const void *data, size_t n_bytes,
                       const struct eellm_task_info *info) {
  size_t *args = malloc(sizeof n_bytes + n_bytes);
  if (!args) {
    fprintf(stderr, "eellm: out of memory loading %zu bytes\n", n_bytes);
    abort();
  }
  args[0] = n_bytes;
  memcpy(args + 1, data, n_bytes);
  struct starpu_data_descr buffers[] = {{t, STARPU_W}};
  eellm_submit(&load_cl, buffers, 1, args, sizeof n_bytes + n_bytes, info);
  free(args);
}
