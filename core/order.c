/*
 * order.c - one model's load-order session (order.h): the recording of
 * first reads and the replay of a learned order ahead of the reader.
 *
 * RECORDING
 *
 * `seen` is a bitmap of the model's chunks: a chunk is recorded the first
 * time a read touches it, so the recording is the order of first reads,
 * with no chunk twice, whatever the reader re-reads. Chunks of one read
 * are recorded lowest first. A chunk that continues the last run (its
 * first + count) extends it, so a sequential stretch costs one run. At
 * APB_ORDER_CHUNKS chunks recording stops: an order is a prefetch hint
 * for the start of a load, and past 256 MiB (of 64 KiB chunks) the reader
 * is usually sequential enough for readahead; the bound keeps the state
 * file and the memory of every model's order small.
 *
 * REPLAY
 *
 * The learned order is a list of runs; a chunk's position is its place in
 * the order (pos[i] is the position of run i's first chunk). To find the
 * position of a chunk read, `by_first` lists the runs sorted by first
 * chunk for a binary search (runs never overlap; order.h).
 *
 *   reader  one past the furthest position a first read has reached,
 *   issued  positions [0, issued) have been handed out for prefetch.
 *
 * After a read, positions [max(issued, reader), reader + window) are
 * handed out; issued jumps to reader if the reader got ahead of it (the
 * chunks skipped were passed by: if they are read later, it is on
 * demand). So the replay keeps a window ahead of the reader and never
 * hands out a position twice. Only first reads move the reader: a
 * re-read of an early chunk says nothing about where the load is.
 *
 * A read whose first-read chunks in the order all lie a window or more
 * past what was handed out moves the reader only when APB_ORDER_STOP_MIN
 * such reads come in a row (`far`, counted in reads, not chunks: one
 * kernel readahead request is 16 chunks); a read with any chunk nearer
 * resets the count and ignores its far chunks. One stray read far ahead
 * - the kernel reading ahead past the end of one tensor into the next one
 * in the file, which the loader wants much later - would otherwise skip
 * everything in between. Measured: a torch.load of a 100 MiB state dict
 * skipped a third to a half of its order now and then
 * (scripts/bench-order.py). A loader that really jumped gets there after
 * that many reads.
 *
 * A first read of a chunk that the replay handed out (`queued`, a bitmap
 * like `seen`; not every position below `issued`, which may have been
 * skipped) is a hit: the replay asked for it before the reader did. A first read of a
 * chunk not in the order counts towards `streak`; one in the order resets
 * it. A streak past max(APB_ORDER_STOP_MIN, window) stops the replay: the
 * reader is loading something else (another program, another version of
 * the workload), and a window of wrong guesses is all it has cost. A
 * stopped replay stays stopped for the session (its caller drops what is
 * still queued).
 *
 * LOCKING
 *
 * One mutex, mu, protects everything but the immutable learned order and
 * its index; held for arithmetic only (the recording's array grows by
 * realloc under it, doubling, at most log2(APB_ORDER_CHUNKS) times, and
 * apb_order_recorded() copies it under it, once a session). No other lock
 * is taken under it.
 */
#include "apbundle/order.h"
#include "lock.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct apb_order {
	/* Immutable after apb_order_new(). */
	uint64_t nchunks;
	struct apb_order_run *learned; /* [nlearned] */
	uint32_t *pos;                 /* [nlearned]: position of run i */
	uint32_t *by_first;            /* [nlearned]: run indices by first */
	size_t nlearned;
	uint32_t total;                /* chunks in the learned order */

	struct apb_mutex mu;
	/* Everything below: mu. */
	uint64_t *seen;                /* bitmap of chunks read */
	uint64_t *queued;              /* bitmap of chunks handed out */
	struct apb_order_run *rec;     /* the recording */
	size_t nrec, rec_cap;
	uint32_t rec_chunks;
	uint32_t reader, issued;       /* positions; see REPLAY */
	size_t issue_run;              /* the run holding position issued */
	uint32_t streak;               /* first reads outside the order */
	uint32_t far;                  /* reads only far ahead, in a row */
	bool replaying;
};

uint64_t apb_order_chunks(const struct apb_order_run *runs, size_t n)
{
	uint64_t t = 0;

	for (size_t i = 0; i < n; i++)
		t += runs[i].count;
	return t;
}

/* Sorting context-free: qsort over indices needs the runs; sort pairs. */
struct keyed {
	uint64_t first;
	uint32_t run;
};

static int cmp_keyed(const void *a, const void *b)
{
	const struct keyed *x = a, *y = b;

	return x->first < y->first ? -1 : x->first > y->first;
}

/* Check runs[0..n) against a model of nchunks chunks (order.h, at
 * apb_order_new()); fill pos and by_first if not NULL. */
