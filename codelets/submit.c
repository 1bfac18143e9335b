/* The one place where eellm hands a task to StarPU (or StarPU-MPI). */
#include "codelets.h"

#include "glue.h"

#include <starpu_mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eellm.h"
#include "runtime/engine/mpi.h"
#include "runtime/engine/trace.h"

const struct eellm_task_info eellm_task_default = {.priority = 0,
                                                   .node = 0,
                                                   .kind = EELLM_KIND_OTHER,
                                                   .micro = -1,
                                                   .layer = -1,
                                                   .where = 0,
                                                   .cpu_worker = 0};

static uint32_t preferred; /* eellm_codelets_prefer's mask; 0: none */

void eellm_codelets_prefer(uint32_t where) { preferred = where; }

void eellm_submit(struct starpu_codelet *cl, struct starpu_data_descr *buffers, int n,
                  const void *args, size_t args_size, const struct eellm_task_info *info) {
  if (!info) info = &eellm_task_default;
  /* Where the task may run: what info->where asks for, all of it implemented.
   * Without a request, the preferred architectures the codelet implements, or
   * else every one (what StarPU derives from the codelet itself). */
  uint32_t implemented = eellm_codelet_implements(cl);
  if (info->where & ~implemented) {
    fprintf(stderr, "eellm: codelet %s has no implementation for architecture mask 0x%x\n",
            cl->name, (unsigned)info->where);
    abort();
  }
  uint32_t any = implemented & preferred ? implemented & preferred : implemented;
  unsigned long long where = info->where ? info->where : any;
  int runs_here = !eellm_mpi_active() || info->node == eellm_rank();
  int worker = -1; /* StarPU's "any worker" */
  if (info->cpu_worker > 0) {
    int ids[STARPU_NMAXWORKERS];
    unsigned n_cpus = starpu_worker_get_ids_by_type(STARPU_CPU_WORKER, ids, STARPU_NMAXWORKERS);
    if ((unsigned)info->cpu_worker <= n_cpus) worker = ids[info->cpu_worker - 1];
  }
  /* StarPU frees the copy once the task is done; kernels read it as their struct.
   * Ranks that do not run the task get none: StarPU-MPI would not free it. */
  void *args_copy = NULL;
  if (runs_here) {
    args_copy = malloc(args_size ? args_size : 1);
    if (!args_copy) {
      fprintf(stderr, "eellm: out of memory submitting %s\n", cl->name);
      abort();
    }
    if (args_size) memcpy(args_copy, args, args_size); /* args may be NULL when empty */
  }
  /* NULL (no callback) unless a trace records a task that runs here. */
  void *trace = runs_here ? eellm_trace_task_arg(info) : NULL;
  void (*traced)(void *) = trace ? eellm_trace_task_done : NULL;
  int ret =
      eellm_mpi_active()
          ? starpu_mpi_task_insert(
                eellm_mpi_comm(), cl, STARPU_DATA_MODE_ARRAY, buffers, n, STARPU_EXECUTE_ON_NODE,
                info->node, STARPU_EXECUTE_WHERE, where, STARPU_EXECUTE_ON_WORKER, worker,
                STARPU_CL_ARGS, args_copy, runs_here ? args_size : 0, STARPU_PRIORITY,
                info->priority, STARPU_CALLBACK_WITH_ARG, traced, trace, STARPU_NAME, cl->name, 0)
          : starpu_task_insert(cl, STARPU_DATA_MODE_ARRAY, buffers, n, STARPU_EXECUTE_WHERE, where,
                               STARPU_EXECUTE_ON_WORKER, worker, STARPU_CL_ARGS, args_copy,
                               args_size, STARPU_PRIORITY, info->priority, STARPU_CALLBACK_WITH_ARG,
                               traced, trace, STARPU_NAME, cl->name, 0);
  if (ret != 0) {
    fprintf(stderr, "eellm: StarPU refused task %s (error %d)\n", cl->name, ret);
    abort();
  }
}
