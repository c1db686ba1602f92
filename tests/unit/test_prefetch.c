/*
 * test_prefetch.c - sequential-read detection and the prefetcher
 * (include/apbundle/prefetch.h).
 *
 * Readahead tests feed apb_readahead_note() reads and compare the chunk
 * ranges it hands out with the ones worked out by hand from the rules at
 * the top of core/readahead.c. Most use 64 KiB chunks (the default), 128 KiB
 * reads (the kernel's default readahead request) and a 1 MiB window limit
 * (16 chunks). The gap that still counts as sequential is then 256 KiB for
 * those reads (twice their length) and 128 KiB for reads under 64 KiB. A
 * read at offset 0 starts a sequential stream, so tests that want a random
 * first read start elsewhere.
 *
 * Prefetcher tests run a real apb_cache over an in-memory loader. Where a
 * test needs the workers held at a known point, the loader blocks on a gate
 * that the test opens; tests wait for conditions (loader calls counted
 * under a mutex) with a 30 s timeout, never for a fixed time.
 */
#include <apbundle/prefetch.h>

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "test.h"

#define KIB 1024u
#define MIB (1024u * 1024u)
#define CS (64 * KIB)  /* readahead tests' chunk */
#define RD (128 * KIB) /* readahead tests' read size */
#define LIMIT MIB      /* readahead tests' window limit: 16 chunks */
#define BIG (64ull * MIB)
#define PCS 4096u      /* prefetcher tests' chunk */

/* ---- readahead helpers ----------------------------------------------- */

struct range {
	uint64_t first;
	uint32_t count;
	bool sequential; /* what apb_readahead_note() returned */
};

static struct range note(struct apb_readahead *ra, uint64_t off, uint64_t len,
			 uint64_t model_size, uint64_t limit)
{
	struct range r = {~0ull, ~0u, false};

	r.sequential = apb_readahead_note(ra, off, len, model_size, limit,
					  &r.first, &r.count);
	return r;
}

/* A read must return want_seq and hand out exactly [first, first + count);
 * count 0: nothing. */
#define EXPECT_NOTE(ra, off, len, size, limit, want_seq, want_first,       \
		    want_count)                                            \
	do {                                                               \
		struct range r_ = note((ra), (off), (len), (size), (limit)); \
		CHECK_EQ(r_.sequential, (want_seq));                       \
		CHECK_EQ(r_.count, (want_count));                          \
		if ((want_count) != 0)                                     \
			CHECK_EQ(r_.first, (want_first));                  \
	} while (0)

/* A sequential read handing out exactly [first, first + count). */
#define EXPECT_SEQ(ra, off, len, size, limit, want_first, want_count)       \
	EXPECT_NOTE(ra, off, len, size, limit, true, want_first, want_count)

/* A random read: it hands out nothing. */
#define EXPECT_RANDOM(ra, off, len, size, limit)                           \
	EXPECT_NOTE(ra, off, len, size, limit, false, 0, 0)

static struct apb_readahead *ra_make(uint32_t chunk_size)
{
	struct apb_readahead *ra = NULL;

	CHECK_EQ(apb_readahead_new(chunk_size, &ra), 0);
	CHECK(ra != NULL);
	return ra;
}

static void expect_ra_stats(struct apb_readahead *ra, uint64_t sequential,
			    uint64_t random)
{
	struct apb_ra_stats st;

	apb_readahead_stats(ra, &st);
	CHECK_EQ(st.sequential, sequential);
	CHECK_EQ(st.random, random);
}

/* ---- readahead ------------------------------------------------------- */

static void test_a_read_at_offset_0_starts_a_sequential_stream(void)
{
	/* The first read of a fresh object, at offset 0, is sequential and
	 * prefetches at once: as many chunks as it covers (at least one),
	 * clipped to the limit, right after it. */
	static const struct {
		uint64_t len;
		struct range want;
	} cases[] = {
		{1, {1, 1, true}},               /* chunk 0: window 1 */
		{4 * KIB, {1, 1, true}},         /* chunk 0: window 1 */
		{CS, {1, 1, true}},              /* chunk 0: window 1 */
		{CS + 1, {2, 2, true}},          /* chunks 0, 1: window 2 */
		{100 * KIB, {2, 2, true}},       /* chunks 0, 1: window 2 */
		{RD, {2, 2, true}},              /* chunks 0, 1: window 2 */
		{MIB, {16, 16, true}},           /* chunks 0 .. 15: 16 */
		{4 * MIB, {64, 16, true}},       /* 64 chunks, limit 16 */
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct apb_readahead *ra = ra_make(CS);

		EXPECT_SEQ(ra, 0, cases[i].len, BIG, LIMIT,
			   cases[i].want.first, cases[i].want.count);
		expect_ra_stats(ra, 1, 0);
		apb_readahead_free(ra);
	}
}

static void test_a_first_read_elsewhere_is_random_and_prefetches_nothing(void)
{
	const uint64_t far = 8 * MIB; /* chunk 128 */
	struct apb_readahead *ra = ra_make(CS);

	/* Anywhere but offset 0, even one page past it. */
	EXPECT_RANDOM(ra, 4 * KIB, RD, BIG, LIMIT);
	EXPECT_RANDOM(ra, far, RD, BIG, LIMIT);
	expect_ra_stats(ra, 0, 2);
	/* The stream it started continues with the starting read's 2
	 * chunks: chunks 130, 131 read, 132, 133 ahead. */
	EXPECT_SEQ(ra, far + RD, RD, BIG, LIMIT, 132, 2);
	expect_ra_stats(ra, 1, 2);
	apb_readahead_free(ra);
}

