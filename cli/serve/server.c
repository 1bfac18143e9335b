/* eellm serve's HTTP side (libmicrohttpd, a thread per connection) and its
 * generation queue (one thread owns the generator). */
#include "server.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <starpu.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "http_line.h"
#include "mirror.h"
#include "server_api.h"
#include <eellm/tokenizer.h>

/* One request's prompts on their way through the generator. */
struct job {
  const struct eellm_api_request *req;
  struct eellm_gen_sequence *out; /* req->n */
  uint64_t seed;                  /* the request's random_seed, or one the server picked */
  size_t taken;                   /* prompts that got a generator slot so far */
  size_t running;                 /* of those, the ones not finished */
  int finished;
  unsigned status;                /* HTTP status when it failed, else 0 */
  char err[256];
  struct job *next;
};

/* A generator session and the options its sequences share. */
struct group {
  struct eellm_gen_session *session;
  struct eellm_gen_options o;
  unsigned *exit_layers;
  struct group *next;
};

/* A connection, from MHD's notice that it started to the one that it closed. */
struct conn {
  int fd;
  enum { WAITING_HEADER, RECEIVING_BODY, ANSWERING } phase;
  struct timespec since; /* when the phase began */
  int closing;           /* shut down by the sweeper or an eviction */
  struct conn *prev, *next;
};

struct eellm_server {
  struct MHD_Daemon *daemon;
  unsigned port;
  struct eellm_generator *gen;
  struct eellm_api_model model;
  enum eellm_exit_rule rule;
  unsigned max_batch, request_slots, header_timeout, max_per_client;
  /* The server's own tokenizer: encoding is not thread-safe, so under tok_lock. */
  struct eellm_tokenizer *tok;
  pthread_mutex_t tok_lock;
  /* The queue of jobs with prompts not yet in the generator, and the
   * generation thread, which alone touches the groups and the slots. */
  pthread_mutex_t lock;
  pthread_cond_t work, done;
  struct job *head, *tail;
  int stopping;
  uint64_t next_seed;
  struct group *groups;
  struct eellm_mirror *mirror; /* under MPI: the other ranks replay the groups' calls */
  struct job **slot_job;  /* per generator slot: whose prompt it holds */
  size_t *slot_index;     /* and which */
  pthread_t generation;
  size_t exchanges; /* requests being received or answered, under lock */
  /* Open connections, oldest first, and the thread that closes slow ones. */
  pthread_mutex_t conns_lock;
  pthread_cond_t sweep_cv;
  struct conn *conns_head, *conns_tail;
  size_t n_conns;
  int sweeping;
  /* The acceptor: new connections wait here, without a thread, until their
   * request line is in. */
  int listen_fd;
  int accepting;
  pthread_t acceptor;
  pthread_t sweeper;
};

/* A connection's request while its body arrives. */
struct exchange {
  char *body;
  size_t n, cap;
  int too_large;
  struct timespec start;
};

static double seconds_since(const struct timespec *start) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (double)(now.tv_sec - start->tv_sec) + 1e-9 * (double)(now.tv_nsec - start->tv_nsec);
}

/* ---- the generation queue ---- */

static void queue_remove(struct eellm_server *s, struct job *job) {
  struct job **at = &s->head, *before = NULL;
  while (*at && *at != job) before = *at, at = &(*at)->next;
  if (!*at) return;
  *at = job->next;
  if (s->tail == job) s->tail = before;
  job->next = NULL;
}

/* Whether two requests' prompts may share a generator session: equal options
 * but for tokens_to_generate and the seed, which are per sequence (the parser
 * normalised the options without effect). */
static int same_options(const struct eellm_gen_options *x, const struct eellm_gen_options *y) {
  if (x->use_early_exit != y->use_early_exit || x->threshold != y->threshold ||
      x->temperature != y->temperature || x->top_k != y->top_k || x->top_p != y->top_p ||
      x->n_exit_layers != y->n_exit_layers || x->keep_logits != y->keep_logits ||
      x->method != y->method || x->draft_exit_layer != y->draft_exit_layer ||
      x->draft_tokens != y->draft_tokens || x->top_p_decay != y->top_p_decay ||
      x->top_p_bound != y->top_p_bound ||
      x->prevent_newline_after_colon != y->prevent_newline_after_colon)
    return 0;
  for (size_t i = 0; i < x->n_exit_layers; i++)
    if (x->exit_layers[i] != y->exit_layers[i]) return 0;
  return 1;
}

