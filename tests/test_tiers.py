"""npadam.tiers.DiskState: the NVMe/disk tier's files, streaming, bounds, errors and cleanup."""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import threading
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npadam.tiers import MARKER, PREFIX, DiskState, DiskStateError

ROOT = pathlib.Path(__file__).resolve().parents[1]
NAMES = ("master", "exp_avg", "exp_avg_sq")
WAIT = 20.0  # seconds an ordering test waits for an event before declaring it never happened


def run_py(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)


# ---------------------------------------------------------------------------------------------
# files, round trips, validation


def test_layout_modes_marker_and_zero_init(tmp_path):
    with DiskState(tmp_path, 1000, NAMES, chunk_elems=128) as ds:
        assert ds.path.parent == tmp_path and ds.path.name.startswith(PREFIX)
        assert ds.path.stat().st_mode & 0o777 == 0o700
        files = sorted(p.name for p in ds.path.iterdir())
        assert MARKER in files and "index.json" not in files
        assert "NOT a checkpoint" in (ds.path / MARKER).read_text()
        for p in ds.path.iterdir():
            assert p.stat().st_mode & 0o777 == 0o600
            if p.name != MARKER:
                assert p.stat().st_size == 4000
        assert ds.names == NAMES and ds.size == 1000 and ds.chunk_elems == 128
        assert ds.nbytes_on_disk == 3 * 4000 and ds.nbytes_staging == 3 * 3 * 128 * 4
        for n in NAMES:
            assert (ds.read(n, 0, 1000) == 0).all()


def test_read_write_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    ds = DiskState(tmp_path, 10_000, ["exp_avg"], chunk_elems=64)
    x = rng.standard_normal(10_000).astype(np.float32)
    ds.write("exp_avg", 0, x)
    assert np.array_equal(ds.read("exp_avg", 0, 10_000), x)
    ds.write("exp_avg", 123, np.full((2, 5), 7.0, np.float32))  # any shape, C order
    x[123:133] = 7.0
    out = np.empty((10, 77), np.float32)
    assert ds.read("exp_avg", 3000, 3770, out=out) is out
    assert np.array_equal(out.ravel(), x[3000:3770]) and np.array_equal(ds.read("exp_avg", 0, 10_000), x)
    assert ds.read("exp_avg", 5, 5).size == 0
    ds.add("max_exp_avg_sq")  # late state (amsgrad) starts at zero
    assert ds.names == ("exp_avg", "max_exp_avg_sq") and (ds.read("max_exp_avg_sq", 0, 10_000) == 0).all()
    assert ds.nbytes_staging == 2 * 3 * 64 * 4
    ds.close()


