/*
 * main.c - apbundlefs: parse the command line, open and validate the
 * bundle, build the tree and the cache, mount, serve, unmount.
 *
 * Everything that can fail because of the bundle or the options fails
 * before the mount exists, so a refused bundle never leaves a mount behind.
 */
#include "apbfs.h"

#include <apbundle/size.h>

#include "../core/disktier.h"

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#define DEFAULT_MAX_MEMORY (256ull << 20)
#define DEFAULT_CHUNK_SIZE (64u << 10) /* why: docs/DESIGN.md, "Choosing the default chunk size" */
#define MAX_CHUNK_SIZE (64u << 20)
#define DEFAULT_READAHEAD (4ull << 20)
/* A bundle behind a URL: requests of REMOTE_RUN_BYTES (a cache run, a
 * prefetch job, a readahead batch) and a window that keeps a few of them
 * ahead of a sequential reader. Each request pays a round trip; with 1 MiB
 * requests, one reader over a 500 MB/s, 1 ms link got 0.65-0.71x of curl
 * (docs/PERFORMANCE.md, "Remote bundles"). */
#define REMOTE_RUN_BYTES (4ull << 20)
/* 32M, at most max_memory/8: on that link one reader got 0.95-0.99x of
 * curl with a 32M window, 0.75-0.87x with 16M and 0.70x with 64M
 * (docs/PERFORMANCE.md). */
#define REMOTE_READAHEAD (32ull << 20)
#define MIN_DEFAULT_READAHEAD (128ull << 10)
#define DEFAULT_TRACE_MAX (1ull << 30)
#define DEFAULT_CACHE_DIR_SIZE (1ull << 30)
#define PREFETCH_THREADS 4 /* loads mostly wait on I/O; 2 fell behind (docs/DESIGN.md) */

struct cmdline {
	char *bundle;
	char *shown;	/* bundle as the mount table and messages show it */
	int nonopts;
	char *max_memory;
	char *chunk_size;
	char *eviction;
	char *readahead;
	char *prefetch;
	char *prefetch_count;
	char *pin;
	char *preload;
	char *state;
	char *learn_order;
	char *auto_preload;
	char *backing_io;
	char *trace;
	char *trace_max;
	char *s3_endpoint;
	char *s3_region;
	char *s3_profile;
	char *s3_style;
	char *cache_dir;
	char *cache_dir_size;
	char *metrics_listen;
	int metrics_allow_remote;
	int kernel_cache;
	int allow_other;
};

enum { KEY_ALLOW_OTHER = 1, KEY_RO };

#define OPT(t, field) {t, offsetof(struct cmdline, field), 1}
static const struct fuse_opt option_spec[] = {
	OPT("max_memory=%s", max_memory),
	OPT("chunk_size=%s", chunk_size),
	OPT("eviction=%s", eviction),
	OPT("readahead=%s", readahead),
	OPT("prefetch=%s", prefetch),
	OPT("prefetch_count=%s", prefetch_count),
	OPT("pin=%s", pin),
	OPT("preload=%s", preload),
	OPT("state=%s", state),
	OPT("learn_order=%s", learn_order),
	OPT("auto_preload=%s", auto_preload),
	OPT("backing_io=%s", backing_io),
	OPT("trace=%s", trace),
	OPT("trace_max=%s", trace_max),
	OPT("s3_endpoint=%s", s3_endpoint),
	OPT("s3_region=%s", s3_region),
	OPT("s3_profile=%s", s3_profile),
	OPT("s3_style=%s", s3_style),
	OPT("cache_dir=%s", cache_dir),
	OPT("cache_dir_size=%s", cache_dir_size),
	OPT("metrics_listen=%s", metrics_listen),
	OPT("metrics_allow_remote", metrics_allow_remote),
	OPT("kernel_cache", kernel_cache),
	FUSE_OPT_KEY("allow_other", KEY_ALLOW_OTHER),
	FUSE_OPT_KEY("ro", KEY_RO),
	FUSE_OPT_END
};

