"""Crash-safe optimizer checkpoints: ``save(path, opt)`` / ``load(path, opt)``.

A checkpoint is a directory in a canonical layout that does not depend on the
kernel, the placement, the flat-buffer padding or the number of ranks::

    path/
      index.json                 format, step count, world size, groups, schedules, loss
                                 scaler, params (shape, dtype, group, step), one entry per tensor
      tensors-00000.safetensors  tensors keyed "<param name>/<key>", unpadded, flat; files
      tensors-00001.safetensors  cut at ``shard_bytes``
      (sharded optimizer: tensors-r<rank>-00000.safetensors, ... one set per rank that owns
      elements, each holding the elements that rank owns)

Per param it holds ``master`` (the fp32 value of the param: the param itself for a
float32 param, the fp32 master of a bfloat16/float16 one) and the optimizer state
(``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` with amsgrad; SGD's
``momentum_buffer``), each in the dtype the optimizer stores it in (float32, bfloat16,
float16, fp8 codes with their float32 block scales ``<moment>_scale``: safetensors' F32,
BF16, F16, F8_E4M3 / F8_E5M2). A bf16 param whose optimizer keeps param remainders
(``store_param_remainders``) has no fp32 master: ``param`` (its bf16 bits) and
``param_remainder`` (int16) are the master exactly (``reference.precision.join_remainder``).
The index records the optimizer's ``state_precision``; loading into another precision is
refused unless ``load(..., convert=True)``. Every tensor entry lists its ``parts``
(file, key, flat element range ``[start, stop)``, and a sha256 per ``chunk`` elements of
the part): one part per tensor from one process, one per rank that owns elements of it
from a sharded optimizer. Any world size loads any checkpoint: each rank reads the
elements it owns from the parts that hold them, and checks only the chunks it reads.
Format ``npadam.checkpoint/1`` (one sha256 per part, read whole) still loads.

**Atomic.** ``save`` writes everything into a temporary sibling directory, fsyncs
each file, writes ``index.json`` last, fsyncs the directory, then swaps it with the
old checkpoint in one ``renameat2(RENAME_EXCHANGE)`` (Linux; elsewhere two renames,
and ``load`` recovers the previous checkpoint if a process died between them) and
removes the old one. A process killed at any moment leaves the previous complete
checkpoint or the new complete one; a full disk (ENOSPC) or any other write error
leaves the old one intact and raises ``CheckpointError`` saying so. One writer per
path at a time. Sharded: every rank writes its files into rank 0's temporary directory
(the path must be on a file system all ranks share), rank 0 writes the index and swaps;
each stage is agreed by all ranks, so an error on one rank raises on every rank.

**Validated.** ``load`` checks everything before it changes anything: the format
version, missing / extra / renamed params, shapes and dtypes, the state precision, group membership,
every tensor's size and checksum (one flipped byte is detected), truncated or
missing files, the values themselves (through the optimizer's ``load_state_dict``
checks). A failure is a ``ValueError`` naming the problem and leaves the optimizer,
its params and its scheduler untouched.

**Schedules (Megatron's rules).** The checkpoint stores each group's hyperparameters,
Schedules as ``to_dict`` (and, for ``npadam.torch``, the ``LRScheduler``'s schedules
when one is passed). If they differ from the optimizer's, ``load`` raises unless
``override_opt_param_scheduler=True`` (keep the optimizer's) or
``use_checkpoint_opt_param_scheduler=True`` (restore the saved ones); both at once
is an error. The step count is restored, never added to.

>>> import numpy as np, npadam, tempfile, os
>>> w = np.ones(4, np.float32)
>>> opt = npadam.AdamW({"w": w}, lr=0.1)
>>> info = opt.step({"w": np.ones(4, np.float32)})
>>> d = os.path.join(tempfile.mkdtemp(), "ckpt")
>>> _ = npadam.checkpoint.save(d, opt)
>>> w2 = np.ones(4, np.float32); opt2 = npadam.AdamW({"w": w2}, lr=0.1)
>>> npadam.checkpoint.load(d, opt2)["step"], bool((w2 == w).all())
(1, True)
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import math
import os
import shutil
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from . import _hyper as H
from .reference import precision as prec

FORMAT = "npadam.checkpoint/2"
#: the formats ``load`` reads: /1 (one sha256 per part, before sharded checkpoints) and /2 (one
#: sha256 per ``chunk`` elements of a part, so that a rank reads and checks only its slices)
FORMATS = ("npadam.checkpoint/1", FORMAT)
#: elements per checksum chunk of a part (4 MiB of float32)
CHUNK = 1 << 20
INDEX = "index.json"
#: the group keys a Schedule may drive (Adam's and SGD's), compared under Megatron's rules
_SCHEDULED = tuple(dict.fromkeys(key for spec in (H.ADAM, H.SGD) for key, _ in spec.scheduled.values()))


class CheckpointError(OSError):
    """Writing a checkpoint failed (disk full, permissions, ...); the previous one is intact."""


# ---------------------------------------------------------------------- file system
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_PIECE = 64 << 20


def _nothing(n: int) -> None:
    return None


def _write_file(path: Path, chunks: Iterable[bytes | memoryview], advance: Callable[[int], Any] = _nothing) -> int:
    """Write and fsync one file (in pieces of 64 MiB; the tensor bytes, the memoryview chunks,
    are reported to ``advance``); returns its size."""
    n = 0
    with open(path, "xb") as f:
        for c in chunks:
            for i in range(0, len(c), _PIECE):
                piece = c[i:i + _PIECE]
                f.write(piece)
                if isinstance(c, memoryview):
                    advance(len(piece))
            n += len(c)
        f.flush()
        os.fsync(f.fileno())
    return n


class _Progress:
    """A tqdm byte counter when asked for (``progress=True``), else nothing."""

    def __init__(self, enabled: bool, total: int, desc: str) -> None:
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ModuleNotFoundError:
                raise ModuleNotFoundError("progress=True needs tqdm (pip install tqdm)") from None
            self.bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024)

    def __call__(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


_RENAME_EXCHANGE = 2
_libc: Any = None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system or file system cannot."""
    global _libc
    if not sys.platform.startswith("linux"):
        return False
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(_libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"renameat2({a}, {b}): {os.strerror(err)}")


def _resolve(path: str | os.PathLike[str]) -> Path:
    """The absolute path with symlinks resolved: a link to a checkpoint on another disk is written
    through (the swap happens next to the target), not replaced by a directory."""
    return Path(os.path.realpath(os.fspath(path)))


def _siblings(path: Path, tag: str) -> list[Path]:
    return sorted(path.parent.glob(f".{path.name}.npadam-{tag}-*"))


def _recover(path: Path) -> None:
    """A process that died between the two renames of the fallback swap left no ``path`` but the
    previous complete checkpoint as an ``-old-`` sibling: put it back."""
    if path.exists():
        return
    for old in reversed(_siblings(path, "old")):
        if (old / INDEX).is_file():
            os.rename(old, path)
            _fsync_dir(path.parent)
            return


def _clean(path: Path) -> None:
    for stale in _siblings(path, "tmp") + _siblings(path, "old"):
        shutil.rmtree(stale, ignore_errors=True)


# ---------------------------------------------------------------------- tensors
#: the ml_dtypes types safetensors' NumPy reader cannot make: their file dtype and their bits' NumPy type
_RAW = {"bfloat16": ("BF16", np.uint16), "float8_e4m3fn": ("F8_E4M3", np.uint8), "float8_e5m2": ("F8_E5M2", np.uint8)}
#: the suffix of fp8 moments' block scales (``exp_avg_scale``: float32, one per block, not per element)
_SCALE = "_scale"


