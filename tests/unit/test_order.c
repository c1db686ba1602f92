/* test_order.c - a model's load-order session: recording first reads and
 * replaying a learned order ahead of the reader (core/order.c). */
#include "test.h"

#include <apbundle/order.h>

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

static struct apb_order *new_order(uint64_t nchunks,
				   const struct apb_order_run *learned,
				   size_t n)
{
	struct apb_order *o;

	CHECK_EQ(apb_order_new(nchunks, learned, n, &o), 0);
	return o;
}

static void check_runs(const struct apb_order_run *got, size_t n,
		       const struct apb_order_run *want, size_t wn)
{
	CHECK_EQ(n, wn);
	for (size_t i = 0; i < n; i++) {
		CHECK_EQ(got[i].first, want[i].first);
		CHECK_EQ(got[i].count, want[i].count);
	}
}

static void check_recorded(struct apb_order *o,
			   const struct apb_order_run *want, size_t wn)
{
	struct apb_order_run *rec;
	size_t n;

	CHECK_EQ(apb_order_recorded(o, &rec, &n), 0);
	check_runs(rec, n, want, wn);
	free(rec);
}

/* Note a read of [first, last] with window w; the runs to prefetch. */
static size_t note(struct apb_order *o, uint64_t first, uint64_t last,
		   uint64_t w, struct apb_order_run *out,
		   struct apb_order_note *nt)
{
	return apb_order_note_read(o, first, last, w, out, 64, nt);
}

static void records_first_reads_in_order_as_runs(void)
{
	struct apb_order *o = new_order(100, NULL, 0);
	struct apb_order_run out[64];
	struct apb_order_note nt;
	const struct apb_order_run want[] = {{5, 3}, {3, 1}, {99, 1}};

	CHECK_EQ(note(o, 5, 5, 4, out, &nt), 0);
	CHECK_EQ(nt.first_reads, 1);
	CHECK(!nt.covered && !nt.stopped && nt.hits == 0);
	CHECK_EQ(note(o, 6, 7, 4, out, &nt), 0);   /* extends the run */
	CHECK_EQ(nt.first_reads, 2);
	CHECK_EQ(note(o, 3, 3, 4, out, &nt), 0);
	CHECK_EQ(note(o, 5, 6, 4, out, &nt), 0);   /* re-read: nothing new */
	CHECK_EQ(nt.first_reads, 0);
	CHECK_EQ(note(o, 99, 500, 4, out, &nt), 0); /* clipped to the model */
	CHECK_EQ(nt.first_reads, 1);
	/* No learned order: nothing to replay, no read covered. */
	CHECK(!nt.covered);
	CHECK_EQ(apb_order_start(o, 4, out, 64), 0);
	check_recorded(o, want, 3);
	apb_order_free(o);
}

static void recording_stops_at_the_bound(void)
{
	struct apb_order *o = new_order(3 * APB_ORDER_CHUNKS, NULL, 0);
	struct apb_order_run out[64], *rec;
	struct apb_order_note nt;
	size_t n;

	/* Every other chunk: no two adjacent, so each is a run of its own. */
	for (uint64_t c = 0; c < 2 * (APB_ORDER_CHUNKS + 100); c += 2) {
		note(o, c, c, 4, out, &nt);
		CHECK_EQ(nt.first_reads, 1); /* still a first read past the bound */
	}
	CHECK_EQ(apb_order_recorded(o, &rec, &n), 0);
	CHECK_EQ(n, APB_ORDER_CHUNKS);
	CHECK_EQ(apb_order_chunks(rec, n), APB_ORDER_CHUNKS);
	CHECK_EQ(rec[n - 1].first, 2 * (uint64_t)(APB_ORDER_CHUNKS - 1));
	free(rec);
	apb_order_free(o);
}

