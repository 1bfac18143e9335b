/* Causal multi-head self-attention on the GPU, fused: one warp per query row
 * (forward, dQ) or key row (dK, dV) of one head, WARPS rows per block, an
 * online softmax over the keys, and the T x T scores never stored (backward
 * recomputes them from the saved log-sum-exp). RoPE as on the CPU (rotate half:
 * pairs (i, i + hd/2), angle pos * theta^(-2i/hd), in double).
 *
 * A lane holds the head's dimension pairs i = lane, lane + 32, ... (i < half,
 * half = ceil(hd / 2)): dims i and i + half, so a rotation stays in the lane. */
#include <math.h>

#include "common.cuh"

#define WARPS 4 /* rows per block */

/* Pairs per lane for a head size (1 .. 4 for hd <= EELLM_CUDA_MAX_HEAD_DIM). */
static int pairs_per_lane(size_t hd) { return (int)(((hd + 1) / 2 + 31) / 32); }

/* The rotation of pair i at position pos, as eellm_cpu_rope_table computes it. */
__device__ inline void rope_angle(size_t pos, int i, int hd, float theta, float *c, float *s) {
  double freq = pow((double)theta, -2.0 * (double)i / (double)hd);
  *c = (float)cos((double)pos * freq);
  *s = (float)sin((double)pos * freq);
}

/* One head row [hd] as the lane's pairs. */
template <int NP>
struct head_row {
  float lo[NP], hi[NP];
};

template <int NP>
__device__ inline head_row<NP> load_row(const float *x, int hd) {
  int lane = threadIdx.x % 32, half = (hd + 1) / 2;
  head_row<NP> row;
  for (int k = 0; k < NP; k++) {
    int i = lane + 32 * k;
    row.lo[k] = i < half ? x[i] : 0.0f;
    row.hi[k] = i < half && i + half < hd ? x[i + half] : 0.0f;
  }
  return row;
}

/* y = row (or y += row, with accumulate), scaled by `scale`. */
template <int NP>
__device__ inline void store_row(float *y, const head_row<NP> &row, int hd, float scale,
                                 int accumulate) {
  int lane = threadIdx.x % 32, half = (hd + 1) / 2;
  for (int k = 0; k < NP; k++) {
    int i = lane + 32 * k;
    if (i >= half) continue;
    float lo = row.lo[k] * scale, hi = row.hi[k] * scale;
    y[i] = accumulate ? y[i] + lo : lo;
    if (i + half < hd) y[i + half] = accumulate ? y[i + half] + hi : hi;
  }
}

/* Rotates row by the angles of table row (cos_row, sin_row) [half], or by
 * `inverse` the opposite angles (the transpose, for gradients). */
template <int NP>
__device__ inline void rotate(head_row<NP> &row, const float *cos_row, const float *sin_row, int hd,
                              int inverse) {
  int lane = threadIdx.x % 32, half = hd / 2;
  for (int k = 0; k < NP; k++) {
    int i = lane + 32 * k;
    if (i >= half) continue;
    float c = cos_row[i], s = inverse ? -sin_row[i] : sin_row[i];
    float lo = row.lo[k], hi = row.hi[k];
    row.lo[k] = lo * c - hi * s;
    row.hi[k] = hi * c + lo * s;
  }
}

/* The same at position pos, angles computed here (generation: one row each). */
template <int NP>
__device__ inline void rotate_at(head_row<NP> &row, size_t pos, int hd, float theta) {
  int lane = threadIdx.x % 32, half = hd / 2;
  for (int k = 0; k < NP; k++) {
    int i = lane + 32 * k;
    if (i >= half) continue;
    float c, s;
    rope_angle(pos, i, hd, theta, &c, &s);
    float lo = row.lo[k], hi = row.hi[k];
    row.lo[k] = lo * c - hi * s;
    row.hi[k] = hi * c + lo * s;
  }
}

template <int NP>
__device__ inline float dot(const head_row<NP> &a, const head_row<NP> &b) {
  float partial = 0;
  for (int k = 0; k < NP; k++) partial += a.lo[k] * b.lo[k] + a.hi[k] * b.hi[k];
  return eellm_warp_sum(partial);
}

