/*
 * ops.c - the FUSE low-level operations: translate each request into calls
 * of the tree, the cache and the report modules, and reply. No format or
 * caching logic lives here.
 *
 * Reads of model files are answered straight from the cached chunks with
 * fuse_reply_iov() while references pin them (see struct read_req).
 *
 * The control files: .stats and .metrics take a snapshot document at open
 * (docs.c) and serve reads from it (direct_io, so their st_size of 0 does
 * not stop readers); .control takes one command per written line, however
 * the lines are split into writes (control.c).
 */
#include "apbfs.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

/* The tree is the one read at mount and never changes: a bundle that
 * changes under the mount fails its reads (backing.c) rather than showing
 * new names. So names and attributes may be cached for long. */
#define ATTR_TIMEOUT_S 86400.0

void apbfs_handles_init(struct apbfs *fs)
{
	apb_mutex_init(&fs->handles_mu);
	fs->handles.prev = fs->handles.next = &fs->handles;
	apbfs_docs_init(fs);
}

/* A handle for fi->fh owning one of doc, ra, ctl; NULL (and nothing
 * owned) if memory runs out. */
static struct apbfs_handle *handle_new(struct apbfs *fs,
				       struct apbfs_doc *doc,
				       struct apb_readahead *ra,
				       struct apbfs_control_line *ctl)
{
	struct apbfs_handle *h = calloc(1, sizeof(*h));

	if (!h)
		return NULL;
	h->doc = doc;
	h->ra = ra;
	h->ctl = ctl;
	apb_mutex_lock(&fs->handles_mu);
	h->next = fs->handles.next;
	h->prev = &fs->handles;
	h->next->prev = h;
	fs->handles.next = h;
	apb_mutex_unlock(&fs->handles_mu);
	return h;
}

static void handle_free(struct apbfs *fs, struct apbfs_handle *h)
{
	apb_mutex_lock(&fs->handles_mu);
	h->prev->next = h->next;
	h->next->prev = h->prev;
	apb_mutex_unlock(&fs->handles_mu);
	if (h->order)
		apbfs_order_close(fs, h->model);
	apbfs_doc_put(fs, h->doc);
	apb_readahead_free(h->ra);
	apbfs_control_free(h->ctl);
	free(h);
}

void apbfs_handles_free_all(struct apbfs *fs)
{
	if (!fs->handles.next) /* never initialized */
		return;
	while (fs->handles.next != &fs->handles)
		handle_free(fs, fs->handles.next);
	apb_mutex_destroy(&fs->handles_mu);
	apbfs_docs_destroy(fs);
}

static struct apbfs_handle *handle_of(const struct fuse_file_info *fi)
{
	return (struct apbfs_handle *)(uintptr_t)fi->fh;
}

