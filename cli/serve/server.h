/* eellm serve: EE-LLM's HTTP API (PUT /api, cli/serve/server_api.h) on libmicrohttpd.
 *
 * Every connection has its own thread; one generation thread owns the generator,
 * which is not reentrant. Generation is continuous batching (eellm_gen_session):
 * the generator's max_batch slots hold prompts of any requests, which join the
 * running batch at the next step boundary and leave it when they finish. A free
 * slot goes to the queued request with the fewest prompts running (the oldest
 * among equals), and no request runs more than request_slots prompts at once, so
 * a request of many prompts cannot hold back a small one. Requests with different
 * options run in different sessions, stepped in turn. A sequence's output does not
 * depend on other traffic: greedy, it is the prompt's alone; sampled, prompt i of
 * a request draws from the stream (random_seed, i). Bad requests are answered at
 * once, whatever runs.
 *
 * Connections: a new one waits, without a thread, until its request line is in
 * (a line that is not METHOD SP TARGET ... gets 400; MHD 0.9.75 would close
 * silently), at most EELLM_SERVER_MAX_PENDING of them, the oldest dropped first.
 * Then at most EELLM_SERVER_MAX_CONNECTIONS, max_per_client per client
 * address; a header must be complete within header_timeout seconds of the
 * connection's start (or of the previous answer on it) and a body within
 * EELLM_SERVER_UPLOAD_TIMEOUT, or the connection is closed, however steadily the
 * bytes trickle; and past MAX_CONNECTIONS - RESERVED_CONNECTIONS open connections,
 * each new one closes the oldest one still waiting for its header. */
#ifndef EELLM_CLI_SERVER_H
#define EELLM_CLI_SERVER_H

#include <stddef.h>

#include <eellm/generate.h>

#define EELLM_SERVER_MAX_BODY (1u << 20)   /* bytes; larger bodies get 413 */
#define EELLM_SERVER_IDLE_TIMEOUT 30       /* seconds a connection may stay silent */
#define EELLM_SERVER_UPLOAD_TIMEOUT 60     /* seconds to receive a request body */
#define EELLM_SERVER_HEADER_TIMEOUT 10     /* seconds to receive a request's header */
#define EELLM_SERVER_MAX_CONNECTIONS 64
#define EELLM_SERVER_RESERVED_CONNECTIONS 8 /* kept for new clients, see above */
#define EELLM_SERVER_MAX_PER_CLIENT 16      /* connections per client address */
#define EELLM_SERVER_MAX_PENDING 128        /* new connections waiting for a request line */
#define EELLM_SERVER_STOP_GRACE 5          /* seconds to finish sending answers when stopping */

struct eellm_server_config {
  const char *host;           /* numeric IPv4 or IPv6 address, or a name */
  unsigned port;              /* 0: any free port (see eellm_server_port) */
  unsigned max_batch;         /* the generator's slots, as it was opened */
  unsigned request_slots;     /* slots one request may hold at once; 0: the default */
  unsigned header_timeout;    /* seconds; 0: EELLM_SERVER_HEADER_TIMEOUT */
  unsigned max_per_client;    /* connections per client address; 0: EELLM_SERVER_MAX_PER_CLIENT */
  const char *tokenizer_dir;  /* for the gpt2 tokenizer; NULL: the default */
  unsigned n_layers;          /* the model's */
  const unsigned *exits;      /* its exit layers, ascending */
  size_t n_exits;
  enum eellm_exit_rule rule;
  enum eellm_gen_method method; /* a request's without "method" */
  float threshold;            /* early_exit_thres when a request gives none (0: 1) */
};

struct eellm_server;

/* Starts serving g (which stays the caller's, to close after eellm_server_stop).
 * NULL with one line in err when the address cannot be bound. */
struct eellm_server *eellm_server_start(struct eellm_generator *g,
                                        const struct eellm_server_config *c, char *err,
                                        size_t errlen);
/* The port the server listens on. */
unsigned eellm_server_port(const struct eellm_server *s);
/* max_batch / 2, at least 1. */
unsigned eellm_server_default_request_slots(unsigned max_batch);
/* Stops: no new connections, no new prompt starts; the running prompts finish,
 * requests whose prompts all ran are answered, the others get 503; then every
 * connection closes. */
void eellm_server_stop(struct eellm_server *s);

#endif
