/*
 * apbundle_stats.c - `apbundle stats MOUNTPOINT`: read the .stats document
 * of a mounted bundle and print it for people.
 *
 * The daemon (fs/) serves MOUNTPOINT/.stats as one JSON object: "cache",
 * "prefetch" and "io" counters and a "models" object keyed by model name.
 * This file prints two headline lines - the reuse hit rate and the bundle
 * bytes read per byte served, which say at once whether the cache saves
 * any reads - then the mount (bundle, mountpoint, uptime; a daemon with a
 * "mount" section), a summary of the counters and a table of the models,
 * most resident bytes first, ties by name so the output is stable.
 *
 * Invariants:
 *  - The document is read to EOF, not to st_size, which a FUSE file need
 *    not report truly; at most STATS_MAX_BYTES are accepted.
 *  - A counter that is missing or not a number prints as 0 (a rate with a
 *    zero denominator as '-'), so a newer or older daemon still prints;
 *    the headline prints '-' for a counter it lacks (an older daemon has
 *    no reuse_hits: 0 would claim the cache saved nothing). Any number,
 *    however large, is read without overflow (clamped to UINT64_MAX).
 *  - Strings of the document (model names, the policy) are printed
 *    through apb_cmd_print_name(): a crafted .stats cannot drive the
 *    terminal.
 *  - Exit status as for every subcommand (apbundle_cmd.h): 1 when the file
 *    cannot be read or is not a JSON object, with one line
 *    "apbundle: MOUNTPOINT/.stats: reason" on stderr.
 */
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "apbundle/size.h"

#include "apbundle_cmd.h"

#define STATS_MAX_BYTES (256u << 20)
#define WATCH_DEFAULT_MS 2000
#define WATCH_MIN_MS 100
#define WATCH_MAX_MS (24 * 3600 * 1000)
#define MB 1e6 /* rates are in decimal megabytes per second, as disks say */

/* What one invocation prints and how often. */
struct stats_opts {
	bool watch;
	unsigned interval_ms;
	unsigned long count;   /* samples before stopping; 0: until killed */
	unsigned long top;     /* models shown; 0: all */
	bool tty;              /* stdout is a terminal: redraw in place */
};

/* One .stats document and when it was read. */
struct sample {
	cJSON *root;
	uint64_t at_ms;        /* CLOCK_MONOTONIC */
};

/* The whole of a (FUSE) file; its st_size is not trusted, EOF is. */
static int read_whole(const char *path, char **out, size_t *len_out)
{
	size_t len = 0, cap = 1 << 16;
	char *buf = malloc(cap);
	int fd = open(path, O_RDONLY | O_CLOEXEC), rc = 0;

	if (fd < 0 || !buf) {
		rc = fd < 0 ? -errno : -ENOMEM;
		goto out;
	}
	for (;;) {
		ssize_t n;

		if (len == cap) {
			char *more = cap < STATS_MAX_BYTES
					     ? realloc(buf, cap * 2) : NULL;
			if (!more) {
				rc = cap < STATS_MAX_BYTES ? -ENOMEM : -EFBIG;
				goto out;
			}
			buf = more;
			cap *= 2;
		}
		n = read(fd, buf + len, cap - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			rc = -errno;
			goto out;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	*out = buf;
	*len_out = len;
	buf = NULL;
out:
	if (fd >= 0)
		close(fd);
	free(buf);
	return rc;
}

/* A counter of the document; absent or not a number reads as 0, so a
 * newer or older daemon with other keys still prints. A number of 2^64 or
 * more (a crafted document: 1e300, or inf from 1e999) reads as UINT64_MAX,
 * as converting it to uint64_t would be undefined; NaN fails both tests
 * and reads as 0. */
static uint64_t num(const cJSON *obj, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);

	if (!cJSON_IsNumber(v) || !(v->valuedouble > 0))
		return 0;
	if (v->valuedouble >= 18446744073709551616.0) /* 2^64 */
		return UINT64_MAX;
	return (uint64_t)v->valuedouble;
}

/* Whether the document has the counter at all. */
static bool has_num(const cJSON *obj, const char *key)
{
	return cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(obj, key));
}

