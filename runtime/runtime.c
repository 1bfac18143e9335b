/* StarPU start-up: single-threaded BLAS inside tasks, one CPU worker per core,
 * a scheduler that honours priorities, no OpenCL devices. */
#include "eellm.h"

#include <cblas.h>
#include <malloc.h>
#include <starpu.h>
#include <stdio.h>
#include <stdlib.h>

int eellm_runtime_start(void) {
  openblas_set_num_threads(1);
  /* Activations are allocated and freed every step; served from the heap
   * rather than fresh mmaps, they do not page-fault each time. */
  mallopt(M_MMAP_THRESHOLD, 256 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  struct starpu_conf conf;
  starpu_conf_init(&conf);
  /* eager ignores priorities; lws honours them and steals locally (Chameleon's CPU choice). */
  if (!getenv("STARPU_SCHED")) conf.sched_policy_name = "lws";
  conf.nopencl = 0; /* eellm has no OpenCL kernels */
  int ret = starpu_init(&conf);
  if (ret != 0) {
    fprintf(stderr, "eellm: starpu_init failed (%d): no CPU worker available?\n", ret);
    return -1;
  }
  return 0;
}

void eellm_runtime_stop(void) { starpu_shutdown(); }