static struct apbfs *ctx(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static int special_of(const struct apbfs *fs, fuse_ino_t ino)
{
	for (int i = 0; i < APBFS_NSPECIAL; i++)
		if (fs->special_ino[i] == ino)
			return i;
	return -1;
}

static int fill_attr(const struct apbfs *fs, fuse_ino_t ino, struct stat *st)
{
	const struct stat *bst = apb_bundle_stat(fs->bundle);
	const struct apb_tree_node *n = apb_tree_node(fs->tree, ino);
	int sp = special_of(fs, ino);

	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_uid = fs->owner;
	st->st_gid = getgid();
	st->st_atim = bst->st_atim;
	st->st_mtim = bst->st_mtim;
	st->st_ctim = bst->st_ctim;
	st->st_blksize = fs->opt.chunk_size;
	st->st_nlink = 1;
	if (sp >= 0) {
		st->st_mode = S_IFREG | (sp == APBFS_CONTROL ? 0200 : 0444);
		return 0;
	}
	if (!n)
		return -ENOENT;
	if (n->is_dir) {
		st->st_mode = S_IFDIR | 0555;
		st->st_nlink = 2;
		return 0;
	}
	st->st_mode = S_IFREG | 0444;
	st->st_size = (off_t)apb_bundle_model(fs->bundle, n->model)->size;
	st->st_blocks = (st->st_size + 511) / 512;
	return 0;
}

static void reply_entry(fuse_req_t req, struct apbfs *fs, fuse_ino_t ino)
{
	struct fuse_entry_param e;

	memset(&e, 0, sizeof(e));
	e.ino = ino;
	e.attr_timeout = special_of(fs, ino) >= 0 ? 0.0 : ATTR_TIMEOUT_S;
	e.entry_timeout = ATTR_TIMEOUT_S;
	if (fill_attr(fs, ino, &e.attr) != 0) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	fuse_reply_entry(req, &e);
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct apbfs *fs = ctx(req);
	uint64_t ino;
	int rc;

	if (parent == APB_TREE_ROOT)
		for (int i = 0; i < APBFS_NSPECIAL; i++)
			if (strcmp(name, apb_reserved_names[i]) == 0) {
				reply_entry(req, fs, fs->special_ino[i]);
				return;
			}
	rc = apb_tree_lookup(fs->tree, parent, name, &ino);
	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	reply_entry(req, fs, ino);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	struct apbfs *fs = ctx(req);
	struct stat st;
	(void)fi;

	if (fill_attr(fs, ino, &st) != 0) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	fuse_reply_attr(req, &st, special_of(fs, ino) >= 0 ? 0.0 : ATTR_TIMEOUT_S);
}

/* Directory offsets: 0 ".", 1 "..", then the children in name order, then,
 * in the root only, the control files. */
static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	struct apbfs *fs = ctx(req);
	const struct apb_tree_node *dir = apb_tree_node(fs->tree, ino);
	size_t nkids, total, used = 0;
	char *buf;
	(void)fi;

	if (!dir) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	if (!dir->is_dir) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	nkids = dir->nchildren;
	total = 2 + nkids + (ino == APB_TREE_ROOT ? APBFS_NSPECIAL : 0);
	buf = malloc(size);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	for (size_t i = (size_t)off; i < total; i++) {
		struct stat st = {0};
		const char *name;
		size_t n;

		if (i == 0) {
			name = ".";
			st.st_ino = ino;
		} else if (i == 1) {
			name = "..";
			st.st_ino = dir->parent;
		} else if (i < 2 + nkids) {
			st.st_ino = apb_tree_child(fs->tree, ino, i - 2);
			name = apb_tree_node(fs->tree, st.st_ino)->name;
		} else {
			name = apb_reserved_names[i - 2 - nkids];
			st.st_ino = fs->special_ino[i - 2 - nkids];
		}
		if (fill_attr(fs, st.st_ino, &st) != 0)
			st.st_mode = S_IFDIR;
		n = fuse_add_direntry(req, buf + used, size - used, name, &st,
				      (off_t)(i + 1));
		if (n > size - used)
			break;
		used += n;
	}
	fuse_reply_buf(req, buf, used);
	free(buf);
}

static void open_special(fuse_req_t req, struct apbfs *fs, int sp,
			 struct fuse_file_info *fi)
{
	int acc = fi->flags & O_ACCMODE;
	struct apbfs_control_line *ctl = NULL;
	struct apbfs_doc *d = NULL;
	struct apbfs_handle *h;
	int rc;

	fi->direct_io = 1;
	if (sp == APBFS_CONTROL) {
		if (acc != O_WRONLY || fuse_req_ctx(req)->uid != fs->owner) {
			fuse_reply_err(req, EACCES);
			return;
		}
		ctl = apbfs_control_new();
		rc = ctl ? 0 : -ENOMEM;
	} else if (acc != O_RDONLY || (fi->flags & O_TRUNC)) {
		rc = -EROFS;
	} else {
		rc = apbfs_doc_open(fs, (enum apbfs_special)sp, &d);
	}
	h = rc == 0 ? handle_new(fs, d, NULL, ctl) : NULL;
	if (!h) {
		apbfs_doc_put(fs, d);
		apbfs_control_free(ctl);
		fuse_reply_err(req, rc ? -rc : ENOMEM);
		return;
	}
	fi->fh = (uint64_t)(uintptr_t)h;
	if (fuse_reply_open(req, fi) != 0) /* interrupted: no RELEASE comes */
		handle_free(fs, h);
}