def _host(x: Any, dtype: str | None = None) -> np.ndarray:
    """A host NumPy view (host memory) or copy (GPU) of a NumPy / CuPy array or torch tensor, in
    its own dtype (bfloat16 as ml_dtypes.bfloat16). Read, never written. ``dtype="bfloat16"``: the
    array may hold the bits (a CuPy uint16 array: ``npadam.AdamW`` keeps bf16 GPU params so)."""
    from .interop import import_array

    name = str(getattr(x, "dtype", "")).replace("torch.", "")
    if name in _RAW and type(x).__module__.startswith("torch"):  # fp8 tensors: no DLPack; their bytes
        import ml_dtypes
        import torch

        bits = x.detach().to("cpu").contiguous().view(torch.uint8 if _RAW[name][1] == np.uint8 else torch.int16)
        return bits.numpy().view(getattr(ml_dtypes, name))
    a, d = import_array(x, what="checkpoint tensor")
    a = a.get() if not isinstance(a, np.ndarray) else a
    if (d == "bfloat16" or (dtype == "bfloat16" and a.dtype.name in ("uint16", "int16"))) and a.dtype.name != "bfloat16":
        import ml_dtypes

        a = a.view(ml_dtypes.bfloat16)
    return a


def _stored(a: np.ndarray) -> np.ndarray:
    """The bytes that go into the file, as a NumPy array: bfloat16 / fp8 as their uint16 / uint8 bits
    (NumPy's buffer protocol has no such types; the file's header still says ``BF16`` / ``F8_*``)."""
    return a.view(_RAW[a.dtype.name][1]) if a.dtype.name in _RAW else a


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(a)).cast("B")).hexdigest()


def _frontend(opt: Any) -> tuple[str, list[Any]]:
    """("torch" | "generic", the optimizer's current param objects/arrays in its order)."""
    if hasattr(opt, "_params") and hasattr(opt, "_low"):
        return "torch", list(opt._params)
    if hasattr(opt, "_arrays") and hasattr(opt, "_engine"):
        return "generic", list(opt._arrays)
    raise TypeError(f"checkpoint: expected an npadam optimizer (npadam.AdamW, npadam.torch.AdamW, ...), "
                    f"got {type(opt).__name__}")


