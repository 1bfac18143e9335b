/* The glue's shared state: scratch handles by size, the list of codelets (for
 * eellm_codelet_archs) and, with CUDA, the cuBLAS math mode. */
#include "glue.h"

#include <pthread.h>
#include <string.h>

#include "runtime/engine/mpi.h"

#define MIN_SCRATCH_LOG2 8 /* 256 bytes */
#define N_SCRATCH 32 /* up to 2^31 bytes: a vector of 1-byte elements counts in uint32_t */

static pthread_mutex_t scratch_lock = PTHREAD_MUTEX_INITIALIZER;
static starpu_data_handle_t scratch[N_SCRATCH]; /* [c]: 2^c bytes */

starpu_data_handle_t eellm_scratch(size_t bytes) {
  unsigned c = MIN_SCRATCH_LOG2;
  while (c < N_SCRATCH && ((size_t)1 << c) < bytes) c++;
  if (c == N_SCRATCH) {
    fprintf(stderr, "eellm: no scratch buffer of %zu bytes\n", bytes);
    abort();
  }
  pthread_mutex_lock(&scratch_lock);
  if (!scratch[c]) starpu_vector_data_register(&scratch[c], -1, 0, (uint32_t)1 << c, 1);
  starpu_data_handle_t h = scratch[c];
  pthread_mutex_unlock(&scratch_lock);
  return h;
}

void eellm_codelets_stop(void) {
  pthread_mutex_lock(&scratch_lock);
  int any = 0;
  for (unsigned c = 0; c < N_SCRATCH; c++) any |= scratch[c] != NULL;
  /* Scratch accesses are no dependencies: wait for the tasks that may use one. */
  if (any) starpu_task_wait_for_all();
  for (unsigned c = 0; c < N_SCRATCH; c++)
    if (scratch[c]) {
      starpu_data_unregister(scratch[c]);
      scratch[c] = NULL;
    }
  pthread_mutex_unlock(&scratch_lock);
}

#define MAX_CODELETS 64
static struct starpu_codelet *listed[MAX_CODELETS];
static int n_listed;

void eellm_codelet_list(struct starpu_codelet *cl) {
  if (n_listed == MAX_CODELETS) {
    fprintf(stderr, "eellm: more than %d codelets\n", MAX_CODELETS);
    abort();
  }
  listed[n_listed++] = cl;
}

uint32_t eellm_codelet_implements(const struct starpu_codelet *cl) {
  uint32_t where = 0;
  if (cl->cpu_funcs[0]) where |= STARPU_CPU;
  if (cl->cuda_funcs[0]) where |= STARPU_CUDA;
  if (cl->opencl_funcs[0]) where |= STARPU_OPENCL;
  return where;
}

uint32_t eellm_codelet_archs(const char *name) {
  for (int i = 0; i < n_listed; i++)
    if (strcmp(listed[i]->name, name) == 0) return eellm_codelet_implements(listed[i]);
  return 0;
}

const struct eellm_task_info *eellm_cpu_unless(int gpu_fits, const struct eellm_task_info *info,
                                               struct eellm_task_info *pinned, const char *what) {
  if (gpu_fits) return info;
  *pinned = info ? *info : eellm_task_default;
  if (pinned->where & ~(uint32_t)STARPU_CPU) {
    fprintf(stderr, "eellm: %s: this task's sizes are past the CUDA kernel's limits\n", what);
    abort();
  }
  pinned->where = STARPU_CPU;
  return pinned;
}

unsigned eellm_split_count(size_t units) {
  if (eellm_mpi_active() || starpu_cuda_worker_get_count() > 0) return 1;
  unsigned n = starpu_cpu_worker_get_count();
  if (n > EELLM_SPLIT_MAX) n = EELLM_SPLIT_MAX;
  if (n > units) n = (unsigned)units;
  return n ? n : 1;
}

struct eellm_task_info eellm_split_info(const struct eellm_task_info *info, unsigned i) {
  struct eellm_task_info block = info ? *info : eellm_task_default;
  block.cpu_worker = (int)i + 1;
  return block;
}

#ifdef STARPU_USE_CUDA
static cublasMath_t math_mode = CUBLAS_DEFAULT_MATH;
static pthread_once_t math_mode_once = PTHREAD_ONCE_INIT;

/* fp32 unless EELLM_TF32 is exactly "1": checkpoints stay those of CPU runs by default. */
static void read_math_mode(void) {
  const char *tf32 = getenv("EELLM_TF32");
  if (tf32 && strcmp(tf32, "1") == 0) math_mode = CUBLAS_TF32_TENSOR_OP_MATH;
}

cublasHandle_t eellm_cublas_handle(void) {
  pthread_once(&math_mode_once, read_math_mode);
  cublasHandle_t handle = starpu_cublas_get_local_handle();
  cublasSetMathMode(handle, math_mode);
  return handle;
}
#endif
