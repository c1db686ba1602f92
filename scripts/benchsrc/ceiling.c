/*
 * ceiling.c - the fastest read-only FUSE file this machine can serve, for
 * scripts/bench: what FUSE itself costs, with no cache, format or disk
 * behind it.
 *
 * Mounts one file, MOUNTPOINT/data, of size= bytes held in a buffer filled
 * before the mount (so no read ever faults a page in), and answers every
 * read with one fuse_reply_buf() straight from that buffer: one copy, the
 * kernel's. Everything the kernel sees is set as apbundlefs sets it, so
 * that the only difference between the two is the work done per request:
 * the libfuse low-level API, the same multi-threaded loop and its options
 * (max_threads=, clone_fd), libfuse's default 1 MiB requests, the INIT
 * answer of fs/ops.c op_init (max_background, congestion_threshold, no
 * writeback cache), the same entry and attribute timeouts, keep_cache from
 * -o kernel_cache. The bdi's read_ahead_kb, which apbundlefs raises itself
 * on the first open (fs/kernel.c), is set from outside by the benchmark to
 * the value apbundlefs chose.
 *
 *   ceiling -f -o size=BYTES[,kernel_cache] MOUNTPOINT
 *
 * Not part of apbundlefs; built by scripts/bench.
 */
#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define DATA_INO 2
#define ATTR_TIMEOUT_S 86400.0 /* as fs/ops.c */

struct ceiling {
	char *buf;
	uint64_t size;
	char *size_opt;
	int kernel_cache;
};

static const struct fuse_opt ceiling_opts[] = {
	{"size=%s", offsetof(struct ceiling, size_opt), 0},
	{"kernel_cache", offsetof(struct ceiling, kernel_cache), 1},
	FUSE_OPT_END,
};

