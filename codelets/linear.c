/* StarPU glue of the linear layer y = x @ W (+ b) (+ residual), forward and
 * backward (kernels in cpu/linear.c and cuda/linear.cu, on cuBLAS). */
#include "glue.h"

struct linear_fwd_args {
  int transpose_w;
  int has_bias, has_residual;
  size_t col0; /* y is columns col0 .. of the product (a block of a split one) */
};

struct linear_bwd_args {
  int transpose_w;
  int beta_dx;
  int has_dx, has_dw, has_db;
};

EELLM_CODELET(linear_fwd)
/* linear_fwd on a bf16 weight (decoding's heads, eellm_generator_use_bf16_heads). */
EELLM_CODELET_CPU(linear_fwd_bf16)
EELLM_CODELET(linear_bwd)
/* The weight and bias gradients of a backward, as a task of their own (same
 * buffers and kernel as linear_bwd): nothing on the backward's critical path
 * waits for them, so another worker computes them while the chain goes on. */
EELLM_CODELET(linear_dw)

/* x [N, K], W [K, M] (or [M, K] transposed), b [M] (optional), residual [N, M] (optional),
 * y [N, M]; or, for a block of a split product, y its columns col0 .. col0 + y.cols - 1
 * and the views of W, b and residual moved to them. */
struct linear_fwd_task {
  struct eellm_tensor_view x, w, res, y;
  const float *bias;
};

static struct linear_fwd_task linear_fwd_task(void *buffers[], const struct linear_fwd_args *args) {
  int b = 0;
  struct linear_fwd_task t = {0};
  t.x = eellm_tensor_view(buffers[b++]);
  t.w = eellm_tensor_view(buffers[b++]);
  if (args->has_bias) t.bias = (const float *)STARPU_VECTOR_GET_PTR(buffers[b++]);
  if (args->has_residual) t.res = eellm_tensor_view(buffers[b++]);
  t.y = eellm_tensor_view(buffers[b]);
  t.w.ptr += args->col0 * (args->transpose_w ? t.w.ld : 1) * t.w.elemsize;
  if (t.bias) t.bias += args->col0;
  if (t.res.ptr) t.res.ptr += args->col0 * sizeof(float);
  return t;
}

static void linear_fwd_cpu(void *buffers[], void *cl_arg) {
  const struct linear_fwd_args *args = cl_arg;
  struct linear_fwd_task t = linear_fwd_task(buffers, args);
  eellm_cpu_linear_fwd(t.x.rows, t.x.cols, t.y.cols, args->transpose_w, (const float *)t.x.ptr,
                       t.x.ld, (const float *)t.w.ptr, t.w.ld, t.bias, (const float *)t.res.ptr,
                       t.res.ld, (float *)t.y.ptr, t.y.ld);
}

/* As linear_fwd_cpu, W [M, K] in bf16 used transposed, N <= EELLM_CPU_BF16_MAX_ROWS. */
static void linear_fwd_bf16_cpu(void *buffers[], void *cl_arg) {
  const struct linear_fwd_args *args = cl_arg;
  struct linear_fwd_task t = linear_fwd_task(buffers, args);
  if (!args->transpose_w || !eellm_linear_bf16_fits(t.x.rows)) {
    fprintf(stderr, "eellm: bf16 product of %zu rows%s\n", t.x.rows,
            args->transpose_w ? "" : " on an untransposed weight");
    abort(); /* a graph's bug: eellm_insert_linear_fwd's callers check */
  }
  eellm_cpu_linear_fwd_bf16(t.x.rows, t.x.cols, t.y.cols, (const float *)t.x.ptr, t.x.ld,
                            (const uint16_t *)t.w.ptr, t.w.ld, t.bias, (const float *)t.res.ptr,
                            t.res.ld, (float *)t.y.ptr, t.y.ld);
}

/* x [N, K], W [K, M] (or [M, K] transposed), dy [N, M], dx [N, K] (optional),
 * dW (optional), db [M] (optional), work (SCRATCH, with db). */
struct linear_bwd_task {
  struct eellm_tensor_view x, w, dy, dx, dw;
  float *db;
  void *work;
};

