/*
 * apbfs.h - the daemon's context, shared by main.c (setup) and ops.c (the
 * FUSE low-level operations). Everything the daemon knows lives in one
 * struct apbfs reached through fuse_req_userdata(); there is no other
 * mutable global state.
 *
 * Inode numbers: 1 .. tree count are the tree's nodes (1 is the root);
 * the three control files follow them.
 */
#ifndef APBFS_H
#define APBFS_H

#include <apbundle/bundle.h>
#include <apbundle/cache.h>
#include <apbundle/learn.h>
#include <apbundle/name.h>
#include <apbundle/order.h>
#include <apbundle/prefetch.h>
#include <apbundle/report.h>
#include <apbundle/tree.h>

#include "../core/lock.h"

#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>

#include <pthread.h>
#include <stdbool.h>
#include <sys/types.h>
#include <time.h>

/* The control files, named by name.h's reserved names. */
enum apbfs_special {
	APBFS_STATS = APB_RESERVED_STATS,
	APBFS_METRICS = APB_RESERVED_METRICS,
	APBFS_CONTROL = APB_RESERVED_CONTROL,
	APBFS_NSPECIAL = APB_NRESERVED
};

struct apbfs_options {
	uint64_t max_memory;
	uint32_t chunk_size;
	enum apb_eviction eviction;
	bool kernel_cache;
	bool backing_direct;           /* bundle read with O_DIRECT */
	uint64_t readahead;            /* largest readahead window, bytes */
	bool prefetch;                 /* sequential-read prefetch on */
	uint32_t prefetch_count;       /* successors prefetched on open */
	uint32_t auto_preload;         /* most opened models preloaded */
	const char *pin_list;          /* "a:b" as given, or NULL */
	const char *preload_list;
	const char *state_path;        /* access counts kept here, or NULL */
	bool learn_order;              /* record and replay load orders */
	const char *trace_path;        /* chunk accesses recorded here, or NULL */
	uint64_t trace_max;            /* most bytes of the trace file */
	uint32_t fault_alloc_every;    /* test hook: APBFS_FAULT_ALLOC_EVERY */
};

/* What one open file carries (fi->fh): the document of .stats or .metrics
 * (docs.c), the readahead streams of a model, or the unfinished command
 * line of .control (control.c); or nothing (fh 0). */
struct apbfs_handle {
	struct apbfs_handle *prev, *next; /* apbfs.handles; handles_mu */
	struct apbfs_doc *doc;
	struct apb_readahead *ra;
	struct apb_order *order;        /* the model's session (order.c) */
	uint32_t model;                 /* with ra or order */
	struct apbfs_control_line *ctl;
};

/* docs.c: the live .stats/.metrics documents, which hold at most this
 * many bytes together (a shared one counted once), unless one alone is
 * larger. */
#define APBFS_DOCS_BYTES_MAX (32ull << 20)

struct apbfs_doc;

struct apbfs_docs {
	struct apb_mutex render_mu;       /* one render at a time */
	struct apb_mutex mu;              /* the fields below, every refs */
	struct apbfs_doc *newest[APBFS_METRICS + 1]; /* shareable, by kind */
	uint64_t bytes;                   /* of live documents */
	size_t count;                     /* live documents */
};

/* pagein.c's read log: which read errors the log has named. Each distinct
 * (model, byte offset, error) once, at most APBFS_READ_LOG_MAX of them
 * (then one line saying so), so a bundle rotting under a busy mount can
 * neither flood the log nor grow memory. */
#define APBFS_READ_LOG_MAX 1024
#define APBFS_READ_LOG_REMOTE UINT32_MAX /* model of a remote reason's entry */

struct apbfs_read_error {
	uint32_t model;
	int err;                       /* positive errno; EBADMSG: checksum */
	uint64_t offset;               /* first byte of the chunk named */
};

struct apbfs_read_log {
	struct apb_mutex mu;
	struct apbfs_read_error seen[APBFS_READ_LOG_MAX];
	size_t n;
	bool full;                     /* the "not naming further" line is out */
};

/* The daemon's counters behind .stats' "io" (struct apb_io_counters, which
 * docs.c fills from these just before rendering). */
struct apbfs_io_counters {
	atomic_uint_fast64_t read_requests;
	atomic_uint_fast64_t bytes_served;
	atomic_uint_fast64_t errors;
	atomic_uint_fast64_t checksum_errors;
	atomic_uint_fast64_t reads_sequential;
	atomic_uint_fast64_t reads_random;
	atomic_uint_fast64_t order_chunks;  /* order.c */
	atomic_uint_fast64_t order_hits;
	atomic_uint_fast64_t order_stopped;
};