def test_names_of_other_dtypes_and_per_block_items(tmp_path):
    """Precision-aware state: uint8 fp8 codes, uint16 16-bit floats, and fp8 block scales (float32,
    one per 256 elements): file sizes, reads and writes in items, chunks mapped to whole blocks,
    zero-initialised additions, and ranges that would cut a block refused."""
    size, blk = 1000, 256  # 4 blocks, the last one partial
    with DiskState(tmp_path, size, ["codes", "scale"], chunk_elems=512, dtypes={"codes": np.uint8},
                   blocks={"scale": blk}) as ds:
        assert ds.dtypes == {"codes": np.dtype(np.uint8), "scale": np.dtype(np.float32)}
        assert ds.items("codes") == 1000 and ds.items("scale") == 4
        assert ds.nbytes_on_disk == 1000 + 4 * 4 and ds.nbytes_staging == 3 * (512 + 2 * 4)
        assert sorted(p.name for p in ds.path.iterdir() if p.name != MARKER) == ["00-codes.uint8", "01-scale.f32"]
        seen = []
        for a, b, arrs in ds.stream(["codes", "scale"]):
            assert arrs["codes"].dtype == np.uint8 and arrs["codes"].size == b - a
            assert arrs["scale"].size == -(-b // blk) - a // blk  # the chunk's blocks
            arrs["codes"][:] = np.arange(a, b) % 251
            arrs["scale"][:] = np.arange(a // blk, -(-b // blk))
            seen.append((a, b))
        assert seen == [(0, 512), (512, 1000)]
        assert ds.read("codes", 990, 1000).tolist() == [x % 251 for x in range(990, 1000)]
        assert ds.read("scale", 0, 4).tolist() == [0.0, 1.0, 2.0, 3.0]
        ds.write("scale", 3, np.array([7.5], np.float32))
        assert ds.read("scale", 2, 4).tolist() == [2.0, 7.5]
        with pytest.raises(TypeError, match="must be uint8"):
            ds.write("codes", 0, np.zeros(3, np.float32))
        with pytest.raises(ValueError, match=r"not inside \[0, 4\)"):
            ds.read("scale", 0, 5)
        with pytest.raises(ValueError, match="must start on a multiple of 256"):
            ds.stream(["scale"], [(100, 300)])
        assert [x[:2] for x in ds.stream(["codes"], [(100, 300)])] == [(100, 300)]  # per-element names: any start
        ds.add("more", np.uint16, 1)
        assert ds.read("more", 0, 1000).dtype == np.uint16 and not ds.read("more", 0, 1000).any()
        with pytest.raises(ValueError, match="must be >= 1 and divide chunk_elems=512"):
            ds.add("odd", np.float32, 300)
        with pytest.raises(TypeError, match="native integer or float"):
            ds.add("obj", object)


def test_short_reads_and_writes_are_completed(tmp_path, monkeypatch):
    real_preadv, real_pwritev = os.preadv, os.pwritev

    def short_preadv(fd, bufs, off):  # at most 100 bytes per call, as a signal-interrupted read could
        return real_preadv(fd, [bufs[0][:100]], off)

    def short_pwritev(fd, bufs, off):
        return real_pwritev(fd, [bufs[0][:52]], off)

    ds = DiskState(tmp_path, 1000, ["m"], chunk_elems=128)
    monkeypatch.setattr(os, "preadv", short_preadv)
    monkeypatch.setattr(os, "pwritev", short_pwritev)
    x = np.arange(1000, dtype=np.float32)
    ds.write("m", 0, x)
    for a, b, arrs in ds.stream(["m"]):
        arrs["m"] += 1
    assert np.array_equal(ds.read("m", 0, 1000), x + 1)
    monkeypatch.setattr(os, "preadv", lambda fd, bufs, off: 0)  # end of file: never spins
    with pytest.raises(DiskStateError, match="read of 'm' elements .0, 1000. failed.*end of file") as e:
        ds.read("m", 0, 1000)
    assert e.value.errno == errno.EIO and e.value.filename.endswith(".f32")
    ds.close()


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(size=-1), ValueError, "size must be >= 0, got -1"),
    (dict(size=1.5), TypeError, "size must be an int"),
    (dict(size=True), TypeError, "size must be an int"),
    (dict(names="exp_avg"), TypeError, "names must be a sequence of str"),
    (dict(names=["a", "a"]), ValueError, "unique, 'a' appears 2"),
    (dict(names=["a", ""]), ValueError, "non-empty"),
    (dict(names=["a", 3]), TypeError, "must be str, got int 3"),
    (dict(chunk_elems=32), ValueError, "chunk_elems must be >= 64 and a multiple of 64, got 32"),
    (dict(chunk_elems=100), ValueError, "got 100"),
    (dict(depth=0), ValueError, "depth must be >= 1, got 0"),
    (dict(io_threads=0), ValueError, "io_threads must be >= 1, got 0"),
])
def test_constructor_validation(tmp_path, kwargs, exc, match):
    args = dict(size=100, names=["a"]) | kwargs
    size, names = args.pop("size"), args.pop("names")
    with pytest.raises(exc, match=match):
        DiskState(tmp_path, size, names, **args)
    assert list(tmp_path.iterdir()) == []  # validation happens before anything is created
    with pytest.raises(TypeError, match="directory"):
        DiskState(None, 10, ["a"])  # type: ignore[arg-type]


