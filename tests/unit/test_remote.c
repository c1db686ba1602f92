/*
 * test_remote.c - the parts of core/remote.c that need no server: URL
 * classification, S3 request URLs (path-style and virtual-hosted) and the
 * INI reader for ~/.aws/credentials and ~/.aws/config. Reads against real
 * servers are in tests/e2e/test_remote_reader.py.
 */
#include "test.h"

#include "../../core/remote.h"
#include <apbundle/bundle.h>

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

static char dir[] = "/tmp/apb-test-remote-XXXXXX";

static const char *write_file(const char *name, const char *text)
{
	static char path[256];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	FILE *f = fopen(path, "w");
	CHECK(f != NULL);
	CHECK(fputs(text, f) >= 0);
	CHECK(fclose(f) == 0);
	return path;
}

static void test_parse_url(void)
{
	struct apb_remote_url u;
	char err[256];
	CHECK_EQ(apb_remote_parse_url("http://127.0.0.1:8080/m.apbundle", &u, err, sizeof(err)), 0);
	CHECK(!u.s3);
	CHECK_EQ(apb_remote_parse_url("HTTPS://cdn.example/x", &u, err, sizeof(err)), 0);
	CHECK(!u.s3);
	CHECK_EQ(apb_remote_parse_url("s3://apb/models/m 1.apbundle", &u, err, sizeof(err)), 0);
	CHECK(u.s3);
	CHECK(strcmp(u.bucket, "apb") == 0);
	CHECK(strcmp(u.key, "models/m 1.apbundle") == 0);

	CHECK_EQ(apb_remote_parse_url("ftp://h/x", &u, err, sizeof(err)), -EINVAL);
	CHECK_STR_CONTAINS(err, "not a remote URL");
	CHECK_EQ(apb_remote_parse_url("/local/file", &u, err, sizeof(err)), -EINVAL);
	CHECK_EQ(apb_remote_parse_url("http:///x", &u, err, sizeof(err)), -EINVAL);
	CHECK_STR_CONTAINS(err, "no host");
	CHECK_EQ(apb_remote_parse_url("s3://bucket", &u, err, sizeof(err)), -EINVAL);
	CHECK_STR_CONTAINS(err, "s3://bucket/key");
	CHECK_EQ(apb_remote_parse_url("s3://bucket/", &u, err, sizeof(err)), -EINVAL);
	CHECK_EQ(apb_remote_parse_url("s3:///key", &u, err, sizeof(err)), -EINVAL);
	CHECK_EQ(apb_remote_parse_url("s3://bu?ket/key", &u, err, sizeof(err)), -EINVAL);
	CHECK_STR_CONTAINS(err, "'?'");
	char longb[100];
	snprintf(longb, sizeof(longb), "s3://%070d/k", 0);
	CHECK_EQ(apb_remote_parse_url(longb, &u, err, sizeof(err)), -EINVAL);
	CHECK_STR_CONTAINS(err, "bucket name longer");
}

