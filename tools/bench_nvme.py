#!/usr/bin/env python
"""Benchmark: npadam.AdamW with part of its state on disk (``nvme_offload_fraction``).

For fp32 params (state on disk: exp_avg and exp_avg_sq, 8 bytes per element of the disk part) it
times a step at fractions 0, 0.5 and 1, interleaved round by round, and in the same run measures
the directory's sequential bandwidth for the same bytes: a write of that many bytes followed by
``fdatasync``, then a read of them (the read after the write may come from the page cache, as
the tier's own reads do: it does not bypass the cache). The target of issue 10 is a step within
1.2x of (disk bytes read / read bandwidth + disk bytes written / write bandwidth) plus the
in-memory step of the rest. Also prints the peak RSS of the process.

Usage: python tools/bench_nvme.py [--n 32000000] [--dir /path] [--rounds 5] [--staging-mib 64]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from tools._machine import cpu_model  # noqa: E402


def disk_bandwidth(directory: str, nbytes: int) -> tuple[float, float]:
    """(write, read) bytes per second for ``nbytes`` in 16 MiB pieces; the write includes fdatasync."""
    buf = np.ones(16 << 20, np.uint8)
    fd, path = tempfile.mkstemp(dir=directory)
    try:
        t0 = time.perf_counter()
        done = 0
        while done < nbytes:
            done += os.write(fd, memoryview(buf)[: min(buf.size, nbytes - done)])
        os.fdatasync(fd)
        tw = time.perf_counter() - t0
        t0 = time.perf_counter()
        done = 0
        while done < nbytes:
            got = os.preadv(fd, [memoryview(buf)[: min(buf.size, nbytes - done)]], done)
            if got <= 0:
                break
            done += got
        tr = time.perf_counter() - t0
    finally:
        os.close(fd)
        os.unlink(path)
    return nbytes / tw, nbytes / tr


def peak_rss() -> int:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=32_000_000, help="fp32 params (default 32M: 256 MB of state)")
    ap.add_argument("--dir", default=None, help="directory for the state files (default: a temp dir)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--staging-mib", type=int, default=64)
    a = ap.parse_args()
    import npadam

    directory = a.dir or tempfile.mkdtemp(prefix="npadam-bench-")
    print(f"# npadam disk tier, {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"# machine: {cpu_model()}, {os.cpu_count()} logical cores; python {platform.python_version()}, "
          f"numpy {np.__version__}; {a.n:,} fp32 params, state files in {directory}, "
          f"staging {a.staging_mib} MiB, median of {a.rounds} rounds")
    fractions = (0.0, 0.5, 1.0)
    grads = [np.full(a.n, 1e-3, np.float32)]
    opts = {}
    for f in fractions:
        w = np.zeros(a.n, np.float32)
        opts[f] = (npadam.AdamW([w], lr=1e-3, nvme_offload_fraction=f, nvme_offload_dir=directory if f else None,
                                nvme_staging_bytes=a.staging_mib << 20), w)
        opts[f][0].step(grads)  # compile, first touch
    times: dict[float, list[float]] = {f: [] for f in fractions}
    bw: list[tuple[float, float]] = []
    for _ in range(a.rounds):
        for f in fractions:
            t0 = time.perf_counter()
            opts[f][0].step(grads)
            times[f].append(time.perf_counter() - t0)
        bw.append(disk_bandwidth(directory, int(a.n * 8)))
    wbw = statistics.median(b[0] for b in bw)
    rbw = statistics.median(b[1] for b in bw)
    same = all(opts[f][1].tobytes() == opts[0.0][1].tobytes() for f in fractions)
    base = statistics.median(times[0.0])
    print(f"# directory bandwidth for {a.n * 8 / 1e6:.0f} MB: write+fdatasync {wbw / 1e6:.0f} MB/s, "
          f"read {rbw / 1e6:.0f} MB/s; params bit-identical across fractions: {same}")
    print()
    print("| nvme_offload_fraction | step | disk bytes (read + written) | disk-bound time | step / (disk + memory part) |")
    print("|---|---|---|---|---|")
    for f in fractions:
        t = statistics.median(times[f])
        disk_bytes = int(a.n * f) * 8
        bound = disk_bytes / rbw + disk_bytes / wbw
        ref = bound + base * (1 - f)
        print(f"| {f:g} | {t * 1e3:.0f} ms | {2 * disk_bytes / 1e6:.0f} MB | {bound * 1e3:.0f} ms | "
              f"{t / ref:.2f}x |" if f else f"| 0 | {t * 1e3:.0f} ms | 0 | - | - |", flush=True)
    print()
    print(f"peak RSS {peak_rss() / 1e6:.0f} MB (params, grads, in-memory state of the fraction-0 and 0.5 runs)")
    for opt, _ in opts.values():
        opt.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
