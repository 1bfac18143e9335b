/* What the CPU kernels' hot loops share to run on the machine's vector units:
 * function multiversioning, and an exp that compilers vectorise.
 *
 * EELLM_VECTORIZED before a static function's definition compiles it three times
 * (x86-64-v4: AVX-512; x86-64-v3: AVX2 and FMA; the baseline) and picks one at load
 * time from the CPU (an ifunc), so one binary runs at full width wherever it is built
 * and runs: -march=native would tie the build to the build machine, and CI builds on
 * another machine of the same kind. Static only: GCC exports the ifunc of an external
 * function whatever its visibility, so kernels call such helpers (a row's loop, say).
 * Other compilers and architectures get the plain function. A clone with FMA may round
 * differently from the baseline; on one machine a kernel always gives the same bits. */
#ifndef EELLM_CPU_VECTOR_H
#define EELLM_CPU_VECTOR_H

#include <stddef.h>
#include <stdint.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__ELF__)
#define EELLM_VECTORIZED \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define EELLM_CLONES_V4() __builtin_cpu_supports("x86-64-v4")
#define EELLM_CLONE_NAME()                                         \
  (__builtin_cpu_supports("x86-64-v4")   ? "x86-64-v4 (AVX-512)"   \
   : __builtin_cpu_supports("x86-64-v3") ? "x86-64-v3 (AVX2, FMA)" \
                                         : "x86-64 (SSE2)")
#else
#define EELLM_VECTORIZED
#define EELLM_CLONES_V4() 0
#define EELLM_CLONE_NAME() "portable C"
#endif

/* 64-byte vectors (GCC's vector extensions) for hand-tiled loops, in always-inline helpers
 * that run inside EELLM_VECTORIZED clones: GCC's warning about their ABI without AVX-512
 * concerns calls that never happen. Only the AVX-512 clone holds them in registers: the
 * others split every operation into pieces through memory (a tile of 4 x 4 vectors ran
 * 9 times slower on AVX2 than on AVX-512), so a loop that keeps many of them live belongs
 * where eellm_vf16_registers() holds. */
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float vf16 __attribute__((vector_size(64)));

/* Whether the EELLM_VECTORIZED clone that runs here is the AVX-512 one. */
static inline int eellm_vf16_registers(void) { return EELLM_CLONES_V4(); }

/* The EELLM_VECTORIZED clone that runs here, by name. */
static inline const char *eellm_vectorized_clone(void) { return EELLM_CLONE_NAME(); }

static inline __attribute__((always_inline)) vf16 load16(const float *p) {
  vf16 v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

/* x in every lane, one broadcast from memory (GCC 12 makes a 16-element initialiser, or
 * a scalar operand of a vector operation, into a masked insert per lane). */
static inline __attribute__((always_inline)) vf16 broadcast16(float x) {
  vf16 lane0 = {x};
  return __builtin_shufflevector(lane0, lane0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
}

static inline __attribute__((always_inline)) void store16(float *p, vf16 v) {
  __builtin_memcpy(p, &v, sizeof v);
}

/* Long sums in the kernels add float partial sums of EELLM_SUM_BLOCK terms in double:
 * vectorised float additions within a block, double precision across blocks. */
enum { EELLM_SUM_BLOCK = 512 };

/* Sum over i < n of (x[i] - shift)^2: float partial sums of EELLM_SUM_BLOCK terms added in
 * double. Inline: it runs at the width of the EELLM_VECTORIZED clone that calls it. */
static inline double eellm_sum_squares(const float *x, size_t n, float shift) {
  double sum = 0;
  for (size_t i0 = 0; i0 < n; i0 += EELLM_SUM_BLOCK) {
    size_t end = i0 + EELLM_SUM_BLOCK < n ? i0 + EELLM_SUM_BLOCK : n;
    float part = 0;
#pragma omp simd reduction(+ : part)
    for (size_t i = i0; i < end; i++) part += (x[i] - shift) * (x[i] - shift);
    sum += part;
  }
  return sum;
}

/* The largest of start and x[0 .. n-1] (no NaN). Inline: it runs at the width of the
 * EELLM_VECTORIZED clone that calls it. */
static inline float eellm_max(const float *x, size_t n, float start) {
  float max = start;
#pragma omp simd reduction(max : max)
  for (size_t i = 0; i < n; i++) max = x[i] > max ? x[i] : max;
  return max;
}

/* exp(x) in float, within 2 ulp of expf over its range, branch-free so that loops over it
 * vectorise (libm's expf is a call per element): x = n ln2 + r, |r| <= ln2 / 2, exp(r)
 * by Cephes' degree-6 polynomial, times 2^n made in the exponent bits. Below -87.3
 * (where expf goes subnormal) it is 0, above 88 inf (expf overflows at 88.72: the kernels only
 * feed it shifted logits <= 0 and sigmoid arguments, where both give the same); NaN stays NaN. */
static inline float eellm_vexpf(float x) {
  const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
  float xc = x > 88.0f ? 88.0f : x;
  xc = xc < -87.3f ? -87.3f : xc;
  float t = xc * 1.44269504088896341f + magic;
  float n = t - magic;
  union {
    float f;
    uint32_t u; /* unsigned: a NaN's bits wrap where a signed int's would overflow */
  } bits = {t};
  uint32_t n_bits = bits.u - 0x4B400000u; /* minus the bits of magic: n as an integer */
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  bits.u = (n_bits + 127u) << 23; /* 2^n */
  float y = p * bits.f;
  y = x < -87.3f ? 0.0f : y;
  return x > 88.0f ? __builtin_inff() : y;
}

#endif
