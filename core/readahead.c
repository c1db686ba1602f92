/*
 * readahead.c - sequential-read detection for one open file: which chunks
 * to prefetch after each read (struct apb_readahead, prefetch.h). The
 * workers that load them are in prefetch.c.
 *
 * STREAMS
 *
 * One open file can carry several sequential readers at once: a program
 * that mmaps a model and walks two tensors, a loader with a thread per
 * shard, the kernel's own readahead for each of them. So an apb_readahead
 * keeps APB_READAHEAD_STREAMS streams, each remembering
 *
 *   end          where its reads have reached (the largest off + len of a
 *                read it took; see "backward reads" below),
 *   window       the number of chunks the next continuation may keep ahead
 *                of the read,
 *   next_unissued the first chunk not yet handed out for prefetch,
 *   last_use     the tick of its last read (for LRU replacement).
 *
 * A read of [off, off + len) continues the stream whose end is nearest to
 * off among those with end - GAP <= off <= end + GAP, where
 * GAP = max(chunk_size, 128 KiB, 2 * len). Exact adjacency (off == end) would be
 * too strict: the kernel splits, merges and reorders the readahead requests
 * it sends for one sequential reader (several are in flight at once on a
 * multi-threaded FUSE daemon, and they arrive in any order), and mmap page
 * faults land near, not at, where the previous fault range ended. 128 KiB
 * is the kernel's default readahead unit (and twice the default chunk), so
 * a reader whose requests overtake each other by one unit, or that skips
 * a few pages, still counts as sequential; a real seek elsewhere lands
 * further away than that in any model worth paging. With large requests
 * (the daemon raises the kernel's readahead to 1 MiB requests, several in
 * flight) one request can overtake the previous one by its own length, so
 * the gap grows to twice the read's length.
 *
 * Continuing a stream counts the read sequential and uses a window of
 * w = min(window, limit) chunks, where limit = window_limit_bytes /
 * chunk_size (at least 1, at most UINT32_MAX); the next continuation gets
 * 2w. A fresh stream's window is the size of the read that started it in
 * chunks (at least 1): a program reading 1 MiB at a time is ahead by 1 MiB
 * on its first continuation, not by one chunk; the windows then double up
 * to the limit, and a shrinking limit (the prefetcher's backoff) shrinks
 * them at once. The chunks to prefetch are
 *
 *   from  max(next_unissued, last chunk of the read + 1)
 *   to    last chunk of the read + w, and the model's last chunk,
 *
 * and next_unissued moves past them, so a stream whose reads keep pace
 * never names a chunk twice; in the steady state each read hands out as
 * many new chunks as it consumed.
 *
 * Batches (apb_readahead_set_batch(), for a source behind a URL): when
 * fewer than min(batch, w / 2) chunks are due and the range does not
 * reach the model's last chunk, the read hands out nothing and
 * next_unissued stays, so a later read hands out the lot. A stream then
 * keeps between w - batch and w chunks ahead, in requests of batch
 * chunks, instead of one request per read (a 1 MiB read paid a round
 * trip per MiB; docs/PERFORMANCE.md, "Remote bundles").
 *
 * A read that continues no stream replaces the least recently used stream
 * (an unused one first) by a fresh one: end = the read's end, next_unissued
 * = the chunk after the read. Such a read counts random and prefetches
 * nothing: random 4 KiB reads of an mmapped model cost no extra I/O and no
 * cache room at all; a sequential reader pays one read to be recognized.
 * Except at offset 0: a program that reads a model from its first byte is
 * loading it (as the kernel assumes for its initial readahead), so that
 * read counts sequential and continues its fresh stream at once.
 *
 * Backward reads: a read that continues a stream but ends before the
 * stream's end (an overtaken request arriving late) leaves end where it is,
 * so the requests that follow the overtaking one still find the stream.
 *
 * A read of length 0 changes nothing and counts nothing. Offsets are
 * clipped so that off + len cannot overflow.
 *
 * LOCKING
 *
 * One mutex per object, mu, protects every stream, the tick and the
 * counters; it is held only for this arithmetic, never across I/O, and no
 * other lock is taken under it.
 */
#include "apbundle/prefetch.h"
#include "lock.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#define GAP_MIN_BYTES (128u * 1024u)

struct stream {
	uint64_t end;           /* largest off + len of its reads */
	uint64_t window;        /* chunks the next continuation may use */
	uint64_t next_unissued; /* first chunk not yet handed out */
	uint64_t last_use;      /* tick of its last read; 0: never used */
};

struct apb_readahead {
	/* Immutable after apb_readahead_new(). */
	uint32_t chunk_size;
	uint64_t gap_bytes;     /* max(chunk_size, GAP_MIN_BYTES) */

	struct apb_mutex mu;
	/* Everything below: mu. */
	uint32_t batch;         /* least chunks a continuation hands out */
	struct stream streams[APB_READAHEAD_STREAMS];
	uint64_t tick;          /* reads noted so far */
	struct apb_ra_stats st;
};

