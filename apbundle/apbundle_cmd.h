/*
 * apbundle_cmd.h - internal to the `apbundle` executable: what the files of
 * the command line share.
 *
 * apbundle.c owns the command table, usage messages and dispatch; each
 * subcommand is an entry point `int run(int argc, char **argv)` where
 * argv[0] is the subcommand's name and the result is the exit status (0
 * success, 1 failure, 2 usage error). Subcommands that live in other files
 * are declared here and reach their own table entry through
 * apb_cmd_find() for usage errors and help.
 *
 * Not part of libapbundle; nothing here is installed.
 */
#ifndef APB_CORE_APBUNDLE_CMD_H
#define APB_CORE_APBUNDLE_CMD_H

/* One subcommand: name, synopsis, help text and entry point (apbundle.c). */
struct apb_cmd;

/* The subcommand called name, or NULL. Points into a static table. */
const struct apb_cmd *apb_cmd_find(const char *name);

/*
 * Parse "CMD [-h] ARGS..." expecting exactly nargs operands; with out_path
 * non-NULL, -o/--output PATH is accepted too and stored there (extract).
 * Leaves optind at the first operand. Returns -1 to go on, or an exit
 * status: 0 after printing the help, 2 after a usage error.
 */
int apb_cmd_operands(const struct apb_cmd *c, int argc, char **argv, int nargs,
		     const char **out_path);

/* `apbundle stats MOUNTPOINT` (apbundle_stats.c). */
int apb_cmd_stats(int argc, char **argv);

#endif
