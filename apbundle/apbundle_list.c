/*
 * apbundle_list.c - `apbundle list [--json|--tsv] BUNDLE`: the models of a
 * bundle, as a table for people, one JSON document or tab-separated lines
 * for scripts (docs/USAGE.md, "list for scripts").
 *
 * Invariants:
 *  - The table and the TSV print names through apb_cmd_print_name() (the
 *    escaping of "How names are printed"), so a TSV field never holds a
 *    tab or a newline and decodes back to the exact name.
 *  - The JSON document is valid UTF-8 whatever the bytes it is given
 *    (apb_cmd_json_string()); names of a bundle that opened are valid
 *    UTF-8 without control characters already (apb_name_check()).
 *  - Columns and keys are only ever added at the end: scripts may rely on
 *    the position of a TSV field and on every JSON key listed in USAGE.
 */
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "apbundle/bundle.h"
#include "apbundle/checksum.h"

#include "apbundle_cmd.h"

/* Version of the JSON document's layout: raised only when a key changes
 * meaning or goes away, never for an added key. */
#define LIST_JSON_SCHEMA 1

enum list_format { LIST_TABLE, LIST_JSON, LIST_TSV };

/* Length of the UTF-8 sequence at s (at most n bytes) and its code point,
 * or 0 when it is not valid UTF-8 (overlong, surrogate, over U+10FFFF,
 * cut short). */
static size_t utf8_char(const unsigned char *s, size_t n, unsigned *cp)
{
	static const unsigned min[5] = {0, 0, 0x80, 0x800, 0x10000};
	size_t len = s[0] >= 0xf0 ? 4 : s[0] >= 0xe0 ? 3 : s[0] >= 0xc0 ? 2 : 0;
	unsigned c;

	if (s[0] < 0x80) {
		*cp = s[0];
		return 1;
	}
	if (len == 0 || len > n || s[0] > 0xf4)
		return 0;
	c = s[0] & (0x7f >> len);
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		c = c << 6 | (s[i] & 0x3f);
	}
	if (c < min[len] || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
		return 0;
	*cp = c;
	return len;
}

/* Characters written as \uXXXX although JSON allows them raw: those a
 * terminal or a bidirectional layout acts on (the set apb_name_quote()
 * escapes), and U+2028/U+2029, which end a line in JavaScript. */
static bool json_escaped(unsigned c)
{
	return c < 0x20 || c == 0x7f || (c >= 0x80 && c <= 0x9f) ||
	       c == 0x200e || c == 0x200f || (c >= 0x2028 && c <= 0x202e) ||
	       (c >= 0x2066 && c <= 0x2069);
}

/* See apbundle_cmd.h. */
void apb_cmd_json_string(FILE *f, const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t n = strlen(s);

	fputc('"', f);
	while (n > 0) {
		unsigned c;
		size_t len = utf8_char(p, n, &c);

		if (len == 0) { /* a byte of no valid character */
			fputs("\\ufffd", f);
			len = 1;
		} else if (c == '"' || c == '\\') {
			fprintf(f, "\\%c", (char)c);
		} else if (json_escaped(c)) {
			fprintf(f, "\\u%04x", c);
		} else {
			fwrite(p, 1, len, f);
		}
		p += len;
		n -= len;
	}
	fputc('"', f);
}

static const char *layout_name(enum apb_layout l)
{
	switch (l) {
	case APB_LAYOUT_V1:
		return "v1";
	case APB_LAYOUT_V2:
		return "v2";
	case APB_LAYOUT_APRENDER:
		return "aprender";
	}
	return "unknown";
}

static const char *compression_name(const struct apb_model *m)
{
	return m->compression == APB_COMPRESSION_ZSTD ? "zstd" : "none";
}

static int digits(uint64_t v)
{
	int n = 1;

	while (v >= 10) {
		v /= 10;
		n++;
	}
	return n;
}