/* a + b, UINT64_MAX where it would wrap (crafted counters). */
static uint64_t sum(uint64_t a, uint64_t b)
{
	return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

static char *human(uint64_t bytes, char *buf)
{
	return apb_size_format(bytes, buf, 32);
}

static void print_rate(const char *label, uint64_t part, uint64_t whole)
{
	if (whole)
		printf("%s%.1f%%", label, 100.0 * (double)part / (double)whole);
	else
		printf("%s-", label);
}

/*
 * The headline: of the chunk lookups, the share that found a chunk an
 * earlier read had used (cache.reuse_hits; a prefetched chunk's first
 * read is a hit but saves no read of the bundle), and the bytes the
 * daemon read from the bundle per byte it served. Below 1 the cache
 * saved reads; at 1 or more it saved none, whatever cache.hit_rate says.
 * Computed here from the counters, not taken from the document's rates,
 * so that it needs nothing newer than the counters themselves.
 */
static void print_headline(const cJSON *root)
{
	const cJSON *cache = cJSON_GetObjectItemCaseSensitive(root, "cache");
	const cJSON *io = cJSON_GetObjectItemCaseSensitive(root, "io");
	uint64_t lookups = sum(num(cache, "hits"), num(cache, "misses"));
	uint64_t reuse = num(cache, "reuse_hits");
	uint64_t read = num(io, "backing_bytes_read");
	uint64_t served = num(io, "bytes_served");

	if (!has_num(cache, "reuse_hits"))
		printf("reuse hits    - (not counted by this daemon)\n");
	else if (lookups == 0)
		printf("reuse hits    - (no chunk lookups yet)\n");
	else
		printf("reuse hits    %.1f%% (%llu of %llu chunk lookups)\n",
		       100.0 * (double)reuse / (double)lookups,
		       (unsigned long long)reuse,
		       (unsigned long long)lookups);

	if (!has_num(io, "backing_bytes_read") || !has_num(io, "bytes_served"))
		printf("bundle reads  - (not counted by this daemon)\n");
	else if (served == 0)
		printf("bundle reads  - (no bytes served yet)\n");
	else if (read < served)
		printf("bundle reads  %.2f bytes per byte served (saved %.0f%%)\n",
		       (double)read / (double)served,
		       100.0 * (double)(served - read) / (double)served);
	else if (read == served)
		printf("bundle reads  1.00 bytes per byte served (saved none)\n");
	else
		printf("bundle reads  %.2f bytes per byte served (%.0f%% more "
		       "than served)\n", (double)read / (double)served,
		       100.0 * (double)(read - served) / (double)served);
	printf("\n");
}

/* A string of the document, escaped, or "?". */
static void put_str(const cJSON *obj, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);

	apb_cmd_print_name(stdout, cJSON_IsString(v) ? v->valuestring : "?", 0);
}

/*
 * The mount (a daemon with a "mount" section): which bundle on which
 * mountpoint, its format, the daemon's version, how long it has been up
 * (from mount.start_time and this machine's clock: the daemon gives a
 * fixed start time so that identical opens share one document) and where
 * metrics_listen= serves. Nothing for an older daemon.
 */
static void print_mount(const cJSON *root)
{
	const cJSON *m = cJSON_GetObjectItemCaseSensitive(root, "mount");
	const cJSON *start = cJSON_GetObjectItemCaseSensitive(m, "start_time");
	const cJSON *listen = cJSON_GetObjectItemCaseSensitive(m,
							       "metrics_listen");
	struct timespec now;
	double up = -1;

	if (!cJSON_IsObject(m))
		return;
	clock_gettime(CLOCK_REALTIME, &now);
	if (cJSON_IsNumber(start))
		up = (double)now.tv_sec + (double)now.tv_nsec / 1e9 -
		     start->valuedouble;
	fputs("mount     ", stdout);
	put_str(m, "bundle");
	fputs(" on ", stdout);
	put_str(m, "mountpoint");
	printf(" (format %llu, apbundlefs ",
	       (unsigned long long)num(m, "format_version"));
	put_str(m, "version");
	if (up >= 0 && up < 1e12) { /* else a clock set back, or garbage */
		uint64_t t = (uint64_t)up;

		printf(", up %llud %02llu:%02llu:%02llu",
		       (unsigned long long)(t / 86400),
		       (unsigned long long)(t / 3600 % 24),
		       (unsigned long long)(t / 60 % 60),
		       (unsigned long long)(t % 60));
	}
	if (cJSON_IsString(listen)) {
		fputs(", metrics at http://", stdout);
		apb_cmd_print_name(stdout, listen->valuestring, 0);
		fputs("/metrics", stdout);
	}
	printf(")\n");
}

