/*
 * test_disktier.c - the disk tier alone (core/disktier.h), in front of a
 * fake remote: an object in memory whose fetch callback counts the calls
 * and the bytes each extent was fetched with. Exact bytes, exact counts of
 * fetches, hits, misses, errors and evictions; files damaged on disk;
 * another identity; threads loading the same extents at once.
 */
#include "../../core/disktier.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test.h"

#define E APB_DISKTIER_EXTENT
#define H APB_DISKTIER_HEADER
#define SIZE (5 * E + 12345)
#define NEXT 6

struct fake {
	uint8_t *data;
	uint64_t size;
	atomic_int calls;
	atomic_int fetched[NEXT]; /* fetches that covered each extent */
	atomic_int fail;          /* fail the next this many calls */
};

static ssize_t fake_fetch(void *arg, const struct iovec *iov, int iovcnt,
			  uint64_t off)
{
	struct fake *f = arg;
	uint64_t total = 0, at = off;

	for (int i = 0; i < iovcnt; i++)
		total += iov[i].iov_len;
	CHECK(off + total <= f->size);
	atomic_fetch_add(&f->calls, 1);
	if (atomic_load(&f->fail) > 0) {
		atomic_fetch_sub(&f->fail, 1);
		return -EIO;
	}
	for (uint64_t k = off / E; total && k <= (off + total - 1) / E; k++)
		atomic_fetch_add(&f->fetched[k], 1);
	for (int i = 0; i < iovcnt; i++) {
		memcpy(iov[i].iov_base, f->data + at, iov[i].iov_len);
		at += iov[i].iov_len;
	}
	return (ssize_t)total;
}

static void fake_init(struct fake *f, uint32_t seed)
{
	uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;

	memset(f, 0, sizeof(*f));
	f->size = SIZE;
	f->data = malloc(SIZE);
	CHECK(f->data);
	for (size_t i = 0; i < SIZE; i++) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		f->data[i] = (uint8_t)x;
	}
}

static void fake_reset(struct fake *f)
{
	atomic_store(&f->calls, 0);
	for (int k = 0; k < NEXT; k++)
		atomic_store(&f->fetched[k], 0);
}

static char logbuf[8192];
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;

static void test_log(void *arg, enum apb_log_level level, const char *msg)
{
	(void)arg;
	(void)level;
	pthread_mutex_lock(&log_mu);
	strncat(logbuf, msg, sizeof(logbuf) - strlen(logbuf) - 2);
	strcat(logbuf, "\n");
	pthread_mutex_unlock(&log_mu);
}

static struct apb_disktier *open_tier(const char *dir, uint64_t cap,
				      const char *identity)
{
	struct apb_disktier_config c = {
		.dir = dir, .capacity = cap, .policy = APB_EVICT_LRU,
		.url = "http://user:secret@example.test/b.apbundle",
		.identity = identity, .size = SIZE, .log = test_log,
	};
	struct apb_disktier *t;
	char err[256] = "";

	CHECK_EQ(apb_disktier_open(&c, &t, err, sizeof(err)), 0);
	return t;
}

static void read_check(struct apb_disktier *t, struct fake *f, uint64_t pos,
		       size_t len)
{
	/* two iovecs split unevenly, at an odd address */
	uint8_t *buf = malloc(len + 7);
	size_t a = len / 3;
	struct iovec v[2] = {{buf + 7, a}, {buf + a + 7, len - a}};

	CHECK(buf);
	memset(buf, 0xee, len + 7);
	CHECK_EQ(apb_disktier_preadv(t, fake_fetch, f, pos, v, 2), (long)len);
	CHECK(memcmp(buf + 7, f->data + pos, len) == 0);
	free(buf);
}

/* Page-aligned buffers, positions and lengths: the O_DIRECT path where the
 * directory's filesystem has it. */
static void read_check_aligned(struct apb_disktier *t, struct fake *f,
			       uint64_t pos, size_t len)
{
	void *buf;
	struct iovec v[2];

	CHECK_EQ(posix_memalign(&buf, 4096, len), 0);
	v[0] = (struct iovec){buf, len / 2};
	v[1] = (struct iovec){(char *)buf + len / 2, len - len / 2};
	memset(buf, 0xee, len);
	CHECK_EQ(apb_disktier_preadv(t, fake_fetch, f, pos, v, 2), (long)len);
	CHECK(memcmp(buf, f->data + pos, len) == 0);
	free(buf);
}

static char *make_dir(void)
{
	char tmpl[] = "/tmp/apb-disktier-XXXXXX";
	char *d = mkdtemp(tmpl);

	CHECK(d);
	return strdup(d);
}

