/* StarPU glue of the collectives (collective.h): the MPI call is the kernel. */
#include "collective.h"

#include <limits.h>
#include <pthread.h>
#include <string.h>
#include <time.h>

#include "glue.h"

/* An element of a collective: a float, a double, or a row of softmax
 * statistics (three floats combined by softmax_stats_op). */
struct collective_args {
  MPI_Comm comm;
  int root; /* broadcast only */
  int softmax_stats;
};

EELLM_CODELET_CPU(allreduce_sum)
EELLM_CODELET_CPU(bcast)
EELLM_CODELET_CPU(allreduce_softmax)
EELLM_CODELET_CPU(allgather_cols)

void eellm_tp_range(size_t n, unsigned tp, unsigned t, size_t *lo, size_t *count) {
  *lo = n * t / tp;
  *count = n * (t + 1) / tp - *lo;
}

static MPI_Datatype stats_type;
static MPI_Op stats_op;
static pthread_once_t stats_once = PTHREAD_ONCE_INIT;

static void softmax_stats_op(void *in, void *inout, int *len, MPI_Datatype *type) {
  (void)type;
  eellm_cpu_softmax_stats_combine(inout, in, (size_t)*len);
}

/* Made once, kept until MPI_Finalize frees them. */
static void make_stats_type(void) {
  MPI_Type_contiguous(3, MPI_FLOAT, &stats_type);
  MPI_Type_commit(&stats_type);
  MPI_Op_create(softmax_stats_op, 1, &stats_op);
}

/* Calls op on each run of contiguous elements of the buffer (the whole of it
 * unless rows are padded), in pieces that fit MPI's int counts. */
static void each_run(void *buffer, const struct collective_args *args,
                     int (*op)(void *x, int n, MPI_Datatype type,
                               const struct collective_args *args)) {
  struct eellm_tensor_view v = eellm_tensor_view(buffer);
  int contiguous = v.rows == 1 || v.ld == v.cols;
  size_t runs = contiguous ? 1 : v.rows, run = contiguous ? v.rows * v.cols : v.cols;
  size_t per = args->softmax_stats ? 3 : 1; /* values of an element */
  MPI_Datatype type = args->softmax_stats ? stats_type : v.elemsize == 8 ? MPI_DOUBLE : MPI_FLOAT;
  for (size_t r = 0; r < runs; r++) {
    char *x = v.ptr + r * v.ld * v.elemsize;
    for (size_t done = 0; done < run / per; done += INT_MAX / 2) {
      size_t n = run / per - done < INT_MAX / 2 ? run / per - done : INT_MAX / 2;
      if (op(x + done * per * v.elemsize, (int)n, type, args) != MPI_SUCCESS) {
        fprintf(stderr, "eellm: MPI collective on %zu elements failed\n", n);
        abort();
      }
    }
  }
}

/* Waits for a nonblocking collective, giving the core away between polls: a
 * worker spinning in a blocking one would starve the peers it waits for (and
 * StarPU-MPI's own thread) wherever ranks share cores. */
static int finish(int started, MPI_Request *req) {
  if (started != MPI_SUCCESS) return started;
  for (;;) {
    int done = 0, status = MPI_Test(req, &done, MPI_STATUS_IGNORE);
    if (status != MPI_SUCCESS || done) return status;
    nanosleep(&(struct timespec){.tv_nsec = 20000}, NULL);
  }
}

static int sum_op(void *x, int n, MPI_Datatype type, const struct collective_args *args) {
  MPI_Op op = args->softmax_stats ? stats_op : MPI_SUM;
  MPI_Request req;
  return finish(MPI_Iallreduce(MPI_IN_PLACE, x, n, type, op, args->comm, &req), &req);
}

static int bcast_op(void *x, int n, MPI_Datatype type, const struct collective_args *args) {
  MPI_Request req;
  return finish(MPI_Ibcast(x, n, type, args->root, args->comm, &req), &req);
}

/* x (RW), seq (RW: orders the collectives, collective.h). */
static void allreduce_sum_cpu(void *buffers[], void *cl_arg) {
  each_run(buffers[0], cl_arg, sum_op);
}

static void bcast_cpu(void *buffers[], void *cl_arg) { each_run(buffers[0], cl_arg, bcast_op); }

static void allreduce_softmax_cpu(void *buffers[], void *cl_arg) {
  each_run(buffers[0], cl_arg, sum_op);
}

