/*
 * apbfetch - read byte ranges of an http(s):// or s3:// object with the
 * library's remote reader (core/remote.c): the driver of the e2e tests in
 * tests/e2e/test_remote_reader.py, and a way to try a URL and credentials
 * by hand.
 *
 *   apbfetch [options] URL [OFF:LEN | all:LEN]...
 *
 * Each OFF:LEN range is read with one apb_remote_pread() (all:LEN: the
 * whole object in LEN-byte reads); with -v the ranges, which must be
 * adjacent, are read with one apb_remote_preadv(). The bytes go to -o FILE,
 * the ranges' bytes one after the other. stdout gets "size N", "identity
 * X", a line "error OFF:LEN ERRNAME" per failed read, and the reader's
 * counters at the end; stderr gets the reader's log lines ("log LEVEL:
 * ..."), retries included. Exit 0: every read succeeded; 1: one failed;
 * 2: the open failed or bad usage.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/remote.h"

struct range {
	uint64_t off, len, out_pos;
};

static struct apb_remote *remote;
static struct range *ranges;
static size_t nranges;
static int out_fd = -1;
static unsigned nthreads = 1, repeat = 1;
static long pause_after = -1;
static atomic_int failed;
static pthread_mutex_t print_mu = PTHREAD_MUTEX_INITIALIZER;

static void on_log(void *arg, enum apb_remote_log_level level, const char *msg)
{
	static const char *const names[] = {"error", "warn", "retry"};
	(void)arg;
	pthread_mutex_lock(&print_mu);
	fprintf(stderr, "log %s: %s\n", names[level], msg);
	fflush(stderr);
	pthread_mutex_unlock(&print_mu);
}

static void report_error(uint64_t off, uint64_t len, ssize_t rc)
{
	pthread_mutex_lock(&print_mu);
	printf("error %" PRIu64 ":%" PRIu64 " %s\n", off, len, strerrorname_np((int)-rc));
	fflush(stdout);
	pthread_mutex_unlock(&print_mu);
	atomic_store(&failed, 1);
}

static bool put_out(const void *buf, size_t len, uint64_t pos)
{
	if (out_fd < 0)
		return true;
	if (pwrite(out_fd, buf, len, (off_t)pos) != (ssize_t)len) {
		perror("apbfetch: write");
		atomic_store(&failed, 1);
		return false;
	}
	return true;
}

static void wait_for_go(void)
{
	char line[16];
	printf("paused\n");
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		exit(2);
}

static void *reader(void *arg)
{
	unsigned t = (unsigned)(uintptr_t)arg;
	long done = 0;
	for (unsigned rep = 0; rep < repeat; rep++) {
		for (size_t i = t; i < nranges; i += nthreads) {
			struct range *g = &ranges[i];
			if (done++ == pause_after)
				wait_for_go();
			void *buf = malloc(g->len ? g->len : 1);
			if (!buf) {
				report_error(g->off, g->len, -ENOMEM);
				continue;
			}
			ssize_t rc = apb_remote_pread(remote, buf, g->len, g->off);
			if (rc < 0)
				report_error(g->off, g->len, rc);
			else if (rc != (ssize_t)g->len)
				report_error(g->off, g->len, -EPROTO); /* never: exact or an error */
			else if (rep == 0)
				put_out(buf, g->len, g->out_pos);
			free(buf);
		}
	}
	return NULL;
}

static int vectored(void)
{
	struct iovec *iov = calloc(nranges, sizeof(*iov));
	uint64_t total = 0;
	if (!iov)
		return 2;
	for (size_t i = 0; i < nranges; i++) {
		if (ranges[i].off != ranges[0].off + total) {
			fprintf(stderr, "apbfetch: -v needs adjacent ranges\n");
			return 2;
		}
		iov[i].iov_len = ranges[i].len;
		iov[i].iov_base = malloc(ranges[i].len ? ranges[i].len : 1);
		if (!iov[i].iov_base)
			return 2;
		total += ranges[i].len;
	}
	if (pause_after == 0)
		wait_for_go();
	ssize_t rc = apb_remote_preadv(remote, iov, (int)nranges, ranges[0].off);
	if (rc < 0)
		report_error(ranges[0].off, total, rc);
	for (size_t i = 0; i < nranges; i++) {
		if (rc >= 0)
			put_out(iov[i].iov_base, iov[i].iov_len, ranges[i].out_pos);
		free(iov[i].iov_base);
	}
	free(iov);
	return 0;
}

static bool add_range(uint64_t off, uint64_t len)
{
	static size_t cap;
	if (nranges == cap) {
		cap = cap ? cap * 2 : 64;
		struct range *n = realloc(ranges, cap * sizeof(*n));
		if (!n)
			return false;
		ranges = n;
	}
	uint64_t pos = nranges ? ranges[nranges - 1].out_pos + ranges[nranges - 1].len : 0;
	ranges[nranges++] = (struct range){off, len, pos};
	return true;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: apbfetch [options] URL [OFF:LEN | all:LEN]...\n"
		"  -o FILE            write the ranges' bytes, one after the other\n"
		"  -t N               read the ranges in N threads (round robin)\n"
		"  -n N               read every range N times (the bytes are written once)\n"
		"  -v                 one vectored read of the (adjacent) ranges\n"
		"  -p N               connection pool size      -r N   retries\n"
		"  -T MS              retry time bound          -B MS  first backoff\n"
		"  -S MS              stall timeout             -m N   bytes per request\n"
		"  -H N               bytes fetched at open\n"
		"  --endpoint URL --region R --profile P --path-style --virtual  (S3)\n"
		"  --pause-after K    after K reads print \"paused\" and wait for a line on stdin\n");
	exit(2);
}