/* The group for a request's options, opened when there is none; NULL with err. */
static struct group *group_for(struct eellm_server *s, const struct eellm_gen_options *o,
                               char *err, size_t errlen) {
  for (struct group *g = s->groups; g; g = g->next)
    if (same_options(&g->o, o)) return g;
  struct group *g = calloc(1, sizeof *g);
  if (!g) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  g->o = *o;
  g->o.rule = s->rule;
  g->o.stop_at_eot = 1;
  g->o.on_token = NULL;
  g->o.ctx = NULL;
  g->exit_layers = malloc((o->n_exit_layers ? o->n_exit_layers : 1) * sizeof *g->exit_layers);
  if (g->exit_layers) {
    for (size_t i = 0; i < o->n_exit_layers; i++) g->exit_layers[i] = o->exit_layers[i];
    g->o.exit_layers = g->exit_layers;
    g->session = eellm_gen_session_open(s->gen, &g->o, err, errlen);
  } else {
    snprintf(err, errlen, "out of memory");
  }
  if (!g->session) {
    free(g->exit_layers);
    free(g);
    return NULL;
  }
  eellm_mirror_open(s->mirror, &g->o);
  g->next = s->groups;
  s->groups = g;
  return g;
}

static size_t group_index(const struct eellm_server *s, const struct group *g) {
  size_t i = 0;
  for (const struct group *at = s->groups; at != g; at = at->next) i++;
  return i;
}

static void close_groups(struct eellm_server *s) {
  while (s->groups) {
    struct group *g = s->groups;
    s->groups = g->next;
    eellm_gen_session_close(g->session);
    free(g->exit_layers);
    free(g);
  }
}

/* A job ends once none of its prompts runs and none will start. */
static void settle(struct eellm_server *s, struct job *job) {
  if (job->running == 0 && (job->status || job->taken == job->req->n_runs)) {
    queue_remove(s, job);
    job->finished = 1;
    pthread_cond_broadcast(&s->done);
  }
}

static void fail_job(struct eellm_server *s, struct job *job, unsigned status, const char *why) {
  if (!job->status) {
    job->status = status;
    snprintf(job->err, sizeof job->err, "%s", why);
  }
  queue_remove(s, job);
  settle(s, job);
}

/* Fills free generator slots, one prompt at a time, each going to the queued
 * request that has the fewest prompts running (the oldest among equals), and
 * none to a request already running request_slots prompts. So a new request
 * joins the running batch at the next step, whatever large ones are under way. */
static void admit(struct eellm_server *s) {
  while (!s->stopping && eellm_generator_free_slots(s->gen) > 0) {
    struct job *pick = NULL;
    for (struct job *j = s->head; j; j = j->next)
      if (j->running < s->request_slots && (!pick || j->running < pick->running)) pick = j;
    if (!pick) return;
    char err[256];
    struct group *g = group_for(s, &pick->req->o, err, sizeof err);
    size_t i = pick->taken;
    long slot = g ? eellm_gen_session_add(g->session, pick->req->run_ids[i],
                                          pick->req->run_lens[i],
                                          pick->req->o.max_tokens, pick->seed, i, err, sizeof err)
                  : -1;
    if (slot < 0) {
      char why[300];
      snprintf(why, sizeof why, "generation failed: %s", err);
      fail_job(s, pick, 500, why);
      continue;
    }
    eellm_mirror_add(s->mirror, group_index(s, g), pick->req->run_ids[i], pick->req->run_lens[i],
                     pick->req->o.max_tokens, pick->seed, i);
    s->slot_job[slot] = pick;
    s->slot_index[slot] = i;
    pick->running++;
    if (++pick->taken == pick->req->n_runs) queue_remove(s, pick);
  }
}

/* Hands finished sequences to their jobs and settles those. */
static void collect(struct eellm_server *s) {
  for (struct group *g = s->groups; g; g = g->next) {
    struct eellm_gen_sequence q;
    long slot;
    while ((slot = eellm_gen_session_take(g->session, &q)) >= 0) {
      struct job *job = s->slot_job[slot];
      s->slot_job[slot] = NULL;
      job->out[s->slot_index[slot]] = q;
      job->running--;
      settle(s, job);
    }
  }
}

static size_t running(const struct eellm_server *s) {
  size_t n = 0;
  for (struct group *g = s->groups; g; g = g->next) n += eellm_gen_session_running(g->session);
  return n;
}