/* The one object directory under dir, and the path of extent k in it. */
static void extent_path(const char *dir, uint64_t k, char *out, size_t n)
{
	DIR *d = opendir(dir);
	struct dirent *de;

	CHECK(d);
	while ((de = readdir(d)))
		if (de->d_name[0] != '.')
			break;
	CHECK(de);
	snprintf(out, n, "%s/%s/%016llx", dir, de->d_name,
		 (unsigned long long)k);
	closedir(d);
}

static int count_files(const char *dir)
{
	char cmd[512];
	FILE *p;
	int n = -1;

	snprintf(cmd, sizeof(cmd),
		 "find %s -type f -regex '.*/[0-9a-f]*' -name '[0-9a-f]*' "
		 "| wc -l", dir);
	p = popen(cmd, "r");
	CHECK(p);
	CHECK_EQ(fscanf(p, "%d", &n), 1);
	pclose(p);
	return n;
}

static void remove_tree(const char *dir)
{
	char cmd[512];

	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	CHECK_EQ(system(cmd), 0);
}

static void test_url_key(void)
{
	char out[128];

	CHECK_EQ(apb_disktier_url_key("http://u:p@h:80/a@b?x", out, sizeof(out)), 0);
	CHECK(strcmp(out, "http://h:80/a@b?x") == 0);
	CHECK_EQ(apb_disktier_url_key("https://a@b@h/k", out, sizeof(out)), 0);
	CHECK(strcmp(out, "https://h/k") == 0);
	CHECK_EQ(apb_disktier_url_key("s3://bucket/key@1", out, sizeof(out)), 0);
	CHECK(strcmp(out, "s3://bucket/key@1") == 0);
	CHECK_EQ(apb_disktier_url_key("http://h/k", out, 5), -ENAMETOOLONG);
}

static void test_cold_then_warm(void)
{
	char *dir = make_dir();
	struct fake f;
	struct apb_bundle_disk_tier_stats st;
	struct apb_disktier *t;

	fake_init(&f, 1);
	t = open_tier(dir, 64ull << 20, "\"etag-1\"");
	read_check(t, &f, E - 100, 200);         /* two extents: one fetch */
	CHECK_EQ(atomic_load(&f.calls), 1);
	CHECK_EQ(f.fetched[0], 1);
	CHECK_EQ(f.fetched[1], 1);
	read_check(t, &f, 10, 3 * E);            /* 0..3: only 2 and 3 fetched */
	CHECK_EQ(atomic_load(&f.calls), 2);
	CHECK_EQ(f.fetched[2], 1);
	CHECK_EQ(f.fetched[3], 1);
	CHECK_EQ(f.fetched[0], 1);
	read_check(t, &f, SIZE - 5000, 5000);    /* the short last extent */
	apb_disktier_stats(t, &st);
	CHECK_EQ(st.misses, 5);
	CHECK_EQ(st.hits, 2);
	CHECK_EQ(st.errors, 0);
	CHECK_EQ(st.bytes_used, 4 * (uint64_t)(H + E) + H + 16384);
	CHECK_EQ(st.bytes_written, st.bytes_used);
	apb_disktier_close(t);
	CHECK_EQ(count_files(dir), 5);

	/* a second open starts warm: no fetch at all */
	fake_reset(&f);
	t = open_tier(dir, 64ull << 20, "\"etag-1\"");
	apb_disktier_stats(t, &st);
	CHECK_EQ(st.bytes_used, 4 * (uint64_t)(H + E) + H + 16384);
	read_check(t, &f, 0, E - 100);
	read_check(t, &f, E - 1, 2 * E + 2);
	read_check(t, &f, SIZE - 1, 1);
	read_check_aligned(t, &f, E, E);              /* header and payload */
	read_check_aligned(t, &f, 2 * E + 65536, 65536 + 8192); /* two reads */
	read_check_aligned(t, &f, E - 8192, 16384);   /* two extents */
	CHECK_EQ(atomic_load(&f.calls), 0);
	apb_disktier_stats(t, &st);
	CHECK_EQ(st.misses, 0);
	CHECK_EQ(st.hits, 1 + 4 + 1 + 1 + 1 + 2);
	CHECK_EQ(st.bytes_read, (E - 100) + (2 * E + 2) + 1 + E + 73728 + 16384);
	/* extent 4 was never read: missing, fetched */
	read_check(t, &f, 4 * E, 100);
	CHECK_EQ(f.fetched[4], 1);
	apb_disktier_close(t);
	remove_tree(dir);
	free(dir);
	free(f.data);
}