/* Immutable after setup, except the atomics and what the cache guards. */
struct apbfs {
	struct apb_bundle *bundle;
	struct apb_tree *tree;
	struct apb_cache *cache;
	struct apb_prefetcher *prefetcher; /* NULL with prefetch=off */
	struct apbfs_backing *backing; /* backing.c: the local source's checks */
	const char *bundle_name;       /* BUNDLE, path or URL, as shown: no password */
	const char *bundle_label;      /* the same, a path made absolute: .stats
					* and the labels of .metrics */
	char *label_storage;           /* main.c's, behind bundle_label */
	const char *mountpoint;        /* canonical (fuse_parse_cmdline) */
	struct timespec mounted_at;    /* CLOCK_REALTIME; set before the loop */
	struct apbfs_http *http;       /* http.c; NULL without metrics_listen= */
	char metrics_listen[64];       /* "ADDR:PORT" bound; "" when off */
	bool remote;                   /* the bundle is a URL: no backing.c */
	atomic_bool source_changed;    /* the bundle changed since mount: set
					 * once, by backing.c (a file) or
					 * pagein.c (a URL) */
	struct apbfs_options opt;
	uid_t owner;                   /* the mounting user: may write .control */
	uint64_t special_ino[APBFS_NSPECIAL];
	struct apbfs_io_counters io;
	atomic_uint_fast64_t *opens;   /* per model */
	char bdi[32];                  /* set before the loop starts; "" if unknown */
	/* models.c; set up before the loop starts, then only read. */
	struct apb_learn *learn;       /* thread-safe itself */
	uint32_t *pins, *preloads;     /* model indices from pin=, preload= */
	size_t npins, npreloads;
	pthread_t startup;             /* pins and preloads after mounting */
	bool startup_running;
	/* Every live handle, so that those still open at unmount (RELEASE
	 * may never come) are freed at exit. */
	struct apb_mutex handles_mu;
	struct apbfs_handle handles;    /* list head; handles_mu */
	struct apbfs_docs docs;        /* docs.c */
	atomic_bool bdi_tuned;         /* the first open raised its readahead */
	struct apbfs_read_log read_log; /* pagein.c: failed reads named */
	atomic_uint_fast64_t fault_claims; /* pagein.c: for opt.fault_alloc_every */
	struct apbfs_trace *trace;     /* trace.c; NULL without trace= */
	/* order.c: the load-order session of each open model. */
	struct apb_mutex order_mu;
	struct apbfs_order_slot *order_slots; /* order_mu; NULL: off */
	bool order_ready;              /* order_mu initialized */
};

extern const struct fuse_lowlevel_ops apbfs_ops;

/* kernel.c: the mount's bdi ("MAJ:MIN") from /proc/self/mountinfo, and
 * its readahead window. Each returns 0 or a negative errno. */
int apbfs_find_bdi(const char *mountpoint, char *bdi, size_t bdi_len);
int apbfs_set_readahead(const char *bdi, uint64_t bytes);

/* models.c: check pin=/preload= names and that the pins fit (before
 * mounting; 0 or a negative errno with the reason in err), start the
 * mount-time work (after daemonizing), stop it and save the state. */
int apbfs_models_check(struct apbfs *fs, char *err, size_t err_len);
int apbfs_models_start(struct apbfs *fs);
void apbfs_models_stop(struct apbfs *fs);
/* An open of model: learn from it, prefetch what usually follows. */
void apbfs_model_opened(struct apbfs *fs, uint32_t model);
/* "prefetch", "pin" or "unpin" of model: 0 or a negative errno. */
int apbfs_models_control(struct apbfs *fs, const char *cmd, uint32_t model);

/* pagein.c: the page-in path (see its header). init before anything can
 * fail, fini at teardown. load is the
 * cache's loader (ctx: fs); a bundle block that fails verification fails its
 * load with -EBADMSG. read_failed: a model read failed on cache chunk
 * chunk with rc; counts it in io.errors, names it in the read log unless
 * the load already did, and returns the errno to reply with. */
void apbfs_pagein_init(struct apbfs *fs);
void apbfs_pagein_fini(struct apbfs *fs);
long apbfs_pagein_load(void *ctx, uint32_t model, uint64_t first,
		       void *const *bufs, size_t n, size_t cap, size_t *lens);
/* The bundle's log callback (apb_bundle_options.log, arg the struct
 * apbfs): the remote reader's lines, each distinct reason once, under the
 * read log's bound (pagein.c). */
void apbfs_remote_log(void *arg, enum apb_log_level level, const char *msg);
int apbfs_read_failed(struct apbfs *fs, uint32_t model, uint64_t chunk,
		      int rc);
/* Whether the bundle changed since mount (a local file: backing.c; a URL:
 * a read found the object changed or gone): model reads, hits included,
 * must fail with EIO. Thread-safe. */
