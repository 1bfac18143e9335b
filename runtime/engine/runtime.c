/* StarPU start-up: single-threaded BLAS inside tasks, one CPU worker per core,
 * a scheduler that honours priorities, no OpenCL devices; StarPU-MPI instead
 * of plain StarPU once eellm_mpi_init has brought MPI up. */
#include "eellm.h"

#include <cblas.h>
#include <starpu.h>
#include <stdio.h>
#include <stdlib.h>

#include "codelets/codelets.h"
#include "runtime/engine/mpi.h"

int eellm_mpi_start_starpu(struct starpu_conf *conf, char *err, size_t errlen);
void eellm_mpi_stop(int starpu_started);

static int started;

int eellm_runtime_start(char *err, size_t errlen) {
  openblas_set_num_threads(1);
  struct starpu_conf conf;
  starpu_conf_init(&conf);
  /* eager ignores priorities; lws honours them and steals locally (Chameleon's CPU choice). */
  if (!getenv("STARPU_SCHED")) conf.sched_policy_name = "lws";
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
  return 0;
}

void eellm_runtime_stop(void) {
  if (started) eellm_codelets_stop(); /* the codelets' scratch buffers */
  if (eellm_mpi_active())
    eellm_mpi_stop(started);
  else if (started)
    starpu_shutdown();
  started = 0;
}
