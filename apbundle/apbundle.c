/*
 * apbundle.c - the `apbundle` command: create, list, verify, extract, stats.
 *
 * This file is only the command line: it parses arguments, calls the
 * library (writer.h to write, extract and verify, bundle.h to read) and
 * prints. It holds no format knowledge of its own. It owns the command
 * table and the argument helpers of apbundle_cmd.h; `stats`, which reads a
 * mount rather than a bundle, is in apbundle_stats.c.
 *
 * Conventions every subcommand keeps:
 *  - Exit status 0 on success, 1 on failure (for verify: some model does
 *    not match or cannot be read), 2 on a usage error (which also prints
 *    the command's synopsis to stderr).
 *  - Errors go to stderr as one line "apbundle: <file>: <reason>".
 *  - Names from a bundle or a .stats document are printed escaped, by
 *    apb_cmd_print_name() only.
 *  - Results go to stdout, progress to stderr, and progress only when
 *    stderr is a terminal and the job is larger than PROGRESS_MIN_BYTES.
 *  - create and extract write atomically (see writer.h). SIGINT, SIGTERM
 *    and SIGHUP only set a flag that the writer polls, so the temporary
 *    file is removed by ordinary code, not in a signal handler; the
 *    command then dies of the same signal so its caller sees why.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdarg.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "apbundle/bundle.h"
#include "apbundle/checksum.h"
#include "apbundle/name.h"
#include "apbundle/size.h"
#include "apbundle/writer.h"

#include "apbundle_cmd.h"

#define EXIT_USAGE 2
#define PROGRESS_MIN_BYTES (UINT64_C(64) << 20)
#define ERR_LEN 1024
#define ZSTD_LEVEL_MAX 22

/* ================================================================== */
/* Usage                                                               */
/* ================================================================== */

struct apb_cmd {
	const char *name;
	const char *synopsis; /* one or more "apbundle ..." lines */
	const char *help;     /* what follows the synopsis in `help CMD` */
	int (*run)(int argc, char **argv);
};

static void print_main_usage(FILE *f)
{
	fputs("Usage: apbundle COMMAND [ARGS]\n"
	      "\n"
	      "Create, inspect and unpack .apbundle model bundles.\n"
	      "\n"
	      "Commands:\n"
	      "  create   pack model files into a bundle\n"
	      "  list     show the models of a bundle\n"
	      "  verify   check the checksum of every model of a bundle\n"
	      "  extract  copy one model out of a bundle\n"
	      "  stats    show the cache statistics of a mounted bundle\n"
	      "  help     show the help of a command\n"
	      "\n"
	      "Options:\n"
	      "  -h, --help     show this help\n"
	      "  -V, --version  show the version\n"
	      "\n"
	      "Exit status: 0 success, 1 failure, 2 usage error.\n",
	      f);
}

