/*
 * order.c - learned load order in the daemon (docs/USAGE.md, "Learned load
 * order"): one session (core/order.c) per open model, recorded into
 * learn.c at the model's last close and replayed through the prefetcher
 * at its next first open.
 *
 * Sessions. A model's session starts at an open when none of its files is
 * open, and ends at the close of the last one: overlapping opens of one
 * model share a session, so "first read after open" means the first read
 * of a chunk by any of them since the model was last not open at all. A
 * program that opens a model twice while loading it (a probe, then the
 * load) records one order; a second program loading it at the same time
 * adds its first reads to the same order. At the end the recording is
 * offered to learn.c, which keeps it or the older order
 * (apb_learn_offer_order(): the most recent complete-enough one wins).
 *
 * Replay. A session that starts with a learned order hands the first
 * window of it to the prefetcher at once (the reader's first reads are
 * then already loading), and after each read the part of the order up to
 * a window past the reader. The window is the readahead window the
 * prefetcher allows now (readahead=, shrunk while prefetches are wasted),
 * so the learned order takes what sequential readahead would and is
 * bounded the same way: its chunks are prefetches, under the prefetch
 * share of the budget, never evicting unread prefetched chunks or pinned
 * ones. Its ranges carry the session as their prefetcher tag: when the
 * reader leaves the order, or the last file closes, what is still queued
 * is dropped. A read all of whose chunks are in the order does not also
 * queue sequential readahead (ops.c): the order already covers it; the
 * prefetcher's single-flight cache would not load a chunk twice anyway.
 *
 * Counters (io.order_*, .stats "prefetch"): chunks queued by the order,
 * first reads of chunks it had queued before the read, replays stopped
 * because the reader diverged.
 *
 * Locking. order_mu protects order_slots (each slot's session pointer and
 * open count); it is taken at open and close, not per read: a handle
 * holds its session pointer, valid until the model's last close, which
 * is at or after its own. Under order_mu: learn.c's mu, the prefetcher's
 * mu, a session's mu. Reads take only the session's mu and the
 * prefetcher's.
 */
#include "apbfs.h"

#include <errno.h>
#include <stdlib.h>

/* Most runs queued after one read: a window of 4 MiB in 64 KiB chunks is
 * at most 64 runs, and what does not fit is queued after the next read. */
#define RUNS_PER_READ 64

struct apbfs_order_slot {
	struct apb_order *session; /* NULL: the model is not open */
	uint32_t opens;            /* of the model's files, with a session */
};

static bool enabled(const struct apbfs *fs)
{
	return fs->opt.learn_order && fs->opt.state_path && fs->opt.prefetch &&
	       fs->learn;
}

int apbfs_order_init(struct apbfs *fs)
{
	if (apb_mutex_init(&fs->order_mu) != 0)
		return -ENOMEM;
	fs->order_ready = true;
	if (!enabled(fs))
		return 0;
	fs->order_slots = calloc(apb_bundle_count(fs->bundle) + 1,
				 sizeof(*fs->order_slots));
	return fs->order_slots ? 0 : -ENOMEM;
}

void apbfs_order_fini(struct apbfs *fs)
{
	if (!fs->order_ready)
		return;
	apbfs_order_stop_all(fs);
	apb_mutex_destroy(&fs->order_mu);
	fs->order_ready = false;
}

static uint64_t window_chunks(struct apbfs *fs)
{
	uint64_t w = apb_prefetcher_window(fs->prefetcher, fs->opt.readahead) /
		     fs->opt.chunk_size;

	return w ? w : 1;
}

static uint64_t tag_of(const struct apb_order *o)
{
	return (uint64_t)(uintptr_t)o;
}

/* Queue runs for the prefetcher; count what the queue took. */
static void submit(struct apbfs *fs, struct apb_order *o, uint32_t model,
		   const struct apb_order_run *runs, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (apb_prefetcher_submit_tagged(fs->prefetcher, model,
						 runs[i].first, runs[i].count,
						 tag_of(o)) == 0)
			atomic_fetch_add(&fs->io.order_chunks, runs[i].count);
}