/* Stopping: no prompt starts any more; requests with prompts left get 503 once
 * their running ones have finished. */
static void refuse_queued(struct eellm_server *s) {
  while (s->head) fail_job(s, s->head, 503, "the server is shutting down");
}

static void *generation_loop(void *arg) {
  struct eellm_server *s = arg;
  pthread_mutex_lock(&s->lock);
  for (;;) {
    if (s->stopping) refuse_queued(s);
    admit(s);
    if (running(s) == 0) {
      pthread_mutex_unlock(&s->lock);
      eellm_mirror_send(s->mirror, EELLM_MIRROR_CLOSE);
      close_groups(s); /* waits for the last steps' tasks */
      pthread_mutex_lock(&s->lock);
      if (s->stopping) break;
      if (!s->head) {
        /* Idle StarPU workers poll for tasks in a tight loop unless paused. */
        starpu_pause();
        while (!s->head && !s->stopping) pthread_cond_wait(&s->work, &s->lock);
        starpu_resume();
      }
      continue;
    }
    pthread_mutex_unlock(&s->lock);
    /* A step of every group in turn: each group's sequences get a token. */
    eellm_mirror_send(s->mirror, EELLM_MIRROR_STEP);
    for (struct group *g = s->groups; g; g = g->next) eellm_gen_session_step(g->session);
    pthread_mutex_lock(&s->lock);
    collect(s);
  }
  eellm_mirror_send(s->mirror, EELLM_MIRROR_STOP);
  pthread_cond_broadcast(&s->done);
  pthread_mutex_unlock(&s->lock);
  return NULL;
}

/* Queues the job and waits until it is finished: 200, or the failure's status. */
static unsigned run_job(struct eellm_server *s, struct job *job) {
  pthread_mutex_lock(&s->lock);
  if (s->stopping) {
    pthread_mutex_unlock(&s->lock);
    snprintf(job->err, sizeof job->err, "the server is shutting down");
    return 503;
  }
  job->seed = job->req->seeded ? job->req->o.seed : s->next_seed++;
  if (s->tail)
    s->tail->next = job;
  else
    s->head = job;
  s->tail = job;
  pthread_cond_signal(&s->work);
  while (!job->finished) pthread_cond_wait(&s->done, &s->lock);
  pthread_mutex_unlock(&s->lock);
  return job->status ? job->status : 200;
}

/* ---- HTTP ---- */

/* Queues json (malloc'd, taken over) as the answer. */
static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, char *json) {
  if (!json) return MHD_NO;
  struct MHD_Response *response =
      MHD_create_response_from_buffer(strlen(json), json, MHD_RESPMEM_MUST_FREE);
  if (!response) {
    free(json);
    return MHD_NO;
  }
  MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
  if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
    MHD_add_response_header(response, MHD_HTTP_HEADER_ALLOW, "PUT");
  enum MHD_Result rc = MHD_queue_response(c, status, response);
  MHD_destroy_response(response);
  return rc;
}

__attribute__((format(printf, 3, 4))) static enum MHD_Result reply_error(struct MHD_Connection *c,
                                                                         unsigned status,
                                                                         const char *format,
                                                                         ...) {
  char message[600];
  va_list args;
  va_start(args, format);
  vsnprintf(message, sizeof message, format, args);
  va_end(args);
  fprintf(stderr, "eellm serve: %u %s\n", status, message);
  return reply(c, status, eellm_api_error(message));
}

static void free_results(struct eellm_gen_sequence *out, size_t n) {
  for (size_t i = 0; out && i < n; i++) eellm_gen_sequence_free(&out[i]);
  free(out);
}

/* ---- connections: slow ones are closed ---- */

static struct conn *conn_of(struct MHD_Connection *c) {
  const union MHD_ConnectionInfo *info =
      MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
  return info ? info->socket_context : NULL;
}

/* A connection's next phase: its deadline counts from now. */
static void conn_phase(struct eellm_server *s, struct MHD_Connection *c, int phase) {
  struct conn *k = conn_of(c);
  if (!k) return;
  pthread_mutex_lock(&s->conns_lock);
  k->phase = phase;
  clock_gettime(CLOCK_MONOTONIC, &k->since);
  pthread_mutex_unlock(&s->conns_lock);
}

