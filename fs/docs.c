/*
 * docs.c - the documents behind open .stats and .metrics files.
 *
 * Each open takes a snapshot (docs/USAGE.md, ".stats"): the document is
 * rendered at open and read until release. Under allow_other any user may
 * open these files, so what the open files hold must be bounded, or one
 * user holding many opens of .stats on a large bundle (about 16 MiB each
 * at 100,000 models) grows the daemon without limit. Two rules:
 *
 *   - sharing: an open whose rendering is byte for byte the newest live
 *     document of its kind takes a reference to that document and frees
 *     its own copy. Nothing is lost: the open still reads exactly what a
 *     render at its open gave. Opens with no read or control command
 *     between them (a monitor polling, or many opens at once) hold one
 *     copy;
 *   - a cap: live documents (distinct ones; a shared one counts once)
 *     hold at most APBFS_DOCS_BYTES_MAX bytes together. An open whose new
 *     document would go past it fails with ENFILE (the mount's open
 *     snapshots are full) until others are closed. One document is always
 *     admitted when none is live, so a bundle whose document alone is
 *     larger than the cap can still be read, one snapshot at a time.
 *
 * Renders run one at a time (render_mu): the copy being rendered is the
 * only memory the cap does not count, so at most one such copy exists.
 * (metrics_listen='s scrapes render under render_mu too, apbfs_doc_render(),
 * and hold their text until sent; fs/http.c bounds them.)
 * Documents then hold at most max(APBFS_DOCS_BYTES_MAX, one document)
 * plus the one being rendered.
 *
 * Locks: render_mu, then mu (render_mu -> mu; a render takes the cache's
 * lock under render_mu, never under mu). mu guards the counts, newest[]
 * and every refs.
 */
#include "apbfs.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct apbfs_doc {
	char *text;
	size_t len;
	unsigned refs;       /* opens reading it; docs.mu */
	enum apbfs_special kind;
};

void apbfs_docs_init(struct apbfs *fs)
{
	apb_mutex_init(&fs->docs.render_mu);
	apb_mutex_init(&fs->docs.mu);
}

void apbfs_docs_destroy(struct apbfs *fs)
{
	apb_mutex_destroy(&fs->docs.mu);
	apb_mutex_destroy(&fs->docs.render_mu);
}

static char *render(struct apbfs *fs, enum apbfs_special kind, size_t *len)
{
	size_t n = apb_bundle_count(fs->bundle);
	struct apb_io_counters io = {
		.read_requests = atomic_load(&fs->io.read_requests),
		.bytes_served = atomic_load(&fs->io.bytes_served),
		.errors = atomic_load(&fs->io.errors),
		.checksum_errors = atomic_load(&fs->io.checksum_errors),
		.reads_sequential = atomic_load(&fs->io.reads_sequential),
		.reads_random = atomic_load(&fs->io.reads_random),
		.order_chunks = atomic_load(&fs->io.order_chunks),
		.order_hits = atomic_load(&fs->io.order_hits),
		.order_stopped = atomic_load(&fs->io.order_stopped),
	};
	struct apb_report_source src = {
		.bundle = fs->bundle, .cache = fs->cache,
		.policy = apb_eviction_name(fs->opt.eviction),
		.chunk_size = fs->opt.chunk_size, .io = &io,
		.bundle_path = fs->bundle_label, .mountpoint = fs->mountpoint,
		.format_version = apb_bundle_layout(fs->bundle) == APB_LAYOUT_V2
				  ? 2 : 1,
		.metrics_listen = fs->metrics_listen[0] ? fs->metrics_listen
							: NULL,
		.start_time = (double)fs->mounted_at.tv_sec +
			      (double)(fs->mounted_at.tv_nsec / 1000000) / 1e3,
	};
	uint64_t *opens = malloc((n ? n : 1) * sizeof(*opens));
	char *text;

	if (!opens)
		return NULL;
	for (size_t i = 0; i < n; i++)
		opens[i] = atomic_load(&fs->opens[i]);
	src.opens = opens;

	text = kind == APBFS_STATS ? apb_report_json(&src, len)
				   : apb_report_metrics(&src, len);
	free(opens);
	return text;
}

char *apbfs_doc_render(struct apbfs *fs, enum apbfs_special kind,
		       size_t *len)
{
	char *text;

	apb_mutex_lock(&fs->docs.render_mu);
	text = render(fs, kind, len);
	apb_mutex_unlock(&fs->docs.render_mu);
	return text;
}

/* Share newest[kind] if it holds text, else admit text as a new document
 * if the cap allows (docs.mu held). Takes text over in both cases. */
static int admit(struct apbfs *fs, enum apbfs_special kind, char *text,
		 size_t len, struct apbfs_doc **out)
{
	struct apbfs_docs *ds = &fs->docs;
	struct apbfs_doc *d = ds->newest[kind];

	apb_assert_held(&ds->mu);
	if (d && d->len == len && memcmp(d->text, text, len) == 0) {
		d->refs++;
		free(text);
		*out = d;
		return 0;
	}
	if (ds->count > 0 && ds->bytes + len > APBFS_DOCS_BYTES_MAX) {
		free(text);
		return -ENFILE;
	}
	d = malloc(sizeof(*d));
	if (!d) {
		free(text);
		return -ENOMEM;
	}
	*d = (struct apbfs_doc){.text = text, .len = len, .refs = 1,
				.kind = kind};
	ds->count++;
	ds->bytes += len;
	ds->newest[kind] = d; /* an older one lives on, unshared, until closed */
	*out = d;
	return 0;
}

int apbfs_doc_open(struct apbfs *fs, enum apbfs_special kind,
		   struct apbfs_doc **out)
{
	struct apbfs_docs *ds = &fs->docs;
	char *text;
	size_t len;
	int rc;

	apb_mutex_lock(&ds->render_mu);
	text = render(fs, kind, &len);
	if (!text) {
		rc = -ENOMEM;
		goto out;
	}
	apb_mutex_lock(&ds->mu);
	rc = admit(fs, kind, text, len, out);
	apb_mutex_unlock(&ds->mu);
out:
	apb_mutex_unlock(&ds->render_mu);
	return rc;
}

void apbfs_doc_put(struct apbfs *fs, struct apbfs_doc *d)
{
	struct apbfs_docs *ds = &fs->docs;
	bool last;

	if (!d)
		return;
	apb_mutex_lock(&ds->mu);
	last = --d->refs == 0;
	if (last) {
		ds->count--;
		ds->bytes -= d->len;
		if (ds->newest[d->kind] == d)
			ds->newest[d->kind] = NULL;
	}
	apb_mutex_unlock(&ds->mu);
	if (last) {
		free(d->text);
		free(d);
	}
}

const char *apbfs_doc_text(const struct apbfs_doc *d, size_t *len)
{
	*len = d->len;
	return d->text;
}
