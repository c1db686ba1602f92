/*
 * replay.h - feed a trace through the library's own cache (struct
 * apb_cache, the real eviction code of core/evict.c) under one policy, or
 * through Belady's OPT or A0, and count what each would have read.
 */
#ifndef APBREPLAY_REPLAY_H
#define APBREPLAY_REPLAY_H

#include "tracefile.h"

#include <apbundle/cache.h>

#include <stdbool.h>
#include <stdint.h>

struct replay_result {
	uint64_t demand;         /* demand records replayed */
	uint64_t hits;           /* demand gets that found the chunk */
	uint64_t reuse_hits;     /* of those, of a chunk a get had returned */
	uint64_t misses;
	uint64_t loaded_bytes;   /* bytes "read from the bundle" */
	uint64_t served_bytes;   /* sum of the demanded chunks' lengths */
	uint64_t prefetch_issued;  /* chunks loaded by prefetch */
	uint64_t prefetch_wasted;  /* of those, evicted unread */
};

/*
 * Replay t under policy with a budget of budget_bytes (>= t->chunk_size)
 * in a real apb_cache whose loader only counts bytes: it sets each
 * chunk's length and never touches the slot, so the cache's memory stays
 * reserved, not resident. Demand records are an apb_cache_get() and
 * apb_cache_put(); with prefetch, a prefetch record is run as the
 * daemon's prefetch workers run a job (apb_cache_prefetch_run() until the
 * range is done, stopping at -EAGAIN), without, it is skipped. Returns 0,
 * -EINVAL when the library does not accept the policy (yet), or another
 * negative errno.
 */
int replay_policy(const struct trace *t, enum apb_eviction policy,
		  uint64_t budget_bytes, bool prefetch,
		  struct replay_result *out);

/*
 * Belady's OPT (MIN) over the demand records only, with budget_bytes /
 * chunk_size slots: a miss loads the chunk and, in a full cache, evicts
 * the resident chunk whose next demand is farthest away (never again
 * first). O(n log n) time, about 40 bytes of memory per demand record.
 * Returns 0, -EINVAL (budget below one chunk) or -ENOMEM.
 */
int replay_opt(const struct trace *t, uint64_t budget_bytes,
	       struct replay_result *out);

/*
 * A0 (Aho, Denning, Ullman 1971, "Principles of optimal page
 * replacement"): the optimal online policy when accesses are independent
 * draws, given each chunk's probability - here its demand count in the
 * trace, known in advance. With slots = budget_bytes / chunk_size, the
 * slots - 1 chunks of most demands (ties: the one demanded first) are
 * kept, each a miss on its first demand and a hit after; every other
 * chunk shares the one slot left, a hit only when it is the chunk that
 * slot holds. Demand records only, as OPT. O(n log n) time, under 100
 * bytes of memory per demand record. Returns 0, -EINVAL (budget below one
 * chunk) or -ENOMEM.
 */
int replay_a0(const struct trace *t, uint64_t budget_bytes,
	      struct replay_result *out);

#endif