static struct ceiling *ctx(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static void fill_attr(const struct ceiling *c, fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_uid = getuid();
	st->st_gid = getgid();
	if (ino == FUSE_ROOT_ID) {
		st->st_mode = S_IFDIR | 0555;
		st->st_nlink = 2;
		return;
	}
	st->st_mode = S_IFREG | 0444;
	st->st_nlink = 1;
	st->st_size = (off_t)c->size;
	st->st_blocks = (st->st_size + 511) / 512;
	st->st_blksize = 65536;
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	/* as fs/ops.c op_init */
	conn->max_background = 64;
	conn->congestion_threshold = 48;
	conn->want &= ~(unsigned)FUSE_CAP_WRITEBACK_CACHE;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;

	if (parent != FUSE_ROOT_ID || strcmp(name, "data") != 0) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	memset(&e, 0, sizeof(e));
	e.ino = DATA_INO;
	e.attr_timeout = ATTR_TIMEOUT_S;
	e.entry_timeout = ATTR_TIMEOUT_S;
	fill_attr(ctx(req), DATA_INO, &e.attr);
	fuse_reply_entry(req, &e);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	struct stat st;
	(void)fi;

	if (ino != FUSE_ROOT_ID && ino != DATA_INO) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	fill_attr(ctx(req), ino, &st);
	fuse_reply_attr(req, &st, ATTR_TIMEOUT_S);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	static const char *const names[] = {".", "..", "data"};
	static const fuse_ino_t inos[] = {FUSE_ROOT_ID, FUSE_ROOT_ID, DATA_INO};
	char buf[512];
	size_t used = 0;
	(void)fi;

	if (ino != FUSE_ROOT_ID) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	if (size > sizeof(buf))
		size = sizeof(buf);
	for (off_t i = off; i < 3; i++) {
		struct stat st = {.st_ino = inos[i],
				  .st_mode = i < 2 ? S_IFDIR : S_IFREG};
		size_t n = fuse_add_direntry(req, buf + used, size - used,
					     names[i], &st, i + 1);
		if (n > size - used)
			break;
		used += n;
	}
	fuse_reply_buf(req, buf, used);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (ino != DATA_INO) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	if ((fi->flags & O_ACCMODE) != O_RDONLY) {
		fuse_reply_err(req, EROFS);
		return;
	}
	fi->keep_cache = ctx(req)->kernel_cache;
	fuse_reply_open(req, fi);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct ceiling *c = ctx(req);
	(void)ino, (void)fi;

	if (off < 0 || (uint64_t)off >= c->size) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	if (size > c->size - (uint64_t)off)
		size = (size_t)(c->size - (uint64_t)off);
	fuse_reply_buf(req, c->buf + off, size);
}

static const struct fuse_lowlevel_ops ceiling_ops = {
	.init = op_init,
	.lookup = op_lookup,
	.getattr = op_getattr,
	.readdir = op_readdir,
	.open = op_open,
	.read = op_read,
};

/* Non-zero bytes that are not all alike, touched now so that serving a
 * read never faults a page in. */
static int fill_buffer(struct ceiling *c)
{
	uint64_t x = 0x9e3779b97f4a7c15ull;

	c->buf = mmap(NULL, c->size ? c->size : 1, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (c->buf == MAP_FAILED)
		return -errno;
	for (uint64_t i = 0; i + 8 <= c->size; i += 8) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		memcpy(c->buf + i, &x, 8);
	}
	return 0;
}

static int serve(struct ceiling *c, struct fuse_args *args,
		 struct fuse_cmdline_opts *o)
{
	struct fuse_session *se;
	struct fuse_loop_config *lc;
	int rc = 1;

	se = fuse_session_new(args, &ceiling_ops, sizeof(ceiling_ops), c);
	if (!se)
		return 2;
	if (fuse_set_signal_handlers(se) != 0)
		goto out_destroy;
	if (fuse_session_mount(se, o->mountpoint) != 0)
		goto out_signals;
	fuse_daemonize(o->foreground);
	/* as fs/main.c serve() */
	if (o->singlethread) {
		rc = fuse_session_loop(se);
	} else {
		lc = fuse_loop_cfg_create();
		if (lc) {
			fuse_loop_cfg_set_clone_fd(lc, (unsigned)o->clone_fd);
			if (o->max_idle_threads != UINT_MAX)
				fuse_loop_cfg_set_idle_threads(
					lc, o->max_idle_threads);
			if (o->max_threads != UINT_MAX)
				fuse_loop_cfg_set_max_threads(lc,
							      o->max_threads);
			rc = fuse_session_loop_mt(se, lc);
			fuse_loop_cfg_destroy(lc);
		}
	}
	if (rc > 0) /* ended by a signal: the normal way to stop */
		rc = 0;
	fuse_session_unmount(se);
out_signals:
	fuse_remove_signal_handlers(se);
out_destroy:
	fuse_session_destroy(se);
	return rc ? 1 : 0;
}

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fuse_cmdline_opts o = {0};
	struct ceiling c = {0};
	char *end;
	int rc = 2;

	if (fuse_opt_parse(&args, &c, ceiling_opts, NULL) != 0 ||
	    fuse_parse_cmdline(&args, &o) != 0)
		goto out;
	if (!o.mountpoint || !c.size_opt) {
		fprintf(stderr, "usage: ceiling -f -o size=BYTES[,kernel_cache] "
			"MOUNTPOINT\n");
		goto out;
	}
	errno = 0;
	c.size = strtoull(c.size_opt, &end, 10);
	if (errno || *end || end == c.size_opt) {
		fprintf(stderr, "ceiling: bad size=%s: bytes expected\n",
			c.size_opt);
		goto out;
	}
	rc = fill_buffer(&c);
	if (rc) {
		fprintf(stderr, "ceiling: %llu bytes: %s\n",
			(unsigned long long)c.size, strerror(-rc));
		rc = 1;
		goto out;
	}
	rc = serve(&c, &args, &o);
	munmap(c.buf, c.size ? c.size : 1);
out:
	free(o.mountpoint);
	free(c.size_opt);
	fuse_opt_free_args(&args);
	return rc;
}
