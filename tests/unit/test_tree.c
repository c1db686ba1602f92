/* test_tree.c - the directory tree built from model names. */
#include "fixture.h"

#include <apbundle/bundle.h>
#include <apbundle/tree.h>

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static struct apb_bundle *open_names(const char *const *names, size_t n)
{
	char tmpl[] = "/tmp/apb-tree-XXXXXX";

	return open_empty_models(tmpl, names, n);
}

static const char *child_name(const struct apb_tree *t, uint64_t dir, size_t i)
{
	return apb_tree_node(t, apb_tree_child(t, dir, i))->name;
}

static void directories_come_from_slashes_and_sort_by_component(void)
{
	const char *names[] = {"b", "a/y/z", "c/d", "a-b", "a/x"};
	struct apb_bundle *b = open_names(names, 5);
	struct apb_tree *t;
	uint64_t a, y, z, ab;

	CHECK_EQ(apb_tree_build(b, &t), 0);
	/* root, a, a/y, c + five files */
	CHECK_EQ(apb_tree_count(t), 9);
	const struct apb_tree_node *root = apb_tree_node(t, APB_TREE_ROOT);
	CHECK(root->is_dir);
	CHECK_EQ(root->parent, APB_TREE_ROOT);
	CHECK_EQ(root->nchildren, 4);
	/* component order: "a" < "a-b", although "a-b" < "a/x" as paths */
	CHECK(strcmp(child_name(t, APB_TREE_ROOT, 0), "a") == 0);
	CHECK(strcmp(child_name(t, APB_TREE_ROOT, 1), "a-b") == 0);
	CHECK(strcmp(child_name(t, APB_TREE_ROOT, 2), "b") == 0);
	CHECK(strcmp(child_name(t, APB_TREE_ROOT, 3), "c") == 0);
	CHECK_EQ(apb_tree_child(t, APB_TREE_ROOT, 4), 0);

	CHECK_EQ(apb_tree_lookup(t, APB_TREE_ROOT, "a", &a), 0);
	CHECK(apb_tree_node(t, a)->is_dir);
	CHECK_EQ(apb_tree_node(t, a)->nchildren, 2);
	CHECK_EQ(apb_tree_lookup(t, a, "y", &y), 0);
	CHECK_EQ(apb_tree_node(t, y)->parent, a);
	CHECK_EQ(apb_tree_lookup(t, y, "z", &z), 0);
	CHECK(!apb_tree_node(t, z)->is_dir);
	size_t idx;
	CHECK_EQ(apb_bundle_find(b, "a/y/z", &idx), 0);
	CHECK_EQ(apb_tree_node(t, z)->model, idx);
	CHECK_EQ(apb_tree_lookup(t, APB_TREE_ROOT, "a-b", &ab), 0);
	CHECK(!apb_tree_node(t, ab)->is_dir);

	apb_tree_free(t);
	apb_bundle_close(b);
}

static void lookups_fail_with_the_right_errno(void)
{
	const char *names[] = {"x/file"};
	struct apb_bundle *b = open_names(names, 1);
	struct apb_tree *t;
	uint64_t x, f, ino;

	CHECK_EQ(apb_tree_build(b, &t), 0);
	CHECK_EQ(apb_tree_lookup(t, APB_TREE_ROOT, "y", &ino), -ENOENT);
	CHECK_EQ(apb_tree_lookup(t, APB_TREE_ROOT, "x", &x), 0);
	CHECK_EQ(apb_tree_lookup(t, x, "file", &f), 0);
	CHECK_EQ(apb_tree_lookup(t, f, "z", &ino), -ENOTDIR);
	CHECK_EQ(apb_tree_lookup(t, 999, "z", &ino), -ENOENT);
	CHECK(apb_tree_node(t, 0) == NULL);
	CHECK(apb_tree_node(t, apb_tree_count(t) + 1) == NULL);
	CHECK_EQ(apb_tree_child(t, f, 0), 0);
	apb_tree_free(t);
	apb_bundle_close(b);
}

static void an_empty_bundle_is_a_lone_root(void)
{
	struct apb_bundle *b = open_names(NULL, 0);
	struct apb_tree *t;

	CHECK_EQ(apb_tree_build(b, &t), 0);
	CHECK_EQ(apb_tree_count(t), 1);
	CHECK_EQ(apb_tree_node(t, APB_TREE_ROOT)->nchildren, 0);
	apb_tree_free(t);
	apb_bundle_close(b);
}