/* acc = acc * keep + w * x. */
template <int NP>
__device__ inline void scale_add(head_row<NP> &acc, float keep, float w, const head_row<NP> &x) {
  for (int k = 0; k < NP; k++) {
    acc.lo[k] = acc.lo[k] * keep + w * x.lo[k];
    acc.hi[k] = acc.hi[k] * keep + w * x.hi[k];
  }
}

template <int NP>
__device__ inline head_row<NP> zero_row() {
  head_row<NP> row;
  for (int k = 0; k < NP; k++) row.lo[k] = row.hi[k] = 0.0f;
  return row;
}

/* Online softmax state of one query row: running max, normaliser, P v. */
template <int NP>
struct online_softmax {
  float max, sum;
  head_row<NP> acc;
};

template <int NP>
__device__ inline void online_add(online_softmax<NP> &o, float score, const head_row<NP> &v) {
  float max = fmaxf(o.max, score);
  float keep = expf(o.max - max), p = expf(score - max);
  o.sum = o.sum * keep + p;
  scale_add(o.acc, keep, p, v);
  o.max = max;
}

/* ---- training attention: whole sequences ---------------------------------- */

/* Which (sequence, head, row) this warp handles; false past the last row. */
struct warp_row {
  size_t b, h, t;
};

__device__ inline bool locate(size_t n_seq, size_t T, size_t H, warp_row *w) {
  size_t tiles = (T + WARPS - 1) / WARPS, blk = blockIdx.x;
  w->t = (blk % tiles) * WARPS + threadIdx.x / 32;
  w->h = (blk / tiles) % H;
  w->b = blk / tiles / H;
  return w->b < n_seq && w->t < T;
}

/* Where a sequence's rows and one head's columns are. */
struct qkv_layout {
  const float *qkv;
  size_t ld, T, D;
  int hd;
  const float *cos_t, *sin_t; /* [T, hd/2] each; NULL without RoPE */
};

/* Row t of sequence b's q (part 0), k (1) or v (2) for head h, RoPE applied to q and k. */
template <int NP>
__device__ inline head_row<NP> qkv_row(const qkv_layout &l, size_t b, size_t h, size_t t,
                                       int part) {
  head_row<NP> row = load_row<NP>(l.qkv + (b * l.T + t) * l.ld + part * l.D + h * l.hd, l.hd);
  if (l.cos_t && part < 2) rotate(row, l.cos_t + t * (l.hd / 2), l.sin_t + t * (l.hd / 2), l.hd, 0);
  return row;
}

template <int NP>
__global__ void attention_fwd_kernel(size_t n_seq, size_t H, qkv_layout l, float *out,
                                     size_t ld_out, float *lse, size_t ld_lse) {
  warp_row w;
  if (!locate(n_seq, l.T, H, &w)) return;
  float scale = 1.0f / sqrtf((float)l.hd);
  head_row<NP> q = qkv_row<NP>(l, w.b, w.h, w.t, 0);
  online_softmax<NP> o = {-INFINITY, 0.0f, zero_row<NP>()};
  for (size_t j = 0; j <= w.t; j++)
    online_add(o, scale * dot(q, qkv_row<NP>(l, w.b, w.h, j, 1)), qkv_row<NP>(l, w.b, w.h, j, 2));
  size_t row = w.b * l.T + w.t;
  store_row(out + row * ld_out + w.h * l.hd, o.acc, l.hd, 1.0f / o.sum, 0);
  if (threadIdx.x % 32 == 0) lse[row * ld_lse + w.h] = o.max + logf(o.sum);
}

/* Backward, per query row t: delta = sum_j P_tj dP_tj (dP = dO v^T), then
 * dQ = scale * sum_j P_tj (dP_tj - delta) k_j; delta is kept for the dK, dV pass. */