static void print_summary(const cJSON *root)
{
	const cJSON *cache = cJSON_GetObjectItemCaseSensitive(root, "cache");
	const cJSON *pf = cJSON_GetObjectItemCaseSensitive(root, "prefetch");
	const cJSON *io = cJSON_GetObjectItemCaseSensitive(root, "io");
	const cJSON *pol = cJSON_GetObjectItemCaseSensitive(cache, "policy");
	uint64_t hits = num(cache, "hits"), misses = num(cache, "misses");
	char a[32], b[32];

	print_mount(root);
	fputs("cache     ", stdout);
	apb_cmd_print_name(stdout, cJSON_IsString(pol) ? pol->valuestring : "?",
			   0);
	printf(", %s chunks, %llu resident\n", human(num(cache, "chunk_size"), a),
	       (unsigned long long)num(cache, "resident_chunks"));
	printf("memory    %s used of %s", human(num(cache, "memory_used"), a),
	       human(num(cache, "memory_limit"), b));
	print_rate(" (", num(cache, "memory_used"), num(cache, "memory_limit"));
	printf(")\n");
	print_rate("hit rate  ", hits, sum(hits, misses));
	printf(" (%llu hits, %llu misses, %llu evictions)\n",
	       (unsigned long long)hits, (unsigned long long)misses,
	       (unsigned long long)num(cache, "evictions"));
	printf("prefetch  %llu issued, %llu hits, %llu wasted\n",
	       (unsigned long long)num(pf, "issued"),
	       (unsigned long long)num(pf, "hits"),
	       (unsigned long long)num(pf, "wasted"));
	printf("io        %s read from the bundle, %s served, %llu errors, "
	       "%llu checksum errors\n",
	       human(num(io, "backing_bytes_read"), a),
	       human(num(io, "bytes_served"), b),
	       (unsigned long long)num(io, "errors"),
	       (unsigned long long)num(io, "checksum_errors"));
}

/* A model row and the key it is sorted by. */
struct row {
	const cJSON *m;
	uint64_t key, key2;
};

/* Largest key first, then largest key2; ties by name so the output is stable. */
static int cmp_rows(const void *pa, const void *pb)
{
	const struct row *a = pa, *b = pb;

	if (a->key != b->key)
		return a->key > b->key ? -1 : 1;
	if (a->key2 != b->key2)
		return a->key2 > b->key2 ? -1 : 1;
	return strcmp(a->m->string, b->m->string);
}

/* A model's chunk lookups (hits + misses): the reads --top ranks by. */
static uint64_t lookups(const cJSON *m)
{
	return sum(num(m, "hits"), num(m, "misses"));
}

/* Lookups of model m since prev (the same model in the previous sample),
 * all of them when it was not there or its counters went back. */
static uint64_t lookups_since(const cJSON *m, const cJSON *prev_models)
{
	const cJSON *p = prev_models
		? cJSON_GetObjectItemCaseSensitive(prev_models, m->string) : NULL;
	uint64_t now = lookups(m), before = p ? lookups(p) : 0;

	return now >= before ? now - before : now;
}

static void print_model_row(const cJSON *m, int wname, int wsize)
{
	const cJSON *pinned = cJSON_GetObjectItemCaseSensitive(m, "pinned");
	char a[32], b[32];

	apb_cmd_print_name(stdout, m->string, wname);
	printf("  %*s  %*s  %8llu  %8llu  %9llu  %6llu  %s\n",
	       wsize, human(num(m, "size"), a), wsize,
	       human(num(m, "resident_bytes"), b),
	       (unsigned long long)num(m, "hits"),
	       (unsigned long long)num(m, "misses"),
	       (unsigned long long)num(m, "evictions"),
	       (unsigned long long)num(m, "opens"),
	       cJSON_IsTrue(pinned) ? "yes" : "no");
}

/*
 * The models table: by resident bytes, or with top > 0 the top models by
 * chunk lookups - since prev when there is a previous sample (watch), in
 * all otherwise.
 */
static int print_models(const cJSON *root, const cJSON *prev,
			unsigned long top)
{
	const cJSON *models = cJSON_GetObjectItemCaseSensitive(root, "models");
	const cJSON *prev_models =
		prev ? cJSON_GetObjectItemCaseSensitive(prev, "models") : NULL;
	int n = cJSON_GetArraySize(models), wname = 5, wsize = 9, i = 0;
	size_t shown;
	struct row *v;
	const cJSON *m;

	if (!cJSON_IsObject(models) || n == 0)
		return 0;
	v = malloc((size_t)n * sizeof(*v));
	if (!v)
		return -ENOMEM;
	cJSON_ArrayForEach(m, models) {
		v[i].m = m;
		v[i].key = !top ? num(m, "resident_bytes")
			 : prev ? lookups_since(m, prev_models) : lookups(m);
		v[i++].key2 = top ? lookups(m) : 0;
	}
	qsort(v, (size_t)n, sizeof(*v), cmp_rows);
	shown = top && top < (unsigned long)n ? top : (size_t)n;
	for (size_t k = 0; k < shown; k++) {
		int w = apb_cmd_print_name(NULL, v[k].m->string, 0);

		wname = w > wname ? w : wname;
	}
	if (top)
		printf("\ntop %zu of %d models by chunk lookups%s\n", shown, n,
		       prev ? " in the interval" : "");
	printf("\n%-*s  %*s  %*s  %8s  %8s  %9s  %6s  %s\n", wname, "MODEL",
	       wsize, "SIZE", wsize, "RESIDENT", "HITS", "MISSES", "EVICTIONS",
	       "OPENS", "PINNED");
	for (size_t k = 0; k < shown; k++)
		print_model_row(v[k].m, wname, wsize);
	free(v);
	return 0;
}