def test_argument_validation(tmp_path):
    ds = DiskState(tmp_path, 1000, ["a", "b"], chunk_elems=64)
    with pytest.raises(ValueError, match=r"range \[990, 1001\) is not inside \[0, 1000\)"):
        ds.read("a", 990, 1001)
    with pytest.raises(ValueError, match=r"\[5, 4\)"):
        ds.read("a", 5, 4)
    with pytest.raises(ValueError, match="no state array 'c'"):
        ds.read("c", 0, 1)
    with pytest.raises(ValueError, match="1 elements"):
        ds.read("a", 0, 1, out=np.empty(2, np.float32))
    with pytest.raises(ValueError, match="float32"):
        ds.read("a", 0, 2, out=np.empty(2, np.float64))
    with pytest.raises(TypeError, match="float32"):
        ds.write("a", 0, np.zeros(3))
    with pytest.raises(ValueError, match=r"write \[999, 1001\)"):
        ds.write("a", 999, np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="already|unique"):
        ds.add("a")
    with pytest.raises(ValueError, match=r"ranges\[1\] = \[10, 20\) starts before the previous range's stop 30"):
        ds.stream(["a"], [(0, 30), (10, 20)])
    with pytest.raises(ValueError, match=r"ranges\[0\] \[0, 2000\) is not inside"):
        ds.stream(["a"], [(0, 2000)])
    with pytest.raises(TypeError, match=r"ranges\[0\] must be a \(start, stop\) pair"):
        ds.stream(["a"], [5])
    with pytest.raises(ValueError, match="unique"):
        ds.stream(["a", "a"])
    with pytest.raises(TypeError, match="names must be a sequence"):
        ds.stream("a")
    # a name being streamed is locked; the others are free
    it = ds.stream(["a"])
    next(it)
    with pytest.raises(RuntimeError, match="being streamed"):
        ds.read("a", 0, 1)
    with pytest.raises(RuntimeError, match="being streamed"):
        ds.stream(["a", "b"])
    ds.write("b", 0, np.ones(1, np.float32))
    it.close()
    ds.read("a", 0, 1)
    ds.close()
    with pytest.raises(RuntimeError, match="closed"):
        ds.read("a", 0, 1)


# ---------------------------------------------------------------------------------------------
# streaming equals the in-memory computation


@st.composite
def stream_cases(draw):
    size = draw(st.integers(0, 3000))
    chunk = 64 * draw(st.integers(1, 12))
    cuts = sorted(draw(st.lists(st.integers(0, size), max_size=8)))
    ranges = None
    if cuts and draw(st.booleans()):  # sorted, non-overlapping, possibly touching or empty
        pairs = list(zip(cuts[0::2], cuts[1::2]))
        ranges = [p for p in pairs if draw(st.booleans())] or pairs
    passes = draw(st.lists(st.tuples(st.sampled_from(["master", "exp_avg", "both"]),
                                     st.floats(-2, 2, width=32), st.booleans()), min_size=1, max_size=4))
    return size, chunk, draw(st.integers(1, 3)), draw(st.integers(1, 3)), ranges, passes


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=stream_cases())
def test_stream_equals_in_memory(tmp_path, case):
    size, chunk, depth, threads, ranges, passes = case
    rng = np.random.default_rng(size)
    ref = {n: rng.standard_normal(size).astype(np.float32) for n in ("master", "exp_avg")}
    with tempfile.TemporaryDirectory(dir=tmp_path) as d, \
            DiskState(d, size, ["master", "exp_avg"], chunk_elems=chunk, depth=depth, io_threads=threads) as ds:
        for n, x in ref.items():
            ds.write(n, 0, x)
        spans = [(0, size)] if ranges is None else ranges
        for which, k, write_back in passes:
            names = ["master", "exp_avg"] if which == "both" else [which]
            seen = []
            for a, b, arrs in ds.stream(names, ranges, write_back=write_back):
                assert 0 < b - a <= chunk and sorted(arrs) == sorted(names)
                for n in names:
                    assert arrs[n].dtype == np.float32 and arrs[n].shape == (b - a,)
                    assert np.array_equal(arrs[n], ref[n][a:b])  # read the current values
                    arrs[n] *= np.float32(k)
                    arrs[n] += np.float32(a % 7)
                    if write_back:
                        ref[n][a:b] = arrs[n]
                seen.append((a, b))
            # the chunks tile each range in order, cut from its start, all full but each range's last
            assert seen == [(s, min(s + chunk, b)) for a, b in spans for s in range(a, b, chunk)]
        for n, x in ref.items():
            assert np.array_equal(ds.read(n, 0, size), x)


