/* test_learn.c - open counts, successors, popularity and the state file. */
#include "fixture.h"

#include <apbundle/bundle.h>
#include <apbundle/learn.h>

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

static char dir[] = "/tmp/apb-learn-XXXXXX";

static struct apb_bundle *open_names(const char *const *names, size_t n)
{
	char tmpl[sizeof(dir) + 16];

	snprintf(tmpl, sizeof(tmpl), "%s/bundle-XXXXXX", dir);
	return open_empty_models(tmpl, names, n);
}

/* A bundle of n models "m00", "m01", ...: model i is index i. */
static struct apb_bundle *open_numbered(size_t n)
{
	static char bufs[100][8];
	const char *names[100];

	CHECK(n <= 100);
	for (size_t i = 0; i < n; i++) {
		snprintf(bufs[i], sizeof(bufs[i]), "m%02zu", i);
		names[i] = bufs[i];
	}
	return open_names(names, n);
}

static struct apb_learn *new_learn(const struct apb_bundle *b)
{
	struct apb_learn *l;
	CHECK_EQ(apb_learn_new(b, &l), 0);
	return l;
}

static void open_seq(struct apb_learn *l, const uint32_t *seq, size_t n)
{
	for (size_t i = 0; i < n; i++)
		apb_learn_opened(l, seq[i]);
}

/* Check that successors(model) is exactly want[0..n). */
static void check_successors(struct apb_learn *l, uint32_t model,
			     const uint32_t *want, size_t n)
{
	uint32_t got[APB_LEARN_SUCCESSORS + 1];
	size_t k = apb_learn_successors(l, model, got, APB_LEARN_SUCCESSORS + 1);
	CHECK_EQ(k, n);
	for (size_t i = 0; i < n; i++)
		CHECK_EQ(got[i], want[i]);
}

static char *path_in_dir(const char *name)
{
	static char p[4][128];
	static int next;
	char *s = p[next++ % 4];
	snprintf(s, sizeof(p[0]), "%s/%s", dir, name);
	return s;
}

static void write_text(const char *path, const char *text, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	CHECK(fd >= 0);
	CHECK(write(fd, text, len) == (ssize_t)len);
	close(fd);
}

static char *read_text(const char *path)
{
	static char buf[65536];
	int fd = open(path, O_RDONLY);
	CHECK(fd >= 0);
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	CHECK(n >= 0);
	buf[n] = '\0';
	close(fd);
	return buf;
}

static void successors_rank_by_count_then_lower_index(void)
{
	struct apb_bundle *b = open_numbered(5);
	struct apb_learn *l = new_learn(b);
	/* 0->3 twice, 0->2 twice, 0->1 once */
	const uint32_t seq[] = {0, 3, 0, 2, 0, 2, 0, 3, 0, 1};
	uint32_t two[2];

	open_seq(l, seq, sizeof(seq) / sizeof(seq[0]));
	check_successors(l, 0, (const uint32_t[]){2, 3, 1}, 3);
	CHECK_EQ(apb_learn_successors(l, 0, two, 2), 2);
	CHECK_EQ(two[0], 2);
	CHECK_EQ(two[1], 3);
	check_successors(l, 3, (const uint32_t[]){0}, 1);
	check_successors(l, 4, NULL, 0);
	CHECK_EQ(apb_learn_successors(l, 5, two, 2), 0); /* no such model */
	CHECK_EQ(apb_learn_opens(l, 0), 5);
	CHECK_EQ(apb_learn_opens(l, 5), 0);
	apb_learn_free(l);
	apb_bundle_close(b);
}

static void a_transition_counts_once_and_reopening_is_no_transition(void)
{
	struct apb_bundle *b = open_numbered(3);
	struct apb_learn *l = new_learn(b);
	const uint32_t seq[] = {1, 1, 1, 2, 2, 1};
	char err[256];

	open_seq(l, seq, sizeof(seq) / sizeof(seq[0]));
	CHECK_EQ(apb_learn_opens(l, 1), 4);
	CHECK_EQ(apb_learn_opens(l, 2), 2);
	check_successors(l, 1, (const uint32_t[]){2}, 1);
	check_successors(l, 2, (const uint32_t[]){1}, 1);
	check_successors(l, 0, NULL, 0);
	/* The counts themselves: one transition each way. */
	CHECK_EQ(apb_learn_save(l, path_in_dir("once.json"), err, sizeof(err)), 0);
	CHECK(strcmp(read_text(path_in_dir("once.json")),
		     "{\"version\":1,\"models\":{"
		     "\"m01\":{\"opens\":4,\"next\":{\"m02\":1}},"
		     "\"m02\":{\"opens\":2,\"next\":{\"m01\":1}}}}") == 0);
	unlink(path_in_dir("once.json"));
	apb_learn_free(l);
	apb_bundle_close(b);
}

