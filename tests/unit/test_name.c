/*
 * test_name.c - the model name rules of docs/USAGE.md, "Names"
 * (include/apbundle/name.h): one test per rule for apb_name_check(), and the
 * set rules of apb_names_check_set() (duplicates, file-vs-directory
 * collisions).
 */
#include <errno.h>
#include <string.h>

#include "apbundle/name.h"
#include "test.h"

static char err[512];

static int check(const char *name)
{
	err[0] = '\0';
	return apb_name_check(name, strlen(name), err, sizeof err);
}

/* A name rejected with -EINVAL and a message containing needle. */
static void expect_bad_len(const char *name, size_t len, const char *needle)
{
	err[0] = '\0';
	CHECK_EQ(apb_name_check(name, len, err, sizeof err), -EINVAL);
	CHECK_STR_CONTAINS(err, needle);
}

static void expect_bad(const char *name, const char *needle)
{
	expect_bad_len(name, strlen(name), needle);
}

static void accepts_plain_and_nested_names(void)
{
	CHECK_EQ(check("encoder"), 0);
	CHECK_EQ(check("bert/config.json"), 0);
	CHECK_EQ(check("a/b/c/d.bin"), 0);
	CHECK_EQ(check(".hidden"), 0);
	CHECK_EQ(check("..."), 0);
	CHECK_EQ(check("a/.x/..y"), 0);
	CHECK_EQ(check("sub/.stats"), 0); /* reserved only at the root */
	CHECK_EQ(check(".statsx"), 0);
	CHECK_EQ(check("with space and-dash_underscore"), 0);
}

static void accepts_valid_utf8(void)
{
	CHECK_EQ(check("caf\xc3\xa9"), 0);              /* U+00E9 */
	CHECK_EQ(check("\xe2\x82\xac/\xe6\x97\xa5"), 0); /* U+20AC, U+65E5 */
	CHECK_EQ(check("\xf0\x9f\x98\x80"), 0);         /* U+1F600 */
	CHECK_EQ(check("\xf4\x8f\xbf\xbf"), 0);         /* U+10FFFF */
	CHECK_EQ(check("\xed\x9f\xbf"), 0);             /* U+D7FF */
	CHECK_EQ(check("\xee\x80\x80"), 0);             /* U+E000 */
}

static void rejects_empty_name(void)
{
	expect_bad("", "name is empty");
}

static void rejects_leading_slash(void)
{
	expect_bad("/etc/passwd",
		   "name '/etc/passwd': must be relative (starts with '/')");
	expect_bad("/", "must be relative");
}

static void rejects_trailing_slash(void)
{
	expect_bad("a/", "name 'a/': ends with '/'");
}

static void rejects_empty_component(void)
{
	expect_bad("a//b", "name 'a//b': empty component");
}

static void rejects_dot_component(void)
{
	expect_bad(".", "name '.': component '.' is not allowed");
	expect_bad("a/./b", "name 'a/./b': component '.' is not allowed");
}

static void rejects_dotdot_component(void)
{
	expect_bad("..", "component '..' is not allowed");
	expect_bad("a/../b", "name 'a/../b': component '..' is not allowed");
	expect_bad("../x", "component '..' is not allowed");
	expect_bad("x/..", "component '..' is not allowed");
}

static void rejects_nul_byte(void)
{
	expect_bad_len("a\0b", 3, "name 'a\\x00b': contains a NUL byte at byte 1");
}

static void rejects_control_characters(void)
{
	expect_bad("a\nb", "name 'a\\x0ab': contains control character 0x0a at byte 1");
	expect_bad("\x01", "control character 0x01 at byte 0");
	expect_bad("x\x1f", "control character 0x1f at byte 1");
	expect_bad("del\x7f", "control character 0x7f at byte 3");
	expect_bad("tab\there", "control character 0x09");
}

static void rejects_invalid_utf8(void)
{
	expect_bad("a\xff", "name 'a\\xff': invalid UTF-8 at byte 1");
	expect_bad("\x80", "invalid UTF-8 at byte 0");       /* lone continuation */
	expect_bad("ab\xc3", "invalid UTF-8 at byte 2");     /* truncated */
	expect_bad("\xc3(", "invalid UTF-8 at byte 0");      /* bad continuation */
	expect_bad("\xf5\x80\x80\x80", "invalid UTF-8");     /* above U+10FFFF */
	expect_bad("\xf4\x90\x80\x80", "invalid UTF-8");     /* U+110000 */
}

