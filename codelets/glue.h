/* What the glue files codelets/<op>.c share (private to codelets/): declaring a
 * codelet with its perf model, seeing a matrix or vector buffer as rows, and
 * scratch buffers for the kernels' work space. */
#ifndef EELLM_CODELETS_GLUE_H
#define EELLM_CODELETS_GLUE_H

#include <starpu.h>
#include <stdio.h>
#include <stdlib.h>

#include "codelets.h"
#include "cpu/kernels.h"
#ifdef STARPU_USE_CUDA
#include <starpu_cublas_v2.h>

#include "cuda/kernels.h"
#endif

/* The architectures (STARPU_CPU, STARPU_CUDA, ...) cl has implementations for. */
uint32_t eellm_codelet_implements(const struct starpu_codelet *cl);

/* Lists a codelet so that eellm_codelet_archs finds it by name (EELLM_CODELET
 * does it at load time). */
void eellm_codelet_list(struct starpu_codelet *cl);

/* With CUDA, a codelet also runs op##_cuda (the glue file's twin of op##_cpu:
 * the same buffers, the kernel of codelets/cuda/ on the worker's stream),
 * asynchronously: StarPU waits for the stream, the task never does. */
#ifdef STARPU_USE_CUDA
#define EELLM_CUDA_IMPL(op) .cuda_funcs = {op##_cuda}, .cuda_flags = {STARPU_CUDA_ASYNC},
#define EELLM_DECLARE_CUDA(op) static void op##_cuda(void *buffers[], void *cl_arg);
#else
#define EELLM_CUDA_IMPL(op)
#define EELLM_DECLARE_CUDA(op)
#endif

/* Defines `static struct starpu_codelet op##_cl` running op##_cpu (a function of
 * the glue file: unpack the buffers, call the kernel) and the fields given after
 * op (the other implementations, or .where), with a history-based perf model
 * "eellm_<op>" and the task name "<op>", on a variable number of buffers. */
#define EELLM_DEFINE_CODELET(op, ...)                                                      \
  static void op##_cpu(void *buffers[], void *cl_arg);                                     \
  static struct starpu_perfmodel op##_model = {.type = STARPU_HISTORY_BASED,               \
                                               .symbol = "eellm_" #op};                    \
  static struct starpu_codelet op##_cl = {.cpu_funcs = {op##_cpu},                         \
                                          .cpu_funcs_name = {#op "_cpu"},                  \
                                          .nbuffers = STARPU_VARIABLE_NBUFFERS,            \
                                          .model = &op##_model,                            \
                                          .name = #op,                                     \
                                          __VA_ARGS__};                                    \
  __attribute__((constructor)) static void op##_listed(void) { eellm_codelet_list(&op##_cl); }

/* A codelet for CPUs and, when StarPU has CUDA, GPUs (op##_cuda). */
#define EELLM_CODELET(op) EELLM_DECLARE_CUDA(op) EELLM_DEFINE_CODELET(op, EELLM_CUDA_IMPL(op))

/* A codelet that runs on the host only (it reads host memory, or its kernel has
 * no GPU twin): its data come to main memory. */
#define EELLM_CODELET_CPU(op) EELLM_DEFINE_CODELET(op, .where = STARPU_CPU, )

#ifdef STARPU_USE_CUDA
/* The worker's cuBLAS handle (bound to its stream), in fp32 math, or TF32 when
 * the environment has EELLM_TF32=1 (read once). */
cublasHandle_t eellm_cublas_handle(void);
#endif

/* The larger of a kernel's CPU and CUDA work sizes (the CPU's without CUDA):
 * a scratch buffer serves whichever worker runs the task. */
#ifdef STARPU_USE_CUDA
#define EELLM_WORK_BYTES(cpu, cuda) eellm_max_bytes((cpu), (cuda))
#else
#define EELLM_WORK_BYTES(cpu, cuda) (cpu)
#endif
static inline size_t eellm_max_bytes(size_t a, size_t b) { return a > b ? a : b; }

/* Whether a task fits the CUDA kernels' limits (always, without CUDA). */
#ifdef STARPU_USE_CUDA
#define EELLM_CUDA_FITS(cond) (cond)
#else
#define EELLM_CUDA_FITS(cond) 1
#endif

/* info, or, when the task does not fit the CUDA kernels (gpu_fits 0), a copy in
 * *pinned that keeps it on the CPU. A task that info pins to CUDA then is a
 * caller's error: the message names the codelet `what` and the process aborts. */
const struct eellm_task_info *eellm_cpu_unless(int gpu_fits, const struct eellm_task_info *info,
                                               struct eellm_task_info *pinned, const char *what);

/* A matrix or vector buffer seen as rows x cols elements of elemsize bytes,
 * rows ld elements apart; a vector is one row. */
