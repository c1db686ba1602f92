/*
 * inputs.h - the list of models a bundle is written from.
 *
 * An input list holds (model name, source path) pairs, either added one by
 * one or expanded from the command-line forms of `apbundle create` (FILE,
 * NAME=FILE, DIR, NAME=DIR). apb_writer_create_bundle() (writer.h) turns a
 * list into a bundle.
 *
 * Nothing is checked when a pair is added: names, duplicates and the files
 * themselves are checked when the bundle is written. Expansion of a
 * directory only decides which files are listed and under which names.
 *
 * Error reporting: every function returning int returns 0 or a negative
 * errno; apb_input_list_add_arg() also writes one line into err (no
 * trailing newline) that starts with the file concerned: "models/x.bin: No
 * such file or directory".
 *
 * Thread safety: no global state. A list may be used by one thread at a
 * time; different lists are independent.
 */
#ifndef APBUNDLE_INPUTS_H
#define APBUNDLE_INPUTS_H

#include <stddef.h>

#include "api.h"

#ifdef __cplusplus
extern "C" {
#endif

struct apb_input_list;

/* Returns 0 or -ENOMEM. */
APB_API
int apb_input_list_new(struct apb_input_list **out);
APB_API
void apb_input_list_free(struct apb_input_list *l);

APB_API
size_t apb_input_list_count(const struct apb_input_list *l);

/* Name and path of entry i, in the order added. Owned by the list. */
APB_API
const char *apb_input_list_name(const struct apb_input_list *l, size_t i);
APB_API
const char *apb_input_list_path(const struct apb_input_list *l, size_t i);

/* Add one (name, path) pair; both are copied. Nothing is checked here:
 * names and files are checked when the bundle is written. Returns 0 or
 * -ENOMEM. */
APB_API
int apb_input_list_add(struct apb_input_list *l, const char *name,
		       const char *path);

/*
 * Add what one INPUT argument of `apbundle create` stands for:
 *
 *   FILE       one model named after the last component of FILE
 *   NAME=FILE  one model named NAME
 *   DIR        every regular file below DIR, named by its path relative
 *              to DIR ("config.json", "onnx/model.onnx")
 *   NAME=DIR   the same, named "NAME/<relative path>"
 *
 * An argument containing '=' is always split at its first '='; to pass a
 * path that contains '=', give a name: "model.bin=./a=b.bin".
 * Symbolic links: a link given as the argument is followed. Below DIR, a
 * link to a regular file is followed (the model holds the target's bytes),
 * a link to a directory is not descended (no loops, no escaping DIR), and
 * a dangling link is an error. Other non-regular files (FIFOs, sockets,
 * devices) below DIR are skipped; given directly, they are an error.
 * Entries of one directory are added in strcmp() order of their names.
 * Returns 0, -ENOENT/-EACCES/... (the failing call's errno) or -EINVAL
 * (empty name, not a regular file or directory).
 */
APB_API
int apb_input_list_add_arg(struct apb_input_list *l, const char *arg,
			   char *err, size_t err_len);

#ifdef __cplusplus
}
#endif

#endif