/*
 * See kernel.c: only now, after INIT, can the window be raised. The kernel
 * keeps one largest request (1 MiB) ahead of a sequential reader, which
 * makes requests large; the daemon's prefetcher goes further, up to
 * readahead=. A kernel window as deep as the daemon's would send the whole
 * window as simultaneous demand requests, racing the prefetcher for the
 * same chunks (docs/DESIGN.md has the measurements).
 */
#define KERNEL_READAHEAD (1ull << 20)
static void tune_kernel_readahead(struct apbfs *fs)
{
	int rc = apbfs_set_readahead(fs->bdi, KERNEL_READAHEAD);

	if (rc)
		fuse_log(FUSE_LOG_WARNING, "apbundlefs: cannot raise the kernel "
			 "readahead of bdi %s: %s; large reads arrive in "
			 "smaller pieces\n", fs->bdi, strerror(-rc));
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct apbfs *fs = ctx(req);
	struct apb_readahead *ra;
	const struct apb_tree_node *n = apb_tree_node(fs->tree, ino);
	int sp = special_of(fs, ino);

	if (sp >= 0) {
		open_special(req, fs, sp, fi);
		return;
	}
	if (!n) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (fs->bdi[0] && !atomic_exchange(&fs->bdi_tuned, true))
		tune_kernel_readahead(fs);
	atomic_fetch_add(&fs->opens[n->model], 1);
	fi->keep_cache = fs->opt.kernel_cache;
	/* Without memory for the streams this open reads without
	 * readahead; that is slower, not wrong. */
	if (fs->opt.prefetch && fs->prefetcher &&
	    apb_readahead_new(fs->opt.chunk_size, &ra) == 0) {
		struct apbfs_handle *h;

		/* A URL: prefetch in whole runs, one request each (main.c) */
		if (fs->remote)
			apb_readahead_set_batch(ra, apb_cache_run_max(fs->cache));
		h = handle_new(fs, NULL, ra, NULL);
		if (h) {
			fi->fh = (uint64_t)(uintptr_t)h;
			h->model = n->model;
			/* Before the reply: the order's first window is
			 * loading by the time the first read arrives. */
			h->order = apbfs_order_open(fs, n->model);
		} else {
			apb_readahead_free(ra);
		}
	}
	/* An open interrupted before our reply gets no RELEASE: undo it
	 * here, as libfuse's high-level layer does. */
	if (fuse_reply_open(req, fi) != 0) {
		if (fi->fh)
			handle_free(fs, handle_of(fi));
		atomic_fetch_sub(&fs->opens[n->model], 1);
		return;
	}
	apbfs_model_opened(fs, n->model);
}

static void op_release(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	struct apbfs *fs = ctx(req);

	(void)ino;
	if (fi->fh)
		handle_free(fs, handle_of(fi));
	fuse_reply_err(req, 0);
}

static void read_doc(fuse_req_t req, const struct apbfs_doc *d, size_t size,
		     off_t off)
{
	size_t len;
	const char *text = apbfs_doc_text(d, &len);

	if ((uint64_t)off >= len) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	if (size > len - (size_t)off)
		size = len - (size_t)off;
	/* Reply from a copy this thread frees, not from the document, which
	 * the RELEASE of this file frees on another thread. The kernel does
	 * order that RELEASE after this reply, but no tool can check an
	 * order kept inside the kernel, and a monitoring read can afford a
	 * copy. */
	char *copy = malloc(size);
	if (!copy) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	memcpy(copy, text + off, size);
	fuse_reply_buf(req, copy, size);
	free(copy);
}