static void deep_and_wide_trees_keep_every_name(void)
{
	enum { N = 500 };
	static char bufs[N][32];
	const char *names[N];
	struct apb_bundle *b;
	struct apb_tree *t;

	for (int i = 0; i < N; i++) {
		snprintf(bufs[i], sizeof(bufs[i]), "d%d/e%d/f%04d", i % 7,
			 i % 3, i);
		names[i] = bufs[i];
	}
	b = open_names(names, N);
	CHECK_EQ(apb_tree_build(b, &t), 0);
	CHECK_EQ(apb_tree_count(t), 1 + 7 + 21 + N);
	for (int i = 0; i < N; i++) {
		uint64_t d, e, f;
		char dn[8], en[8];
		snprintf(dn, sizeof(dn), "d%d", i % 7);
		snprintf(en, sizeof(en), "e%d", i % 3);
		CHECK_EQ(apb_tree_lookup(t, APB_TREE_ROOT, dn, &d), 0);
		CHECK_EQ(apb_tree_lookup(t, d, en, &e), 0);
		CHECK_EQ(apb_tree_lookup(t, e, bufs[i] + strlen(dn) + strlen(en) + 2, &f), 0);
		CHECK(strcmp(apb_bundle_model(b, apb_tree_node(t, f)->model)->name, bufs[i]) == 0);
	}
	apb_tree_free(t);
	apb_bundle_close(b);
}

/*
 * Trees are built on any thread: nothing of a build may be global. One
 * thread builds a tree whose root children need reordering ("bNNNN-x"
 * comes before "bNNNN/f" as a path, after the directory "bNNNN" as a
 * component), another at the same time trees of plain names; each checks
 * its root children are in strcmp() order. With a sort context shared
 * between builds, one build's comparisons read the other's nodes.
 */
#define CONCURRENT_NAMES 400
#define CONCURRENT_ROUNDS 300

struct builder {
	struct apb_bundle *b;
	size_t root_children;
};

static void *build_rounds(void *arg)
{
	struct builder *bd = arg;

	for (int r = 0; r < CONCURRENT_ROUNDS; r++) {
		struct apb_tree *t;

		CHECK_EQ(apb_tree_build(bd->b, &t), 0);
		CHECK_EQ(apb_tree_node(t, APB_TREE_ROOT)->nchildren,
			 bd->root_children);
		for (size_t i = 1; i < bd->root_children; i++)
			CHECK(strcmp(child_name(t, APB_TREE_ROOT, i - 1),
				     child_name(t, APB_TREE_ROOT, i)) < 0);
		apb_tree_free(t);
	}
	return NULL;
}

static struct apb_bundle *open_generated(const char *fmt, size_t per, size_t n)
{
	char **names = calloc(n * per, sizeof(*names));
	struct apb_bundle *b;

	CHECK(names != NULL);
	for (size_t i = 0; i < n * per; i++) {
		names[i] = malloc(32);
		CHECK(names[i] != NULL);
		snprintf(names[i], 32, fmt, i / per, i % per ? "/f" : "-x");
	}
	b = open_names((const char *const *)names, n * per);
	for (size_t i = 0; i < n * per; i++)
		free(names[i]);
	free(names);
	return b;
}

static void trees_build_on_several_threads_at_once(void)
{
	struct builder mixed = {
		open_generated("b%04zu%s", 2, CONCURRENT_NAMES),
		2 * CONCURRENT_NAMES,
	};
	struct builder plain = {
		open_generated("a%04zu%.0s", 1, CONCURRENT_NAMES),
		CONCURRENT_NAMES,
	};
	pthread_t t[2];

	CHECK_EQ(pthread_create(&t[0], NULL, build_rounds, &mixed), 0);
	CHECK_EQ(pthread_create(&t[1], NULL, build_rounds, &plain), 0);
	CHECK_EQ(pthread_join(t[0], NULL), 0);
	CHECK_EQ(pthread_join(t[1], NULL), 0);
	apb_bundle_close(mixed.b);
	apb_bundle_close(plain.b);
}

int main(void)
{
	RUN(directories_come_from_slashes_and_sort_by_component);
	RUN(lookups_fail_with_the_right_errno);
	RUN(an_empty_bundle_is_a_lone_root);
	RUN(deep_and_wide_trees_keep_every_name);
	RUN(trees_build_on_several_threads_at_once);
	return 0;
}
