/* eellm serve's HTTP side (libmicrohttpd, a thread per connection) and its
 * generation queue (one thread owns the generator). */
#include "server.h"

#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <starpu.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "server_api.h"
#include <eellm/tokenizer.h>

/* One request's prompts on their way through the generator. */
struct job {
  const struct eellm_api_request *req;
  struct eellm_gen_sequence *out; /* req->n */
  size_t taken;                   /* prompts handed to the generator so far */
  int finished;
  unsigned status;                /* HTTP status when it failed, else 0 */
  char err[256];
  struct job *next;
};

/* One eellm_generate call: prompt i is prompt index[i] of owner[i]. */
struct batch {
  size_t n;
  struct job **owner;
  size_t *index;
  const uint16_t **prompts;
  size_t *lens;
  struct eellm_gen_sequence *out;
  struct eellm_gen_options o;
};

struct eellm_server {
  struct MHD_Daemon *daemon;
  unsigned port;
  struct eellm_generator *gen;
  struct eellm_api_model model;
  enum eellm_exit_rule rule;
  enum eellm_gen_method method;
  unsigned max_batch;
  /* The server's own tokenizer: encoding is not thread-safe, so under tok_lock. */
  struct eellm_tokenizer *tok;
  pthread_mutex_t tok_lock;
  /* The queue of jobs with prompts not yet taken, and the generation thread. */
  pthread_mutex_t lock;
  pthread_cond_t work, done;
  struct job *head, *tail;
  int stopping;
  uint64_t next_seed;
  struct batch batch;
  pthread_t generation;
  size_t exchanges; /* requests being received or answered, under lock */
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

/* Whether b's prompts may share a generator call with a's: equal outputs need equal
 * options (the parser normalised those without effect), and a sampled request with
 * its own seed keeps its random stream to itself. */
static int can_share(const struct eellm_api_request *a, const struct eellm_api_request *b) {
  const struct eellm_gen_options *x = &a->o, *y = &b->o;
  if (x->max_tokens != y->max_tokens || x->use_early_exit != y->use_early_exit ||
      x->threshold != y->threshold || x->temperature != y->temperature ||
      x->top_k != y->top_k || x->top_p != y->top_p || x->n_exit_layers != y->n_exit_layers)
    return 0;
  for (size_t i = 0; i < x->n_exit_layers; i++)
    if (x->exit_layers[i] != y->exit_layers[i]) return 0;
  return x->temperature == 0 || (!a->seeded && !b->seeded);
}

/* Fills s->batch from the oldest job and the later ones that can share with it. */
static void take_batch(struct eellm_server *s) {
  struct batch *b = &s->batch;
  struct job *head = s->head;
  b->n = 0;
  b->o = head->req->o;
  b->o.rule = s->rule;
  b->o.method = s->method;
  b->o.stop_at_eot = 1;
  b->o.on_token = NULL;
  b->o.ctx = NULL;
  /* A seeded request split over calls gives each call its own stream. */
  b->o.seed = head->req->seeded ? head->req->o.seed + head->taken : s->next_seed++;
  for (struct job *j = head; j && b->n < s->max_batch; j = j->next) {
    if (j != head && !can_share(head->req, j->req)) continue;
    for (; j->taken < j->req->n && b->n < s->max_batch; b->n++, j->taken++) {
      b->owner[b->n] = j;
      b->index[b->n] = j->taken;
      b->prompts[b->n] = j->req->ids[j->taken];
      b->lens[b->n] = j->req->lens[j->taken];
    }
  }
  for (size_t i = 0; i < b->n; i++)
    if (b->owner[i]->taken == b->owner[i]->req->n) queue_remove(s, b->owner[i]);
}

/* Hands the batch's results (or its failure) to their jobs and wakes finished ones. */
static void settle_batch(struct eellm_server *s, int rc, const char *err) {
  struct batch *b = &s->batch;
  for (size_t i = 0; i < b->n; i++) {
    struct job *job = b->owner[i];
    if (rc == 0) {
      job->out[b->index[i]] = b->out[i];
    } else {
      eellm_gen_sequence_free(&b->out[i]);
      job->status = 500;
      snprintf(job->err, sizeof job->err, "generation failed: %s", err);
    }
    memset(&b->out[i], 0, sizeof b->out[i]);
  }
  for (size_t i = 0; i < b->n; i++) {
    struct job *job = b->owner[i];
    if (job->status && job->taken < job->req->n) {
      queue_remove(s, job);
      job->taken = job->req->n;
    }
    if (job->taken == job->req->n) job->finished = 1;
  }
  pthread_cond_broadcast(&s->done);
}

static void *generation_loop(void *arg) {
  struct eellm_server *s = arg;
  struct batch *b = &s->batch;
  pthread_mutex_lock(&s->lock);
  for (;;) {
    if (!s->head && !s->stopping) {
      /* Idle StarPU workers poll for tasks in a tight loop unless paused. */
      starpu_pause();
      while (!s->head && !s->stopping) pthread_cond_wait(&s->work, &s->lock);
      starpu_resume();
    }
    if (s->stopping) break;
    take_batch(s);
    pthread_mutex_unlock(&s->lock);
    char err[256] = "";
    int rc = eellm_generate(s->gen, b->prompts, b->lens, b->n, &b->o, b->out, err, sizeof err);
    pthread_mutex_lock(&s->lock);
    settle_batch(s, rc, err);
  }
  for (struct job *job = s->head; job; job = job->next) {
    job->status = 503;
    snprintf(job->err, sizeof job->err, "the server is shutting down");
    job->finished = 1;
  }
  s->head = s->tail = NULL;
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
  struct job job = {.req = &r, .out = calloc(r.n, sizeof *job.out)};
  unsigned status = job.out ? run_job(s, &job) : 500;
  enum MHD_Result result;
  if (status != 200) {
    result = reply_error(c, status, "%s", job.out ? job.err : "out of memory");
  } else {
    char *json = eellm_api_answer(&r, job.out, s->tok);
    size_t generated = 0;
    for (size_t i = 0; i < r.n; i++) generated += job.out[i].n;
    if (json)
      fprintf(stderr, "eellm serve: 200 prompts %zu, tokens generated %zu, %.2f s\n", r.n,
              generated, seconds_since(&x->start));
    result = json ? reply(c, 200, json) : reply_error(c, 500, "out of memory writing the answer");
  }
  free_results(job.out, r.n);
  eellm_api_request_free(&r);
  return result;
}

/* The first call for a request: wrong paths and methods, and declared bodies over
 * the limit, are answered before any body is read. */
static enum MHD_Result begin(struct eellm_server *s, struct MHD_Connection *c, const char *url,
                             const char *method, void **state) {
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
  (void)c, (void)why;
  struct eellm_server *s = cls;
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

static int batch_alloc(struct batch *b, unsigned max_batch) {
  b->owner = calloc(max_batch, sizeof *b->owner);
  b->index = calloc(max_batch, sizeof *b->index);
  b->prompts = calloc(max_batch, sizeof *b->prompts);
  b->lens = calloc(max_batch, sizeof *b->lens);
  b->out = calloc(max_batch, sizeof *b->out);
  return b->owner && b->index && b->prompts && b->lens && b->out ? 0 : -1;
}

static void server_free(struct eellm_server *s) {
  free(s->batch.owner);
  free(s->batch.index);
  free(s->batch.prompts);
  free(s->batch.lens);
  free(s->batch.out);
  eellm_tokenizer_close(s->tok);
  pthread_mutex_destroy(&s->tok_lock);
  pthread_mutex_destroy(&s->lock);
  pthread_cond_destroy(&s->work);
  pthread_cond_destroy(&s->done);
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
                                      c->n_exits, c->threshold};
  s->rule = c->rule;
  s->method = c->method;
  s->max_batch = c->max_batch;
  s->next_seed = (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull;
  pthread_mutex_init(&s->tok_lock, NULL);
  pthread_mutex_init(&s->lock, NULL);
  pthread_cond_init(&s->work, NULL);
  pthread_cond_init(&s->done, NULL);
  const char *kind = eellm_tokenizer_name(eellm_tokenizer_id(eellm_generator_tokenizer(g)));
  if (batch_alloc(&s->batch, c->max_batch) != 0) {
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

struct eellm_server *eellm_server_start(struct eellm_generator *g,
                                        const struct eellm_server_config *c, char *err,
                                        size_t errlen) {
  struct eellm_server *s = server_create(g, c, err, errlen);
  if (!s) return NULL;
  int fd = listen_on(c->host, c->port, &s->port, err, errlen);
  if (fd >= 0) {
    s->daemon = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL |
            MHD_USE_ITC | MHD_USE_ERROR_LOG,
        0, NULL, NULL, on_request, s, MHD_OPTION_LISTEN_SOCKET, fd,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)EELLM_SERVER_IDLE_TIMEOUT,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)EELLM_SERVER_MAX_CONNECTIONS,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_END);
    if (s->daemon) return s;
    snprintf(err, errlen, "cannot start the HTTP server on %s port %u", c->host, s->port);
    close(fd);
  }
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
  MHD_socket listening = MHD_quiesce_daemon(s->daemon);
  if (listening != MHD_INVALID_SOCKET) close(listening);
  stop_generation(s);
  wait_for_answers(s);
  MHD_stop_daemon(s->daemon);
  server_free(s);
}
