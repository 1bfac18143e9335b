#include "runtime/engine/mpi.h"

#include <limits.h>
#include <starpu_mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "eellm.h"

static int active, rank, size = 1;
static MPI_Comm host_comm = MPI_COMM_NULL; /* host-side collectives, apart from StarPU-MPI's traffic */
static starpu_mpi_tag_t next_tag = 1;

int eellm_mpi_active(void) { return active; }
MPI_Comm eellm_mpi_comm(void) { return MPI_COMM_WORLD; }
int eellm_rank(void) { return rank; }
int eellm_nranks(void) { return size; }

int eellm_launched_by_mpirun(void) {
  return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMIX_RANK") || getenv("PMI_RANK");
}

int eellm_mpi_init(char *err, size_t errlen) {
  int initialized = 0, provided = 0;
  MPI_Initialized(&initialized);
  if (!initialized && MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS) {
    snprintf(err, errlen, "MPI_Init_thread failed");
    return -1;
  }
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Comm_dup(MPI_COMM_WORLD, &host_comm);
  active = 1;
  return 0;
}

/* eellm_runtime_start's way in once MPI is up: StarPU-MPI over MPI_COMM_WORLD. */
int eellm_mpi_start_starpu(struct starpu_conf *conf, char *err, size_t errlen) {
  int ret = starpu_mpi_init_conf(NULL, NULL, 0, MPI_COMM_WORLD, conf);
  if (ret != 0) snprintf(err, errlen, "starpu_mpi_init_conf failed (%d)", ret);
  return ret;
}

void eellm_mpi_stop(int starpu_started) {
  if (!active) return;
  if (starpu_started) starpu_mpi_shutdown();
  MPI_Comm_free(&host_comm);
  MPI_Finalize();
  active = 0;
  rank = 0;
  size = 1;
}

void eellm_mpi_register(starpu_data_handle_t h, int owner) {
  if (active) starpu_mpi_data_register(h, next_tag++, owner);
}

void eellm_mpi_send_to(starpu_data_handle_t h, int node) {
  if (active) starpu_mpi_get_data_on_node_detached(MPI_COMM_WORLD, h, node, NULL, NULL);
}

void eellm_mpi_sum(double *values, int n) {
  if (active) MPI_Allreduce(MPI_IN_PLACE, values, n, MPI_DOUBLE, MPI_SUM, host_comm);
}

int eellm_mpi_max(int value) {
  if (active) MPI_Allreduce(MPI_IN_PLACE, &value, 1, MPI_INT, MPI_MAX, host_comm);
  return value;
}

void eellm_mpi_bcast(void *buf, size_t n) {
  if (!active) return;
  for (size_t done = 0; done < n; done += INT_MAX / 2) {
    int count = (int)(n - done < INT_MAX / 2 ? n - done : INT_MAX / 2), finished = 0;
    MPI_Request req;
    MPI_Ibcast((char *)buf + done, count, MPI_BYTE, 0, host_comm, &req);
    while (MPI_Test(&req, &finished, MPI_STATUS_IGNORE), !finished)
      nanosleep(&(struct timespec){.tv_nsec = 200000}, NULL);
  }
}

void eellm_mpi_move(float *x, size_t n, int from, int to) {
  if (!active || from == to) return;
  for (size_t done = 0; done < n; done += INT_MAX / 2) {
    int count = (int)(n - done < INT_MAX / 2 ? n - done : INT_MAX / 2);
    if (rank == from) MPI_Send(x + done, count, MPI_FLOAT, to, 0, host_comm);
    if (rank == to) MPI_Recv(x + done, count, MPI_FLOAT, from, 0, host_comm, MPI_STATUS_IGNORE);
  }
}

int eellm_mpi_split(int color, int key, MPI_Comm *comm) {
  return MPI_Comm_split(MPI_COMM_WORLD, color, key, comm) == MPI_SUCCESS ? 0 : -1;
}

void eellm_mpi_wait(void) {
  if (active)
    starpu_mpi_wait_for_all(MPI_COMM_WORLD);
  else
    starpu_task_wait_for_all();
}

void eellm_mpi_quiesce(void) {
  eellm_mpi_wait();
  if (active) starpu_mpi_cache_flush_all_data(MPI_COMM_WORLD);
}
