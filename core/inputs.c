/*
 * inputs.c - input lists: the (model name, source path) pairs a bundle is
 * written from, and the expansion of `apbundle create`'s INPUT arguments
 * (FILE, NAME=FILE, DIR, NAME=DIR) into such pairs by walking directories.
 *
 * Invariants:
 *  - A list owns copies of every name and path it holds; entries keep the
 *    order they were added in. apb_input_list_add() adds its pair or leaves
 *    the list as it was; an INPUT expansion that fails part-way keeps the
 *    entries it had already added.
 *  - Nothing is validated here beyond what a walk needs: model names, the
 *    name set and the files' readability are checked by the writer, before
 *    it creates anything.
 *  - A directory walk lists each directory's entries in strcmp() order, so
 *    the same tree always gives the same list. It follows links to regular
 *    files, never descends a linked directory (no loops, no escaping the
 *    root), fails on a dangling link and skips FIFOs, sockets and devices.
 *  - Every failure writes one message that starts with the path concerned.
 */
#include "apbundle/inputs.h"

#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "error.h"

/* "PATH: reason" for a failed call; returns rc. */
static int path_err(char *err, size_t err_len, const char *path, int rc)
{
	return apb_fail(rc, err, err_len, "%s: %s", path, strerror(-rc));
}

struct input {
	char *name;
	char *path;
};

struct apb_input_list {
	struct input *v;
	size_t n, cap;
};

int apb_input_list_new(struct apb_input_list **out)
{
	*out = calloc(1, sizeof(**out));
	return *out ? 0 : -ENOMEM;
}

void apb_input_list_free(struct apb_input_list *l)
{
	if (!l)
		return;
	for (size_t i = 0; i < l->n; i++) {
		free(l->v[i].name);
		free(l->v[i].path);
	}
	free(l->v);
	free(l);
}

size_t apb_input_list_count(const struct apb_input_list *l)
{
	return l->n;
}

const char *apb_input_list_name(const struct apb_input_list *l, size_t i)
{
	return i < l->n ? l->v[i].name : NULL;
}

const char *apb_input_list_path(const struct apb_input_list *l, size_t i)
{
	return i < l->n ? l->v[i].path : NULL;
}

int apb_input_list_add(struct apb_input_list *l, const char *name,
		       const char *path)
{
	struct input in = {strdup(name), strdup(path)};

	if (!in.name || !in.path)
		goto nomem;
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 16;
		struct input *v = realloc(l->v, cap * sizeof(*v));

		if (!v)
			goto nomem;
		l->v = v;
		l->cap = cap;
	}
	l->v[l->n++] = in;
	return 0;
nomem:
	free(in.name);
	free(in.path);
	return -ENOMEM;
}

/* "a/b" + "c" -> "a/b/c"; a trailing '/' on dir is not doubled. Empty dir
 * means no prefix at all. Returns a malloc'd string or NULL. */
static char *join(const char *dir, const char *leaf)
{
	size_t dl = strlen(dir);
	bool slash = dl > 0 && dir[dl - 1] != '/';
	size_t n = dl + slash + strlen(leaf) + 1;
	char *s = malloc(n);

	if (s)
		snprintf(s, n, "%s%s%s", dir, slash ? "/" : "", leaf);
	return s;
}

/* Last component of a path, ignoring trailing slashes, copied. */
static char *last_component(const char *path)
{
	size_t end = strlen(path), start;

	while (end > 1 && path[end - 1] == '/')
		end--;
	start = end;
	while (start > 0 && path[start - 1] != '/')
		start--;
	return strndup(path + start, end - start);
}