static void usage(FILE *f)
{
	fprintf(f,
"usage: apbundlefs [-f] [-d] [-s] [-o OPT[,OPT...]] BUNDLE MOUNTPOINT\n"
"\n"
"Mount the models of an .apbundle file as read-only files whose reads are\n"
"served from a memory-budgeted chunk cache. Unmount with fusermount3 -u.\n"
"BUNDLE is a path, or a URL: http://..., https://... or s3://BUCKET/KEY.\n"
"\n"
"apbundlefs options:\n"
"    -o max_memory=SIZE     budget for cached chunks (default 256M)\n"
"    -o chunk_size=SIZE     cache chunk, a multiple of 4K (default 64K)\n"
"    -o eviction=auto|lru|lfu\n"
"                           eviction policy (default auto: like the better\n"
"                           of lru and lfu, and keeps part of a model read\n"
"                           in a loop that is larger than max_memory)\n"
"    -o prefetch=on|off     read ahead of sequential readers (default on)\n"
"    -o readahead=SIZE      largest readahead window (default 4M, at most\n"
"                           max_memory/16; for a URL 32M, at most\n"
"                           max_memory/8; unless given)\n"
"    -o prefetch_count=N    on open, prefetch the N models that most often\n"
"                           followed it (default 1, 0 for none)\n"
"    -o pin=NAME[:NAME...]  load these models and never evict them\n"
"    -o preload=NAME[:...]  load these models in the background at mount\n"
"    -o state=PATH          keep access counts in PATH across mounts\n"
"    -o learn_order=0|1     with state=, record the order each model's\n"
"                           chunks are first read and prefetch in that\n"
"                           order at its next open (default 1)\n"
"    -o auto_preload=N      preload the N most opened models (needs state=)\n"
"    -o kernel_cache        let the kernel page cache keep file pages\n"
"                           across opens\n"
"    -o backing_io=direct|buffered\n"
"                           read the bundle with O_DIRECT, so its pages\n"
"                           are not cached twice (default direct)\n"
"    -o trace=FILE          record every chunk access in FILE, for apbreplay\n"
"                           (docs/FORMAT.md, \"Trace files\")\n"
"    -o trace_max=SIZE      most bytes of the trace file; then recording\n"
"                           stops (default 1G)\n"
"    -o s3_endpoint=URL     S3 endpoint for an s3:// BUNDLE, e.g.\n"
"                           http://127.0.0.1:7480 (default: AWS_ENDPOINT_URL_S3,\n"
"                           AWS_ENDPOINT_URL, the profile's, else AWS)\n"
"    -o s3_region=R         S3 region (default: AWS_REGION, AWS_DEFAULT_REGION,\n"
"                           the profile's, else us-east-1)\n"
"    -o s3_profile=NAME     AWS profile of ~/.aws/credentials and config\n"
"                           (default: AWS_PROFILE, else default)\n"
"    -o s3_style=path|virtual\n"
"                           S3 addressing (default: path with an endpoint,\n"
"                           virtual-hosted without)\n"
"    -o cache_dir=DIR       keep the bytes fetched for a URL in files under\n"
"                           DIR, for later reads and later mounts\n"
"    -o cache_dir_size=SIZE most bytes of files under cache_dir (default 1G)\n"
"    -o metrics_listen=ADDR:PORT\n"
"                           serve .metrics over HTTP at\n"
"                           http://ADDR:PORT/metrics (default off; a\n"
"                           loopback ADDR such as 127.0.0.1 or [::1];\n"
"                           port 0 picks a free one, .stats shows it)\n"
"    -o metrics_allow_remote\n"
"                           let metrics_listen= take a non-loopback ADDR\n"
"    -o ro                  accepted, for fstab: the models are read-only\n"
"                           in any case, and .control stays writable\n"
"Sizes take K, M and G suffixes (powers of 1024).\n"
"-o allow_other adds -o default_permissions: others may read the models\n"
"and .stats, only the mounting user may write .control.\n"
"\n");
}

/* The first non-option argument is the bundle; the second, the mountpoint,
 * stays for fuse_parse_cmdline(). allow_other is noted and kept for
 * libfuse. */
static int take_arg(void *data, const char *arg, int key,
		    struct fuse_args *outargs)
{
	struct cmdline *cl = data;
	(void)outargs;

	if (key == KEY_ALLOW_OTHER) {
		cl->allow_other = 1;
		return 1;
	}
	/* ro (fstab's, mount -r) would make the kernel refuse every write,
	 * the mounting user's commands to .control included, while the
	 * daemon refuses writes to models itself (EROFS): dropped, so that
	 * the mount behaves as ro promises and .control still works. */
	if (key == KEY_RO)
		return 0;
	if (key != FUSE_OPT_KEY_NONOPT)
		return 1;
	if (cl->nonopts++ == 0) {
		cl->bundle = strdup(arg);
		return cl->bundle ? 0 : -1;
	}
	return 1;
}

static int parse_size_opt(const char *name, const char *value, uint64_t *out)
{
	if (!value)
		return 0;
	if (apb_size_parse(value, out) != 0) {
		fprintf(stderr, "apbundlefs: bad option %s=%s: expected a size "
			"such as 64K, 512M or 2G\n", name, value);
		return -1;
	}
	return 0;
}

static int parse_count_opt(const char *name, const char *value,
			   uint32_t max, uint32_t *out)
{
	char *end;
	unsigned long v;

	if (!value)
		return 0;
	errno = 0;
	v = strtoul(value, &end, 10);
	if (errno || end == value || *end || v > max || value[0] == '-') {
		fprintf(stderr, "apbundlefs: bad option %s=%s: expected a "
			"whole number from 0 to %u\n", name, value, max);
		return -1;
	}
	*out = (uint32_t)v;
	return 0;
}

/* An option of two values: *first tells which was given; unset leaves
 * *first as it is. */
static int parse_choice(const char *name, const char *value, const char *a,
			const char *b, bool *first)
{
	if (!value)
		return 0;
	if (strcmp(value, a) == 0 || strcmp(value, b) == 0) {
		*first = strcmp(value, a) == 0;
		return 0;
	}
	fprintf(stderr, "apbundlefs: bad option %s=%s: expected %s or %s\n",
		name, value, a, b);
	return -1;
}

/* Unless readahead= says otherwise: 4M, but at most a sixteenth of the
 * budget (at least 128K). A window's unread chunks take slots that a
 * model read in a loop would keep (eviction=auto): with 4M of a 32M budget
 * auto kept 0.87-0.89 of what OPT saves on loops 2x and 4x the budget,
 * with 2M 0.93-0.94 (docs/PERFORMANCE.md, "Models larger than the
 * budget"). A URL: REMOTE_READAHEAD, at most an eighth of the budget,
 * since there a shallow window costs a round trip per request. */
static uint64_t default_readahead(uint64_t max_memory, bool remote)
{
	uint64_t w = max_memory / (remote ? 8 : 16) / 4096 * 4096;
	uint64_t cap = remote ? REMOTE_READAHEAD : DEFAULT_READAHEAD;

	if (w < MIN_DEFAULT_READAHEAD)
		w = MIN_DEFAULT_READAHEAD;
	return w < cap ? w : cap;
}

/* The cache's run limit for a bundle behind a URL: REMOTE_RUN_BYTES of
 * chunks, within [APB_CACHE_RUN_MAX, APB_CACHE_RUN_LIMIT]; 0 (the
 * default runs) for a local file. */
static uint32_t run_max_for(const struct apbfs *fs)
{
	uint64_t n = REMOTE_RUN_BYTES / fs->opt.chunk_size;

	if (!fs->remote || n <= APB_CACHE_RUN_MAX)
		return 0;
	return n > APB_CACHE_RUN_LIMIT ? APB_CACHE_RUN_LIMIT : (uint32_t)n;
}