/* Wakes the connection's thread with end of input, so that MHD closes it. The
 * socket stays open until MHD's notice that it closed (which removes the
 * connection from the list under the same lock), so fd is still this one. */
static void conn_shut(struct conn *k) {
  if (k->closing) return;
  k->closing = 1;
  shutdown(k->fd, SHUT_RDWR);
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code) {
  struct eellm_server *s = cls;
  pthread_mutex_lock(&s->conns_lock);
  if (code == MHD_CONNECTION_NOTIFY_STARTED) {
    struct conn *k = calloc(1, sizeof *k);
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (k && info) {
      k->fd = info->connect_fd;
      k->phase = WAITING_HEADER;
      clock_gettime(CLOCK_MONOTONIC, &k->since);
      k->prev = s->conns_tail;
      if (s->conns_tail)
        s->conns_tail->next = k;
      else
        s->conns_head = k;
      s->conns_tail = k;
      s->n_conns++;
      /* Past the share kept for new clients, the oldest connection still
       * waiting for a header (a slow client, or an idle keep-alive) goes. */
      if (s->n_conns > EELLM_SERVER_MAX_CONNECTIONS - EELLM_SERVER_RESERVED_CONNECTIONS)
        for (struct conn *o = s->conns_head; o != k; o = o->next)
          if (o->phase == WAITING_HEADER && !o->closing) {
            conn_shut(o);
            break;
          }
    } else {
      free(k);
      k = NULL;
    }
    *socket_context = k;
  } else if (*socket_context) {
    struct conn *k = *socket_context;
    if (k->prev) k->prev->next = k->next; else s->conns_head = k->next;
    if (k->next) k->next->prev = k->prev; else s->conns_tail = k->prev;
    s->n_conns--;
    free(k);
    *socket_context = NULL;
  }
  pthread_mutex_unlock(&s->conns_lock);
}

/* Four times a second: connections whose header took longer than
 * header_timeout, or whose body longer than EELLM_SERVER_UPLOAD_TIMEOUT, are
 * closed. (MHD's own timeout counts silence only: a byte now and then keeps a
 * connection, and its thread, forever.) */
static void *sweep_loop(void *arg) {
  struct eellm_server *s = arg;
  pthread_mutex_lock(&s->conns_lock);
  while (s->sweeping) {
    size_t closed = 0;
    for (struct conn *k = s->conns_head; k; k = k->next) {
      double limit = k->phase == WAITING_HEADER   ? (double)s->header_timeout
                     : k->phase == RECEIVING_BODY ? (double)EELLM_SERVER_UPLOAD_TIMEOUT
                                                  : -1;
      if (limit >= 0 && !k->closing && seconds_since(&k->since) > limit) {
        conn_shut(k);
        closed++;
      }
    }
    if (closed)
      fprintf(stderr, "eellm serve: closed %zu slow connection%s (header over %u s or body over %u s)\n",
              closed, closed == 1 ? "" : "s", s->header_timeout, EELLM_SERVER_UPLOAD_TIMEOUT);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_nsec += 250000000;
    if (deadline.tv_nsec >= 1000000000) deadline.tv_sec++, deadline.tv_nsec -= 1000000000;
    pthread_cond_timedwait(&s->sweep_cv, &s->conns_lock, &deadline);
  }
  pthread_mutex_unlock(&s->conns_lock);
  return NULL;
}

/* ---- the acceptor ---- */

struct pending {
  int fd;
  struct sockaddr_storage addr;
  socklen_t addrlen;
  struct timespec since;
  size_t seen; /* bytes peeked so far, with no end of line among them */
};

static int same_address(const struct pending *a, const struct pending *b) {
  if (a->addr.ss_family != b->addr.ss_family) return 0;
  if (a->addr.ss_family == AF_INET)
    return ((const struct sockaddr_in *)&a->addr)->sin_addr.s_addr ==
           ((const struct sockaddr_in *)&b->addr)->sin_addr.s_addr;
  if (a->addr.ss_family == AF_INET6)
    return memcmp(&((const struct sockaddr_in6 *)&a->addr)->sin6_addr,
                  &((const struct sockaddr_in6 *)&b->addr)->sin6_addr, 16) == 0;
  return 0;
}

static void drop_pending(struct pending *p, size_t *n, size_t i) {
  p[i] = p[--*n];
}

/* A new connection's first bytes, peeked: 1 while its request line is not
 * complete, 0 once it was handed to MHD, answered 400 or closed. */
