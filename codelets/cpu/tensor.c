/* Whole-tensor helpers (zero, copy, axpy), row gathering, and the index check
 * the kernels share. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

void eellm_cpu_check_index(const char *what, int32_t i, size_t n) {
  if (i < 0 || (size_t)i >= n) {
    fprintf(stderr, "eellm: %s %d outside 0..%zu\n", what, (int)i, n - 1);
    abort();
  }
}

void eellm_cpu_zero(size_t rows, size_t cols, size_t elemsize, void *t, size_t ld) {
  for (size_t r = 0; r < rows; r++) memset((char *)t + r * ld * elemsize, 0, cols * elemsize);
}

void eellm_cpu_copy(size_t rows, size_t cols, size_t elemsize, const void *src, size_t ld_src,
                    void *dst, size_t ld_dst) {
  for (size_t r = 0; r < rows; r++)
    memcpy((char *)dst + r * ld_dst * elemsize, (const char *)src + r * ld_src * elemsize,
           cols * elemsize);
}

void eellm_cpu_axpy(size_t rows, size_t cols, float alpha, const float *src, size_t ld_src,
                    float *dst, size_t ld_dst) {
  for (size_t r = 0; r < rows; r++)
    cblas_saxpy((int)cols, alpha, src + r * ld_src, 1, dst + r * ld_dst, 1);
}

void eellm_cpu_gather_rows(size_t m, size_t dim, const float *src, size_t ld_src, size_t n_src,
                           const int32_t *index, float *dst, size_t ld_dst) {
  for (size_t r = 0; r < m; r++) {
    eellm_cpu_check_index("gather_rows: row", index[r], n_src);
    memcpy(dst + r * ld_dst, src + (size_t)index[r] * ld_src, dim * sizeof *dst);
  }
}