static void test_s3_url(void)
{
	char out[256], err[256];
	/* path-style, a trailing slash on the endpoint, a key escaped as SigV4 wants */
	CHECK_EQ(apb_remote_s3_url("http://127.0.0.1:7480/", "apb", "dir/m 1+x~.bin", true, out,
				   sizeof(out), err, sizeof(err)), 0);
	CHECK(strcmp(out, "http://127.0.0.1:7480/apb/dir/m%201%2Bx~.bin") == 0);
	/* virtual-hosted */
	CHECK_EQ(apb_remote_s3_url("https://s3.eu-west-1.amazonaws.com", "models", "a/b", false,
				   out, sizeof(out), err, sizeof(err)), 0);
	CHECK(strcmp(out, "https://models.s3.eu-west-1.amazonaws.com/a/b") == 0);
	/* a bucket that is no DNS label stays path-style */
	CHECK_EQ(apb_remote_s3_url("https://s3.amazonaws.com", "my.bucket", "k", false, out,
				   sizeof(out), err, sizeof(err)), 0);
	CHECK(strcmp(out, "https://s3.amazonaws.com/my.bucket/k") == 0);
	/* an IP address has no subdomains: path-style */
	CHECK_EQ(apb_remote_s3_url("http://127.0.0.1:7480", "b", "k", false, out, sizeof(out),
				   err, sizeof(err)), 0);
	CHECK(strcmp(out, "http://127.0.0.1:7480/b/k") == 0);
	CHECK_EQ(apb_remote_s3_url("http://[::1]:7480", "b", "k", false, out, sizeof(out), err,
				   sizeof(err)), 0);
	CHECK(strcmp(out, "http://[::1]:7480/b/k") == 0);
	CHECK_EQ(apb_remote_s3_url("http://minio.lan:9000", "b", "k", false, out, sizeof(out),
				   err, sizeof(err)), 0);
	CHECK(strcmp(out, "http://b.minio.lan:9000/k") == 0);
	/* an endpoint with a path prefix */
	CHECK_EQ(apb_remote_s3_url("http://h:1/s3", "b", "k", true, out, sizeof(out), err,
				   sizeof(err)), 0);
	CHECK(strcmp(out, "http://h:1/s3/b/k") == 0);
	/* UTF-8 bytes are escaped one by one */
	CHECK_EQ(apb_remote_s3_url("http://h", "b", "\xc3\xa9", true, out, sizeof(out), err,
				   sizeof(err)), 0);
	CHECK(strcmp(out, "http://h/b/%C3%A9") == 0);

	CHECK_EQ(apb_remote_s3_url("h:1", "b", "k", true, out, sizeof(out), err, sizeof(err)),
		 -EINVAL);
	CHECK_STR_CONTAINS(err, "S3 endpoint h:1");
	CHECK_EQ(apb_remote_s3_url("http://h", "b", "0123456789", true, out, 16, err, sizeof(err)),
		 -ENAMETOOLONG);
}

static void test_ini(void)
{
	const char *p = write_file("credentials",
				   "# comment\n"
				   "[default]\n"
				   "aws_access_key_id = DEFKEY\n"
				   "aws_secret_access_key=defsecret \n"
				   "\n"
				   "[ rgw ]\n"
				   "; another comment\n"
				   "AWS_ACCESS_KEY_ID =  RGWKEY\n"
				   "s3 =\n"
				   "  endpoint_url = http://nested.invalid\n"
				   "aws_secret_access_key = s=e=c\n"
				   "[empty]\n");
	char v[64];
	CHECK_EQ(apb_remote_ini_get(p, "default", "aws_access_key_id", v, sizeof(v)), 1);
	CHECK(strcmp(v, "DEFKEY") == 0);
	CHECK_EQ(apb_remote_ini_get(p, "default", "aws_secret_access_key", v, sizeof(v)), 1);
	CHECK(strcmp(v, "defsecret") == 0);
	/* case-insensitive keys, values with '=' kept whole, nested keys skipped */
	CHECK_EQ(apb_remote_ini_get(p, "rgw", "aws_access_key_id", v, sizeof(v)), 1);
	CHECK(strcmp(v, "RGWKEY") == 0);
	CHECK_EQ(apb_remote_ini_get(p, "rgw", "aws_secret_access_key", v, sizeof(v)), 1);
	CHECK(strcmp(v, "s=e=c") == 0);
	CHECK_EQ(apb_remote_ini_get(p, "rgw", "endpoint_url", v, sizeof(v)), 0);
	/* a key of another section is not this one's */
	CHECK_EQ(apb_remote_ini_get(p, "empty", "aws_access_key_id", v, sizeof(v)), 0);
	CHECK_EQ(apb_remote_ini_get(p, "missing", "aws_access_key_id", v, sizeof(v)), -ENOENT);
	CHECK_EQ(apb_remote_ini_get(p, "default", "aws_access_key_id", v, 4), -ENAMETOOLONG);

	const char *c = write_file("config",
				   "[default]\n"
				   "region = eu-central-1\n"
				   "[profile   rgw]\n"
				   "region=us-east-1\n"
				   "endpoint_url = http://127.0.0.1:7480\n");
	CHECK_EQ(apb_remote_ini_get(c, "profile rgw", "endpoint_url", v, sizeof(v)), 1);
	CHECK(strcmp(v, "http://127.0.0.1:7480") == 0);
	CHECK_EQ(apb_remote_ini_get(c, "default", "region", v, sizeof(v)), 1);
	CHECK(strcmp(v, "eu-central-1") == 0);
	CHECK_EQ(apb_remote_ini_get(c, "rgw", "region", v, sizeof(v)), -ENOENT);

	char missing[300];
	snprintf(missing, sizeof(missing), "%s/nope", dir);
	CHECK_EQ(apb_remote_ini_get(missing, "default", "region", v, sizeof(v)), -ENOENT);
}

