/*
 * json.c - a JSON reader that builds no tree (json.h).
 *
 * apb_json_check() is a recursive descent over RFC 8259's grammar with
 * two limits of its own: nesting (APB_JSON_DEPTH_MAX, so the recursion is
 * bounded) and numbers of at most NUMBER_MAX bytes (apb_json_number()
 * converts them from a buffer on the stack). Strings may hold any byte but
 * NUL (other control characters too, as the JSON library used before
 * allowed): a name "a\0b" would otherwise reach C code as "a". The cursors
 * after it trust the check and test nothing.
 */
#include <locale.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

#define NUMBER_MAX 63

struct check {
	const char *s;
	size_t len, pos, values;
	enum apb_json_error err;
	struct apb_json_hints *hints; /* or NULL */
};

#define is_space apb_json_is_space

/* The text's NUL at len is no space and no ch: the scans below stop at
 * it without a bounds test. */
static inline void skip_space(struct check *c)
{
	size_t p = c->pos;

	while (is_space(c->s[p]))
		p++;
	c->pos = p;
}

static bool fail(struct check *c, enum apb_json_error e)
{
	c->err = e;
	return false;
}

static inline bool at(const struct check *c, char ch)
{
	return c->s[c->pos] == ch;
}

static int hex(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

/* The 4 hex digits at s (bounds checked by the caller), or -1. */
static long hex4(const char *s)
{
	long v = 0;

	for (int i = 0; i < 4; i++) {
		int h = hex(s[i]);

		if (h < 0)
			return -1;
		v = v << 4 | h;
	}
	return v;
}

/* A \u escape at c->pos (the backslash); a high surrogate must be
 * followed by an escaped low one. */
static bool check_u(struct check *c)
{
	size_t p = c->pos;
	long u;

	if (c->len - p < 6 || (u = hex4(c->s + p + 2)) < 0)
		return fail(c, APB_JSON_SYNTAX);
	if (u == 0)
		return fail(c, APB_JSON_ESCAPED_NUL);
	if (u >= 0xdc00 && u <= 0xdfff) /* a low surrogate first */
		return fail(c, APB_JSON_SYNTAX);
	c->pos += 6;
	if (u < 0xd800 || u > 0xdbff)
		return true;
	p = c->pos;
	if (c->len - p < 6 || c->s[p] != '\\' || c->s[p + 1] != 'u' ||
	    (u = hex4(c->s + p + 2)) < 0xdc00 || u > 0xdfff)
		return fail(c, APB_JSON_SYNTAX);
	c->pos += 6;
	return true;
}

/* The bytes a string's check stops at. */
static const unsigned char string_stop[256] = {
	['"'] = 1, ['\\'] = 1, ['\0'] = 1,
};

static inline bool check_string(struct check *c)
{
	c->pos++; /* the opening quote */
	while (c->pos < c->len) {
		size_t p = c->pos; /* in a register, not in *c */
		char ch;

		/* The text is NUL terminated at len: the stop table
		 * ends this loop there at the latest. */
		while (!string_stop[(unsigned char)c->s[p]])
			p++;
		c->pos = p;
		if (c->pos >= c->len)
			break;
		ch = c->s[c->pos];
		if (ch == '"') {
			c->pos++;
			return true;
		}
		if (ch == '\0')
			return fail(c, APB_JSON_RAW_NUL);
		if (c->pos + 1 >= c->len)
			break;
		ch = c->s[c->pos + 1];
		if (ch == 'u') {
			if (!check_u(c))
				return false;
		} else if (ch && strchr("\"\\/bfnrt", ch)) {
			c->pos += 2;
		} else {
			return fail(c, APB_JSON_SYNTAX);
		}
	}
	return fail(c, APB_JSON_SYNTAX); /* cut short */
}

static size_t digits(const struct check *c, size_t p)
{
	while (p < c->len && c->s[p] >= '0' && c->s[p] <= '9')
		p++;
	return p;
}

/* -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static inline bool check_number(struct check *c)
{
	size_t p = c->pos, q;

	if (p < c->len && c->s[p] == '-')
		p++;
	if (p < c->len && c->s[p] == '0')
		p++;
	else if ((q = digits(c, p)) > p)
		p = q;
	else
		goto bad;
	if (p < c->len && c->s[p] == '.') {
		if ((q = digits(c, p + 1)) == p + 1)
			goto bad;
		p = q;
	}
	if (p < c->len && (c->s[p] == 'e' || c->s[p] == 'E')) {
		p++;
		if (p < c->len && (c->s[p] == '+' || c->s[p] == '-'))
			p++;
		if ((q = digits(c, p)) == p)
			goto bad;
		p = q;
	}
	if (p - c->pos > NUMBER_MAX)
		goto bad;
	c->pos = p;
	return true;
bad:
	c->pos = p;
	return fail(c, APB_JSON_SYNTAX);
}

static bool check_word(struct check *c, const char *w)
{
	size_t n = strlen(w);

	if (c->len - c->pos < n || memcmp(c->s + c->pos, w, n) != 0)
		return fail(c, APB_JSON_SYNTAX);
	c->pos += n;
	return true;
}

static bool check_value(struct check *c, int depth);

/* A member of the top level's value that is a container: where it ends
 * and how many members it has, for the cursors (json.h). */
static void hint(struct check *c, size_t start, size_t count)
{
	struct apb_json_hints *h = c->hints;

	if (!h || h->n == APB_JSON_HINTS_MAX)
		return;
	h->at[h->n] = (struct apb_json_hint){
		.v = c->s + start, .end = c->s + c->pos, .count = count};
	h->n++;
}

/* An object (close '}') or an array (close ']') at c->pos. */
static bool check_container(struct check *c, int depth, char close)
{
	size_t start = c->pos, count = 0;

	if (depth >= APB_JSON_DEPTH_MAX)
		return fail(c, APB_JSON_DEPTH);
	c->pos++;
	skip_space(c);
	if (at(c, close)) {
		c->pos++;
		if (depth == 1)
			hint(c, start, 0);
		return true;
	}
	for (;;) {
		count++;
		if (close == '}') {
			if (!at(c, '"'))
				return fail(c, APB_JSON_SYNTAX);
			if (!check_string(c))
				return false;
			skip_space(c);
			if (!at(c, ':'))
				return fail(c, APB_JSON_SYNTAX);
			c->pos++;
		}
		/* Strings and numbers, most of a manifest's values, are
		 * checked here without the recursive call. */
		skip_space(c);
		if (at(c, '"') || (c->s[c->pos] >= '0' && c->s[c->pos] <= '9')) {
			c->values++;
			if (!(at(c, '"') ? check_string(c) : check_number(c)))
				return false;
		} else if (!check_value(c, depth + 1)) {
			return false;
		}
		skip_space(c);
		if (at(c, close)) {
			c->pos++;
			if (depth == 1)
				hint(c, start, count);
			return true;
		}
		if (!at(c, ','))
			return fail(c, APB_JSON_SYNTAX);
		c->pos++;
		skip_space(c);
	}
}

static bool check_value(struct check *c, int depth)
{
	c->values++;
	skip_space(c);
	if (c->pos >= c->len)
		return fail(c, APB_JSON_SYNTAX);
	switch (c->s[c->pos]) {
	case '{':
		return check_container(c, depth, '}');
	case '[':
		return check_container(c, depth, ']');
	case '"':
		return check_string(c);
	case 't':
		return check_word(c, "true");
	case 'f':
		return check_word(c, "false");
	case 'n':
		return check_word(c, "null");
	default:
		return check_number(c);
	}
}

enum apb_json_error apb_json_check(const char *text, size_t len, size_t *pos,
				   size_t *values, struct apb_json_hints *hints)
{
	struct check c = {.s = text, .len = len, .err = APB_JSON_OK,
			  .hints = hints};

	if (hints)
		hints->n = 0;
	check_value(&c, 0);
	*pos = c.pos;
	*values = c.values;
	return c.err;
}

/* ---- cursors over checked text ----------------------------------------- */

/* This is the reader's walk over whatever it skips: the bytes it looks at
 * are found through a table. */
const char *apb_json_skip_container(const char *v)
{
	static const unsigned char stop[256] = {
		['"'] = 1, ['{'] = 2, ['['] = 2, ['}'] = 3, [']'] = 3,
	};
	int depth = 0;

	for (;;) {
		while (!stop[(unsigned char)*v])
			v++;
		switch (stop[(unsigned char)*v]) {
		case 1:
			v = apb_json_skip_string(v);
			continue;
		case 2:
			depth++;
			break;
		default:
			if (--depth == 0)
				return v + 1;
		}
		v++;
	}
}

size_t apb_json_count(const char *v)
{
	struct apb_json_iter it;
	const char *k, *x;
	size_t n = 0;

	apb_json_iter(&it, v);
	while (apb_json_next(&it, &k, &x))
		n++;
	return n;
}

const struct apb_json_hint *apb_json_hint(const struct apb_json_hints *h,
					  const char *v)
{
	for (size_t i = 0; h && i < h->n; i++)
		if (h->at[i].v == v)
			return &h->at[i];
	return NULL;
}

size_t apb_json_raw_len(const char *v)
{
	return (size_t)(apb_json_skip_string(v) - v) - 2;
}

/* UTF-8 of code point u into out: its length. */
static size_t utf8(unsigned long u, char *out)
{
	if (u < 0x80) {
		out[0] = (char)u;
		return 1;
	}
	if (u < 0x800) {
		out[0] = (char)(0xc0 | u >> 6);
		out[1] = (char)(0x80 | (u & 0x3f));
		return 2;
	}
	if (u < 0x10000) {
		out[0] = (char)(0xe0 | u >> 12);
		out[1] = (char)(0x80 | (u >> 6 & 0x3f));
		out[2] = (char)(0x80 | (u & 0x3f));
		return 3;
	}
	out[0] = (char)(0xf0 | u >> 18);
	out[1] = (char)(0x80 | (u >> 12 & 0x3f));
	out[2] = (char)(0x80 | (u >> 6 & 0x3f));
	out[3] = (char)(0x80 | (u & 0x3f));
	return 4;
}

size_t apb_json_string(const char *v, char *out)
{
	static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
	size_t n = 0;

	for (v++; *v != '"'; v++) {
		unsigned long u;

		if (*v != '\\') {
			out[n++] = *v;
			continue;
		}
		v++;
		if (*v != 'u') {
			out[n++] = to[strchr(from, *v) - from];
			continue;
		}
		u = (unsigned long)hex4(v + 1);
		v += 4;
		if (u >= 0xd800 && u <= 0xdbff) { /* checked: a pair */
			u = 0x10000 + ((u - 0xd800) << 10) +
			    ((unsigned long)hex4(v + 3) - 0xdc00);
			v += 6;
		}
		n += utf8(u, out + n);
	}
	out[n] = '\0';
	return n;
}

bool apb_json_string_is(const char *v, const char *s)
{
	const char *p = v + 1, *want = s;
	char buf[64];
	size_t n;

	/* Keys are compared often and almost never escaped. */
	while (*want && *p == *want)
		p++, want++;
	if (!*want && *p == '"')
		return true;
	n = apb_json_raw_len(v);
	if (n >= sizeof buf || !memchr(v + 1, '\\', n))
		return false;
	n = apb_json_string(v, buf);
	return n == strlen(s) && memcmp(buf, s, n) == 0;
}

double apb_json_number(const char *v)
{
	char buf[NUMBER_MAX + 1], point;
	uint64_t n = 0;
	size_t len = 0;

	while (v[len] >= '0' && v[len] <= '9')
		n = n * 10 + (uint64_t)(v[len++] - '0');
	/* Plain digits, 15 at most: exact, and the common case. */
	if (len > 0 && len <= 15 && v[len] != '-' && v[len] != '.' &&
	    v[len] != 'e' && v[len] != 'E')
		return (double)n;
	/* strtod() reads the decimal point of the C library's locale. */
	point = localeconv()->decimal_point[0];
	for (len = 0; v[len] && strchr("0123456789+-.eE", v[len]); len++)
		buf[len] = v[len] == '.' ? point : v[len];
	buf[len] = '\0';
	return strtod(buf, NULL);
}
