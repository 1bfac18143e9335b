/* The trace recorder's hook into task submission (codelets/submit.c): the
 * public half of tracing is include/eellm/trace.h. */
#ifndef EELLM_RUNTIME_TRACE_H
#define EELLM_RUNTIME_TRACE_H

#include "eellm/trace.h"

struct eellm_task_info;

/* For eellm_submit: NULL when no trace records; else a malloc'd record to pass
 * with STARPU_CALLBACK_WITH_ARG (StarPU frees it) and eellm_trace_task_done
 * as the task's callback. */
void *eellm_trace_task_arg(const struct eellm_task_info *info);
void eellm_trace_task_done(void *arg);

#endif