/* Model 0 is followed by k (k + 1) times, for k = 1..8. */
static void fill_eight_successors(struct apb_learn *l)
{
	for (uint32_t k = 1; k <= 8; k++)
		for (uint32_t i = 0; i < k + 1; i++) {
			apb_learn_opened(l, 0);
			apb_learn_opened(l, k);
		}
}

static void a_ninth_successor_replaces_the_least_counted(void)
{
	struct apb_bundle *b = open_numbered(12);
	struct apb_learn *l = new_learn(b);

	fill_eight_successors(l);
	check_successors(l, 0, (const uint32_t[]){8, 7, 6, 5, 4, 3, 2, 1}, 8);
	/* 9 takes 1's slot (count 2) and starts at 2 + 1 = 3, tying with 2;
	 * the tie ranks the lower index first. */
	apb_learn_opened(l, 0);
	apb_learn_opened(l, 9);
	check_successors(l, 0, (const uint32_t[]){8, 7, 6, 5, 4, 3, 2, 9}, 8);
	/* 10 replaces the least counted; of 2 and 9 (both 3) that is 9, the
	 * one ranked last; 10 starts at 4 and ties with 3. */
	apb_learn_opened(l, 0);
	apb_learn_opened(l, 10);
	check_successors(l, 0, (const uint32_t[]){8, 7, 6, 5, 4, 3, 10, 2}, 8);
	/* An existing successor only counts up. */
	for (int i = 0; i < 10; i++) {
		apb_learn_opened(l, 0);
		apb_learn_opened(l, 2);
	}
	check_successors(l, 0, (const uint32_t[]){2, 8, 7, 6, 5, 4, 3, 10}, 8);
	apb_learn_free(l);
	apb_bundle_close(b);
}

static void popular_ranks_by_opens_and_leaves_out_unopened(void)
{
	struct apb_bundle *b = open_numbered(8);
	struct apb_learn *l = new_learn(b);
	const uint32_t seq[] = {5, 3, 1, 3, 0, 5, 3, 1};
	uint32_t out[8];

	CHECK_EQ(apb_learn_popular(l, out, 8), 0);
	open_seq(l, seq, sizeof(seq) / sizeof(seq[0]));
	CHECK_EQ(apb_learn_popular(l, out, 8), 4);
	CHECK_EQ(out[0], 3);
	CHECK_EQ(out[1], 1); /* 1 and 5 both twice: lower index first */
	CHECK_EQ(out[2], 5);
	CHECK_EQ(out[3], 0);
	CHECK_EQ(apb_learn_popular(l, out, 2), 2);
	CHECK_EQ(out[0], 3);
	CHECK_EQ(out[1], 1);
	CHECK_EQ(apb_learn_popular(l, out, 0), 0);
	apb_learn_free(l);
	apb_bundle_close(b);
}

static const uint64_t *cmp_opens;

static int by_popularity(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	if (cmp_opens[x] != cmp_opens[y])
		return cmp_opens[x] > cmp_opens[y] ? -1 : 1;
	return x < y ? -1 : 1;
}

static void popular_matches_a_full_sort_for_every_max(void)
{
	enum { N = 100 };
	struct apb_bundle *b = open_numbered(N);
	struct apb_learn *l = new_learn(b);
	uint64_t opens[N] = {0};
	uint32_t want[N], got[N];
	size_t nwant = 0;

	srand(7);
	for (int i = 0; i < 3000; i++) {
		uint32_t m = (uint32_t)(rand() % N);
		if (m % 3 == 0)
			continue; /* a third never opened */
		m = m % 2 ? m : (uint32_t)(rand() % N) | 1; /* skew */
		apb_learn_opened(l, m);
		opens[m]++;
	}
	for (uint32_t m = 0; m < N; m++)
		if (opens[m])
			want[nwant++] = m;
	cmp_opens = opens;
	qsort(want, nwant, sizeof(want[0]), by_popularity);
	for (size_t max = 1; max <= N; max++) {
		size_t k = apb_learn_popular(l, got, max);
		CHECK_EQ(k, max < nwant ? max : nwant);
		for (size_t i = 0; i < k; i++)
			CHECK_EQ(got[i], want[i]);
	}
	apb_learn_free(l);
	apb_bundle_close(b);
}

static void check_same_answers(struct apb_learn *a, struct apb_learn *b,
			       uint32_t n)
{
	uint32_t x[100], y[100];
	size_t kx, ky;

	for (uint32_t m = 0; m < n; m++) {
		CHECK_EQ(apb_learn_opens(a, m), apb_learn_opens(b, m));
		kx = apb_learn_successors(a, m, x, 100);
		ky = apb_learn_successors(b, m, y, 100);
		CHECK_EQ(kx, ky);
		for (size_t i = 0; i < kx; i++)
			CHECK_EQ(x[i], y[i]);
	}
	kx = apb_learn_popular(a, x, 100);
	ky = apb_learn_popular(b, y, 100);
	CHECK_EQ(kx, ky);
	for (size_t i = 0; i < kx; i++)
		CHECK_EQ(x[i], y[i]);
}