static void test_damaged_files(void)
{
	char *dir = make_dir();
	char path[512];
	struct fake f;
	struct apb_bundle_disk_tier_stats st;
	struct apb_disktier *t;
	int fd;

	fake_init(&f, 2);
	t = open_tier(dir, 64ull << 20, "\"e\"");
	read_check(t, &f, 0, SIZE);
	apb_disktier_close(t);

	/* a flipped payload byte in extent 1, a header byte in extent 2 */
	extent_path(dir, 1, path, sizeof(path));
	fd = open(path, O_RDWR);
	CHECK(fd >= 0);
	CHECK_EQ(pwrite(fd, "\x5a", 1, H + 70000), 1);
	close(fd);
	extent_path(dir, 2, path, sizeof(path));
	fd = open(path, O_RDWR);
	CHECK(fd >= 0);
	CHECK_EQ(pwrite(fd, "\x01", 1, 9), 1);
	close(fd);
	/* extent 3 torn: found at open, dropped */
	extent_path(dir, 3, path, sizeof(path));
	CHECK_EQ(truncate(path, H + 100), 0);

	fake_reset(&f);
	logbuf[0] = '\0';
	t = open_tier(dir, 64ull << 20, "\"e\"");
	apb_disktier_stats(t, &st);
	CHECK_EQ(st.errors, 1);
	CHECK_STR_CONTAINS(logbuf, "is torn");
	/* a read of extent 1's first block only: that block checks out */
	read_check(t, &f, E, 1000);
	CHECK_EQ(atomic_load(&f.calls), 0);
	/* the block with the flipped byte fails: fetched again, whole */
	read_check(t, &f, E + 70000 - 50, 100);
	CHECK_EQ(f.fetched[1], 1);
	read_check(t, &f, 2 * E + 5, 10);
	CHECK_EQ(f.fetched[2], 1);
	read_check(t, &f, 3 * E, E);
	CHECK_EQ(f.fetched[3], 1);
	apb_disktier_stats(t, &st);
	CHECK_EQ(st.errors, 3);
	CHECK_EQ(st.misses, 3);
	CHECK_STR_CONTAINS(logbuf, "failed its check; dropped");
	/* written again: now good */
	fake_reset(&f);
	read_check(t, &f, 0, SIZE);
	CHECK_EQ(atomic_load(&f.calls), 0);
	apb_disktier_close(t);
	remove_tree(dir);
	free(dir);
	free(f.data);
}

static void test_bound_and_identity(void)
{
	char *dir = make_dir();
	struct fake f;
	struct apb_bundle_disk_tier_stats st;
	struct apb_disktier *t;

	fake_init(&f, 3);
	/* two whole extent files */
	t = open_tier(dir, 2ull * (H + E) + 100, "\"v1\"");
	read_check(t, &f, 0, SIZE);
	apb_disktier_stats(t, &st);
	CHECK_EQ(st.misses, 6);
	CHECK(st.bytes_used <= st.capacity);
	CHECK_EQ(st.evictions, 6 - count_files(dir));
	CHECK(count_files(dir) <= 2);
	apb_disktier_close(t);

	/* another identity: the old version's directory is deleted */
	logbuf[0] = '\0';
	t = open_tier(dir, 64ull << 20, "\"v2\"");
	CHECK_STR_CONTAINS(logbuf, "deleted the extents of 1 older version");
	CHECK_EQ(count_files(dir), 0);
	apb_disktier_stats(t, &st);
	CHECK_EQ(st.bytes_used, 0);
	apb_disktier_close(t);
	remove_tree(dir);
	free(dir);
	free(f.data);
}

/* Another object's files in the directory count toward the bound and are
 * evicted, oldest first, for this one's; its emptied directory goes. */
static void test_other_objects_share_the_bound(void)
{
	char *dir = make_dir();
	struct fake f;
	struct apb_bundle_disk_tier_stats st;
	struct apb_disktier_config c = {
		.dir = dir, .capacity = 64ull << 20, .policy = APB_EVICT_LRU,
		.url = "http://example.test/other.apbundle",
		.identity = "\"o\"", .size = SIZE, .log = test_log,
	};
	struct apb_disktier *t;
	char err[256];

	fake_init(&f, 6);
	CHECK_EQ(apb_disktier_open(&c, &t, err, sizeof(err)), 0);
	read_check(t, &f, 0, 3 * E);               /* 3 files of the other */
	apb_disktier_close(t);
	CHECK_EQ(count_files(dir), 3);

	/* room for four whole extents: the other's three count */
	t = open_tier(dir, 4ull * (H + E), "\"e\"");
	apb_disktier_stats(t, &st);
	CHECK_EQ(st.bytes_used, 3 * (uint64_t)(H + E));
	read_check(t, &f, 0, 2 * E);    /* the second write evicts one of them */
	apb_disktier_stats(t, &st);
	CHECK_EQ(st.evictions, 1);
	CHECK_EQ(count_files(dir), 4);
	read_check(t, &f, 2 * E, 2 * E);           /* and the rest */
	apb_disktier_stats(t, &st);
	CHECK_EQ(st.evictions, 3);
	CHECK_EQ(count_files(dir), 4);
	CHECK(st.bytes_used <= 4ull * (H + E));
	apb_disktier_close(t);
	{
		/* one directory left: the other's was emptied and removed */
		DIR *d = opendir(dir);
		struct dirent *de;
		int n = 0;

		while ((de = readdir(d)))
			n += de->d_name[0] != '.';
		closedir(d);
		CHECK_EQ(n, 1);
	}
	remove_tree(dir);
	free(dir);
	free(f.data);
}

