/* test_size.c - apb_size_parse() and apb_size_format(): what is a size,
 * what is not, and how sizes are printed. */
#include <errno.h>
#include <stdint.h>

#include "apbundle/size.h"
#include "test.h"

static uint64_t parsed(const char *s)
{
	uint64_t v = 12345;

	CHECK_EQ(apb_size_parse(s, &v), 0);
	return v;
}

static void rejected(const char *s)
{
	uint64_t v = 12345;

	CHECK_EQ(apb_size_parse(s, &v), -EINVAL);
	CHECK_EQ(v, 12345); /* untouched on failure */
}

static void plain_numbers_are_bytes(void)
{
	CHECK_EQ(parsed("0"), 0);
	CHECK_EQ(parsed("1"), 1);
	CHECK_EQ(parsed("123"), 123);
	CHECK_EQ(parsed("007"), 7);
	CHECK_EQ(parsed("4096B"), 4096);
	CHECK_EQ(parsed("4096b"), 4096);
}

static void suffixes_are_binary_multiples(void)
{
	CHECK_EQ(parsed("4K"), 4096);
	CHECK_EQ(parsed("64M"), 64ull << 20);
	CHECK_EQ(parsed("2G"), 2ull << 30);
	CHECK_EQ(parsed("3T"), 3ull << 40);
	CHECK_EQ(parsed("0K"), 0);
}

static void suffixes_are_case_insensitive_with_optional_b_or_ib(void)
{
	CHECK_EQ(parsed("4k"), 4096);
	CHECK_EQ(parsed("64m"), 64ull << 20);
	CHECK_EQ(parsed("2g"), 2ull << 30);
	CHECK_EQ(parsed("1t"), 1ull << 40);
	CHECK_EQ(parsed("4KB"), 4096);
	CHECK_EQ(parsed("4kb"), 4096);
	CHECK_EQ(parsed("4KiB"), 4096);
	CHECK_EQ(parsed("4kib"), 4096);
	CHECK_EQ(parsed("4KIB"), 4096);
	CHECK_EQ(parsed("64MiB"), 64ull << 20);
	CHECK_EQ(parsed("2GiB"), 2ull << 30);
	CHECK_EQ(parsed("1TiB"), 1ull << 40);
}

static void anything_else_is_rejected(void)
{
	rejected("");
	rejected("K");
	rejected("B");
	rejected("iB");
	rejected("-1");
	rejected("+1");
	rejected(" 1");
	rejected("1 ");
	rejected("1 K");
	rejected("1.5G");
	rejected("1X");
	rejected("1P");
	rejected("1KK");
	rejected("1KiBB");
	rejected("1Ki");
	rejected("1iB");  /* "iB" only after a multiplier */
	rejected("1BB");
	rejected("0x10");
	rejected("12abc");
	CHECK_EQ(apb_size_parse(NULL, &(uint64_t){0}), -EINVAL);
}

static void overflow_is_rejected(void)
{
	CHECK_EQ(parsed("18446744073709551615"), UINT64_MAX);
	rejected("18446744073709551616");
	rejected("99999999999999999999999");
	CHECK_EQ(parsed("16777215T"), ((1ull << 24) - 1) << 40);
	rejected("16777216T");  /* exactly 2^64 */
	CHECK_EQ(parsed("17179869183G"), ((1ull << 34) - 1) << 30);
	rejected("17179869184G");
	rejected("18014398509481984K");  /* 2^54 K = 2^64 */
}

static void format_is(uint64_t bytes, const char *want)
{
	char buf[32];

	CHECK(apb_size_format(bytes, buf, sizeof(buf)) == buf);
	if (strcmp(buf, want) != 0) {
		fprintf(stderr, "format(%llu) = \"%s\", expected \"%s\"\n",
			(unsigned long long)bytes, buf, want);
		exit(1);
	}
}

static void format_prints_one_decimal_in_the_largest_unit(void)
{
	format_is(0, "0 B");
	format_is(1, "1 B");
	format_is(1023, "1023 B");
	format_is(1024, "1.0 KiB");
	format_is(1536, "1.5 KiB");
	format_is(64ull << 20, "64.0 MiB");
	format_is(1288490189ull, "1.2 GiB");
	format_is(3435973837ull, "3.2 GiB");
	format_is(5ull << 40, "5.0 TiB");
	format_is(1ull << 50, "1.0 PiB");
	format_is(1ull << 60, "1.0 EiB");
	format_is(UINT64_MAX, "16.0 EiB");
}

static void format_rounds_to_the_nearest_tenth_without_1024(void)
{
	format_is(1075, "1.0 KiB");     /* 1.049… */
	format_is(1076, "1.1 KiB");     /* 1.0507… */
	format_is(1048575, "1.0 MiB");  /* 1023.999 KiB would read 1024.0 KiB */
	format_is(1048063, "1023.5 KiB");
	format_is((1ull << 30) - 1, "1.0 GiB");
}

static void format_truncates_to_the_buffer(void)
{
	char buf[4];

	apb_size_format(64ull << 20, buf, sizeof(buf));
	CHECK(strcmp(buf, "64.") == 0);
}

int main(void)
{
	RUN(plain_numbers_are_bytes);
	RUN(suffixes_are_binary_multiples);
	RUN(suffixes_are_case_insensitive_with_optional_b_or_ib);
	RUN(anything_else_is_rejected);
	RUN(overflow_is_rejected);
	RUN(format_prints_one_decimal_in_the_largest_unit);
	RUN(format_rounds_to_the_nearest_tenth_without_1024);
	RUN(format_truncates_to_the_buffer);
	return 0;
}