/* eviction=: one of the cache's policies; unset is the default. */
static int parse_eviction(const char *value, enum apb_eviction *out)
{
	*out = APB_EVICT_AUTO;
	if (!value || apb_eviction_parse(value, out) == 0)
		return 0;
	fprintf(stderr, "apbundlefs: bad option eviction=%s: expected lru, "
		"lfu or auto\n", value);
	return -1;
}

static int resolve_options(const struct cmdline *cl, struct apbfs_options *o)
{
	uint64_t chunk = DEFAULT_CHUNK_SIZE;
	char a[32], b[32];

	o->max_memory = DEFAULT_MAX_MEMORY;
	o->kernel_cache = cl->kernel_cache;
	o->readahead = DEFAULT_READAHEAD;
	o->trace_path = cl->trace;
	o->trace_max = DEFAULT_TRACE_MAX;
	if (parse_size_opt("max_memory", cl->max_memory, &o->max_memory) ||
	    parse_size_opt("chunk_size", cl->chunk_size, &chunk) ||
	    parse_size_opt("readahead", cl->readahead, &o->readahead) ||
	    parse_size_opt("trace_max", cl->trace_max, &o->trace_max))
		return -1;
	if (cl->trace_max && !cl->trace) {
		fprintf(stderr, "apbundlefs: trace_max needs trace=FILE\n");
		return -1;
	}
	if (o->readahead < 4096 || o->readahead > (1ull << 30)) {
		fprintf(stderr, "apbundlefs: bad option readahead=%s: must be "
			"from 4K to 1G\n", cl->readahead);
		return -1;
	}
	if (!cl->readahead)
		o->readahead = default_readahead(o->max_memory,
						 cl->bundle &&
						 apb_bundle_is_url(cl->bundle));
	if (chunk < 4096 || chunk % 4096 || chunk > MAX_CHUNK_SIZE) {
		fprintf(stderr, "apbundlefs: bad option chunk_size=%s: must be "
			"a multiple of 4K from 4K to 64M\n", cl->chunk_size);
		return -1;
	}
	o->chunk_size = (uint32_t)chunk;
	if (o->max_memory / chunk > APB_CACHE_MAX_SLOTS) {
		fprintf(stderr, "apbundlefs: max_memory (%s) holds more than "
			"2^30 chunks of %s; use a larger chunk_size\n",
			apb_size_format(o->max_memory, a, sizeof(a)),
			apb_size_format(chunk, b, sizeof(b)));
		return -1;
	}
	if (o->max_memory < chunk) {
		fprintf(stderr, "apbundlefs: max_memory (%s) is smaller than "
			"one chunk (%s)\n",
			apb_size_format(o->max_memory, a, sizeof(a)),
			apb_size_format(chunk, b, sizeof(b)));
		return -1;
	}
	o->prefetch = true;
	o->prefetch_count = 1;
	o->pin_list = cl->pin;
	o->preload_list = cl->preload;
	o->state_path = cl->state;
	if (parse_count_opt("prefetch_count", cl->prefetch_count,
			    APB_LEARN_SUCCESSORS, &o->prefetch_count) ||
	    parse_count_opt("auto_preload", cl->auto_preload, 1u << 20,
			    &o->auto_preload))
		return -1;
	if (o->auto_preload && !o->state_path) {
		fprintf(stderr, "apbundlefs: auto_preload needs state=PATH "
			"(the access counts it ranks models by)\n");
		return -1;
	}
	o->backing_direct = true;
	o->learn_order = true;
	if (parse_choice("prefetch", cl->prefetch, "on", "off", &o->prefetch) ||
	    parse_choice("learn_order", cl->learn_order, "1", "0",
			 &o->learn_order) ||
	    parse_choice("backing_io", cl->backing_io, "direct", "buffered",
			 &o->backing_direct) ||
	    parse_eviction(cl->eviction, &o->eviction))
		return -1;
	return 0;
}

/* The s3_* options, for an s3:// bundle only: given with another, they
 * would be ignored without a word. */
static int resolve_s3(const struct cmdline *cl, struct apb_bundle_options *b)
{
	const char *given = cl->s3_endpoint ? "s3_endpoint" :
			    cl->s3_region ? "s3_region" :
			    cl->s3_profile ? "s3_profile" :
			    cl->s3_style ? "s3_style" : NULL;
	bool path = true;

	if (given && (!cl->bundle || strncasecmp(cl->bundle, "s3://", 5))) {
		fprintf(stderr, "apbundlefs: %s= is for an s3://BUCKET/KEY "
			"bundle, not %s\n", given, cl->shown);
		return -1;
	}
	if (parse_choice("s3_style", cl->s3_style, "path", "virtual", &path))
		return -1;
	b->s3_endpoint = cl->s3_endpoint;
	b->s3_region = cl->s3_region;
	b->s3_profile = cl->s3_profile;
	b->s3_style = !cl->s3_style ? APB_S3_STYLE_AUTO
		      : path ? APB_S3_STYLE_PATH : APB_S3_STYLE_VIRTUAL;
	return 0;
}

/* cache_dir= and cache_dir_size=: the disk tier, for a bundle behind a URL
 * (a local file has nothing to keep a second copy of); the directory must
 * exist, and hold at least one extent. */
static int resolve_cache_dir(const struct cmdline *cl,
			     const struct apbfs_options *fo,
			     struct apb_bundle_options *b)
{
	uint64_t min = APB_DISKTIER_HEADER + APB_DISKTIER_EXTENT;
	struct stat st;