static int check_runs(const struct apb_order_run *runs, size_t n,
		      uint64_t nchunks, uint32_t *pos, uint32_t *by_first)
{
	struct keyed *k;
	uint64_t total = 0;
	int rc = -EINVAL;

	if (n > APB_ORDER_CHUNKS)
		return -EINVAL;
	k = calloc(n + 1, sizeof(*k));
	if (!k)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		const struct apb_order_run *r = &runs[i];

		if (r->count == 0 || r->first >= nchunks ||
		    r->count > nchunks - r->first)
			goto out;
		total += r->count;
		if (total > APB_ORDER_CHUNKS)
			goto out;
		if (pos)
			pos[i] = (uint32_t)(total - r->count);
		k[i] = (struct keyed){.first = r->first, .run = (uint32_t)i};
	}
	qsort(k, n, sizeof(*k), cmp_keyed);
	for (size_t i = 0; i < n; i++) {
		if (i > 0) {
			const struct apb_order_run *prev = &runs[k[i - 1].run];
			if (prev->first + prev->count > k[i].first)
				goto out; /* overlap */
		}
		if (by_first)
			by_first[i] = k[i].run;
	}
	rc = 0;
out:
	free(k);
	return rc;
}

int apb_order_check(const struct apb_order_run *runs, size_t n,
		    uint64_t nchunks)
{
	return check_runs(runs, n, nchunks, NULL, NULL);
}

int apb_order_new(uint64_t nchunks, const struct apb_order_run *learned,
		  size_t n, struct apb_order **out)
{
	struct apb_order *o;
	int rc = -ENOMEM;

	*out = NULL;
	if (nchunks > APB_ORDER_MODEL_CHUNKS_MAX)
		return -E2BIG;
	if (n > APB_ORDER_CHUNKS)
		return -EINVAL;
	o = calloc(1, sizeof(*o));
	if (!o)
		return -ENOMEM;
	/* The mutex first, so that every failure below can undo all with
	 * apb_order_free() (free(NULL) is fine for what is not there yet). */
	if (apb_mutex_init(&o->mu) != 0) {
		free(o);
		return -ENOMEM;
	}
	o->nchunks = nchunks;
	o->nlearned = n;
	/* One extra element each: calloc(0) may return NULL. */
	o->seen = calloc(nchunks / 64 + 1, sizeof(*o->seen));
	o->queued = calloc(nchunks / 64 + 1, sizeof(*o->queued));
	o->learned = calloc(n + 1, sizeof(*o->learned));
	o->pos = calloc(n + 1, sizeof(*o->pos));
	o->by_first = calloc(n + 1, sizeof(*o->by_first));
	if (!o->seen || !o->queued || !o->learned || !o->pos || !o->by_first)
		goto fail;
	if (n)
		memcpy(o->learned, learned, n * sizeof(*learned));
	rc = check_runs(learned, n, nchunks, o->pos, o->by_first);
	if (rc)
		goto fail;
	o->total = (uint32_t)apb_order_chunks(learned, n);
	o->replaying = o->total > 0;
	*out = o;
	return 0;
fail:
	apb_order_free(o);
	return rc;
}

void apb_order_free(struct apb_order *o)
{
	if (!o)
		return;
	apb_mutex_destroy(&o->mu);
	free(o->seen);
	free(o->queued);
	free(o->rec);
	free(o->learned);
	free(o->pos);
	free(o->by_first);
	free(o);
}

/* The position of chunk c in the learned order, or false. */
static bool position_of(const struct apb_order *o, uint64_t c, uint32_t *p)
{
	size_t lo = 0, hi = o->nlearned; /* find the last run with first <= c */

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (o->learned[o->by_first[mid]].first <= c)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == 0)
		return false;
	const struct apb_order_run *r = &o->learned[o->by_first[lo - 1]];
	size_t i = o->by_first[lo - 1];
	if (c - r->first >= r->count)
		return false;
	*p = o->pos[i] + (uint32_t)(c - r->first);
	return true;
}

/* Record chunk c as read (mu held); false if it was read before. */
static bool record(struct apb_order *o, uint64_t c)
{
	uint64_t bit = 1ull << (c % 64);
	struct apb_order_run *last;

	apb_assert_held(&o->mu);
	if (o->seen[c / 64] & bit)
		return false;
	o->seen[c / 64] |= bit;
	if (o->rec_chunks >= APB_ORDER_CHUNKS)
		return true; /* first read, past what an order keeps */
	last = o->nrec ? &o->rec[o->nrec - 1] : NULL;
	if (last && last->first + last->count == c) {
		last->count++;
		o->rec_chunks++;
		return true;
	}
	if (o->nrec == o->rec_cap) {
		size_t cap = o->rec_cap ? 2 * o->rec_cap : 16;
		struct apb_order_run *bigger = realloc(o->rec, cap * sizeof(*bigger));
		if (!bigger)
			return true; /* not recorded: the order is a hint */
		o->rec = bigger;
		o->rec_cap = cap;
	}
	o->rec[o->nrec++] = (struct apb_order_run){.first = c, .count = 1};
	o->rec_chunks++;
	return true;
}