template <int NP>
__global__ void attention_dq_kernel(size_t n_seq, size_t H, qkv_layout l, const float *lse,
                                    size_t ld_lse, const float *dout, size_t ld_dout, float *dqkv,
                                    size_t ld_dqkv, int beta_dx, float *delta) {
  warp_row w;
  if (!locate(n_seq, l.T, H, &w)) return;
  float scale = 1.0f / sqrtf((float)l.hd);
  size_t row = w.b * l.T + w.t;
  head_row<NP> q = qkv_row<NP>(l, w.b, w.h, w.t, 0);
  head_row<NP> dO = load_row<NP>(dout + row * ld_dout + w.h * l.hd, l.hd);
  float row_lse = lse[row * ld_lse + w.h], d = 0;
  for (size_t j = 0; j <= w.t; j++) {
    float p = expf(scale * dot(q, qkv_row<NP>(l, w.b, w.h, j, 1)) - row_lse);
    d += p * dot(dO, qkv_row<NP>(l, w.b, w.h, j, 2));
  }
  head_row<NP> dq = zero_row<NP>();
  for (size_t j = 0; j <= w.t; j++) {
    head_row<NP> k = qkv_row<NP>(l, w.b, w.h, j, 1);
    float p = expf(scale * dot(q, k) - row_lse);
    float ds = p * (dot(dO, qkv_row<NP>(l, w.b, w.h, j, 2)) - d);
    scale_add(dq, 1.0f, ds, k);
  }
  if (l.cos_t) rotate(dq, l.cos_t + w.t * (l.hd / 2), l.sin_t + w.t * (l.hd / 2), l.hd, 1);
  store_row(dqkv + row * ld_dqkv + w.h * l.hd, dq, l.hd, scale, beta_dx);
  if (threadIdx.x % 32 == 0) delta[row * H + w.h] = d;
}

/* Backward, per key row j: dK = scale * sum_{t >= j} P_tj (dP_tj - delta_t) q_t,
 * dV = sum_{t >= j} P_tj dO_t. */
template <int NP>
__global__ void attention_dkv_kernel(size_t n_seq, size_t H, qkv_layout l, const float *lse,
                                     size_t ld_lse, const float *dout, size_t ld_dout, float *dqkv,
                                     size_t ld_dqkv, int beta_dx, const float *delta) {
  warp_row w;
  if (!locate(n_seq, l.T, H, &w)) return;
  float scale = 1.0f / sqrtf((float)l.hd);
  size_t j = w.t, key_row = w.b * l.T + j;
  head_row<NP> k = qkv_row<NP>(l, w.b, w.h, j, 1), v = qkv_row<NP>(l, w.b, w.h, j, 2);
  head_row<NP> dk = zero_row<NP>(), dv = zero_row<NP>();
  for (size_t t = j; t < l.T; t++) {
    size_t row = w.b * l.T + t;
    head_row<NP> q = qkv_row<NP>(l, w.b, w.h, t, 0);
    head_row<NP> dO = load_row<NP>(dout + row * ld_dout + w.h * l.hd, l.hd);
    float p = expf(scale * dot(q, k) - lse[row * ld_lse + w.h]);
    float ds = p * (dot(dO, v) - delta[row * H + w.h]);
    scale_add(dk, 1.0f, ds, q);
    scale_add(dv, 1.0f, p, dO);
  }
  if (l.cos_t) rotate(dk, l.cos_t + j * (l.hd / 2), l.sin_t + j * (l.hd / 2), l.hd, 1);
  float *dk_row = dqkv + key_row * ld_dqkv + l.D + w.h * l.hd;
  store_row(dk_row, dk, l.hd, scale, beta_dx);
  store_row(dk_row + l.D, dv, l.hd, 1.0f, beta_dx);
}

/* cos_t, sin_t [T, hd/2]: row p holds the angles of position p. */
__global__ void rope_table_kernel(size_t T, int hd, float theta, float *cos_t, float *sin_t) {
  size_t half = hd / 2;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < T * half;
       i += (size_t)gridDim.x * blockDim.x)
    rope_angle(i / half, (int)(i % half), hd, theta, &cos_t[i], &sin_t[i]);
}