static void test_sequential_windows_double_to_the_limit_without_repeats(void)
{
	/* Read i covers chunks 2i, 2i + 1; the first, at offset 0, starts
	 * the stream with its 2 chunks. Ahead of the read: 2, 4, 8, then the
	 * limit of 16 chunks; after the ramp each read hands out exactly the
	 * 2 chunks it consumed. */
	static const struct range want[] = {
		{2, 2, true}, {4, 4, true}, {8, 6, true}, {14, 10, true},
		{24, 2, true}, {26, 2, true},
	};
	static const uint64_t ahead[] = {2, 4, 8, 16, 16, 16};
	static bool issued[512];
	struct apb_readahead *ra = ra_make(CS);
	uint64_t next = 0; /* the chunk after the last range */

	memset(issued, 0, sizeof(issued));
	for (unsigned i = 0; i < 200; i++) {
		struct range r = note(ra, (uint64_t)i * RD, RD, BIG, LIMIT);
		uint64_t last_read = 2 * i + 1;

		CHECK(r.sequential);
		if (i < sizeof(want) / sizeof(want[0])) {
			CHECK_EQ(r.count, want[i].count);
			CHECK_EQ(r.first, want[i].first);
			CHECK_EQ(r.first + r.count - 1 - last_read, ahead[i]);
		} else {
			CHECK_EQ(r.first, last_read + 15);
			CHECK_EQ(r.count, 2);
		}
		/* Each range starts where the last one or the read ended. */
		CHECK_EQ(r.first, next > last_read + 1 ? next : last_read + 1);
		next = r.first + r.count;
		for (uint64_t c = r.first; c < r.first + r.count; c++) {
			CHECK(c < 512);
			CHECK(!issued[c]);
			issued[c] = true;
		}
	}
	expect_ra_stats(ra, 200, 0);
	apb_readahead_free(ra);
}

/* Batches of 64 chunks (a URL's 4 MiB runs): 1 MiB reads of 16 chunks
 * under a 256-chunk (16 MiB) limit. The ramp hands out as before (each
 * range at least half the window); then a read hands out nothing until
 * 64 chunks are due, and the last ones go out short at the model's end. */
static void test_batches_hand_out_whole_runs(void)
{
	const uint64_t rd = MIB, lim = 16 * MIB, size = 40 * MIB; /* 640 chunks */
	struct apb_readahead *ra = ra_make(CS);

	apb_readahead_set_batch(ra, 64);
	EXPECT_SEQ(ra, 0, rd, size, lim, 16, 16);
	EXPECT_SEQ(ra, 1 * rd, rd, size, lim, 32, 32);
	EXPECT_SEQ(ra, 2 * rd, rd, size, lim, 64, 48);
	EXPECT_SEQ(ra, 3 * rd, rd, size, lim, 112, 80);
	EXPECT_SEQ(ra, 4 * rd, rd, size, lim, 192, 144);  /* up to 79 + 256 */
	/* Read i is due up to 16i + 15 + 256: every fourth read 64 more. */
	for (uint64_t i = 5; i < 23; i++) {
		if (i % 4 == 0)
			EXPECT_SEQ(ra, i * rd, rd, size, lim,
				   336 + 64 * ((i - 8) / 4), 64);
		else
			EXPECT_SEQ(ra, i * rd, rd, size, lim, 0, 0);
	}
	/* Read 23 is due 592 .. 639: 48 chunks, short, but the model ends
	 * there. */
	EXPECT_SEQ(ra, 23 * rd, rd, size, lim, 592, 48);
	EXPECT_SEQ(ra, 24 * rd, rd, size, lim, 0, 0);
	expect_ra_stats(ra, 25, 0);
	apb_readahead_free(ra);
}

static void test_prefetch_is_clipped_at_the_end_of_the_model(void)
{
	const uint64_t size = 10 * CS + 1000; /* chunks 0 .. 10 */
	struct apb_readahead *ra = ra_make(CS);

	EXPECT_SEQ(ra, 0, RD, size, LIMIT, 2, 2);
	EXPECT_SEQ(ra, 1 * RD, RD, size, LIMIT, 4, 4);
	EXPECT_SEQ(ra, 2 * RD, RD, size, LIMIT, 8, 3); /* not 8 .. 13 */
	EXPECT_SEQ(ra, 3 * RD, RD, size, LIMIT, 0, 0); /* all issued */
	EXPECT_SEQ(ra, 4 * RD, RD, size, LIMIT, 0, 0);
	EXPECT_SEQ(ra, 5 * RD, RD, size, LIMIT, 0, 0); /* the short tail */
	EXPECT_SEQ(ra, size, RD, size, LIMIT, 0, 0);   /* read at EOF */
	expect_ra_stats(ra, 7, 0);

	/* An empty model has no chunk to prefetch, not even for a read at
	 * offset 0 (which starts a new stream: the old one ended some 769 KiB
	 * away) or its continuation. */
	EXPECT_SEQ(ra, 0, RD, 0, LIMIT, 0, 0);
	EXPECT_SEQ(ra, RD, RD, 0, LIMIT, 0, 0);
	expect_ra_stats(ra, 9, 0);
	apb_readahead_free(ra);
}

static void test_random_jump_starts_a_new_stream_with_no_prefetch(void)
{
	const uint64_t far = 32 * MIB; /* chunk 512 */
	struct apb_readahead *ra = ra_make(CS);

	EXPECT_SEQ(ra, 0, RD, BIG, LIMIT, 2, 2);
	EXPECT_SEQ(ra, RD, RD, BIG, LIMIT, 4, 4);
	EXPECT_SEQ(ra, 2 * RD, RD, BIG, LIMIT, 8, 6);
	EXPECT_RANDOM(ra, far, RD, BIG, LIMIT);
	expect_ra_stats(ra, 3, 1);
	/* The new stream ramps from the jump's 2 chunks ... */
	EXPECT_SEQ(ra, far + RD, RD, BIG, LIMIT, 516, 2);
	/* ... and the first one carries on where it was (window 16). */
	EXPECT_SEQ(ra, 3 * RD, RD, BIG, LIMIT, 14, 10);
	expect_ra_stats(ra, 5, 1);
	apb_readahead_free(ra);
}

static void test_random_small_reads_never_prefetch(void)
{
	struct apb_readahead *ra = ra_make(CS);

	/* 64 distinct offsets, 512 KiB into each MiB (never 0), in scrambled
	 * order: no 4 KiB read lands within the 128 KiB gap of an earlier
	 * one. */
	for (uint64_t i = 0; i < 64; i++)
		EXPECT_RANDOM(ra, (i * 37 % 64) * MIB + 512 * KIB, 4 * KIB,
			      BIG, LIMIT);
	expect_ra_stats(ra, 0, 64);
	apb_readahead_free(ra);
}

