/*
 * test_evict.c - the eviction policies alone (core/evict.h), driven the
 * way cache.c drives them, on small traces with exact expected victims.
 * auto is the subject: LRU and LFU-DA are pinned down through the cache
 * in test_cache.c. After every operation the set must pass
 * apb_evict_consistent().
 */
#include "../../core/evict.h"

#include <errno.h>
#include <stdint.h>

#include "test.h"

#define KEYS 1024
#define HIT (-1)
#define LOADED (-2) /* a miss with a free slot */

/* A cache of cap slots over keys 0 .. KEYS-1 of model 0, one node per key
 * (a slot's node follows its chunk here, which evict.c cannot tell). */
struct sim {
	struct apb_evict *e;
	struct apb_evict_node node[KEYS];
	bool resident[KEYS];
	bool held[KEYS];              /* referenced: out of the set */
	uint32_t cap, used;
	uint32_t hits;
};

static void sim_start(struct sim *s, enum apb_eviction policy, uint32_t cap)
{
	*s = (struct sim){.cap = cap};
	CHECK_EQ(apb_evict_new(policy, cap, &s->e), 0);
}

static int key_of(const struct sim *s, const struct apb_evict_node *n)
{
	return (int)(n - s->node);
}

/* Take a slot for key k: a free one or a victim's. Returns the victim's
 * key, LOADED for a free slot, or KEYS when nothing can be evicted. */
static int sim_slot(struct sim *s, bool for_prefetch)
{
	struct apb_evict_node *v;

	if (s->used < s->cap) {
		s->used++;
		return LOADED;
	}
	v = for_prefetch ? apb_evict_pop_warm_victim(s->e)
			 : apb_evict_pop_victim(s->e);
	if (!v)
		return KEYS;
	s->resident[key_of(s, v)] = false;
	apb_evict_forget(s->e, v); /* as chunk_forget() does; a no-op */
	return key_of(s, v);
}

/* A get of key k and its put (held: no put yet). Returns HIT, LOADED or
 * the victim's key. */
static int sim_get(struct sim *s, int k, bool held)
{
	int r = HIT;

	if (s->resident[k]) {
		if (!s->held[k])
			apb_evict_remove(s->e, &s->node[k]);
		s->hits++;
	} else {
		r = sim_slot(s, false);
		CHECK(r != KEYS);
		apb_evict_node_init(s->e, &s->node[k], 0, (uint64_t)k);
		s->resident[k] = true;
	}
	apb_evict_touch(s->e, &s->node[k]);
	if (held)
		s->held[k] = true;
	else
		apb_evict_insert(s->e, &s->node[k]);
	CHECK(apb_evict_consistent(s->e));
	return r;
}

static void sim_put(struct sim *s, int k)
{
	CHECK(s->held[k]);
	s->held[k] = false;
	apb_evict_insert(s->e, &s->node[k]);
	CHECK(apb_evict_consistent(s->e));
}

/* A prefetch of key k, absent: a slot never taken from another prefetch,
 * the chunk cold until a get. Returns the victim's key, LOADED or KEYS
 * (refused). */
static int sim_prefetch(struct sim *s, int k)
{
	int r;

	CHECK(!s->resident[k]);
	r = sim_slot(s, true);
	if (r == KEYS)
		return r;
	apb_evict_node_init(s->e, &s->node[k], 0, (uint64_t)k);
	s->resident[k] = true;
	apb_evict_insert_cold(s->e, &s->node[k]);
	CHECK(apb_evict_consistent(s->e));
	return r;
}

static struct apb_evict_auto_stats auto_stats(struct sim *s)
{
	struct apb_evict_auto_stats st;

	apb_evict_auto_stats(s->e, &st);
	return st;
}

/* Keys first .. first + n - 1 in order; the victims (or LOADED/HIT) into
 * out[] if given. */
static void sim_scan(struct sim *s, int first, int n, int *out)
{
	for (int k = first; k < first + n; k++) {
		int r = sim_get(s, k, false);

		if (out)
			out[k - first] = r;
	}
}

/* ---- auto: loops -------------------------------------------------------- */

/* 8 slots: Q keeps hir_min = 2 (a quarter of a tiny cache), so 6 LIR
 * chunks. A loop of 12: the first 6 fill the LIR set, the rest pass
 * through Q. Every later pass hits 0..5 and misses 6..11, each evicting
 * the one two before it. */