/* The decimal number s spells up to stop (at most max), or usage(): a
 * typo in a count or a range must not become 0 or a wrapped huge value. */
static uint64_t num(const char *s, char stop, uint64_t max)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (s[0] < '0' || s[0] > '9' || errno || *end != stop || v > max)
		usage();
	return v;
}

int main(int argc, char **argv)
{
	struct apb_remote_options o = {.log = on_log};
	bool vec = false;
	const char *out = NULL;
	static const struct option longopts[] = {
		{"endpoint", required_argument, NULL, 'E'},
		{"region", required_argument, NULL, 'R'},
		{"profile", required_argument, NULL, 'P'},
		{"path-style", no_argument, NULL, 'Y'},
		{"virtual", no_argument, NULL, 'V'},
		{"pause-after", required_argument, NULL, 'K'},
		{NULL, 0, NULL, 0}};
	int c;
	while ((c = getopt_long(argc, argv, "o:t:n:vp:r:T:B:S:m:H:", longopts, NULL)) != -1) {
		switch (c) {
		case 'o': out = optarg; break;
		case 't': nthreads = (unsigned)num(optarg, '\0', UINT_MAX); break;
		case 'n': repeat = (unsigned)num(optarg, '\0', UINT_MAX); break;
		case 'v': vec = true; break;
		case 'p': o.pool_size = (unsigned)num(optarg, '\0', UINT_MAX); break;
		case 'r': o.max_retries = (unsigned)num(optarg, '\0', UINT_MAX); break;
		case 'T': o.retry_total_ms = (unsigned)num(optarg, '\0', UINT_MAX); break;
		case 'B': o.retry_base_ms = (unsigned)num(optarg, '\0', UINT_MAX); break;
		case 'S': o.stall_timeout_ms = (unsigned)num(optarg, '\0', UINT_MAX); break;
		case 'm': o.max_request_bytes = num(optarg, '\0', SIZE_MAX); break;
		case 'H': o.head_bytes = num(optarg, '\0', SIZE_MAX); break;
		case 'E': o.s3_endpoint = optarg; break;
		case 'R': o.s3_region = optarg; break;
		case 'P': o.s3_profile = optarg; break;
		case 'Y': o.s3_style = APB_REMOTE_STYLE_PATH; break;
		case 'V': o.s3_style = APB_REMOTE_STYLE_VIRTUAL; break;
		case 'K': pause_after = (long)num(optarg, '\0', LONG_MAX); break;
		default: usage();
		}
	}
	if (optind >= argc || nthreads < 1 || repeat < 1)
		usage();
	char err[1024];
	int rc = apb_remote_open(argv[optind], &o, &remote, err, sizeof(err));
	if (rc < 0) {
		printf("open-error %s\n", strerrorname_np(-rc));
		fprintf(stderr, "apbfetch: %s\n", err);
		return 2;
	}
	uint64_t size = apb_remote_size(remote);
	printf("size %" PRIu64 "\nidentity %s\n", size, apb_remote_identity(remote));
	fflush(stdout);
	for (int i = optind + 1; i < argc; i++) {
		char *colon = strchr(argv[i], ':');
		if (!colon)
			usage();
		uint64_t len = num(colon + 1, '\0', UINT64_MAX);
		if (strncmp(argv[i], "all:", 4) == 0) {
			if (!len)
				usage();
			for (uint64_t off = 0; off < size; off += len)
				if (!add_range(off, size - off < len ? size - off : len))
					return 2;
		} else if (!add_range(num(argv[i], ':', UINT64_MAX), len)) {
			return 2;
		}
	}
	if (out) {
		out_fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (out_fd < 0) {
			perror(out);
			return 2;
		}
	}
	if (vec) {
		if (vectored())
			return 2;
	} else {
		pthread_t th[256];
		if (nthreads > 256)
			nthreads = 256;
		for (unsigned t = 0; t < nthreads; t++)
			if (pthread_create(&th[t], NULL, reader, (void *)(uintptr_t)t) != 0)
				return 2;
		for (unsigned t = 0; t < nthreads; t++)
			pthread_join(th[t], NULL);
	}
	if (out_fd >= 0 && close(out_fd) != 0) {
		perror(out);
		return 2;
	}
	struct apb_remote_stats st;
	apb_remote_get_stats(remote, &st);
	printf("requests %" PRIu64 "\nretries %" PRIu64 "\nconnects %" PRIu64 "\nbytes %" PRIu64
	       "\nerrors %" PRIu64 "\n",
	       st.requests, st.retries, st.connects, st.bytes, st.errors);
	apb_remote_close(remote);
	free(ranges);
	return atomic_load(&failed) ? 1 : 0;
}