	if (!cl->cache_dir) {
		if (!cl->cache_dir_size)
			return 0;
		fprintf(stderr, "apbundlefs: cache_dir_size= needs "
			"cache_dir=DIR (the directory it bounds)\n");
		return -1;
	}
	if (cl->bundle && !apb_bundle_is_url(cl->bundle)) {
		fprintf(stderr, "apbundlefs: cache_dir= is for a bundle behind "
			"a URL (http://, https://, s3://), not %s\n",
			cl->bundle);
		return -1;
	}
	if (stat(cl->cache_dir, &st) != 0) {
		fprintf(stderr, "apbundlefs: bad option cache_dir=%s: %s\n",
			cl->cache_dir, strerror(errno));
		return -1;
	}
	if (!S_ISDIR(st.st_mode)) {
		fprintf(stderr, "apbundlefs: bad option cache_dir=%s: not a "
			"directory\n", cl->cache_dir);
		return -1;
	}
	b->cache_dir = cl->cache_dir;
	b->cache_dir_size = DEFAULT_CACHE_DIR_SIZE;
	b->cache_dir_eviction = fo->eviction;
	if (parse_size_opt("cache_dir_size", cl->cache_dir_size,
			   &b->cache_dir_size))
		return -1;
	if (b->cache_dir_size < min) {
		fprintf(stderr, "apbundlefs: bad option cache_dir_size=%s: "
			"below one extent and its header (%lluK)\n",
			cl->cache_dir_size, (unsigned long long)(min >> 10));
		return -1;
	}
	return 0;
}

static int resolve_metrics(const struct cmdline *cl)
{
	if (cl->metrics_allow_remote && !cl->metrics_listen) {
		fprintf(stderr, "apbundlefs: metrics_allow_remote needs "
			"metrics_listen=ADDR:PORT\n");
		return -1;
	}
	return 0;
}

/* metrics_listen=: bound now, before the mount, so that a bad or busy
 * address refuses the mount (fs/http.c). */
static int listen_metrics(struct apbfs *fs, const struct cmdline *cl)
{
	char err[256];
	int rc;

	if (!cl->metrics_listen)
		return 0;
	rc = apbfs_http_prepare(fs, cl->metrics_listen,
				cl->metrics_allow_remote, err, sizeof(err));
	if (rc)
		fprintf(stderr, "apbundlefs: bad option metrics_listen=%s: %s\n",
			cl->metrics_listen, err);
	return rc;
}

/* The bundle as .stats and the labels of .metrics name it: a URL as shown
 * (no password), a path made absolute, as given otherwise (the mount table
 * keeps what was typed). */
static int label_bundle(struct apbfs *fs, const struct cmdline *cl)
{
	fs->bundle_label = cl->shown;
	if (apb_bundle_is_url(cl->bundle))
		return 0;
	fs->label_storage = realpath(cl->bundle, NULL);
	if (fs->label_storage)
		fs->bundle_label = fs->label_storage;
	return 0;
}

/* Test hook (docs/USAGE.md), read once: fail every Nth chunk's memory
 * (pagein.c). */
static int read_fault_env(struct apbfs_options *o)
{
	return parse_count_opt("APBFS_FAULT_ALLOC_EVERY",
			       getenv("APBFS_FAULT_ALLOC_EVERY"), UINT32_MAX,
			       &o->fault_alloc_every);
}

/* path resolved through its deepest existing ancestor: the file itself,
 * else the nearest directory above it that resolves. A file below
 * directories that do not exist yet lies where the first of them would. */
static char *resolve(const char *path)
{
	char *copy = strdup(path), *r = NULL, *slash;

	while (copy && !(r = realpath(copy, NULL))) {
		slash = strrchr(copy, '/');
		if (slash == copy && copy[1] != '\0')
			copy[1] = '\0';        /* "/top" -> "/" */
		else if (slash && slash != copy)
			*slash = '\0';
		else if (!slash && strcmp(copy, ".") != 0)
			strcpy(copy, "."); /* "name" -> the working directory */
		else
			break; /* "/" or "." does not resolve: give up */
	}
	free(copy);
	return r;
}

static bool is_under(const char *path, const char *root)
{
	size_t n = strlen(root);

	if (strcmp(root, "/") == 0)
		return true;
	return strncmp(path, root, n) == 0 &&
	       (path[n] == '/' || path[n] == '\0');
}

/* A file the daemon reads or writes that lies under its own mountpoint
 * would be a request to itself, answered by no one: refuse to mount. The
 * mountpoint is already canonical (fuse_parse_cmdline). */
static int outside_mount(const char *what, const char *path,
			 const char *mountpoint)
{
	char *r;
	bool inside;

	if (!path)
		return 0;
	r = resolve(path);
	if (!r) /* what does not exist is reported where it is opened */
		return 0;
	inside = is_under(r, mountpoint);
	free(r);
	if (inside)
		fprintf(stderr, "apbundlefs: %s%s: lies inside the mountpoint "
			"%s; the daemon cannot read or write its own mount\n",
			what, path, mountpoint);
	return inside ? -EINVAL : 0;
}

/* A relative path made absolute against the working directory, before
 * anything uses it: in the background, fuse_daemonize() moves the daemon
 * to /, where state= would be written at unmount. */
static int make_absolute(const char *what, char **path)
{
	char *cwd, *abs = NULL;

	if (!*path || (*path)[0] == '/')
		return 0;
	cwd = getcwd(NULL, 0);
	if (cwd)
		abs = malloc(strlen(cwd) + strlen(*path) + 2);
	if (!abs) {
		fprintf(stderr, "apbundlefs: %s%s: cannot make it absolute: "
			"%s\n", what, *path, strerror(errno));
		free(cwd);
		return -1;
	}
	sprintf(abs, "%s/%s", strcmp(cwd, "/") == 0 ? "" : cwd, *path);
	free(cwd);
	free(*path);
	*path = abs;
	return 0;
}

/* Where path is or would be created: its real path, or that of its
 * directory and its name; NULL if the directory does not resolve. */