/* Hand out positions [issued, target) as at most max runs (mu held). */
static size_t hand_out(struct apb_order *o, uint32_t target,
		       struct apb_order_run *out, size_t max)
{
	size_t n = 0;

	apb_assert_held(&o->mu);
	if (target > o->total)
		target = o->total;
	while (o->issued < target && n < max) {
		const struct apb_order_run *r;
		uint32_t in, take;

		while (o->pos[o->issue_run] + o->learned[o->issue_run].count <=
		       o->issued)
			o->issue_run++;
		r = &o->learned[o->issue_run];
		in = o->issued - o->pos[o->issue_run];
		take = r->count - in;
		if (take > target - o->issued)
			take = target - o->issued;
		for (uint64_t c = r->first + in; c < r->first + in + take; c++)
			o->queued[c / 64] |= 1ull << (c % 64);
		if (n && out[n - 1].first + out[n - 1].count == r->first + in)
			out[n - 1].count += take;
		else
			out[n++] = (struct apb_order_run){.first = r->first + in,
							  .count = take};
		o->issued += take;
	}
	return n;
}

static uint32_t window_of(uint64_t window_chunks)
{
	if (window_chunks == 0)
		return 1;
	return window_chunks > APB_ORDER_CHUNKS ? APB_ORDER_CHUNKS
						: (uint32_t)window_chunks;
}

size_t apb_order_start(struct apb_order *o, uint64_t window_chunks,
		       struct apb_order_run *out, size_t max)
{
	size_t n = 0;

	apb_mutex_lock(&o->mu);
	if (o->replaying)
		n = hand_out(o, o->reader + window_of(window_chunks), out, max);
	apb_mutex_unlock(&o->mu);
	return n;
}

size_t apb_order_note_read(struct apb_order *o, uint64_t first, uint64_t last,
			   uint64_t window_chunks, struct apb_order_run *out,
			   size_t max, struct apb_order_note *note)
{
	uint32_t w = window_of(window_chunks);
	uint32_t stop_after = w > APB_ORDER_STOP_MIN ? w : APB_ORDER_STOP_MIN;
	uint32_t far_to = 0; /* one past the furthest far position read */
	bool covered = true, near = false;
	size_t n = 0;

	memset(note, 0, sizeof(*note));
	if (last >= o->nchunks)
		last = o->nchunks - 1;
	if (o->nchunks == 0 || first > last)
		return 0;
	apb_mutex_lock(&o->mu);
	for (uint64_t c = first; c <= last; c++) {
		uint32_t p;
		/* Only a replay looks chunks up: a stopped one (or none,
		 * total 0) covers no read and counts no hits. */
		bool in_order = o->replaying && position_of(o, c, &p);

		covered = covered && in_order;
		if (!record(o, c))
			continue;
		note->first_reads++;
		if (!o->replaying)
			continue;
		if (!in_order) {
			o->streak++;
			continue;
		}
		o->streak = 0;
		if (o->queued[c / 64] & (1ull << (c % 64)))
			note->hits++; /* handed out before this read */
		if (p >= o->issued + w) { /* far: see REPLAY */
			if (p + 1 > far_to)
				far_to = p + 1;
			continue;
		}
		near = true;
		if (p + 1 > o->reader)
			o->reader = p + 1;
	}
	/* A read with a chunk near the front is where the reader is; a read
	 * only far ahead moves it after APB_ORDER_STOP_MIN such reads. */
	if (near) {
		o->far = 0;
	} else if (far_to && ++o->far >= APB_ORDER_STOP_MIN) {
		o->far = 0;
		if (far_to > o->reader)
			o->reader = far_to;
	}
	if (o->replaying && o->streak > stop_after) {
		o->replaying = false;
		note->stopped = true;
	}
	note->covered = o->replaying && covered;
	if (o->replaying) {
		if (o->issued < o->reader)
			o->issued = o->reader;
		n = hand_out(o, o->reader + w, out, max);
	}
	apb_mutex_unlock(&o->mu);
	return n;
}

int apb_order_recorded(struct apb_order *o, struct apb_order_run **runs,
		       size_t *n)
{
	int rc = 0;

	*runs = NULL;
	*n = 0;
	/* Allocated under mu, as record() grows the recording: the one
	 * caller copies it at the model's last close, when no read is left
	 * to wait for mu. */
	apb_mutex_lock(&o->mu);
	if (o->nrec) {
		*runs = malloc(o->nrec * sizeof(**runs));
		if (*runs) {
			memcpy(*runs, o->rec, o->nrec * sizeof(**runs));
			*n = o->nrec;
		} else {
			rc = -ENOMEM;
		}
	}
	apb_mutex_unlock(&o->mu);
	return rc;
}
