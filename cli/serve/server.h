/* eellm serve: EE-LLM's HTTP API (PUT /api, cli/serve/server_api.h) on libmicrohttpd.
 *
 * Every connection has its own thread; one generation thread owns the generator,
 * which is not reentrant. Requests wait in a queue; the generation thread takes the
 * oldest and joins to it the prompts of later requests with the same options, up
 * to max_batch prompts per eellm_generate call (a request with more prompts takes
 * several calls). Sampled requests with their own random_seed are never joined with
 * others, so their output does not depend on other traffic. Bad requests are
 * answered at once, whatever runs. */
#ifndef EELLM_CLI_SERVER_H
#define EELLM_CLI_SERVER_H

#include <stddef.h>

#include <eellm/generate.h>

#define EELLM_SERVER_MAX_BODY (1u << 20)   /* bytes; larger bodies get 413 */
#define EELLM_SERVER_IDLE_TIMEOUT 30       /* seconds a connection may stay silent */
#define EELLM_SERVER_UPLOAD_TIMEOUT 60     /* seconds to receive a request body */
#define EELLM_SERVER_MAX_CONNECTIONS 64
#define EELLM_SERVER_STOP_GRACE 5          /* seconds to finish sending answers when stopping */

struct eellm_server_config {
  const char *host;           /* numeric IPv4 or IPv6 address, or a name */
  unsigned port;              /* 0: any free port (see eellm_server_port) */
  unsigned max_batch;         /* prompts per eellm_generate call, as the generator was opened */
  const char *tokenizer_dir;  /* for the gpt2 tokenizer; NULL: the default */
  unsigned n_layers;          /* the model's */
  const unsigned *exits;      /* its exit layers, ascending */
  size_t n_exits;
  enum eellm_exit_rule rule;
  enum eellm_gen_method method;
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
/* Stops: no new connections; queued requests get 503, the running generation
 * finishes and is answered; then every connection closes. */
void eellm_server_stop(struct eellm_server *s);

#endif