static void save_then_load_gives_identical_answers(void)
{
	enum { N = 30 };
	struct apb_bundle *b = open_numbered(N);
	struct apb_learn *l = new_learn(b), *fresh = new_learn(b);
	const char *path = path_in_dir("state.json");
	char err[256];
	cJSON *doc;

	srand(11);
	for (int i = 0; i < 5000; i++)
		apb_learn_opened(l, (uint32_t)(rand() % (N - 5))); /* 25..29 never */
	CHECK_EQ(apb_learn_save(l, path, err, sizeof(err)), 0);
	CHECK_EQ(apb_learn_load(fresh, path, err, sizeof(err)), 0);
	check_same_answers(l, fresh, N);
	/* The document: version 1, only models that were opened, each with
	 * at most APB_LEARN_SUCCESSORS successors, most frequent first. */
	doc = cJSON_Parse(read_text(path));
	CHECK(doc);
	CHECK_EQ(cJSON_GetObjectItem(doc, "version")->valuedouble, 1);
	const cJSON *models = cJSON_GetObjectItem(doc, "models");
	CHECK_EQ(cJSON_GetArraySize(models), N - 5);
	CHECK(cJSON_GetObjectItem(models, "m25") == NULL);
	const cJSON *next = cJSON_GetObjectItem(
		cJSON_GetObjectItem(models, "m00"), "next");
	CHECK_EQ(cJSON_GetArraySize(next), APB_LEARN_SUCCESSORS);
	double prev = 1e18;
	const cJSON *s;
	cJSON_ArrayForEach(s, next) {
		CHECK(s->valuedouble <= prev);
		prev = s->valuedouble;
	}
	cJSON_Delete(doc);
	unlink(path);
	apb_learn_free(fresh);
	apb_learn_free(l);
	apb_bundle_close(b);
}

static void loading_adds_to_the_counts_already_there(void)
{
	struct apb_bundle *b = open_numbered(3);
	struct apb_learn *l = new_learn(b);
	const char *path = path_in_dir("merge.json");
	const char *out = path_in_dir("merged.json");
	char err[256];

	write_text(path,
		   "{\"version\":1,\"models\":{"
		   "\"m00\":{\"opens\":5,\"next\":{\"m01\":3,\"m02\":1}}}}",
		   strlen("{\"version\":1,\"models\":{"
			  "\"m00\":{\"opens\":5,\"next\":{\"m01\":3,\"m02\":1}}}}"));
	apb_learn_opened(l, 0);
	apb_learn_opened(l, 2);
	apb_learn_opened(l, 0);
	apb_learn_opened(l, 2);
	CHECK_EQ(apb_learn_load(l, path, err, sizeof(err)), 0);
	CHECK_EQ(apb_learn_opens(l, 0), 7);
	/* m02: 2 + 1 = 3 ties m01's 3: lower index first */
	check_successors(l, 0, (const uint32_t[]){1, 2}, 2);
	CHECK_EQ(apb_learn_load(l, path, err, sizeof(err)), 0);
	CHECK_EQ(apb_learn_opens(l, 0), 12);
	CHECK_EQ(apb_learn_save(l, out, err, sizeof(err)), 0);
	CHECK(strcmp(read_text(out),
		     "{\"version\":1,\"models\":{"
		     "\"m00\":{\"opens\":12,\"next\":{\"m01\":6,\"m02\":4}},"
		     "\"m02\":{\"opens\":2,\"next\":{\"m00\":1}}}}") == 0);
	unlink(path);
	unlink(out);
	apb_learn_free(l);
	apb_bundle_close(b);
}

static void names_not_in_the_bundle_are_skipped(void)
{
	const char *names[] = {"a", "b"};
	struct apb_bundle *b = open_names(names, 2);
	struct apb_learn *l = new_learn(b);
	const char *path = path_in_dir("other.json");
	const char *text =
		"{\"version\":1,\"models\":{"
		"\"gone\":{\"opens\":9,\"next\":{\"a\":9}},"
		"\"a\":{\"opens\":2,\"next\":{\"gone\":7,\"b\":1,\"a\":4}},"
		"\"b\":{\"opens\":0,\"next\":{}}}}";
	uint32_t out[4];
	char err[256];

	write_text(path, text, strlen(text));
	CHECK_EQ(apb_learn_load(l, path, err, sizeof(err)), 0);
	CHECK_EQ(apb_learn_opens(l, 0), 2);
	CHECK_EQ(apb_learn_opens(l, 1), 0);
	/* "gone" is skipped, and so is a's transition to itself. */
	check_successors(l, 0, (const uint32_t[]){1}, 1);
	check_successors(l, 1, NULL, 0);
	CHECK_EQ(apb_learn_popular(l, out, 4), 1);
	unlink(path);
	apb_learn_free(l);
	apb_bundle_close(b);
}