/*
 * A read in progress. Chunks are held while the reply is assembled as an
 * iovec pointing into them: the kernel's copy out of the daemon is then the
 * only copy. Taking a second reference must not wait for a slot (cache.h),
 * so later chunks are taken with apb_cache_tryget(); when that finds no
 * room, or the read spans more than HELD_MAX chunks, the read "spills":
 * what is held is copied into a buffer and released, and the rest is copied
 * in one blocking get at a time. Either way every chunk is got once, so the
 * hit and miss counts do not depend on the path taken.
 */
#define HELD_MAX 32

struct read_req {
	struct apbfs *fs;
	uint32_t model;
	struct apb_chunk *held[HELD_MAX];
	struct iovec iov[HELD_MAX];
	int nheld;
	char *buf;    /* once spilled: the reply, filled to done */
	size_t done;
};

static void release_held(struct read_req *r)
{
	for (int i = 0; i < r->nheld; i++)
		apb_cache_put(r->fs->cache, r->held[i]);
	r->nheld = 0;
}

static int spill(struct read_req *r, size_t size)
{
	r->buf = malloc(size);
	if (!r->buf)
		return -ENOMEM;
	for (int i = 0; i < r->nheld; i++) {
		memcpy(r->buf + r->done, r->iov[i].iov_base, r->iov[i].iov_len);
		r->done += r->iov[i].iov_len;
	}
	release_held(r);
	return 0;
}

/* Add bytes [in, in + len) of chunk idx to the reply; the read goes on to
 * the ahead chunks after it, which a miss of idx loads with it. */
static int add_chunk(struct read_req *r, uint64_t idx, uint32_t ahead,
		     size_t in, size_t len, size_t size)
{
	struct apb_cache *cache = r->fs->cache;
	struct apb_chunk *c;
	bool may_wait;
	int rc;

	if (!r->buf && r->nheld == HELD_MAX && (rc = spill(r, size)))
		return rc;
	may_wait = r->buf || r->nheld == 0; /* holding nothing */
	rc = apb_cache_get_ahead(cache, r->model, idx, ahead, may_wait, &c);
	if (rc == -EAGAIN && !may_wait) {
		if ((rc = spill(r, size)))
			return rc;
		rc = apb_cache_get_ahead(cache, r->model, idx, ahead, true, &c);
	}
	if (rc)
		return rc;
	if (apb_chunk_len(c) < in + len) { /* the bundle lost bytes */
		apb_cache_put(cache, c);
		return -EIO;
	}
	if (r->buf) {
		memcpy(r->buf + r->done, (const char *)apb_chunk_data(c) + in, len);
		r->done += len;
		apb_cache_put(cache, c);
		return 0;
	}
	r->held[r->nheld] = c;
	r->iov[r->nheld].iov_base = (char *)apb_chunk_data(c) + in;
	r->iov[r->nheld].iov_len = len;
	r->nheld++;
	return 0;
}

static void read_model(fuse_req_t req, struct apbfs *fs, uint32_t model,
		       size_t size, uint64_t off)
{
	uint64_t msize = apb_bundle_model(fs->bundle, model)->size;
	uint64_t cs = fs->opt.chunk_size, first, last, idx;
	struct read_req r = {.fs = fs, .model = model};
	int rc = 0;

	if (off >= msize || size == 0) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	if (size > msize - off)
		size = (size_t)(msize - off);
	first = off / cs;
	last = (off + size - 1) / cs;
	for (idx = first; idx <= last && rc == 0; idx++) {
		uint64_t start = idx == first ? off : idx * cs;
		uint64_t end = idx == last ? off + size : (idx + 1) * cs;
		uint64_t rest = last - idx;

		rc = add_chunk(&r, idx, rest < UINT32_MAX ? (uint32_t)rest
							  : UINT32_MAX,
			       (size_t)(start - idx * cs),
			       (size_t)(end - start), size);
	}
	if (rc) {
		release_held(&r);
		free(r.buf);
		fuse_reply_err(req, apbfs_read_failed(fs, model, idx - 1, rc));
		return;
	}
	/* Count before replying: the reader may look at .stats the moment
	 * its read returns. */
	atomic_fetch_add(&fs->io.bytes_served, size);
	if (r.buf)
		fuse_reply_buf(req, r.buf, size);
	else
		fuse_reply_iov(req, r.iov, r.nheld);
	release_held(&r);
	free(r.buf);
}