struct eellm_tensor_view {
  char *ptr;
  size_t rows, cols, ld, elemsize;
};

static inline struct eellm_tensor_view eellm_tensor_view(void *buffer) {
  /* Every StarPU interface struct starts with its interface id. */
  enum starpu_data_interface_id id = *(enum starpu_data_interface_id *)buffer;
  if (id == STARPU_VECTOR_INTERFACE_ID) {
    size_t n = STARPU_VECTOR_GET_NX(buffer);
    return (struct eellm_tensor_view){(char *)STARPU_VECTOR_GET_PTR(buffer), 1, n, n,
                                      STARPU_VECTOR_GET_ELEMSIZE(buffer)};
  }
  if (id == STARPU_MATRIX_INTERFACE_ID)
    return (struct eellm_tensor_view){
        (char *)STARPU_MATRIX_GET_PTR(buffer), STARPU_MATRIX_GET_NY(buffer),
        STARPU_MATRIX_GET_NX(buffer), STARPU_MATRIX_GET_LD(buffer),
        STARPU_MATRIX_GET_ELEMSIZE(buffer)};
  fprintf(stderr, "eellm: codelet given neither a matrix nor a vector (interface %d)\n", (int)id);
  abort();
}

/* Runs an embedding forward (embed_fwd, embed_at: embedding.c) on the task's
 * buffers: tokens [N] int32, positions [N] int32 (with has_positions; else row n
 * is at position n % seq_len), wte [V, D], wpe [C, D] (with has_wpe), out [N, D]. */
void eellm_embed_rows_cpu(void *buffers[], int has_wpe, int has_positions, unsigned seq_len,
                          size_t vocab_lo);
#ifdef STARPU_USE_CUDA
void eellm_embed_rows_cuda(void *buffers[], int has_wpe, int has_positions, unsigned seq_len,
                           size_t vocab_lo);
#endif

/* A scratch handle of at least `bytes` bytes (bytes > 0), to pass as a task's
 * last buffer in mode STARPU_SCRATCH; the kernel finds its work space at
 * STARPU_VECTOR_GET_PTR. One handle per power-of-two size, registered on first
 * use with home node -1 (no memory of the application's) in this process only:
 * StarPU allocates one buffer per worker (per device memory for GPUs) when a
 * task first needs it and keeps it for the next tasks; scratch accesses create
 * no dependencies and, under StarPU-MPI, no transfers (SCRATCH is neither R nor
 * W), so no rank needs to know the handle. eellm_codelets_stop unregisters them. */
starpu_data_handle_t eellm_scratch(size_t bytes);

/* buffers[n] = a scratch of `bytes` bytes when bytes > 0; returns the new count. */
static inline int eellm_add_scratch(struct starpu_data_descr *buffers, int n, size_t bytes) {
  if (bytes == 0) return n;
  buffers[n] = (struct starpu_data_descr){eellm_scratch(bytes), STARPU_SCRATCH};
  return n + 1;
}

/* Splitting one task's work into blocks, a task each, so that every CPU worker
 * takes part in a product or choice that would otherwise run alone on the
 * serial chain of decoding (a row per sequence). The caller decides that the
 * work is worth it; eellm_split_count gives the number of blocks for `units`
 * independent pieces (columns, rows): one per CPU worker (at most
 * EELLM_SPLIT_MAX, at most units) in a process with several CPU workers, no
 * GPU and no MPI peers, else 1 (no split). */
#define EELLM_SPLIT_MAX 16
unsigned eellm_split_count(size_t units);
/* The blocks eellm_insert_linear_fwd splits a product of `rows` rows and `cols`
 * output columns on weight w into (1: one task). */
unsigned eellm_linear_fwd_blocks(size_t rows, size_t cols, starpu_data_handle_t w);
/* Block i of n of `units` pieces starts at eellm_split_at(units, n, i) and ends
 * where block i + 1 starts (eellm_split_at(units, n, n) = units). */
static inline size_t eellm_split_at(size_t units, unsigned n, unsigned i) { return units * i / n; }
/* The info of block i: info's, on the i-th CPU worker (left to the scheduler,
 * a second block could wait behind the first on the worker that released both). */
struct eellm_task_info eellm_split_info(const struct eellm_task_info *info, unsigned i);
/* parts[i]: a new handle for columns [split_at(i), split_at(i + 1)) of dst (a
 * matrix or vector, whose element size it keeps), which the block tasks write
 * instead of dst; eellm_join_outputs then copies them into dst (one host task,
 * join_cols) and unregisters them once it has run. */
void eellm_split_outputs(starpu_data_handle_t dst, unsigned n, starpu_data_handle_t *parts);
void eellm_join_outputs(starpu_data_handle_t dst, unsigned n, starpu_data_handle_t *parts,
                        const struct eellm_task_info *info);

#endif