static void test_two_interleaved_sequential_readers_are_both_detected(void)
{
	const uint64_t b = 32 * MIB, bc = b / CS; /* reader B's base chunk */
	struct apb_readahead *ra = ra_make(CS);

	/* A starts at offset 0 (sequential at once), B elsewhere (random
	 * once), so B's windows trail A's by one read. */
	EXPECT_SEQ(ra, 0, RD, BIG, LIMIT, 2, 2);
	EXPECT_RANDOM(ra, b, RD, BIG, LIMIT);
	EXPECT_SEQ(ra, RD, RD, BIG, LIMIT, 4, 4);
	EXPECT_SEQ(ra, b + RD, RD, BIG, LIMIT, bc + 4, 2);
	EXPECT_SEQ(ra, 2 * RD, RD, BIG, LIMIT, 8, 6);
	EXPECT_SEQ(ra, b + 2 * RD, RD, BIG, LIMIT, bc + 6, 4);
	EXPECT_SEQ(ra, 3 * RD, RD, BIG, LIMIT, 14, 10);
	EXPECT_SEQ(ra, b + 3 * RD, RD, BIG, LIMIT, bc + 10, 6);
	expect_ra_stats(ra, 7, 1);
	apb_readahead_free(ra);
}

static void test_four_streams_are_kept_and_a_fifth_evicts_the_lru(void)
{
	struct apb_readahead *ra = ra_make(CS);
	uint64_t base[5];

	/* 8, 16, .. 40 MiB: no reader starts at offset 0. */
	for (int k = 0; k < 5; k++)
		base[k] = (uint64_t)(k + 1) * 8 * MIB;
	/* Four readers round robin: each is random once, then sequential. */
	for (int round = 0; round < 3; round++)
		for (int k = 0; k < 4; k++) {
			struct range r = note(ra, base[k] + round * RD, RD,
					      BIG, LIMIT);

			CHECK_EQ(r.sequential, round > 0);
		}
	expect_ra_stats(ra, 8, 4);

	/* A fifth replaces reader 0, the least recently used ... */
	EXPECT_RANDOM(ra, base[4], RD, BIG, LIMIT);
	expect_ra_stats(ra, 8, 5);
	/* ... so reader 1 still continues (window 8), reader 0 starts over. */
	EXPECT_SEQ(ra, base[1] + 3 * RD, RD, BIG, LIMIT,
		   base[1] / CS + 10, 6);
	EXPECT_RANDOM(ra, base[0] + 3 * RD, RD, BIG, LIMIT);
	expect_ra_stats(ra, 9, 6);
	apb_readahead_free(ra);

	/* Five readers round robin thrash the four streams: every read is
	 * random, and none prefetches. */
	ra = ra_make(CS);
	for (int round = 0; round < 4; round++)
		for (int k = 0; k < 5; k++)
			EXPECT_RANDOM(ra, base[k] + round * RD, RD, BIG, LIMIT);
	expect_ra_stats(ra, 0, 20);
	apb_readahead_free(ra);
}

static void test_reads_within_the_gap_count_as_sequential(void)
{
	struct apb_readahead *ra = ra_make(CS);

	/* The gap is 128 KiB for reads under 64 KiB, twice the length for
	 * longer ones: 128 KiB for a 64 KiB read, 256 KiB for a 128 KiB
	 * one. */
	EXPECT_SEQ(ra, 0, RD, BIG, LIMIT, 2, 2);   /* end 128K, window 4 */
	EXPECT_SEQ(ra, RD, RD, BIG, LIMIT, 4, 4);  /* end 256K, next 8 */
	/* 64 KiB back (an overtaken request arriving late): sequential,
	 * window 8 after chunk 3; the stream's end stays at 256 KiB. */
	EXPECT_SEQ(ra, 192 * KIB, 64 * KIB, BIG, LIMIT, 8, 4);
	EXPECT_SEQ(ra, 256 * KIB, RD, BIG, LIMIT, 12, 10); /* end 384K */
	/* Exactly the 128 KiB gap back with a page: still sequential,
	 * though chunks 5 .. 20 (window 16 after chunk 4) are all issued. */
	EXPECT_SEQ(ra, 256 * KIB, 4 * KIB, BIG, LIMIT, 0, 0);
	/* Exactly the 128 KiB gap forward with a page: window 16 after
	 * chunk 8, 22 .. 24 new. End 516K. */
	EXPECT_SEQ(ra, 512 * KIB, 4 * KIB, BIG, LIMIT, 22, 3);
	/* Exactly the 256 KiB gap of a 128 KiB read forward: 772K .. 900K,
	 * window 16 after chunk 14, 25 .. 30 new. */
	EXPECT_SEQ(ra, 772 * KIB, RD, BIG, LIMIT, 25, 6);
	expect_ra_stats(ra, 7, 0);
	/* One page beyond the gap is a new stream: a 128 KiB read 260 KiB
	 * forward, a page 132 KiB back, a page 132 KiB forward (each also
	 * beyond the gap of the streams the others started). */
	EXPECT_RANDOM(ra, 900 * KIB + 260 * KIB, RD, BIG, LIMIT);
	EXPECT_RANDOM(ra, 900 * KIB - 132 * KIB, 4 * KIB, BIG, LIMIT);
	EXPECT_RANDOM(ra, 900 * KIB + 132 * KIB, 4 * KIB, BIG, LIMIT);
	expect_ra_stats(ra, 7, 3);
	/* The first stream is untouched: window 16 after chunk 16. */
	EXPECT_SEQ(ra, 900 * KIB, RD, BIG, LIMIT, 31, 2);
	expect_ra_stats(ra, 8, 3);
	apb_readahead_free(ra);
}

static void test_a_1mib_read_overtaking_by_its_own_length_continues(void)
{
	const uint64_t limit = 4 * MIB; /* 64 chunks */
	struct apb_readahead *ra = ra_make(CS);

	/* Four 1 MiB requests in flight (16 chunks each), the third
	 * arriving before the second: each lands within 2 MiB (twice its
	 * length) of the stream's end, far beyond 128 KiB. */
	EXPECT_SEQ(ra, 0, MIB, BIG, limit, 16, 16);       /* window 16 */
	/* 1 MiB past the end: chunks 32 .. 47 read, 48 .. 79 ahead. */
	EXPECT_SEQ(ra, 2 * MIB, MIB, BIG, limit, 48, 32);
	/* 2 MiB back (the overtaken one, arriving late): window 64 after
	 * chunk 31 reaches 95; the end stays at 3 MiB. */
	EXPECT_SEQ(ra, 1 * MIB, MIB, BIG, limit, 80, 16);
	/* On from 3 MiB: window 64 (the limit) after chunk 63. */
	EXPECT_SEQ(ra, 3 * MIB, MIB, BIG, limit, 96, 32);
	expect_ra_stats(ra, 4, 0);
	/* Exactly 2 MiB forward still continues (window 64 after chunk
	 * 111); 2 MiB and a page forward is a new stream. */
	EXPECT_SEQ(ra, 6 * MIB, MIB, BIG, limit, 128, 48);
	EXPECT_RANDOM(ra, 9 * MIB + 4 * KIB, MIB, BIG, limit);
	expect_ra_stats(ra, 5, 1);
	apb_readahead_free(ra);
}