static char *place_of(const char *path)
{
	char *r = realpath(path, NULL), *copy, *dir;
	const char *name = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;

	if (r || errno != ENOENT || !(copy = strdup(path)))
		return r;
	dir = realpath(dirname(copy), NULL);
	if (dir && (r = malloc(strlen(dir) + strlen(name) + 2)))
		sprintf(r, "%s/%s", strcmp(dir, "/") == 0 ? "" : dir, name);
	free(dir);
	free(copy);
	return r;
}

/* Do a and b name one file: one inode, or, neither existing yet, one
 * place? */
static bool same_file(const char *a, const char *b)
{
	struct stat sa, sb;
	char *pa, *pb;
	bool same;

	if (stat(a, &sa) == 0 && stat(b, &sb) == 0)
		return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
	pa = place_of(a);
	pb = place_of(b);
	same = pa && pb && strcmp(pa, pb) == 0;
	free(pa);
	free(pb);
	return same;
}

/* state= is read at mount and replaced at unmount, trace= emptied at
 * mount: state= may be neither the bundle nor trace='s file. (trace.c
 * refuses the bundle itself, on the file it opened.) */
static int distinct_files(const struct cmdline *cl)
{
	if (cl->state && !apb_bundle_is_url(cl->bundle) &&
	    same_file(cl->state, cl->bundle)) {
		fprintf(stderr, "apbundlefs: state=%s: is the bundle being "
			"mounted; the state file is replaced at unmount\n",
			cl->state);
		return -EINVAL;
	}
	if (cl->state && cl->trace && same_file(cl->trace, cl->state)) {
		fprintf(stderr, "apbundlefs: trace=%s: is the file of state=%s;"
			" trace= empties its file at mount\n", cl->trace,
			cl->state);
		return -EINVAL;
	}
	return 0;
}

/* The cache reserves address space and takes pages as it fills
 * (core/cache.c, MEMORY), so a budget fails only where address space is
 * limited; say which budget and what to do. */
static void cache_map_failed(const struct apbfs_options *o)
{
	char a[32], b[32];

	fprintf(stderr, "apbundlefs: max_memory (%s): cannot reserve the "
		"address space of the chunk cache (%s slots and their "
		"metadata): %s; the virtual memory limit (ulimit -v) or strict "
		"overcommit (vm.overcommit_memory=2) does not allow it, use a "
		"smaller max_memory\n",
		apb_size_format(o->max_memory, a, sizeof(a)),
		apb_size_format(o->chunk_size, b, sizeof(b)), strerror(ENOMEM));
}

/*
 * The learning tables, with the counts of state= read in now, before
 * mounting: a file that exists but is not a state file would be replaced
 * at unmount, so it refuses the mount, as does a state file whose
 * directory is missing (it could not be saved). An empty file counts as a
 * new one. Reading here, not after fuse_daemonize(), also keeps the
 * daemon from waiting on its own mount or on a FIFO before it serves.
 */
static int load_state(struct apbfs *fs)
{
	const char *path = fs->opt.state_path;
	char err[512], *place;
	int rc = apb_learn_new(fs->bundle, &fs->learn);

	if (rc) {
		fprintf(stderr, "apbundlefs: access counts: %s\n",
			strerror(-rc));
		return rc;
	}
	if (!path)
		return 0;
	/* Also with learn_order=0: the file's orders are kept and saved. */
	apb_learn_set_chunk_size(fs->learn, fs->opt.chunk_size);
	rc = apb_learn_load(fs->learn, path, err, sizeof(err));
	if (rc == -EINVAL) {
		fprintf(stderr, "apbundlefs: state=%s; it would be overwritten "
			"at unmount, so nothing is mounted (name a new file, or "
			"move this one away)\n", err);
	} else if (rc == -ENOENT) {
		place = place_of(path);
		rc = place ? 0 : -ENOENT;
		free(place);
		if (rc)
			fprintf(stderr, "apbundlefs: state=%s: its directory does "
				"not exist; the counts could not be saved at "
				"unmount\n", path);
	} else if (rc) { /* err starts with the path */
		fprintf(stderr, "apbundlefs: state=%s\n", err);
	}
	return rc;
}

/* Open the bundle and build everything the operations need. A URL has no
 * file to watch: its reads carry the ETag instead (pagein.c). Messages name
 * the bundle as fs->bundle_name shows it (a URL without its password). */
static int setup(struct apbfs *fs, const char *path,
		 struct apb_bundle_options *bo)
{
	const char *shown = fs->bundle_name;
	char err[512] = "";
	int rc;
	size_t n;

	/* A bundle behind a URL says why a read failed (remote.c); before
	 * the mount that is stderr, after it the daemon's log, each reason
	 * once (pagein.c). */
	bo->log = apbfs_remote_log;
	bo->log_arg = fs;
	fs->remote = apb_bundle_is_url(path);
	rc = apb_bundle_open_ex(path, bo, &fs->bundle, err, sizeof(err));
	if (rc) {
		fprintf(stderr, "apbundlefs: %s: %s\n", shown,
			err[0] ? err : strerror(-rc));
		return rc;
	}
	rc = fs->remote ? 0 : apbfs_backing_open(fs, path, err, sizeof(err));
	if (rc) {
		fprintf(stderr, "apbundlefs: %s: %s\n", shown, err);
		return rc;
	}
	/* Where the filesystem cannot do O_DIRECT (tmpfs), reads stay
	 * buffered: correct, only slower and cached twice. A URL has no page
	 * cache to bypass (-EINVAL). */
	if (fs->opt.backing_direct && apb_bundle_direct_io(fs->bundle) != 0)
		fs->opt.backing_direct = false;
	rc = load_state(fs); /* a refused state= leaves no trace= file */
	if (rc)
		return rc;
	n = apb_bundle_count(fs->bundle);
	rc = apb_tree_build(fs->bundle, &fs->tree);
	if (rc == 0) {
		fs->opens = calloc(n ? n : 1, sizeof(*fs->opens));
		if (!fs->opens)
			rc = -ENOMEM;
	}
	if (rc == 0 && fs->opt.trace_path) {
		rc = apbfs_trace_open(fs, path, err, sizeof(err));
		if (rc) {
			fprintf(stderr, "apbundlefs: trace=%s: %s\n",
				fs->opt.trace_path, err);
			return rc;
		}
	}
	if (rc == 0) {
		struct apb_cache_config cfg = {
			.budget_bytes = fs->opt.max_memory,
			.chunk_size = fs->opt.chunk_size,
			.policy = fs->opt.eviction,
			.model_count = (uint32_t)n,
			.load = apbfs_pagein_load,
			.load_ctx = fs,
			/* NULL without trace=: the cache then pays one
			 * branch per access */
			.trace = fs->trace ? apbfs_trace_access : NULL,
			.trace_ctx = fs->trace,
			/* version 2 loads hash or decompress into the slots */
			.huge_pages = apb_bundle_layout(fs->bundle) ==
				      APB_LAYOUT_V2,
			.run_max = run_max_for(fs),
		};
		rc = apb_cache_new(&cfg, &fs->cache);
		if (rc == -ENOMEM) {
			cache_map_failed(&fs->opt);
			return rc;
		}
	}

