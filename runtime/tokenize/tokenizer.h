/* Moved to include/eellm/tokenizer.h (the installed API); kept for sources that
 * still include this path (runtime/generate/gen_step.c). */
#include "eellm/tokenizer.h"