/* now - before of a counter of section sec, or false when either sample
 * lacks it or it went back (a new daemon on the mountpoint). */
static bool delta(const cJSON *now, const cJSON *before, const char *sec,
		  const char *key, uint64_t *out)
{
	const cJSON *a = cJSON_GetObjectItemCaseSensitive(now, sec);
	const cJSON *b = cJSON_GetObjectItemCaseSensitive(before, sec);

	if (!has_num(a, key) || !has_num(b, key) || num(a, key) < num(b, key))
		return false;
	*out = num(a, key) - num(b, key);
	return true;
}

/* See apbundle_cmd.h: per second over ms milliseconds. */
double apb_cmd_rate(uint64_t delta, uint64_t ms)
{
	return ms ? (double)delta * 1000.0 / (double)ms : 0.0;
}

/*
 * Two lines on what changed since the previous sample:
 *   interval  2.003 s: +300 hits, +12 misses, +3000000 bytes read from
 *             the bundle, +3000000 bytes served      (one line)
 *   rates     149.8 hits/s, 6.0 misses/s, 1.50 MB/s read from the bundle,
 *             1.50 MB/s served                       (one line)
 * The interval is whole milliseconds and the rates are computed from it
 * (apb_cmd_rate()), so that the lines can be checked against each other.
 */
static void print_rates(const struct sample *now, const struct sample *prev)
{
	uint64_t ms = now->at_ms - prev->at_ms, h, m, r, s;

	if (!delta(now->root, prev->root, "cache", "hits", &h) ||
	    !delta(now->root, prev->root, "cache", "misses", &m) ||
	    !delta(now->root, prev->root, "io", "backing_bytes_read", &r) ||
	    !delta(now->root, prev->root, "io", "bytes_served", &s)) {
		printf("interval  %llu.%03llu s: counters missing or went back "
		       "(a new daemon?)\nrates     -\n",
		       (unsigned long long)(ms / 1000),
		       (unsigned long long)(ms % 1000));
		return;
	}
	printf("interval  %llu.%03llu s: +%llu hits, +%llu misses, +%llu bytes "
	       "read from the bundle, +%llu bytes served\n",
	       (unsigned long long)(ms / 1000), (unsigned long long)(ms % 1000),
	       (unsigned long long)h, (unsigned long long)m,
	       (unsigned long long)r, (unsigned long long)s);
	printf("rates     %.1f hits/s, %.1f misses/s, %.2f MB/s read from the "
	       "bundle, %.2f MB/s served\n", apb_cmd_rate(h, ms),
	       apb_cmd_rate(m, ms), apb_cmd_rate(r, ms) / MB,
	       apb_cmd_rate(s, ms) / MB);
}

/* Read and parse path; on failure print why and return -1. */
static int take_sample(const char *path, struct sample *out)
{
	char *text = NULL;
	size_t len = 0;
	int rc = read_whole(path, &text, &len);

	if (rc) {
		fprintf(stderr, "apbundle: %s: %s%s\n", path, strerror(-rc),
			rc == -ENOENT ? " (is it an apbundlefs mount?)" : "");
		return -1;
	}
	out->at_ms = apb_cmd_mono_ms();
	out->root = cJSON_ParseWithLength(text, len);
	free(text);
	if (!cJSON_IsObject(out->root)) {
		fprintf(stderr, "apbundle: %s: not a JSON stats document\n", path);
		cJSON_Delete(out->root);
		out->root = NULL;
		return -1;
	}
	return 0;
}

/* One block: in watch mode a title line (on a terminal after clearing the
 * screen; otherwise after a blank line between blocks) and the rates,
 * then what plain `stats` prints. */
