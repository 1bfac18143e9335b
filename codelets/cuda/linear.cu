/* Linear layer y = x @ W (+ b) (+ residual), forward and backward, on cuBLAS,
 * and the column sums that make bias gradients.
 *
 * cuBLAS is column-major: a row-major [r, c] matrix with row stride ld is, to
 * cuBLAS, its transpose [c, r] with leading dimension ld. So the row-major
 * product C = op(A) op(B) is computed as C^T = op(B)^T op(A)^T: operands
 * swapped, the same transpose flags, m and n swapped. */
#include "common.cuh"

/* Row-major C [rows, cols] (ldc) = alpha * op_a(A) [rows, inner] op_b(B) [inner, cols]
 * + beta * C, where op(X) = X^T when the flag is set (A, B row-major with lda, ldb). */
static void row_major_sgemm(cublasHandle_t handle, int trans_a, int trans_b, size_t rows,
                            size_t cols, size_t inner, float alpha, const float *a, size_t lda,
                            const float *b, size_t ldb, float beta, float *c, size_t ldc) {
  cublasStatus_t status = cublasSgemm(
      handle, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, (int)cols,
      (int)rows, (int)inner, &alpha, b, (int)ldb, a, (int)lda, &beta, c, (int)ldc);
  if (status != CUBLAS_STATUS_SUCCESS) {
    fprintf(stderr, "eellm: cublasSgemm [%zu, %zu] x %zu: status %d\n", rows, cols, inner,
            (int)status);
    abort();
  }
}

/* y [n, m] = b (if any) + res (if any), before the product is added on top. */
__global__ void bias_residual_kernel(size_t n, size_t m, const float *b, const float *res,
                                     size_t ld_res, float *y, size_t ld_y) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n * m;
       i += (size_t)gridDim.x * blockDim.x) {
    size_t r = i / m, c = i % m;
    y[r * ld_y + c] = (b ? b[c] : 0.0f) + (res ? res[r * ld_res + c] : 0.0f);
  }
}

void eellm_cuda_linear_fwd(size_t n, size_t k, size_t m, int transpose_w, const float *x,
                           size_t ld_x, const float *w, size_t ld_w, const float *b,
                           const float *res, size_t ld_res, float *y, size_t ld_y,
                           cudaStream_t stream, cublasHandle_t handle) {
  if (n * m == 0) return;
  if (b || res) {
    bias_residual_kernel<<<eellm_blocks(n * m), EELLM_BLOCK, 0, stream>>>(n, m, b, res, ld_res, y,
                                                                          ld_y);
    eellm_check_launch("linear_fwd (bias, residual)");
  }
  row_major_sgemm(handle, 0, transpose_w, n, m, k, 1.0f, x, ld_x, w, ld_w, (b || res) ? 1.0f : 0.0f,
                  y, ld_y);
}

struct plain_term {
  const float *a;
  size_t ld;
  __device__ double operator()(size_t r, size_t col) const { return a[r * ld + col]; }
};

size_t eellm_cuda_column_sums_work_bytes(size_t rows, size_t cols) {
  return eellm_column_chunks(rows) * cols * sizeof(double);
}

void eellm_cuda_add_column_sums(size_t rows, size_t cols, const float *a, size_t ld_a, float *dst,
                                void *work, cudaStream_t stream) {
  plain_term term = {a, ld_a};
  eellm_add_column_sums_of(rows, cols, term, dst, work, stream);
}

size_t eellm_cuda_linear_bwd_work_bytes(size_t n, size_t m, int has_db) {
  return has_db ? eellm_cuda_column_sums_work_bytes(n, m) : 0;
}

void eellm_cuda_linear_bwd(size_t n, size_t k, size_t m, int transpose_w, int beta_dx,
                           const float *x, size_t ld_x, const float *w, size_t ld_w,
                           const float *dy, size_t ld_dy, float *dx, size_t ld_dx, float *dw,
                           size_t ld_dw, float *db, void *work, cudaStream_t stream,
                           cublasHandle_t handle) {
  /* dx [n, k] = dy [n, m] W^T (W [k, m]) or dy W (W [m, k]). */
  if (dx)
    row_major_sgemm(handle, 0, !transpose_w, n, k, m, 1.0f, dy, ld_dy, w, ld_w,
                    beta_dx ? 1.0f : 0.0f, dx, ld_dx);
  /* dW [k, m] += x^T dy, or dW [m, k] += dy^T x. */
  if (dw) {
    if (transpose_w)
      row_major_sgemm(handle, 1, 0, m, k, n, 1.0f, dy, ld_dy, x, ld_x, 1.0f, dw, ld_dw);
    else
      row_major_sgemm(handle, 1, 0, k, m, n, 1.0f, x, ld_x, dy, ld_dy, 1.0f, dw, ld_dw);
  }
  if (db) eellm_cuda_add_column_sums(n, m, dy, ld_dy, db, work, stream);
}
