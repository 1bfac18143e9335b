/* What the CUDA kernels share (private to codelets/cuda/): launch sizes, the
 * launch check, and warp and block reductions. Every reduction has a fixed
 * order for a given launch, so a kernel gives the same bits run after run. */
#ifndef EELLM_CUDA_COMMON_CUH
#define EELLM_CUDA_COMMON_CUH

#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

#include "kernels.h"

#define EELLM_BLOCK 256       /* threads of the row and element kernels */
#define EELLM_MAX_BLOCKS 4096 /* grid-stride kernels launch at most this many blocks */

/* Blocks for `work` items at EELLM_BLOCK per block, at least 1, at most EELLM_MAX_BLOCKS. */
static inline unsigned eellm_blocks(size_t work) {
  size_t blocks = (work + EELLM_BLOCK - 1) / EELLM_BLOCK;
  if (blocks == 0) blocks = 1;
  return (unsigned)(blocks < EELLM_MAX_BLOCKS ? blocks : EELLM_MAX_BLOCKS);
}

/* Blocks of the one-block-per-row kernels (which loop when rows are more). */
static inline unsigned eellm_row_blocks(size_t rows) {
  return (unsigned)(rows == 0 ? 1 : rows < EELLM_MAX_BLOCKS ? rows : EELLM_MAX_BLOCKS);
}

/* A failed launch or enqueue is a bug (a size past the device's limits), not bad input. */
static inline void eellm_check_cuda(cudaError_t err, const char *what) {
  if (err != cudaSuccess) {
    fprintf(stderr, "eellm: CUDA %s: %s\n", what, cudaGetErrorString(err));
    abort();
  }
}

static inline void eellm_check_launch(const char *kernel) {
  eellm_check_cuda(cudaGetLastError(), kernel);
}

template <typename T>
__device__ inline T eellm_warp_sum(T v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ inline float eellm_warp_max(float v) {
  for (int offset = 16; offset > 0; offset /= 2)
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

/* The sum of v over the block, in every thread. All threads of the block call
 * it together; blockDim.x is a multiple of 32, at most 1024. */
template <typename T>
__device__ inline T eellm_block_sum(T v) {
  __shared__ T partial[32];
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
  v = eellm_warp_sum(v);
  __syncthreads(); /* partial may still be read by a previous call */
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  T total = 0;
  for (int w = 0; w < n_warps; w++) total += partial[w];
  return total;
}

/* The largest v over the block, in every thread (as eellm_block_sum). */
__device__ inline float eellm_block_max(float v) {
  __shared__ float partial[32];
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
  v = eellm_warp_max(v);
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  float best = partial[0];
  for (int w = 1; w < n_warps; w++) best = fmaxf(best, partial[w]);
  return best;
}

/* ---- column sums: bias and gain gradients --------------------------------- */

/* Rows are summed in EELLM_COLUMN_CHUNKS chunks, one thread per (column, chunk),
 * into double partials in work, then the partials in chunk order: enough
 * threads to fill the device, and a fixed order of addition. */
#define EELLM_COLUMN_CHUNKS 64

static inline size_t eellm_column_chunks(size_t rows) {
  return rows < EELLM_COLUMN_CHUNKS ? (rows ? rows : 1) : EELLM_COLUMN_CHUNKS;
}

/* partial [chunk, col] = sum of term(r, col) over the chunk's rows, in double. */
template <typename Term>
__global__ void eellm_column_partial_kernel(size_t rows, size_t cols, size_t rows_per_chunk,
                                            Term term, double *partial) {
  size_t col = blockIdx.x * (size_t)blockDim.x + threadIdx.x, chunk = blockIdx.y;
  if (col >= cols) return;
  size_t begin = chunk * rows_per_chunk, end = begin + rows_per_chunk;
  if (end > rows) end = rows;
  double sum = 0;
  for (size_t r = begin; r < end; r++) sum += term(r, col);
  partial[chunk * cols + col] = sum;
}

/* dst [col] += the sum of partial [0 .. chunks-1, col], in chunk order. */
static __global__ void eellm_add_partials_kernel(size_t cols, size_t chunks, const double *partial,
                                                 float *dst) {
  size_t col = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (col >= cols) return;
  double sum = 0;
  for (size_t c = 0; c < chunks; c++) sum += partial[c * cols + col];
  dst[col] += (float)sum;
}

/* dst [cols] += column sums of term(r, col) over rows; work holds
 * eellm_cuda_column_sums_work_bytes(rows, cols). */
template <typename Term>
void eellm_add_column_sums_of(size_t rows, size_t cols, Term term, float *dst, void *work,
                              cudaStream_t stream) {
  if (cols == 0) return;
  size_t chunks = eellm_column_chunks(rows), per_chunk = (rows + chunks - 1) / chunks;
  dim3 grid((unsigned)((cols + EELLM_BLOCK - 1) / EELLM_BLOCK), (unsigned)chunks);
  eellm_column_partial_kernel<<<grid, EELLM_BLOCK, 0, stream>>>(rows, cols, per_chunk, term,
                                                                (double *)work);
  eellm_check_launch("column sums");
  eellm_add_partials_kernel<<<grid.x, EELLM_BLOCK, 0, stream>>>(cols, chunks, (const double *)work,
                                                                dst);
  eellm_check_launch("column sums (total)");
}

#endif