static void test_gap_is_one_chunk_when_chunks_exceed_128k(void)
{
	struct apb_readahead *ra = ra_make(MIB);

	/* Page reads, whose own gap (twice their length) is smaller. */
	EXPECT_SEQ(ra, 0, 4 * KIB, BIG, 8 * MIB, 1, 1); /* window 1 */
	/* 1 MiB past the end: within a chunk-sized gap (window 2 after
	 * chunk 1). */
	EXPECT_SEQ(ra, MIB + 4 * KIB, 4 * KIB, BIG, 8 * MIB, 2, 2);
	/* 1 MiB and a page past the end (1 MiB + 8 KiB): a new stream. */
	EXPECT_RANDOM(ra, 2 * MIB + 12 * KIB, 4 * KIB, BIG, 8 * MIB);
	expect_ra_stats(ra, 2, 1);
	apb_readahead_free(ra);
}

static void test_window_limit_below_a_chunk_still_allows_one(void)
{
	struct apb_readahead *ra = ra_make(CS);

	/* The starting read's window of 2 is cut to the limit at once. */
	EXPECT_SEQ(ra, 0, RD, BIG, 4 * KIB, 2, 1);
	EXPECT_SEQ(ra, RD, RD, BIG, 4 * KIB, 4, 1);
	EXPECT_SEQ(ra, 2 * RD, RD, BIG, 4 * KIB, 6, 1);
	EXPECT_SEQ(ra, 3 * RD, RD, BIG, 0, 8, 1);
	/* A limit that grows back lets the window double from there. */
	EXPECT_SEQ(ra, 4 * RD, RD, BIG, LIMIT, 10, 2);
	EXPECT_SEQ(ra, 5 * RD, RD, BIG, LIMIT, 12, 4);
	expect_ra_stats(ra, 6, 0);
	apb_readahead_free(ra);
}

static void test_empty_reads_count_nothing(void)
{
	struct apb_readahead *ra = ra_make(CS);

	/* Not even at offset 0: an empty read is neither sequential nor
	 * random. */
	EXPECT_NOTE(ra, 0, 0, BIG, LIMIT, false, 0, 0);
	EXPECT_NOTE(ra, UINT64_MAX, 0, BIG, LIMIT, false, 0, 0);
	expect_ra_stats(ra, 0, 0);
	/* ... nor does it start a stream: the next read at 0 starts one. */
	EXPECT_SEQ(ra, 0, RD, BIG, LIMIT, 2, 2);
	expect_ra_stats(ra, 1, 0);
	apb_readahead_free(ra);

	/* A read whose end would overflow is clipped, not wrapped: its
	 * stream ends at UINT64_MAX, so a read near there continues it (past
	 * the model: nothing to hand out) and one near 1000 does not. */
	ra = ra_make(CS);
	EXPECT_RANDOM(ra, UINT64_MAX - 100, 1000, BIG, LIMIT);
	EXPECT_SEQ(ra, UINT64_MAX - 50, 1000, BIG, LIMIT, 0, 0);
	EXPECT_RANDOM(ra, 1000, 4 * KIB, BIG, LIMIT);
	expect_ra_stats(ra, 1, 2);
	apb_readahead_free(ra);
}

/* Four threads, each reading its own region sequentially, share one
 * object. Reader 0 starts at offset 0 and is sequential from its first
 * read; the others start elsewhere and are random once (taking an unused
 * stream), then sequential. Each sees its own contiguous, non-overlapping
 * ranges. */
struct seq_reader {
	struct apb_readahead *ra;
	uint64_t base;
	unsigned reads;
};

static void *seq_reader_main(void *arg)
{
	struct seq_reader *r = arg;
	uint64_t next = 0;

	for (unsigned i = 0; i < r->reads; i++) {
		struct range got = note(r->ra, r->base + (uint64_t)i * RD, RD,
					BIG, LIMIT);
		uint64_t last_read = r->base / CS + 2 * i + 1;
		/* Sequential reads so far, this one included. */
		unsigned j = r->base == 0 ? i + 1 : i;

		if (j == 0) {
			CHECK(!got.sequential);
			CHECK_EQ(got.count, 0);
			continue;
		}
		CHECK(got.sequential);
		CHECK(got.count >= 1);
		CHECK_EQ(got.first,
			 next > last_read + 1 ? next : last_read + 1);
		next = got.first + got.count;
		/* Ahead of the read: 2, 4, 8, then 16 chunks. */
		CHECK_EQ(next - 1, last_read + (j < 4 ? 1u << j : 16u));
	}
	return NULL;
}

static void test_concurrent_readers_of_one_file(void)
{
	struct apb_readahead *ra = ra_make(CS);
	struct seq_reader r[4];
	pthread_t t[4];

	for (int k = 0; k < 4; k++) {
		r[k] = (struct seq_reader){ra, (uint64_t)k * 16 * MIB, 100};
		CHECK_EQ(pthread_create(&t[k], NULL, seq_reader_main, &r[k]),
			 0);
	}
	for (int k = 0; k < 4; k++)
		CHECK_EQ(pthread_join(t[k], NULL), 0);
	expect_ra_stats(ra, 4 * 100 - 3, 3);
	apb_readahead_free(ra);
}

/* ---- prefetcher helpers ---------------------------------------------- */

struct load_run {
	uint32_t model;
	uint64_t first;
	size_t n;
};

struct source {
	uint64_t model_bytes;   /* immutable */
	pthread_mutex_t mu;
	pthread_cond_t cv;      /* calls changed or gate opened */
	/* mu: */
	unsigned calls;         /* loader calls */
	bool gated;             /* loads wait until the gate opens */
	uint64_t fail_index;    /* != UINT64_MAX: loading it fails (-EIO) */
	struct load_run runs[64]; /* the first 64 load calls of the cache */
	unsigned nruns;
};