static void rejects_overlong_utf8(void)
{
	expect_bad("\xc0\xaf", "invalid UTF-8 at byte 0");     /* '/' in 2 bytes */
	expect_bad("\xc1\xbf", "invalid UTF-8 at byte 0");
	expect_bad("\xe0\x80\xaf", "invalid UTF-8 at byte 0"); /* '/' in 3 bytes */
	expect_bad("\xe0\x9f\xbf", "invalid UTF-8 at byte 0");
	expect_bad("\xf0\x80\x80\xaf", "invalid UTF-8 at byte 0");
	expect_bad("\xf0\x8f\xbf\xbf", "invalid UTF-8 at byte 0");
}

static void rejects_utf16_surrogates(void)
{
	expect_bad("\xed\xa0\x80", "invalid UTF-8 at byte 0"); /* U+D800 */
	expect_bad("x\xed\xbf\xbf", "invalid UTF-8 at byte 1"); /* U+DFFF */
}

static void limits_whole_name_to_4096_bytes(void)
{
	char name[APB_NAME_MAX + 2];

	/* 4096 bytes: components of 15 'x' and a '/' (each 16 bytes). */
	for (size_t i = 0; i < APB_NAME_MAX; i++)
		name[i] = (i % 16 == 15) ? '/' : 'x';
	name[APB_NAME_MAX - 1] = 'x';
	name[APB_NAME_MAX] = '\0';
	CHECK_EQ(check(name), 0);
	name[APB_NAME_MAX] = 'y';
	name[APB_NAME_MAX + 1] = '\0';
	expect_bad(name, "4097 bytes, more than the limit of 4096");
}

static void limits_component_to_255_bytes(void)
{
	char name[300];

	memset(name, 'c', 255);
	name[255] = '\0';
	CHECK_EQ(check(name), 0);
	memcpy(name, "d/", 2);
	memset(name + 2, 'c', 256);
	name[258] = '\0';
	expect_bad(name, "is 256 bytes, more than the limit of 255");
}

static void reserves_root_entries(void)
{
	expect_bad(".stats", "name '.stats': '.stats' is reserved at the root");
	expect_bad(".metrics", "'.metrics' is reserved at the root");
	expect_bad(".control", "'.control' is reserved at the root");
	expect_bad(".stats/x", "name '.stats/x': '.stats' is reserved at the root");
}

static void quotes_long_names_shortened(void)
{
	char name[APB_NAME_MAX + 100];

	memset(name, 'z', sizeof name - 1);
	name[sizeof name - 1] = '\0';
	expect_bad(name, "...': ");
	CHECK(strlen(err) < 300);
}

/* apb_name_quote() of len bytes of s, with the 4 * len + 4 bytes that
 * name.h promises are enough, is exactly want. */
static void expect_quote(const char *s, size_t len, const char *want)
{
	char buf[4 * 64 + 4];

	CHECK(len <= 64);
	apb_name_quote(s, len, buf, 4 * len + 4);
	if (strcmp(buf, want) != 0)
		fprintf(stderr, "quoted as \"%s\", expected \"%s\"\n", buf, want);
	CHECK(strcmp(buf, want) == 0);
}

#define QUOTE(lit, want) expect_quote(lit, sizeof(lit) - 1, want)

static void quotes_what_a_terminal_would_act_on(void)
{
	QUOTE("plain/caf\xc3\xa9", "plain/caf\xc3\xa9");           /* copied */
	QUOTE("a\x1b[31mb\x7f", "a\\x1b[31mb\\x7f");             /* C0, DEL */
	QUOTE("a\0b", "a\\x00b");
	QUOTE("x\xff\xc3", "x\\xff\\xc3");                       /* invalid */
	QUOTE("\xc2\x80\xc2\x9b\xc2\x9f", /* C1: U+0080, CSI U+009B, U+009F */
	      "\\xc2\\x80\\xc2\\x9b\\xc2\\x9f");
	QUOTE("\xc2\xa0", "\xc2\xa0");                             /* U+00A0 */
	QUOTE("\xe2\x80\x8e\xe2\x80\x8f", "\\xe2\\x80\\x8e\\xe2\\x80\\x8f");
	QUOTE("\xe2\x80\x8d", "\xe2\x80\x8d");                   /* U+200D kept */
	QUOTE("\xe2\x80\xa7", "\xe2\x80\xa7");                   /* U+2027 kept */
	QUOTE("a\xe2\x80\xaegpj.exe", "a\\xe2\\x80\\xaegpj.exe"); /* U+202E */
	QUOTE("\xe2\x80\xa8", "\\xe2\\x80\\xa8");             /* U+2028 */
	QUOTE("\xe2\x80\xaf", "\xe2\x80\xaf");                   /* U+202F kept */
	QUOTE("\xe2\x81\xa5\xe2\x81\xa6", "\xe2\x81\xa5\\xe2\\x81\\xa6");
	QUOTE("\xe2\x81\xa9\xe2\x81\xaa", "\\xe2\\x81\\xa9\xe2\x81\xaa");
	QUOTE("back\\x1b", "back\\\\x1b");        /* a name's own backslash */
	/* The bound: every byte escaped, nothing cut. */
	QUOTE("\x01\x02\x03\x04\x05\x06\x07\x08",
	      "\\x01\\x02\\x03\\x04\\x05\\x06\\x07\\x08");
}