static void corrupt_state_files_are_refused_and_merge_nothing(void)
{
	static const struct {
		const char *text;
		const char *msg;
	} cases[] = {
		{"not json", "state file: not JSON"},
		{"\n", "state file: not JSON"}, /* empty is new; this is not */
		{"{\"version\":1,\"models\":{\"m00\":{\"opens\":1,",
		 "state file: not JSON"},
		{"{\"version\":1,\"models\":{}} x", "state file: not JSON"},
		{"[]", "state file: top level is not an object"},
		{"{\"models\":{}}", "state file: 'version' is missing"},
		{"{\"version\":2,\"models\":{}}", "state file: 'version' is not 1"},
		{"{\"version\":\"1\",\"models\":{}}",
		 "state file: 'version' is not 1"},
		{"{\"version\":1}", "state file: 'models' is missing"},
		{"{\"version\":1,\"models\":[]}",
		 "state file: 'models' is not an object"},
		{"{\"version\":1,\"models\":{\"m00\":{\"opens\":1,\"next\":{}},"
		 "\"m01\":5}}",
		 "state file: 'models.m01' is not an object"},
		{"{\"version\":1,\"models\":{\"m00\":{\"opens\":1,\"next\":{}},"
		 "\"m01\":{\"opens\":-1,\"next\":{}}}}",
		 "state file: 'models.m01.opens' is not a non-negative integer"},
		{"{\"version\":1,\"models\":{\"m00\":{\"opens\":1,\"next\":{}},"
		 "\"m01\":{\"opens\":\"3\",\"next\":{}}}}",
		 "state file: 'models.m01.opens' is not a non-negative integer"},
		{"{\"version\":1,\"models\":{\"m00\":{\"opens\":1,\"next\":{}},"
		 "\"m01\":{\"opens\":1.5,\"next\":{}}}}",
		 "state file: 'models.m01.opens' is not a non-negative integer"},
		{"{\"version\":1,\"models\":{\"m00\":{\"opens\":1,\"next\":{}},"
		 "\"m01\":{\"opens\":1e300,\"next\":{}}}}",
		 "state file: 'models.m01.opens' is not a non-negative integer"},
		{"{\"version\":1,\"models\":{\"m00\":{\"opens\":1,\"next\":{}},"
		 "\"m01\":{\"next\":{}}}}",
		 "state file: 'models.m01.opens' is missing"},
		{"{\"version\":1,\"models\":{\"m00\":{\"opens\":1,\"next\":{}},"
		 "\"m01\":{\"opens\":1}}}",
		 "state file: 'models.m01.next' is missing"},
		{"{\"version\":1,\"models\":{\"m00\":{\"opens\":1,\"next\":{}},"
		 "\"m01\":{\"opens\":1,\"next\":[]}}}",
		 "state file: 'models.m01.next' is not an object"},
		{"{\"version\":1,\"models\":{\"m00\":{\"opens\":1,\"next\":"
		 "{\"m01\":2,\"m02\":-2}}}}",
		 "state file: 'models.m00.next.m02' is not a non-negative integer"},
		{"{\"version\":1,\"models\":{\"m00\":{\"opens\":1,\"next\":"
		 "{\"m01\":null}}}}",
		 "state file: 'models.m00.next.m01' is not a non-negative integer"},
	};
	struct apb_bundle *b = open_numbered(3);
	struct apb_learn *l = new_learn(b);
	const char *path = path_in_dir("bad.json");
	char err[256];
	uint32_t out[3];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		write_text(path, cases[i].text, strlen(cases[i].text));
		err[0] = '\0';
		CHECK_EQ(apb_learn_load(l, path, err, sizeof(err)), -EINVAL);
		CHECK_STR_CONTAINS(err, cases[i].msg);
		CHECK_EQ(strncmp(err, path, strlen(path)), 0);
		CHECK_STR_CONTAINS(err, ": not an apbundlefs state file: ");
	}
	/* A NUL byte inside an otherwise valid document. */
	write_text(path, "{\"version\":1,\"models\":{}}\0{}", 28);
	CHECK_EQ(apb_learn_load(l, path, err, sizeof(err)), -EINVAL);
	CHECK_STR_CONTAINS(err, "state file: not JSON");
	/* The valid m00 entries before each error were not merged. */
	for (uint32_t m = 0; m < 3; m++) {
		CHECK_EQ(apb_learn_opens(l, m), 0);
		check_successors(l, m, NULL, 0);
	}
	CHECK_EQ(apb_learn_popular(l, out, 3), 0);
	unlink(path);
	apb_learn_free(l);
	apb_bundle_close(b);
}