/* Queue the readahead this read calls for before serving it, so that the
 * workers' loads overlap with the demand read's own. The prefetcher
 * splits the window into jobs for its workers; a full queue drops it:
 * prefetch is advice. With queue false (the learned order covers the
 * read) the stream still follows the read, but queues nothing. */
static void read_ahead(struct apbfs *fs, struct apb_readahead *ra,
		       uint32_t model, uint64_t off, size_t size, bool queue)
{
	uint64_t first, msize = apb_bundle_model(fs->bundle, model)->size;
	uint64_t window = apb_prefetcher_window(fs->prefetcher,
						fs->opt.readahead);
	uint32_t count;

	if (apb_readahead_note(ra, off, size, msize, window, &first, &count))
		atomic_fetch_add(&fs->io.reads_sequential, 1);
	else
		atomic_fetch_add(&fs->io.reads_random, 1);
	if (queue)
		(void)apb_prefetcher_submit(fs->prefetcher, model, first,
					    count);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct apbfs *fs = ctx(req);
	const struct apb_tree_node *n;
	int sp = special_of(fs, ino);

	if (sp == APBFS_STATS || sp == APBFS_METRICS) {
		read_doc(req, handle_of(fi)->doc, size, off);
		return;
	}
	n = apb_tree_node(fs->tree, ino);
	if (!n || n->is_dir || off < 0) {
		fuse_reply_err(req, n && n->is_dir ? EISDIR : EINVAL);
		return;
	}
	atomic_fetch_add(&fs->io.read_requests, 1);
	if (apbfs_source_changed(fs)) { /* the log said why, once */
		atomic_fetch_add(&fs->io.errors, 1);
		fuse_reply_err(req, EIO);
		return;
	}
	if (fi->fh) {
		struct apbfs_handle *h = handle_of(fi);
		bool covered = h->order &&
			       apbfs_order_read(fs, h->order, n->model,
						(uint64_t)off, size);

		read_ahead(fs, h->ra, n->model, (uint64_t)off, size,
			   !covered);
	}
	read_model(req, fs, n->model, size, (uint64_t)off);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf,
		     size_t size, off_t off, struct fuse_file_info *fi)
{
	struct apbfs *fs = ctx(req);
	int rc;
	(void)off;

	if (special_of(fs, ino) != APBFS_CONTROL) {
		fuse_reply_err(req, EROFS);
		return;
	}
	rc = apbfs_control_write(fs, handle_of(fi)->ctl, buf, size);
	if (rc)
		fuse_reply_err(req, -rc);
	else
		fuse_reply_write(req, size);
}

/* Every close() of a descriptor: .control runs its last line here, so
 * that close() reports that line's error. */
static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct apbfs *fs = ctx(req);
	struct apbfs_handle *h = handle_of(fi);

	(void)ino;
	fuse_reply_err(req, h && h->ctl ? -apbfs_control_flush(fs, h->ctl) : 0);
}

/* `echo clear > .control` truncates before it writes; that is the only
 * attribute change allowed, and it changes nothing. */
static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr,
		       int to_set, struct fuse_file_info *fi)
{
	struct apbfs *fs = ctx(req);
	struct stat st;
	(void)fi;

	if (special_of(fs, ino) == APBFS_CONTROL && to_set == FUSE_SET_ATTR_SIZE &&
	    attr->st_size == 0 && fuse_req_ctx(req)->uid == fs->owner) {
		fill_attr(fs, ino, &st);
		fuse_reply_attr(req, &st, 0.0);
		return;
	}
	fuse_reply_err(req, EROFS);
}

