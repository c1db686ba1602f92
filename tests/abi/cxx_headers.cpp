// cxx_headers.cpp - every public header compiles as C++ (-std=c++11
// -pedantic, warnings fatal) and a C++ program links against the shared
// libapbundle: the names resolve through extern "C", the exported symbols
// suffice. tests/abi/check_exports.py checks that every header of
// include/apbundle/ is included here.
#include <apbundle/api.h>
#include <apbundle/bundle.h>
#include <apbundle/cache.h>
#include <apbundle/checksum.h>
#include <apbundle/inputs.h>
#include <apbundle/learn.h>
#include <apbundle/name.h>
#include <apbundle/order.h>
#include <apbundle/prefetch.h>
#include <apbundle/report.h>
#include <apbundle/size.h>
#include <apbundle/trace.h>
#include <apbundle/tree.h>
#include <apbundle/writer.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

static int failures;

#define EXPECT(cond)                                                       \
	do {                                                               \
		if (!(cond)) {                                             \
			std::fprintf(stderr, "%s:%d: EXPECT(%s) failed\n", \
				     __FILE__, __LINE__, #cond);           \
			failures++;                                        \
		}                                                          \
	} while (0)

int main()
{
	uint64_t bytes = 0;
	EXPECT(apb_size_parse("64M", &bytes) == 0);
	EXPECT(bytes == 64ull << 20);
	EXPECT(apb_size_parse("64Q", &bytes) == -EINVAL);

	char sum[APB_CHECKSUM_STRLEN + 1];
	uint64_t back = 0;
	apb_checksum_format(0x0123456789abcdefull, sum);
	EXPECT(std::strcmp(sum, "xxh3-64:0123456789abcdef") == 0);
	EXPECT(apb_checksum_parse(sum, &back) == 0 &&
	       back == 0x0123456789abcdefull);

	char err[256];
	EXPECT(apb_name_check("a/b.gguf", 8, err, sizeof(err)) == 0);
	EXPECT(apb_name_check("../x", 4, err, sizeof(err)) == -EINVAL);
	EXPECT(std::strcmp(apb_reserved_names[APB_RESERVED_STATS], ".stats") ==
	       0);

	struct apb_bundle *b = nullptr;
	EXPECT(apb_bundle_open("/nonexistent/x.apbundle", &b, err,
			       sizeof(err)) == -ENOENT);
	EXPECT(b == nullptr);

	// The static inline helpers of trace.h compile as C++ too.
	struct apb_trace_record r = {}, r2 = {};
	unsigned char rec[APB_TRACE_RECORD_BYTES];
	r.time_ns = 12345;
	r.model = 7;
	r.count = 1;
	r.chunk = 99;
	r.kind = APB_TRACE_KIND_DEMAND;
	apb_trace_pack(&r, rec);
	apb_trace_unpack(rec, &r2);
	EXPECT(r2.time_ns == 12345 && r2.model == 7 && r2.chunk == 99);

	if (failures)
		return 1;
	std::printf("ok: the public headers compile as C++ and link\n");
	return 0;
}