int apb_readahead_new(uint32_t chunk_size, struct apb_readahead **out)
{
	struct apb_readahead *ra;

	*out = NULL;
	if (chunk_size == 0)
		return -EINVAL;
	ra = calloc(1, sizeof(*ra));
	if (!ra)
		return -ENOMEM;
	if (apb_mutex_init(&ra->mu) != 0) {
		free(ra);
		return -ENOMEM;
	}
	ra->chunk_size = chunk_size;
	ra->gap_bytes = chunk_size > GAP_MIN_BYTES ? chunk_size : GAP_MIN_BYTES;
	*out = ra;
	return 0;
}

void apb_readahead_free(struct apb_readahead *ra)
{
	if (!ra)
		return;
	apb_mutex_destroy(&ra->mu);
	free(ra);
}

static uint64_t distance(uint64_t a, uint64_t b)
{
	return a > b ? a - b : b - a;
}

/* The used stream nearest to off that a read of len bytes at off
 * continues, or NULL. mu held. */
static struct stream *find_stream(struct apb_readahead *ra, uint64_t off,
				  uint64_t len)
{
	uint64_t twice = len > UINT64_MAX / 2 ? UINT64_MAX : 2 * len;
	uint64_t gap = twice > ra->gap_bytes ? twice : ra->gap_bytes;
	struct stream *best = NULL;

	apb_assert_held(&ra->mu);
	for (int i = 0; i < APB_READAHEAD_STREAMS; i++) {
		struct stream *s = &ra->streams[i];

		if (s->last_use == 0 || distance(off, s->end) > gap)
			continue;
		if (!best || distance(off, s->end) < distance(off, best->end))
			best = s;
	}
	return best;
}

/* The stream to replace: an unused one, else the least recently used. */
static struct stream *lru_stream(struct apb_readahead *ra)
{
	struct stream *victim = &ra->streams[0];

	for (int i = 1; i < APB_READAHEAD_STREAMS; i++) {
		if (ra->streams[i].last_use < victim->last_use)
			victim = &ra->streams[i];
	}
	return victim;
}

/* window_limit_bytes in whole chunks, clipped to [1, UINT32_MAX]. */
static uint64_t limit_chunks(const struct apb_readahead *ra,
			     uint64_t window_limit_bytes)
{
	uint64_t n = window_limit_bytes / ra->chunk_size;

	if (n == 0)
		return 1;
	return n > UINT32_MAX ? UINT32_MAX : n;
}

/*
 * Continue s with a read whose last chunk is last_read; set *first and *count
 * to the chunks it hands out (clipped to the model's last chunk). mu held.
 */
static void continue_stream(struct apb_readahead *ra, struct stream *s,
			    uint64_t last_read, uint64_t model_size,
			    uint64_t limit, uint64_t *first, uint32_t *count)
{
	uint64_t w = s->window < limit ? s->window : limit;
	uint64_t from = s->next_unissued > last_read + 1 ? s->next_unissued
							  : last_read + 1;
	uint64_t to = last_read + w; /* inclusive */
	uint64_t n;

	apb_assert_held(&ra->mu);
	assert(w >= 1 && w <= UINT32_MAX);
	s->window = 2 * w;
	if (model_size == 0)
		return;
	if (to > (model_size - 1) / ra->chunk_size)
		to = (model_size - 1) / ra->chunk_size;
	if (to < from)
		return;
	n = to - from + 1;
	/* Batching: too few due, and more of the model to come. */
	if (n < ra->batch && n < w / 2 &&
	    to < (model_size - 1) / ra->chunk_size)
		return;
	*first = from;
	*count = n > UINT32_MAX ? UINT32_MAX : (uint32_t)n;
	s->next_unissued = from + *count;
}

bool apb_readahead_note(struct apb_readahead *ra, uint64_t off, uint64_t len,
			uint64_t model_size, uint64_t window_limit_bytes,
			uint64_t *first, uint32_t *count)
{
	uint64_t end, last_read;
	struct stream *s;
	bool sequential;

	*first = 0;
	*count = 0;
	if (len == 0)
		return false;
	end = len > UINT64_MAX - off ? UINT64_MAX : off + len;
	last_read = (end - 1) / ra->chunk_size;

	apb_mutex_lock(&ra->mu);
	ra->tick++;
	s = find_stream(ra, off, len);
	sequential = s != NULL;
	if (!s) {
		s = lru_stream(ra);
		s->end = end;
		s->window = last_read - off / ra->chunk_size + 1;
		s->next_unissued = last_read + 1;
		sequential = off == 0;
	}
	if (sequential) {
		ra->st.sequential++;
		continue_stream(ra, s, last_read, model_size,
				limit_chunks(ra, window_limit_bytes), first,
				count);
		if (end > s->end)
			s->end = end;
	} else {
		ra->st.random++;
	}
	s->last_use = ra->tick;
	apb_mutex_unlock(&ra->mu);
	return sequential;
}

void apb_readahead_set_batch(struct apb_readahead *ra, uint32_t chunks)
{
	apb_mutex_lock(&ra->mu);
	ra->batch = chunks;
	apb_mutex_unlock(&ra->mu);
}

void apb_readahead_stats(struct apb_readahead *ra, struct apb_ra_stats *out)
{
	apb_mutex_lock(&ra->mu);
	*out = ra->st;
	apb_mutex_unlock(&ra->mu);
}
