/* buf.h - building bundle files byte by byte in memory for the unit
 * tests (test_bundle.c, test_v2.c). */
#ifndef APB_TEST_BUF_H
#define APB_TEST_BUF_H

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "apbundle/bundle.h"

#include "test.h"

struct buf {
	uint8_t *p;
	size_t len, cap;
};

static inline void reserve(struct buf *b, size_t len)
{
	if (len <= b->cap)
		return;
	b->cap = len * 2;
	b->p = realloc(b->p, b->cap);
	CHECK(b->p != NULL);
}

/* Write n bytes at off, zero-filling any gap. */
static inline void put_at(struct buf *b, size_t off, const void *d, size_t n)
{
	reserve(b, off + n);
	if (off > b->len)
		memset(b->p + b->len, 0, off - b->len);
	if (n)
		memcpy(b->p + off, d, n);
	if (off + n > b->len)
		b->len = off + n;
}

static inline void put(struct buf *b, const void *d, size_t n)
{
	put_at(b, b->len, d, n);
}

static inline void put_str(struct buf *b, const char *s)
{
	put(b, s, strlen(s));
}

static inline void put_u32(struct buf *b, uint32_t v)
{
	uint8_t le[4];

	for (int i = 0; i < 4; i++)
		le[i] = (uint8_t)(v >> (8 * i));
	put(b, le, 4);
}

static inline void put_u64(struct buf *b, uint64_t v)
{
	put_u32(b, (uint32_t)v);
	put_u32(b, (uint32_t)(v >> 32));
}

static inline void pad_to(struct buf *b, size_t len)
{
	if (len > b->len)
		put_at(b, len, "", 0);
}

/* A JSON text with ' turned into ". */
static inline char *json(const char *sq)
{
	char *s = strdup(sq);

	CHECK(s != NULL);
	for (char *p = s; *p; p++)
		if (*p == '\'')
			*p = '"';
	return s;
}

static char path[64];

/* Write b to a fresh temporary file; path names it until unlinked. */
static inline int write_temp(const struct buf *b)
{
	int fd;

	strcpy(path, "/tmp/test_apb.XXXXXX");
	fd = mkstemp(path);
	CHECK(fd >= 0);
	CHECK_EQ(write(fd, b->p, b->len), (long long)b->len);
	return fd;
}

static char err[1024];

static inline int open_buf(const struct buf *b, struct apb_bundle **out)
{
	int fd = write_temp(b);
	int rc;

	err[0] = '\0';
	rc = apb_bundle_open(path, out, err, sizeof err);
	unlink(path);
	close(fd);
	return rc;
}

static inline void expect_error(struct buf *b, const char *needle)
{
	struct apb_bundle *bundle = (struct apb_bundle *)1;

	CHECK_EQ(open_buf(b, &bundle), -EINVAL);
	CHECK(bundle == NULL);
	CHECK_STR_CONTAINS(err, needle);
	free(b->p);
}

#endif