	if (rc) {
		fprintf(stderr, "apbundlefs: %s: %s\n", shown, strerror(-rc));
		return rc;
	}
	rc = apbfs_models_check(fs, err, sizeof(err));
	if (rc) {
		fprintf(stderr, "apbundlefs: %s: %s\n", shown, err);
		return rc;
	}
	for (int i = 0; i < APBFS_NSPECIAL; i++)
		fs->special_ino[i] = apb_tree_count(fs->tree) + 1 + (uint64_t)i;
	fs->owner = getuid();
	apbfs_handles_init(fs);
	rc = apbfs_order_init(fs);
	if (rc)
		fprintf(stderr, "apbundlefs: %s: %s\n", shown, strerror(-rc));
	return rc;
}

static void teardown(struct apbfs *fs)
{
	apbfs_http_stop(fs); /* renders from everything below */
	apbfs_models_stop(fs); /* uses the prefetcher and the cache */
	apbfs_handles_free_all(fs); /* files still open at unmount */
	apbfs_order_fini(fs); /* no session left: models_stop ended them */
	if (fs->prefetcher) /* its workers use the cache */
		apb_prefetcher_free(fs->prefetcher);
	if (fs->cache)
		apb_cache_free(fs->cache);
	apbfs_trace_close(fs); /* after the last cache call */
	apb_tree_free(fs->tree);
	free(fs->opens);
	apbfs_backing_close(fs);
	if (fs->bundle)
		apb_bundle_close(fs->bundle);
	apbfs_pagein_fini(fs);
}

/* In the background, messages go to syslog, which adds "apbundlefs[PID]: "
 * itself (openlog) and ends each record: the "apbundlefs: " the messages
 * start with (for stderr, in the foreground) and their newline are cut.
 * fuse_log's levels are syslog's. */
static void log_to_syslog(enum fuse_log_level level, const char *fmt,
			  va_list ap)
{
	static const char prefix[] = "apbundlefs: ";
	char buf[8192]; /* a message names at most two 4096-byte names */
	const char *msg = buf;
	size_t n;

	vsnprintf(buf, sizeof(buf), fmt, ap);
	if (strncmp(msg, prefix, sizeof(prefix) - 1) == 0)
		msg += sizeof(prefix) - 1;
	n = strlen(msg);
	while (n > 0 && msg[n - 1] == '\n')
		n--;
	syslog((int)level, "%.*s", (int)n, msg);
}

/* One line at mount and one at unmount, for the system log: which bundle
 * on which mountpoint, with what budget and policy. */
static void log_mounted(const struct apbfs *fs)
{
	char mem[32], chunk[32];

	fuse_log(FUSE_LOG_INFO, "apbundlefs: mounted %s on %s: max_memory=%s "
		 "chunk_size=%s eviction=%s prefetch=%s%s%s\n", fs->bundle_label,
		 fs->mountpoint,
		 apb_size_format(fs->opt.max_memory, mem, sizeof(mem)),
		 apb_size_format(fs->opt.chunk_size, chunk, sizeof(chunk)),
		 apb_eviction_name(fs->opt.eviction),
		 fs->opt.prefetch ? "on" : "off",
		 fs->metrics_listen[0] ? " metrics_listen=" : "",
		 fs->metrics_listen);
}

static void log_unmounted(const struct apbfs *fs, int loop_rc)
{
	char why[64];

	if (loop_rc > 0)
		snprintf(why, sizeof(why), "on signal %d (%s)", loop_rc,
			 strsignal(loop_rc));
	else if (loop_rc == 0)
		snprintf(why, sizeof(why), "unmounted from outside");
	else
		snprintf(why, sizeof(why), "on error: %s", strerror(-loop_rc));
	fuse_log(FUSE_LOG_INFO, "apbundlefs: unmounted %s from %s: %s\n",
		 fs->bundle_label, fs->mountpoint, why);
}

/* Show the bundle in /proc/mounts; fuse_opt splits on unescaped commas. */
static int add_fsname(struct fuse_args *args, const char *bundle)
{
	size_t n = strlen(bundle);
	char *o = malloc(2 * n + sizeof("-ofsname="));
	char *p;
	int rc;

	if (!o)
		return -1;
	p = o + sprintf(o, "-ofsname=");
	for (const char *s = bundle; *s; s++) {
		if (*s == ',' || *s == '\\')
			*p++ = '\\';
		*p++ = *s;
	}
	*p = '\0';
	rc = fuse_opt_add_arg(args, o);
	free(o);
	return rc ? rc : fuse_opt_add_arg(args, "-osubtype=apbundlefs");
}

