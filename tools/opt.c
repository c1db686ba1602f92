/*
 * opt.c - replay_opt(): Belady's OPT (MIN), the most hits any policy could
 * have had on the demand records with the same number of slots, as the
 * reference the real policies are judged against.
 *
 * A backward pass gives every demand access the position of the next
 * access to the same chunk (NEVER if none), with a map from chunk to the
 * position seen last. The forward pass keeps the resident chunks in a map
 * (chunk -> its next use) and a max-heap of (next use, chunk) entries; a
 * hit updates the map and pushes a new entry, leaving the old one stale.
 * A stale entry is recognised when popped: the map no longer holds its
 * next use (positions are unique, and only a chunk never used again has
 * NEVER, which no hit can leave stale), and it is skipped. The heap thus
 * holds at most one entry per access: O(n log n) time.
 *
 * replay_a0(): Aho, Denning and Ullman's A0 with the counts taken from
 * the trace, the best online policy when each access is an independent
 * draw: next to OPT it shows how much of OPT's savings even knowing every
 * chunk's popularity (but not the order of the accesses) can reach.
 */
#include "replay.h"
#include "keymap.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define NEVER UINT64_MAX

struct entry {
	uint64_t next;
	uint64_t key;
};

struct heap {
	struct entry *e;
	uint64_t n;
};

static void heap_push(struct heap *h, struct entry x)
{
	uint64_t i = h->n++;

	while (i > 0 && h->e[(i - 1) / 2].next < x.next) {
		h->e[i] = h->e[(i - 1) / 2];
		i = (i - 1) / 2;
	}
	h->e[i] = x;
}

static struct entry heap_pop(struct heap *h)
{
	struct entry top = h->e[0], last = h->e[--h->n];
	uint64_t i = 0;

	for (;;) {
		uint64_t c = 2 * i + 1;

		if (c >= h->n)
			break;
		if (c + 1 < h->n && h->e[c + 1].next > h->e[c].next)
			c++;
		if (h->e[c].next <= last.next)
			break;
		h->e[i] = h->e[c];
		i = c;
	}
	if (h->n > 0)
		h->e[i] = last;
	return top;
}

/* keys[j]: the chunk of demand access j; next[j]: its next access. */
static int next_uses(const struct trace *t, uint64_t *keys, uint64_t *next)
{
	struct keymap *last;
	uint64_t j = 0;
	int rc = keymap_new(t->demand, &last);

	if (rc)
		return rc;
	for (uint64_t i = 0; i < t->records; i++) {
		struct apb_trace_record r;

		trace_record(t, i, &r);
		if (r.kind == APB_TRACE_KIND_DEMAND)
			keys[j++] = trace_key(r.model, r.chunk);
	}
	while (j-- > 0) {
		uint64_t seen;

		next[j] = keymap_get(last, keys[j], &seen) ? seen : NEVER;
		keymap_put(last, keys[j], j);
	}
	keymap_free(last);
	return 0;
}

/* The bytes of the chunk of key (trace_key()). */
static uint64_t key_len(const struct trace *t, uint64_t key)
{
	return trace_chunk_len(t, (uint32_t)(key >> APB_TRACE_CHUNK_BITS),
			       key & APB_TRACE_CHUNK_MAX);
}

/* Evict the resident chunk used farthest ahead. */
static void evict_farthest(struct heap *h, struct keymap *resident)
{
	for (;;) {
		struct entry x = heap_pop(h);
		uint64_t cur;

		if (keymap_get(resident, x.key, &cur) && cur == x.next) {
			keymap_remove(resident, x.key);
			return;
		}
	}
}

int replay_opt(const struct trace *t, uint64_t budget_bytes,
	       struct replay_result *out)
{
	uint64_t slots = budget_bytes / t->chunk_size, n = t->demand;
	uint64_t *keys = malloc((n ? n : 1) * sizeof(*keys));
	uint64_t *next = malloc((n ? n : 1) * sizeof(*next));
	struct heap h = {malloc((n ? n : 1) * sizeof(*h.e)), 0};
	struct keymap *resident = NULL;
	int rc = -ENOMEM;