static int check_pending(struct eellm_server *s, struct pending *p) {
  char buf[512];
  ssize_t n = recv(p->fd, buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
    if (seconds_since(&p->since) <= s->header_timeout) return 1;
    n = 0;
  }
  if (n <= 0) {
    close(p->fd);
    return 0;
  }
  enum eellm_http_line line = eellm_http_first_line(buf, (size_t)n, sizeof buf);
  if (line != EELLM_HTTP_LINE_INCOMPLETE) {
    if (line == EELLM_HTTP_LINE_BAD) {
      static const char answer[] =
          "HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: application/json\r\n"
          "Content-Length: 39\r\n\r\n{\"error\":\"malformed HTTP request line\"}";
      fprintf(stderr, "eellm serve: 400 malformed HTTP request line\n");
      if (send(p->fd, answer, sizeof answer - 1, MSG_NOSIGNAL | MSG_DONTWAIT) > 0)
        shutdown(p->fd, SHUT_WR);
      close(p->fd);
      return 0;
    }
    /* A line too long for the peek, an empty line (allowed before a request)
     * or a request line: MHD's from here on (it closes the socket if full). */
    MHD_add_connection(s->daemon, p->fd, (const struct sockaddr *)&p->addr, p->addrlen);
    return 0;
  }
  if (seconds_since(&p->since) > s->header_timeout) {
    close(p->fd);
    return 0;
  }
  p->seen = (size_t)n;
  return 1;
}

/* Accepts connections and holds each until its request line is complete (no
 * thread per slow client), at most EELLM_SERVER_MAX_PENDING (the oldest goes
 * when another comes), max_per_client from one address, and header_timeout
 * seconds each. Partial lines are
 * looked at again every 50 ms rather than polled (their data stays readable). */
static void *accept_loop(void *arg) {
  struct eellm_server *s = arg;
  struct pending p[EELLM_SERVER_MAX_PENDING];
  struct pollfd fds[1 + EELLM_SERVER_MAX_PENDING];
  size_t n = 0, closed = 0, refused = 0;
  struct timespec said;
  clock_gettime(CLOCK_MONOTONIC, &said);
  for (;;) {
    pthread_mutex_lock(&s->conns_lock);
    int accepting = s->accepting;
    pthread_mutex_unlock(&s->conns_lock);
    if (!accepting) break;
    fds[0] = (struct pollfd){.fd = s->listen_fd, .events = POLLIN};
    for (size_t i = 0; i < n; i++)
      fds[1 + i] = (struct pollfd){.fd = p[i].fd, .events = p[i].seen ? 0 : POLLIN};
    poll(fds, 1 + n, 50);
    for (size_t i = n; i-- > 0;)
      if ((fds[1 + i].revents || p[i].seen || seconds_since(&p[i].since) > s->header_timeout)) {
        int timed_out = seconds_since(&p[i].since) > s->header_timeout;
        if (!check_pending(s, &p[i])) {
          closed += timed_out;
          drop_pending(p, &n, i);
        }
      }
    if ((closed || refused) && seconds_since(&said) >= 1) {
      fprintf(stderr,
              "eellm serve: closed %zu slow connection%s (request line over %u s), refused %zu "
              "over %u from one address\n",
              closed, closed == 1 ? "" : "s", s->header_timeout, refused, s->max_per_client);
      closed = refused = 0;
      clock_gettime(CLOCK_MONOTONIC, &said);
    }
    if (!(fds[0].revents & POLLIN)) continue;
    struct pending q = {.addrlen = sizeof q.addr};
    q.fd = accept(s->listen_fd, (struct sockaddr *)&q.addr, &q.addrlen);
    if (q.fd < 0) continue;
    fcntl(q.fd, F_SETFD, FD_CLOEXEC);
    clock_gettime(CLOCK_MONOTONIC, &q.since);
    size_t same = 0;
    for (size_t i = 0; i < n; i++) same += same_address(&p[i], &q);
    if (same >= s->max_per_client) {
      close(q.fd);
      refused++;
      continue;
    }
    if (n == EELLM_SERVER_MAX_PENDING) {
      size_t oldest = 0;
      for (size_t i = 1; i < n; i++)
        if (seconds_since(&p[i].since) > seconds_since(&p[oldest].since)) oldest = i;
      close(p[oldest].fd);
      drop_pending(p, &n, oldest);
    }
    p[n] = q;
    if (check_pending(s, &p[n])) n++;
  }
  for (size_t i = 0; i < n; i++) close(p[i].fd);
  return NULL;
}

