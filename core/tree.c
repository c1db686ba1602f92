/*
 * tree.c - the directory tree implied by model names.
 *
 * Build: the bundle hands out names sorted with strcmp(). All names under a
 * directory prefix "a/b/" are then contiguous, so one pass with a stack of
 * the directories of the previous name creates every directory exactly once.
 * Afterwards the children of each directory are gathered into one shared
 * array (a counting sort by parent) and sorted by component name, because
 * path order is not component order ("a-b" < "a/x" but "a" < "a-b").
 *
 * Invariants after build:
 *  - node numbers run 1 .. count; node 1 is the root and its own parent;
 *  - a directory's children are kids[first .. first + nchildren), sorted by
 *    strcmp() of their names, and no two share a name (names.h guarantees
 *    that no model name is also a directory).
 */
#include <apbundle/tree.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct node {
	struct apb_tree_node pub;
	char *owned_name; /* directory names are copies; file names borrowed */
	size_t first;     /* index of the first child in tree->kids */
};

struct apb_tree {
	struct node *nodes; /* nodes[0] unused so that numbers are indices */
	uint64_t count;
	size_t cap;
	uint64_t *kids;     /* children of every directory, grouped by parent */
};

static int add_node(struct apb_tree *t, const char *name, size_t len,
		    uint64_t parent, bool is_dir, uint32_t model)
{
	if (t->count + 1 >= t->cap) {
		size_t cap = t->cap ? t->cap * 2 : 64;
		struct node *n = realloc(t->nodes, cap * sizeof(*n));
		if (!n)
			return -ENOMEM;
		t->nodes = n;
		t->cap = cap;
	}
	struct node *n = &t->nodes[++t->count];
	memset(n, 0, sizeof(*n));
	if (is_dir) {
		n->owned_name = strndup(name, len);
		if (!n->owned_name) {
			t->count--;
			return -ENOMEM;
		}
		n->pub.name = n->owned_name;
	} else {
		n->pub.name = name; /* the tail of the model name: NUL-terminated */
	}
	n->pub.parent = parent;
	n->pub.is_dir = is_dir;
	n->pub.model = model;
	if (t->count != APB_TREE_ROOT) /* the root is not its own child */
		t->nodes[parent].pub.nchildren++;
	return 0;
}

/* Create the nodes for one name, reusing the directories on the stack that
 * the previous name opened. stack[d] is the node of the depth-d directory
 * and stack_ends[d] the byte length of its path prefix. */
static int add_name(struct apb_tree *t, const char *name, uint32_t model,
		    uint64_t *stack, size_t *stack_ends, size_t *depth)
{
	size_t d = 0, start = 0;
	const char *slash;

	while ((slash = strchr(name + start, '/'))) {
		size_t end = (size_t)(slash - name);
		bool same = d + 1 < *depth && stack_ends[d + 1] == end &&
			    memcmp(t->nodes[stack[d + 1]].pub.name,
				   name + start, end - start) == 0;
		if (!same) {
			*depth = d + 1; /* pop everything deeper */
			int rc = add_node(t, name + start, end - start,
					  stack[d], true, 0);
			if (rc)
				return rc;
			stack[d + 1] = t->count;
			stack_ends[d + 1] = end;
			*depth = d + 2;
		}
		d++;
		start = end + 1;
	}
	if (*depth > d + 1)
		*depth = d + 1;
	return add_node(t, name + start, strlen(name + start), stack[d], false,
			model);
}

/* A child being sorted: its name beside its number, so that the
 * comparison needs nothing but the two entries (qsort passes no context). */
struct kid {
	const char *name;
	uint64_t ino;
};

static int cmp_kids(const void *a, const void *b)
{
	return strcmp(((const struct kid *)a)->name,
		      ((const struct kid *)b)->name);
}

/* Sort the children of every directory by name, through one array as
 * long as the largest directory. */