def _jsonable(x: Any) -> Any:
    """Hyperparameters as JSON (tuples as lists, NumPy scalars as Python numbers)."""
    return json.loads(json.dumps(x, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _user_metadata(metadata: Any) -> Any:
    """``metadata`` checked to be plain JSON (str keys, finite numbers, strings, bools, None, lists,
    dicts): anything else would come back changed, so it is a TypeError/ValueError naming it."""
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping, got {type(metadata).__name__}")

    def check(x: Any, where: str) -> Any:
        if isinstance(x, Mapping):
            out = {}
            for k, v in x.items():
                if not isinstance(k, str):
                    raise TypeError(f"metadata{where}: key {k!r} is not a string (JSON keys are strings)")
                out[k] = check(v, f"{where}[{k!r}]")
            return out
        if isinstance(x, (list, tuple)):
            return [check(v, f"{where}[{i}]") for i, v in enumerate(x)]
        if x is None or isinstance(x, (str, bool)):
            return x
        if isinstance(x, (int, float)) and not isinstance(x, bool):
            if isinstance(x, float) and not math.isfinite(x):
                raise ValueError(f"metadata{where} is {x!r}; JSON has no NaN or infinity")
            return x
        raise TypeError(f"metadata{where} is a {type(x).__name__}; store JSON values (numbers, strings, "
                        "bools, None, lists, dicts with string keys)")

    return check(metadata, "")


def _scheduler_entry(scheduler: Any) -> dict[str, Any] | None:
    if scheduler is None:
        return None
    if not hasattr(scheduler, "schedules") or not hasattr(scheduler, "state_dict"):
        raise TypeError(f"scheduler must be a npadam.torch.LRScheduler, got {type(scheduler).__name__}")
    return {"schedules": [s.to_dict() for s in scheduler.schedules],
            "state": _jsonable(scheduler.state_dict())}


# ---------------------------------------------------------------------- save
def _together(sharding: Any, what: str, error: BaseException | None, payload: Any = None,
              cleanup: Callable[[], Any] | None = None) -> list[Any]:
    """One step of a sharded save or load, agreed by every rank (one ``allgather_object``): every
    rank's ``payload``, or, when any rank failed, ``cleanup()`` and an error on every rank (a
    rank's own error there; a ``CheckpointError`` or ``ValueError`` naming the failed rank on the
    others, so that no rank is left waiting in a collective)."""
    entry = None if error is None else (isinstance(error, OSError), f"{type(error).__name__}: {error}")
    got = sharding.comm.allgather_object((entry, payload))
    failed = [(r, e) for r, (e, _) in enumerate(got) if e is not None]
    if not failed:
        return [p for _, p in got]
    if cleanup is not None:
        cleanup()
    if error is not None:
        raise error
    r, (io, text) = failed[0]
    msg = f"{what}: rank {r} of {len(got)} failed ({text})"
    if io:
        raise CheckpointError(errno.EIO, msg + "; the previous checkpoint there, if any, is intact")
    raise ValueError(msg + "; nothing was changed on any rank")


def _io_error(e: OSError, path: Path, tmp: Path) -> CheckpointError:
    what = "no space left on device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
    return CheckpointError(e.errno, f"checkpoint not saved to {path}: {what} (writing "
                           f"{getattr(e, 'filename', None) or tmp}); the previous checkpoint there, if any, is intact")


def _reraise(error: BaseException, cause: BaseException) -> None:
    """Raise ``error`` (``cause`` itself, or the ``CheckpointError`` made from it)."""
    if error is cause:
        raise error
    raise error from cause


def _sharding_of(optimizer: Any) -> Any:
    """The optimizer's ``npadam._sharded.Sharding`` (``comm=``), or None."""
    return getattr(optimizer, "_sharding", None)


def save(path: str | os.PathLike[str], optimizer: Any, *, scheduler: Any = None, shard_bytes: int = 1 << 30,
         metadata: Mapping[str, Any] | None = None, progress: bool = False) -> Path:
    """Write ``optimizer`` (and ``scheduler``, a ``npadam.torch.LRScheduler``) to the directory
    ``path`` atomically (see the module docstring); returns the path.

    ``shard_bytes``: files are cut after this many bytes of tensors (a tensor is never
    split). ``metadata``: JSON-able values stored in the index under ``"user"``.
    ``progress``: show a byte counter (tqdm) while writing.

    A sharded optimizer (``comm=``): a collective; every rank calls it with the same ``path``,
    which must be on a file system every rank sees. Each rank writes the elements it owns to its
    own files (``tensors-r<rank>-*.safetensors``), rank 0 writes the index and swaps the
    directory in; a failure on any rank raises on every rank and leaves the previous checkpoint.
    """
    sharding = _sharding_of(optimizer)  # one rank writes the single-process layout
    return _save(path, optimizer, scheduler, shard_bytes, metadata, progress,
                 sharding if sharding is not None and sharding.world > 1 else None)


def _save(path: Any, optimizer: Any, scheduler: Any, shard_bytes: Any, metadata: Any, progress: bool,
          sharding: Any) -> Path:
    from . import _validate as V
    from ._state import _int

    rank = 0 if sharding is None else sharding.rank
    tmp: Path | None = None
    try:
        path = _resolve(path)
        shard_bytes = V.integer("shard_bytes", shard_bytes, lo=1)
        user = _user_metadata(metadata)
        _frontend(optimizer)  # a clear TypeError for anything else
        sd = optimizer.state_dict()  # first: it takes in groups appended and params re-bound or cast
        kind, objects = _frontend(optimizer)
        meta = sd["npadam"]
        ranges = (meta["shard"]["ranges"] if sharding is not None and meta.get("shard") is not None
                  else [[0, math.prod(s)] for s in meta["shapes"]])
        names = list(meta["names"])
        tensors: list[tuple[str, np.ndarray, int]] = []
        params: dict[str, Any] = {}
        group_of = {}
        for gi, g in enumerate(sd["param_groups"]):
            for i in g["params"]:
                group_of[i] = gi
        for i, name in enumerate(names):
            st = sd["state"][i]
            lo, hi = ranges[i]
            numel = math.prod(meta["shapes"][i])
            params[name] = {"shape": list(meta["shapes"][i]), "dtype": meta["dtypes"][i], "group": group_of[i],
                            "step": _int(st["step"], f"state of param {name!r}: step")}
            if hi <= lo and not (numel == 0 and rank == 0):
                continue  # another rank owns every element (a param without elements: rank 0 writes it)
            value = _host(objects[i], meta["dtypes"][i]).reshape(-1)[lo:hi]
            if "param_remainder" in st:  # bf16 param + int16 remainder: exactly the fp32 master, in their own bits
                tensors.append((f"{name}/param", value, lo))
            elif meta["dtypes"][i] == "float32":
                tensors.append((f"{name}/master", np.ascontiguousarray(value, dtype=np.float32), lo))
            else:
                tensors.append((f"{name}/master", _master_to_save(_host(st["master"]).reshape(-1), value), lo))
            for key in sorted(k for k in st if k not in ("step", "master")):
                first = lo // prec.FP8_BLOCK if key.endswith(_SCALE) else lo
                tensors.append((f"{name}/{key}", _host(st[key]).reshape(-1), first))
        groups = []
        for g in sd["param_groups"]:
            h = {k: v for k, v in g.items() if k not in ("params", "param_names")}
            h["params"] = [names[i] for i in g["params"]]
            groups.append(_jsonable(h))
        index: dict[str, Any] = {
            "format": FORMAT, "kind": meta["kind"], "frontend": kind, "step": int(meta["step"]),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "npadam_version": _version(), "world_size": 1 if sharding is None else sharding.world,
            "order": names, "params": params, "param_groups": groups,
            "loss_scaler": _jsonable(meta.get("loss_scaler")),
            "state_precision": _jsonable(meta.get("state_precision")),
            "scheduler": _scheduler_entry(scheduler), "user": user, "tensors": {}, "files": {},
        }
        if rank == 0:
            _recover(path)
            _clean(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / f".{path.name}.npadam-tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
        error: BaseException | None = None
    except BaseException as e:
        error = _io_error(e, path, tmp or path) if isinstance(e, OSError) else e
        if sharding is None:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            _reraise(error, e)

    def cleanup() -> None:  # rank 0 made the directory; the other ranks leave it to rank 0
        if rank == 0 and tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    if sharding is not None:  # every rank prepared its tensors; rank 0 made the directory
        got = _together(sharding, f"checkpoint.save({path})", error, (str(tmp) if rank == 0 else None, str(path)),
                        cleanup)
        tmp = Path(got[0][0])
        paths = [p for _, p in got]
    try:
        if sharding is not None and len(set(paths)) > 1:
            raise ValueError(f"checkpoint.save: the ranks were given different paths ({sorted(set(paths))[:3]}); "
                             "every rank passes the same path, on a file system they share")
        if sharding is not None and not tmp.is_dir():
            raise ValueError(f"checkpoint.save: rank {rank} does not see the directory {tmp} that rank 0 made; "
                             "the checkpoint path must be on a file system shared by all ranks")
        bar = _Progress(progress and rank == 0, sum(a.nbytes for _, a, _ in tensors), f"saving {path.name}")
        try:
            _write_tensors(tmp, tensors, index, shard_bytes, bar,
                           "tensors" if sharding is None else f"tensors-r{rank:05d}")
        finally:
            bar.close()
        error = None
    except BaseException as e:
        error = _io_error(e, path, tmp) if isinstance(e, OSError) else e
        if sharding is None:
            cleanup()
            _reraise(error, e)
    if sharding is not None:  # rank 0 gathers every rank's parts and files into the index
        got = _together(sharding, f"checkpoint.save({path})", error,
                        None if error is not None else (index["tensors"], index["files"]), cleanup)
        if rank == 0:
            index["tensors"], index["files"] = _merge_parts(index, got)
    error = None
    if rank == 0:
        try:
            _write_file(tmp / INDEX, [json.dumps(index, indent=1, sort_keys=True).encode()])
            _fsync_dir(tmp)
            _swap(tmp, path)
        except BaseException as e:
            cleanup()
            error = _io_error(e, path, tmp) if isinstance(e, OSError) else e
            if sharding is None:
                _reraise(error, e)
    if sharding is not None:
        _together(sharding, f"checkpoint.save({path})", error)
    return path


def _merge_parts(index: dict[str, Any], got: list[Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every rank's tensor parts and files (``got``: each rank's ``(tensors, files)``) as one index's,
    each tensor's shape the whole tensor's; a tensor whose parts do not tile it is a bug here, so
    it is checked before the index is written."""
    tensors: dict[str, Any] = {}
    files: dict[str, Any] = {}
    for ts, fs in got:
        files.update(fs)
        for key, t in ts.items():
            entry = tensors.setdefault(key, {"dtype": t["dtype"], "parts": []})
            entry["parts"].extend(t["parts"])
    for key, entry in tensors.items():
        name, what = key.rsplit("/", 1)
        numel = math.prod(index["params"][name]["shape"])
        n = -(-numel // prec.FP8_BLOCK) if what.endswith(_SCALE) else numel
        entry["shape"] = [n]
        entry["parts"].sort(key=lambda q: q["start"])
        gap = _tiling_gap(entry["parts"], n)
        if gap is not None:
            raise AssertionError(f"checkpoint.save: the ranks' parts of {key!r} {gap}")
    return tensors, files


#: safetensors dtype of each dtype name a checkpoint writes (bfloat16 is ``BF16``: safetensors' own
#: type, read by its torch / JAX / Rust readers; checkpoints before the precision-aware state wrote no
#: bf16 tensors, and ``_read_tensors`` still reads bf16 stored as ``U16`` bits)
def _master_to_save(held: np.ndarray, param: np.ndarray) -> np.ndarray:
    """The master of a low-precision param as the checkpoint keeps it, in its own dtype, after npadam's
    "the param wins where it was written" rule: an fp32 master (``reference.adamw.current_master``),
    or the fp16 master of a bf16 param (``main_params_dtype="float16"``), which becomes the param's
    fp16 rounding where the param is not its (bf16) rounding, as ``load_master`` makes it."""
    from .reference.adamw import current_master, to_storage

    if held.dtype != np.float16:
        return current_master(held.astype(np.float32, copy=True), param)
    stale = to_storage(held.astype(np.float32), param.dtype).view(np.uint16) != param.view(np.uint16)
    if not stale.any():
        return held
    return np.where(stale, prec.narrow(param.astype(np.float32), prec.F16).view(np.float16), held)


_ST_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "int16": "I16", "uint16": "U16",
              "float64": "F64", "int64": "I64", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2"}
#: the tensor dtypes an index may name, and their bytes per element
_TENSOR_DTYPES = {"float32": 4, "bfloat16": 2, "float16": 2, "int16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1}


def _safetensors_chunks(tensors: list[tuple[str, np.ndarray, str]], metadata: dict[str, str]) -> list[Any]:
    """One safetensors file as byte chunks: the 8-byte header length, the JSON header (padded
    with spaces to 8 bytes), then each tensor's bytes straight from its array.

    Hand-written instead of ``safetensors.numpy.save`` (which ``load`` still reads with):
    that builds the whole file in one bytes object, a second copy of the shard in memory
    and 1.2 s of a 4.6 s save of 400 MB here. The format is the documented one
    (https://github.com/huggingface/safetensors#format); a test reads our files back with
    ``safetensors.numpy.load_file``."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for key, a, dtype in tensors:
        header[key] = {"dtype": _ST_DTYPES[dtype], "shape": list(a.shape),
                       "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return [len(raw).to_bytes(8, "little"), raw] + [memoryview(a).cast("B") for _, a, _ in tensors if a.nbytes]


def _chunk_shas(a: np.ndarray, chunk: int) -> list[str]:
    """The sha256 of each ``chunk`` elements of the flat stored array ``a`` (the last one shorter;
    none for an empty array): a range of a part is checked by reading only its chunks."""
    flat = a.reshape(-1)
    return [_sha(flat[i:i + chunk]) for i in range(0, flat.size, chunk)]


def _write_tensors(tmp: Path, tensors: list[tuple[str, np.ndarray, int]], index: dict[str, Any],
                   shard_bytes: int, advance: Callable[[int], Any], prefix: str = "tensors") -> None:
    """Write the files ``<prefix>-00000.safetensors``, ...; ``tensors``: ``(key, flat array, start)``,
    the array holding the tensor's elements ``[start, start + size)`` (the whole tensor, or a rank's
    slice of it). The checksums are computed on a second thread while the files are written
    (hashlib releases the GIL: a 768 MiB save took write + hash, now about the write)."""
    stored = [(key, np.ascontiguousarray(_stored(a)), a.dtype.name, start) for key, a, start in tensors]
    with ThreadPoolExecutor(1) as pool:
        sums = [(key, pool.submit(_chunk_shas, a, CHUNK)) for key, a, _, _ in stored]
        _write_shards(tmp, stored, index, shard_bytes, advance, prefix)
        for key, fut in sums:
            index["tensors"][key]["parts"][0]["sha256"] = fut.result()


def _write_shards(tmp: Path, tensors: list[tuple[str, np.ndarray, str, int]], index: dict[str, Any],
                  shard_bytes: int, advance: Callable[[int], Any], prefix: str) -> None:
    """``tensors``: ``(key, the array as stored, its dtype name, its first element in the tensor)``;
    each gets one part in ``index["tensors"][key]``."""
    shard: list[tuple[str, np.ndarray, str]] = []
    size = 0
    nfile = 0

    def flush() -> None:
        nonlocal shard, size, nfile
        if not shard:
            return
        fname = f"{prefix}-{nfile:05d}.safetensors"
        nbytes = _write_file(tmp / fname, _safetensors_chunks(shard, {"format": FORMAT}), advance)
        index["files"][fname] = {"bytes": nbytes}
        shard, size, nfile = [], 0, nfile + 1

    for key, stored, dtype, start in tensors:
        if shard and size + stored.nbytes > shard_bytes:
            flush()
        shard.append((key, stored, dtype))
        size += stored.nbytes
        index["tensors"][key] = {"dtype": dtype, "shape": [int(stored.size)], "parts": [
            {"file": f"{prefix}-{nfile:05d}.safetensors", "key": key, "start": int(start),
             "stop": int(start + stored.size), "chunk": CHUNK, "sha256": None}]}
    flush()


def _swap(tmp: Path, path: Path) -> None:
    """Put the complete directory ``tmp`` at ``path`` (see the module docstring)."""
    parent = path.parent
    if not path.exists():
        os.rename(tmp, path)
        _fsync_dir(parent)
        return
    if not path.is_dir():
        raise FileExistsError(errno.EEXIST, f"{path} exists and is not a checkpoint directory", str(path))
    if not (path / INDEX).is_file() and any(path.iterdir()):
        raise FileExistsError(errno.EEXIST, f"{path} is a non-empty directory without {INDEX}; not replacing "
                              "it with a checkpoint", str(path))
    if _exchange(tmp, path):
        _fsync_dir(parent)
        shutil.rmtree(tmp, ignore_errors=True)  # now the old checkpoint
        return
    old = parent / f".{path.name}.npadam-old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.rename(path, old)
    os.rename(tmp, path)  # a death between the renames: _recover puts `old` back
    _fsync_dir(parent)
    shutil.rmtree(old, ignore_errors=True)


def _version() -> str:
    from . import __version__

    return __version__


# ---------------------------------------------------------------------- read and check
def read_index(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked ``index.json`` of the checkpoint at ``path``; ValueError naming the problem."""
    path = _resolve(path)
    _recover(path)
    f = path / INDEX
    if not path.is_dir():
        raise ValueError(f"no checkpoint at {path} (not a directory)")
    if not f.is_file():
        raise ValueError(f"{path} is not a complete npadam checkpoint: it has no {INDEX}")
    try:
        index = json.loads(f.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{f} is not valid JSON ({e}); the checkpoint is damaged") from None
    if not isinstance(index, dict):
        raise ValueError(f"{f} must hold a JSON object")
    if index.get("format") not in FORMATS:
        raise ValueError(f"{f}: unknown checkpoint format {index.get('format')!r} (this npadam reads "
                         f"{' and '.join(map(repr, FORMATS))})")
    for key, typ in (("order", list), ("params", dict), ("param_groups", list), ("tensors", dict),
                     ("files", dict), ("step", int), ("kind", str)):
        if not isinstance(index.get(key), typ) or isinstance(index.get(key), bool):
            raise ValueError(f"{f}: {key!r} must be a {typ.__name__}, got {type(index.get(key)).__name__}")
    for fname, info in index["files"].items():
        p = path / fname
        if os.path.basename(fname) != fname or not p.is_file():
            raise ValueError(f"checkpoint {path}: file {fname!r} is missing")
        if not isinstance(info, dict) or p.stat().st_size != info.get("bytes"):
            raise ValueError(f"checkpoint {path}: {fname} has {p.stat().st_size} bytes, the index says "
                             f"{info.get('bytes') if isinstance(info, dict) else info!r} (truncated or replaced)")
    _check_entries(f, index)
    return index


def _is_int(x: Any, lo: int = 0) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and lo <= x < 2**63


def _check_entries(f: Path, index: dict[str, Any]) -> None:
    """The index's params, groups and tensor entries have the types ``load`` relies on."""
    if not _is_int(index["step"]):
        raise ValueError(f"{f}: step must be a non-negative integer, got {index['step']!r}")
    params, order = index["params"], index["order"]
    if not all(isinstance(n, str) for n in order) or sorted(order) != sorted(params) or len(set(order)) != len(order):
        raise ValueError(f"{f}: 'order' must list each param of 'params' once")
    for name, p in params.items():
        ok = isinstance(p, dict) and isinstance(p.get("shape"), list) and all(_is_int(d) for d in p["shape"]) \
            and p.get("dtype") in ("float32", "bfloat16", "float16") and _is_int(p.get("group")) \
            and _is_int(p.get("step"))
        if not ok:
            raise ValueError(f"{f}: the entry of param {name!r} must have shape (list of sizes), dtype (float32, "
                             f"bfloat16, float16), group and step (non-negative integers); got {_short(p)}")
    groups = index["param_groups"]
    for gi, g in enumerate(groups):
        if not isinstance(g, dict) or not isinstance(g.get("params"), list) or not all(
                isinstance(n, str) and n in params for n in g["params"]):
            raise ValueError(f"{f}: param_groups[{gi}] must be an object whose 'params' lists param names")
    for key, t in index["tensors"].items():
        if not isinstance(t, dict) or not isinstance(t.get("parts"), list):
            raise ValueError(f"{f}: tensor {key!r} must be an object with a list of parts")
    if not isinstance(index.get("state_precision"), (dict, type(None))):
        raise ValueError(f"{f}: 'state_precision' must be an object, got {_short(index['state_precision'])}")


def _tiling_gap(parts: list[dict[str, Any]], n: int) -> str | None:
    """None if ``parts`` (sorted by start) tile ``[0, n)`` exactly, else what is wrong."""
    at = 0
    for part in parts:
        if part["start"] != at or part["stop"] < part["start"]:
            return f"do not tile [0, {n}) (a gap or an overlap at element {at})"
        at = part["stop"]
    return None if at == n else f"cover [0, {at}), the tensor has {n} elements"


def _parts(path: Path, index: dict[str, Any], key: str) -> tuple[str, int, list[dict[str, Any]]]:
    """A tensor entry's dtype, element count and parts, checked: the parts tile ``[0, n)`` exactly
    (sorted, no gap, no overlap) and name files of the index."""
    entry = index["tensors"].get(key)
    if not isinstance(entry, dict) or not isinstance(entry.get("parts"), list) or not entry["parts"]:
        raise ValueError(f"checkpoint {path}: no tensor {key!r} (with parts) in the index")
    dtype = entry.get("dtype")
    if not isinstance(dtype, str) or dtype not in _TENSOR_DTYPES:
        raise ValueError(f"checkpoint {path}: tensor {key!r} has unsupported dtype {dtype!r}")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise ValueError(f"checkpoint {path}: tensor {key!r} has a bad shape {shape!r}")
    n = math.prod(shape)
    parts = entry["parts"]
    for part in parts:
        ok = isinstance(part, dict) and part.get("file") in index["files"] and isinstance(part.get("key"), str) \
            and all(isinstance(part.get(k), int) and not isinstance(part.get(k), bool) for k in ("start", "stop"))
        if ok and not isinstance(part.get("sha256"), str):  # format /2: one checksum per chunk of the part
            sums, chunk = part.get("sha256"), part.get("chunk")
            ok = _is_int(chunk, 1) and isinstance(sums, list) and all(isinstance(h, str) for h in sums) \
                and len(sums) == -(-max(part["stop"] - part["start"], 0) // chunk)
        if not ok:
            raise ValueError(f"checkpoint {path}: tensor {key!r} has a bad part {_short(part)}")
    parts = sorted(parts, key=lambda q: q["start"])
    gap = _tiling_gap(parts, n)
    if gap is not None:
        raise ValueError(f"checkpoint {path}: the parts of tensor {key!r} {gap}")
    files = {q["file"] for q in parts}
    if n * _TENSOR_DTYPES[dtype] > sum(
            int(index["files"][fn].get("bytes", 0)) for fn in files):
        raise ValueError(f"checkpoint {path}: tensor {key!r} of {n} elements does not fit in its files")
    return dtype, n, parts


class _Files:
    """Raw reads of element ranges of the tensors in a checkpoint's safetensors files.

    Hand-written instead of ``safetensors.safe_open``: its NumPy reader cannot make ``BF16`` /
    ``F8_*`` arrays, and a rank of a sharded optimizer reads a range of a tensor (its shard's
    chunks), not the tensor. It reads the documented format
    (https://github.com/huggingface/safetensors#format): each file's header is parsed once and
    every entry it is asked for is checked (dtype, shape, offsets inside the file) before a read."""

    _ST = {v: k for k, v in _ST_DTYPES.items()}

    def __init__(self, path: Path) -> None:
        self.path = path
        self.headers: dict[str, tuple[int, int, dict[str, Any]]] = {}

    def _header(self, fname: str) -> tuple[int, int, dict[str, Any]]:
        if fname not in self.headers:
            f = self.path / fname
            try:
                size = f.stat().st_size
                with open(f, "rb") as fh:
                    n = int.from_bytes(fh.read(8), "little")
                    if size < 8 or n > size - 8:
                        raise ValueError(f"its header length {n} does not fit in its {size} bytes")
                    header = json.loads(fh.read(n))
                if not isinstance(header, dict):
                    raise ValueError("its header is not a JSON object")
            except (OSError, ValueError, UnicodeDecodeError) as e:
                raise ValueError(f"checkpoint {self.path}: {fname} cannot be read ({e})") from None
            self.headers[fname] = (8 + n, size, header)
        return self.headers[fname]

    def read(self, fname: str, key: str, dtype: str, lo: int, hi: int) -> np.ndarray:
        """Elements ``[lo, hi)`` of tensor ``key`` in ``fname`` as stored (``dtype``'s bits for
        bfloat16 / fp8: uint16 / uint8); a bfloat16 tensor may be stored as ``U16`` bits (older
        checkpoints)."""
        base, size, header = self._header(fname)
        sdt = np.dtype(_RAW[dtype][1] if dtype in _RAW else dtype)
        e = header.get(key)
        where = f"checkpoint {self.path}: {fname} has no readable tensor {key!r}"
        if not isinstance(e, dict) or not isinstance(e.get("data_offsets"), list) or len(e["data_offsets"]) != 2 \
                or not all(_is_int(x) for x in e["data_offsets"]) or not isinstance(e.get("shape"), list) \
                or not all(_is_int(d) for d in e["shape"]):
            raise ValueError(f"{where} (no such entry, or a bad one)")
        have = self._ST.get(e.get("dtype"))
        if have != dtype and not (dtype == "bfloat16" and have == "uint16"):
            raise ValueError(f"{where} of dtype {dtype} (the file says {e.get('dtype')!r})")
        start, stop = e["data_offsets"]
        n = math.prod(e["shape"])
        if stop - start != n * sdt.itemsize or base + stop > size:
            raise ValueError(f"{where}: its data offsets [{start}, {stop}) do not match its shape {e['shape']} "
                             f"or lie outside the file's {size} bytes")
        if not 0 <= lo <= hi <= n:
            raise ValueError(f"checkpoint {self.path}: tensor {key!r} in {fname} has {n} elements, the index "
                             f"needs [{lo}, {hi})")
        with open(self.path / fname, "rb") as fh:
            fh.seek(base + start + lo * sdt.itemsize)
            a = np.fromfile(fh, dtype=sdt.newbyteorder("<"), count=hi - lo)
        if a.size != hi - lo:
            raise ValueError(f"checkpoint {self.path}: tensor {key!r} in {fname} is cut short")
        return a.astype(sdt, copy=False)


def _check_sums(block: np.ndarray, want: list[str], chunk: int) -> bool:
    return _chunk_shas(block, chunk) == want


def _read_tensors(path: Path, index: dict[str, Any], wanted: Iterable[str],
                  advance: Callable[[int], Any] = _nothing,
                  ranges: Mapping[str, tuple[int, int]] | None = None) -> dict[str, np.ndarray]:
    """Every wanted tensor, checksummed, assembled from its parts (flat); with ``ranges``, only the
    elements ``ranges[key] = (lo, hi)`` of a tensor (a rank's shard). Only the checksum chunks
    that hold the wanted elements are read (format /2; a /1 part, one checksum, is read whole).
    A tensor read from one part is the array read (no further copy)."""
    files = _Files(path)
    out = {}
    checks: list[tuple[str, str, Any]] = []
    pool = ThreadPoolExecutor(1)  # checksums overlap the reading of the next part
    try:
        for key in wanted:
            dtype, n, parts = _parts(path, index, key)
            lo, hi = (0, n) if ranges is None or key not in ranges else ranges[key]
            if not 0 <= lo <= hi <= n:
                raise ValueError(f"checkpoint {path}: tensor {key!r} has {n} elements, [{lo}, {hi}) was asked for")
            sdt = np.dtype(_RAW[dtype][1] if dtype in _RAW else dtype)
            pieces = []
            for part in parts:
                s, t = max(lo, part["start"]), min(hi, part["stop"])
                if s >= t:
                    continue
                s, t = s - part["start"], t - part["start"]  # in the part's own elements
                sums = part.get("sha256")
                if isinstance(sums, str):  # format /1: the part is read whole to check it
                    r0, r1, want, chunk = 0, part["stop"] - part["start"], [sums], max(part["stop"] - part["start"], 1)
                else:
                    chunk = part["chunk"]
                    c0, c1 = s // chunk, -(-t // chunk)
                    r0, r1, want = c0 * chunk, min(c1 * chunk, part["stop"] - part["start"]), sums[c0:c1]
                block = files.read(part["file"], part["key"], dtype, r0, r1)
                checks.append((key, part["file"], pool.submit(_check_sums, block, want, chunk)))
                pieces.append((part["start"] + s - lo, block[s - r0: t - r0]))
                advance(block.nbytes)
            if len(pieces) == 1 and pieces[0][1].size == hi - lo:
                flat = pieces[0][1]
            else:
                flat = np.empty(hi - lo, sdt)
                for at, piece in pieces:
                    flat[at: at + piece.size] = piece
            if dtype in _RAW:
                import ml_dtypes

                flat = flat.view(getattr(ml_dtypes, dtype))
            out[key] = flat
        for key, fname, fut in checks:
            if not fut.result():
                raise ValueError(f"checkpoint {path}: tensor {key!r} in {fname} fails its checksum "
                                 "(the file is damaged)")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return out


def _nbytes(index: dict[str, Any]) -> int:
    """The tensor bytes of a checkpoint (for progress bars)."""
    total = 0
    for t in index["tensors"].values():
        shape = t.get("shape") if isinstance(t, dict) else None
        if isinstance(t.get("dtype"), str) and isinstance(shape, list) and all(_is_int(d) for d in shape):
            total += _TENSOR_DTYPES.get(t["dtype"], 4) * math.prod(shape)
    return total


def verify(path: str | os.PathLike[str], *, progress: bool = False) -> dict[str, Any]:
    """Check a checkpoint on its own (index, files, every checksum); returns the index."""
    index = read_index(path)
    bar = _Progress(progress, _nbytes(index), f"verifying {Path(path).name}")
    try:
        _read_tensors(Path(path).absolute(), index, list(index["tensors"]), bar)
    finally:
        bar.close()
    return index


# ---------------------------------------------------------------------- load
def load(path: str | os.PathLike[str], optimizer: Any, *, scheduler: Any = None, params: bool = True,
         override_opt_param_scheduler: bool = False, use_checkpoint_opt_param_scheduler: bool = False,
         convert: bool = False, progress: bool = False) -> dict[str, Any]:
    """Restore the checkpoint at ``path`` into ``optimizer`` (and ``scheduler``); returns the index.

    ``params=True`` also writes the saved fp32 values into the params (rounded to each
    param's dtype, the same rounding a step does; with param remainders the saved bf16
    param itself); ``params=False`` restores only the optimizer (a low-precision param
    then keeps its value; its saved master, or remainder, is used where the param still
    equals the saved one). Params are matched by name, in any order.

    State precision: the checkpoint's state must be stored as this optimizer stores it
    (``exp_avg`` / ``exp_avg_sq`` dtypes, fp32 master or int16 ``param_remainder``); any
    difference is a ValueError naming the entry and both dtypes unless ``convert=True``,
    which rounds moments to this optimizer's dtypes (to nearest even; widening is exact)
    and splits a saved fp32 master into the bf16 param and its remainder, or joins a
    saved param and remainder into the fp32 master, exactly (``load_state_dict(sd,
    convert=...)`` does the rest).

    Everything is checked first (see the module docstring); nothing changes on error.
    ``progress``: show a byte counter (tqdm) while reading.

    A sharded optimizer (``comm=``): a collective. Each rank reads and checks only the elements
    it owns (and the checksum chunks around them), whatever the world size that saved the
    checkpoint (a single process's included); a failure on any rank raises on every rank before
    anything changes. With ``params=True`` the ranks' masters are all-gathered into every rank's
    params.
    """
    sharding = _sharding_of(optimizer)
    try:  # with comm every rank reads and checks its slices; a failure anywhere raises everywhere
        staged = _load(path, optimizer, scheduler, override_opt_param_scheduler, use_checkpoint_opt_param_scheduler,
                       params, convert, progress, sharding)
        error = None
    except Exception as e:
        if sharding is None:
            raise
        staged, error = None, e
    if sharding is not None:
        _together(sharding, f"checkpoint.load({path})", error)
    index, sd, masters, sched_state = staged
    optimizer.load_state_dict(sd, convert=convert)  # validates the values, then applies (all or nothing)
    if params:
        optimizer._checkpoint_write_params(masters if sharding is None else
                                           sharding.gather_values(optimizer._engine, masters))
    if scheduler is not None and sched_state is not None:
        _restore_scheduler(scheduler, index["scheduler"], sched_state, use_checkpoint_opt_param_scheduler)
    return index


def _load(path: Any, optimizer: Any, scheduler: Any, override_opt_param_scheduler: bool,
          use_checkpoint_opt_param_scheduler: bool, params: bool, convert: bool, progress: bool,
          sharding: Any) -> tuple[dict[str, Any], dict[str, Any], list[np.ndarray], Any]:
    """Everything ``load`` checks and reads before it changes anything: ``(index, the state dict to
    load, the saved fp32 masters, the scheduler's state)``; with a sharded optimizer
    (``sharding``) on this rank's slices only (its shard state dict, the masters of its elements)."""
    from . import _validate as V
    from ._state import _dtype_name

    for name, flag in (("params", params), ("override_opt_param_scheduler", override_opt_param_scheduler),
                       ("use_checkpoint_opt_param_scheduler", use_checkpoint_opt_param_scheduler),
                       ("convert", convert)):
        V.flag(name, flag)
    if override_opt_param_scheduler and use_checkpoint_opt_param_scheduler:
        raise ValueError("override_opt_param_scheduler and use_checkpoint_opt_param_scheduler are both set; "
                         "choose one (Megatron: 'both override and use-checkpoint are set')")
    path = _resolve(path)
    index = read_index(path)
    kind = _frontend(optimizer)[0]
    sd_now = optimizer.state_dict()
    meta = sd_now["npadam"]
    shard = meta.get("shard") if sharding is not None else None
    owned = [tuple(r) for r in shard["ranges"]] if shard is not None else None
    names, saved = list(meta["names"]), index["params"]
    if index["kind"] != meta["kind"]:
        raise ValueError(f"checkpoint {path} holds the state of {index['kind']}, this optimizer is {meta['kind']}")
    missing = [n for n in names if n not in saved]
    extra = [n for n in saved if n not in set(names)]
    if missing or extra:
        hint = " (renamed?)" if len(missing) == len(extra) else ""
        raise ValueError(f"checkpoint {path} does not match the optimizer's params{hint}: not in the checkpoint: "
                         f"{missing[:5]}{' ...' if len(missing) > 5 else ''}; only in the checkpoint: "
                         f"{extra[:5]}{' ...' if len(extra) > 5 else ''}")
    groups_now = sd_now["param_groups"]
    if len(index["param_groups"]) != len(groups_now):
        raise ValueError(f"checkpoint {path} has {len(index['param_groups'])} param groups, the optimizer "
                         f"{len(groups_now)}")
    for i, n in enumerate(names):  # the entries' types were checked by read_index
        p = saved[n]
        if p["shape"] != list(meta["shapes"][i]) or p["dtype"] != meta["dtypes"][i]:
            raise ValueError(f"param {n!r}: the checkpoint has shape {tuple(p['shape'])} {p['dtype']}, "
                             f"the optimizer {tuple(meta['shapes'][i])} {meta['dtypes'][i]}")
    for gi, (g, h) in enumerate(zip(groups_now, index["param_groups"])):
        now_names = {names[i] for i in g["params"]}
        if set(h["params"]) != now_names:
            raise ValueError(f"param_groups[{gi}] holds other params in the checkpoint "
                             f"({sorted(set(h['params']) ^ now_names)[:5]} differ)")
    groups = _schedules(path, index, groups_now, scheduler, override_opt_param_scheduler,
                        use_checkpoint_opt_param_scheduler, kind)
    if scheduler is not None and kind != "torch":
        raise ValueError("scheduler= is for npadam.torch optimizers; npadam.AdamW keeps its schedules in its param "
                         "groups (compared without it)")
    wanted = [k for k in index["tensors"] if k.rsplit("/", 1)[0] in saved]
    if not convert:
        _check_precision(path, index, names, wanted, sd_now)
    for k in wanted:
        shape = index["tensors"][k].get("shape")
        numel = math.prod(saved[k.rsplit("/", 1)[0]]["shape"])
        if not isinstance(shape, list) or not all(_is_int(d) for d in shape) or (
                math.prod(shape) != numel and not k.endswith(_SCALE)):  # block scales: load_state_dict checks
            raise ValueError(f"checkpoint {path}: tensor {k!r} has shape {shape!r}, its param {numel} elements")
    ranges = None
    if owned is not None:  # this rank reads the elements it owns (fp8 scales: the blocks that hold them)
        ranges = {}
        slot_of = {n: i for i, n in enumerate(names)}
        for k in wanted:
            lo, hi = owned[slot_of[k.rsplit("/", 1)[0]]]
            ranges[k] = ((lo // prec.FP8_BLOCK, -(-hi // prec.FP8_BLOCK)) if hi > lo else (0, 0)) \
                if k.endswith(_SCALE) else (lo, hi)
    bar = _Progress(progress and (sharding is None or sharding.rank == 0), _nbytes(index) // (
        1 if sharding is None else sharding.world), f"loading {path.name}")
    try:
        arrays = _read_tensors(path, index, wanted, bar, ranges)
    finally:
        bar.close()
    by_param: dict[str, dict[str, np.ndarray]] = {n: {} for n in names}
    for k, a in arrays.items():
        owner, key = k.rsplit("/", 1)
        by_param[owner][key] = a
    state: dict[int, dict[str, Any]] = {}
    masters: list[np.ndarray] = []
    for i, n in enumerate(names):
        shape = tuple(meta["shapes"][i]) if owned is None else (owned[i][1] - owned[i][0],)
        keys = by_param[n]
        master = _saved_master(path, n, keys, meta["dtypes"][i])
        st: dict[str, Any] = {"step": saved[n].get("step")}
        for k, a in keys.items():  # sizes were checked against the params before the read
            if k not in _MASTER_KEYS:
                st[k] = a if k.endswith(_SCALE) else a.reshape(shape)
        if "param_remainder" in sd_now["state"][i]:  # this optimizer keeps bf16 params + int16 remainders
            if "param_remainder" in keys:
                bits, rem = keys["param"].view(np.uint16), keys["param_remainder"]
            else:  # convert=True (checked): the exact split of the saved fp32 master
                bits, rem = prec.split_remainder(master)
            if not params:  # the param wins where it is not the saved one (as the engine's load_master)
                now = optimizer._param_bits(i).reshape(-1)
                now = now if owned is None else now[owned[i][0]:owned[i][1]]
                rem = np.where(now == bits, rem, np.int16(0)).astype(np.int16)
            st["param_remainder"] = rem.reshape(shape)
        elif meta["dtypes"][i] != "float32":  # the saved master in its dtype, or the joined one (convert)
            st["master"] = (keys["master"] if "master" in keys else master).reshape(shape)
            if _dtype_name(sd_now["state"][i]["master"]) == "float16":  # fp16 masters: the params are their rounding
                master = prec.widen(prec.narrow(master, prec.F16), prec.F16)
        masters.append(master)
        state[i] = st
    sd = {"state": state, "param_groups": [], "npadam": {
        "format": meta["format"], "kind": meta["kind"], "step": index["step"], "names": names,
        "shapes": meta["shapes"], "dtypes": meta["dtypes"], "loss_scaler": index.get("loss_scaler")}}
    if shard is not None:
        sd["npadam"]["shard"] = shard
    for g, h in zip(groups_now, groups):
        d = {k: v for k, v in h.items() if k != "params"}
        d["params"] = list(g["params"])
        if "param_names" in g:
            d["param_names"] = g["param_names"]
        sd["param_groups"].append(d)
    if kind == "torch":
        sd = _as_torch(sd)
    sched_state = _scheduler_state(path, index, scheduler, override_opt_param_scheduler,
                                   use_checkpoint_opt_param_scheduler)
    return index, sd, masters, sched_state


#: a param's value in a checkpoint: ``master`` (fp32), or ``param`` (bf16) + ``param_remainder`` (int16)
_MASTER_KEYS = ("master", "param", "param_remainder")


def _saved_master(path: Path, name: str, keys: Mapping[str, np.ndarray], dtype: str) -> np.ndarray:
    """The fp32 value of param ``name`` in the checkpoint, flat: its ``master`` (float32, or the float16
    master of a bf16 param, widened), or its bf16 ``param`` joined with its int16 ``param_remainder``
    (``reference.precision.join_remainder``, exact);
    ValueError unless exactly one of the two forms is there, in its dtypes, and finite."""
    where = f"checkpoint {path}: param {name!r}"
    if "param" in keys or "param_remainder" in keys:
        if "master" in keys or "param" not in keys or "param_remainder" not in keys:
            raise ValueError(f"{where} must have either a master tensor or a param and a param_remainder, "
                             f"got {sorted(k for k in keys if k in _MASTER_KEYS)}")
        if dtype != "bfloat16" or keys["param"].dtype.name != "bfloat16" or keys["param_remainder"].dtype != np.int16:
            raise ValueError(f"{where} is {dtype}: a param_remainder needs a bfloat16 param and int16 remainders, "
                             f"got param {keys['param'].dtype}, param_remainder {keys['param_remainder'].dtype}")
        master = prec.join_remainder(keys["param"].view(np.uint16), keys["param_remainder"])
    else:
        if "master" not in keys:
            raise ValueError(f"{where} has no master tensor")
        master = keys["master"]
        if master.dtype == np.float16 and dtype == "bfloat16":  # main_params_dtype="float16"
            master = master.astype(np.float32)
        elif master.dtype != np.float32:
            raise ValueError(f"checkpoint {path}: master of {name!r} is {master.dtype}, expected float32"
                             + (" (or float16 for a bfloat16 param)" if dtype == "bfloat16" else ""))
    if not np.isfinite(master).all():
        raise ValueError(f"checkpoint {path}: master of {name!r} has non-finite values")
    return master


def _check_precision(path: Path, index: dict[str, Any], names: list[str], wanted: list[str],
                     sd_now: Mapping[str, Any]) -> None:
    """Without ``convert``: ValueError unless every state entry of the checkpoint is stored as the
    optimizer stores it (moment dtypes; fp32 master or bf16 param + int16 remainder). Read from
    the index alone, before any tensor is read."""
    from ._state import _dtype_name

    saved: dict[str, dict[str, str]] = {n: {} for n in names}
    for k in wanted:
        owner, key = k.rsplit("/", 1)
        saved[owner][key] = index["tensors"][k].get("dtype")
    problems = []
    for i, n in enumerate(names):
        now = {k: _dtype_name(v) for k, v in sd_now["state"][i].items() if k != "step"}
        then = saved[n]
        if "param_remainder" in then and "param_remainder" not in now:
            problems.append(f"param {n!r}: the checkpoint has a bfloat16 param with an int16 param_remainder "
                            "(store_param_remainders=True), this optimizer keeps a float32 master")
        elif "param_remainder" in now and "param_remainder" not in then:
            problems.append(f"param {n!r}: the checkpoint has a {then.get('master')} master, this optimizer keeps "
                            "an int16 param_remainder (store_param_remainders=True)")
        for k in ("master", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer"):
            want = now.get(k, now.get("exp_avg_sq") if k == "max_exp_avg_sq" else None)
            if isinstance(then.get(k), str) and then[k] in _TENSOR_DTYPES and want is not None and then[k] != want:
                problems.append(f"param {n!r}: {k} is {then[k]} in the checkpoint, {want} in this optimizer")
    if problems:
        ours = sd_now["npadam"].get("state_precision")
        theirs = index.get("state_precision") or "float32 state (saved before state precision was recorded)"
        raise ValueError(f"checkpoint {path} stores the optimizer state in another precision: "
                         f"{'; '.join(problems[:3])}{f' (and {len(problems) - 3} more)' if len(problems) > 3 else ''}. "
                         f"Checkpoint: {theirs}; this optimizer: {ours}. Pass convert=True to convert it (moments "
                         "rounded to nearest even, masters split into or joined from remainders exactly). Nothing "
                         "was changed")


def _schedules(path: Path, index: dict[str, Any], groups_now: list[dict[str, Any]], scheduler: Any,
               override: bool, use_checkpoint: bool, target: str) -> list[dict[str, Any]]:
    """The group hyperparameters to load, after Megatron's rules on scheduled values.

    ``target``: the loading optimizer's front-end. ``npadam.torch`` groups hold plain floats (the
    scheduler's current values: state, restored as torch does; the rules apply to ``scheduler=``),
    so a Schedule saved by ``npadam.AdamW`` becomes its value at the saved step. ``npadam.AdamW``
    groups hold the schedules themselves (a float is a constant schedule): they are compared."""
    out = [dict(h) for h in index["param_groups"]]
    if target == "torch":
        if scheduler is None and (override or use_checkpoint):
            raise ValueError("override_opt_param_scheduler / use_checkpoint_opt_param_scheduler need scheduler= for "
                             "an npadam.torch optimizer: its param groups hold the scheduler's current values, "
                             "which are restored like torch's load_state_dict does")
        k = index["step"]
        for h in out:
            for key in _SCHEDULED:
                if H.has_unsaved(h.get(key)):
                    raise ValueError(f"checkpoint {path}: param group {key!r} was a schedule holding a Python "
                                     "callable, which the checkpoint could not hold: load it into an npadam.AdamW "
                                     "built with the same callable schedule")
                v = H.load(h[key]) if key in h else None
                if isinstance(v, list):
                    h[key] = [float(x(k)) if callable(x) else x for x in v]
                elif callable(v):
                    h[key] = float(v(k))
        return out
    diffs = []
    for gi, (g, h) in enumerate(zip(groups_now, out)):
        for key in _SCHEDULED:
            if key not in g and key not in h:
                continue
            now, then = _jsonable(g.get(key)), h.get(key)
            if H.dump_config(now) != H.dump_config(then):  # configurations: a Plateau's state may differ
                diffs.append(f"param_groups[{gi}].{key}: checkpoint {_short(then)}, optimizer {_short(now)}")
                if override:
                    h[key] = now
    if diffs and not (override or use_checkpoint):
        raise ValueError(f"checkpoint {path}: the schedules differ from the optimizer's ({'; '.join(diffs[:4])}"
                         f"{' ...' if len(diffs) > 4 else ''}); pass override_opt_param_scheduler=True to keep "
                         "the optimizer's or use_checkpoint_opt_param_scheduler=True to restore the saved ones")
    return out


def _short(x: Any) -> str:
    s = json.dumps(x, sort_keys=True)
    return s if len(s) <= 120 else s[:117] + "..."


def _scheduler_state(path: Path, index: dict[str, Any], scheduler: Any, override: bool,
                     use_checkpoint: bool) -> dict[str, Any] | None:
    """Check the saved scheduler against ``scheduler`` (Megatron's rules) before anything is loaded;
    returns its saved state."""
    saved = index.get("scheduler")
    if scheduler is None:
        return None
    current = _scheduler_entry(scheduler)
    if index.get("frontend") != "torch":
        raise ValueError(f"checkpoint {path} was saved from an npadam.{index.get('kind')} on arrays, whose schedules "
                         "live in its param groups (compared without a scheduler); load it without scheduler=")
    if not isinstance(saved, dict) or not isinstance(saved.get("schedules"), list):
        raise ValueError(f"checkpoint {path} was saved without a scheduler; load without scheduler=")
    if len(saved["schedules"]) != len(scheduler.schedules):
        raise ValueError(f"checkpoint {path} has {len(saved['schedules'])} schedules, the scheduler "
                         f"{len(scheduler.schedules)}")
    from .schedules import ScheduleSet

    for i, d in enumerate(saved["schedules"]):
        try:
            ScheduleSet.from_dict(d)
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"checkpoint {path}: scheduler schedule {i} cannot be rebuilt: {e}") from None
    def config(d: dict[str, Any]) -> dict[str, Any]:  # a Plateau's state may differ, its configuration not
        return {n: s.config_dict() for n, s in ScheduleSet.from_dict(d).items()}

    diffs = [f"schedule[{i}]: checkpoint {_short(a)}, scheduler {_short(b)}"
             for i, (a, b) in enumerate(zip(saved["schedules"], _jsonable(current["schedules"])))
             if config(a) != config(b)]
    if diffs and not (override or use_checkpoint):
        raise ValueError(f"checkpoint {path}: the schedules differ from the scheduler's ({'; '.join(diffs[:3])}); "
                         "pass override_opt_param_scheduler=True to keep the scheduler's or "
                         "use_checkpoint_opt_param_scheduler=True to restore the saved ones")
    # stateful schedules' state (Plateau) is checked apart: loaded when the configurations are the same;
    # with use_checkpoint the saved schedules carry it, with override the scheduler keeps its own
    key, state = getattr(scheduler, "STATES", "schedule_states"), saved.get("state")
    states = state.get(key) if isinstance(state, dict) else None
    state = {k: v for k, v in state.items() if k != key} if isinstance(state, dict) else state
    checked = _check_scheduler_state(path, state, {k: v for k, v in scheduler.state_dict().items() if k != key})
    if states is not None and not diffs:
        try:
            scheduler._saved_states(states)
        except (TypeError, ValueError) as e:
            raise ValueError(f"checkpoint {path}: scheduler state {key!r}: {e}") from None
        checked[key] = states
    return checked


def _check_scheduler_state(path: Path, state: Any, template: dict[str, Any]) -> dict[str, Any]:
    """The saved scheduler state, checked against the scheduler's own ``state_dict()``: the same
    keys, values of the same kinds (ints, numbers, lists of the same length), ``last_epoch >= -1``."""
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path}: the scheduler state must be an object, got {type(state).__name__}")
    if set(state) != set(template):
        raise ValueError(f"checkpoint {path}: the scheduler state has keys {sorted(state)}, the scheduler "
                         f"{sorted(template)}")

    def kind(v: Any) -> str:
        if isinstance(v, bool) or v is None:
            return repr(type(v))
        if isinstance(v, int):
            return "int"
        if isinstance(v, float):
            return "number"
        if isinstance(v, (list, tuple)):
            return f"list of {len(v)}"
        return type(v).__name__

    for key, want in template.items():
        got = state[key]
        ok = kind(got) == kind(want) or (kind(want) == "number" and kind(got) == "int")
        if isinstance(want, (list, tuple)) and ok:
            ok = all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in got) \
                if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in want) else ok
        if isinstance(got, float) and not math.isfinite(got):
            ok = False
        if not ok:
            raise ValueError(f"checkpoint {path}: scheduler state {key!r} is {got!r}, expected a value like {want!r}")
    if state.get("last_epoch", 0) < -1:
        raise ValueError(f"checkpoint {path}: scheduler state last_epoch is {state['last_epoch']}, must be >= -1")
    return dict(state)


def _restore_scheduler(scheduler: Any, saved: dict[str, Any], state: dict[str, Any], use_checkpoint: bool) -> None:
    """Megatron's rules for an ``npadam.torch.LRScheduler`` (checked by ``_scheduler_state``)."""
    from .schedules import ScheduleSet

    if use_checkpoint:
        sets = [ScheduleSet.from_dict(d) for d in saved["schedules"]]
        scheduler.schedules = sets
        if getattr(scheduler, "_single", None) is not None:
            scheduler._single = sets[0]
    scheduler.load_state_dict(state)  # after: the state of stateful schedules goes into the ones in use
    _apply_scheduler(scheduler)


def _apply_scheduler(scheduler: Any) -> None:
    """Write the scheduler's values for its current step into the groups (what its next step sees)."""
    k = max(int(scheduler.last_epoch), 0)
    for g, s in zip(scheduler.optimizer.param_groups, scheduler.schedules):
        g["lr"] = float(s.lr(k))
        if s.weight_decay is not None:
            g["weight_decay"] = float(s.weight_decay(k))
        if "betas" in g and (s.beta1 is not None or s.beta2 is not None):
            b1, b2 = g["betas"]
            g["betas"] = (float(s.beta1(k)) if s.beta1 is not None else b1,
                          float(s.beta2(k)) if s.beta2 is not None else b2)
        elif "momentum" in g and s.beta1 is not None:  # SGD: the schedule's beta1 is the momentum
            g["momentum"] = float(s.beta1(k))
    scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]


def _as_torch(sd: dict[str, Any]) -> dict[str, Any]:
    """State arrays as torch tensors (npadam.torch's load_state_dict takes either; this keeps
    torch's own hooks happy)."""
    import torch

    def conv(a: Any) -> Any:
        if isinstance(a, np.ndarray):
            if a.dtype.name in _RAW:  # bf16, fp8: their bits, viewed as the torch dtype of the same name
                bits = np.ascontiguousarray(a).view(np.int16 if a.dtype.itemsize == 2 else np.uint8).copy()
                return torch.from_numpy(bits).view(getattr(torch, a.dtype.name))
            return torch.from_numpy(np.array(a, copy=True))
        return a

    sd["state"] = {i: {k: conv(v) for k, v in st.items()} for i, st in sd["state"].items()}
    return sd


def describe(path: str | os.PathLike[str]) -> str:
    """A short human-readable summary of a checkpoint (for the CLI and logs)."""
    index = read_index(path)
    numel = sum(math.prod(p["shape"]) for p in index["params"].values())
    size = sum(f["bytes"] for f in index["files"].values())
    sp = index.get("state_precision") or {}
    state = ""
    if sp and (sp.get("exp_avg_dtype"), sp.get("exp_avg_sq_dtype"), sp.get("store_param_remainders"),
               sp.get("main_params_dtype", "float32")) != ("float32", "float32", False, "float32"):
        state = (f", state exp_avg {sp.get('exp_avg_dtype')} / exp_avg_sq {sp.get('exp_avg_sq_dtype')}"
                 + (f" ({sp.get('rounding')} rounding)" if sp.get("rounding") != "nearest" else "")
                 + (" + param remainders" if sp.get("store_param_remainders") else "")
                 + (" + fp16 masters" if sp.get("main_params_dtype") == "float16" else ""))
    return (f"{Path(path)}: {index['kind']} at step {index['step']}, {len(index['order'])} params, "
            f"{numel:,} elements, {len(index['param_groups'])} groups, {len(index['files'])} files, "
            f"{size / 2**20:.1f} MiB{state}, saved {index.get('created')}")