static void op_access(fuse_req_t req, fuse_ino_t ino, int mask)
{
	struct apbfs *fs = ctx(req);
	int sp = special_of(fs, ino);

	if (sp < 0 && !apb_tree_node(fs->tree, ino)) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	if ((mask & W_OK) && sp != APBFS_CONTROL) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (sp == APBFS_CONTROL && fuse_req_ctx(req)->uid != fs->owner) {
		fuse_reply_err(req, EACCES); /* as open() would answer */
		return;
	}
	fuse_reply_err(req, 0);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct apbfs *fs = ctx(req);
	struct statvfs sv;
	(void)ino;

	memset(&sv, 0, sizeof(sv));
	sv.f_bsize = fs->opt.chunk_size;
	sv.f_frsize = 4096;
	sv.f_blocks = (fsblkcnt_t)((apb_bundle_stat(fs->bundle)->st_size + 4095) / 4096);
	sv.f_files = apb_tree_count(fs->tree) + APBFS_NSPECIAL;
	sv.f_namemax = 255;
	sv.f_flag = ST_RDONLY | ST_NOSUID | ST_NODEV;
	fuse_reply_statfs(req, &sv);
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC)
		conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
	/* Readahead requests are "background" requests; the kernel's default
	 * of 12 in flight throttles a multi-MiB window of 1 MiB requests. */
	conn->max_background = 64;
	conn->congestion_threshold = 48;
	conn->want &= ~(unsigned)FUSE_CAP_WRITEBACK_CACHE;
}

/* Every operation that would change the tree. */
static void erofs(fuse_req_t req)
{
	fuse_reply_err(req, EROFS);
}

static void op_mknod(fuse_req_t req, fuse_ino_t p, const char *n, mode_t m,
		     dev_t d)
{
	(void)p, (void)n, (void)m, (void)d;
	erofs(req);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t p, const char *n, mode_t m)
{
	(void)p, (void)n, (void)m;
	erofs(req);
}

static void op_unlink(fuse_req_t req, fuse_ino_t p, const char *n)
{
	(void)p, (void)n;
	erofs(req);
}

static void op_symlink(fuse_req_t req, const char *l, fuse_ino_t p,
		       const char *n)
{
	(void)l, (void)p, (void)n;
	erofs(req);
}

static void op_rename(fuse_req_t req, fuse_ino_t p, const char *n,
		      fuse_ino_t np, const char *nn, unsigned int f)
{
	(void)p, (void)n, (void)np, (void)nn, (void)f;
	erofs(req);
}

static void op_link(fuse_req_t req, fuse_ino_t i, fuse_ino_t np,
		    const char *nn)
{
	(void)i, (void)np, (void)nn;
	erofs(req);
}

static void op_create(fuse_req_t req, fuse_ino_t p, const char *n, mode_t m,
		      struct fuse_file_info *fi)
{
	(void)p, (void)n, (void)m, (void)fi;
	erofs(req);
}

static void op_setxattr(fuse_req_t req, fuse_ino_t i, const char *n,
			const char *v, size_t s, int f)
{
	(void)i, (void)n, (void)v, (void)s, (void)f;
	erofs(req);
}

static void op_removexattr(fuse_req_t req, fuse_ino_t i, const char *n)
{
	(void)i, (void)n;
	erofs(req);
}

static void op_fallocate(fuse_req_t req, fuse_ino_t i, int m, off_t o,
			 off_t l, struct fuse_file_info *fi)
{
	(void)i, (void)m, (void)o, (void)l, (void)fi;
	erofs(req);
}

const struct fuse_lowlevel_ops apbfs_ops = {
	.init = op_init,
	.lookup = op_lookup,
	.getattr = op_getattr,
	.setattr = op_setattr,
	.readdir = op_readdir,
	.open = op_open,
	.release = op_release,
	.flush = op_flush,
	.read = op_read,
	.write = op_write,
	.access = op_access,
	.statfs = op_statfs,
	.mknod = op_mknod,
	.mkdir = op_mkdir,
	.unlink = op_unlink,
	.rmdir = op_unlink,
	.symlink = op_symlink,
	.rename = op_rename,
	.link = op_link,
	.create = op_create,
	.setxattr = op_setxattr,
	.removexattr = op_removexattr,
	.fallocate = op_fallocate,
};
