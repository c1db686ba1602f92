/*
 * json.h - a JSON reader that builds no tree, for manifests (internal).
 *
 * A bundle's manifest is read in two passes over its text. The first,
 * apb_json_check(), validates one JSON value (RFC 8259 grammar, nesting
 * at most APB_JSON_DEPTH_MAX, no NUL in strings, raw or as \u0000) and
 * allocates nothing. The second walks the checked text with the cursors
 * below, which assume it is valid and never fail: the fields a reader
 * wants are decoded in place, everything else is skipped. A manifest of
 * 100,000 models is then read without the 2 million small blocks of a
 * parse tree (docs/DESIGN.md, "Memory of the process").
 *
 * Every pointer below points into the checked text, at the first byte of
 * a value (after any whitespace). The text must be followed by a NUL byte.
 */
#ifndef APB_CORE_JSON_H
#define APB_CORE_JSON_H

#include <stdbool.h>
#include <stddef.h>

/* The largest integer a JSON number read as a double holds exactly with
 * its neighbours told apart: 2^53 - 1 (2^53 + 1 reads as 2^53). */
#define APB_JSON_EXACT_INT_MAX 9007199254740991.0

#define APB_JSON_DEPTH_MAX 1000 /* arrays and objects inside each other */

enum apb_json_error {
	APB_JSON_OK,
	APB_JSON_SYNTAX,      /* not JSON, or cut short */
	APB_JSON_DEPTH,       /* nested deeper than APB_JSON_DEPTH_MAX */
	APB_JSON_ESCAPED_NUL, /* "\u0000" in a string */
	APB_JSON_RAW_NUL,     /* a NUL byte in a string */
};

#define APB_JSON_HINTS_MAX 8

/* What the check learned of a container one level inside the top value
 * (a member of a manifest's top-level object): the cursors skip it, and
 * count its members, without walking it again. */
struct apb_json_hint {
	const char *v, *end; /* its first byte; just past its last */
	size_t count;        /* members or elements */
};

struct apb_json_hints {
	size_t n; /* the first n such containers, in text order */
	struct apb_json_hint at[APB_JSON_HINTS_MAX];
};

/* Check that text (len bytes) begins with one JSON value, whitespace
 * allowed before it. *pos: where the value ends, or where the error is;
 * *values: how many values it holds (itself included); *hints (when not
 * NULL): filled for the cursors. */
enum apb_json_error apb_json_check(const char *text, size_t len,
				   size_t *pos, size_t *values,
				   struct apb_json_hints *hints);

/* The hint for container v, or NULL. */
const struct apb_json_hint *apb_json_hint(const struct apb_json_hints *h,
					  const char *v);

enum apb_json_type {
	APB_JSON_OBJECT,
	APB_JSON_ARRAY,
	APB_JSON_STRING,
	APB_JSON_NUMBER,
	APB_JSON_OTHER, /* true, false, null */
};

/* The cursors are the open's inner loop, called per member of 100,000
 * models: they are inline, so that the manifest reader's loops keep no
 * call (through the shared library's PLT) per value. */

static inline enum apb_json_type apb_json_type(const char *v)
{
	switch (*v) {
	case '{':
		return APB_JSON_OBJECT;
	case '[':
		return APB_JSON_ARRAY;
	case '"':
		return APB_JSON_STRING;
	case 't':
	case 'f':
	case 'n':
		return APB_JSON_OTHER;
	default:
		return APB_JSON_NUMBER;
	}
}

static inline bool apb_json_is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static inline const char *apb_json_ws(const char *p)
{
	while (apb_json_is_space(*p))
		p++;
	return p;
}

/* Past string v. */
static inline const char *apb_json_skip_string(const char *v)
{
	v++;
	for (;;) {
		while (*v != '"' && *v != '\\')
			v++;
		if (*v == '"')
			return v + 1;
		v += 2; /* and the escaped byte; a \uXXXX's digits are plain */
	}
}

/* Past container v (its brackets counted; strings skipped whole, so
 * brackets inside them do not count). */
const char *apb_json_skip_container(const char *v);

/* Past value v. */
static inline const char *apb_json_skip(const char *v)
{
	if (*v == '"')
		return apb_json_skip_string(v);
	if (*v == '{' || *v == '[')
		return apb_json_skip_container(v);
	while (*v && !apb_json_is_space(*v) && *v != ',' && *v != '}' &&
	       *v != ']') /* a number or a word */
		v++;
	return v;
}

/* The members of object v or the elements of array v, in order. */
struct apb_json_iter {
	const char *p;    /* the next member, when pending is NULL */
	const char *pending; /* the value last returned, to skip first */
	bool object;         /* members have keys */
};

static inline void apb_json_iter(struct apb_json_iter *it, const char *v)
{
	it->p = apb_json_ws(v + 1);
	it->pending = NULL;
	it->object = *v == '{';
}

/* The value last returned ends at end: the iteration goes on from there
 * instead of skipping the value again. */
static inline void apb_json_resume(struct apb_json_iter *it, const char *end)
{
	const char *p = apb_json_ws(end);

	it->p = *p == ',' ? apb_json_ws(p + 1) : p;
	it->pending = NULL;
}

/* The next member (*key: its name, a string value; NULL in an array) and
 * its value; false after the last, with it->p at the closing bracket. */
static inline bool apb_json_next(struct apb_json_iter *it, const char **key,
				 const char **val)
{
	const char *p;

	if (it->pending)
		apb_json_resume(it, apb_json_skip(it->pending));
	p = it->p;
	if (*p == '}' || *p == ']')
		return false;
	if (it->object) { /* a member: "key" : value */
		*key = p;
		p = apb_json_ws(apb_json_ws(apb_json_skip_string(p)) + 1);
	} else {
		*key = NULL;
	}
	*val = it->pending = p;
	return true;
}

size_t apb_json_count(const char *v); /* members or elements */

/* String v's bytes between the quotes, escapes not decoded: at least as
 * many as it decodes to. */
size_t apb_json_raw_len(const char *v);
/* Decode string v into out (apb_json_raw_len(v) + 1 bytes): its length;
 * out is NUL terminated. */
size_t apb_json_string(const char *v, char *out);
/* Whether string v decodes to exactly the NUL-terminated s. */
bool apb_json_string_is(const char *v, const char *s);

/* Number v as the nearest double. */
double apb_json_number(const char *v);

#endif
