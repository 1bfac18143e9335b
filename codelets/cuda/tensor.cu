/* Whole-tensor helpers (zero, copy, axpy) and row gathering on the GPU. */
#include <math.h>

#include "common.cuh"

void eellm_cuda_zero(size_t rows, size_t cols, size_t elemsize, void *t, size_t ld,
                     cudaStream_t stream) {
  if (rows * cols == 0) return;
  eellm_check_cuda(cudaMemset2DAsync(t, ld * elemsize, 0, cols * elemsize, rows, stream), "zero");
}

void eellm_cuda_copy(size_t rows, size_t cols, size_t elemsize, const void *src, size_t ld_src,
                     void *dst, size_t ld_dst, cudaStream_t stream) {
  if (rows * cols == 0) return;
  eellm_check_cuda(cudaMemcpy2DAsync(dst, ld_dst * elemsize, src, ld_src * elemsize,
                                     cols * elemsize, rows, cudaMemcpyDeviceToDevice, stream),
                   "copy");
}

__global__ void axpy_kernel(size_t rows, size_t cols, float alpha, const float *src, size_t ld_src,
                            float *dst, size_t ld_dst) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < rows * cols;
       i += (size_t)gridDim.x * blockDim.x) {
    size_t r = i / cols, c = i % cols;
    dst[r * ld_dst + c] += alpha * src[r * ld_src + c];
  }
}

void eellm_cuda_axpy(size_t rows, size_t cols, float alpha, const float *src, size_t ld_src,
                     float *dst, size_t ld_dst, cudaStream_t stream) {
  if (rows * cols == 0) return;
  axpy_kernel<<<eellm_blocks(rows * cols), EELLM_BLOCK, 0, stream>>>(rows, cols, alpha, src, ld_src,
                                                                     dst, ld_dst);
  eellm_check_launch("axpy");
}

/* dst row r = src row index[r]; NaN for an index outside src. */
__global__ void gather_rows_kernel(size_t m, size_t dim, const float *src, size_t ld_src,
                                   size_t n_src, const int32_t *index, float *dst, size_t ld_dst) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < m * dim;
       i += (size_t)gridDim.x * blockDim.x) {
    size_t r = i / dim, d = i % dim;
    int32_t from = index[r];
    dst[r * ld_dst + d] = from >= 0 && (size_t)from < n_src ? src[from * ld_src + d] : NAN;
  }
}

void eellm_cuda_gather_rows(size_t m, size_t dim, const float *src, size_t ld_src, size_t n_src,
                            const int32_t *index, float *dst, size_t ld_dst, cudaStream_t stream) {
  if (m * dim == 0) return;
  gather_rows_kernel<<<eellm_blocks(m * dim), EELLM_BLOCK, 0, stream>>>(m, dim, src, ld_src, n_src,
                                                                        index, dst, ld_dst);
  eellm_check_launch("gather_rows");
}