static void replay_stays_a_window_ahead_and_counts_hits(void)
{
	/* Positions: 0:10 1:11 2:12 3:0 4:1 5:20. */
	const struct apb_order_run learned[] = {{10, 3}, {0, 2}, {20, 1}};
	struct apb_order *o = new_order(30, learned, 3);
	struct apb_order_run out[64];
	struct apb_order_note nt;
	size_t n;

	n = apb_order_start(o, 2, out, 64);
	check_runs(out, n, (struct apb_order_run[]){{10, 2}}, 1);
	CHECK_EQ(apb_order_start(o, 2, out, 64), 0); /* handed out already */

	n = note(o, 10, 10, 2, out, &nt);
	CHECK(nt.covered && nt.hits == 1 && nt.first_reads == 1);
	check_runs(out, n, (struct apb_order_run[]){{12, 1}}, 1);
	n = note(o, 11, 11, 2, out, &nt);
	CHECK(nt.covered && nt.hits == 1);
	check_runs(out, n, (struct apb_order_run[]){{0, 1}}, 1);
	/* Chunk 12 (position 2) and 0 (3) in one read: a read of chunks
	 * 12..13 would not be covered (13 is not in the order). */
	n = note(o, 0, 0, 2, out, &nt);
	CHECK(nt.covered && nt.hits == 1);
	/* reader 4: positions 4 and 5 go out, two runs. */
	check_runs(out, n, (struct apb_order_run[]){{1, 1}, {20, 1}}, 2);
	n = note(o, 12, 13, 2, out, &nt);
	CHECK(!nt.covered && nt.hits == 1 && nt.first_reads == 2);
	CHECK_EQ(n, 0);
	/* A re-read is no first read and no hit. */
	note(o, 10, 10, 2, out, &nt);
	CHECK(nt.covered && nt.hits == 0 && nt.first_reads == 0);
	apb_order_free(o);
}

static void a_reader_ahead_of_the_replay_skips_what_it_passed(void)
{
	const struct apb_order_run learned[] = {{0, 100}};
	struct apb_order *o = new_order(100, learned, 1);
	struct apb_order_run out[64];
	struct apb_order_note nt;
	size_t n;

	n = apb_order_start(o, 2, out, 64);
	check_runs(out, n, (struct apb_order_run[]){{0, 2}}, 1);
	/* Reads only far ahead (a window or more past what was handed out)
	 * move nothing, however many chunks they have ... */
	n = note(o, 50, 50, 2, out, &nt);
	CHECK(nt.covered && nt.hits == 0 && n == 0);
	n = note(o, 30, 30 + APB_ORDER_STOP_MIN, 2, out, &nt);
	CHECK(nt.first_reads == APB_ORDER_STOP_MIN + 1 && n == 0);
	/* ... and a read near the front resets their count. */
	n = note(o, 0, 0, 2, out, &nt);
	CHECK(nt.hits == 1);
	check_runs(out, n, (struct apb_order_run[]){{2, 1}}, 1);
	/* A read of near and far chunks is near: the reader is at its
	 * furthest near chunk (4), and the replay skips from 3 to there. */
	n = note(o, 1, 20, 2, out, &nt);
	CHECK(nt.hits == 2 && nt.first_reads == 20);
	check_runs(out, n, (struct apb_order_run[]){{5, 2}}, 1);
	/* APB_ORDER_STOP_MIN reads only far ahead in a row: the reader is at
	 * the furthest of the last one, and the replay skips up to it. */
	for (unsigned i = 0; i + 1 < APB_ORDER_STOP_MIN; i++) {
		n = note(o, 60 + i, 60 + i, 2, out, &nt);
		CHECK(n == 0 && !nt.stopped);
	}
	n = note(o, 79, 80, 2, out, &nt);
	check_runs(out, n, (struct apb_order_run[]){{81, 2}}, 1);
	n = note(o, 25, 25, 2, out, &nt);    /* skipped over: no hit */
	CHECK(nt.first_reads == 1 && nt.hits == 0 && n == 0);
	apb_order_free(o);
}

static void leaving_the_order_stops_the_replay(void)
{
	const struct apb_order_run learned[] = {{0, 10}};
	struct apb_order *o = new_order(100, learned, 1);
	struct apb_order_run out[64];
	struct apb_order_note nt;
	size_t n;

	/* Window 1: the replay stops after APB_ORDER_STOP_MIN + 1 first
	 * reads outside the order in a row; one inside resets the count. */
	for (unsigned i = 0; i < APB_ORDER_STOP_MIN; i++) {
		note(o, 50 + i, 50 + i, 1, out, &nt);
		CHECK(!nt.stopped && !nt.covered);
	}
	note(o, 0, 0, 1, out, &nt);
	CHECK(nt.covered && !nt.stopped);
	for (unsigned i = 0; i < APB_ORDER_STOP_MIN; i++) {
		note(o, 70 + i, 70 + i, 1, out, &nt);
		CHECK(!nt.stopped);
	}
	n = note(o, 90, 90, 1, out, &nt);
	CHECK(nt.stopped && n == 0);
	/* Stopped for good: chunk 1, in the order and within the window,
	 * is neither covered nor handed out. */
	n = note(o, 1, 1, 1, out, &nt);
	CHECK(n == 0 && !nt.covered && !nt.stopped && nt.hits == 0);
	CHECK_EQ(nt.first_reads, 1);           /* recording goes on */
	apb_order_free(o);
}

