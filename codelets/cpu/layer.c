/* A whole transformer layer on a few cached-attention rows (decoding) as one
 * kernel: the kernels the layer's separate tasks run, in the same order, with
 * the activations between them in work space; as steps, each product's in two
 * parts that two workers may share (codelets/layer.c). */
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

/* Part `part` of 2 of `cols` columns: [*c0, *c0 + width); the cut a multiple of 16
 * columns, so that each column's product is summed as in the whole (OpenBLAS's and
 * the thin kernels' columns do not depend on where a block starts at such a cut). */
static size_t part_cols(size_t cols, unsigned part, size_t *c0) {
  size_t cut = (cols / 2 + 15) / 16 * 16;
  if (cut > cols) cut = cols;
  *c0 = part ? cut : 0;
  return part ? cols - cut : cut;
}

enum layer_step { NORM1, QKV, ATTENTION, O_PROJ, NORM2, FC, ACTIVATION, PROJ };

unsigned eellm_cpu_layer_step_parts(unsigned step) {
  return step == QKV || step == O_PROJ || step == FC || step == PROJ ? 2 : 1;
}

void eellm_cpu_layer_step(const struct eellm_cpu_layer_call *c, unsigned step, unsigned part) {
  const struct eellm_cpu_layer_shape *s = c->s;
  const struct eellm_layer_kind *k = &s->kind;
  const float *const *t = c->w->t;
  const size_t *ld = c->w->ld;
  size_t n = c->n, d = s->d, att = att_width(s), c0, width;
  struct layer_work at = layer_work(n, s);
  float *f = c->work, *ln = f + at.ln, *stats = f + at.stats, *qkv = f + at.qkv;
  float *att_out = f + at.att, *h = f + at.h, *act = f + at.a;
  /* The column c0 of a bias, or NULL without one. */
#define AT(bias) ((bias) ? (bias) + c0 : NULL)
  switch ((enum layer_step)step) {
    case NORM1:
      eellm_cpu_norm_fwd(n, d, k->norm, k->norm_eps, c->x, c->ld_x, t[EELLM_LN1_W], t[EELLM_LN1_B],
                         ln, d, stats, 2);
      break;
    case QKV:
      width = part_cols(3 * att, part, &c0);
      eellm_cpu_linear_fwd(n, d, width, 0, ln, d, t[EELLM_QKV_W] + c0, ld[EELLM_QKV_W],
                           AT(t[EELLM_QKV_B]), NULL, 0, qkv + c0, 3 * att);
      break;
    case ATTENTION:
      eellm_cpu_attention_cached(n, k->heads, s->hd, s->capacity, s->n_slots, k->rope,
                                 k->rope_theta, qkv, 3 * att, c->positions, c->slots, c->cache,
                                 c->ld_cache, att_out, att, f + at.attention);
      break;
    case O_PROJ:
      width = part_cols(d, part, &c0);
      eellm_cpu_linear_fwd(n, att, width, 0, att_out, att, t[EELLM_O_W] + c0, ld[EELLM_O_W],
                           AT(t[EELLM_O_B]), c->x + c0, c->ld_x, c->r + c0, c->ld_r);
      break;
    case NORM2:
      eellm_cpu_norm_fwd(n, d, k->norm, k->norm_eps, c->r, c->ld_r, t[EELLM_LN2_W], t[EELLM_LN2_B],
                         ln, d, stats, 2);
      break;
    case FC:
      width = part_cols(s->fc, part, &c0);
      eellm_cpu_linear_fwd(n, d, width, 0, ln, d, t[EELLM_FC_W] + c0, ld[EELLM_FC_W],
                           AT(t[EELLM_FC_B]), NULL, 0, h + c0, s->fc);
      break;
    case ACTIVATION:
      eellm_cpu_activation_fwd(n, s->ffn, k->act, h, s->fc, act, s->ffn);
      break;
    case PROJ:
      width = part_cols(d, part, &c0);
      eellm_cpu_linear_fwd(n, s->ffn, width, 0, act, s->ffn, t[EELLM_PROJ_W] + c0, ld[EELLM_PROJ_W],
                           AT(t[EELLM_PROJ_B]), c->r + c0, c->ld_r, c->y + c0, c->ld_y);
      break;
  }
#undef AT
}

void eellm_cpu_layer_cached(const struct eellm_cpu_layer_call *c) {
  for (unsigned step = 0; step < EELLM_LAYER_STEPS; step++)
    for (unsigned part = 0; part < eellm_cpu_layer_step_parts(step); part++)
      eellm_cpu_layer_step(c, step, part);
}