/* A new session for model, replaying its learned order (order_mu held);
 * NULL when there is no memory or the model is too large to record. */
static struct apb_order *session_new(struct apbfs *fs, uint32_t model)
{
	uint64_t size = apb_bundle_model(fs->bundle, model)->size;
	uint64_t nchunks = (size + fs->opt.chunk_size - 1) / fs->opt.chunk_size;
	struct apb_order_run *learned = NULL, first[RUNS_PER_READ];
	struct apb_order *o = NULL;
	size_t n = 0;

	apb_assert_held(&fs->order_mu);
	if (apb_learn_order(fs->learn, model, &learned, &n) == 0 &&
	    apb_order_new(nchunks, learned, n, &o) == 0) {
		n = apb_order_start(o, window_chunks(fs), first, RUNS_PER_READ);
		submit(fs, o, model, first, n);
	}
	free(learned);
	return o;
}

struct apb_order *apbfs_order_open(struct apbfs *fs, uint32_t model)
{
	struct apbfs_order_slot *s;
	struct apb_order *o = NULL;

	if (!fs->order_ready || !fs->prefetcher) /* no slots unless enabled() */
		return NULL;
	apb_mutex_lock(&fs->order_mu);
	if (!fs->order_slots)
		goto out;
	s = &fs->order_slots[model];
	if (!s->session)
		s->session = session_new(fs, model);
	if (s->session)
		s->opens++;
	o = s->session;
out:
	apb_mutex_unlock(&fs->order_mu);
	return o;
}

/* End model's session: drop its queued prefetches, offer its recording
 * (order_mu held). */
static void session_end(struct apbfs *fs, uint32_t model)
{
	struct apbfs_order_slot *s = &fs->order_slots[model];
	struct apb_order_run *rec = NULL;
	size_t n = 0;

	apb_assert_held(&fs->order_mu);
	if (fs->prefetcher)
		(void)apb_prefetcher_cancel(fs->prefetcher, tag_of(s->session));
	/* Without memory for the copy the recording is lost: a hint. */
	if (apb_order_recorded(s->session, &rec, &n) == 0 && n)
		(void)apb_learn_offer_order(fs->learn, model, rec, n);
	free(rec);
	apb_order_free(s->session);
	s->session = NULL;
	s->opens = 0;
}

void apbfs_order_close(struct apbfs *fs, uint32_t model)
{
	if (!fs->order_ready)
		return;
	apb_mutex_lock(&fs->order_mu);
	if (fs->order_slots && fs->order_slots[model].session &&
	    --fs->order_slots[model].opens == 0)
		session_end(fs, model);
	apb_mutex_unlock(&fs->order_mu);
}

bool apbfs_order_read(struct apbfs *fs, struct apb_order *o, uint32_t model,
		      uint64_t off, size_t size)
{
	uint64_t msize = apb_bundle_model(fs->bundle, model)->size;
	uint64_t cs = fs->opt.chunk_size;
	struct apb_order_run runs[RUNS_PER_READ];
	struct apb_order_note note;
	size_t n;

	if (off >= msize || size == 0)
		return false;
	if (size > msize - off)
		size = (size_t)(msize - off);
	n = apb_order_note_read(o, off / cs, (off + size - 1) / cs,
				window_chunks(fs), runs, RUNS_PER_READ, &note);
	if (note.hits)
		atomic_fetch_add(&fs->io.order_hits, note.hits);
	if (note.stopped) {
		atomic_fetch_add(&fs->io.order_stopped, 1);
		(void)apb_prefetcher_cancel(fs->prefetcher, tag_of(o));
	}
	submit(fs, o, model, runs, n);
	return note.covered;
}

void apbfs_order_stop_all(struct apbfs *fs)
{
	if (!fs->order_ready)
		return;
	apb_mutex_lock(&fs->order_mu);
	if (fs->order_slots) {
		for (size_t m = 0; m < apb_bundle_count(fs->bundle); m++)
			if (fs->order_slots[m].session)
				session_end(fs, (uint32_t)m);
		free(fs->order_slots);
		fs->order_slots = NULL;
	}
	apb_mutex_unlock(&fs->order_mu);
}