static void test_auto_loop_keeps_the_lir_set_and_hits_it_every_pass(void)
{
	struct sim s;
	int got[12];
	const int pass1[12] = {LOADED, LOADED, LOADED, LOADED, LOADED, LOADED,
			       LOADED, LOADED, 6, 7, 8, 9};
	const int later[12] = {HIT, HIT, HIT, HIT, HIT, HIT,
			       10, 11, 6, 7, 8, 9};

	sim_start(&s, APB_EVICT_AUTO, 8);
	sim_scan(&s, 0, 12, got);
	for (int i = 0; i < 12; i++)
		CHECK_EQ(got[i], pass1[i]);
	CHECK_EQ(auto_stats(&s).lir, 6);
	for (int pass = 2; pass <= 5; pass++) {
		sim_scan(&s, 0, 12, got);
		for (int i = 0; i < 12; i++)
			CHECK_EQ(got[i], later[i]);
	}
	CHECK_EQ(s.hits, 4 * 6);
	CHECK_EQ(auto_stats(&s).lir, 6);
	CHECK_EQ(auto_stats(&s).lir_max, 6);
	CHECK_EQ(auto_stats(&s).lir_evictions, 0);
	apb_evict_free(s.e);
}

/* The same loop under LRU hits nothing: the reason auto exists. */
static void test_lru_loop_hits_nothing(void)
{
	struct sim s;

	sim_start(&s, APB_EVICT_LRU, 8);
	for (int pass = 1; pass <= 5; pass++)
		sim_scan(&s, 0, 12, NULL);
	CHECK_EQ(s.hits, 0);
	apb_evict_free(s.e);
}

/* A read-once stream after the LIR set formed goes through Q alone: the
 * LIR chunks are never victims and all hit afterwards. */
static void test_auto_stream_passes_through_q(void)
{
	struct sim s;
	int got[100];

	sim_start(&s, APB_EVICT_AUTO, 8);
	sim_scan(&s, 0, 8, NULL);             /* LIR 0..5, Q 6 7 */
	sim_scan(&s, 100, 100, got);          /* the stream: 100..199 */
	CHECK_EQ(got[0], 6);
	CHECK_EQ(got[1], 7);
	for (int i = 2; i < 100; i++)
		CHECK_EQ(got[i], 100 + i - 2); /* each evicts the one two back */
	s.hits = 0;
	sim_scan(&s, 0, 6, NULL);
	CHECK_EQ(s.hits, 6);
	apb_evict_free(s.e);
}

/* ---- auto: LIRS's promotion and the adaptive target ------------------- */

/* 4 slots: LIR 0, 1, 2 (lir_max 3), Q one slot. 3 goes through Q and
 * leaves a ghost; its reuse while the ghost is in S makes it LIR: a
 * larger Q would have kept it, so lir_max drops to 2 and the two oldest
 * LIR chunks (0, then 1) become HIR on Q. */
static void test_auto_ghost_reuse_promotes_and_grows_q(void)
{
	struct sim s;

	sim_start(&s, APB_EVICT_AUTO, 4);
	sim_scan(&s, 0, 3, NULL);                /* LIR 0 1 2 */
	CHECK_EQ(sim_get(&s, 3, false), LOADED); /* HIR, the last slot */
	CHECK_EQ(sim_get(&s, 4, false), 3);      /* 3: a ghost in S */
	CHECK_EQ(auto_stats(&s).ghosts, 1);
	CHECK_EQ(sim_get(&s, 3, false), 4);      /* 4 leaves, 3 is LIR */
	CHECK_EQ(auto_stats(&s).lir_max, 2);
	CHECK_EQ(auto_stats(&s).lir, 2);         /* 2 and 3 */
	CHECK_EQ(auto_stats(&s).hir_queued, 2);  /* 0 then 1 */
	CHECK_EQ(auto_stats(&s).ghosts, 1);      /* 4's */
	CHECK_EQ(sim_get(&s, 5, false), 0);
	CHECK_EQ(sim_get(&s, 6, false), 1);
	CHECK_EQ(sim_get(&s, 2, false), HIT);
	CHECK_EQ(sim_get(&s, 3, false), HIT);
	apb_evict_free(s.e);
}

/* A demoted LIR chunk used again after its eviction: the LIR set was too
 * small for it, and the target grows back by one. */
static void test_auto_demoted_chunk_reused_grows_the_lir_set(void)
{
	struct sim s;

	sim_start(&s, APB_EVICT_AUTO, 4);
	sim_scan(&s, 0, 3, NULL);
	sim_get(&s, 3, false);
	sim_get(&s, 4, false);
	sim_get(&s, 3, false);                  /* lir_max 2; 0, 1 demoted */
	CHECK_EQ(sim_get(&s, 5, false), 0);     /* 0: a demoted ghost */
	CHECK_EQ(auto_stats(&s).lir_max, 2);
	CHECK_EQ(sim_get(&s, 0, false), 1);     /* reused: lir_max 3 */
	CHECK_EQ(auto_stats(&s).lir_max, 3);
	CHECK_EQ(auto_stats(&s).lir, 3);        /* 2, 3, 0 */
	apb_evict_free(s.e);
}

