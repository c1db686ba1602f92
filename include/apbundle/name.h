/*
 * name.h - the rules for model names (docs/USAGE.md, "Names"), shared by the
 * packer and the reader so that nothing `apbundle create` writes can be
 * refused at mount and nothing hostile in a bundle can escape or shadow the
 * mounted tree.
 */
#ifndef APBUNDLE_NAME_H
#define APBUNDLE_NAME_H

#include <stddef.h>

#include "api.h"

#ifdef __cplusplus
extern "C" {
#endif

#define APB_NAME_MAX 4096      /* bytes in a whole name */
#define APB_COMPONENT_MAX 255  /* bytes in one '/'-separated component */

/* The root entries the daemon serves itself, which no name may start
 * with: apb_reserved_names[APB_RESERVED_STATS] is ".stats", and so on. */
enum apb_reserved {
	APB_RESERVED_STATS,
	APB_RESERVED_METRICS,
	APB_RESERVED_CONTROL,
	APB_NRESERVED
};
APB_API
extern const char *const apb_reserved_names[APB_NRESERVED];

/*
 * Check one name: relative '/'-separated UTF-8 path, no empty, "." or ".."
 * component, no control character, length limits, valid UTF-8, first
 * component not one of the reserved root entries (.stats .metrics .control).
 * Returns 0 or -EINVAL with the reason in err.
 */
APB_API
int apb_name_check(const char *name, size_t len, char *err, size_t err_len);

/*
 * Check a set of names sorted with strcmp(): no duplicates and no name that
 * is also a directory of another ("a" and "a/b"). Returns 0 or -EINVAL with
 * the offending names in err.
 */
APB_API
int apb_names_check_set(const char *const *sorted, size_t n, char *err,
			size_t err_len);

/*
 * Render len bytes of a (possibly invalid) name for people, in messages
 * and listings, so that printing it can neither drive a terminal nor be
 * mistaken for another name: control bytes (< 0x20, 0x7f) and bytes not
 * part of valid UTF-8 become \xNN; so do, byte by byte, the valid
 * characters a terminal or a bidirectional layout acts on (C1 controls
 * U+0080..U+009F, U+200E, U+200F, U+2028..U+202E, U+2066..U+2069); a
 * backslash becomes \\. Everything else is copied. When the result does
 * not fit buf_len, it is cut at a character boundary and ends in "...";
 * 4 * len + 4 bytes always suffice. Returns buf, NUL terminated.
 */
APB_API
const char *apb_name_quote(const char *s, size_t len, char *buf,
			   size_t buf_len);

#ifdef __cplusplus
}
#endif

#endif
