#!/usr/bin/python3
"""The daemon's fixed footprint: a small bundle (3 models, 1 KiB) mounted
from a local file and, when nginx is installed, by URL from nginx on
127.0.0.1 (scripts/servers.py), each RUNS times (default 5), the two in
turn. Prints medians of the time from the daemon's start until the
mountpoint answers, of VmRSS, RssFile and RssAnon (/proc/PID/status) right
after mounting, and the number of shared libraries the daemon maps
(/proc/PID/maps) and whether libcurl is one of them; and `ldd`'s count for
the executable (what is loaded at start, before any bundle is opened).
Run as root: scripts/bench-footprint.py (APB_BUILD=DIR for another build).
"""
import os
import shutil
import subprocess
import tempfile

import servers
from benchlib import DAEMON, MIB, PACKER, median, mount_apb, start

RUNS = int(os.environ.get("RUNS", "5"))


def status_bytes(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def libraries(pid):
    """The shared objects (paths with .so) pid maps."""
    libs = set()
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            p = line.split(None, 5)
            if len(p) == 6 and ".so" in os.path.basename(p[5].strip()):
                libs.add(p[5].strip())
    return libs


def measure(where, mnt, work):
    with mount_apb(where, mnt, "max_memory=16M", logdir=work) as m:
        pid = m.proc.pid
        libs = libraries(pid)
        return {"ms": m.mount_seconds * 1e3, "rss": status_bytes(pid, "VmRSS"),
                "file": status_bytes(pid, "RssFile"), "anon": status_bytes(pid, "RssAnon"),
                "libs": len(libs), "curl": any("libcurl" in lib for lib in libs)}


def main():
    start(__doc__, "bench-footprint.py", "mounting", (DAEMON, PACKER))
    work = tempfile.mkdtemp(prefix="apb-footprint-", dir="/var/tmp")
    nginx = None
    try:
        src = f"{work}/models"
        os.makedirs(src)
        for i in range(3):
            with open(f"{src}/model{i}.bin", "wb") as f:
                f.write(bytes([i]) * 341)
        subprocess.run([PACKER, "create", f"{work}/small.apbundle", src], check=True,
                       stdout=subprocess.DEVNULL)
        kinds = {"local file": f"{work}/small.apbundle"}
        if not servers.missing_programs("nginx"):
            nginx = servers.Nginx(work).start()
            kinds["URL (nginx)"] = nginx.url("small.apbundle")
        ldd = subprocess.run(["ldd", DAEMON], capture_output=True, text=True,
                             check=True).stdout.splitlines()
        print(f"{DAEMON}: ldd lists {len(ldd)} lines "
              f"({sum('libcurl' in x for x in ldd)} of them libcurl)")
        print(f"{RUNS} mounts each, medians; {os.cpu_count()} cores, "
              f"kernel {os.uname().release}")
        print("| bundle | mount ms | VmRSS MiB | RssFile MiB | RssAnon MiB "
              "| libraries mapped | libcurl mapped |")
        print("|---|---|---|---|---|---|---|")
        got = {k: [] for k in kinds}
        for run in range(RUNS):
            order = list(kinds) if run % 2 == 0 else list(kinds)[::-1]
            for k in order:
                got[k].append(measure(kinds[k], f"{work}/mnt", work))
        for k, rs in got.items():
            med = {f: median([r[f] for r in rs]) for f in ("ms", "rss", "file", "anon", "libs")}
            print(f"| {k} | {med['ms']:.1f} | {med['rss'] / MIB:.1f} | {med['file'] / MIB:.1f} "
                  f"| {med['anon'] / MIB:.1f} | {med['libs']:.0f} "
                  f"| {'yes' if all(r['curl'] for r in rs) else 'no' if not any(r['curl'] for r in rs) else 'sometimes'} |")
    finally:
        if nginx is not None:
            nginx.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