static void pattern_fill(uint32_t model, uint64_t index, uint8_t *buf,
			 size_t len)
{
	for (size_t j = 0; j < len; j++)
		buf[j] = (uint8_t)(model * 131 + index * 7 + j / 4096 + j);
}

static size_t chunk_bytes(const struct source *s, uint64_t index)
{
	uint64_t off = index * PCS;

	if (off >= s->model_bytes)
		return 0;
	return s->model_bytes - off < PCS ? (size_t)(s->model_bytes - off)
					  : PCS;
}

static void deadline_in(struct timespec *ts, int seconds)
{
	clock_gettime(CLOCK_REALTIME, ts);
	ts->tv_sec += seconds;
}

static long source_load(void *ctx, uint32_t model, uint64_t index, void *buf,
			size_t cap)
{
	struct source *s = ctx;
	size_t len = chunk_bytes(s, index);
	struct timespec until;
	bool fail;

	CHECK_EQ(cap, PCS);
	deadline_in(&until, 30);
	pthread_mutex_lock(&s->mu);
	s->calls++;
	pthread_cond_broadcast(&s->cv);
	while (s->gated)
		CHECK(pthread_cond_timedwait(&s->cv, &s->mu, &until) == 0);
	fail = index == s->fail_index;
	pthread_mutex_unlock(&s->mu);
	if (fail)
		return -EIO;
	pattern_fill(model, index, buf, len);
	return (long)len;
}

/* The cache's loader: n source_load() calls; the first failure fails the
 * run. */
static long source_load_run(void *ctx, uint32_t model, uint64_t first,
			    void *const *bufs, size_t n, size_t cap,
			    size_t *lens)
{
	struct source *s = ctx;

	pthread_mutex_lock(&s->mu);
	if (s->nruns < sizeof(s->runs) / sizeof(s->runs[0]))
		s->runs[s->nruns++] = (struct load_run){model, first, n};
	pthread_mutex_unlock(&s->mu);
	for (size_t i = 0; i < n; i++) {
		long r = source_load(ctx, model, first + i, bufs[i], cap);

		if (r < 0)
			return r;
		lens[i] = (size_t)r;
	}
	return 0;
}

static void source_init(struct source *s, uint64_t model_bytes)
{
	memset(s, 0, sizeof(*s));
	s->model_bytes = model_bytes;
	s->fail_index = UINT64_MAX;
	CHECK_EQ(pthread_mutex_init(&s->mu, NULL), 0);
	CHECK_EQ(pthread_cond_init(&s->cv, NULL), 0);
}

static void source_gate(struct source *s, bool gated)
{
	pthread_mutex_lock(&s->mu);
	s->gated = gated;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
}

static unsigned source_calls(struct source *s)
{
	unsigned n;

	pthread_mutex_lock(&s->mu);
	n = s->calls;
	pthread_mutex_unlock(&s->mu);
	return n;
}

/* Wait until the loader was called n times; fail after 30 s. */
static void wait_for_calls(struct source *s, unsigned n)
{
	struct timespec until;

	deadline_in(&until, 30);
	pthread_mutex_lock(&s->mu);
	while (s->calls < n)
		CHECK(pthread_cond_timedwait(&s->cv, &s->mu, &until) == 0);
	pthread_mutex_unlock(&s->mu);
}

static struct apb_cache *cache_make(struct source *s, uint32_t slots,
				    uint32_t share_pct, uint32_t models)
{
	struct apb_cache_config cfg = {
		.budget_bytes = (uint64_t)slots * PCS,
		.prefetch_share_pct = share_pct,
		.chunk_size = PCS,
		.policy = APB_EVICT_LRU,
		.model_count = models,
		.load = source_load_run,
		.load_ctx = s,
	};
	struct apb_cache *c = NULL;

	CHECK_EQ(apb_cache_new(&cfg, &c), 0);
	return c;
}

static struct apb_prefetcher *prefetcher_make(struct apb_cache *c,
					      unsigned threads)
{
	struct apb_prefetcher *p = NULL;

	CHECK_EQ(apb_prefetcher_new(c, threads, PCS, &p), 0);
	CHECK(p != NULL);
	return p;
}

static void done(struct source *s, struct apb_cache *c,
		 struct apb_prefetcher *p)
{
	apb_prefetcher_free(p);
	apb_cache_free(c);
	pthread_cond_destroy(&s->cv);
	pthread_mutex_destroy(&s->mu);
}

/* Get and put one chunk, checking its bytes; true if it was a hit. */
static bool read_chunk(struct source *s, struct apb_cache *c, uint32_t model,
		       uint64_t index)
{
	static uint8_t want[PCS];
	struct apb_cache_stats before, after;
	struct apb_chunk *ch = NULL;
	size_t len = chunk_bytes(s, index);

	apb_cache_stats(c, &before);
	CHECK_EQ(apb_cache_get(c, model, index, &ch), 0);
	CHECK_EQ(apb_chunk_len(ch), len);
	pattern_fill(model, index, want, len);
	CHECK(memcmp(apb_chunk_data(ch), want, len) == 0);
	apb_cache_put(c, ch);
	apb_cache_stats(c, &after);
	return after.hits == before.hits + 1;
}

/* ---- prefetcher ------------------------------------------------------ */

static void test_new_rejects_no_threads(void)
{
	struct source s;
	struct apb_cache *c;
	struct apb_prefetcher *p = (struct apb_prefetcher *)&s;

	source_init(&s, PCS);
	c = cache_make(&s, 4, 0, 1);
	CHECK_EQ(apb_prefetcher_new(c, 0, PCS, &p), -EINVAL);
	CHECK(p == NULL);
	done(&s, c, NULL);
}