/* ---- requests ---- */

/* Reads, checks and runs the request in x, and answers it. */
static enum MHD_Result answer(struct eellm_server *s, struct MHD_Connection *c,
                              const struct exchange *x) {
  char err[512];
  struct eellm_api_request r;
  int rc = eellm_api_parse(x->body ? x->body : "", x->n, &s->model, &r, err, sizeof err);
  if (rc == 0) {
    pthread_mutex_lock(&s->tok_lock);
    rc = eellm_api_encode(&r, &s->model, s->tok, err, sizeof err);
    pthread_mutex_unlock(&s->tok_lock);
  }
  if (rc != 0) {
    eellm_api_request_free(&r);
    return reply_error(c, MHD_HTTP_BAD_REQUEST, "%s", err);
  }
  conn_phase(s, c, ANSWERING);
  struct job job = {.req = &r, .out = calloc(r.n_runs ? r.n_runs : 1, sizeof *job.out)};
  /* Scoring one-token prompts runs nothing. */
  unsigned status = !job.out ? 500 : r.n_runs ? run_job(s, &job) : 200;
  enum MHD_Result result;
  if (status != 200) {
    result = reply_error(c, status, "%s", job.out ? job.err : "out of memory");
  } else {
    r.request_time = seconds_since(&x->start);
    char *json = eellm_api_answer(&r, job.out, s->tok);
    size_t generated = 0;
    for (size_t i = 0; i < r.n_runs; i++) generated += job.out[i].n;
    if (json && !r.no_log)
      fprintf(stderr, "eellm serve: 200 prompts %zu, tokens generated %zu, %.2f s\n", r.n,
              generated, seconds_since(&x->start));
    result = json ? reply(c, 200, json) : reply_error(c, 500, "out of memory writing the answer");
  }
  free_results(job.out, r.n_runs);
  eellm_api_request_free(&r);
  return result;
}

/* Counts the Content-Length headers and whether they differ. */
struct lengths {
  const char *first;
  int count, differ;
};

static enum MHD_Result count_length(void *cls, enum MHD_ValueKind kind, const char *key,
                                    const char *value) {
  (void)kind;
  struct lengths *l = cls;
  if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) != 0) return MHD_YES;
  if (l->count++ == 0)
    l->first = value;
  else if (strcmp(l->first, value ? value : "") != 0)
    l->differ = 1;
  return MHD_YES;
}

/* The first call for a request, once its header is in: ambiguous lengths,
 * wrong paths and methods, and declared bodies over the limit, are answered
 * before any body is read. */
static enum MHD_Result begin(struct eellm_server *s, struct MHD_Connection *c, const char *url,
                             const char *method, void **state) {
  conn_phase(s, c, RECEIVING_BODY);
  struct lengths lengths = {0};
  MHD_get_connection_values(c, MHD_HEADER_KIND, count_length, &lengths);
  if (lengths.differ)
    return reply_error(c, MHD_HTTP_BAD_REQUEST, "%d different Content-Length headers",
                       lengths.count);
  if (strcmp(url, "/api") != 0)
    return reply_error(c, MHD_HTTP_NOT_FOUND, "no such path '%.100s': the API is PUT /api", url);
  if (strcmp(method, "PUT") != 0)
    return reply_error(c, MHD_HTTP_METHOD_NOT_ALLOWED,
                       "method %.20s not allowed: the API is PUT /api", method);
  const char *length =
      MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
  if (length && strtoull(length, NULL, 10) > EELLM_SERVER_MAX_BODY)
    return reply_error(c, MHD_HTTP_CONTENT_TOO_LARGE,
                       "the body is %.20s bytes, over the limit of %u", length,
                       EELLM_SERVER_MAX_BODY);
  struct exchange *x = calloc(1, sizeof *x);
  if (!x) return MHD_NO;
  clock_gettime(CLOCK_MONOTONIC, &x->start);
  *state = x;
  pthread_mutex_lock(&s->lock);
  s->exchanges++;
  pthread_mutex_unlock(&s->lock);
  return MHD_YES;
}

