/*
 * error.h - the library's one way to report an error: a negative errno as
 * the return value and, for people, one line of detail in the caller's
 * buffer. Internal; not installed.
 */
#ifndef APB_CORE_ERROR_H
#define APB_CORE_ERROR_H

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

/* Format the message into err (if any) and return rc, so that a failure
 * path reads `return apb_fail(-ENOMEM, err, err_len, ...)`. */
__attribute__((format(printf, 4, 5))) static inline int
apb_fail(int rc, char *err, size_t err_len, const char *fmt, ...)
{
	if (err && err_len) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err, err_len, fmt, ap);
		va_end(ap);
	}
	return rc;
}

/* Buffer size for a name quoted in a message (apb_name_quote, name.h). */
#define APB_QUOTE_MAX 200

/* The common case: malformed input. */
#define apb_errf(err, err_len, ...) apb_fail(-EINVAL, err, err_len, __VA_ARGS__)

#endif