static int sort_children(struct apb_tree *t)
{
	uint32_t most = 0;
	struct kid *buf;

	for (uint64_t i = 1; i <= t->count; i++)
		if (t->nodes[i].pub.nchildren > most)
			most = t->nodes[i].pub.nchildren;
	if (most < 2)
		return 0;
	buf = malloc(most * sizeof(*buf));
	if (!buf)
		return -ENOMEM;
	for (uint64_t i = 1; i <= t->count; i++) {
		const struct node *n = &t->nodes[i];
		uint64_t *kids = t->kids + n->first;

		if (!n->pub.is_dir || n->pub.nchildren < 2)
			continue;
		for (uint32_t k = 0; k < n->pub.nchildren; k++)
			buf[k] = (struct kid){t->nodes[kids[k]].pub.name,
					      kids[k]};
		qsort(buf, n->pub.nchildren, sizeof(*buf), cmp_kids);
		for (uint32_t k = 0; k < n->pub.nchildren; k++)
			kids[k] = buf[k].ino;
	}
	free(buf);
	return 0;
}

static int link_children(struct apb_tree *t)
{
	t->kids = malloc((t->count + 1) * sizeof(*t->kids));
	if (!t->kids)
		return -ENOMEM;
	size_t next = 0;
	for (uint64_t i = 1; i <= t->count; i++) {
		t->nodes[i].first = next;
		next += t->nodes[i].pub.nchildren;
	}
	uint32_t *fill = calloc(t->count + 1, sizeof(*fill));
	if (!fill)
		return -ENOMEM;
	for (uint64_t i = 2; i <= t->count; i++) {
		struct node *p = &t->nodes[t->nodes[i].pub.parent];
		t->kids[p->first + fill[t->nodes[i].pub.parent]++] = i;
	}
	free(fill);
	return sort_children(t);
}

int apb_tree_build(const struct apb_bundle *b, struct apb_tree **out)
{
	struct apb_tree *t = calloc(1, sizeof(*t));
	/* a name has at most APB_NAME_MAX / 2 + 1 components */
	uint64_t *stack = calloc(2049, sizeof(*stack));
	size_t *stack_ends = calloc(2049, sizeof(*stack_ends));
	size_t depth = 1;
	int rc = -ENOMEM;

	*out = NULL;
	if (!t || !stack || !stack_ends)
		goto out;
	rc = add_node(t, "", 0, APB_TREE_ROOT, true, 0);
	if (rc)
		goto out;
	stack[0] = APB_TREE_ROOT;
	for (size_t i = 0; i < apb_bundle_count(b); i++) {
		rc = add_name(t, apb_bundle_model(b, i)->name, (uint32_t)i,
			      stack, stack_ends, &depth);
		if (rc)
			goto out;
	}
	rc = link_children(t);
	if (rc)
		goto out;
	*out = t;
	t = NULL;
out:
	apb_tree_free(t);
	free(stack);
	free(stack_ends);
	return rc;
}

void apb_tree_free(struct apb_tree *t)
{
	if (!t)
		return;
	for (uint64_t i = 1; i <= t->count; i++)
		free(t->nodes[i].owned_name);
	free(t->nodes);
	free(t->kids);
	free(t);
}

uint64_t apb_tree_count(const struct apb_tree *t)
{
	return t->count;
}

const struct apb_tree_node *apb_tree_node(const struct apb_tree *t,
					  uint64_t ino)
{
	if (ino < 1 || ino > t->count)
		return NULL;
	return &t->nodes[ino].pub;
}

int apb_tree_lookup(const struct apb_tree *t, uint64_t dir, const char *name,
		    uint64_t *ino)
{
	if (dir < 1 || dir > t->count)
		return -ENOENT;
	const struct node *d = &t->nodes[dir];
	if (!d->pub.is_dir)
		return -ENOTDIR;
	size_t lo = 0, hi = d->pub.nchildren;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		uint64_t k = t->kids[d->first + mid];
		int c = strcmp(name, t->nodes[k].pub.name);
		if (c == 0) {
			*ino = k;
			return 0;
		}
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return -ENOENT;
}

uint64_t apb_tree_child(const struct apb_tree *t, uint64_t dir, size_t i)
{
	if (dir < 1 || dir > t->count || !t->nodes[dir].pub.is_dir ||
	    i >= t->nodes[dir].pub.nchildren)
		return 0;
	return t->kids[t->nodes[dir].first + i];
}