static void test_submitted_chunks_are_resident_after_drain(void)
{
	struct source s;
	struct apb_cache *c;
	struct apb_prefetcher *p;
	struct apb_cache_stats st;

	source_init(&s, 12 * PCS + 100); /* chunks 0 .. 12, the last short */
	c = cache_make(&s, 64, 0, 2);
	p = prefetcher_make(c, 2);
	CHECK_EQ(apb_prefetcher_submit(p, 1, 3, 10), 0);
	CHECK_EQ(apb_prefetcher_submit(p, 0, 0, 0), 0); /* nothing to do */
	apb_prefetcher_drain(p);

	apb_cache_stats(c, &st);
	CHECK_EQ(st.prefetch_issued, 10);
	CHECK_EQ(st.prefetch_issued_bytes, 9 * PCS + 100);
	CHECK_EQ(st.prefetch_unused_chunks, 10);
	CHECK_EQ(st.resident_chunks, 10);
	CHECK_EQ(st.loaded_bytes, 9 * PCS + 100);
	CHECK_EQ(st.hits + st.misses, 0);
	CHECK_EQ(source_calls(&s), 10);
	/* Every prefetched chunk is a hit with the loader's bytes. */
	for (uint64_t i = 3; i < 13; i++)
		CHECK(read_chunk(&s, c, 1, i));
	apb_cache_stats(c, &st);
	CHECK_EQ(st.hits, 10);
	CHECK_EQ(st.misses, 0);
	CHECK_EQ(st.prefetch_hits, 10);
	CHECK_EQ(st.prefetch_hits_bytes, 9 * PCS + 100);
	CHECK_EQ(st.prefetch_unused_chunks, 0);
	CHECK_EQ(source_calls(&s), 10);
	/* Drain with nothing queued returns at once. */
	apb_prefetcher_drain(p);
	done(&s, c, p);
}

static void test_a_full_queue_refuses_the_job(void)
{
	struct source s;
	struct apb_cache *c;
	struct apb_prefetcher *p;
	struct apb_cache_stats st;

	source_init(&s, 1024 * PCS);
	c = cache_make(&s, 1024, 0, 1);
	p = prefetcher_make(c, 1);
	/* The one worker takes the first job and blocks in the loader ... */
	source_gate(&s, true);
	CHECK_EQ(apb_prefetcher_submit(p, 0, 0, 1), 0);
	wait_for_calls(&s, 1);
	/* ... so the ring fills: 256 jobs fit, the next is refused. */
	for (uint64_t i = 1; i <= 256; i++)
		CHECK_EQ(apb_prefetcher_submit(p, 0, i, 1), 0);
	CHECK_EQ(apb_prefetcher_submit(p, 0, 257, 1), -EAGAIN);
	source_gate(&s, false);
	apb_prefetcher_drain(p);
	apb_cache_stats(c, &st);
	CHECK_EQ(st.prefetch_issued, 257);
	CHECK_EQ(source_calls(&s), 257);
	/* There is room again. */
	CHECK_EQ(apb_prefetcher_submit(p, 0, 257, 1), 0);
	apb_prefetcher_drain(p);
	CHECK_EQ(source_calls(&s), 258);
	done(&s, c, p);
}

static void test_cancel_drops_the_queued_ranges_of_a_tag(void)
{
	const uint32_t job = apb_prefetch_job_chunks(PCS);
	struct source s;
	struct apb_cache *c;
	struct apb_prefetcher *p;
	struct apb_cache_stats st;

	source_init(&s, 1024 * PCS);
	c = cache_make(&s, 1024, 0, 1);
	p = prefetcher_make(c, 1);
	/* The one worker takes the first job of a tag 7 range five chunks
	 * longer than a job and blocks in the loader; the worker queued the
	 * rest of the range again, and it keeps the tag. */
	source_gate(&s, true);
	CHECK_EQ(apb_prefetcher_submit_tagged(p, 0, 0, job + 5, 7), 0);
	wait_for_calls(&s, 1);
	/* Queued behind it: tag 7 (two more ranges), an untagged range,
	 * tag 8. */
	CHECK_EQ(apb_prefetcher_submit_tagged(p, 0, job + 10, 2, 7), 0);
	CHECK_EQ(apb_prefetcher_submit(p, 0, job + 20, 1), 0);
	CHECK_EQ(apb_prefetcher_submit_tagged(p, 0, job + 30, 40, 7), 0);
	CHECK_EQ(apb_prefetcher_submit_tagged(p, 0, job + 100, 1, 8), 0);
	CHECK_EQ(apb_prefetcher_cancel(p, 0), 0);  /* tag 0 is no tag */
	CHECK_EQ(apb_prefetcher_cancel(p, 7), 5 + 2 + 40);
	CHECK_EQ(apb_prefetcher_cancel(p, 7), 0);
	source_gate(&s, false);
	apb_prefetcher_drain(p);
	apb_cache_stats(c, &st);
	/* The job in flight (it finishes), the untagged range and tag 8's:
	 * loaded; the rest of tag 7: not. */
	CHECK_EQ(st.prefetch_issued, job + 2);
	CHECK_EQ(source_calls(&s), job + 2);
	done(&s, c, p);
}

static void test_job_stops_at_the_prefetch_share(void)
{
	struct source s;
	struct apb_cache *c;
	struct apb_prefetcher *p;
	struct apb_cache_stats st;

	source_init(&s, 64 * PCS);
	c = cache_make(&s, 8, 50, 1); /* 4 unread prefetched chunks at most */
	p = prefetcher_make(c, 1);
	CHECK_EQ(apb_prefetcher_submit(p, 0, 0, 10), 0);
	apb_prefetcher_drain(p);
	apb_cache_stats(c, &st);
	CHECK_EQ(st.prefetch_issued, 4);
	CHECK_EQ(st.prefetch_unused_chunks, 4);
	CHECK_EQ(source_calls(&s), 4); /* chunks 4 .. 9 were abandoned */
	/* Reading them makes room for the next range. */
	for (uint64_t i = 0; i < 4; i++)
		CHECK(read_chunk(&s, c, 0, i));
	CHECK_EQ(apb_prefetcher_submit(p, 0, 4, 2), 0);
	apb_prefetcher_drain(p);
	apb_cache_stats(c, &st);
	CHECK_EQ(st.prefetch_issued, 6);
	done(&s, c, p);
}

static void test_job_stops_at_a_load_error(void)
{
	struct source s;
	struct apb_cache *c;
	struct apb_prefetcher *p;
	struct apb_cache_stats st;

	source_init(&s, 64 * PCS);
	s.fail_index = 2;
	c = cache_make(&s, 32, 0, 1);
	p = prefetcher_make(c, 1);
	CHECK_EQ(apb_prefetcher_submit(p, 0, 0, APB_CACHE_RUN_MAX + 4), 0);
	apb_prefetcher_drain(p);
	/* The job's first run, one load call: 0, 1, then 2 failed, and the
	 * run failed whole; the job's second run was never loaded. One load
	 * error, nothing cached. */
	CHECK_EQ(source_calls(&s), 3);
	apb_cache_stats(c, &st);
	CHECK_EQ(st.resident_chunks, 0);
	CHECK_EQ(st.load_errors, 1);
	/* A bad model fails the job without a load. */
	CHECK_EQ(apb_prefetcher_submit(p, 7, 0, 5), 0);
	apb_prefetcher_drain(p);
	CHECK_EQ(source_calls(&s), 3);
	done(&s, c, p);
}