static void bad_learned_orders_are_refused(void)
{
	struct apb_order *o;
	const struct apb_order_run overlap[] = {{0, 3}, {2, 1}};
	const struct apb_order_run past[] = {{8, 3}};
	const struct apb_order_run empty_run[] = {{1, 0}};
	const struct apb_order_run too_many[] = {{0, APB_ORDER_CHUNKS},
						 {APB_ORDER_CHUNKS, 1}};

	CHECK_EQ(apb_order_new(10, overlap, 2, &o), -EINVAL);
	CHECK(o == NULL);
	CHECK_EQ(apb_order_new(10, past, 1, &o), -EINVAL);
	CHECK_EQ(apb_order_new(10, empty_run, 1, &o), -EINVAL);
	CHECK_EQ(apb_order_new(2 * APB_ORDER_CHUNKS, too_many, 2, &o), -EINVAL);
	CHECK_EQ(apb_order_check(too_many, 1, APB_ORDER_CHUNKS), 0);
	CHECK_EQ(apb_order_new(APB_ORDER_MODEL_CHUNKS_MAX + 1, NULL, 0, &o),
		 -E2BIG);
	/* An empty model: a session that records nothing. */
	o = new_order(0, NULL, 0);
	struct apb_order_note nt;
	struct apb_order_run out[4];
	CHECK_EQ(apb_order_note_read(o, 0, 0, 1, out, 4, &nt), 0);
	CHECK_EQ(nt.first_reads, 0);
	check_recorded(o, NULL, 0);
	apb_order_free(o);
}

struct reader_arg {
	struct apb_order *o;
	uint64_t from;
	uint32_t first_reads;
};

static void *reader_main(void *p)
{
	struct reader_arg *a = p;
	struct apb_order_run out[64];
	struct apb_order_note nt;

	/* Every reader reads every chunk of its quarter twice and one chunk
	 * of its neighbour's. */
	for (int pass = 0; pass < 2; pass++)
		for (uint64_t c = a->from; c < a->from + 1000; c++) {
			note(a->o, c, c, 8, out, &nt);
			a->first_reads += nt.first_reads;
			note(a->o, (c + 1000) % 4000, (c + 1000) % 4000, 8,
			     out, &nt);
			a->first_reads += nt.first_reads;
		}
	return NULL;
}

static void concurrent_readers_record_each_chunk_once(void)
{
	struct apb_order *o = new_order(4000, NULL, 0);
	struct reader_arg a[4];
	pthread_t t[4];
	struct apb_order_run *rec;
	uint32_t total = 0;
	uint8_t seen[4000] = {0};
	size_t n;

	for (int i = 0; i < 4; i++) {
		a[i] = (struct reader_arg){.o = o, .from = 1000 * (uint64_t)i};
		CHECK_EQ(pthread_create(&t[i], NULL, reader_main, &a[i]), 0);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		total += a[i].first_reads;
	}
	CHECK_EQ(total, 4000);
	CHECK_EQ(apb_order_recorded(o, &rec, &n), 0);
	CHECK_EQ(apb_order_chunks(rec, n), 4000);
	for (size_t i = 0; i < n; i++)
		for (uint32_t k = 0; k < rec[i].count; k++) {
			CHECK(!seen[rec[i].first + k]);
			seen[rec[i].first + k] = 1;
		}
	free(rec);
	apb_order_free(o);
}

int main(void)
{
	RUN(records_first_reads_in_order_as_runs);
	RUN(recording_stops_at_the_bound);
	RUN(replay_stays_a_window_ahead_and_counts_hits);
	RUN(a_reader_ahead_of_the_replay_skips_what_it_passed);
	RUN(leaving_the_order_stops_the_replay);
	RUN(bad_learned_orders_are_refused);
	RUN(concurrent_readers_record_each_chunk_once);
	return 0;
}
