/* OpenBLAS chooses its kernels once, as it loads, from the CPU's model number, and on
 * models newer than it knows it falls back to its SSE3 kernels (Prescott): Debian 12's
 * 0.3.21 does so on Intel family 6 model 207 (Emerald Rapids), where one thread's sgemm
 * then runs at 29 GFLOP/s against 120-148 with its AVX-512 kernels. OPENBLAS_CORETYPE
 * overrides the choice but is read only at that load, so the program is started again
 * with it set. */
#define _GNU_SOURCE
#include <cblas.h>
#include <stdlib.h>
#include <strings.h>
#include <unistd.h>

#include "codelets/cpu/vector.h"
#include "eellm.h"

/* OpenBLAS's x86 kernels that use AVX2 and FMA or more. */
static const char *const vector_cores[] = {"Haswell",  "Zen",        "Excavator",
                                           "SkylakeX", "Cooperlake", "SapphireRapids"};

static int runs_vector_kernels(const char *core) {
  for (size_t i = 0; i < sizeof vector_cores / sizeof vector_cores[0]; i++)
    if (strcasecmp(core, vector_cores[i]) == 0) return 1;
  return 0;
}

const char *eellm_blas_core_for_cpu(void) {
  if (getenv("OPENBLAS_CORETYPE") || runs_vector_kernels(openblas_get_corename())) return NULL;
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
#endif
  return NULL;
}

const char *eellm_cpu_kernels(void) { return eellm_vectorized_clone(); }

void eellm_blas_fit_cpu(char **argv) {
  const char *core = eellm_blas_core_for_cpu();
  if (!core || setenv("OPENBLAS_CORETYPE", core, 1) != 0) return;
  execv("/proc/self/exe", argv);
  unsetenv("OPENBLAS_CORETYPE"); /* no exec: run on as loaded */
}
