/* StarPU glue of the collectives (collective.h): the MPI call is the kernel. */
#include "collective.h"

#include <limits.h>

#include "glue.h"

struct collective_args {
  MPI_Comm comm;
  int root; /* broadcast only */
};

EELLM_CODELET_CPU(allreduce_sum)
EELLM_CODELET_CPU(bcast)

/* Calls op on each run of contiguous floats of the buffer (the whole of it
 * unless rows are padded), in pieces that fit MPI's int counts. */
static void each_run(void *buffer, const struct collective_args *args,
                     int (*op)(float *x, int n, const struct collective_args *args)) {
  struct eellm_tensor_view v = eellm_tensor_view(buffer);
  int contiguous = v.rows == 1 || v.ld == v.cols;
  size_t runs = contiguous ? 1 : v.rows, run = contiguous ? v.rows * v.cols : v.cols;
  for (size_t r = 0; r < runs; r++) {
    float *x = (float *)v.ptr + r * v.ld;
    for (size_t done = 0; done < run; done += INT_MAX / 2) {
      size_t n = run - done < INT_MAX / 2 ? run - done : INT_MAX / 2;
      if (op(x + done, (int)n, args) != MPI_SUCCESS) {
        fprintf(stderr, "eellm: MPI collective on %zu floats failed\n", n);
        abort();
      }
    }
  }
}

static int sum_op(float *x, int n, const struct collective_args *args) {
  return MPI_Allreduce(MPI_IN_PLACE, x, n, MPI_FLOAT, MPI_SUM, args->comm);
}

static int bcast_op(float *x, int n, const struct collective_args *args) {
  return MPI_Bcast(x, n, MPI_FLOAT, args->root, args->comm);
}

/* x (RW), seq (RW: orders the collectives, collective.h). */
static void allreduce_sum_cpu(void *buffers[], void *cl_arg) {
  each_run(buffers[0], cl_arg, sum_op);
}

static void bcast_cpu(void *buffers[], void *cl_arg) { each_run(buffers[0], cl_arg, bcast_op); }

static void submit(struct starpu_codelet *cl, starpu_data_handle_t x, starpu_data_handle_t seq,
                   struct collective_args args, const struct eellm_task_info *info) {
  struct starpu_data_descr buffers[] = {{x, STARPU_RW}, {seq, STARPU_RW}};
  eellm_submit(cl, buffers, 2, &args, sizeof args, info);
}

void eellm_insert_allreduce_sum(starpu_data_handle_t x, starpu_data_handle_t seq, MPI_Comm comm,
                                const struct eellm_task_info *info) {
  submit(&allreduce_sum_cl, x, seq, (struct collective_args){comm, 0}, info);
}

void eellm_insert_bcast(starpu_data_handle_t x, starpu_data_handle_t seq, MPI_Comm comm, int root,
                        const struct eellm_task_info *info) {
  submit(&bcast_cl, x, seq, (struct collective_args){comm, root}, info);
}