/* A working set that moves (160 chunks, 80 new ones each phase, 4 rounds
 * per phase, 256 slots: Q 16, LIR 240): LIRS with a fixed LIR set keeps
 * the old phases' chunks LIR and misses about 200 times a phase here,
 * each new chunk twice (once as HIR, once as a ghost); LRU misses 80.
 * auto pays that once, in phase 2, while its ghost hits shrink the LIR
 * set until Q holds the new chunks; from then on it misses exactly as LRU
 * does. */
static void test_auto_moving_working_set_misses_as_lru_once_adapted(void)
{
	const uint32_t auto_misses[10] = {160, 80, 236, 80, 80, 80, 80, 80, 80,
					  80};
	struct sim s, lru;

	sim_start(&s, APB_EVICT_AUTO, 256);
	sim_start(&lru, APB_EVICT_LRU, 256);
	for (int phase = 0; phase < 10; phase++) {
		uint32_t auto_hits = s.hits, lru_hits = lru.hits;

		for (int round = 0; round < 4; round++) {
			sim_scan(&s, phase * 80, 160, NULL);
			sim_scan(&lru, phase * 80, 160, NULL);
		}
		CHECK_EQ(640 - (lru.hits - lru_hits), phase == 0 ? 160 : 80);
		CHECK_EQ(640 - (s.hits - auto_hits), auto_misses[phase]);
	}
	CHECK_EQ(auto_stats(&s).lir_max, 123);
	apb_evict_free(s.e);
	apb_evict_free(lru.e);
}

/* ---- auto with the cache's other states -------------------------------- */

/* Prefetches take Q's chunks, then LIR chunks (the one released last
 * first: in a loop, the one needed last) while the LIR set is within an
 * eighth of the slots of its cap, then nothing. A demand miss takes Q's
 * chunks before unread prefetches, and with Q empty the newest unread
 * prefetch. The LIR target stays: the slots are lent. */
static void test_auto_prefetch_shrinks_the_lir_set_by_an_eighth_at_most(void)
{
	struct sim s;

	sim_start(&s, APB_EVICT_AUTO, 16);      /* Q 4, LIR 12, prefetch 2 */
	sim_scan(&s, 0, 16, NULL);              /* LIR 0..11, HIR 12..15 */
	CHECK_EQ(auto_stats(&s).lir, 12);
	CHECK_EQ(sim_prefetch(&s, 100), 12);
	CHECK_EQ(sim_prefetch(&s, 101), 13);
	CHECK_EQ(sim_get(&s, 102, false), 14);  /* Q before the cold ones */
	CHECK_EQ(sim_prefetch(&s, 103), 15);
	CHECK_EQ(sim_prefetch(&s, 104), 102);   /* Q again: 102 was read */
	CHECK_EQ(sim_prefetch(&s, 105), 11);    /* then the LIR set */
	CHECK_EQ(sim_prefetch(&s, 106), 10);
	CHECK_EQ(auto_stats(&s).lir, 10);
	CHECK_EQ(auto_stats(&s).lir_max, 12);
	CHECK_EQ(sim_prefetch(&s, 107), KEYS);  /* refused */
	CHECK_EQ(auto_stats(&s).lir_evictions, 2);
	CHECK_EQ(sim_get(&s, 108, false), 106); /* Q empty: the newest cold */
	apb_evict_free(s.e);
}

/* Held chunks keep their status; with Q's chunks all held, a miss takes
 * the LIR chunk released last. */
static void test_auto_held_chunks_keep_their_place(void)
{
	struct sim s;

	sim_start(&s, APB_EVICT_AUTO, 4);
	sim_scan(&s, 0, 3, NULL);               /* LIR 0 1 2 */
	CHECK_EQ(sim_get(&s, 3, true), LOADED); /* HIR, held */
	CHECK_EQ(apb_evict_count(s.e), 3);
	CHECK_EQ(sim_get(&s, 4, false), 2);     /* Q empty: LIR 2 goes */
	CHECK_EQ(auto_stats(&s).lir, 2);
	CHECK_EQ(auto_stats(&s).lir_max, 3);
	sim_put(&s, 3);
	CHECK_EQ(sim_get(&s, 5, false), 4);     /* Q: 4 before 3 */
	CHECK_EQ(sim_get(&s, 0, false), HIT);
	CHECK_EQ(sim_get(&s, 1, false), HIT);
	apb_evict_free(s.e);
}

/* Chunks dropped by clear or a failed load leave no ghost and no count;
 * the cache fills the LIR set again afterwards. */
