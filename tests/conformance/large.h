/* large.h - the conformance suite's "large" tier (large.c): one op per family on a uint8
 * tensor of more than 2^31 elements, on one device; run by `nabla-conformance --large`. */
#ifndef NB_CONF_LARGE_H
#define NB_CONF_LARGE_H

#include "nabla.h"

typedef struct conf_large_counts {
    int pass, fail, skip;
} conf_large_counts;

/* Prints one line per check ("large: ... pass", "FAIL large: ...", or why it skipped). */
void conf_check_large(const char *device, conf_large_counts *counts);

#endif
