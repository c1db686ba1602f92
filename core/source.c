/*
 * source.c - a local bundle file as the bytes of a bundle (source.h).
 *
 * Reads retry after EINTR and short reads until they have every byte asked
 * for; a file that ends first is -EIO. Vectored reads go out in batches
 * of READV_BATCH iovecs built on the stack, so a read never allocates.
 */
#include "source.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "apbundle/bundle.h"
#include "error.h"

#define READV_BATCH 64 /* iovecs per preadv(), on the stack */

struct apb_source {
	int fd;                    /* O_RDONLY | O_CLOEXEC */
	int dfd;                   /* the same open file with O_DIRECT, or -1 */
	struct stat st;            /* taken once at open */
	uint8_t head[APB_HEAD_LEN];
	size_t head_len;           /* min(st_size, APB_HEAD_LEN) */
};

/* Fill iov[*i] from byte *skip on, and the entries after it, with at most
 * want bytes, into v (at most READV_BATCH entries, none empty). Returns the
 * number of entries. */
static int readv_batch(const struct iovec *iov, int iovcnt, int i, size_t skip,
		       size_t want, struct iovec *v)
{
	int n = 0;

	for (; i < iovcnt && n < READV_BATCH && want > 0; i++, skip = 0) {
		size_t len = iov[i].iov_len - skip;

		if (len == 0)
			continue;
		if (len > want)
			len = want;
		v[n].iov_base = (char *)iov[i].iov_base + skip;
		v[n].iov_len = len;
		want -= len;
		n++;
	}
	return n;
}

/* Read exactly want bytes at pos into iov from byte skip of iov[0] on,
 * resuming after short reads and EINTR. Returns want or a negative errno. */
static long preadv_full(int fd, uint64_t pos, const struct iovec *iov,
			int iovcnt, size_t skip, size_t want)
{
	struct iovec v[READV_BATCH];
	size_t done = 0; /* skip: bytes of iov[i] already read or passed */
	int i = 0;

	while (done < want) {
		ssize_t r;
		int n;

		for (; i < iovcnt && skip >= iov[i].iov_len; i++)
			skip -= iov[i].iov_len;
		n = readv_batch(iov, iovcnt, i, skip, want - done, v);
		r = preadv(fd, v, n, (off_t)(pos + done));
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			return -EIO;
		done += (size_t)r;
		skip += (size_t)r;
	}
	return (long)done;
}

int apb_source_pread(const struct apb_source *s, void *buf, size_t len,
		     uint64_t off)
{
	struct iovec v = {.iov_base = buf, .iov_len = len};
	long r = preadv_full(s->fd, off, &v, 1, 0, len);

	return r < 0 ? (int)r : 0;
}

int apb_source_open_file(const char *path, struct apb_source **out,
			 char *err, size_t err_len)
{
	struct apb_source *s = calloc(1, sizeof *s);
	int rc;

	*out = NULL;
	if (!s)
		return apb_fail(-ENOMEM, err, err_len, "out of memory");
	s->dfd = -1;
	/* O_NONBLOCK: opening a FIFO must not wait for a writer; the type
	 * check below refuses it, and reads of a regular file ignore it. */
	s->fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (s->fd < 0) {
		rc = -errno;
		apb_fail(rc, err, err_len, "cannot open: %s", strerror(-rc));
		goto fail;
	}
	if (fstat(s->fd, &s->st) != 0) {
		rc = -errno;
		apb_fail(rc, err, err_len, "cannot stat: %s", strerror(-rc));
		goto fail;
	}
	if (!S_ISREG(s->st.st_mode)) {
		rc = apb_errf(err, err_len, "not a regular file");
		goto fail;
	}
	s->head_len = (uint64_t)s->st.st_size < APB_HEAD_LEN
			      ? (size_t)s->st.st_size : APB_HEAD_LEN;
	rc = apb_source_pread(s, s->head, s->head_len, 0);
	if (rc) {
		apb_fail(rc, err, err_len, "cannot read the header: %s",
			 strerror(-rc));
		goto fail;
	}
	*out = s;
	return 0;
fail:
	apb_source_close(s);
	return rc;
}

void apb_source_close(struct apb_source *s)
{
	if (!s)
		return;
	if (s->fd >= 0)
		close(s->fd);
	if (s->dfd >= 0)
		close(s->dfd);
	free(s);
}

uint64_t apb_source_size(const struct apb_source *s)
{
	return (uint64_t)s->st.st_size;
}

const uint8_t *apb_source_head(const struct apb_source *s, size_t *len)
{
	*len = s->head_len;
	return s->head;
}

const struct stat *apb_source_stat(const struct apb_source *s)
{
	return &s->st;
}

long apb_source_preadv(const struct apb_source *s, uint64_t pos,
		       const struct iovec *iov, int iovcnt, size_t skip,
		       size_t want)
{
	size_t direct = 0;
	long r;
	int n = 0;

	while (iovcnt > 0 && skip > 0 && skip >= iov[0].iov_len) {
		skip -= iov[0].iov_len;
		iov++;
		iovcnt--;
	}
	if (s->dfd >= 0 && pos % APB_ALIGN == 0) {
		for (; n < iovcnt && direct < want; n++) {
			size_t sk = n == 0 ? skip : 0;
			size_t len = iov[n].iov_len - sk;

			if (((uintptr_t)iov[n].iov_base + sk) % APB_ALIGN ||
			    len % APB_ALIGN || len > want - direct)
				break;
			direct += len;
		}
	}
	if (direct > 0) {
		r = preadv_full(s->dfd, pos, iov, n, skip, direct);
		if (r == -EINVAL) /* stricter alignment than we know of */
			direct = 0, n = 0;
		else if (r < 0)
			return r;
	}
	if (direct == want)
		return (long)want;
	r = preadv_full(s->fd, pos + direct, iov + n, iovcnt - n, n ? 0 : skip,
			want - direct);
	return r < 0 ? r : (long)want;
}

int apb_source_direct_io(struct apb_source *s)
{
	char path[64];
	struct stat st;
	int fd;

	if (s->dfd >= 0)
		return 0;
	snprintf(path, sizeof(path), "/proc/self/fd/%d", s->fd);
	fd = open(path, O_RDONLY | O_CLOEXEC | O_DIRECT);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) != 0 || st.st_dev != s->st.st_dev ||
	    st.st_ino != s->st.st_ino) {
		close(fd);
		return -ESTALE;
	}
	s->dfd = fd;
	return 0;
}
