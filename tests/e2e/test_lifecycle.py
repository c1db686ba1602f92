"""Starting, stopping and command line of the daemon."""

import os
import resource
import signal
import subprocess

import pytest

import apbformat
from conftest import (APBUNDLEFS, KiB, MiB, LoopReader, fusermount_u, is_mounted, mount,
                      run_daemon_expect_failure, stop_under_readers, wait_until, vm_status)

DATA = apbformat.random_bytes(8 * MiB + 1, 77)


@pytest.fixture
def bundle(tmp_path):
    return apbformat.write_v1(tmp_path / "l.apbundle", [("big.bin", DATA), ("d/s.bin", DATA[:100])])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_with_open_file_and_reads_in_flight(bundle, binaries, sig):
    with mount(bundle, {"max_memory": "1M", "chunk_size": "64K"}, expect_clean_exit=False) as d:
        held = open(d.path("big.bin"), "rb")           # an open file, idle
        held.read(10)
        r = LoopReader(d.path("big.bin"), DATA, 256 * KiB)
        r.start()
        wait_until(lambda: r.reads >= 5 or not r.is_alive(), 10, what="reads to start")
        assert r.reads >= 5, (r.reads, r.errno)
        stop_under_readers(d, sig, [r], [held])


def test_signal_when_idle_exits_zero(bundle, binaries):
    with mount(bundle, {"max_memory": "1M"}) as d:
        assert os.listdir(d.mnt)
    # mount() itself asserts: exit status 0 after SIGTERM, mount gone


def test_fusermount_u_stops_daemon(bundle, binaries):
    with mount(bundle, {"max_memory": "1M"}, expect_clean_exit=False) as d:
        assert fusermount_u(d.mnt) == 0
        try:
            rc = d.proc.wait(10)
        except subprocess.TimeoutExpired:
            pytest.fail("daemon did not exit after fusermount3 -u")
        assert rc == 0, d.log()
        assert not is_mounted(d.mnt)


def test_background_mode_daemonizes_after_mount(bundle, tmp_path, binaries):
    mnt = tmp_path / "bg"
    mnt.mkdir()
    p = subprocess.run([str(APBUNDLEFS), "-o", "max_memory=2M", str(bundle), str(mnt)],
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=20)
    pid = None
    try:
        assert p.returncode == 0, p.stderr
        assert is_mounted(mnt), "foreground parent returned before the mount was up"
        with open(mnt / "d" / "s.bin", "rb") as f:
            assert f.read() == DATA[:100]
        import psutil
        procs = [q for q in psutil.process_iter(["name", "cmdline"])
                 if q.info["name"] == "apbundlefs" and str(mnt) in (q.info["cmdline"] or [])]
        assert len(procs) == 1
        pid = procs[0].pid
    finally:
        if is_mounted(mnt):
            if fusermount_u(mnt) != 0:
                fusermount_u(mnt, lazy=True)
        if pid:
            import psutil
            try:
                psutil.Process(pid).wait(10)
            except psutil.TimeoutExpired:
                os.kill(pid, signal.SIGKILL)
                pytest.fail("background daemon did not exit after fusermount3 -u")


def test_help_and_version(binaries):
    h = subprocess.run([str(APBUNDLEFS), "--help"], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=10)
    assert h.returncode == 0
    assert "usage: apbundlefs" in h.stdout
    for opt in ("max_memory", "chunk_size", "eviction"):
        assert opt in h.stdout, opt
    v = subprocess.run([str(APBUNDLEFS), "--version"], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=10)
    assert v.returncode == 0
    assert "apbundlefs" in v.stdout and "0.1.0" in v.stdout


