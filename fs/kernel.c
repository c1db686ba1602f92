/*
 * kernel.c - make large sequential reads reach the daemon as large
 * requests.
 *
 * The kernel sizes a FUSE file's readahead from the mount's backing device
 * info (bdi), whose read_ahead_kb starts at 128 KiB; FUSE INIT can only
 * lower it (the kernel offers the current value and keeps the minimum of
 * offer and answer). So the daemon raises /sys/class/bdi/MAJ:MIN/
 * read_ahead_kb itself, as root, once INIT has been answered: on the first
 * open of a model, which the kernel cannot send before INIT completes.
 * The bdi is found in /proc/self/mountinfo, never by touching the
 * mountpoint (a stat of it would be a request to this very daemon).
 * Without root the write fails and reads stay at 128-256 KiB: correct,
 * only slower; the log says so once.
 */
#include "apbfs.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* mountinfo escapes space, tab, newline and backslash as \ooo. */
static void unescape(char *s)
{
	char *w = s;

	for (; *s; s++) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' &&
		    s[2] <= '7' && s[3] >= '0' && s[3] <= '7') {
			*w++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 +
				      (s[3] - '0'));
			s += 3;
		} else {
			*w++ = *s;
		}
	}
	*w = '\0';
}

int apbfs_find_bdi(const char *mountpoint, char *bdi, size_t bdi_len)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char *line = NULL;
	size_t cap = 0;
	int rc = -ENOENT;

	if (!f)
		return -errno;
	/* "36 35 0:52 / /mnt/models rw,... - fuse.apbundlefs src rw,..." ;
	 * the last match wins: it is the mount on top. */
	while (getline(&line, &cap, f) > 0) {
		char dev[32], root[8], mnt[4096];
		char *sep = strstr(line, " - ");

		if (!sep || strncmp(sep + 3, "fuse.apbundlefs ", 16) != 0)
			continue;
		if (sscanf(line, "%*s %*s %31s %7s %4095s", dev, root, mnt) != 3)
			continue;
		unescape(mnt);
		if (strcmp(mnt, mountpoint) == 0) {
			snprintf(bdi, bdi_len, "%s", dev);
			rc = 0;
		}
	}
	free(line);
	fclose(f);
	return rc;
}

int apbfs_set_readahead(const char *bdi, uint64_t bytes)
{
	char path[96], val[32];
	int fd, n, rc = 0;

	snprintf(path, sizeof(path), "/sys/class/bdi/%s/read_ahead_kb", bdi);
	n = snprintf(val, sizeof(val), "%llu\n",
		     (unsigned long long)(bytes / 1024));
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (write(fd, val, (size_t)n) != n)
		rc = -errno;
	close(fd);
	return rc;
}
