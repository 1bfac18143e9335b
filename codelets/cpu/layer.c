/* A whole transformer layer on a few cached-attention rows (decoding) as one
 * kernel: the kernels the layer's separate tasks run, in the same order, with
 * the activations between them in work space. */
#include "kernels.h"

/* Floats, rounded up to 64 bytes so that every piece of the work starts aligned. */
static size_t padded(size_t floats) { return (floats + 15) / 16 * 16; }

static size_t att_width(const struct eellm_cpu_layer_shape *s) { return s->kind.heads * s->hd; }

/* The work: ln [n, d], stats [n, 2], qkv [n, 3 att], att [n, att], h [n, fc],
 * a [n, ffn], then the cached attention's own (at offset `attention`, floats). */
struct layer_work {
  size_t ln, stats, qkv, att, h, a, attention;
};

static struct layer_work layer_work(size_t n, const struct eellm_cpu_layer_shape *s) {
  struct layer_work w = {0};
  size_t att = att_width(s);
  w.stats = w.ln + padded(n * s->d);
  w.qkv = w.stats + padded(2 * n);
  w.att = w.qkv + padded(3 * n * att);
  w.h = w.att + padded(n * att);
  w.a = w.h + padded(n * s->fc);
  w.attention = w.a + padded(n * s->ffn);
  return w;
}

size_t eellm_cpu_layer_cached_work_bytes(size_t n, const struct eellm_cpu_layer_shape *s) {
  return layer_work(n, s).attention * sizeof(float) +
         eellm_cpu_attention_cached_work_bytes(n, s->hd, s->capacity);
}

void eellm_cpu_layer_cached(size_t n, const struct eellm_cpu_layer_shape *s,
                            const struct eellm_cpu_layer_weights *w, const float *x, size_t ld_x,
                            const int32_t *positions, const int32_t *slots, float *cache,
                            size_t ld_cache, float *r, size_t ld_r, float *y, size_t ld_y,
                            void *work) {
  const struct eellm_layer_kind *k = &s->kind;
  const float *const *t = w->t;
  const size_t *ld = w->ld;
  struct layer_work at = layer_work(n, s);
  float *f = work, *ln = f + at.ln, *stats = f + at.stats, *qkv = f + at.qkv, *att_out = f + at.att;
  float *h = f + at.h, *act = f + at.a;
  size_t d = s->d, att = att_width(s);
  eellm_cpu_norm_fwd(n, d, k->norm, k->norm_eps, x, ld_x, t[EELLM_LN1_W], t[EELLM_LN1_B], ln, d,
                     stats, 2);
  eellm_cpu_linear_fwd(n, d, 3 * att, 0, ln, d, t[EELLM_QKV_W], ld[EELLM_QKV_W], t[EELLM_QKV_B],
                       NULL, 0, qkv, 3 * att);
  eellm_cpu_attention_cached(n, k->heads, s->hd, s->capacity, s->n_slots, k->rope, k->rope_theta,
                             qkv, 3 * att, positions, slots, cache, ld_cache, att_out, att,
                             f + at.attention);
  eellm_cpu_linear_fwd(n, att, d, 0, att_out, att, t[EELLM_O_W], ld[EELLM_O_W], t[EELLM_O_B], x,
                       ld_x, r, ld_r);
  eellm_cpu_norm_fwd(n, d, k->norm, k->norm_eps, r, ld_r, t[EELLM_LN2_W], t[EELLM_LN2_B], ln, d,
                     stats, 2);
  eellm_cpu_linear_fwd(n, d, s->fc, 0, ln, d, t[EELLM_FC_W], ld[EELLM_FC_W], t[EELLM_FC_B], NULL, 0,
                       h, s->fc);
  eellm_cpu_activation_fwd(n, s->ffn, k->act, h, s->fc, act, s->ffn);
  eellm_cpu_linear_fwd(n, s->ffn, d, 0, act, s->ffn, t[EELLM_PROJ_W], ld[EELLM_PROJ_W],
                       t[EELLM_PROJ_B], r, ld_r, y, ld_y);
}