size_t eellm_cuda_attention_work_bytes(size_t n_seq, size_t T, size_t H, size_t hd, int rope,
                                       int backward) {
  size_t floats = (rope ? T * (hd / 2) * 2 : 0) + (backward ? n_seq * T * H : 0);
  return floats * sizeof(float);
}

/* The layout of qkv, with the RoPE table computed into the start of work. */
static qkv_layout layout(size_t T, size_t H, size_t hd, int rope, float theta, const float *qkv,
                         size_t ld_qkv, float *work, cudaStream_t stream) {
  qkv_layout l = {qkv, ld_qkv, T, H * hd, (int)hd, NULL, NULL};
  if (rope) {
    l.cos_t = work;
    l.sin_t = work + T * (hd / 2);
    rope_table_kernel<<<eellm_blocks(T * (hd / 2)), EELLM_BLOCK, 0, stream>>>(
        T, (int)hd, theta, work, work + T * (hd / 2));
    eellm_check_launch("attention (RoPE table)");
  }
  return l;
}

/* Launches KERNEL<pairs per lane> on one warp per row of every (sequence, head). */
#define LAUNCH_ROWS(KERNEL, what, n_seq, T, H, hd, ...)                       \
  do {                                                                        \
    unsigned grid_ = (unsigned)((n_seq) * (H) * (((T) + WARPS - 1) / WARPS)); \
    switch (pairs_per_lane(hd)) {                                             \
      case 1:                                                                 \
        KERNEL<1><<<grid_, WARPS * 32, 0, stream>>>(__VA_ARGS__);             \
        break;                                                                \
      case 2:                                                                 \
        KERNEL<2><<<grid_, WARPS * 32, 0, stream>>>(__VA_ARGS__);             \
        break;                                                                \
      case 3:                                                                 \
        KERNEL<3><<<grid_, WARPS * 32, 0, stream>>>(__VA_ARGS__);             \
        break;                                                                \
      default:                                                                \
        KERNEL<4><<<grid_, WARPS * 32, 0, stream>>>(__VA_ARGS__);             \
        break;                                                                \
    }                                                                         \
    eellm_check_launch(what);                                                 \
  } while (0)

void eellm_cuda_attention_fwd(size_t n_seq, size_t T, size_t H, size_t hd, int rope,
                              float rope_theta, const float *qkv, size_t ld_qkv, float *out,
                              size_t ld_out, float *lse, size_t ld_lse, void *work,
                              cudaStream_t stream) {
  if (n_seq * T * H == 0) return;
  qkv_layout l = layout(T, H, hd, rope, rope_theta, qkv, ld_qkv, (float *)work, stream);
  LAUNCH_ROWS(attention_fwd_kernel, "attention_fwd", n_seq, T, H, hd, n_seq, H, l, out, ld_out, lse,
              ld_lse);
}

void eellm_cuda_attention_bwd(size_t n_seq, size_t T, size_t H, size_t hd, int rope,
                              float rope_theta, int beta_dx, const float *qkv, size_t ld_qkv,
                              const float *lse, size_t ld_lse, const float *dout, size_t ld_dout,
                              float *dqkv, size_t ld_dqkv, void *work, cudaStream_t stream) {
  if (n_seq * T * H == 0) return;
  qkv_layout l = layout(T, H, hd, rope, rope_theta, qkv, ld_qkv, (float *)work, stream);
  float *delta = (float *)work + (rope ? T * (hd / 2) * 2 : 0);
  LAUNCH_ROWS(attention_dq_kernel, "attention_bwd (dq)", n_seq, T, H, hd, n_seq, H, l, lse, ld_lse,
              dout, ld_dout, dqkv, ld_dqkv, beta_dx, delta);
  LAUNCH_ROWS(attention_dkv_kernel, "attention_bwd (dk, dv)", n_seq, T, H, hd, n_seq, H, l, lse,
              ld_lse, dout, ld_dout, dqkv, ld_dqkv, beta_dx, delta);
}

/* ---- attention over a key/value cache ------------------------------------- */

