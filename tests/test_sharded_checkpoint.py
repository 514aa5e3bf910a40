"""Checkpoints of sharded optimizers (``npadam.checkpoint`` with ``comm=``): one file per rank plus
the index, resharded on load (2 -> 4 -> 1 ranks, 4 -> 3 -> one process) bit for bit against one
uninterrupted process; a full disk on one rank and a damaged file raise on every rank and change
nothing (``tests/ranks/checkpoint_check.py`` under ``mpiexec``); each rank reads only the checksum
chunks of its slices; format /1 checkpoints (one checksum per part) still load."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

import npadam
from npadam import checkpoint as C
from npadam import distributed

try:
    from .ranks import checkpoint_check, launch, sharded_check
except ImportError:  # run from tests/ as a plain directory
    from ranks import checkpoint_check, launch, sharded_check

SCRIPT = Path(__file__).resolve().parent / "ranks" / "checkpoint_check.py"
MAIN = sharded_check.MAIN
needs_mpi = pytest.mark.skipif(not (importlib.util.find_spec("mpi4py") and launch.mpiexec_path()),
                               reason="needs mpi4py and mpiexec: python3 -m pip install mpi4py mpich")


def _reference(config: str, history: list[tuple[int, int]]):
    """One process, never interrupted, stepped on the averages of the grads of each world size."""
    params = sharded_check.init_params(MAIN)
    opt = checkpoint_check.make(config, params, None)
    k = 0
    for world, n in history:
        for _ in range(n):
            each = [[sharded_check.local_grad(k, r, i, shape, dt) for i, (_, shape, dt, _) in enumerate(MAIN)]
                    for r in range(world)]
            opt.step([sharded_check.average([e[i] for e in each], world) for i in range(len(MAIN))])
            k += 1
    return params, opt


@needs_mpi
@pytest.mark.parametrize("config, worlds", [("adamw", (2, 4, 1)), ("precision", (4, 3))])
def test_reshard_across_world_sizes(tmp_path, config, worlds):
    steps = (2, 2, 1)
    history = []
    for j, world in enumerate(worlds):
        out = launch.mpiexec(world, SCRIPT, config, str(tmp_path), "start" if j == 0 else "resume", str(steps[j]),
                             timeout=180)
        ok = re.findall(r"OK ckpt rank (\d+)/(\d+) (\w+) (\d+)", out)
        assert sorted(int(r) for r, *_ in ok) == list(range(world)), out
        history.append((world, steps[j]))
        if j:  # every rank read its slices: together about the checkpoint once, not once per rank
            total = sum(f.stat().st_size for f in (tmp_path / "ckpt").glob("*.safetensors"))
            read = sum(int(n) for *_, n in ok)
            assert read <= 1.1 * total, (read, total, out)
    index = C.read_index(tmp_path / "ckpt")
    assert index["world_size"] == worlds[-1] and index["step"] == sum(steps[:len(worlds)])
    files = sorted(index["files"])  # one file per rank that owns elements (a padding-only rank writes none)
    assert files == ["tensors-00000.safetensors"] if worlds[-1] == 1 else (
        2 <= len(files) <= worlds[-1] and all(re.fullmatch(r"tensors-r\d{5}-00000\.safetensors", f) for f in files)), files
    ref_params, ref = _reference(config, history)
    params = [np.zeros_like(p) for p in ref_params]
    opt = checkpoint_check.make(config, params, None)
    C.load(tmp_path / "ckpt", opt)
    for (name, *_), p, q in zip(MAIN, params, ref_params):
        assert sharded_check.bits(p) == sharded_check.bits(q), name
    sharded_check.same_state(opt.state_dict(), ref.state_dict(), "loaded")
    g = [sharded_check.local_grad(99, 0, i, shape, dt) for i, (_, shape, dt, _) in enumerate(MAIN)]
    opt.step(g)
    ref.step(g)
    assert all(sharded_check.bits(p) == sharded_check.bits(q) for p, q in zip(params, ref_params))


def _opt(n=10_000, **kw):
    w = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    return w, npadam.AdamW({"w": w}, lr=1e-2, **kw)


def test_a_range_reads_and_checks_only_its_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "CHUNK", 1024)
    w, opt = _opt()
    opt.step({"w": np.ones_like(w)})
    path = C.save(tmp_path / "ck", opt)
    index = C.read_index(path)
    part = index["tensors"]["w/master"]["parts"][0]
    assert part["chunk"] == 1024 and len(part["sha256"]) == 10 and index["format"] == "npadam.checkpoint/2"
    read = []
    orig = C._Files.read
    monkeypatch.setattr(C._Files, "read", lambda self, *a: read.append(a[-2:]) or orig(self, *a))
    got = C._read_tensors(path, index, ["w/master"], ranges={"w/master": (3000, 5000)})["w/master"]
    assert read == [(2048, 5120)] and got.tobytes() == w[3000:5000].tobytes()
    f = path / part["file"]
    raw = bytearray(f.read_bytes())
    base = 8 + int.from_bytes(raw[:8], "little")
    offset = json.loads(raw[8:base])["w/master"]["data_offsets"][0]
    raw[base + offset + 4 * 9000] ^= 1  # a byte in chunk 8: outside the range, not read, not seen
    f.write_bytes(bytes(raw))
    C._read_tensors(path, index, ["w/master"], ranges={"w/master": (3000, 5000)})
    with pytest.raises(ValueError, match="checksum"):
        C._read_tensors(path, index, ["w/master"], ranges={"w/master": (8500, 8600)})
    with pytest.raises(ValueError, match="checksum"):
        C.verify(path)


def test_format_1_checkpoints_still_load(tmp_path):
    """A checkpoint written before sharded checkpoints: one sha256 per part, read whole."""
    w, opt = _opt(3000, amsgrad=True)
    opt.step({"w": np.ones_like(w)})
    path = C.save(tmp_path / "ck", opt)
    index = json.loads((path / "index.json").read_text())
    index["format"] = "npadam.checkpoint/1"
    for key, t in index["tensors"].items():
        for part in t["parts"]:
            a = C._Files(path).read(part["file"], part["key"], t["dtype"], 0, part["stop"] - part["start"])
            part["sha256"] = hashlib.sha256(a.tobytes()).hexdigest()
            del part["chunk"]
    (path / "index.json").write_text(json.dumps(index))
    w2, opt2 = _opt(3000, amsgrad=True)
    w2[...] = 0
    C.load(path, opt2)
    assert w2.tobytes() == w.tobytes() and opt2.step_count == 1
    index["tensors"]["w/exp_avg"]["parts"][0]["sha256"] = "0" * 64
    (path / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="checksum"):
        C.load(path, opt2)


def test_bad_chunk_lists_are_refused(tmp_path):
    w, opt = _opt(3000)
    path = C.save(tmp_path / "ck", opt)
    index = json.loads((path / "index.json").read_text())
    index["tensors"]["w/master"]["parts"][0]["sha256"].append("0" * 64)  # one chunk too many
    (path / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="bad part"):
        C.load(path, opt)


def test_single_comm_round_trip(tmp_path):
    """A sharded optimizer on one rank writes and reads the single-process layout; either loads the other."""
    params = sharded_check.init_params(MAIN)
    opt = checkpoint_check.make("adamw", params, distributed.init("single"))
    opt.step([sharded_check.local_grad(0, 0, i, s, dt) for i, (_, s, dt, _) in enumerate(MAIN)])
    path = C.save(tmp_path / "ck", opt)
    assert sorted(C.read_index(path)["files"]) == ["tensors-00000.safetensors"]
    for comm in (None, distributed.init("single")):
        fresh = [np.zeros_like(p) for p in params]
        other = checkpoint_check.make("adamw", fresh, comm)
        C.load(path, other)
        assert all(sharded_check.bits(p) == sharded_check.bits(q) for p, q in zip(fresh, params))
        sharded_check.same_state(other.full_state_dict(), opt.full_state_dict(), "loaded")
