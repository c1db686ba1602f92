/* writer.c - placeholder until its module lands. */
#include <errno.h>