/* Opening needs no server to fail on a bad URL or a missing profile. */
static void test_open_errors(void)
{
	struct apb_remote *r = (struct apb_remote *)1;
	char err[512];
	CHECK_EQ(apb_remote_open("file:///etc/passwd", NULL, &r, err, sizeof(err)), -EINVAL);
	CHECK(r == NULL);
	setenv("AWS_SHARED_CREDENTIALS_FILE", write_file("credentials", "[a]\nx=1\n"), 1);
	setenv("AWS_CONFIG_FILE", write_file("config", "[profile b]\nregion=x\n"), 1);
	unsetenv("AWS_ACCESS_KEY_ID");
	unsetenv("AWS_SECRET_ACCESS_KEY");
	setenv("AWS_PROFILE", "nosuch", 1);
	CHECK_EQ(apb_remote_open("s3://b/k", NULL, &r, err, sizeof(err)), -ENOENT);
	CHECK_STR_CONTAINS(err, "AWS profile 'nosuch' is in neither");
	setenv("AWS_SHARED_CREDENTIALS_FILE", write_file("credentials", "[nosuch]\naws_access_key_id=K\n"), 1);
	CHECK_EQ(apb_remote_open("s3://b/k", NULL, &r, err, sizeof(err)), -EINVAL);
	CHECK_STR_CONTAINS(err, "only one of aws_access_key_id and aws_secret_access_key");
	unsetenv("AWS_PROFILE");
}

static void check_redact(const char *in, const char *want)
{
	char *got = apb_bundle_redact(in);

	CHECK(got != NULL);
	if (strcmp(got, want) != 0) {
		fprintf(stderr, "apb_bundle_redact(\"%s\") = \"%s\", expected \"%s\"\n", in, got,
			want);
		exit(1);
	}
	free(got);
}

/* The password of a URL's userinfo and the values of its query are
 * hidden, nothing else. */
static void test_redact(void)
{
	check_redact("http://u:secret@h:8080/x.apbundle", "http://u:***@h:8080/x.apbundle");
	check_redact("HTTPS://user:p%40ss@host/a/b?q=1", "HTTPS://user:***@host/a/b?q=***");
	check_redact("https://h/m.apbundle?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=ab12",
		     "https://h/m.apbundle?X-Amz-Credential=***&X-Amz-Signature=***");
	check_redact("http://h/x?token", "http://h/x?***");          /* all value */
	check_redact("http://h/x?a=&&b=1#frag?c=2", "http://h/x?a=***&&b=***#frag?c=2");
	check_redact("http://h/x?", "http://h/x?");
	check_redact("http://h/x#f?a=1", "http://h/x#f?a=1");         /* a fragment only */
	check_redact("http://u:p@h?k=v", "http://u:***@h?k=***");     /* no path */
	check_redact("http://u:a@b@h/x", "http://u:***@h/x");      /* the last '@' ends it */
	check_redact("http://u:@h/x", "http://u:***@h/x");         /* an empty password */
	check_redact("http://user@h/x", "http://user@h/x");        /* no password */
	check_redact("http://h:80/x@y:z", "http://h:80/x@y:z");    /* '@' in the path */
	check_redact("http://h/x?a=b:c@d", "http://h/x?a=***");    /* ... and the query */
	check_redact("s3://bucket/key:x@y", "s3://bucket/key:x@y");
	check_redact("./http://u:p@h/x", "./http://u:p@h/x");      /* a local path */
	check_redact("/srv/u:p@h.apbundle", "/srv/u:p@h.apbundle");
	check_redact("", "");
}

int main(void)
{
	CHECK(mkdtemp(dir) != NULL);
	RUN(test_parse_url);
	RUN(test_s3_url);
	RUN(test_ini);
	RUN(test_open_errors);
	RUN(test_redact);
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	CHECK(system(cmd) == 0);
	return 0;
}
