/* ops.c */
#include <errno.h>
