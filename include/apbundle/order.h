/*
 * order.h - the load order of one model: record the order in which its
 * chunks are first read while it is open (a "session"), and replay an
 * order learned in an earlier session ahead of the reader.
 *
 * A session is what the daemon keeps for a model from its first open to
 * its last close (docs/USAGE.md, "Learned load order"). It records every
 * chunk the first time a read touches it, in that order, as runs of
 * adjacent chunks, up to APB_ORDER_CHUNKS distinct chunks. Given the
 * learned order of an earlier session, it also says which chunks to
 * prefetch: apb_order_start() the first window of the order at open, and
 * apb_order_note_read() after each read the part of the order up to a
 * window past the furthest position in the order the reader has reached.
 * A reader that leaves the order (a run of first reads of chunks not in
 * it) stops the replay for the rest of the session; recording goes on.
 *
 * Memory: two bitmaps of the model's chunks (which were read, which were
 * handed out; at most APB_ORDER_MODEL_CHUNKS_MAX bits, 1 MiB, each) and at most APB_ORDER_CHUNKS
 * runs each of the recording and the learned order (16 bytes a run, plus
 * 8 a run of index for the learned one).
 *
 * Thread safety: every function but apb_order_free() may be called from
 * any thread at once (one mutex per session, held for arithmetic only).
 */
#ifndef APBUNDLE_ORDER_H
#define APBUNDLE_ORDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "api.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Most distinct chunks one order holds (256 MiB of 64 KiB chunks). */
#define APB_ORDER_CHUNKS 4096u
/* Models of more chunks have no session (their bitmap would pass 1 MiB). */
#define APB_ORDER_MODEL_CHUNKS_MAX (1ull << 23)
/* A replay stops after this many first reads in a row outside the
 * learned order, or a window's worth of chunks if that is more. */
#define APB_ORDER_STOP_MIN 16u

/* Chunks [first, first + count) of a model, count >= 1. */
struct apb_order_run {
	uint64_t first;
	uint32_t count;
};

struct apb_order;

/* What one read did to the session. */
struct apb_order_note {
	uint32_t first_reads; /* chunks read for the first time this session */
	uint32_t hits;        /* of those, in the learned order and already
				* handed out for prefetch before this read */
	bool covered;         /* a replay is on and every chunk of the read
				* is in the learned order: sequential
				* readahead has nothing to add */
	bool stopped;         /* this read stopped the replay */
};

/*
 * A session for a model of nchunks chunks, replaying learned[0..n) (n 0:
 * record only). The runs are copied. Returns 0, -E2BIG for nchunks over
 * APB_ORDER_MODEL_CHUNKS_MAX, -EINVAL for a learned order with a run of
 * count 0, past nchunks, overlapping another, or more than
 * APB_ORDER_CHUNKS chunks in all, or -ENOMEM.
 */
APB_API
int apb_order_new(uint64_t nchunks, const struct apb_order_run *learned,
		  size_t n, struct apb_order **out);
APB_API
void apb_order_free(struct apb_order *o);

/* The first window_chunks (at least 1) chunks of the learned order, as at
 * most max runs in out; returns how many (0 without a learned order, or
 * when they were handed out already). */
APB_API
size_t apb_order_start(struct apb_order *o, uint64_t window_chunks,
		       struct apb_order_run *out, size_t max);

/*
 * Note a read of chunks [first, last] (last >= first; chunks past the
 * model are ignored): record the chunks read for the first time, move
 * the replay, and return the runs (at most max, in order) to prefetch
 * now so that the replay stays window_chunks ahead of the reader.
 * *note says what the read was.
 */
APB_API
size_t apb_order_note_read(struct apb_order *o, uint64_t first, uint64_t last,
			   uint64_t window_chunks, struct apb_order_run *out,
			   size_t max, struct apb_order_note *note);

/* A copy of what this session recorded (malloc()ed, caller frees; NULL
 * with *n 0 when nothing was read). 0 or -ENOMEM. */
APB_API
int apb_order_recorded(struct apb_order *o, struct apb_order_run **runs,
		       size_t *n);

/* 0 if runs[0..n) is an order apb_order_new() takes for a model of
 * nchunks chunks, else -EINVAL (or -ENOMEM). */
APB_API
int apb_order_check(const struct apb_order_run *runs, size_t n,
		    uint64_t nchunks);

/* Chunks in runs[0..n). */
APB_API
uint64_t apb_order_chunks(const struct apb_order_run *runs, size_t n);

#ifdef __cplusplus
}
#endif

#endif
