/*
 * evict.h - internal: the cache's evictable set, under one of the eviction
 * policies of enum apb_eviction (LRU, LFU-DA). evict.c explains the
 * policies; cache.c decides what goes into the set and when.
 *
 * The set holds nodes, not chunks. Each object that may be evicted embeds
 * one struct apb_evict_node (cache.c: struct apb_chunk's "evict" field)
 * and gets itself back from a popped node with offsetof, the container-of
 * idiom. Intrusive rather than a set of pointers plus a callback: the node
 * carries everything a policy orders by (list links; frequency, key, tick
 * and heap position; the cold mark), so evict.c never sees struct
 * apb_chunk, the heap compares nodes without calling out, and no call
 * allocates: the only
 * memory is the set itself and, for LFU, a heap array of cap pointers, both
 * allocated by apb_evict_new().
 *
 * Thread safety: none of its own. The caller serializes every call on a
 * set and every access to its nodes (the cache holds its mutex).
 *
 * Nothing here is installed or visible outside libapbundle.
 */
#ifndef APB_CORE_EVICT_H
#define APB_CORE_EVICT_H

#include <stdbool.h>
#include <stdint.h>

#include "apbundle/cache.h"

/* A link of auto's recency stack S, which holds both chunks (in struct
 * apb_evict_node) and ghosts of evicted ones (evict.c's struct ghost). */
struct apb_evict_link {
	struct apb_evict_link *down, *up; /* toward S's bottom, toward its top */
	bool ghost;                   /* in a ghost, not a node */
};

/* Embedded in each evictable object. Its fields belong to evict.c. The
 * links serve the cold list under every policy, LRU's list and auto's Q
 * and LIR lists; the rest is LFU-DA's or auto's, by the set's policy.
 * 72 bytes on LP64. */
struct apb_evict_node {
	struct apb_evict_node *prev, *next; /* cold, LRU, Q or LIR list */
	union {
		struct { /* LFU-DA */
			uint64_t lfu_freq;    /* gets since loaded (F) */
			uint64_t lfu_key;     /* K = F + L, set on insert */
			uint64_t lfu_tick;    /* insert order, breaks K ties */
			uint32_t heap_pos;    /* index in the heap while in it */
		};
		struct { /* auto */
			struct apb_evict_link auto_s; /* place in S */
			uint64_t index;       /* the chunk's key, for ghosts */
			uint32_t model;
			uint8_t auto_status;  /* untracked, LIR or HIR */
			bool auto_in_s;       /* in S (auto_s linked) */
			bool auto_listed;     /* on its Q or LIR list */
			bool auto_demoted;    /* HIR since S's bottom gave way */
			uint16_t auto_uses;   /* gets since loaded, saturating */
		};
	};
	bool cold;                    /* on the cold list */
};

struct apb_evict;

/* splitmix64's finalizer: every input bit reaches the low bits. */
static inline uint64_t apb_mix64(uint64_t h)
{
	h ^= h >> 30;
	h *= 0xbf58476d1ce4e5b9ull;
	h ^= h >> 27;
	h *= 0x94d049bb133111ebull;
	h ^= h >> 31;
	return h;
}

/* The hash of a chunk key (model, index), for the cache's table and
 * auto's ghosts. */
static inline uint64_t apb_key_hash(uint32_t model, uint64_t index)
{
	return apb_mix64(index * 0x9e3779b97f4a7c15ull + model);
}

/* A set of at most cap nodes (cap >= 1) under policy. Returns 0, -EINVAL
 * for a policy outside enum apb_eviction, or -ENOMEM. */
int apb_evict_new(enum apb_eviction policy, uint32_t cap,
		  struct apb_evict **out);
/* NULL is a no-op. Nodes still in the set are simply forgotten. */
void apb_evict_free(struct apb_evict *e);

/* A node starts a new life as chunk index of model (a chunk is about to
 * be loaded into its slot): forget its history, F = 0. A get that loads it
 * touches it like any other get; a prefetch does not. */
void apb_evict_node_init(struct apb_evict *e, struct apb_evict_node *n,
			 uint32_t model, uint64_t index);

/* The object was used (a get). LFU counts it in F, which takes effect at
 * the node's next insert; LRU orders by insert alone and ignores it. */
void apb_evict_touch(struct apb_evict *e, struct apb_evict_node *n);

/* Add n, which is not in the set; the set must hold fewer than cap. */
void apb_evict_insert(struct apb_evict *e, struct apb_evict_node *n);

/* Add n, which is not in the set and was never used (loaded ahead of
 * demand, not yet read), as the next victim: LRU puts it at the victim
 * end, LFU gives it F = 0, K = L. evict.c says why. */
void apb_evict_insert_cold(struct apb_evict *e, struct apb_evict_node *n);

/* Take n, which is in the set, out of it, without counting it as evicted
 * for room (LFU's L stays). The node keeps its history: a get holds it. */
void apb_evict_remove(struct apb_evict *e, struct apb_evict_node *n);

/* n, which is not in the set, leaves the cache other than as a victim (a
 * clear, evict_model, a failed load, a chunk detached from its holders):
 * forget its history, leaving no ghost. A no-op for a node popped as a
 * victim or never touched. */
void apb_evict_forget(struct apb_evict *e, struct apb_evict_node *n);

/* Take out the node to evict for room and return it: a cold node if there
 * is one, else the policy's victim (auto: Q's head before any cold node);
 * NULL if the set is empty. LFU raises L to a heap victim's K. */
struct apb_evict_node *apb_evict_pop_victim(struct apb_evict *e);

/* As apb_evict_pop_victim(), but never a cold node: the slot for a
 * prefetch, which must not evict another unread prefetch. NULL if every
 * node in the set is cold (auto: or if the prefetches took their share of
 * the LIR set). */
struct apb_evict_node *apb_evict_pop_warm_victim(struct apb_evict *e);

/* Nodes in the set now, cold ones included; cold ones alone. */
uint32_t apb_evict_count(const struct apb_evict *e);
uint32_t apb_evict_cold_count(const struct apb_evict *e);

/* auto's state, for the tests; zeros for other policies. */
struct apb_evict_auto_stats {
	uint32_t lir;                 /* chunks with LIR status (resident) */
	uint32_t lir_max;             /* the LIR set's current target */
	uint32_t hir_queued;          /* evictable HIR chunks (Q) */
	uint32_t ghosts;              /* evicted chunks remembered in S */
	uint64_t lir_evictions;       /* victims taken from the LIR set */
};
void apb_evict_auto_stats(const struct apb_evict *e,
			  struct apb_evict_auto_stats *out);

/* Every invariant of the set, in O(n) (auto: S, Q, the LIR list, the
 * ghosts and their counts agree). For assert() and tests. */
bool apb_evict_consistent(const struct apb_evict *e);

#endif