/* See apbundle_cmd.h. */
int apb_cmd_usage_error(const struct apb_cmd *c, const char *fmt, ...)
{
	va_list ap;

	fputs("apbundle: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	if (c)
		fprintf(stderr, "Usage: %sTry 'apbundle help %s'.\n",
			c->synopsis, c->name);
	else
		fputs("Try 'apbundle --help'.\n", stderr);
	return EXIT_USAGE;
}

/* Print "Usage: SYNOPSIS HELP" of c to stdout (for -h/--help). */
static void print_help(const struct apb_cmd *c)
{
	printf("Usage: %s%s", c->synopsis, c->help);
}

/* See apbundle_cmd.h. */
int apb_cmd_next_option(const struct apb_cmd *c, int argc, char **argv,
			const struct option *longs, const char *shorts,
			int *status)
{
	int opt = getopt_long(argc, argv, shorts, longs, NULL);

	if (opt == 'h') {
		print_help(c);
		*status = 0;
		opt = '?';
	} else if (opt == '?') {
		*status = apb_cmd_usage_error(c, "unknown option '%s'",
					      argv[optind - 1]);
	} else if (opt == ':') {
		*status = apb_cmd_usage_error(c, "option '%s' needs a value",
					      argv[optind - 1]);
		opt = '?';
	}
	return opt;
}

/* ================================================================== */
/* Signals and progress                                                */
/* ================================================================== */

static volatile sig_atomic_t got_signal;

static void on_signal(int sig)
{
	got_signal = sig;
}

/* No SA_RESTART: a blocked read returns EINTR and the writer sees the
 * flag at once instead of after the next buffer. */
static void catch_signals(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
}

/* After cleaning up, die of the signal that stopped us (exit 128 + n). */
static int die_of_signal(void)
{
	int sig = got_signal;

	signal(sig, SIG_DFL);
	raise(sig);
	return 128 + sig;
}

struct progress {
	bool tty;         /* stderr is a terminal */
	bool shown;       /* a progress line is on screen */
	uint64_t base;    /* bytes finished before the current callback's 0 */
	int last_permille;
};

static void progress_init(struct progress *p)
{
	memset(p, 0, sizeof(*p));
	p->tty = isatty(STDERR_FILENO);
	p->last_permille = -1;
}

/* Start redrawing the updating line: "\r  37% 1.2 GiB / 3.2 GiB", once
 * every 0.1%. Returns whether it did; the caller may add to the line,
 * then ends it with progress_end(). */
static bool progress_begin(struct progress *p, uint64_t done, uint64_t total)
{
	char a[32], b[32];
	int permille;

	if (!p->tty || total <= PROGRESS_MIN_BYTES)
		return false;
	permille = (int)(done * 1000 / total);
	if (permille == p->last_permille)
		return false;
	p->last_permille = permille;
	p->shown = true;
	fprintf(stderr, "\r%4d%% %s / %s", permille / 10,
		apb_size_format(done, a, sizeof(a)),
		apb_size_format(total, b, sizeof(b)));
	return true;
}

/* Clear what is left of the previous, longer line and show this one. */
static void progress_end(void)
{
	fputs("\033[K", stderr);
	fflush(stderr);
}

static void progress_show(void *arg, uint64_t done, uint64_t total)
{
	struct progress *p = arg;

	if (progress_begin(p, done + p->base, total))
		progress_end();
}

static void progress_clear(struct progress *p)
{
	if (p->shown)
		fputs("\r\033[K", stderr);
	p->shown = false;
	p->last_permille = -1;
}

/* ================================================================== */
/* create                                                              */
/* ================================================================== */

/* What create says while and after it writes (--progress=). */
enum create_progress {
	CREATE_PROGRESS_AUTO, /* a line on stderr if it is a terminal */
	CREATE_PROGRESS_JSON, /* JSON lines on stdout (docs/USAGE.md) */
	CREATE_PROGRESS_NONE,
};

#define JSON_PROGRESS_EVERY_MS 200

struct create_ctx {
	enum create_progress mode;
	struct progress p;       /* the terminal line */
	uint64_t start_ms;       /* CLOCK_MONOTONIC */
	uint64_t last_json_ms;
	uint64_t total;          /* input bytes, from the writer's callback */
	bool json_started;
};

/* See apbundle_cmd.h. */
uint64_t apb_cmd_mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* "0:07", "12:34", "1:02:03". */
static char *clock_format(uint64_t secs, char *buf, size_t len)
{
	if (secs >= 3600)
		snprintf(buf, len, "%llu:%02llu:%02llu",
			 (unsigned long long)(secs / 3600),
			 (unsigned long long)(secs / 60 % 60),
			 (unsigned long long)(secs % 60));
	else
		snprintf(buf, len, "%llu:%02llu", (unsigned long long)(secs / 60),
			 (unsigned long long)(secs % 60));
	return buf;
}

/* The terminal line: "  37% 1.2 GiB / 3.2 GiB  85.3 MiB/s  ETA 0:23",
 * the rate the mean since the start (steadier than the last interval's,
 * which batches of compressed blocks make jumpy). */
static void create_tty_line(struct create_ctx *x, uint64_t done, uint64_t total)
{
	uint64_t ms = apb_cmd_mono_ms() - x->start_ms;
	char r[32], eta[32];

	if (!progress_begin(&x->p, done, total))
		return;
	if (ms > 0 && done > 0) {
		double rate = apb_cmd_rate(done, ms);

		fprintf(stderr, "  %s/s  ETA %s",
			apb_size_format((uint64_t)rate, r, sizeof(r)),
			clock_format((uint64_t)((double)(total - done) / rate + 0.5),
				     eta, sizeof(eta)));
	}
	progress_end();
}

static void create_progress_cb(void *arg, uint64_t done, uint64_t total)
{
	struct create_ctx *x = arg;
	uint64_t now = apb_cmd_mono_ms();

	x->total = total;
	if (x->mode == CREATE_PROGRESS_AUTO) {
		create_tty_line(x, done, total);
		return;
	}
	if (x->mode != CREATE_PROGRESS_JSON)
		return;
	/* The first and last calls always; between them at most one line
	 * every JSON_PROGRESS_EVERY_MS. */
	if (x->json_started && done != total &&
	    now - x->last_json_ms < JSON_PROGRESS_EVERY_MS)
		return;
	x->json_started = true;
	x->last_json_ms = now;
	printf("{\"event\":\"progress\",\"done\":%llu,\"total\":%llu,"
	       "\"seconds\":%.3f}\n", (unsigned long long)done,
	       (unsigned long long)total, (double)(now - x->start_ms) / 1000.0);
	fflush(stdout);
}

/* The one line said after a create that succeeded: on stderr as text
 * always, and with --progress=json also as the last JSON line. */
static void create_summary(const struct create_ctx *x, const char *out,
			   size_t models)
{
	struct stat st;
	uint64_t written = stat(out, &st) == 0 ? (uint64_t)st.st_size : 0;
	uint64_t ms = apb_cmd_mono_ms() - x->start_ms;
	char a[32], b[32], ratio[32] = "-";

	if (x->total)
		snprintf(ratio, sizeof(ratio), "%.2f",
			 (double)written / (double)x->total);
	fputs("created ", stderr);
	apb_cmd_print_name(stderr, out, 0);
	fprintf(stderr, ": %zu model%s, %s in, %s written (ratio %s), "
		"%llu.%03llu s\n", models, models == 1 ? "" : "s",
		apb_size_format(x->total, a, sizeof(a)),
		apb_size_format(written, b, sizeof(b)), ratio,
		(unsigned long long)(ms / 1000), (unsigned long long)(ms % 1000));
	if (x->mode != CREATE_PROGRESS_JSON)
		return;
	fputs("{\"event\":\"done\",\"bundle\":", stdout);
	apb_cmd_json_string(stdout, out);
	printf(",\"models\":%zu,\"bytes\":%llu,\"written\":%llu,\"ratio\":",
	       models, (unsigned long long)x->total,
	       (unsigned long long)written);
	if (x->total)
		printf("%.4f", (double)written / (double)x->total);
	else
		fputs("null", stdout);
	printf(",\"seconds\":%.3f}\n", (double)ms / 1000.0);
	fflush(stdout);
}

static int parse_compress(const char *s, struct apb_writer_options *o)
{
	char *end;
	long level;

	if (strcmp(s, "none") == 0) {
		o->compression = APB_WRITER_STORE;
		return 0;
	}
	if (strncmp(s, "zstd", 4) != 0 || (s[4] != '\0' && s[4] != ':'))
		return -EINVAL;
	o->compression = APB_WRITER_ZSTD;
	if (s[4] == '\0')
		return 0;
	errno = 0;
	level = strtol(s + 5, &end, 10);
	if (errno || end == s + 5 || *end || level < 1 || level > ZSTD_LEVEL_MAX)
		return -EINVAL;
	o->compression_level = (int)level;
	return 0;
}

/* Parse create's options into o; returns -1 to go on or an exit status. */
static int create_options(const struct apb_cmd *c, int argc, char **argv,
			  struct apb_writer_options *o,
			  enum create_progress *progress)
{
	static const struct option longs[] = {
		{"compress", required_argument, NULL, 'c'},
		{"block-size", required_argument, NULL, 's'},
		/* The old spelling, from before the bundle's unit was named
		 * a block (a chunk is the daemon cache's): scripts pass it. */
		{"chunk-size", required_argument, NULL, 'S'},
		{"format", required_argument, NULL, 'f'},
		{"progress", required_argument, NULL, 'p'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	int opt, status = -1;

	while ((opt = apb_cmd_next_option(c, argc, argv, longs, ":h",
					  &status)) != -1) {
		switch (opt) {
		case 'c':
			if (parse_compress(optarg, o) != 0)
				return apb_cmd_usage_error(c, "--compress: '%s' is not "
					"none, zstd or zstd:LEVEL (1-%d)",
					optarg, ZSTD_LEVEL_MAX);
			break;
		case 's':
		case 'S':
			if (apb_size_parse(optarg, &o->block_size) != 0 ||
			    o->block_size < APB_BLOCK_SIZE_MIN ||
			    o->block_size > APB_BLOCK_SIZE_MAX ||
			    o->block_size % APB_BLOCK_SIZE_MIN)
				return apb_cmd_usage_error(c, "--%s: '%s' is not "
					"a multiple of 4096 bytes from 4K to 16M",
					opt == 'S' ? "chunk-size" : "block-size",
					optarg);
			break;
		case 'f':
			if (strcmp(optarg, "1") && strcmp(optarg, "2"))
				return apb_cmd_usage_error(c, "--format: '%s' "
					"is not 1 or 2", optarg);
			o->format = (unsigned)(optarg[0] - '0');
			break;
		case 'p':
			if (strcmp(optarg, "auto") == 0)
				*progress = CREATE_PROGRESS_AUTO;
			else if (strcmp(optarg, "json") == 0)
				*progress = CREATE_PROGRESS_JSON;
			else if (strcmp(optarg, "none") == 0)
				*progress = CREATE_PROGRESS_NONE;
			else
				return apb_cmd_usage_error(c, "--progress: '%s' "
					"is not auto, json or none", optarg);
			break;
		default:
			return status;
		}
	}
	return -1;
}

/* APB_THREADS=N: how many workers compress (default: one per online CPU).
 * Undocumented in the help; for measuring, not for users. */
static unsigned threads_from_env(void)
{
	const char *s = getenv("APB_THREADS");
	char *end;
	unsigned long n;

	if (!s || !*s)
		return 0;
	errno = 0;
	n = strtoul(s, &end, 10);
	return errno || *end || n > 256 ? 0 : (unsigned)n;
}

static int run_create(int argc, char **argv)
{
	const struct apb_cmd *c = apb_cmd_find("create");
	struct apb_writer_options o;
	struct apb_input_list *inputs = NULL;
	struct create_ctx x = {.mode = CREATE_PROGRESS_AUTO};
	char err[ERR_LEN];
	const char *out;
	int status, rc;

	apb_writer_options_init(&o);
	o.threads = threads_from_env();
	status = create_options(c, argc, argv, &o, &x.mode);
	if (status >= 0)
		return status;
	if (argc - optind < 2)
		return apb_cmd_usage_error(c, argc == optind
						   ? "missing OUT.apbundle"
						   : "missing INPUT");
	if (apb_writer_options_check(&o, err, sizeof(err)) != 0)
		return apb_cmd_usage_error(c, "%s", err);
	out = argv[optind++];

	catch_signals();
	if (apb_input_list_new(&inputs) != 0) {
		fprintf(stderr, "apbundle: %s\n", strerror(ENOMEM));
		return EXIT_FAILURE;
	}
	for (rc = 0; rc == 0 && optind < argc; optind++)
		rc = got_signal ? -EINTR
				: apb_input_list_add_arg(inputs, argv[optind],
							 err, sizeof(err));
	if (rc == 0) {
		progress_init(&x.p);
		x.start_ms = apb_cmd_mono_ms();
		o.progress = create_progress_cb;
		o.progress_arg = &x;
		o.cancel = &got_signal;
		rc = apb_writer_create_bundle(out, inputs, &o, err, sizeof(err));
		progress_clear(&x.p);
		if (rc == 0)
			create_summary(&x, out, apb_input_list_count(inputs));
	}
	apb_input_list_free(inputs);
	if (rc && got_signal) { /* a signal after the rename changes nothing */
		fprintf(stderr, "apbundle: %s: interrupted\n", out);
		return die_of_signal();
	}
	if (rc) {
		fprintf(stderr, "apbundle: %s\n", err);
		return EXIT_FAILURE;
	}
	return EXIT_SUCCESS;
}

/* ================================================================== */
/* list, verify, extract: commands on a bundle file                    */
/* ================================================================== */

/* See apbundle_cmd.h. */
int apb_cmd_operands(const struct apb_cmd *c, int argc, char **argv, int nargs,
		     const char **out_path)
{
	static const struct option plain[] = {
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	static const struct option with_output[] = {
		{"help", no_argument, NULL, 'h'},
		{"output", required_argument, NULL, 'o'},
		{NULL, 0, NULL, 0},
	};
	int opt, status = -1;

	while ((opt = apb_cmd_next_option(c, argc, argv,
					  out_path ? with_output : plain,
					  out_path ? ":ho:" : ":h",
					  &status)) != -1) {
		if (opt == 'o' && out_path) {
			*out_path = optarg;
			continue;
		}
		return status;
	}
	if (argc - optind != nargs)
		return apb_cmd_usage_error(c, argc - optind < nargs
						   ? "missing operand"
						   : "too many operands");
	return -1;
}

/* A bundle behind a URL says why a read failed in a line of its own (the
 * read itself fails with EIO); retries are not shown. */
static void remote_log(void *arg, enum apb_log_level level, const char *msg)
{
	(void)arg;
	if (level != APB_LOG_RETRY)
		fprintf(stderr, "apbundle: %s\n", msg);
}

/* See apbundle_cmd.h. path may be a URL (S3 settings from the
 * environment and the AWS profile files; docs/USAGE.md); *shown is
 * apb_bundle_redact()'s. */
struct apb_bundle *apb_cmd_open_bundle(const char *path, char **shown)
{
	struct apb_bundle_options o = {.log = remote_log};
	struct apb_bundle *b = NULL;
	char err[ERR_LEN] = "";
	int rc;

	*shown = apb_bundle_redact(path);
	if (!*shown) {
		fprintf(stderr, "apbundle: %s\n", strerror(ENOMEM));
		return NULL;
	}
	rc = apb_bundle_open_ex(path, &o, &b, err, sizeof(err));
	if (rc) {
		fprintf(stderr, "apbundle: %s: %s\n", *shown,
			err[0] ? err : strerror(-rc));
		free(*shown);
		*shown = NULL;
		return NULL;
	}
	return b;
}

/* See apbundle_cmd.h. */
int apb_cmd_print_name(FILE *f, const char *name, int width)
{
	size_t len = strlen(name), cap = 4 * len + 4;
	char small[256], *big = cap > sizeof(small) ? malloc(cap) : NULL;
	/* Without memory for a long name it is shown cut ("..."), rather
	 * than failing a listing over it. */
	const char *q = apb_name_quote(name, len, big ? big : small,
				       big ? cap : sizeof(small));
	int cols = 0;

	for (const char *p = q; *p; p++)
		cols += ((unsigned char)*p & 0xc0) != 0x80;
	if (f)
		fprintf(f, "%s%*s", q, width > cols ? width - cols : 0, "");
	free(big);
	return cols;
}

struct verify_ctx {
	struct progress p;
	uint64_t total;
	const char *path;
	bool failed;      /* the first failure is on stderr already */
};

static void verify_progress(void *arg, uint64_t done, uint64_t total)
{
	struct verify_ctx *v = arg;

	(void)total; /* the model's; the line shows the whole bundle */
	progress_show(&v->p, done, v->total);
}

/* err without its "PATH: model 'NAME'" and the ": " after it. */
static const char *verify_reason(const struct verify_ctx *v,
				 const struct apb_model *m, const char *err)
{
	char prefix[ERR_LEN];
	size_t n = (size_t)snprintf(prefix, sizeof(prefix), "%s: model '%s'",
				    v->path, m->name);

	if (n >= sizeof(prefix) || strncmp(err, prefix, n) != 0)
		return err;
	err += n;
	return err + strspn(err, ": ");
}

/* Read model i through the library, which checks every block of a
 * version 2 model and then the model's checksum, and print its verdict:
 * "OK NAME", "BAD NAME: REASON" or, without a checksum, "SKIP NAME: ...".
 * The first failure also goes to stderr, whole. Returns false for BAD. */
static bool verify_model(const struct apb_bundle *b, size_t i,
			 struct verify_ctx *v)
{
	const struct apb_model *m = apb_bundle_model(b, i);
	struct apb_writer_options o;
	char err[ERR_LEN];
	int rc;

	apb_writer_options_init(&o);
	o.progress = verify_progress;
	o.progress_arg = v;
	rc = apb_writer_check_model(b, v->path, i, &o, err, sizeof(err));
	v->p.base += m->size;
	progress_clear(&v->p); /* the verdict line must not mix with it */
	if (rc) {
		fputs("BAD ", stdout);
		apb_cmd_print_name(stdout, m->name, 0);
		printf(": %s\n", verify_reason(v, m, err));
		fflush(stdout);
		if (!v->failed)
			fprintf(stderr, "apbundle: %s\n", err);
		v->failed = true;
		return false;
	}
	fputs(m->has_checksum ? "OK " : "SKIP ", stdout);
	apb_cmd_print_name(stdout, m->name, 0);
	puts(m->has_checksum ? "" : ": no checksum (aprender layout)");
	return true;
}

static int run_verify(int argc, char **argv)
{
	const struct apb_cmd *c = apb_cmd_find("verify");
	int status = apb_cmd_operands(c, argc, argv, 1, NULL);
	struct verify_ctx v = {.failed = false};
	struct apb_bundle *b;
	char *shown;
	size_t n, bad = 0;

	if (status >= 0)
		return status;
	b = apb_cmd_open_bundle(argv[optind], &shown);
	if (!b)
		return EXIT_FAILURE;
	v.path = shown;
	n = apb_bundle_count(b);
	progress_init(&v.p);
	for (size_t i = 0; i < n; i++)
		v.total += apb_bundle_model(b, i)->size;
	for (size_t i = 0; i < n; i++) {
		bad += !verify_model(b, i, &v);
		fflush(stdout);
	}
	if (bad)
		fprintf(stderr, "apbundle: %s: %zu of %zu models failed "
			"verification\n", v.path, bad, n);
	else if (apb_bundle_layout(b) == APB_LAYOUT_APRENDER)
		fprintf(stderr, "apbundle: %s: aprender layout has no checksums; "
			"every model was read, none could be verified\n", v.path);
	apb_bundle_close(b);
	free(shown);
	return bad ? EXIT_FAILURE : EXIT_SUCCESS;
}

/* Where extract writes: PATH, PATH/BASENAME when PATH is a directory, or
 * BASENAME of the model name in the current directory. Caller frees. */
static char *extract_target(const char *name, const char *out)
{
	const char *slash = strrchr(name, '/');
	const char *base = slash ? slash + 1 : name;
	struct stat st;
	char *s;
	size_t n;

	if (!out)
		return strdup(base);
	if (stat(out, &st) != 0 || !S_ISDIR(st.st_mode))
		return strdup(out);
	n = strlen(out) + strlen(base) + 2;
	s = malloc(n);
	if (s)
		snprintf(s, n, "%s/%s", out, base);
	return s;
}

static int run_extract(int argc, char **argv)
{
	const struct apb_cmd *c = apb_cmd_find("extract");
	const char *out = NULL, *path, *name;
	int status = apb_cmd_operands(c, argc, argv, 2, &out);
	struct apb_writer_options o;
	struct apb_bundle *b;
	struct progress p;
	char err[ERR_LEN], *target = NULL, *shown;
	bool to_stdout;
	size_t index;
	int rc;

	if (status >= 0)
		return status;
	to_stdout = out && strcmp(out, "-") == 0;
	name = argv[optind + 1];
	b = apb_cmd_open_bundle(argv[optind], &shown);
	if (!b)
		return EXIT_FAILURE;
	path = shown; /* from here on, for messages only */
	status = EXIT_FAILURE;
	if (apb_bundle_find(b, name, &index) != 0) {
		fprintf(stderr, "apbundle: %s: no model named '%s'\n", path, name);
		goto out;
	}
	if (to_stdout && isatty(STDOUT_FILENO)) {
		fprintf(stderr, "apbundle: standard output is a terminal; "
			"redirect it or give -o PATH\n");
		goto out;
	}
	target = to_stdout ? strdup("standard output")
			   : extract_target(name, out);
	if (!target) {
		fprintf(stderr, "apbundle: %s\n", strerror(ENOMEM));
		goto out;
	}
	catch_signals();
	apb_writer_options_init(&o);
	progress_init(&p);
	o.progress = progress_show;
	o.progress_arg = &p;
	o.cancel = &got_signal;
	if (to_stdout)
		rc = apb_writer_extract_model_fd(b, path, index, STDOUT_FILENO,
						 target, &o, err, sizeof(err));
	else
		rc = apb_writer_extract_model(b, path, index, target, &o, err,
					      sizeof(err));
	progress_clear(&p);
	if (rc && got_signal) {
		fprintf(stderr, "apbundle: %s: interrupted\n", target);
		status = die_of_signal();
	} else if (rc) {
		fprintf(stderr, "apbundle: %s\n", err);
	} else {
		status = EXIT_SUCCESS;
	}
out:
	free(target);
	apb_bundle_close(b);
	free(shown);
	return status;
}

/* ================================================================== */
/* Dispatch                                                            */
/* ================================================================== */

static int run_help(int argc, char **argv);

static const struct apb_cmd commands[] = {
	{"create",
	 "apbundle create [--compress zstd[:LEVEL]] [--block-size BYTES] "
	 "[--format 1|2]\n                [--progress auto|json|none] "
	 "OUT.apbundle INPUT...\n",
	 "\nPack the INPUTs into OUT.apbundle. The bundle is written to a\n"
	 "temporary file next to OUT and renamed into place once complete;\n"
	 "a failed or interrupted create leaves nothing behind. An existing\n"
	 "OUT keeps its mode and owner; a symbolic link, FIFO or device at\n"
	 "OUT is refused.\n"
	 "\n"
	 "INPUT is one of:\n"
	 "  FILE        a model named after the file's last path component\n"
	 "  NAME=FILE   a model named NAME (split at the first '=')\n"
	 "  DIR         every regular file below DIR, named by its path\n"
	 "              relative to DIR; symbolic links to files are\n"
	 "              followed, links to directories are not\n"
	 "  NAME=DIR    the same, named NAME/<relative path>\n"
	 "\n"
	 "Options:\n"
	 "  --format 1|2             bundle format (default 2)\n"
	 "  --compress zstd[:LEVEL]  zstd-compress each block (format 2; LEVEL\n"
	 "                           1-22, default 3); a block that does not\n"
	 "                           shrink is stored as it is\n"
	 "  --compress none          store the bytes as they are (default)\n"
	 "  --block-size BYTES       block size (format 2): a multiple of 4096\n"
	 "                           from 4K to 16M, K and M suffixes; default\n"
	 "                           64K (--chunk-size is the old spelling)\n"
	 "  --progress auto|json|none\n"
	 "                           auto (default): on a terminal, a line\n"
	 "                           with rate and ETA on stderr; json: JSON\n"
	 "                           lines on stdout, for tools; none: nothing\n"
	 "                           while writing\n"
	 "  -h, --help               show this help\n"
	 "\n"
	 "Format 2 cuts every model into blocks, each with its own checksum,\n"
	 "compressed on one thread per CPU. The same INPUTs and options always\n"
	 "give the same bytes. At the end one line on stderr says what was\n"
	 "written: 'created OUT: N models, SIZE in, SIZE written (ratio R),\n"
	 "S s'.\n",
	 run_create},
	{"list", "apbundle list [--json | --tsv] BUNDLE\n",
	 "\nPrint one line per model: NAME, SIZE and STORED (bytes),\n"
	 "COMPRESSION and CHECKSUM ('-' when the bundle has none). Control\n"
	 "characters, invalid UTF-8 and characters a terminal acts on are\n"
	 "printed as \\xNN, a backslash as \\\\.\n"
	 "\n"
	 "Options:\n"
	 "  --json      one JSON document: the bundle's layout and version,\n"
	 "              and per model name, size, stored_size, compression,\n"
	 "              block_size, block_count and checksum\n"
	 "  --tsv       per model one line of tab-separated fields, no\n"
	 "              header: NAME SIZE STORED COMPRESSION BLOCK_SIZE\n"
	 "              CHECKSUM; NAME escaped as above, so it holds no tab\n"
	 "              or newline; '-' for a value the layout lacks\n"
	 "  -h, --help  show this help\n",
	 apb_cmd_list},
	{"verify", "apbundle verify BUNDLE\n",
	 "\nRecompute the XXH3-64 checksum of every block (format 2) and of\n"
	 "every model and print 'OK NAME', or 'BAD NAME: REASON', e.g.\n"
	 "'BAD NAME: block K: checksum mismatch' (K counts from 0). The first\n"
	 "failure is also printed to stderr as\n"
	 "'apbundle: BUNDLE: model 'NAME' block K: checksum mismatch'.\n"
	 "Exit status 0 when every model matches, 1 otherwise. Bundles in\n"
	 "aprender's layout carry no checksums: every model is read and\n"
	 "reported as 'SKIP NAME: ...'.\n",
	 run_verify},
	{"extract", "apbundle extract BUNDLE NAME [-o PATH]\n",
	 "\nCopy model NAME to PATH (default: the last component of NAME in\n"
	 "the current directory; into PATH when it is a directory),\n"
	 "decompressed. Every block (format 2) and the whole copy are checked\n"
	 "against their checksums and the copy is written atomically; on a\n"
	 "mismatch nothing is left behind. An existing file keeps its mode\n"
	 "and owner; a symbolic link, FIFO or device at PATH is refused.\n"
	 "\n"
	 "  -o, --output PATH  where to write; '-' is standard output (not\n"
	 "                     atomic: on a mismatch the exit status is 1\n"
	 "                     but earlier bytes are out already)\n",
	 run_extract},
	{"stats", "apbundle stats [--watch[=SECONDS] [--count N]] [--top N] "
	 "MOUNTPOINT\n",
	 "\nShow the cache statistics of a mounted bundle (MOUNTPOINT/.stats),\n"
	 "models sorted by resident bytes.\n"
	 "\n"
	 "Options:\n"
	 "  --watch[=SECONDS]  show them again every SECONDS (default 2, from\n"
	 "                     0.1), with what changed and the rates: hits/s\n"
	 "                     and MB/s read from the bundle; on a terminal\n"
	 "                     in place, otherwise one block per interval\n"
	 "  --count N          with --watch: stop after N samples\n"
	 "  --top N            only the N models with the most chunk lookups\n"
	 "                     (with --watch: in the last interval)\n"
	 "  -h, --help         show this help\n",
	 apb_cmd_stats},
	{"help", "apbundle help [COMMAND]\n",
	 "\nShow the help of COMMAND, or the list of commands.\n",
	 run_help},
};

/* See apbundle_cmd.h. */
const struct apb_cmd *apb_cmd_find(const char *name)
{
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (strcmp(commands[i].name, name) == 0)
			return &commands[i];
	return NULL;
}

static int run_help(int argc, char **argv)
{
	const struct apb_cmd *c;

	if (argc < 2) {
		print_main_usage(stdout);
		return EXIT_SUCCESS;
	}
	if (argc > 2)
		return apb_cmd_usage_error(apb_cmd_find("help"),
					   "too many operands");
	c = apb_cmd_find(argv[1]);
	if (!c)
		return apb_cmd_usage_error(NULL, "unknown command '%s'", argv[1]);
	print_help(c);
	return EXIT_SUCCESS;
}

int main(int argc, char **argv)
{
	const struct apb_cmd *c;

	if (argc < 2) {
		print_main_usage(stderr);
		return EXIT_USAGE;
	}
	if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
		print_main_usage(stdout);
		return EXIT_SUCCESS;
	}
	if (!strcmp(argv[1], "-V") || !strcmp(argv[1], "--version")) {
		printf("apbundle %s\n", APB_VERSION);
		return EXIT_SUCCESS;
	}
	c = apb_cmd_find(argv[1]);
	if (!c)
		return apb_cmd_usage_error(NULL, "unknown command '%s'", argv[1]);
	opterr = 0; /* apb_cmd_next_option() words the errors */
	return c->run(argc - 1, argv + 1);
}