def test_empty_state_and_ranges(tmp_path):
    with DiskState(tmp_path, 0, ["a"]) as ds:
        assert list(ds.stream(["a"])) == [] and ds.nbytes_on_disk == 0
    with DiskState(tmp_path, 100, ["a"], chunk_elems=64) as ds:
        assert list(ds.stream(["a"], [])) == [] and list(ds.stream(["a"], [(5, 5)])) == []
        assert [(a, b) for a, b, _ in ds.stream(["a"], [(0, 10), (10, 100)])] == [(0, 10), (10, 74), (74, 100)]


# ---------------------------------------------------------------------------------------------
# overlap: read-ahead and write-behind run while the caller works (event order, no timings)


def test_read_ahead_and_write_behind_overlap_the_caller(tmp_path, monkeypatch):
    chunk = 64
    ds = DiskState(tmp_path, 4 * chunk, ["m", "v"], chunk_elems=chunk, depth=2, io_threads=2)
    events: list[tuple] = []
    lock = threading.Lock()
    started = {("read", 1): threading.Event(), ("write", 0): threading.Event()}
    body = {i: threading.Event() for i in range(4)}

    def log(*e):
        with lock:
            events.append(e)

    real_preadv, real_pwritev = os.preadv, os.pwritev

    def slow_preadv(fd, bufs, off):
        i = off // (4 * chunk)
        log("read-start", i)
        if ("read", i) in started:
            started[("read", i)].set()
        if i == 1:  # the read of chunk 1 cannot finish before the caller works on chunk 0
            assert body[0].wait(WAIT)
        n = real_preadv(fd, bufs, off)
        log("read-end", i)
        return n

    def slow_pwritev(fd, bufs, off):
        i = off // (4 * chunk)
        log("write-start", i)
        if ("write", i) in started:
            started[("write", i)].set()
        if i == 0:  # the write of chunk 0 cannot finish before the caller works on chunk 1
            assert body[1].wait(WAIT)
        n = real_pwritev(fd, bufs, off)
        log("write-end", i)
        return n

    monkeypatch.setattr(os, "preadv", slow_preadv)
    monkeypatch.setattr(os, "pwritev", slow_pwritev)
    for a, b, arrs in ds.stream(["m", "v"]):
        i = a // chunk
        log("body-start", i)
        body[i].set()
        if i == 0:  # chunk 1 is being read while the caller holds chunk 0
            assert started[("read", 1)].wait(WAIT), "no read-ahead"
        if i == 1:  # chunk 0 is being written while the caller holds chunk 1
            assert started[("write", 0)].wait(WAIT), "no write-behind"
        arrs["m"] += 1
        log("body-end", i)
    monkeypatch.undo()

    def first(e):
        return events.index(e)

    assert first(("body-start", 0)) < first(("read-end", 1)) and first(("read-start", 1)) < first(("body-end", 0))
    assert first(("body-start", 1)) < first(("write-end", 0)) and first(("write-start", 0)) < first(("body-end", 1))
    # a chunk's write starts only after the caller finished it; every chunk is written exactly once per name
    for i in range(4):
        assert first(("body-end", i)) < first(("write-start", i))
        assert events.count(("write-end", i)) == 2 and events.count(("read-end", i)) == 2
    assert np.array_equal(ds.read("m", 0, 4 * chunk), np.ones(4 * chunk, np.float32))
    ds.close()


