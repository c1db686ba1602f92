/*
 * keymap.h - a hash map from 64-bit keys to 64-bit values for apbreplay:
 * open addressing, linear probing, deletion by backward shift (no
 * tombstones, so a map that sees many insert/remove pairs never slows
 * down). Not thread-safe. Keys may be any value but UINT64_MAX.
 */
#ifndef APBREPLAY_KEYMAP_H
#define APBREPLAY_KEYMAP_H

#include <stdbool.h>
#include <stdint.h>

struct keymap;

/* A map for at most max_keys keys at once: 0 or -ENOMEM. */
int keymap_new(uint64_t max_keys, struct keymap **out);
void keymap_free(struct keymap *m);
/* The value of key in *value; false if absent. */
bool keymap_get(const struct keymap *m, uint64_t key, uint64_t *value);
/* Insert or replace. The caller keeps to max_keys. */
void keymap_put(struct keymap *m, uint64_t key, uint64_t value);
/* Remove key if present. */
void keymap_remove(struct keymap *m, uint64_t key);
uint64_t keymap_count(const struct keymap *m);

#endif