static void missing_and_oversized_files_are_reported(void)
{
	struct apb_bundle *b = open_numbered(2);
	struct apb_learn *l = new_learn(b);
	const char *missing = path_in_dir("missing.json");
	const char *big = path_in_dir("big.json");
	char err[256];
	int fd;

	CHECK_EQ(apb_learn_load(l, missing, err, sizeof(err)), -ENOENT);
	CHECK_STR_CONTAINS(err, missing);
	/* Sparse: 64 MiB + 1 bytes cost no disk. */
	fd = open(big, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	CHECK(fd >= 0);
	CHECK_EQ(ftruncate(fd, (64 << 20) + 1), 0);
	close(fd);
	CHECK_EQ(apb_learn_load(l, big, err, sizeof(err)), -EFBIG);
	CHECK_STR_CONTAINS(err, big);
	CHECK_STR_CONTAINS(err, "larger than the limit of 67108864 bytes");
	unlink(big);
	apb_learn_free(l);
	apb_bundle_close(b);
}

/* An empty file is a new one; a FIFO (no writer: opening it for reading
 * would block) and a directory are refused at once. */
static void empty_files_count_as_new_and_non_regular_ones_are_refused(void)
{
	struct apb_bundle *b = open_numbered(2);
	struct apb_learn *l = new_learn(b);
	const char *empty = path_in_dir("empty.json");
	const char *fifo = path_in_dir("fifo.json");
	char err[256];

	write_text(empty, "", 0);
	CHECK_EQ(apb_learn_load(l, empty, err, sizeof(err)), 0);
	CHECK_EQ(apb_learn_opens(l, 0), 0);
	CHECK_EQ(mkfifo(fifo, 0600), 0);
	CHECK_EQ(apb_learn_load(l, fifo, err, sizeof(err)), -EINVAL);
	CHECK_STR_CONTAINS(err, fifo);
	CHECK_STR_CONTAINS(err, ": is a FIFO, not a regular file");
	CHECK_EQ(apb_learn_load(l, dir, err, sizeof(err)), -EISDIR);
	CHECK_STR_CONTAINS(err, ": is a directory, not a regular file");
	unlink(empty);
	unlink(fifo);
	apb_learn_free(l);
	apb_bundle_close(b);
}

static size_t temp_files_in(const char *d)
{
	DIR *dp = opendir(d);
	struct dirent *e;
	size_t n = 0;

	CHECK(dp);
	while ((e = readdir(dp)))
		if (strstr(e->d_name, ".tmp."))
			n++;
	closedir(dp);
	return n;
}

static void failed_saves_report_the_path_and_leave_no_temporary(void)
{
	struct apb_bundle *b = open_numbered(2);
	struct apb_learn *l = new_learn(b);
	char sub[160], target[200], nodir[200];
	char err[256];
	int rc;

	apb_learn_opened(l, 0);
	apb_learn_opened(l, 1);
	/* The target is a non-empty directory: the temporary file is written
	 * and synced, then the rename fails and it must go. */
	snprintf(sub, sizeof(sub), "%s/sub", dir);
	CHECK_EQ(mkdir(sub, 0755), 0);
	snprintf(target, sizeof(target), "%s/state.json", sub);
	CHECK_EQ(mkdir(target, 0755), 0);
	snprintf(nodir, sizeof(nodir), "%s/state.json/keep", sub);
	write_text(nodir, "x", 1);
	rc = apb_learn_save(l, target, err, sizeof(err));
	CHECK(rc == -EISDIR || rc == -ENOTEMPTY || rc == -EEXIST);
	CHECK_STR_CONTAINS(err, target);
	CHECK_EQ(temp_files_in(sub), 0);
	/* A directory that does not exist: nothing can be created. */
	snprintf(nodir, sizeof(nodir), "%s/no/such/dir/state.json", dir);
	CHECK_EQ(apb_learn_save(l, nodir, err, sizeof(err)), -ENOENT);
	CHECK_STR_CONTAINS(err, nodir);
	CHECK_EQ(temp_files_in(dir), 0);

	snprintf(nodir, sizeof(nodir), "%s/state.json/keep", sub);
	unlink(nodir);
	rmdir(target);
	rmdir(sub);
	apb_learn_free(l);
	apb_bundle_close(b);
}

enum { THREADS = 4, PER_THREAD = 50000, MODELS = 13 };

struct worker {
	struct apb_learn *l;
	uint32_t t;
};

static void *open_many(void *arg)
{
	struct worker *w = arg;
	for (uint32_t i = 0; i < PER_THREAD; i++)
		apb_learn_opened(w->l, (w->t * 7 + i) % MODELS);
	return NULL;
}

static void concurrent_opens_are_all_counted(void)
{
	struct apb_bundle *b = open_numbered(MODELS);
	struct apb_learn *l = new_learn(b);
	pthread_t th[THREADS];
	struct worker w[THREADS];
	uint64_t want[MODELS] = {0}, total = 0;
	uint32_t out[MODELS];

	for (uint32_t t = 0; t < THREADS; t++) {
		w[t] = (struct worker){l, t};
		CHECK_EQ(pthread_create(&th[t], NULL, open_many, &w[t]), 0);
		for (uint32_t i = 0; i < PER_THREAD; i++)
			want[(t * 7 + i) % MODELS]++;
	}
	for (int t = 0; t < THREADS; t++)
		CHECK_EQ(pthread_join(th[t], NULL), 0);
	for (uint32_t m = 0; m < MODELS; m++) {
		CHECK_EQ(apb_learn_opens(l, m), want[m]);
		total += apb_learn_opens(l, m);
	}
	CHECK_EQ(total, THREADS * PER_THREAD);
	CHECK_EQ(apb_learn_popular(l, out, MODELS), MODELS);
	apb_learn_free(l);
	apb_bundle_close(b);
}

/* ---- load orders ------------------------------------------------------ */

#define CS 65536u

/* "a" of 10 chunks (the last one short), "b" of 3, "c" empty. */
static struct apb_bundle *open_sized(uint64_t a_size)
{
	static const char *const names[] = {"a", "b", "c"};
	const uint64_t sizes[] = {a_size, 3 * CS, 0};
	char tmpl[sizeof(dir) + 16];

	snprintf(tmpl, sizeof(tmpl), "%s/bundle-XXXXXX", dir);
	return open_sized_models(tmpl, names, sizes, 3);
}

static void check_order(struct apb_learn *l, uint32_t model,
			const struct apb_order_run *want, size_t wn)
{
	struct apb_order_run *got;
	size_t n;

	CHECK_EQ(apb_learn_order(l, model, &got, &n), 0);
	CHECK_EQ(n, wn);
	for (size_t i = 0; i < n; i++) {
		CHECK_EQ(got[i].first, want[i].first);
		CHECK_EQ(got[i].count, want[i].count);
	}
	free(got);
}

static void an_offered_order_replaces_one_at_most_twice_its_size(void)
{
	struct apb_bundle *b = open_sized(9 * CS + 100);
	struct apb_learn *l = new_learn(b);
	const struct apb_order_run ten[] = {{5, 5}, {0, 5}};
	const struct apb_order_run four[] = {{0, 4}};
	const struct apb_order_run five[] = {{9, 1}, {0, 4}};
	const struct apb_order_run past[] = {{9, 2}};
	const struct apb_order_run twice[] = {{0, 2}, {1, 1}};

	CHECK_EQ(apb_learn_offer_order(l, 0, ten, 2), -EINVAL); /* no size */
	apb_learn_set_chunk_size(l, CS);
	check_order(l, 0, NULL, 0);
	CHECK_EQ(apb_learn_offer_order(l, 0, ten, 2), 1);
	check_order(l, 0, ten, 2);
	CHECK_EQ(apb_learn_offer_order(l, 0, four, 1), 0);  /* 8 < 10 */
	check_order(l, 0, ten, 2);
	CHECK_EQ(apb_learn_offer_order(l, 0, five, 2), 1);  /* 10 <= 10 */
	check_order(l, 0, five, 2);
	CHECK_EQ(apb_learn_offer_order(l, 0, past, 1), -EINVAL);
	CHECK_EQ(apb_learn_offer_order(l, 0, twice, 2), -EINVAL);
	CHECK_EQ(apb_learn_offer_order(l, 2, four, 1), -EINVAL); /* empty */
	CHECK_EQ(apb_learn_offer_order(l, 3, four, 1), -EINVAL); /* no model */
	CHECK_EQ(apb_learn_offer_order(l, 1, four, 0), 0);
	check_order(l, 1, NULL, 0);
	check_order(l, 0, five, 2);
	apb_learn_free(l);
	apb_bundle_close(b);
}

static void orders_survive_a_save_and_load_of_the_same_chunk_size_only(void)
{
	struct apb_bundle *b = open_sized(9 * CS + 100);
	struct apb_bundle *other = open_sized(9 * CS + 101); /* "a" changed */
	struct apb_learn *l = new_learn(b), *same = new_learn(b);
	struct apb_learn *bigger = new_learn(b), *changed = new_learn(other);
	struct apb_learn *none = new_learn(b);
	const struct apb_order_run a[] = {{7, 3}, {0, 2}, {4, 1}};
	const struct apb_order_run bo[] = {{2, 1}, {0, 1}};
	const char *path = path_in_dir("orders.json");
	char err[256];

	apb_learn_set_chunk_size(l, CS);
	apb_learn_opened(l, 1);
	CHECK_EQ(apb_learn_offer_order(l, 0, a, 3), 1); /* never opened */
	CHECK_EQ(apb_learn_offer_order(l, 1, bo, 2), 1);
	CHECK_EQ(apb_learn_save(l, path, err, sizeof(err)), 0);
	CHECK_STR_CONTAINS(read_text(path),
			   "\"a\":{\"opens\":0,\"next\":{},\"order\":"
			   "{\"chunk_size\":65536,\"size\":589924,\"runs\":"
			   "[[7,3],[0,2],[4,1]]}}");
	CHECK_STR_CONTAINS(read_text(path),
			   "\"b\":{\"opens\":1,\"next\":{},\"order\":"
			   "{\"chunk_size\":65536,\"size\":196608,\"runs\":"
			   "[[2,1],[0,1]]}}");
	apb_learn_set_chunk_size(same, CS);
	CHECK_EQ(apb_learn_load(same, path, err, sizeof(err)), 0);
	check_order(same, 0, a, 3);
	check_order(same, 1, bo, 2);
	CHECK_EQ(apb_learn_opens(same, 1), 1);
	/* Another chunk size, another model of the same name, no chunk
	 * size at all: the orders are dropped, the counts still load. */
	apb_learn_set_chunk_size(bigger, 2 * CS);
	apb_learn_set_chunk_size(changed, CS);
	CHECK_EQ(apb_learn_load(bigger, path, err, sizeof(err)), 0);
	CHECK_EQ(apb_learn_load(changed, path, err, sizeof(err)), 0);
	CHECK_EQ(apb_learn_load(none, path, err, sizeof(err)), 0);
	check_order(bigger, 0, NULL, 0);
	check_order(changed, 0, NULL, 0);
	check_order(changed, 1, bo, 2);
	check_order(none, 1, NULL, 0);
	CHECK_EQ(apb_learn_opens(none, 1), 1);
	/* Loading again replaces the order (not merged). */
	CHECK_EQ(apb_learn_offer_order(same, 0, bo, 2), 0);
	CHECK_EQ(apb_learn_offer_order(same, 0, a, 2), 1);
	CHECK_EQ(apb_learn_load(same, path, err, sizeof(err)), 0);
	check_order(same, 0, a, 3);
	unlink(path);
	apb_learn_free(l);
	apb_learn_free(same);
	apb_learn_free(bigger);
	apb_learn_free(changed);
	apb_learn_free(none);
	apb_bundle_close(b);
	apb_bundle_close(other);
}

static void corrupt_orders_are_refused_and_change_nothing(void)
{
#define HEAD "{\"version\":1,\"models\":{\"b\":{\"opens\":4,\"next\":{}," \
	     "\"order\":"
#define ORD(runs) HEAD "{\"chunk_size\":65536,\"size\":196608,\"runs\":" \
		  runs "}}}}"
	static const struct {
		const char *text;
		const char *msg;
	} cases[] = {
		{HEAD "[]}}}", "'models.b.order' is not an object"},
		{HEAD "{\"size\":1,\"runs\":[]}}}}",
		 "'models.b.order.chunk_size' is missing or not an integer"},
		{HEAD "{\"chunk_size\":0,\"size\":1,\"runs\":[]}}}}",
		 "'models.b.order.chunk_size' is missing or not an integer"},
		{HEAD "{\"chunk_size\":4096,\"size\":-1,\"runs\":[]}}}}",
		 "'models.b.order.size' is missing or not a non-negative"},
		{HEAD "{\"chunk_size\":4096,\"size\":1}}}}",
		 "'models.b.order.runs' is missing or not an array"},
		{ORD("[[0,1],[1]]"), "'models.b.order.runs[1]' is not [FIRST, COUNT]"},
		{ORD("[[0,1],{}]"), "'models.b.order.runs[1]' is not [FIRST, COUNT]"},
		{ORD("[[0,0]]"), "'models.b.order.runs[0]' is not [FIRST, COUNT]"},
		{ORD("[[0,1.5]]"), "'models.b.order.runs[0]' is not [FIRST, COUNT]"},
		{ORD("[[-1,1]]"), "'models.b.order.runs[0]' is not [FIRST, COUNT]"},
		{ORD("[[0,5000]]"), "'models.b.order.runs[0]' is not [FIRST, COUNT]"},
		{ORD("[[2,2]]"), "'models.b.order.runs' names a chunk past"},
		{ORD("[[3,1]]"), "'models.b.order.runs' names a chunk past"},
		{ORD("[[0,2],[1,1]]"), "'models.b.order.runs' names a chunk past"},
	};
	struct apb_bundle *b = open_sized(9 * CS);
	struct apb_learn *l = new_learn(b);
	const struct apb_order_run kept[] = {{1, 2}};
	const char *path = path_in_dir("bad-order.json");
	char err[256];

	apb_learn_set_chunk_size(l, CS);
	CHECK_EQ(apb_learn_offer_order(l, 1, kept, 1), 1);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		write_text(path, cases[i].text, strlen(cases[i].text));
		err[0] = '\0';
		CHECK_EQ(apb_learn_load(l, path, err, sizeof(err)), -EINVAL);
		CHECK_STR_CONTAINS(err, "not an apbundlefs state file: ");
		CHECK_STR_CONTAINS(err, cases[i].msg);
		CHECK_EQ(apb_learn_opens(l, 1), 0);
		check_order(l, 1, kept, 1);
	}
	/* Too many runs: over APB_ORDER_CHUNKS entries. */
	{
		size_t cap = 16 * APB_ORDER_CHUNKS + 256, n;
		char *t = malloc(cap);
		CHECK(t);
		n = (size_t)snprintf(t, cap, ORD("["));
		n -= strlen("}}}}"); /* ORD put the tail after "[" */
		for (unsigned i = 0; i <= APB_ORDER_CHUNKS; i++)
			n += (size_t)snprintf(t + n, cap - n, "%s[0,1]",
					      i ? "," : "");
		snprintf(t + n, cap - n, "]}}}}");
		write_text(path, t, strlen(t));
		CHECK_EQ(apb_learn_load(l, path, err, sizeof(err)), -EINVAL);
		CHECK_STR_CONTAINS(err, "'models.b.order.runs' has more than 4096 runs");
		free(t);
	}
	check_order(l, 1, kept, 1);
	unlink(path);
	apb_learn_free(l);
	apb_bundle_close(b);
#undef ORD
#undef HEAD
}