static void print_table(const struct apb_bundle *b)
{
	size_t n = apb_bundle_count(b);
	int wname = 4, wsize = 4, wstored = 6;

	for (size_t i = 0; i < n; i++) {
		const struct apb_model *m = apb_bundle_model(b, i);
		int w = apb_cmd_print_name(NULL, m->name, 0);

		wname = w > wname ? w : wname;
		wsize = digits(m->size) > wsize ? digits(m->size) : wsize;
		wstored = digits(m->stored_size) > wstored
				  ? digits(m->stored_size) : wstored;
	}
	printf("%-*s  %*s  %*s  %-11s  %s\n", wname, "NAME", wsize, "SIZE",
	       wstored, "STORED", "COMPRESSION", "CHECKSUM");
	for (size_t i = 0; i < n; i++) {
		const struct apb_model *m = apb_bundle_model(b, i);
		char sum[APB_CHECKSUM_STRLEN + 1] = "-";

		if (m->has_checksum)
			apb_checksum_format(m->xxh3, sum);
		apb_cmd_print_name(stdout, m->name, wname);
		printf("  %*llu  %*llu  %-11s  %s\n", wsize,
		       (unsigned long long)m->size, wstored,
		       (unsigned long long)m->stored_size, compression_name(m),
		       sum);
	}
}

/* NAME SIZE STORED COMPRESSION BLOCK_SIZE CHECKSUM, tab-separated, no
 * header; '-' where the layout has no such value. */
static void print_tsv(const struct apb_bundle *b)
{
	for (size_t i = 0; i < apb_bundle_count(b); i++) {
		const struct apb_model *m = apb_bundle_model(b, i);
		char sum[APB_CHECKSUM_STRLEN + 1] = "-";

		if (m->has_checksum)
			apb_checksum_format(m->xxh3, sum);
		apb_cmd_print_name(stdout, m->name, 0);
		printf("\t%llu\t%llu\t%s\t", (unsigned long long)m->size,
		       (unsigned long long)m->stored_size, compression_name(m));
		if (m->block_size)
			printf("%llu", (unsigned long long)m->block_size);
		else
			putchar('-');
		printf("\t%s\n", sum);
	}
}

static void print_json(const struct apb_bundle *b, const char *shown)
{
	enum apb_layout l = apb_bundle_layout(b);
	size_t n = apb_bundle_count(b);

	printf("{\"schema\":%d,\"apbundle\":\"%s\",\"bundle\":",
	       LIST_JSON_SCHEMA, APB_VERSION);
	apb_cmd_json_string(stdout, shown);
	printf(",\"layout\":\"%s\",\"version\":", layout_name(l));
	if (l == APB_LAYOUT_APRENDER) /* aprender's own numbering is not ours */
		printf("null");
	else
		printf("%d", (int)l);
	printf(",\"model_count\":%zu,\"models\":[", n);
	for (size_t i = 0; i < n; i++) {
		const struct apb_model *m = apb_bundle_model(b, i);
		char sum[APB_CHECKSUM_STRLEN + 1];

		printf("%s\n{\"name\":", i ? "," : "");
		apb_cmd_json_string(stdout, m->name);
		printf(",\"size\":%llu,\"stored_size\":%llu,\"compression\":\"%s\","
		       "\"block_size\":", (unsigned long long)m->size,
		       (unsigned long long)m->stored_size, compression_name(m));
		if (m->block_size)
			printf("%llu,\"block_count\":%llu",
			       (unsigned long long)m->block_size,
			       (unsigned long long)m->block_count);
		else
			printf("null,\"block_count\":null");
		printf(",\"checksum\":");
		if (m->has_checksum) {
			apb_checksum_format(m->xxh3, sum);
			printf("\"%s\"}", sum);
		} else {
			printf("null}");
		}
	}
	printf("]}\n");
}

int apb_cmd_list(int argc, char **argv)
{
	static const struct option longs[] = {
		{"json", no_argument, NULL, 'j'},
		{"tsv", no_argument, NULL, 't'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const struct apb_cmd *c = apb_cmd_find("list");
	enum list_format fmt = LIST_TABLE;
	struct apb_bundle *b;
	int opt, status = -1;
	char *shown;

	while ((opt = apb_cmd_next_option(c, argc, argv, longs, ":h",
					  &status)) != -1) {
		switch (opt) {
		case 'j':
		case 't':
			if (fmt != LIST_TABLE)
				return apb_cmd_usage_error(c, "--json and --tsv "
					"exclude each other");
			fmt = opt == 'j' ? LIST_JSON : LIST_TSV;
			break;
		default:
			return status;
		}
	}
	if (argc - optind != 1)
		return apb_cmd_usage_error(c, argc == optind ? "missing operand"
							     : "too many operands");
	b = apb_cmd_open_bundle(argv[optind], &shown);
	if (!b)
		return EXIT_FAILURE;
	if (fmt == LIST_JSON)
		print_json(b, shown);
	else if (fmt == LIST_TSV)
		print_tsv(b);
	else
		print_table(b);
	free(shown);
	apb_bundle_close(b);
	return fflush(stdout) == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