/* A password or a signed query in the bundle's URL would stay readable
 * by every user in /proc/PID/cmdline (ps): the argument is overwritten in
 * place with the redacted URL as soon as the command line is parsed
 * (cl.bundle is a copy), cut to the argument's length where a secret was
 * shorter than "***" (the cut falls after the first). */
static void hide_password(int argc, char *argv[], const char *bundle,
			  const char *shown)
{
	size_t n = strlen(bundle), m = strlen(shown);

	if (strcmp(bundle, shown) == 0)
		return;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], bundle) == 0) {
			memset(argv[i], 0, n);
			memcpy(argv[i], shown, m < n ? m : n);
		}
	}
}

/*
 * What libfuse logs while check_fuse_options() runs. fuse_set_log_func()
 * takes no argument to carry a buffer, hence a file-scope one; it is
 * written only in main()'s thread before any other thread exists, and the
 * default logger is back before check_fuse_options() returns.
 */
static char fuse_said[512];

static void log_to_buffer(enum fuse_log_level level, const char *fmt,
			  va_list ap)
{
	size_t n = strlen(fuse_said);

	(void)level;
	if (n < sizeof(fuse_said) - 1)
		vsnprintf(fuse_said + n, sizeof(fuse_said) - n, fmt, ap);
}

/*
 * Options neither apbundlefs nor fuse_parse_cmdline() took go to libfuse's
 * session and mount parsers, whose tables are not public. Let a session
 * that is never mounted parse a copy of them, before the bundle is opened
 * (a URL's open may take seconds), and say which option is unknown in one
 * line instead of libfuse's "fuse: unknown option(s): `-o foo=1'".
 * Returns 0, or -1 after the message.
 */
static int check_fuse_options(const struct fuse_args *args)
{
	static const struct fuse_lowlevel_ops no_ops;
	struct fuse_args copy = FUSE_ARGS_INIT(0, NULL);
	struct fuse_session *se = NULL;
	const char *prefix = "fuse: unknown option(s): `";
	char *list, *tok, *save = NULL, names[sizeof(fuse_said)] = "";
	int rc = -1, shown = 0;

	for (int i = 0; i < args->argc; i++)
		if (fuse_opt_add_arg(&copy, args->argv[i]) != 0)
			goto out;
	fuse_said[0] = '\0';
	fuse_set_log_func(log_to_buffer);
	se = fuse_session_new(&copy, &no_ops, sizeof(no_ops), NULL);
	fuse_set_log_func(NULL);
	if (se) {
		rc = 0;
		goto out;
	}
	/* With -d libfuse first logs its version: look past it. */
	list = strstr(fuse_said, prefix);
	if (!list) {
		/* Some other complaint (a bad value): its last line, as
		 * libfuse words it. */
		char *last = fuse_said, *nl;

		while ((nl = strchr(last, '\n')) && nl[1])
			last = nl + 1;
		last[strcspn(last, "\n")] = '\0';
		fprintf(stderr, "apbundlefs: %s\n",
			strncmp(last, "fuse: ", 6) ? last : last + 6);
		goto out;
	}
	/* "-o foo=1,bar --bogus'": name each option, without the -o. */
	list += strlen(prefix);
	list[strcspn(list, "'\n")] = '\0';
	for (tok = strtok_r(list, " ,", &save); tok;
	     tok = strtok_r(NULL, " ,", &save)) {
		size_t n = strlen(names);

		if (strcmp(tok, "-o") != 0)
			snprintf(names + n, sizeof(names) - n, "%s'%s'",
				 shown++ ? ", " : "", tok);
	}
	fprintf(stderr, "apbundlefs: unknown option%s %s (see apbundlefs "
		"--help)\n", shown > 1 ? "s" : "", names);
out:
	if (se)
		fuse_session_destroy(se);
	fuse_opt_free_args(&copy);
	return rc;
}

/* Mount, daemonize, run the loop, unmount; *mounted tells whether the
 * mount came up. */
static int serve(struct apbfs *fs, struct fuse_args *args,
		 struct fuse_cmdline_opts *o, bool *mounted)
{
	struct fuse_session *se;
	struct fuse_loop_config *lc = NULL;
	int rc = 1;

	se = fuse_session_new(args, &apbfs_ops, sizeof(apbfs_ops), fs);
	if (!se) /* libfuse has said which option it did not know */
		return 2;
	if (fuse_set_signal_handlers(se) != 0)
		goto out_destroy;
	if (fuse_session_mount(se, o->mountpoint) != 0)
		goto out_signals;
	*mounted = true;
	if (apbfs_find_bdi(o->mountpoint, fs->bdi, sizeof(fs->bdi)) != 0)
		fprintf(stderr, "apbundlefs: %s: mount not found in "
			"/proc/self/mountinfo; kernel readahead stays at its "
			"default\n", o->mountpoint);
	if (!o->foreground) {
		openlog("apbundlefs", LOG_PID, LOG_DAEMON);
		fuse_set_log_func(log_to_syslog);
	}
	fuse_daemonize(o->foreground);
	clock_gettime(CLOCK_REALTIME, &fs->mounted_at);
	/* Threads do not survive the fork in fuse_daemonize(): start the
	 * workers after it. Without them the mount works, without prefetch,
	 * pins or preloads. The workers serve readahead, preloads and
	 * model-level prefetch alike; prefetch=off only stops readahead. */
	int err = apb_prefetcher_new(fs->cache, PREFETCH_THREADS,
				     fs->opt.chunk_size, &fs->prefetcher);
	if (err == 0)
		err = apbfs_models_start(fs);
	if (err)
		fuse_log(FUSE_LOG_ERR, "apbundlefs: no prefetch, pins or "
			 "preloads: %s\n", strerror(-err));
	if (apbfs_http_start(fs) != 0) {
		fuse_log(FUSE_LOG_ERR, "apbundlefs: metrics_listen=%s: the HTTP "
			 "server did not start\n", fs->metrics_listen);
		fs->metrics_listen[0] = '\0';
	}
	log_mounted(fs);
	if (o->singlethread) {
		rc = fuse_session_loop(se);
	} else {
		lc = fuse_loop_cfg_create();
		if (lc) {
			fuse_loop_cfg_set_clone_fd(lc, (unsigned)o->clone_fd);
			if (o->max_idle_threads != UINT_MAX) /* unset */
				fuse_loop_cfg_set_idle_threads(
					lc, o->max_idle_threads);
			if (o->max_threads != UINT_MAX) /* UINT_MAX: unset */
				fuse_loop_cfg_set_max_threads(lc,
							      o->max_threads);
			rc = fuse_session_loop_mt(se, lc);
			fuse_loop_cfg_destroy(lc);
		}
	}
	/* A signal (SIGINT, SIGTERM, SIGHUP) ends the loop with its number,
	 * positive; that is the normal way to stop. Errors are negative. */
	log_unmounted(fs, rc);
	if (rc > 0)
		rc = 0;
	fuse_session_unmount(se);
out_signals:
	fuse_remove_signal_handlers(se);
out_destroy:
	fuse_session_destroy(se);
	return rc ? 1 : 0;
}