static struct linear_bwd_task linear_bwd_task(void *buffers[], const struct linear_bwd_args *args) {
  int b = 0;
  struct linear_bwd_task t = {0};
  t.x = eellm_tensor_view(buffers[b++]);
  t.w = eellm_tensor_view(buffers[b++]);
  t.dy = eellm_tensor_view(buffers[b++]);
  if (args->has_dx) t.dx = eellm_tensor_view(buffers[b++]);
  if (args->has_dw) t.dw = eellm_tensor_view(buffers[b++]);
  if (args->has_db) {
    t.db = (float *)STARPU_VECTOR_GET_PTR(buffers[b++]);
    t.work = (void *)STARPU_VECTOR_GET_PTR(buffers[b++]);
  }
  return t;
}

static void linear_bwd_cpu(void *buffers[], void *cl_arg) {
  const struct linear_bwd_args *args = cl_arg;
  struct linear_bwd_task t = linear_bwd_task(buffers, args);
  eellm_cpu_linear_bwd(t.x.rows, t.x.cols, t.dy.cols, args->transpose_w, args->beta_dx,
                       (const float *)t.x.ptr, t.x.ld, (const float *)t.w.ptr, t.w.ld,
                       (const float *)t.dy.ptr, t.dy.ld, (float *)t.dx.ptr, t.dx.ld,
                       (float *)t.dw.ptr, t.dw.ld, t.db, t.work);
}

static void linear_dw_cpu(void *buffers[], void *cl_arg) { linear_bwd_cpu(buffers, cl_arg); }

#ifdef STARPU_USE_CUDA
static void linear_fwd_cuda(void *buffers[], void *cl_arg) {
  const struct linear_fwd_args *args = cl_arg;
  struct linear_fwd_task t = linear_fwd_task(buffers, args);
  eellm_cuda_linear_fwd(t.x.rows, t.x.cols, t.y.cols, args->transpose_w, (const float *)t.x.ptr,
                        t.x.ld, (const float *)t.w.ptr, t.w.ld, t.bias, (const float *)t.res.ptr,
                        t.res.ld, (float *)t.y.ptr, t.y.ld, starpu_cuda_get_local_stream(),
                        eellm_cublas_handle());
}

static void linear_bwd_cuda(void *buffers[], void *cl_arg) {
  const struct linear_bwd_args *args = cl_arg;
  struct linear_bwd_task t = linear_bwd_task(buffers, args);
  eellm_cuda_linear_bwd(t.x.rows, t.x.cols, t.dy.cols, args->transpose_w, args->beta_dx,
                        (const float *)t.x.ptr, t.x.ld, (const float *)t.w.ptr, t.w.ld,
                        (const float *)t.dy.ptr, t.dy.ld, (float *)t.dx.ptr, t.dx.ld,
                        (float *)t.dw.ptr, t.dw.ld, t.db, t.work, starpu_cuda_get_local_stream(),
                        eellm_cublas_handle());
}

static void linear_dw_cuda(void *buffers[], void *cl_arg) { linear_bwd_cuda(buffers, cl_arg); }
#endif

/* A thin product (decoding: a row per sequence) on a weight of at least
 * SPLIT_MIN_BYTES is split into column blocks of y, one task each, all reading
 * the whole x and W: each streams its share of W, which at batch 1 would
 * otherwise stream through one core while the others wait. */
#define SPLIT_MAX_ROWS 64
#define SPLIT_MIN_BYTES ((size_t)1 << 21)

int eellm_linear_bf16_fits(size_t rows) { return rows >= 1 && rows <= EELLM_CPU_BF16_MAX_ROWS; }

unsigned eellm_linear_fwd_blocks(size_t rows, size_t cols, starpu_data_handle_t w) {
  int thin = rows <= SPLIT_MAX_ROWS && starpu_data_get_size(w) >= SPLIT_MIN_BYTES;
  return thin ? eellm_split_count(cols) : 1;
}