/* info, of kind collective whatever the caller's (the traces count them apart). */
static struct eellm_task_info collective_info(const struct eellm_task_info *info) {
  struct eellm_task_info c = info ? *info : eellm_task_default;
  c.kind = EELLM_KIND_COLLECTIVE;
  return c;
}

static void submit(struct starpu_codelet *cl, starpu_data_handle_t x, starpu_data_handle_t seq,
                   struct collective_args args, const struct eellm_task_info *info) {
  struct starpu_data_descr buffers[] = {{x, STARPU_RW}, {seq, STARPU_RW}};
  struct eellm_task_info c = collective_info(info);
  eellm_submit(cl, buffers, 2, &args, sizeof args, &c);
}

void eellm_insert_allreduce_sum(starpu_data_handle_t x, starpu_data_handle_t seq, MPI_Comm comm,
                                const struct eellm_task_info *info) {
  submit(&allreduce_sum_cl, x, seq, (struct collective_args){comm, 0, 0}, info);
}

void eellm_insert_bcast(starpu_data_handle_t x, starpu_data_handle_t seq, MPI_Comm comm, int root,
                        const struct eellm_task_info *info) {
  submit(&bcast_cl, x, seq, (struct collective_args){comm, root, 0}, info);
}

struct allgather_args {
  MPI_Comm comm;
  size_t cols; /* of the whole matrix */
};

/* part [M, C_k] (R), whole [M, C] (W), seq (RW), work (SCRATCH): every rank's
 * part, contiguous in rank order in work, then into its columns of whole. */
static void allgather_cols_cpu(void *buffers[], void *cl_arg) {
  const struct allgather_args *a = cl_arg;
  struct eellm_tensor_view part = eellm_tensor_view(buffers[0]), whole = eellm_tensor_view(buffers[1]);
  float *work = (float *)STARPU_VECTOR_GET_PTR(buffers[3]);
  int size, rank;
  MPI_Comm_size(a->comm, &size);
  MPI_Comm_rank(a->comm, &rank);
  int *counts = malloc(2 * (size_t)size * sizeof *counts), *displs = counts + size;
  if (!counts) abort();
  size_t lo, n;
  for (int k = 0; k < size; k++) {
    eellm_tp_range(a->cols, (unsigned)size, (unsigned)k, &lo, &n);
    counts[k] = (int)(n * part.rows);
    displs[k] = (int)(lo * part.rows);
  }
  float *mine = work + displs[rank];
  for (size_t r = 0; r < part.rows; r++)
    memcpy(mine + r * part.cols, (float *)part.ptr + r * part.ld, part.cols * sizeof *mine);
  MPI_Request req;
  if (finish(MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_FLOAT, work, counts, displs, MPI_FLOAT, a->comm,
                             &req),
             &req) != MPI_SUCCESS) {
    fprintf(stderr, "eellm: MPI all-gather of %zu x %zu floats failed\n", whole.rows, whole.cols);
    abort();
  }
  for (int k = 0; k < size; k++) {
    eellm_tp_range(a->cols, (unsigned)size, (unsigned)k, &lo, &n);
    for (size_t r = 0; r < part.rows; r++)
      memcpy((float *)whole.ptr + r * whole.ld + lo, work + displs[k] + r * n, n * sizeof *work);
  }
  free(counts);
}

void eellm_insert_allgather_cols(starpu_data_handle_t part, starpu_data_handle_t whole,
                                 starpu_data_handle_t seq, MPI_Comm comm,
                                 const struct eellm_task_info *info) {
  struct allgather_args args = {comm, starpu_matrix_get_nx(whole)};
  struct starpu_data_descr buffers[4] = {{part, STARPU_R}, {whole, STARPU_W}, {seq, STARPU_RW}};
  size_t bytes = starpu_matrix_get_nx(whole) * starpu_matrix_get_ny(whole) * sizeof(float);
  int n = eellm_add_scratch(buffers, 3, bytes);
  struct eellm_task_info c = collective_info(info);
  eellm_submit(&allgather_cols_cl, buffers, n, &args, sizeof args, &c);
}

void eellm_insert_allreduce_softmax(starpu_data_handle_t rowstats, starpu_data_handle_t seq,
                                    MPI_Comm comm, const struct eellm_task_info *info) {
  pthread_once(&stats_once, make_stats_type);
  submit(&allreduce_softmax_cl, rowstats, seq, (struct collective_args){comm, 0, 1}, info);
}
