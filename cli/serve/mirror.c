/* Rank 0's session calls, recorded and replayed on the other ranks (mirror.h). */
#include "mirror.h"

#include <starpu.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <eellm.h>

enum op { OP_OPEN, OP_ADD, OP_END };

struct eellm_mirror {
  unsigned char *buf;
  size_t n, cap;
};

struct eellm_mirror *eellm_mirror_new(void) {
  if (eellm_nranks() < 2) return NULL;
  struct eellm_mirror *r = calloc(1, sizeof *r);
  if (!r) abort();
  return r;
}

void eellm_mirror_free(struct eellm_mirror *r) {
  if (r) free(r->buf);
  free(r);
}

static void put(struct eellm_mirror *r, const void *bytes, size_t n) {
  if (r->n + n > r->cap) {
    r->cap = 2 * (r->n + n);
    if (!(r->buf = realloc(r->buf, r->cap))) abort();
  }
  memcpy(r->buf + r->n, bytes, n);
  r->n += n;
}

static void put_u64(struct eellm_mirror *r, uint64_t v) { put(r, &v, sizeof v); }

/* The options as they are in memory (every rank runs the same program), their
 * pointers left out and the exit layers after them. */
void eellm_mirror_open(struct eellm_mirror *r, const struct eellm_gen_options *o) {
  if (!r) return;
  struct eellm_gen_options copy = *o;
  copy.exit_layers = NULL;
  copy.on_token = NULL;
  copy.ctx = NULL;
  put_u64(r, OP_OPEN);
  put(r, &copy, sizeof copy);
  put(r, o->exit_layers, o->n_exit_layers * sizeof *o->exit_layers);
}

void eellm_mirror_add(struct eellm_mirror *r, size_t session, const uint16_t *ids, size_t n,
                      unsigned max_tokens, uint64_t seed, uint64_t stream) {
  if (!r) return;
  const uint64_t head[] = {OP_ADD, session, n, max_tokens, seed, stream};
  put(r, head, sizeof head);
  put(r, ids, n * sizeof *ids);
}

void eellm_mirror_send(struct eellm_mirror *r, enum eellm_mirror_end end) {
  if (!r) return;
  put_u64(r, OP_END);
  put_u64(r, end);
  uint64_t n = r->n;
  eellm_mpi_bcast(&n, sizeof n);
  eellm_mpi_bcast(r->buf, r->n);
  r->n = 0;
}

/* ---- the followers -------------------------------------------------------------- */

struct follower {
  struct eellm_generator *g;
  struct eellm_gen_session **sessions; /* first: the newest, as rank 0 lists them */
  unsigned **exit_layers;
  size_t n;
  const unsigned char *at, *end;
};

static int take(struct follower *f, void *out, size_t n) {
  if ((size_t)(f->end - f->at) < n) return -1;
  memcpy(out, f->at, n);
  f->at += n;
  return 0;
}

static int replay_open(struct follower *f, char *err, size_t errlen) {
  struct eellm_gen_options o;
  if (take(f, &o, sizeof o) != 0) return -1;
  unsigned *layers = malloc((o.n_exit_layers ? o.n_exit_layers : 1) * sizeof *layers);
  if (!layers || take(f, layers, o.n_exit_layers * sizeof *layers) != 0) {
    free(layers);
    return -1;
  }
  o.exit_layers = layers;
  struct eellm_gen_session *s = eellm_gen_session_open(f->g, &o, err, errlen);
  if (!s) {
    free(layers);
    return -1;
  }
  f->sessions = realloc(f->sessions, (f->n + 1) * sizeof *f->sessions);
  f->exit_layers = realloc(f->exit_layers, (f->n + 1) * sizeof *f->exit_layers);
  if (!f->sessions || !f->exit_layers) abort();
  memmove(f->sessions + 1, f->sessions, f->n * sizeof *f->sessions);
  memmove(f->exit_layers + 1, f->exit_layers, f->n * sizeof *f->exit_layers);
  f->sessions[0] = s;
  f->exit_layers[0] = layers;
  f->n++;
  return 0;
}

static int replay_add(struct follower *f, char *err, size_t errlen) {
  uint64_t head[5]; /* session, n, max_tokens, seed, stream */
  if (take(f, head, sizeof head) != 0 || head[0] >= f->n) return -1;
  uint16_t *ids = malloc((head[1] ? head[1] : 1) * sizeof *ids);
  int ok = ids && take(f, ids, head[1] * sizeof *ids) == 0 &&
           eellm_gen_session_add(f->sessions[head[0]], ids, head[1], (unsigned)head[2], head[3],
                                 head[4], err, errlen) >= 0;
  free(ids);
  return ok ? 0 : -1;
}

/* A step of every session, then what rank 0's collect takes. */
static void replay_step(struct follower *f) {
  for (size_t i = 0; i < f->n; i++) eellm_gen_session_step(f->sessions[i]);
  for (size_t i = 0; i < f->n; i++) {
    struct eellm_gen_sequence q;
    while (eellm_gen_session_take(f->sessions[i], &q) >= 0) eellm_gen_sequence_free(&q);
  }
}

static void close_all(struct follower *f) {
  for (size_t i = 0; i < f->n; i++) {
    eellm_gen_session_close(f->sessions[i]);
    free(f->exit_layers[i]);
  }
  f->n = 0;
}

/* One record: its calls, then its end; -1 on a failed call or a bad record. */
static int replay(struct follower *f, uint64_t *end, char *err, size_t errlen) {
  uint64_t op;
  while (take(f, &op, sizeof op) == 0) {
    int failed = op == OP_OPEN ? replay_open(f, err, errlen)
                 : op == OP_ADD ? replay_add(f, err, errlen)
                 : op == OP_END ? take(f, end, sizeof *end)
                                : -1;
    if (failed) {
      if (!err[0]) snprintf(err, errlen, "a malformed record from rank 0");
      return -1;
    }
    if (op == OP_END) return 0;
  }
  snprintf(err, errlen, "a record from rank 0 without its end");
  return -1;
}

int eellm_mirror_follow(struct eellm_generator *g, char *err, size_t errlen) {
  struct follower f = {.g = g};
  unsigned char *buf = NULL;
  uint64_t end = EELLM_MIRROR_CLOSE;
  int ret = 0;
  err[0] = '\0';
  for (;;) {
    uint64_t n;
    /* Idle StarPU workers poll for tasks unless paused: between sessions they wait here. */
    if (end == EELLM_MIRROR_CLOSE) starpu_pause();
    eellm_mpi_bcast(&n, sizeof n);
    if (end == EELLM_MIRROR_CLOSE) starpu_resume();
    if (!(buf = realloc(buf, n ? n : 1))) abort();
    eellm_mpi_bcast(buf, n);
    f.at = buf;
    f.end = buf + n;
    if (replay(&f, &end, err, errlen) != 0) {
      ret = -1;
      break;
    }
    if (end == EELLM_MIRROR_STEP) replay_step(&f);
    if (end != EELLM_MIRROR_STEP) close_all(&f);
    if (end == EELLM_MIRROR_STOP) break;
  }
  close_all(&f);
  free(f.sessions);
  free(f.exit_layers);
  free(buf);
  return ret;
}