# ---------------------------------------------------------------------------------------------
# bounded memory


def test_staging_is_bounded(tmp_path, monkeypatch):
    size, chunk = 1 << 20, 1 << 14  # 4 MiB per name, 64 KiB chunks
    ds = DiskState(tmp_path, size, NAMES, chunk_elems=chunk, depth=2)
    assert ds.nbytes_staging == 3 * 3 * chunk * 4
    # at most depth + 1 chunks per name are in use at once: count the distinct buffers seen
    buffers = set()
    for a, b, arrs in ds.stream(NAMES):
        for n in NAMES:
            buffers.add((n, arrs[n].__array_interface__["data"][0]))
            arrs[n] += 1
    assert len(buffers) == 3 * (ds.depth + 1)
    # traced host allocations during a full pass stay under the bound (numpy reports to tracemalloc)
    ds.release_staging()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        for a, b, arrs in ds.stream(NAMES):
            for n in NAMES:
                arrs[n] *= 2
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    state = 3 * size * 4
    assert ds.nbytes_staging <= peak <= ds.nbytes_staging + 9 * 4096 + (256 << 10), (peak, ds.nbytes_staging)
    assert peak < state / 8
    assert np.array_equal(ds.read("exp_avg", size - 5, size), np.full(5, 2.0, np.float32))
    ds.close()


RSS_SCRIPT = r"""
import importlib.util, resource, sys, time, numpy as np
spec = importlib.util.spec_from_file_location("tiers", sys.argv[2])   # plain NumPy + stdlib: no npadam import
tiers = importlib.util.module_from_spec(spec); spec.loader.exec_module(tiers)
directory = sys.argv[1]
size, chunk = 32 << 20, 1 << 18                     # 2 x 128 MiB of state, 1 MiB chunks
ds = tiers.DiskState(directory, size, ["exp_avg", "exp_avg_sq"], chunk_elems=chunk, depth=3)
assert ds.nbytes_staging == 8 << 20 and ds.nbytes_on_disk == 256 << 20
def peak():
    # VmHWM: this process image's peak RSS. getrusage's ru_maxrss would do on a fresh process, but Linux
    # carries the exec'ing parent's high-water mark into it (a big pytest parent hides the growth).
    try:
        line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
def now(): return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
assert peak() - now() < (8 << 20), "the baseline high-water mark hides growth"
base = peak()
t0 = time.perf_counter()
for a, b, s in ds.stream(ds.names):                 # write a pattern: element i = i, -i
    s["exp_avg"][:] = np.arange(a, b, dtype=np.float32)
    np.negative(s["exp_avg"], out=s["exp_avg_sq"])
t1 = time.perf_counter()
for a, b, s in ds.stream(ds.names):                 # read, update, write back
    s["exp_avg"] += 1; s["exp_avg_sq"] *= 2
t2 = time.perf_counter()
ok = True
for a, b, s in ds.stream(ds.names, write_back=False):   # read-only check
    i = np.arange(a, b, dtype=np.float32)
    ok &= bool(np.array_equal(s["exp_avg"], i + 1) and np.array_equal(s["exp_avg_sq"], -2 * i))
t3 = time.perf_counter()
grow = peak() - base
ds.close()
control = np.ones(16 << 20, np.float32)             # 64 MiB touched in memory: the measurement sees it
control_grow = peak() - base
mib = 256
print(f"ok={ok} growth_MiB={grow / 2**20:.1f} control_MiB={control_grow / 2**20:.1f} staging_MiB={8} "
      f"write_MBps={mib / (t1 - t0):.0f} rw_MBps={2 * mib / (t2 - t1):.0f} read_MBps={mib / (t3 - t2):.0f}")
"""


