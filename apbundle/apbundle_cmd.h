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

#include <getopt.h>
#include <stdint.h>
#include <stdio.h>

struct apb_bundle;

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

/*
 * Print a model name read from a bundle or a .stats document to f as
 * apb_name_quote() (name.h) shows it - control characters, invalid UTF-8
 * and the characters a terminal acts on as \xNN, a backslash as \\ -
 * whole, then spaces up to width columns. Every command prints names only
 * through here, to a terminal or not, so a hostile name can neither drive
 * the terminal nor pass for another name, and the output does not depend
 * on where it goes. With f NULL nothing is printed. Returns the columns
 * the name takes (one per character; a wide East Asian character takes
 * two on screen, and its row is off by one).
 */
int apb_cmd_print_name(FILE *f, const char *name, int width);

/* A usage error: "apbundle: REASON", c's synopsis, on stderr. Returns the
 * exit status of a usage error, 2. */
__attribute__((format(printf, 2, 3)))
int apb_cmd_usage_error(const struct apb_cmd *c, const char *fmt, ...);

/* getopt_long over a subcommand's arguments (argv[0] is its name; opterr
 * is 0). Returns -1 at the end, '?' after printing a usage error or, for
 * 'h' (every subcommand's --help), the help (*status is then the exit
 * status: 2 or 0), or the option's value. */
int apb_cmd_next_option(const struct apb_cmd *c, int argc, char **argv,
			const struct option *longs, const char *shorts,
			int *status);

/* Open path (a file or a URL), or print "apbundle: PATH: reason" and
 * return NULL. *shown is path as messages show it (a URL's password
 * hidden), for the caller to free. */
struct apb_bundle *apb_cmd_open_bundle(const char *path, char **shown);

/* s as a JSON string, quotes included, to f: '"' and '\' escaped, the
 * characters "How names are printed" escapes and U+2028/U+2029 as \uXXXX,
 * a byte that is not part of valid UTF-8 as \ufffd (the replacement
 * character), everything else as it is. */
void apb_cmd_json_string(FILE *f, const char *s);

/* `apbundle list [--json|--tsv] BUNDLE` (apbundle_list.c). */
int apb_cmd_list(int argc, char **argv);

/* delta per second over ms milliseconds, 0 for ms 0: the rates of
 * `stats --watch` and of create's progress line (apbundle_stats.c). */
double apb_cmd_rate(uint64_t delta, uint64_t ms);

/* CLOCK_MONOTONIC in milliseconds: what rates and intervals are measured
 * with (apbundle.c). */
uint64_t apb_cmd_mono_ms(void);

/* `apbundle stats [--watch[=SECONDS] [--count N]] [--top N] MOUNTPOINT`
 * (apbundle_stats.c). */
int apb_cmd_stats(int argc, char **argv);

#endif
