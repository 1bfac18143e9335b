/* EELLM_API marks what libeellm exports. The library is compiled with
 * -fvisibility=hidden: a function is part of the installed API exactly when an
 * installed header (include/eellm.h, include/eellm/NAME.h) declares it EELLM_API.
 *
 * Errors: a public function that can fail on bad input (a file, a spec, an
 * argument) returns NULL or a negative value and leaves one line naming the
 * problem in its (err, errlen) buffer; the library itself prints nothing and
 * does not abort on bad input. It does abort when memory runs out in places
 * that cannot report it, notably inside task submission (StarPU refusing a
 * task, or no memory for a task's arguments): that is not bad input. */
#ifndef EELLM_API_H
#define EELLM_API_H

#if defined(__GNUC__) || defined(__clang__)
#define EELLM_API __attribute__((visibility("default")))
#else
#define EELLM_API
#endif

#endif