/* One round of waste: prefetch 4 new chunks of model 0, then read 8 new
 * chunks of model 1, which evict the 4 unread prefetched ones (they are
 * the coldest) from the 8-slot cache. */
static void wasteful_round(struct source *s, struct apb_cache *c,
			   struct apb_prefetcher *p, uint64_t round)
{
	CHECK_EQ(apb_prefetcher_submit(p, 0, 4 * round, 4), 0);
	apb_prefetcher_drain(p);
	for (uint64_t i = 0; i < 8; i++)
		CHECK(!read_chunk(s, c, 1, 8 * round + i));
}

/* One useful round: prefetch 4 new chunks of model 0 and read them. */
static void useful_round(struct source *s, struct apb_cache *c,
			 struct apb_prefetcher *p, uint64_t round)
{
	CHECK_EQ(apb_prefetcher_submit(p, 0, 4 * round, 4), 0);
	apb_prefetcher_drain(p);
	for (uint64_t i = 0; i < 4; i++)
		CHECK(read_chunk(s, c, 0, 4 * round + i));
}

static void test_window_shrinks_while_prefetches_are_wasted(void)
{
	const uint64_t max = 8 * MIB;
	struct source s;
	struct apb_cache *c;
	struct apb_prefetcher *p;
	struct apb_cache_stats st;
	uint64_t round = 0, w, prev;

	source_init(&s, 4096 * PCS);
	c = cache_make(&s, 8, 50, 2);
	p = prefetcher_make(c, 2);
	CHECK_EQ(apb_prefetcher_window(p, max), max);
	CHECK_EQ(apb_prefetcher_window(p, 0), 1);

	/* Every round wastes all it prefetched: the window halves at each
	 * sample, never grows, and stops at 1/64. */
	for (prev = max; (w = apb_prefetcher_window(p, max)) != max >> 6;
	     prev = w) {
		CHECK(w == prev || w == prev / 2);
		CHECK(round < 400);
		wasteful_round(&s, c, p, round++);
	}
	apb_cache_stats(c, &st);
	CHECK_EQ(st.prefetch_issued, 4 * round);
	CHECK_EQ(st.prefetch_wasted, 4 * round);
	for (unsigned i = 0; i < 40; i++) {
		wasteful_round(&s, c, p, round++);
		CHECK_EQ(apb_prefetcher_window(p, max), max >> 6);
	}
	CHECK_EQ(apb_prefetcher_window(p, 100), 1);

	/* Prefetches that are read grow it back, doubling, to the full
	 * window. */
	for (prev = max >> 6; (w = apb_prefetcher_window(p, max)) != max;
	     prev = w) {
		CHECK(w == prev || w == prev * 2);
		CHECK(round < 1000);
		useful_round(&s, c, p, round++);
	}
	done(&s, c, p);
}

static void test_free_abandons_queued_jobs(void)
{
	const unsigned jobs = 255, per_job = 64;
	struct source s;
	struct apb_cache *c;
	struct apb_prefetcher *p;

	source_init(&s, (1 + jobs * per_job) * (uint64_t)PCS);
	c = cache_make(&s, 1 + jobs * per_job, 100, 1);
	p = prefetcher_make(c, 1);
	source_gate(&s, true);
	CHECK_EQ(apb_prefetcher_submit(p, 0, 0, 1), 0);
	wait_for_calls(&s, 1);
	for (unsigned j = 0; j < jobs; j++)
		CHECK_EQ(apb_prefetcher_submit(p, 0, 1 + j * per_job, per_job),
			 0);
	/* Free while the worker is mid-load and 255 jobs wait. The worker
	 * may start on a job in the moment between the gate opening and
	 * free's stop (the test cannot order the two without a hook), but
	 * it checks the stop before every chunk, so it gets nowhere near
	 * the 16,320 queued chunks. */
	source_gate(&s, false);
	apb_prefetcher_free(p);
	CHECK(source_calls(&s) < jobs * per_job / 2);
	done(&s, c, NULL);
}

static void test_jobs_are_1mib_of_chunks_at_most_one_run(void)
{
	CHECK_EQ(apb_prefetch_job_chunks(4096), APB_CACHE_RUN_MAX);
	CHECK_EQ(apb_prefetch_job_chunks(64 * KIB), 16);
	CHECK_EQ(apb_prefetch_job_chunks(128 * KIB), 8);
	CHECK_EQ(apb_prefetch_job_chunks(512 * KIB), 2);
	CHECK_EQ(apb_prefetch_job_chunks(MIB), 1);
	CHECK_EQ(apb_prefetch_job_chunks(16 * MIB), 1);
}

/* A cache whose runs were raised (a URL's) gets jobs of a whole run. */
static void test_jobs_are_whole_runs_on_a_cache_of_longer_runs(void)
{
	struct apb_cache_config cfg = {
		.budget_bytes = 256ull * PCS, .prefetch_share_pct = 100,
		.chunk_size = PCS, .policy = APB_EVICT_LRU, .model_count = 1,
		.load = source_load_run, .run_max = APB_CACHE_RUN_LIMIT,
	};
	struct apb_cache *c = NULL;
	struct apb_prefetcher *p;
	struct source s;

	source_init(&s, 150 * PCS);
	cfg.load_ctx = &s;
	CHECK_EQ(apb_cache_new(&cfg, &c), 0);
	p = prefetcher_make(c, 1);
	CHECK_EQ(apb_prefetcher_submit(p, 0, 0, 150), 0);
	apb_prefetcher_drain(p);
	CHECK_EQ(source_calls(&s), 150);
	CHECK_EQ(s.nruns, 3);
	for (unsigned i = 0; i < 3; i++) {
		CHECK_EQ(s.runs[i].first, 64 * i);
		CHECK_EQ(s.runs[i].n, i < 2 ? 64 : 22);
	}
	done(&s, c, p);
}

static int cmp_runs(const void *a, const void *b)
{
	const struct load_run *x = a, *y = b;

	return x->first < y->first ? -1 : x->first > y->first;
}