/* Which (row, head) this warp handles; false past the last. */
__device__ inline bool locate_cached(size_t n, size_t H, size_t *r, size_t *h) {
  size_t idx = blockIdx.x * (size_t)WARPS + threadIdx.x / 32;
  *r = idx / H;
  *h = idx % H;
  return *r < n;
}

/* What the cache kernels share: the new rows, their places, the cache. */
struct cache_layout {
  const float *qkv;
  size_t ld_qkv;
  const int32_t *positions, *slots;
  float *cache;
  size_t ld_cache, capacity, n_slots, D;
  int hd, rope;
  float theta;
};

/* Row r's cache row, or NULL when its position or slot is outside the cache. */
__device__ inline float *cache_row(const cache_layout &c, size_t r) {
  int32_t pos = c.positions[r], slot = c.slots[r];
  if (pos < 0 || (size_t)pos >= c.capacity || slot < 0 || (size_t)slot >= c.n_slots) return NULL;
  return c.cache + ((size_t)slot * c.capacity + (size_t)pos) * c.ld_cache;
}

/* Row r's key (rotated at its position) and value into its cache row. */
template <int NP>
__global__ void cache_store_kernel(size_t n, size_t H, cache_layout c) {
  size_t r, h;
  if (!locate_cached(n, H, &r, &h)) return;
  float *dst = cache_row(c, r);
  if (!dst) return;
  const float *k = c.qkv + r * c.ld_qkv + c.D + h * c.hd;
  head_row<NP> key = load_row<NP>(k, c.hd);
  if (c.rope) rotate_at(key, (size_t)c.positions[r], c.hd, c.theta);
  store_row(dst + h * c.hd, key, c.hd, 1.0f, 0);
  store_row(dst + c.D + h * c.hd, load_row<NP>(k + c.D, c.hd), c.hd, 1.0f, 0);
}

/* Row r attends to its slot's positions 0 .. positions[r]; NaN when its place is
 * outside the cache. */
template <int NP>
__global__ void cache_attend_kernel(size_t n, size_t H, cache_layout c, float *out, size_t ld_out) {
  size_t r, h;
  if (!locate_cached(n, H, &r, &h)) return;
  float *out_row = out + r * ld_out + h * c.hd;
  if (!cache_row(c, r)) {
    store_row(out_row, zero_row<NP>(), c.hd, NAN, 0);
    return;
  }
  size_t pos = (size_t)c.positions[r];
  const float *slot = c.cache + (size_t)c.slots[r] * c.capacity * c.ld_cache + h * c.hd;
  head_row<NP> q = load_row<NP>(c.qkv + r * c.ld_qkv + h * c.hd, c.hd);
  if (c.rope) rotate_at(q, pos, c.hd, c.theta);
  float scale = 1.0f / sqrtf((float)c.hd);
  online_softmax<NP> o = {-INFINITY, 0.0f, zero_row<NP>()};
  for (size_t j = 0; j <= pos; j++) {
    const float *key = slot + j * c.ld_cache;
    online_add(o, scale * dot(q, load_row<NP>(key, c.hd)), load_row<NP>(key + c.D, c.hd));
  }
  store_row(out_row, o.acc, c.hd, 1.0f / o.sum, 0);
}

void eellm_cuda_attention_cached(size_t n, size_t H, size_t hd, size_t capacity, size_t n_slots,
                                 int rope, float rope_theta, const float *qkv, size_t ld_qkv,
                                 const int32_t *positions, const int32_t *slots, float *cache,
                                 size_t ld_cache, float *out, size_t ld_out, cudaStream_t stream) {
  if (n * H == 0) return;
  cache_layout c = {qkv,      ld_qkv,  positions, slots,   cache, ld_cache,
                    capacity, n_slots, H * hd,    (int)hd, rope,  rope_theta};
  /* One "sequence" of n rows: the launch covers n * H warps. */
  LAUNCH_ROWS(cache_store_kernel, "attention_cached (store)", 1, n, H, hd, n, H, c);
  LAUNCH_ROWS(cache_attend_kernel, "attention_cached", 1, n, H, hd, n, H, c, out, ld_out);
}