/* Appends a piece of body; past the size limit the rest is read and dropped. */
static enum MHD_Result receive(struct exchange *x, const char *data, size_t n) {
  if (seconds_since(&x->start) > EELLM_SERVER_UPLOAD_TIMEOUT) return MHD_NO;
  if (x->too_large || n > EELLM_SERVER_MAX_BODY - x->n) {
    x->too_large = 1;
    return MHD_YES;
  }
  if (x->n + n > x->cap) {
    size_t cap = x->cap ? x->cap : 4096;
    while (cap < x->n + n) cap *= 2;
    char *body = realloc(x->body, cap);
    if (!body) return MHD_NO;
    x->body = body;
    x->cap = cap;
  }
  memcpy(x->body + x->n, data, n);
  x->n += n;
  return MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **state) {
  (void)version;
  struct exchange *x = *state;
  if (!x) return begin(cls, c, url, method, state);
  if (*upload_data_size) {
    enum MHD_Result rc = receive(x, upload_data, *upload_data_size);
    *upload_data_size = 0;
    return rc;
  }
  if (x->too_large)
    return reply_error(c, MHD_HTTP_CONTENT_TOO_LARGE, "the body is over the limit of %u bytes",
                       EELLM_SERVER_MAX_BODY);
  return answer(cls, c, x);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **state,
                         enum MHD_RequestTerminationCode why) {
  (void)why;
  struct eellm_server *s = cls;
  conn_phase(s, c, WAITING_HEADER); /* for the next request on the connection */
  struct exchange *x = *state;
  if (!x) return;
  free(x->body);
  free(x);
  *state = NULL;
  pthread_mutex_lock(&s->lock);
  s->exchanges--;
  pthread_cond_broadcast(&s->done);
  pthread_mutex_unlock(&s->lock);
}

/* A listening socket on host:port; -1 with a message. */
static int listen_on(const char *host, unsigned port, unsigned *bound, char *err, size_t errlen) {
  char service[16];
  snprintf(service, sizeof service, "%u", port);
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                           .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
  struct addrinfo *addresses;
  int rc = getaddrinfo(host, service, &hints, &addresses);
  if (rc != 0) {
    snprintf(err, errlen, "%s: %s", host, gai_strerror(rc));
    return -1;
  }
  int fd = socket(addresses->ai_family, addresses->ai_socktype | SOCK_CLOEXEC,
                  addresses->ai_protocol);
  int on = 1;
  if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) != 0 ||
      bind(fd, addresses->ai_addr, addresses->ai_addrlen) != 0 || listen(fd, 64) != 0) {
    snprintf(err, errlen, "cannot listen on %s port %u: %s", host, port, strerror(errno));
    if (fd >= 0) close(fd);
    freeaddrinfo(addresses);
    return -1;
  }
  freeaddrinfo(addresses);
  struct sockaddr_storage address;
  socklen_t len = sizeof address;
  getsockname(fd, (struct sockaddr *)&address, &len);
  *bound = ntohs(address.ss_family == AF_INET6
                     ? ((struct sockaddr_in6 *)&address)->sin6_port
                     : ((struct sockaddr_in *)&address)->sin_port);
  return fd;
}

static void server_free(struct eellm_server *s) {
  eellm_mirror_free(s->mirror);
  free(s->slot_job);
  free(s->slot_index);
  eellm_tokenizer_close(s->tok);
  pthread_mutex_destroy(&s->tok_lock);
  pthread_mutex_destroy(&s->lock);
  pthread_cond_destroy(&s->work);
  pthread_cond_destroy(&s->done);
  pthread_mutex_destroy(&s->conns_lock);
  pthread_cond_destroy(&s->sweep_cv);
  free(s);
}