/*
 * glibc raises its mmap threshold each time a large mmap()ed block is
 * freed; after a few reads that span chunks, the reply buffers and
 * libfuse's 1 MiB request buffers all come from per-thread arenas, whose
 * touched pages stay resident (about 1 MiB per worker thread, measured) and
 * survive `clear`. A fixed threshold keeps every large buffer in its own
 * mapping, returned to the OS when freed. Small ones stay in the arenas,
 * which `clear` trims.
 */
static void bound_heap(void)
{
#ifdef __GLIBC__
	mallopt(M_MMAP_THRESHOLD, 128 * 1024);
#endif
}

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fuse_cmdline_opts o = {0};
	struct cmdline cl = {0};
	struct apbfs fs = {0};
	struct apb_bundle_options bo = {0};
	bool mounted = false;
	int ret = 1;

	apbfs_pagein_init(&fs); /* teardown undoes it */
	bound_heap();
	if (fuse_opt_parse(&args, &cl, option_spec, take_arg) != 0 ||
	    fuse_parse_cmdline(&args, &o) != 0) {
		ret = 2;
		goto out;
	}
	if (o.show_help) {
		usage(stdout);
		fuse_cmdline_help();
		fuse_lowlevel_help();
		ret = 0;
		goto out;
	}
	if (o.show_version) {
		printf("apbundlefs %s (libfuse %s)\n", APB_VERSION,
		       fuse_pkgversion());
		ret = 0;
		goto out;
	}
	if (!cl.bundle || !o.mountpoint || cl.nonopts > 2) {
		usage(stderr);
		ret = 2;
		goto out;
	}
	if (check_fuse_options(&args) != 0) {
		ret = 2;
		goto out;
	}
	cl.shown = apb_bundle_redact(cl.bundle);
	if (!cl.shown) {
		fprintf(stderr, "apbundlefs: %s\n", strerror(ENOMEM));
		goto out;
	}
	hide_password(argc, argv, cl.bundle, cl.shown);
	if (make_absolute("state=", &cl.state) ||
	    make_absolute("trace=", &cl.trace) ||
	    make_absolute("cache_dir=", &cl.cache_dir))
		goto out;
	if (resolve_options(&cl, &fs.opt) != 0 || read_fault_env(&fs.opt) ||
	    resolve_metrics(&cl) != 0 ||
	    resolve_s3(&cl, &bo) != 0 ||
	    resolve_cache_dir(&cl, &fs.opt, &bo) != 0) {
		ret = 2;
		goto out;
	}
	if ((!apb_bundle_is_url(cl.bundle) &&
	     outside_mount("", cl.bundle, o.mountpoint)) ||
	    outside_mount("state=", cl.state, o.mountpoint) ||
	    outside_mount("trace=", cl.trace, o.mountpoint) ||
	    outside_mount("cache_dir=", cl.cache_dir, o.mountpoint) ||
	    distinct_files(&cl))
		goto out;
	/* Others may then reach the files: let the kernel apply their modes
	 * (.control is 0200, the mounting user's), as a local file system
	 * does, before a request reaches the daemon. */
	if (cl.allow_other &&
	    fuse_opt_add_arg(&args, "-odefault_permissions") != 0)
		goto out;
	fs.bundle_name = cl.shown;
	fs.mountpoint = o.mountpoint;
	if (setup(&fs, cl.bundle, &bo) != 0 ||
	    add_fsname(&args, cl.shown) != 0 ||
	    label_bundle(&fs, &cl) != 0 || listen_metrics(&fs, &cl) != 0)
		goto out;
	ret = serve(&fs, &args, &o, &mounted);
out:
	if (!mounted) { /* nothing was learned: leave the state file be */
		apb_learn_free(fs.learn);
		fs.learn = NULL;
	}
	teardown(&fs);
	free(o.mountpoint);
	free(cl.bundle);
	free(cl.shown);
	free(cl.max_memory);
	free(cl.chunk_size);
	free(cl.eviction);
	free(cl.readahead);
	free(cl.prefetch);
	free(cl.prefetch_count);
	free(cl.pin);
	free(cl.preload);
	free(cl.state);
	free(cl.auto_preload);
	free(cl.learn_order);
	free(cl.backing_io);
	free(cl.trace);
	free(cl.trace_max);
	free(cl.s3_endpoint);
	free(cl.s3_region);
	free(cl.s3_profile);
	free(cl.s3_style);
	free(cl.cache_dir);
	free(cl.cache_dir_size);
	free(cl.metrics_listen);
	free(fs.label_storage);
	fuse_opt_free_args(&args);
	return ret;
}