static void test_auto_forget_leaves_nothing_behind(void)
{
	struct sim s;

	sim_start(&s, APB_EVICT_AUTO, 8);
	for (int pass = 0; pass < 2; pass++)
		sim_scan(&s, 0, 12, NULL);
	for (int k = 0; k < KEYS; k++) {
		if (!s.resident[k])
			continue;
		apb_evict_remove(s.e, &s.node[k]);
		apb_evict_forget(s.e, &s.node[k]);
		s.resident[k] = false;
		CHECK(apb_evict_consistent(s.e));
	}
	s.used = 0;
	CHECK_EQ(apb_evict_count(s.e), 0);
	CHECK_EQ(auto_stats(&s).lir, 0);
	CHECK_EQ(auto_stats(&s).hir_queued, 0);
	/* A load that fails after a waiter's touch: forgotten too. */
	CHECK_EQ(sim_slot(&s, false), LOADED);
	apb_evict_node_init(s.e, &s.node[50], 0, 50);
	apb_evict_touch(s.e, &s.node[50]);
	apb_evict_forget(s.e, &s.node[50]);
	s.used--;
	CHECK(apb_evict_consistent(s.e));
	CHECK_EQ(auto_stats(&s).lir, 0);
	s.hits = 0;
	for (int pass = 0; pass < 3; pass++)
		sim_scan(&s, 0, 12, NULL);
	CHECK_EQ(s.hits, 2 * 6);
	apb_evict_free(s.e);
}

/* A popular chunk at S's bottom gets a second chance: uses halved, back
 * to the top, and the LIR chunk used once is demoted in its place. */
static void test_auto_popular_bottom_chunk_gets_a_second_chance(void)
{
	struct sim s;

	sim_start(&s, APB_EVICT_AUTO, 4);
	for (int i = 0; i < 3; i++)
		sim_get(&s, 0, false);           /* 0: LIR, used 3 times */
	sim_get(&s, 1, false);                   /* 1: LIR, used once */
	sim_get(&s, 2, false);                   /* 2: LIR */
	sim_get(&s, 3, false);                   /* 3: HIR */
	CHECK_EQ(sim_get(&s, 4, false), 3);
	/* 3's ghost reused: lir_max 2, two LIR chunks must go. 0 is the
	 * bottom but popular: 1 and 2 go instead. */
	CHECK_EQ(sim_get(&s, 3, false), 4);
	CHECK_EQ(auto_stats(&s).lir, 2);
	CHECK_EQ(sim_get(&s, 5, false), 1);
	CHECK_EQ(sim_get(&s, 6, false), 2);
	CHECK_EQ(sim_get(&s, 0, false), HIT);
	apb_evict_free(s.e);
}

/* ---- the other policies' basics, through the same driver --------------- */

static void test_policies_accept_only_known_values(void)
{
	struct apb_evict *e = NULL;

	CHECK_EQ(apb_evict_new((enum apb_eviction)APB_EVICT_COUNT, 4, &e),
		 -EINVAL);
	CHECK(e == NULL);
	for (int p = 0; p < APB_EVICT_COUNT; p++) {
		CHECK_EQ(apb_evict_new((enum apb_eviction)p, 1, &e), 0);
		CHECK(apb_evict_consistent(e));
		apb_evict_free(e);
	}
}

/* One slot: every policy evicts the one chunk there is. */
static void test_one_slot_evicts_the_only_chunk(void)
{
	for (int p = 0; p < APB_EVICT_COUNT; p++) {
		struct sim s;

		sim_start(&s, (enum apb_eviction)p, 1);
		CHECK_EQ(sim_get(&s, 0, false), LOADED);
		CHECK_EQ(sim_get(&s, 1, false), 0);
		CHECK_EQ(sim_get(&s, 1, false), HIT);
		CHECK_EQ(sim_get(&s, 0, false), 1);
		apb_evict_free(s.e);
	}
}

int main(void)
{
	RUN(test_auto_loop_keeps_the_lir_set_and_hits_it_every_pass);
	RUN(test_lru_loop_hits_nothing);
	RUN(test_auto_stream_passes_through_q);
	RUN(test_auto_ghost_reuse_promotes_and_grows_q);
	RUN(test_auto_demoted_chunk_reused_grows_the_lir_set);
	RUN(test_auto_moving_working_set_misses_as_lru_once_adapted);
	RUN(test_auto_prefetch_shrinks_the_lir_set_by_an_eighth_at_most);
	RUN(test_auto_held_chunks_keep_their_place);
	RUN(test_auto_forget_leaves_nothing_behind);
	RUN(test_auto_popular_bottom_chunk_gets_a_second_chance);
	RUN(test_policies_accept_only_known_values);
	RUN(test_one_slot_evicts_the_only_chunk);
	return 0;
}
