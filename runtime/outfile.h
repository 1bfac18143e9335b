/* Atomic output files: the content goes to a temporary file in the target's
 * directory, which commit flushes, fsyncs and renames over the target. A reader,
 * or a run that fails half-way, never sees a partial file, and a failed run leaves
 * the old file in place. */
#ifndef EELLM_RUNTIME_OUTFILE_H
#define EELLM_RUNTIME_OUTFILE_H

#include <stddef.h>
#include <stdio.h>

struct eellm_outfile {
  FILE *fp;   /* write the content here */
  char *path; /* the target */
  char *tmp;  /* the temporary file */
};

/* Creates the temporary file. 0, or -1 with "PATH: why" in err. */
int eellm_outfile_open(struct eellm_outfile *f, const char *path, char *err, size_t errlen);
/* Flushes, fsyncs and renames over the target; on failure removes the temporary
 * file. Either way f is closed. 0, or -1 with "PATH: why" in err. */
int eellm_outfile_commit(struct eellm_outfile *f, char *err, size_t errlen);
/* Removes the temporary file and closes f; the target is untouched. */
void eellm_outfile_abort(struct eellm_outfile *f);

#endif