/* Random damage to a state file with orders (bytes flipped, replaced by
 * JSON punctuation, cut short): each load is refused with one message or
 * accepted, and whatever it accepts is an order apb_order_new() takes. */
static void damaged_state_files_load_or_are_refused_cleanly(void)
{
	static const char punct[] = "[]{},:\"-0123456789e.";
	struct apb_bundle *b = open_sized(9 * CS + 100);
	struct apb_learn *l = new_learn(b);
	const struct apb_order_run a[] = {{7, 3}, {0, 2}, {4, 1}};
	const struct apb_order_run bo[] = {{2, 1}, {0, 1}};
	const char *path = path_in_dir("damaged.json");
	char err[256], good[4096], bad[4096];
	size_t len;
	unsigned accepted = 0;

	apb_learn_set_chunk_size(l, CS);
	apb_learn_opened(l, 0);
	apb_learn_opened(l, 1);
	CHECK_EQ(apb_learn_offer_order(l, 0, a, 3), 1);
	CHECK_EQ(apb_learn_offer_order(l, 1, bo, 2), 1);
	CHECK_EQ(apb_learn_save(l, path, err, sizeof(err)), 0);
	snprintf(good, sizeof(good), "%s", read_text(path));
	len = strlen(good);
	srand(1616);
	for (int i = 0; i < 3000; i++) {
		struct apb_learn *fresh = new_learn(b);
		size_t n = len;
		int rc;

		memcpy(bad, good, len);
		for (int k = 0; k < 1 + rand() % 3; k++) {
			size_t at = (size_t)rand() % len;
			bad[at] = rand() % 2 ? punct[rand() % (sizeof(punct) - 1)]
					     : (char)(rand() % 256);
		}
		if (rand() % 8 == 0)
			n = (size_t)rand() % len;
		write_text(path, bad, n);
		apb_learn_set_chunk_size(fresh, CS);
		err[0] = '\0';
		rc = apb_learn_load(fresh, path, err, sizeof(err));
		if (rc == 0) {
			accepted++;
			for (uint32_t m = 0; m < 3; m++) {
				struct apb_order_run *runs;
				size_t k;
				uint64_t size = apb_bundle_model(b, m)->size;
				CHECK_EQ(apb_learn_order(fresh, m, &runs, &k), 0);
				CHECK_EQ(apb_order_check(runs, k, (size + CS - 1) / CS), 0);
				free(runs);
			}
		} else {
			CHECK(rc == -EINVAL);
			CHECK(strncmp(err, path, strlen(path)) == 0);
			CHECK(strchr(err, '\n') == NULL);
		}
		apb_learn_free(fresh);
	}
	/* Some damage leaves a valid file (a digit for a digit). */
	CHECK(accepted > 0 && accepted < 3000);
	unlink(path);
	apb_learn_free(l);
	apb_bundle_close(b);
}