static void tolerates_missing_message_buffer(void)
{
	CHECK_EQ(apb_name_check("..", 2, NULL, 0), -EINVAL);
	CHECK_EQ(apb_name_check("ok", 2, NULL, 0), 0);
}

/* ---- sets ---- */

static int check_set(const char *const *names, size_t n)
{
	err[0] = '\0';
	return apb_names_check_set(names, n, err, sizeof err);
}

static void accepts_distinct_names_and_directories(void)
{
	const char *names[] = {"a-b", "a.txt", "a/b", "a/c/d", "a/c/e", "b"};

	CHECK_EQ(check_set(names, 6), 0);
	CHECK_EQ(check_set(names, 0), 0);
	CHECK_EQ(check_set(names, 1), 0);
}

static void rejects_duplicate_names(void)
{
	const char *names[] = {"a", "x", "x", "y"};

	CHECK_EQ(check_set(names, 4), -EINVAL);
	CHECK_STR_CONTAINS(err, "duplicate name 'x'");
}

static void rejects_file_that_is_also_a_directory(void)
{
	const char *names[] = {"a", "a/b"};

	CHECK_EQ(check_set(names, 2), -EINVAL);
	CHECK_STR_CONTAINS(err,
			   "names 'a' and 'a/b': 'a' is both a file and a directory");
}

static void rejects_file_that_is_a_deeper_directory(void)
{
	const char *names[] = {"a", "a/b/c"};

	CHECK_EQ(check_set(names, 2), -EINVAL);
	CHECK_STR_CONTAINS(err,
			   "names 'a' and 'a/b/c': 'a' is both a file and a directory");
}

/* '-' and '.' sort before '/', so the collision is not between neighbours. */
static void finds_collision_across_names_sorted_between(void)
{
	const char *names[] = {"a", "a b", "a-b", "a.bin", "a/x", "b"};
	const char *deep[] = {"m/a", "m/a-1", "m/a.c", "m/a/b", "z"};

	CHECK_EQ(check_set(names, 6), -EINVAL);
	CHECK_STR_CONTAINS(err, "names 'a' and 'a/x'");
	CHECK_EQ(check_set(deep, 5), -EINVAL);
	CHECK_STR_CONTAINS(err, "names 'm/a' and 'm/a/b': 'm/a' is both");
}

static void rejects_unsorted_input(void)
{
	const char *names[] = {"b", "a"};

	CHECK_EQ(check_set(names, 2), -EINVAL);
	CHECK_STR_CONTAINS(err, "not sorted");
}

int main(void)
{
	RUN(accepts_plain_and_nested_names);
	RUN(accepts_valid_utf8);
	RUN(rejects_empty_name);
	RUN(rejects_leading_slash);
	RUN(rejects_trailing_slash);
	RUN(rejects_empty_component);
	RUN(rejects_dot_component);
	RUN(rejects_dotdot_component);
	RUN(rejects_nul_byte);
	RUN(rejects_control_characters);
	RUN(rejects_invalid_utf8);
	RUN(rejects_overlong_utf8);
	RUN(rejects_utf16_surrogates);
	RUN(limits_whole_name_to_4096_bytes);
	RUN(limits_component_to_255_bytes);
	RUN(reserves_root_entries);
	RUN(quotes_long_names_shortened);
	RUN(quotes_what_a_terminal_would_act_on);
	RUN(tolerates_missing_message_buffer);
	RUN(accepts_distinct_names_and_directories);
	RUN(rejects_duplicate_names);
	RUN(rejects_file_that_is_also_a_directory);
	RUN(rejects_file_that_is_a_deeper_directory);
	RUN(finds_collision_across_names_sorted_between);
	RUN(rejects_unsorted_input);
	return 0;
}