/* The tokenizer, the queue and the generation thread. */
static struct eellm_server *server_create(struct eellm_generator *g,
                                          const struct eellm_server_config *c, char *err,
                                          size_t errlen) {
  struct eellm_server *s = calloc(1, sizeof *s);
  if (!s) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  s->gen = g;
  s->model = (struct eellm_api_model){eellm_generator_context(g), c->n_layers, c->exits,
                                      c->n_exits, c->threshold, eellm_generator_vocab(g),
                                      eellm_tokenizer_eot_id(eellm_generator_tokenizer(g)),
                                      c->method};
  s->rule = c->rule;
  s->mirror = eellm_mirror_new();
  s->max_batch = c->max_batch;
  s->request_slots = c->request_slots ? c->request_slots : eellm_server_default_request_slots(c->max_batch);
  if (s->request_slots > c->max_batch) s->request_slots = c->max_batch;
  s->header_timeout = c->header_timeout ? c->header_timeout : EELLM_SERVER_HEADER_TIMEOUT;
  s->max_per_client = c->max_per_client ? c->max_per_client : EELLM_SERVER_MAX_PER_CLIENT;
  s->next_seed = (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull;
  pthread_mutex_init(&s->tok_lock, NULL);
  pthread_mutex_init(&s->lock, NULL);
  pthread_cond_init(&s->work, NULL);
  pthread_cond_init(&s->done, NULL);
  pthread_mutex_init(&s->conns_lock, NULL);
  pthread_cond_init(&s->sweep_cv, NULL);
  const char *kind = eellm_tokenizer_name(eellm_tokenizer_id(eellm_generator_tokenizer(g)));
  s->slot_job = calloc(c->max_batch, sizeof *s->slot_job);
  s->slot_index = calloc(c->max_batch, sizeof *s->slot_index);
  if (!s->slot_job || !s->slot_index) {
    snprintf(err, errlen, "out of memory");
  } else if ((s->tok = eellm_tokenizer_open(kind, c->tokenizer_dir, err, errlen))) {
    if (pthread_create(&s->generation, NULL, generation_loop, s) == 0) return s;
    snprintf(err, errlen, "cannot start the generation thread");
  }
  server_free(s);
  return NULL;
}

static void stop_generation(struct eellm_server *s) {
  pthread_mutex_lock(&s->lock);
  s->stopping = 1;
  pthread_cond_signal(&s->work);
  pthread_mutex_unlock(&s->lock);
  pthread_join(s->generation, NULL);
}

static void stop_sweeper(struct eellm_server *s) {
  pthread_mutex_lock(&s->conns_lock);
  s->sweeping = 0;
  pthread_cond_signal(&s->sweep_cv);
  pthread_mutex_unlock(&s->conns_lock);
  pthread_join(s->sweeper, NULL);
}

unsigned eellm_server_default_request_slots(unsigned max_batch) {
  return max_batch > 1 ? max_batch / 2 : 1;
}

struct eellm_server *eellm_server_start(struct eellm_generator *g,
                                        const struct eellm_server_config *c, char *err,
                                        size_t errlen) {
  struct eellm_server *s = server_create(g, c, err, errlen);
  if (!s) return NULL;
  s->sweeping = 1;
  if (pthread_create(&s->sweeper, NULL, sweep_loop, s) != 0) {
    snprintf(err, errlen, "cannot start the connection sweeper");
    stop_generation(s);
    server_free(s);
    return NULL;
  }
  int fd = listen_on(c->host, c->port, &s->port, err, errlen);
  if (fd >= 0) {
    s->daemon = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL |
            MHD_USE_ITC | MHD_USE_ERROR_LOG | MHD_USE_NO_LISTEN_SOCKET,
        0, NULL, NULL, on_request, s,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)EELLM_SERVER_IDLE_TIMEOUT,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)EELLM_SERVER_MAX_CONNECTIONS,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, s->max_per_client,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, s,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_END);
    s->listen_fd = fd;
    s->accepting = 1;
    if (s->daemon && pthread_create(&s->acceptor, NULL, accept_loop, s) == 0) return s;
    if (s->daemon) MHD_stop_daemon(s->daemon);
    snprintf(err, errlen, "cannot start the HTTP server on %s port %u", c->host, s->port);
    close(fd);
  }
  stop_sweeper(s);
  stop_generation(s);
  server_free(s);
  return NULL;
}

unsigned eellm_server_port(const struct eellm_server *s) { return s->port; }

/* Waits, a few seconds at most, until every request has been answered. */
static void wait_for_answers(struct eellm_server *s) {
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += EELLM_SERVER_STOP_GRACE;
  pthread_mutex_lock(&s->lock);
  while (s->exchanges && pthread_cond_timedwait(&s->done, &s->lock, &deadline) == 0) continue;
  pthread_mutex_unlock(&s->lock);
}

void eellm_server_stop(struct eellm_server *s) {
  pthread_mutex_lock(&s->conns_lock);
  s->accepting = 0;
  pthread_mutex_unlock(&s->conns_lock);
  pthread_join(s->acceptor, NULL);
  close(s->listen_fd);
  stop_generation(s);
  wait_for_answers(s);
  MHD_stop_daemon(s->daemon);
  stop_sweeper(s);
  server_free(s);
}