bool apbfs_source_changed(struct apbfs *fs);

/* backing.c: the local source's part of the page-in path - the bundle
 * file itself, under the mount. open (at setup; 0 or a negative errno,
 * the reason in err) and close. check, after every load from the file:
 * 0, or -EIO once the file changed since mount (see backing.c for what
 * counts; it then sets fs->source_changed). Thread-safe. */
int apbfs_backing_open(struct apbfs *fs, const char *path, char *err,
		       size_t err_len);
void apbfs_backing_close(struct apbfs *fs);
int apbfs_backing_check(struct apbfs *fs);

/* trace.c: -o trace=FILE. open creates fs->opt.trace_path (a regular
 * file, not the bundle; 0 or a negative errno, the reason in err) before
 * the cache exists and sets fs->trace; access is the cache's trace hook
 * (ctx: fs->trace; thread-safe, never fails a read); close, once nothing
 * uses the cache any more, writes what is buffered and finalizes the
 * header. */
struct apbfs_trace;
int apbfs_trace_open(struct apbfs *fs, const char *bundle_path, char *err,
		     size_t err_len);
void apbfs_trace_access(void *ctx, uint32_t model, uint64_t index,
			uint32_t count, enum apb_cache_access kind);
void apbfs_trace_close(struct apbfs *fs);

/* order.c: learned load order (docs/USAGE.md). init at setup (0 or
 * -ENOMEM), fini at teardown. open at a model's open: its session, shared
 * by the model's open files, or NULL (off, no memory); close at the close
 * of a file that open gave a session. read notes a read of the model
 * through a file with session o, queues the prefetches the order calls
 * for, and returns whether the order covers every chunk of the read.
 * stop_all ends every session (their recordings go to fs->learn) before
 * the state is saved. Thread-safe. */
struct apbfs_order_slot;
int apbfs_order_init(struct apbfs *fs);
void apbfs_order_fini(struct apbfs *fs);
struct apb_order *apbfs_order_open(struct apbfs *fs, uint32_t model);
void apbfs_order_close(struct apbfs *fs, uint32_t model);
bool apbfs_order_read(struct apbfs *fs, struct apb_order *o, uint32_t model,
		      uint64_t off, size_t size);
void apbfs_order_stop_all(struct apbfs *fs);

/* ops.c: the list of open handles; init before the loop, free_all after. */
void apbfs_handles_init(struct apbfs *fs);
void apbfs_handles_free_all(struct apbfs *fs);

/* docs.c: init before the loop, destroy after every handle is freed.
 * doc_open renders kind (APBFS_STATS or APBFS_METRICS) and returns it in
 * *out, shared with earlier opens when it is the same: 0, -ENFILE (the
 * live documents are at APBFS_DOCS_BYTES_MAX) or -ENOMEM. doc_put drops
 * one open's reference (NULL: nothing). Thread-safe. */
void apbfs_docs_init(struct apbfs *fs);
void apbfs_docs_destroy(struct apbfs *fs);
int apbfs_doc_open(struct apbfs *fs, enum apbfs_special kind,
		   struct apbfs_doc **out);
/* kind rendered now, as an open would read it, outside the snapshots' cap
 * (http.c frees it once sent); NULL when memory runs out. */
char *apbfs_doc_render(struct apbfs *fs, enum apbfs_special kind,
		       size_t *len);

/* http.c: metrics_listen=. prepare binds spec (before mounting; 0 or a
 * negative errno with the reason in err, and fs->metrics_listen set to the
 * bound address), start serves it (after daemonizing), stop ends it. */
int apbfs_http_prepare(struct apbfs *fs, const char *spec, bool allow_remote,
		       char *err, size_t err_len);
int apbfs_http_start(struct apbfs *fs);
void apbfs_http_stop(struct apbfs *fs);
void apbfs_doc_put(struct apbfs *fs, struct apbfs_doc *d);
const char *apbfs_doc_text(const struct apbfs_doc *d, size_t *len);

/* control.c: the commands written to .control, a line at a time. Each
 * open handle keeps its unfinished line: control_write runs every line
 * the bytes complete and keeps the rest; control_flush (at close) runs a
 * last line that has no newline. Both return 0 or the negative errno of
 * the first failing line (-ENAMETOOLONG: a line longer than any command).
 * new returns NULL when memory runs out; free(NULL) does nothing. */
struct apbfs_control_line;
struct apbfs_control_line *apbfs_control_new(void);
void apbfs_control_free(struct apbfs_control_line *c);
int apbfs_control_write(struct apbfs *fs, struct apbfs_control_line *c,
			const char *buf, size_t size);
int apbfs_control_flush(struct apbfs *fs, struct apbfs_control_line *c);

#endif
