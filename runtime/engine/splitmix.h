/* splitmix64 (Steele, Lea, Flood 2014): the one pseudo-random generator behind
 * weights, data windows and sampling, so that every machine draws the same
 * numbers. */
#ifndef EELLM_RUNTIME_SPLITMIX_H
#define EELLM_RUNTIME_SPLITMIX_H

#include <stdint.h>

#define EELLM_SPLITMIX64_GAMMA 0x9e3779b97f4a7c15ull

/* The output for state z: a bijective mix of z + gamma. */
static inline uint64_t eellm_splitmix64(uint64_t z) {
  z += EELLM_SPLITMIX64_GAMMA;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* The next number of the stream in *state. */
static inline uint64_t eellm_splitmix64_next(uint64_t *state) {
  uint64_t z = eellm_splitmix64(*state);
  *state += EELLM_SPLITMIX64_GAMMA;
  return z;
}

#endif