void eellm_insert_linear_fwd(starpu_data_handle_t x, starpu_data_handle_t w, starpu_data_handle_t b,
                             starpu_data_handle_t residual, starpu_data_handle_t y, int transpose_w,
                             const struct eellm_task_info *info) {
  struct linear_fwd_args args = {
      .transpose_w = transpose_w, .has_bias = b != NULL, .has_residual = residual != NULL};
  struct starpu_data_descr buffers[5];
  int n = 0;
  buffers[n++] = (struct starpu_data_descr){x, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){w, STARPU_R};
  if (b) buffers[n++] = (struct starpu_data_descr){b, STARPU_R};
  if (residual) buffers[n++] = (struct starpu_data_descr){residual, STARPU_R};
  size_t cols = starpu_matrix_get_nx(y);
  unsigned blocks = eellm_linear_fwd_blocks(starpu_matrix_get_ny(y), cols, w);
  struct starpu_codelet *cl =
      starpu_matrix_get_elemsize(w) == sizeof(uint16_t) ? &linear_fwd_bf16_cl : &linear_fwd_cl;
  /* 2 FLOPs per weight and row, of each block's columns */
  double flops_per_col = 2.0 * starpu_matrix_get_ny(x) * starpu_matrix_get_nx(x);
  if (blocks == 1) {
    buffers[n] = (struct starpu_data_descr){y, STARPU_W};
    struct eellm_task_info counted = *info;
    counted.flops = flops_per_col * (double)cols;
    eellm_submit(cl, buffers, n + 1, &args, sizeof args, &counted);
    return;
  }
  starpu_data_handle_t parts[EELLM_SPLIT_MAX];
  eellm_split_outputs(y, blocks, parts);
  for (unsigned i = 0; i < blocks; i++) {
    args.col0 = eellm_split_at(cols, blocks, i);
    buffers[n] = (struct starpu_data_descr){parts[i], STARPU_W};
    struct eellm_task_info block = eellm_split_info(info, i);
    block.flops = flops_per_col * (double)starpu_matrix_get_nx(parts[i]);
    eellm_submit(cl, buffers, n + 1, &args, sizeof args, &block);
  }
  eellm_join_outputs(y, blocks, parts, info);
}

/* One task of a backward: the gradients args asks for, with their buffers. */
static void submit_linear_bwd(struct starpu_codelet *cl, starpu_data_handle_t x,
                              starpu_data_handle_t w, starpu_data_handle_t dy,
                              starpu_data_handle_t dx, starpu_data_handle_t dw,
                              starpu_data_handle_t db, struct linear_bwd_args args,
                              const struct eellm_task_info *info) {
  args.has_dx = dx != NULL;
  args.has_dw = dw != NULL;
  args.has_db = db != NULL;
  struct starpu_data_descr buffers[7];
  int n = 0;
  buffers[n++] = (struct starpu_data_descr){x, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){w, STARPU_R};
  buffers[n++] = (struct starpu_data_descr){dy, STARPU_R};
  if (dx) buffers[n++] = (struct starpu_data_descr){dx, args.beta_dx ? STARPU_RW : STARPU_W};
  if (dw) buffers[n++] = (struct starpu_data_descr){dw, STARPU_RW};
  if (db) buffers[n++] = (struct starpu_data_descr){db, STARPU_RW};
  size_t cols = starpu_matrix_get_nx(dy);
  n = eellm_add_scratch(buffers, n,
                        EELLM_WORK_BYTES(eellm_cpu_linear_bwd_work_bytes(cols, db != NULL),
                                         eellm_cuda_linear_bwd_work_bytes(starpu_matrix_get_ny(dy),
                                                                          cols, db != NULL)));
  /* each of dx and dW is a product of 2 FLOPs per weight and row */
  struct eellm_task_info counted = *info;
  counted.flops = (args.has_dx + args.has_dw) * 2.0 * starpu_matrix_get_ny(dy) * (double)cols *
                  starpu_matrix_get_nx(x);
  eellm_submit(cl, buffers, n, &args, sizeof args, &counted);
}

/* dx on the chain (linear_bwd), dW and db beside it (linear_dw) at one priority less. */
void eellm_insert_linear_bwd(starpu_data_handle_t x, starpu_data_handle_t w,
                             starpu_data_handle_t dy, starpu_data_handle_t dx,
                             starpu_data_handle_t dw, starpu_data_handle_t db, int transpose_w,
                             int beta_dx, const struct eellm_task_info *info) {
  struct linear_bwd_args args = {.transpose_w = transpose_w, .beta_dx = beta_dx};
  if (!dx || (!dw && !db)) {
    submit_linear_bwd(&linear_bwd_cl, x, w, dy, dx, dw, db, args, info);
    return;
  }
  submit_linear_bwd(&linear_bwd_cl, x, w, dy, dx, NULL, NULL, args, info);
  struct eellm_task_info beside = *info;
  beside.priority--;
  submit_linear_bwd(&linear_dw_cl, x, w, dy, NULL, dw, db, args, &beside);
}