int main(void)
{
	CHECK(mkdtemp(dir) != NULL);
	RUN(successors_rank_by_count_then_lower_index);
	RUN(a_transition_counts_once_and_reopening_is_no_transition);
	RUN(a_ninth_successor_replaces_the_least_counted);
	RUN(popular_ranks_by_opens_and_leaves_out_unopened);
	RUN(popular_matches_a_full_sort_for_every_max);
	RUN(save_then_load_gives_identical_answers);
	RUN(loading_adds_to_the_counts_already_there);
	RUN(names_not_in_the_bundle_are_skipped);
	RUN(corrupt_state_files_are_refused_and_merge_nothing);
	RUN(missing_and_oversized_files_are_reported);
	RUN(empty_files_count_as_new_and_non_regular_ones_are_refused);
	RUN(failed_saves_report_the_path_and_leave_no_temporary);
	RUN(concurrent_opens_are_all_counted);
	RUN(an_offered_order_replaces_one_at_most_twice_its_size);
	RUN(orders_survive_a_save_and_load_of_the_same_chunk_size_only);
	RUN(corrupt_orders_are_refused_and_change_nothing);
	RUN(damaged_state_files_load_or_are_refused_cleanly);
	CHECK_EQ(rmdir(dir), 0);
	return 0;
}