static void test_fetch_error_then_retry(void)
{
	char *dir = make_dir();
	struct fake f;
	struct apb_disktier *t;
	uint8_t buf[100];
	struct iovec v = {buf, sizeof(buf)};

	fake_init(&f, 4);
	t = open_tier(dir, 64ull << 20, "\"e\"");
	atomic_store(&f.fail, 1);
	CHECK_EQ(apb_disktier_preadv(t, fake_fetch, &f, 10, &v, 1), -EIO);
	read_check(t, &f, 10, 100);   /* not left LOADING */
	CHECK_EQ(count_files(dir), 1);
	apb_disktier_close(t);
	remove_tree(dir);
	free(dir);
	free(f.data);
}

struct reader {
	struct apb_disktier *t;
	struct fake *f;
	unsigned seed;
};

static void *reader_main(void *arg)
{
	struct reader *r = arg;

	for (int i = 0; i < 200; i++) {
		uint64_t pos = (uint64_t)rand_r(&r->seed) % SIZE;
		size_t len = 1 + (size_t)rand_r(&r->seed) % (300 * 1024);

		if (len > SIZE - pos)
			len = SIZE - pos;
		read_check(r->t, r->f, pos, len);
	}
	return NULL;
}

/* Eight threads at once: every byte right, each extent written once (a
 * second reader waits for the first's load instead of loading it too),
 * and every fetch counted as misses of the extents it covered. */
static void test_threads(void)
{
	char *dir = make_dir();
	struct fake f;
	struct apb_disktier *t;
	pthread_t th[8];
	struct reader r[8];
	struct apb_bundle_disk_tier_stats st;

	fake_init(&f, 5);
	t = open_tier(dir, 64ull << 20, "\"e\"");
	for (int i = 0; i < 8; i++) {
		r[i] = (struct reader){t, &f, (unsigned)i + 1};
		CHECK_EQ(pthread_create(&th[i], NULL, reader_main, &r[i]), 0);
	}
	for (int i = 0; i < 8; i++)
		pthread_join(th[i], NULL);
	apb_disktier_stats(t, &st);
	CHECK_EQ(st.errors, 0);
	/* no extent written twice (a fetch past the bounce bound reads
	 * only the reader's bytes and writes nothing) */
	CHECK_EQ(st.bytes_written, st.bytes_used);
	CHECK(count_files(dir) <= NEXT);
	CHECK_EQ(st.misses, f.fetched[0] + f.fetched[1] + f.fetched[2] +
				    f.fetched[3] + f.fetched[4] + f.fetched[5]);
	apb_disktier_close(t);
	remove_tree(dir);
	free(dir);
	free(f.data);
}

static void test_bad_config(void)
{
	struct apb_disktier_config c = {
		.dir = "/nonexistent-apb-dir", .capacity = 1ull << 30,
		.url = "http://h/k", .identity = "\"e\"", .size = 10,
	};
	struct apb_disktier *t;
	char err[256];

	CHECK_EQ(apb_disktier_open(&c, &t, err, sizeof(err)), -ENOENT);
	CHECK_STR_CONTAINS(err, "cache_dir=/nonexistent-apb-dir");
	c.dir = "/tmp";
	c.capacity = E;
	CHECK_EQ(apb_disktier_open(&c, &t, err, sizeof(err)), -EINVAL);
	CHECK_STR_CONTAINS(err, "below one extent");
}

int main(void)
{
	RUN(test_url_key);
	RUN(test_cold_then_warm);
	RUN(test_damaged_files);
	RUN(test_bound_and_identity);
	RUN(test_other_objects_share_the_bound);
	RUN(test_fetch_error_then_retry);
	RUN(test_threads);
	RUN(test_bad_config);
	return 0;
}