@pytest.mark.parametrize("opts,expected", [
    ({"chunk_size": "5000"}, "bad option chunk_size=5000"),
    ({"chunk_size": "0"}, "bad option chunk_size=0"),
    ({"max_memory": "lots"}, "bad option max_memory=lots"),
    ({"eviction": "fifo"}, "bad option eviction=fifo: expected lru, lfu or auto"),
    ({"prefetch": "maybe"}, "bad option prefetch=maybe: expected on or off"),
    ({"max_memory": "64K", "chunk_size": "256K"}, "smaller than one chunk"),
])
def test_bad_options_refused(bundle, tmp_path, binaries, opts, expected):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    rc, log, mounted = run_daemon_expect_failure(bundle, mnt, opts)
    assert not mounted
    assert rc is not None and rc > 0, "exit status %r:\n%s" % (rc, log)
    assert log.startswith("apbundlefs: ") and expected in log, log


@pytest.mark.perf   # an ASan daemon's shadow memory does not fit in the address-space limit
def test_budget_beyond_address_space_is_refused_clearly(bundle, tmp_path, binaries):
    """max_memory=1T where the address space is limited (ulimit -v) failed
    with a bare "Cannot allocate memory": say which option, how much, what
    failed and what to do."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    p = subprocess.run([str(APBUNDLEFS), "-f", "-o", "max_memory=1T", str(bundle), str(mnt)],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                       preexec_fn=limit)
    assert not is_mounted(mnt)
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert p.stderr == (
        "apbundlefs: max_memory (1.0 TiB): cannot reserve the address space of the chunk "
        "cache (64.0 KiB slots and their metadata): Cannot allocate memory; the virtual "
        "memory limit (ulimit -v) or strict overcommit (vm.overcommit_memory=2) does not "
        "allow it, use a smaller max_memory\n"), p.stderr


@pytest.mark.perf
def test_large_budget_of_small_chunks_costs_what_it_uses(bundle, binaries):
    """max_memory=64G,chunk_size=4K is 16 Mi slots; their metadata used to be
    set up at mount: 2.6 GiB of RSS and 4 s (measured). It is paid per slot
    used (core/cache.c, MEMORY): 2.6 MiB after mounting, measured."""
    with mount(bundle, {"max_memory": "64G", "chunk_size": "4K"}) as d:
        rss = vm_status(d.pid, "VmRSS")
        assert rss < 16 * MiB, "RSS after mounting: %.1f MiB" % (rss / MiB)
        with open(d.path("big.bin"), "rb") as f:
            assert f.read() == DATA
        # 2049 slots of 4 KiB hold the model, each with at most 212 bytes of metadata
        hwm = vm_status(d.pid, "VmHWM")
        assert hwm < 16 * MiB + len(DATA) + 2049 * 212 + 4 * MiB, hwm / MiB


def test_default_options(bundle, binaries):
    with mount(bundle) as d:
        c = d.stats()["cache"]
        assert c["policy"] == "auto"
        assert c["chunk_size"] == 64 * KiB
        assert c["memory_limit"] == 256 * MiB


@pytest.mark.parametrize("size,expected", [("4M", 4 * MiB), ("1G", 1024 * MiB), ("512K", 512 * KiB),
                                           ("8388608", 8 * MiB)])
def test_size_suffixes(bundle, binaries, size, expected):
    with mount(bundle, {"max_memory": size, "chunk_size": "4K"}) as d:
        c = d.stats()["cache"]
        assert c["memory_limit"] == expected
        assert c["chunk_size"] == 4096


def test_kernel_cache_option_reads_correctly(bundle, binaries):
    with mount(bundle, {"max_memory": "1M", "chunk_size": "64K", "kernel_cache": True}) as d:
        for _ in range(2):
            with open(d.path("big.bin"), "rb") as f:
                assert f.read() == DATA


@pytest.mark.perf
def test_rss_near_mount_size_after_mount(bundle, binaries):
    """Sanity for the budget test: an idle daemon is small."""
    with mount(bundle, {"max_memory": "1M"}) as d:
        assert vm_status(d.pid, "VmRSS") < 32 * MiB
