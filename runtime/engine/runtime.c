/* StarPU start-up: single-threaded BLAS inside tasks, one CPU worker per core,
 * a scheduler that honours priorities, no OpenCL devices, cuBLAS on the CUDA
 * workers where there are any; StarPU-MPI instead of plain StarPU once
 * eellm_mpi_init has brought MPI up. */
#include "eellm.h"

#include <cblas.h>
#include <starpu.h>
#include <stdio.h>
#include <stdlib.h>
#ifdef STARPU_USE_CUDA
#include <cuda_runtime.h>
#endif

#include "codelets/codelets.h"
#include "runtime/engine/mpi.h"

int eellm_mpi_start_starpu(struct starpu_conf *conf, char *err, size_t errlen);
void eellm_mpi_stop(int starpu_started);

static int started, cublas_started;

/* Whether StarPU is going to start CUDA workers: it has CUDA, a device is
 * visible and STARPU_NCUDA does not ask for none. */
static int cuda_workers_expected(void) {
#ifdef STARPU_USE_CUDA
  const char *ncuda = getenv("STARPU_NCUDA");
  int devices = 0;
  if (ncuda && *ncuda && atoi(ncuda) == 0) return 0;
  return cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0;
#else
  return 0;
#endif
}

int eellm_runtime_start(char *err, size_t errlen) {
  openblas_set_num_threads(1);
  struct starpu_conf conf;
  starpu_conf_init(&conf);
  /* eager ignores priorities; lws honours them and steals locally (Chameleon's CPU choice);
   * with GPUs, dmdas places tasks by the codelets' history-based perf models, which StarPU
   * calibrates by itself on first use (each codelet, size and worker kind is run until it
   * has enough measurements), and sorts each worker's queue by priority. */
  if (!getenv("STARPU_SCHED")) conf.sched_policy_name = cuda_workers_expected() ? "dmdas" : "lws";
  conf.nopencl = 0; /* eellm has no OpenCL kernels */
  if (eellm_mpi_active()) {
    if (eellm_mpi_start_starpu(&conf, err, errlen) != 0) return -1;
  } else {
    int ret = starpu_init(&conf);
    if (ret != 0) {
      snprintf(err, errlen, "starting StarPU failed (%d): no CPU worker available?", ret);
      return -1;
    }
  }
  started = 1;
  /* Every CUDA worker gets its cuBLAS handle (starpu_cublas_get_local_handle) on its stream. */
  cublas_started = starpu_cuda_worker_get_count() > 0;
  if (cublas_started) starpu_cublas_init();
  return 0;
}

void eellm_runtime_stop(void) {
  if (started) eellm_codelets_stop(); /* the codelets' scratch buffers */
  if (cublas_started) starpu_cublas_shutdown();
  cublas_started = 0;
  if (eellm_mpi_active())
    eellm_mpi_stop(started);
  else if (started)
    starpu_shutdown();
  started = 0;
}
