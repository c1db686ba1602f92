/*
 * keymap.c - see keymap.h. The table is a power of two of at least twice
 * max_keys slots, so the load factor stays at or below 1/2 and probes stay
 * short; it never resizes. An empty slot holds the key UINT64_MAX.
 */
#include "keymap.h"

#include "../core/evict.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>

#define EMPTY UINT64_MAX

struct slot {
	uint64_t key;
	uint64_t value;
};

struct keymap {
	struct slot *slots;
	uint64_t mask;  /* slots - 1 */
	uint64_t count;
	uint64_t max_keys;
};

/* SplitMix64's finalizer (the library's): adjacent chunk keys land far
 * apart. */
static uint64_t hash(uint64_t k)
{
	return apb_mix64(k);
}

int keymap_new(uint64_t max_keys, struct keymap **out)
{
	struct keymap *m;
	uint64_t n = 16;

	*out = NULL;
	while (n < 2 * max_keys) {
		if (n > (UINT64_MAX >> 1) / sizeof(struct slot))
			return -ENOMEM;
		n <<= 1;
	}
	m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->slots = malloc(n * sizeof(*m->slots));
	if (!m->slots) {
		free(m);
		return -ENOMEM;
	}
	for (uint64_t i = 0; i < n; i++)
		m->slots[i].key = EMPTY;
	m->mask = n - 1;
	m->max_keys = max_keys;
	*out = m;
	return 0;
}

void keymap_free(struct keymap *m)
{
	if (!m)
		return;
	free(m->slots);
	free(m);
}

/* The slot holding key, or the empty slot where it would go. */
static uint64_t find(const struct keymap *m, uint64_t key)
{
	uint64_t i = hash(key) & m->mask;

	while (m->slots[i].key != EMPTY && m->slots[i].key != key)
		i = (i + 1) & m->mask;
	return i;
}

bool keymap_get(const struct keymap *m, uint64_t key, uint64_t *value)
{
	uint64_t i = find(m, key);

	if (m->slots[i].key == EMPTY)
		return false;
	*value = m->slots[i].value;
	return true;
}

void keymap_put(struct keymap *m, uint64_t key, uint64_t value)
{
	uint64_t i = find(m, key);

	assert(key != EMPTY);
	if (m->slots[i].key == EMPTY) {
		assert(m->count < m->max_keys);
		m->slots[i].key = key;
		m->count++;
	}
	m->slots[i].value = value;
}

void keymap_remove(struct keymap *m, uint64_t key)
{
	uint64_t i = find(m, key), j = i;

	if (m->slots[i].key == EMPTY)
		return;
	m->slots[i].key = EMPTY;
	m->count--;
	/* Backward shift: move up every later entry of the run that could
	 * not be found past the hole any more. */
	for (;;) {
		uint64_t home;

		j = (j + 1) & m->mask;
		if (m->slots[j].key == EMPTY)
			return;
		home = hash(m->slots[j].key) & m->mask;
		/* Entry j stays if its home lies cyclically in (i, j]. */
		if (i <= j ? (i < home && home <= j) : (i < home || home <= j))
			continue;
		m->slots[i] = m->slots[j];
		m->slots[j].key = EMPTY;
		i = j;
	}
}

uint64_t keymap_count(const struct keymap *m)
{
	return m->count;
}