static int print_block(const char *mnt, const struct sample *now,
		       const struct sample *prev, const struct stats_opts *o,
		       unsigned long index)
{
	if (o->watch) {
		time_t t = time(NULL);
		struct tm tm;
		char when[32] = "";

		if (localtime_r(&t, &tm))
			strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm);
		if (o->tty)
			fputs("\033[H\033[J", stdout); /* home, clear below */
		else if (index > 0)
			putchar('\n');
		fputs("stats of ", stdout);
		apb_cmd_print_name(stdout, mnt, 0);
		printf(" at %s, every %u.%03u s\n", when, o->interval_ms / 1000,
		       o->interval_ms % 1000);
		if (prev)
			print_rates(now, prev);
		else
			printf("interval  - (first sample)\nrates     -\n");
		putchar('\n');
	}
	print_headline(now->root);
	print_summary(now->root);
	return print_models(now->root, prev ? prev->root : NULL, o->top);
}

/* Sleep until deadline_ms (CLOCK_MONOTONIC), through signals that do not
 * kill us. */
static void sleep_until(uint64_t deadline_ms)
{
	struct timespec ts = {
		.tv_sec = (time_t)(deadline_ms / 1000),
		.tv_nsec = (long)(deadline_ms % 1000) * 1000000,
	};

	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) ==
	       EINTR)
		;
}

/* "2", "0.5", "1.25": seconds, to whole milliseconds in range. */
static int parse_interval(const char *s, unsigned *ms)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || *end || !(v * 1000 >= WATCH_MIN_MS) ||
	    v * 1000 > WATCH_MAX_MS)
		return -1;
	*ms = (unsigned)(v * 1000 + 0.5);
	return 0;
}

static int parse_ulong(const char *s, unsigned long *out)
{
	char *end;

	errno = 0;
	*out = strtoul(s, &end, 10);
	return errno || end == s || *end || s[0] == '-' || *out == 0 ? -1 : 0;
}

static int stats_options(const struct apb_cmd *c, int argc, char **argv,
			 struct stats_opts *o)
{
	static const struct option longs[] = {
		{"watch", optional_argument, NULL, 'w'},
		{"count", required_argument, NULL, 'n'},
		{"top", required_argument, NULL, 't'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	int opt, status = -1;

	while ((opt = apb_cmd_next_option(c, argc, argv, longs, ":h",
					  &status)) != -1) {
		switch (opt) {
		case 'w':
			o->watch = true;
			if (optarg && parse_interval(optarg, &o->interval_ms))
				return apb_cmd_usage_error(c, "--watch: '%s' is not "
					"a number of seconds from 0.1 to 86400",
					optarg);
			break;
		case 'n':
			if (parse_ulong(optarg, &o->count))
				return apb_cmd_usage_error(c, "--count: '%s' is "
					"not a whole number above 0", optarg);
			break;
		case 't':
			if (parse_ulong(optarg, &o->top))
				return apb_cmd_usage_error(c, "--top: '%s' is "
					"not a whole number above 0", optarg);
			break;
		default:
			return status;
		}
	}
	if (o->count && !o->watch)
		return apb_cmd_usage_error(c, "--count needs --watch");
	if (argc - optind != 1)
		return apb_cmd_usage_error(c, argc == optind ? "missing operand"
							     : "too many operands");
	return -1;
}

int apb_cmd_stats(int argc, char **argv)
{
	const struct apb_cmd *c = apb_cmd_find("stats");
	struct stats_opts o = {.interval_ms = WATCH_DEFAULT_MS};
	struct sample now = {0}, prev = {0};
	int status = stats_options(c, argc, argv, &o);
	const char *mnt;
	char *path = NULL;
	size_t n;

	if (status >= 0)
		return status;
	status = EXIT_FAILURE;
	mnt = argv[optind];
	o.tty = isatty(STDOUT_FILENO);
	n = strlen(mnt) + sizeof("/.stats");
	path = malloc(n);
	if (!path)
		goto out;
	snprintf(path, n, "%s/.stats", mnt);
	/* A block is drawn whole: on a terminal no half-drawn screen, in a
	 * pipe no half block for a reader to see. */
	if (o.watch)
		setvbuf(stdout, NULL, _IOFBF, 1 << 16);
	for (unsigned long i = 0;; i++) {
		uint64_t deadline = apb_cmd_mono_ms() + o.interval_ms;

		if (take_sample(path, &now) != 0)
			goto out;
		if (print_block(mnt, &now, i ? &prev : NULL, &o, i) != 0 ||
		    fflush(stdout) != 0)
			goto out;
		cJSON_Delete(prev.root);
		prev = now;
		now.root = NULL;
		if (!o.watch || (o.count && i + 1 >= o.count))
			break;
		sleep_until(deadline);
	}
	status = EXIT_SUCCESS;
out:
	cJSON_Delete(now.root);
	cJSON_Delete(prev.root);
	free(path);
	return status;
}
