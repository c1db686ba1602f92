/*
 * apbundle_stats.c - `apbundle stats MOUNTPOINT`: read the .stats document
 * of a mounted bundle and print it for people.
 *
 * The daemon (fs/) serves MOUNTPOINT/.stats as one JSON object: "cache",
 * "prefetch" and "io" counters and a "models" object keyed by model name.
 * This file prints two headline lines - the reuse hit rate and the bundle
 * bytes read per byte served, which say at once whether the cache saves
 * any reads - then a summary of the counters and a table of the models,
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
#include <stdbool.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "apbundle/size.h"

#include "apbundle_cmd.h"

#define STATS_MAX_BYTES (256u << 20)

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

static void print_summary(const cJSON *root)
{
	const cJSON *cache = cJSON_GetObjectItemCaseSensitive(root, "cache");
	const cJSON *pf = cJSON_GetObjectItemCaseSensitive(root, "prefetch");
	const cJSON *io = cJSON_GetObjectItemCaseSensitive(root, "io");
	const cJSON *pol = cJSON_GetObjectItemCaseSensitive(cache, "policy");
	uint64_t hits = num(cache, "hits"), misses = num(cache, "misses");
	char a[32], b[32];

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

/* Most resident first; ties by name so the output is stable. */
static int cmp_resident(const void *pa, const void *pb)
{
	const cJSON *a = *(const cJSON *const *)pa;
	const cJSON *b = *(const cJSON *const *)pb;
	uint64_t ra = num(a, "resident_bytes"), rb = num(b, "resident_bytes");

	if (ra != rb)
		return ra > rb ? -1 : 1;
	return strcmp(a->string, b->string);
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

static int print_models(const cJSON *root)
{
	const cJSON *models = cJSON_GetObjectItemCaseSensitive(root, "models");
	int n = cJSON_GetArraySize(models), wname = 5, wsize = 9, i = 0;
	const cJSON **v, *m;

	if (!cJSON_IsObject(models) || n == 0)
		return 0;
	v = malloc((size_t)n * sizeof(*v));
	if (!v)
		return -ENOMEM;
	cJSON_ArrayForEach(m, models) {
		int w = apb_cmd_print_name(NULL, m->string, 0);

		wname = w > wname ? w : wname;
		v[i++] = m;
	}
	qsort(v, (size_t)n, sizeof(*v), cmp_resident);
	printf("\n%-*s  %*s  %*s  %8s  %8s  %9s  %6s  %s\n", wname, "MODEL",
	       wsize, "SIZE", wsize, "RESIDENT", "HITS", "MISSES", "EVICTIONS",
	       "OPENS", "PINNED");
	for (i = 0; i < n; i++)
		print_model_row(v[i], wname, wsize);
	free(v);
	return 0;
}

int apb_cmd_stats(int argc, char **argv)
{
	const struct apb_cmd *c = apb_cmd_find("stats");
	int status = apb_cmd_operands(c, argc, argv, 1, NULL);
	char *path = NULL, *text = NULL;
	cJSON *root = NULL;
	size_t len = 0, n;
	int rc;

	if (status >= 0)
		return status;
	status = EXIT_FAILURE;
	n = strlen(argv[optind]) + sizeof("/.stats");
	path = malloc(n);
	if (!path)
		goto out;
	snprintf(path, n, "%s/.stats", argv[optind]);
	rc = read_whole(path, &text, &len);
	if (rc) {
		fprintf(stderr, "apbundle: %s: %s%s\n", path, strerror(-rc),
			rc == -ENOENT ? " (is it an apbundlefs mount?)" : "");
		goto out;
	}
	root = cJSON_ParseWithLength(text, len);
	if (!cJSON_IsObject(root)) {
		fprintf(stderr, "apbundle: %s: not a JSON stats document\n", path);
		goto out;
	}
	print_headline(root);
	print_summary(root);
	if (print_models(root) == 0)
		status = EXIT_SUCCESS;
out:
	cJSON_Delete(root);
	free(text);
	free(path);
	return status;
}
