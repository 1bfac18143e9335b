/* eellm serve across MPI ranks. Rank 0 serves HTTP and drives the generator's
 * sessions; every other rank holds its stages (and tensor parts) of the model
 * and must make the same session calls in the same order, since every rank
 * submits the same task flow. Rank 0 records the calls that change sessions
 * (opening one with its options, adding a prompt) and broadcasts the record
 * with what comes next: a step of every session, closing them all, or the
 * end; the other ranks replay it (eellm_mirror_follow), taking finished
 * sequences after each step as rank 0 does, so slots stay the same. */
#ifndef EELLM_CLI_MIRROR_H
#define EELLM_CLI_MIRROR_H

#include <stddef.h>
#include <stdint.h>

#include <eellm/generate.h>

enum eellm_mirror_end { EELLM_MIRROR_STEP, EELLM_MIRROR_CLOSE, EELLM_MIRROR_STOP };

struct eellm_mirror;

/* A record on rank 0 of several; NULL in one process (every call below takes NULL). */
struct eellm_mirror *eellm_mirror_new(void);
void eellm_mirror_free(struct eellm_mirror *r);
/* A session opened with o, put first in the list of sessions. */
void eellm_mirror_open(struct eellm_mirror *r, const struct eellm_gen_options *o);
/* A prompt added to the session at position `session` of the list. */
void eellm_mirror_add(struct eellm_mirror *r, size_t session, const uint16_t *ids, size_t n,
                      unsigned max_tokens, uint64_t seed, uint64_t stream);
/* Sends the record and `end` to the other ranks (collective with their follow). */
void eellm_mirror_send(struct eellm_mirror *r, enum eellm_mirror_end end);
/* Ranks above 0: replays rank 0's records on g until it ends. 0, or -1 with err
 * when a replayed call fails (the ranks would no longer agree). */
int eellm_mirror_follow(struct eellm_generator *g, char *err, size_t errlen);

#endif
