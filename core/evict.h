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

/* Embedded in each evictable object. Its fields belong to evict.c. The
 * links serve the cold list under every policy and LRU's list; the lfu_
 * fields only LFU-DA. 48 bytes on LP64. */
struct apb_evict_node {
	struct apb_evict_node *prev, *next; /* cold or LRU list, while in it */
	uint64_t lfu_freq;            /* gets since loaded (F) */
	uint64_t lfu_key;             /* K = F + L, set on insert */
	uint64_t lfu_tick;            /* insert order, breaks K ties */
	uint32_t heap_pos;            /* LFU: index in the heap while in it */
	bool cold;                    /* on the cold list */
};

struct apb_evict;

/* A set of at most cap nodes (cap >= 1) under policy, which must be
 * APB_EVICT_LRU or APB_EVICT_LFU. Returns 0 or -ENOMEM. */
int apb_evict_new(enum apb_eviction policy, uint32_t cap,
		  struct apb_evict **out);
/* NULL is a no-op. Nodes still in the set are simply forgotten. */
void apb_evict_free(struct apb_evict *e);

/* A node starts a new life (a chunk is about to be loaded into its slot):
 * forget its history, F = 0. A get that loads it touches it like any
 * other get; a prefetch does not. */
void apb_evict_node_init(struct apb_evict *e, struct apb_evict_node *n);

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
 * for room (LFU's L stays). */
void apb_evict_remove(struct apb_evict *e, struct apb_evict_node *n);

/* Take out the node to evict for room and return it: a cold node if there
 * is one, else the policy's victim; NULL if the set is empty. LFU raises L
 * to a heap victim's K. */
struct apb_evict_node *apb_evict_pop_victim(struct apb_evict *e);

/* As apb_evict_pop_victim(), but never a cold node: the slot for a
 * prefetch, which must not evict another unread prefetch. NULL if every
 * node in the set is cold. */
struct apb_evict_node *apb_evict_pop_warm_victim(struct apb_evict *e);

/* Nodes in the set now, cold ones included; cold ones alone. */
uint32_t apb_evict_count(const struct apb_evict *e);
uint32_t apb_evict_cold_count(const struct apb_evict *e);

#endif