	memset(out, 0, sizeof(*out));
	if (slots == 0)
		rc = -EINVAL;
	if (!keys || !next || !h.e || slots == 0)
		goto out;
	rc = next_uses(t, keys, next);
	if (rc == 0)
		rc = keymap_new(slots < n ? slots : n, &resident);
	for (uint64_t j = 0; j < n && rc == 0; j++) {
		uint64_t cur, len = key_len(t, keys[j]);

		out->served_bytes += len;
		if (keymap_get(resident, keys[j], &cur)) {
			out->hits++;
		} else {
			out->misses++;
			out->loaded_bytes += len;
			if (keymap_count(resident) == slots)
				evict_farthest(&h, resident);
		}
		keymap_put(resident, keys[j], next[j]);
		heap_push(&h, (struct entry){next[j], keys[j]});
	}
	out->demand = n;
	out->reuse_hits = out->hits; /* no prefetch: every hit is a reuse */
out:
	keymap_free(resident);
	free(h.e);
	free(next);
	free(keys);
	return rc;
}

/* A distinct demand chunk: its key, demand count and first demand. */
struct rank {
	uint64_t key;
	uint64_t count;
	uint64_t first;
};

/* More demands first; among equals the chunk demanded first. */
static int rank_cmp(const void *pa, const void *pb)
{
	const struct rank *a = pa, *b = pb;

	if (a->count != b->count)
		return a->count > b->count ? -1 : 1;
	return a->first < b->first ? -1 : a->first > b->first;
}

/* What the map holds for a chunk once ranked. */
enum { A0_KEPT_COLD, A0_KEPT_LOADED, A0_TRANSIENT };

/* Count the demands of every distinct chunk into ranks (*distinct of
 * them, in first-demand order); map then holds key -> index. */
static void count_demands(const struct trace *t, struct keymap *map,
			  struct rank *ranks, uint64_t *distinct)
{
	uint64_t j = 0, d = 0;

	for (uint64_t i = 0; i < t->records; i++) {
		struct apb_trace_record r;
		uint64_t key, at;

		trace_record(t, i, &r);
		if (r.kind != APB_TRACE_KIND_DEMAND)
			continue;
		key = trace_key(r.model, r.chunk);
		if (keymap_get(map, key, &at)) {
			ranks[at].count++;
		} else {
			ranks[d] = (struct rank){key, 1, j};
			keymap_put(map, key, d++);
		}
		j++;
	}
	*distinct = d;
}

int replay_a0(const struct trace *t, uint64_t budget_bytes,
	      struct replay_result *out)
{
	uint64_t slots = budget_bytes / t->chunk_size, n = t->demand;
	struct rank *ranks = malloc((n ? n : 1) * sizeof(*ranks));
	struct keymap *map = NULL;
	uint64_t distinct, kept, held = 0;
	bool holding = false;
	int rc = -ENOMEM;

	memset(out, 0, sizeof(*out));
	if (slots == 0)
		rc = -EINVAL;
	if (!ranks || slots == 0 || keymap_new(n, &map) != 0)
		goto out;
	rc = 0;
	count_demands(t, map, ranks, &distinct);
	qsort(ranks, distinct, sizeof(*ranks), rank_cmp);
	/* One slot stays for the rest: with one slot nothing is kept. */
	kept = slots - 1 < distinct ? slots - 1 : distinct;
	for (uint64_t i = 0; i < distinct; i++)
		keymap_put(map, ranks[i].key,
			   i < kept ? A0_KEPT_COLD : A0_TRANSIENT);
	for (uint64_t i = 0; i < t->records; i++) {
		struct apb_trace_record r;
		uint64_t key, len, state = A0_TRANSIENT; /* all are in map */
		bool hit;

		trace_record(t, i, &r);
		if (r.kind != APB_TRACE_KIND_DEMAND)
			continue;
		key = trace_key(r.model, r.chunk);
		len = key_len(t, key);
		keymap_get(map, key, &state);
		if (state == A0_TRANSIENT) {
			hit = holding && held == key;
			holding = true;
			held = key;
		} else {
			hit = state == A0_KEPT_LOADED;
			keymap_put(map, key, A0_KEPT_LOADED);
		}
		out->served_bytes += len;
		if (hit) {
			out->hits++;
		} else {
			out->misses++;
			out->loaded_bytes += len;
		}
	}
	out->demand = n;
	out->reuse_hits = out->hits; /* no prefetch: every hit is a reuse */
out:
	keymap_free(map);
	free(ranks);
	return rc;
}
