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
		uint64_t cur;
		uint32_t model = (uint32_t)(keys[j] >> APB_TRACE_CHUNK_BITS);
		uint64_t len = trace_chunk_len(t, model,
					       keys[j] & APB_TRACE_CHUNK_MAX);

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
