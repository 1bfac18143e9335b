/* Whole-tensor helpers on matrix or vector handles: zero, and dst += alpha * src. */
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

static struct starpu_perfmodel zero_model = {.type = STARPU_HISTORY_BASED, .symbol = "eellm_zero"};
static struct starpu_perfmodel axpy_model = {.type = STARPU_HISTORY_BASED, .symbol = "eellm_axpy"};

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