/* A whole-model prefetch is one range: every worker loads a job of it at
 * once (the loader sees four calls blocked together), and the jobs are
 * the range cut into runs of apb_prefetch_job_chunks(PCS) = 16 chunks. */
static void test_one_big_range_keeps_every_worker_busy(void)
{
	struct source s;
	struct apb_cache *c;
	struct apb_prefetcher *p;
	struct apb_cache_stats st;

	source_init(&s, 100 * PCS);
	c = cache_make(&s, 128, 100, 1);
	p = prefetcher_make(c, 4);
	source_gate(&s, true);
	CHECK_EQ(apb_prefetcher_submit(p, 0, 0, 100), 0);
	wait_for_calls(&s, 4); /* 4 workers, each blocked in its first load */
	CHECK_EQ(source_calls(&s), 4);
	source_gate(&s, false);
	apb_prefetcher_drain(p);
	apb_cache_stats(c, &st);
	CHECK_EQ(st.prefetch_issued, 100);
	CHECK_EQ(st.resident_chunks, 100);
	CHECK_EQ(source_calls(&s), 100);
	CHECK_EQ(s.nruns, 7);
	qsort(s.runs, s.nruns, sizeof(s.runs[0]), cmp_runs);
	for (unsigned i = 0; i < 7; i++) {
		CHECK_EQ(s.runs[i].first, 16 * i);
		CHECK_EQ(s.runs[i].n, i < 6 ? 16 : 4);
	}
	done(&s, c, p);
}

/* Ranges queued together get a job each in turn: a large range queued
 * first does not hold back the one behind it until it is done. */
static void test_queued_ranges_are_served_a_job_each_in_turn(void)
{
	static const struct load_run want[] = {
		{0, 0, 16}, {0, 16, 16}, {1, 0, 16}, {0, 32, 16}, {1, 16, 8},
		{0, 48, 16},
	};
	struct source s;
	struct apb_cache *c;
	struct apb_prefetcher *p;

	source_init(&s, 64 * PCS);
	c = cache_make(&s, 128, 100, 2);
	p = prefetcher_make(c, 1);
	source_gate(&s, true);
	CHECK_EQ(apb_prefetcher_submit(p, 0, 0, 64), 0);
	wait_for_calls(&s, 1); /* the worker holds model 0's first job */
	CHECK_EQ(apb_prefetcher_submit(p, 1, 0, 24), 0);
	source_gate(&s, false);
	apb_prefetcher_drain(p);
	CHECK_EQ(s.nruns, 6);
	for (unsigned i = 0; i < 6; i++) {
		CHECK_EQ(s.runs[i].model, want[i].model);
		CHECK_EQ(s.runs[i].first, want[i].first);
		CHECK_EQ(s.runs[i].n, want[i].n);
	}
	done(&s, c, p);
}

/* Submitters on several threads, workers on several others. */
struct submitter {
	struct apb_prefetcher *p;
	uint32_t model;
};

static void *submitter_main(void *arg)
{
	struct submitter *sb = arg;

	for (uint64_t j = 0; j < 32; j++)
		CHECK_EQ(apb_prefetcher_submit(sb->p, sb->model, 4 * j, 4), 0);
	return NULL;
}

static void test_concurrent_submitters_and_workers(void)
{
	struct source s;
	struct apb_cache *c;
	struct apb_prefetcher *p;
	struct apb_cache_stats st;
	struct submitter sb[4];
	pthread_t t[4];

	source_init(&s, 128 * PCS);
	c = cache_make(&s, 4 * 128, 100, 4);
	p = prefetcher_make(c, 4);
	for (uint32_t k = 0; k < 4; k++) {
		sb[k] = (struct submitter){p, k};
		CHECK_EQ(pthread_create(&t[k], NULL, submitter_main, &sb[k]),
			 0);
	}
	for (int k = 0; k < 4; k++)
		CHECK_EQ(pthread_join(t[k], NULL), 0);
	apb_prefetcher_drain(p);
	apb_cache_stats(c, &st);
	CHECK_EQ(st.prefetch_issued, 4 * 128);
	CHECK_EQ(st.resident_chunks, 4 * 128);
	CHECK_EQ(source_calls(&s), 4 * 128);
	for (uint32_t m = 0; m < 4; m++)
		for (uint64_t i = 0; i < 128; i++)
			CHECK(read_chunk(&s, c, m, i));
	done(&s, c, p);
}

int main(void)
{
	RUN(test_a_read_at_offset_0_starts_a_sequential_stream);
	RUN(test_a_first_read_elsewhere_is_random_and_prefetches_nothing);
	RUN(test_sequential_windows_double_to_the_limit_without_repeats);
	RUN(test_prefetch_is_clipped_at_the_end_of_the_model);
	RUN(test_batches_hand_out_whole_runs);
	RUN(test_random_jump_starts_a_new_stream_with_no_prefetch);
	RUN(test_random_small_reads_never_prefetch);
	RUN(test_two_interleaved_sequential_readers_are_both_detected);
	RUN(test_four_streams_are_kept_and_a_fifth_evicts_the_lru);
	RUN(test_reads_within_the_gap_count_as_sequential);
	RUN(test_a_1mib_read_overtaking_by_its_own_length_continues);
	RUN(test_gap_is_one_chunk_when_chunks_exceed_128k);
	RUN(test_window_limit_below_a_chunk_still_allows_one);
	RUN(test_empty_reads_count_nothing);
	RUN(test_concurrent_readers_of_one_file);
	RUN(test_new_rejects_no_threads);
	RUN(test_submitted_chunks_are_resident_after_drain);
	RUN(test_a_full_queue_refuses_the_job);
	RUN(test_job_stops_at_the_prefetch_share);
	RUN(test_job_stops_at_a_load_error);
	RUN(test_window_shrinks_while_prefetches_are_wasted);
	RUN(test_free_abandons_queued_jobs);
	RUN(test_jobs_are_1mib_of_chunks_at_most_one_run);
	RUN(test_one_big_range_keeps_every_worker_busy);
	RUN(test_jobs_are_whole_runs_on_a_cache_of_longer_runs);
	RUN(test_queued_ranges_are_served_a_job_each_in_turn);
	RUN(test_concurrent_submitters_and_workers);
	RUN(test_cancel_drops_the_queued_ranges_of_a_tag);
	return 0;
}
