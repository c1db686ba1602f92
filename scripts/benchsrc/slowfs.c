/*
 * slowfs.c - a backing store with latency, for scripts/bench-prefetch.py.
 *
 * Mounts one file as MOUNTPOINT/data and delays every read by a fixed time
 * before serving it, like a disk across a network. Reads are direct I/O
 * (no page cache, no kernel readahead), so each read of the file pays the
 * delay; the multi-threaded loop lets concurrent reads overlap, as on a
 * real device with a queue.
 *
 *   slowfs FILE MOUNTPOINT DELAY_US [-f]
 *
 * Not part of apbundlefs; built by the benchmark script.
 */
#define FUSE_USE_VERSION 314
#include <fuse.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int backing_fd;
static long delay_us;

static int sf_getattr(const char *path, struct stat *st,
		      struct fuse_file_info *fi)
{
	(void)fi;
	if (strcmp(path, "/") == 0) {
		memset(st, 0, sizeof(*st));
		st->st_mode = S_IFDIR | 0555;
		st->st_nlink = 2;
		return 0;
	}
	if (strcmp(path, "/data") != 0)
		return -ENOENT;
	if (fstat(backing_fd, st) != 0)
		return -errno;
	st->st_mode = S_IFREG | 0444;
	return 0;
}

static int sf_readdir(const char *path, void *buf, fuse_fill_dir_t fill,
		      off_t off, struct fuse_file_info *fi,
		      enum fuse_readdir_flags flags)
{
	(void)off, (void)fi, (void)flags;
	if (strcmp(path, "/") != 0)
		return -ENOENT;
	fill(buf, ".", NULL, 0, 0);
	fill(buf, "..", NULL, 0, 0);
	fill(buf, "data", NULL, 0, 0);
	return 0;
}

static int sf_open(const char *path, struct fuse_file_info *fi)
{
	if (strcmp(path, "/data") != 0)
		return -ENOENT;
	if ((fi->flags & O_ACCMODE) != O_RDONLY)
		return -EROFS;
	fi->direct_io = 1;
	return 0;
}

static int sf_read(const char *path, char *buf, size_t size, off_t off,
		   struct fuse_file_info *fi)
{
	struct timespec ts = {delay_us / 1000000, (delay_us % 1000000) * 1000};
	ssize_t n;
	(void)path, (void)fi;

	nanosleep(&ts, NULL);
	n = pread(backing_fd, buf, size, off);
	return n < 0 ? -errno : (int)n;
}

static const struct fuse_operations ops = {
	.getattr = sf_getattr,
	.readdir = sf_readdir,
	.open = sf_open,
	.read = sf_read,
};

int main(int argc, char *argv[])
{
	char *fargs[] = {argv[0], argc > 2 ? argv[2] : "", "-o", "ro",
			 "-f", NULL};
	int fargc = 5;

	if (argc < 4) {
		fprintf(stderr, "usage: slowfs FILE MOUNTPOINT DELAY_US\n");
		return 2;
	}
	backing_fd = open(argv[1], O_RDONLY);
	if (backing_fd < 0) {
		perror(argv[1]);
		return 1;
	}
	delay_us = atol(argv[3]);
	return fuse_main(fargc, fargs, &ops, NULL);
}
