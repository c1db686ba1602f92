/*
 * tree.h - the directory tree implied by model names.
 *
 * "bert/config.json" gives a directory "bert" holding a file "config.json".
 * Nodes are numbered 1 .. apb_tree_count(); node 1 is the root, so numbers
 * can serve directly as FUSE inode numbers. The children of a directory are
 * stored contiguously, sorted by name: lookup is a binary search and
 * readdir an index.
 *
 * The tree is immutable after apb_tree_build(); any thread may read it.
 * Builds keep no global state: several threads may build trees at once.
 */
#ifndef APBUNDLE_TREE_H
#define APBUNDLE_TREE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "api.h"
#include "bundle.h"

#ifdef __cplusplus
extern "C" {
#endif

#define APB_TREE_ROOT 1u

struct apb_tree;

struct apb_tree_node {
	const char *name;   /* last component; "" for the root */
	uint64_t parent;    /* node number; the root is its own parent */
	bool is_dir;
	uint32_t model;     /* model index, files only */
	uint32_t nchildren; /* directories only */
};

/* Build from a validated bundle (names already checked with name.h).
 * Returns 0 or -ENOMEM. The tree borrows the bundle's names: keep the
 * bundle open for the tree's lifetime. */
APB_API
int apb_tree_build(const struct apb_bundle *b, struct apb_tree **out);
APB_API
void apb_tree_free(struct apb_tree *t);

APB_API
uint64_t apb_tree_count(const struct apb_tree *t);

/* Node by number; NULL if out of range. */
APB_API
const struct apb_tree_node *apb_tree_node(const struct apb_tree *t,
					  uint64_t ino);

/* Child called name of directory dir: 0 and *ino, -ENOENT, or -ENOTDIR. */
APB_API
int apb_tree_lookup(const struct apb_tree *t, uint64_t dir, const char *name,
		    uint64_t *ino);

/* The i-th child of dir in name order: its number, or 0 past the end. */
APB_API
uint64_t apb_tree_child(const struct apb_tree *t, uint64_t dir, size_t i);

#ifdef __cplusplus
}
#endif

#endif
