"""Fixtures for tests against real servers (scripts/servers.py), loaded by
conftest.py:

- `nginx_server` (session): nginx-light on 127.0.0.1 serving a session temp
  dir (`nginx_server.root`: write files there, fetch `nginx_server.url(name)`);
  `/forbidden.bin` answers 403 whether it exists or not.
- `rgw_server` (session): a single-node Ceph RADOS Gateway with bucket
  `rgw_server.bucket`, keys `access_key`/`secret_key`, region `region`;
  `put_object(key, path)`, signed `request(method, key, ...)`. Its memstore
  holds RGW_MEMSTORE_BYTES (env APB_RGW_MEMSTORE_BYTES): keep uploads well
  below it, a full memstore hangs PUTs.
- `s3_env` (function): `rgw_server` with its user's keys in the environment
  and none of the machine's own AWS settings (the daemon and apbundle
  inherit os.environ).
- `fault_proxy` (function): a factory, `fault_proxy(upstream_endpoint)` ->
  started servers.FaultProxy; every proxy made is stopped after the test.

A server whose packages are missing makes its tests skip, naming the packages
and scripts/deps.sh install_servers (scripts/test.sh installs them); one that
is installed but does not start is an error with its log's tail. Teardown
checks that no process of a stopped server's process group remains.
"""

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import servers  # noqa: E402

RGW_MEMSTORE_BYTES = int(os.environ.get("APB_RGW_MEMSTORE_BYTES", 1 << 30))
FORBIDDEN_PATH = "/forbidden.bin"


def _skip_if_missing(kind, packages):
    missing = servers.missing_programs(kind)
    if missing:
        pytest.skip("%s not installed (%s missing): install with `. scripts/deps.sh; "
                    "install_servers`" % (" ".join(packages), ", ".join(missing)))


def assert_groups_gone(pgids):
    """Fail if a process of any of these process groups is still alive."""
    left = {g: servers.group_pids(g) for g in pgids}
    left = {g: p for g, p in left.items() if p}
    assert not left, "server processes still running after stop: %s" % left


@pytest.fixture(scope="session")
def nginx_server(tmp_path_factory):
    _skip_if_missing("nginx", servers.NGINX_PACKAGES)
    root = tmp_path_factory.mktemp("www")
    web = servers.Nginx(root, forbid=[FORBIDDEN_PATH])
    web.start()
    pgid = web.daemon.pgid
    try:
        yield web
    finally:
        web.close()
        assert_groups_gone([pgid])


@pytest.fixture(scope="session")
def rgw_server():
    _skip_if_missing("rgw", servers.RGW_PACKAGES + ("curl",))
    s3 = servers.Rgw(memstore_bytes=RGW_MEMSTORE_BYTES)
    s3.start()
    pgids = [d.pgid for d in s3.daemons.values()]
    try:
        yield s3
    finally:
        s3.close()
        assert_groups_gone(pgids)


@pytest.fixture
def s3_env(monkeypatch, rgw_server, tmp_path):
    """The RGW user's keys in the environment, no AWS settings of the
    machine's own (the daemon and apbundle inherit os.environ)."""
    for k in list(os.environ):
        if k.startswith("AWS_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", rgw_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", rgw_server.secret_key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    return rgw_server


@pytest.fixture
def fault_proxy():
    made = []

    def make(upstream):
        p = servers.FaultProxy(upstream)
        made.append(p)
        return p.start()

    try:
        yield make
    finally:
        for p in made:
            p.stop()


class Served:
    """One bundle on one server: url, mount options, and how to replace it."""

    def __init__(self, url, options, replace):
        self.url, self.options, self.replace = url, options, replace


def serve(request, server, path, key, endpoint=None):
    """Put the file at path on server ("nginx" or "rgw") under key; return
    a Served whose url goes through endpoint (a proxy) when given."""
    if server == "nginx":
        web = request.getfixturevalue("nginx_server")
        shutil.copyfile(path, os.path.join(web.root, key))

        def replace(new):
            tmp = os.path.join(web.root, key + ".tmp")
            shutil.copyfile(new, tmp)
            os.replace(tmp, os.path.join(web.root, key))   # nginx's ETag: mtime and size

        url = web.url(key)
        if endpoint:
            url = endpoint + url[url.index("/", len("http://")):]
        return Served(url, {}, replace)
    s3 = request.getfixturevalue("s3_env")
    s3.put_object(key, str(path))
    return Served("s3://%s/%s" % (s3.bucket, key),
                  {"s3_endpoint": endpoint or s3.endpoint, "s3_region": s3.region},
                  lambda new: s3.put_object(key, str(new)))