static int cmp_cstr(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted names of dir's entries, without "." and "..". */
static int read_dir_sorted(const char *dir, char ***names_out, size_t *n_out,
			   char *err, size_t err_len)
{
	DIR *d = opendir(dir);
	char **names = NULL;
	size_t n = 0, cap = 0;
	struct dirent *de;
	int rc = 0;

	if (!d)
		return path_err(err, err_len, dir, -errno);
	for (errno = 0; (de = readdir(d)); errno = 0) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (n == cap) {
			char **v = realloc(names, (cap = cap ? cap * 2 : 32) *
							 sizeof(*v));
			if (!v)
				goto nomem;
			names = v;
		}
		if (!(names[n] = strdup(de->d_name)))
			goto nomem;
		n++;
	}
	if (errno) {
		rc = path_err(err, err_len, dir, -errno);
		goto out;
	}
	if (n)
		qsort(names, n, sizeof(*names), cmp_cstr);
	goto out;
nomem:
	rc = path_err(err, err_len, dir, -ENOMEM);
out:
	closedir(d);
	if (rc) {
		for (size_t i = 0; i < n; i++)
			free(names[i]);
		free(names);
		names = NULL;
		n = 0;
	}
	*names_out = names;
	*n_out = n;
	return rc;
}

static int walk_dir(struct apb_input_list *l, const char *dir,
		    const char *prefix, char *err, size_t err_len);

/* One entry of a directory walk: a file to add, a directory to descend,
 * or something to skip (see apb_input_list_add_arg). */
static int walk_entry(struct apb_input_list *l, const char *path,
		      const char *name, char *err, size_t err_len)
{
	struct stat st;
	int rc;

	if (lstat(path, &st) != 0)
		goto fail;
	if (S_ISDIR(st.st_mode))
		return walk_dir(l, path, name, err, err_len);
	if (S_ISLNK(st.st_mode)) {
		if (stat(path, &st) != 0)
			goto fail;
		if (!S_ISREG(st.st_mode))
			return 0; /* never descend a linked directory */
	}
	if (!S_ISREG(st.st_mode))
		return 0;
	rc = apb_input_list_add(l, name, path);
	if (rc)
		path_err(err, err_len, path, rc);
	return rc;
fail:
	return path_err(err, err_len, path, -errno);
}

static int walk_dir(struct apb_input_list *l, const char *dir,
		    const char *prefix, char *err, size_t err_len)
{
	char **names = NULL;
	size_t n = 0, i;
	int rc = read_dir_sorted(dir, &names, &n, err, err_len);

	for (i = 0; rc == 0 && i < n; i++) {
		char *path = join(dir, names[i]);
		char *name = join(prefix, names[i]);

		if (!path || !name)
			rc = path_err(err, err_len, dir, -ENOMEM);
		else
			rc = walk_entry(l, path, name, err, err_len);
		free(path);
		free(name);
	}
	for (i = 0; i < n; i++)
		free(names[i]);
	free(names);
	return rc;
}

int apb_input_list_add_arg(struct apb_input_list *l, const char *arg,
			   char *err, size_t err_len)
{
	const char *eq = strchr(arg, '=');
	const char *path = eq ? eq + 1 : arg;
	char *name = eq ? strndup(arg, (size_t)(eq - arg)) : last_component(arg);
	struct stat st;
	int rc = 0;

	if (!name) {
		rc = path_err(err, err_len, arg, -ENOMEM);
		goto out;
	}
	if (eq && (name[0] == '\0' || path[0] == '\0')) {
		rc = apb_fail(-EINVAL, err, err_len, "%s: expected NAME=FILE",
			      arg);
		goto out;
	}
	if (stat(path, &st) != 0) {
		rc = path_err(err, err_len, path, -errno);
		goto out;
	}
	if (S_ISDIR(st.st_mode)) {
		rc = walk_dir(l, path, eq ? name : "", err, err_len);
	} else if (S_ISREG(st.st_mode)) {
		rc = apb_input_list_add(l, name, path);
		if (rc)
			path_err(err, err_len, path, rc);
	} else {
		rc = apb_fail(-EINVAL, err, err_len,
			      "%s: not a regular file or directory", path);
	}
out:
	free(name);
	return rc;
}