def test_rss_bounded_by_staging_not_state(tmp_path):
    r = run_py(RSS_SCRIPT, str(tmp_path), str(ROOT / "npadam" / "tiers" / "disk.py"), timeout=120)
    assert r.returncode == 0, r.stderr
    fields = dict(kv.split("=") for kv in r.stdout.split())
    print(r.stdout)
    assert fields["ok"] == "True"
    # 256 MiB of state through 8 MiB of staging: peak RSS grows by the staging plus slack, not by the state
    assert float(fields["growth_MiB"]) <= 8 + 16, r.stdout
    assert float(fields["control_MiB"]) >= 48, r.stdout  # the same measurement sees 64 MiB held in memory
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# errors: raised in the caller's thread, nothing silently lost


def _pattern(ds: DiskState) -> None:
    for n in ds.names:
        ds.write(n, 0, np.arange(ds.size, dtype=np.float32))


def test_enospc_on_write_back_surfaces_in_the_caller(tmp_path, monkeypatch):
    chunk, size = 64, 64 * 10
    ds = DiskState(tmp_path, size, ["m", "v"], chunk_elems=chunk, depth=2)
    _pattern(ds)
    real = os.pwritev
    bad = ds._fds["v"]
    failed_at = 4 * chunk * 4  # chunk 4 of "v"

    def full(fd, bufs, off):
        if fd == bad and off == failed_at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, bufs, off)

    monkeypatch.setattr(os, "pwritev", full)
    finished = []
    with pytest.raises(DiskStateError) as e:
        for a, b, arrs in ds.stream(["m", "v"]):
            arrs["m"] += 1000
            arrs["v"] += 1000
            finished.append(a // chunk)
    monkeypatch.undo()
    err = e.value
    assert err.errno == errno.ENOSPC and err.filename == str(ds._files["v"])
    assert "write of 'v' elements [256, 320) failed: No space left on device" in str(err)
    assert threading.current_thread() is threading.main_thread()  # raised here, in the caller's loop
    # the caller was stopped at a chunk boundary soon after the failure (at most depth chunks later)
    assert 4 <= finished[-1] <= 4 + ds.depth + 1 and finished == list(range(len(finished)))
    # nothing silently lost: the DiskState says its state is undefined and refuses to go on
    assert ds.failed is err
    for call in (lambda: ds.read("m", 0, 1), lambda: ds.stream(["m"]), lambda: ds.write("m", 0, np.ones(1, np.float32)),
                 lambda: ds.add("x")):
        with pytest.raises(DiskStateError, match="earlier write-back failed.*No space left") as e2:
            call()
        assert e2.value.errno == errno.ENOSPC
    # what the error promises: finished chunks other than the failed one were written; unfinished were not
    got_m = np.empty(size, np.float32)
    ds._failed = None  # peek at the files behind the refusal
    ds.read("m", 0, size, out=got_m)
    i = np.arange(size, dtype=np.float32)
    last = finished[-1]
    # the caller's last chunk was not finished when the error came (it came from next()): all chunks up to
    # last - 1 are written; "last" was finished (the error came at the next boundary) and written as well
    assert np.array_equal(got_m[: (last + 1) * chunk], i[: (last + 1) * chunk] + 1000)
    assert np.array_equal(got_m[(last + 1) * chunk:], i[(last + 1) * chunk:])
    ds.close()
    assert not ds.path.exists()


def test_enospc_when_reserving_space_fails_early(tmp_path, monkeypatch):
    def full(fd, off, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(DiskStateError, match=r"cannot reserve 4000 bytes for the state file of 'exp_avg'.*"
                                             r"No space left") as e:
        DiskState(tmp_path, 1000, ["exp_avg"])
    assert e.value.errno == errno.ENOSPC and "exp_avg" in e.value.filename
    assert list(tmp_path.iterdir()) == []  # the half-made directory is gone
    monkeypatch.undo()
    ds = DiskState(tmp_path, 1000, ["exp_avg"])
    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(DiskStateError, match="max_exp_avg_sq"):
        ds.add("max_exp_avg_sq")
    assert ds.names == ("exp_avg",) and len(list(ds.path.iterdir())) == 2  # usable, no stray file
    ds.close()


def test_read_error_in_read_ahead_surfaces_in_the_caller(tmp_path, monkeypatch):
    chunk = 64
    ds = DiskState(tmp_path, 8 * chunk, ["m"], chunk_elems=chunk)
    _pattern(ds)
    real = os.preadv

    def eio(fd, bufs, off):
        if off == 5 * chunk * 4:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(fd, bufs, off)

    monkeypatch.setattr(os, "preadv", eio)
    done = []
    with pytest.raises(DiskStateError, match=r"read of 'm' elements \[320, 384\) failed: Input/output error"):
        for a, b, arrs in ds.stream(["m"]):
            arrs["m"] += 1
            done.append(a)
    monkeypatch.undo()
    assert done == [0, 64, 128, 192, 256] and ds.failed is None
    i = np.arange(8 * chunk, dtype=np.float32)
    assert np.array_equal(ds.read("m", 0, 8 * chunk), np.where(i < 320, i + 1, i))  # finished chunks written
    ds.close()


@pytest.mark.parametrize("how", ["raise", "break", "close"])
def test_caller_exception_writes_exactly_the_finished_chunks(tmp_path, how):
    chunk = 64
    ds = DiskState(tmp_path, 10 * chunk, ["m", "v"], chunk_elems=chunk)
    _pattern(ds)

    def loop(it):
        for a, b, arrs in it:
            arrs["m"] += 1
            arrs["v"] += 1
            if a == 6 * chunk:  # chunk 6 was modified but not finished
                if how == "raise":
                    raise KeyError("boom")
                if how == "break":
                    break
                it.close()
                return

    if how == "raise":
        with pytest.raises(KeyError):
            loop(ds.stream(["m", "v"]))
    else:
        with contextlib.closing(ds.stream(["m", "v"])) as it:
            loop(it)
    i = np.arange(10 * chunk, dtype=np.float32)
    for n in ("m", "v"):
        assert np.array_equal(ds.read(n, 0, 10 * chunk), np.where(i < 6 * chunk, i + 1, i))
    list(ds.stream(["m"], write_back=False))  # names released, usable
    ds.close()


def test_write_error_while_closing_early_is_raised_and_recorded(tmp_path, monkeypatch):
    chunk = 64
    ds = DiskState(tmp_path, 10 * chunk, ["m"], chunk_elems=chunk, depth=3)
    gate = threading.Event()
    real = os.pwritev

    def failing(fd, bufs, off):
        assert gate.wait(WAIT)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwritev", failing)
    it = ds.stream(["m"])
    next(it)
    next(it)  # chunk 0 finished: its write is in flight (held by the gate)
    gate.set()
    with pytest.raises(DiskStateError, match=r"write of 'm' elements \[0, 64\) failed"):
        it.close()  # the pending write's failure is not lost when the caller stops early
    monkeypatch.setattr(os, "pwritev", real)
    assert ds.failed is not None
    ds.close()


def test_unwritable_or_missing_directory(tmp_path):
    with pytest.raises(DiskStateError, match="cannot create the disk-tier directory under") as e:
        DiskState(tmp_path / "missing", 10, ["a"])
    assert e.value.errno == errno.ENOENT and e.value.filename == str(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DiskStateError, match="cannot create the disk-tier directory") as e:
        DiskState(tmp_path / "file", 10, ["a"])
    assert e.value.errno == errno.ENOTDIR
    real_mkdir = os.mkdir

    def denied(path, mode=0o777, **kw):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)

    os.mkdir = denied  # what a read-only directory does for a non-root user (tempfile.mkdtemp calls os.mkdir)
    try:
        with pytest.raises(DiskStateError, match="cannot create the disk-tier directory.*Permission denied") as e:
            DiskState(tmp_path, 10, ["a"])
    finally:
        os.mkdir = real_mkdir
    assert e.value.errno == errno.EACCES and e.value.filename == str(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.geteuid() == 0 or os.access(ro, os.W_OK):
            pytest.skip("running as root: chmod 0o500 does not stop writes")
        with pytest.raises(DiskStateError, match="cannot create the disk-tier directory") as e:
            DiskState(ro, 10, ["a"])
        assert e.value.errno == errno.EACCES
    finally:
        ro.chmod(0o700)


# ---------------------------------------------------------------------------------------------
# lifetime: close, finalize at exit, killed processes, checkpoint.load refuses the files


def test_close_deletes_everything_and_is_idempotent(tmp_path):
    ds = DiskState(tmp_path, 5000, NAMES, chunk_elems=64)
    it = ds.stream(NAMES)
    next(it)
    next(it)
    ds.close()
    assert not ds.path.exists() and list(tmp_path.iterdir()) == []
    ds.close()
    with pytest.raises(RuntimeError, match="closed"):
        next(it)
    with pytest.raises(RuntimeError, match="closed"):
        ds.stream(NAMES)


FORGOTTEN = r"""
import sys, numpy as np
from npadam.tiers import DiskState
keep = DiskState(sys.argv[1], 100000, ["master", "exp_avg"], chunk_elems=1024)
it = keep.stream(["master"])        # an unfinished stream too
next(it); next(it)
print(keep.path, flush=True)
"""


def test_forgotten_diskstate_is_removed_at_exit(tmp_path):
    r = run_py(FORGOTTEN, str(tmp_path))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.strip().startswith(str(tmp_path / PREFIX))
    assert list(tmp_path.iterdir()) == []


KILLED = r"""
import sys, time, numpy as np
from npadam.tiers import DiskState
ds = DiskState(sys.argv[1], 1 << 16, ["master", "exp_avg", "exp_avg_sq"], chunk_elems=1024)
print(ds.path, flush=True)
while True:
    for a, b, s in ds.stream(ds.names):
        s["master"] += 1
        if a == 8192:
            print("streaming", flush=True)
        time.sleep(0.001)
"""


def test_killed_process_leaves_nothing_checkpoint_load_accepts(tmp_path):
    import npadam
    from npadam import checkpoint

    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen([sys.executable, "-c", KILLED, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env,
                         cwd=ROOT)
    try:
        path = pathlib.Path(p.stdout.readline().strip())
        assert p.stdout.readline().strip() == "streaming"
        p.send_signal(signal.SIGKILL)
        p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
    assert path.is_dir() and (path / MARKER).is_file()
    w = np.ones(4, np.float32)
    opt = npadam.AdamW({"w": w}, lr=0.1)
    for d in (path, tmp_path):
        with pytest.raises(ValueError, match="not a complete npadam checkpoint: it has no index.json"):
            checkpoint.load(d, opt)
    assert opt.step_count == 0 and (w == 1).all()  # nothing changed
    # a live DiskState's directory is refused too
    with DiskState(tmp_path, 10, ["master"]) as live:
        with pytest.raises(ValueError, match="index.json"):
            checkpoint.load(live.path, opt)
        # the dead process's leftovers can be swept; the live one is kept
        assert DiskState.remove_stale(tmp_path) == [path]
        assert not path.exists() and live.path.exists()
    assert list(tmp_path.iterdir()) == []


def test_module_is_plain_numpy_and_its_doctest_runs():
    import ast
    import doctest

    import npadam.tiers.disk

    tree = ast.parse((ROOT / "npadam" / "tiers" / "disk.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree))  # no npadam imports
    assert imported - set(sys.stdlib_module_names) == {"numpy"}
    result = doctest.testmod(npadam.tiers.disk)
    assert result.failed == 0 and result.attempted > 0
