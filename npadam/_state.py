"""State dicts shared by both front-ends: torch's layout, npadam's additions, torch's own dicts read too.

A sharded optimizer's ``state_dict()`` (``comm=``, ``npadam._sharded``) is its rank's shard: the same
layout, each state array flat and holding only the param's elements in this rank's shard (empty
when none), and ``npadam.shard = {"rank", "world", "sizes" (padded buffer sizes), "ranges" ([a, b)
of each param's flat index held here)}``.

Layout (``export``)::

    {"state": {i: {"step", "exp_avg", "exp_avg_sq"[, "max_exp_avg_sq"][, "master"]}},
     "param_groups": [{hyperparameters..., "params": [i, ...]}],
     "npadam": {"format", "kind", "step", "names", "shapes", "dtypes", "loss_scaler"}}

``state`` and ``param_groups`` are exactly torch's (``torch.optim.AdamW`` loads
them; it ignores the ``npadam`` entry and the ``master`` arrays); ``step`` in
``state`` is the param's own update count, ``npadam.step`` the optimizer's (the
index Schedules see). ``parse`` reads these and the state dicts of
``torch.optim.Adam``/``AdamW`` (no ``npadam`` entry: params matched by position
and checked by shape; a param without state starts fresh; a low-precision
param's master is re-read from the param) and checks everything before the
caller changes anything.

SGD (``kind`` ``"SGD"``) has torch.optim.SGD's layout: ``state[i]`` = ``{"step"[,
"momentum_buffer"][, "master"]}``, the buffer present once the param's first step
with momentum made it (torch's rule); a ``torch.optim.SGD`` state dict has only the
buffers (``step`` then counts from 0). An Adam state dict given to SGD, or the
other way round, is a ValueError.
"""

from __future__ import annotations

import copy
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import _hyper as H
from ._engine import Engine
from .reference import precision as P
from .scaler import LossScaler

FORMAT = "npadam.optimizer/2"
_OLD_FORMAT = "npadam.optimizer/1"
STATE_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "master", "param_remainder")
MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")  # may be fp8 codes with a "<name>_scale" beside
SGD_STATE_KEYS = ("momentum_buffer", "master")


def export(engine: Engine, groups: Sequence[dict[str, Any]], kind: str, loss_scaler: LossScaler | None,
           array: Callable[[np.ndarray], Any] = lambda a: a) -> dict[str, Any]:
    """The state dict of ``engine`` (see the module docstring). ``groups``: each group's
    hyperparameters as plain values; ``array`` converts the host copies (e.g. to torch tensors)."""
    engine.sync()
    lay = engine.layout
    sharded = engine.sharding is not None  # a rank's shard: flat arrays of the param's elements it owns
    state: dict[int, dict[str, Any]] = {}
    for i, slot in enumerate(lay.slots):
        st: dict[str, Any] = {"step": int(engine.steps[i])}
        shape = slot.shape
        if sharded:
            a, b = engine.owned_range(i, "master")
            shape = (b - a,)
        for key, a in engine.slot_state(i).items():
            st[key] = array(a if key.endswith("_scale") else a.reshape(shape))  # fp8 scales: per block
        if groups[slot.group].get("amsgrad") and "max_exp_avg_sq" not in st:
            # allocated at the first step; zero until then (parse requires it for amsgrad groups)
            st["max_exp_avg_sq"] = array(np.zeros(shape, engine.state_dtype(i, "max_exp_avg_sq")))
        state[i] = st
    param_groups, start = [], 0
    for g in groups:
        n = g["n_params"]
        d = {k: v for k, v in g.items() if k != "n_params"}
        d["params"] = list(range(start, start + n))
        start += n
        param_groups.append(d)
    meta = {"format": FORMAT, "kind": kind, "step": engine.count, "names": lay.names,
            "shapes": [list(s.shape) for s in lay.slots], "dtypes": [s.dtype for s in lay.slots],
            "loss_scaler": None if loss_scaler is None else loss_scaler.state_dict()}
    if engine.algorithm == "adam":
        meta["state_precision"] = engine.precision.describe()
    if sharded:
        meta["shard"] = engine.sharding.describe(engine)
    return {"state": state, "param_groups": param_groups, "npadam": meta}


@dataclass
class Parsed:
    """A checked state dict, ready to apply."""

    count: int
    steps: np.ndarray
    groups: list[dict[str, Any]]
    updates: list[tuple[int, str, np.ndarray]] = field(default_factory=list)
    reload_masters: list[int] = field(default_factory=list)
    amsgrad_buffers: list[int] = field(default_factory=list)
    loss_scaler: dict[str, Any] | None = None
    started: np.ndarray | None = None  # SGD: each param's momentum buffer exists
    param_bits: list[tuple[int, np.ndarray]] = field(default_factory=list)  # bf16 params to rewrite (uint16 bits)


def _float32(value: Any, what: str) -> np.ndarray:
    """A state array (NumPy, torch tensor of any float dtype, CuPy) as a float32 NumPy copy."""
    mod = type(value).__module__
    if mod.startswith("torch"):
        if value.is_complex() or not value.is_floating_point():
            raise TypeError(f"{what} must hold real floating-point values, got {value.dtype}")
        value = value.detach().to("cpu").float().numpy()
    elif mod.startswith("cupy") and hasattr(value, "get"):
        value = value.get()
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{what} must be an array or tensor, got {type(value).__name__}")
    if value.dtype.kind != "f" and value.dtype.name != "bfloat16":
        raise TypeError(f"{what} must hold floating-point values, got dtype {value.dtype}")
    with np.errstate(over="ignore"):
        out = value.astype(np.float32, copy=False)  # the engine copies it in
    if not np.isfinite(out).all() and np.isfinite(value).all():
        raise ValueError(f"{what} has values that overflow float32")
    return out


def _int(value: Any, what: str) -> int:
    if type(value).__module__.startswith("torch"):
        if value.numel() != 1:
            raise ValueError(f"{what} must be one number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value \
            or (not isinstance(value, numbers.Integral) and (not math.isfinite(value) or float(value) != int(value))) \
            or value < 0 or value >= 2**63 - 1:
        raise ValueError(f"{what} must be a non-negative integer below 2**63 - 1 (the next step must fit "
                         f"int64), got {value!r}")
    return int(value)


def parse(sd: Any, engine: Engine, groups: Sequence[dict[str, Any]], kind: str,
          check_group: Callable[[dict[str, Any], str], None], loss_scaler: LossScaler | None = None, *,
          convert: bool = False, param_bits: Callable[[int], np.ndarray] | None = None) -> Parsed:
    """Check ``sd`` against the engine's layout and the current ``groups``; raise ValueError/TypeError
    naming the problem. Nothing is changed here.

    State precision (``npadam.reference.precision``): an entry in the dtype this optimizer stores
    it in is taken bit for bit; float32 (or wider) state is converted into bfloat16/float16 state,
    an fp32 ``master`` into a ``param_remainder`` (the bf16 param then becomes the master's high
    half, ``Parsed.param_bits``) and a remainder into an fp32 master (joined with the current param,
    ``param_bits(slot)``) only with ``convert=True``: rounding state is never silent.

    ``loss_scaler``: the optimizer's. An npadam state dict must agree on having one (a
    saved scaler state is never dropped, a current one never silently kept); a torch
    state dict never holds one (torch keeps GradScaler apart), so the current one stays."""
    if not isinstance(sd, Mapping):
        raise TypeError(f"a state dict must be a mapping, got {type(sd).__name__}")
    if "format" in sd:  # npadam 0.1: the npadam entries at the top level
        meta: Mapping[str, Any] | None = sd
    else:
        meta = sd.get("npadam")
    for key in ("state", "param_groups"):
        if key not in sd:
            raise ValueError(f"state dict has no {key!r} entry (keys: {sorted(map(str, sd))})")
    state, saved_groups = sd["state"], sd["param_groups"]
    if not isinstance(state, Mapping) or not isinstance(saved_groups, (list, tuple)):
        raise TypeError("state dict 'state' must be a mapping and 'param_groups' a list")
    lay = engine.layout
    if meta is not None:
        if not isinstance(meta, Mapping):
            raise TypeError(f"state dict 'npadam' entry must be a mapping, got {type(meta).__name__}")
        if meta.get("format") not in (FORMAT, _OLD_FORMAT):
            raise ValueError(f"unknown npadam state dict format {meta.get('format')!r} (expected {FORMAT!r})")
        for key in ("names", "shapes", "dtypes", "step"):
            if key not in meta:
                raise ValueError(f"npadam state dict lacks {key!r}")
        for key in ("names", "shapes", "dtypes"):
            if not isinstance(meta[key], (list, tuple)) or len(meta[key]) != len(lay.slots):
                got = len(meta[key]) if isinstance(meta[key], (list, tuple)) else type(meta[key]).__name__
                raise ValueError(f"npadam state dict {key!r} must list the {len(lay.slots)} params, got {got}")
        if list(meta["names"]) != lay.names:
            diff = [(a, b) for a, b in zip(meta["names"], lay.names) if a != b][:3]
            raise ValueError(f"state dict params do not match the optimizer's: {len(meta['names'])} saved, "
                             f"{len(lay.names)} here; first differences (saved, here): {diff}")
        for slot, shape, dt in zip(lay.slots, meta["shapes"], meta["dtypes"]):
            if tuple(shape) != slot.shape or dt != slot.dtype:
                raise ValueError(f"param {slot.name!r}: state dict has shape {tuple(shape)} {dt}, "
                                 f"optimizer has {slot.shape} {slot.dtype}")
    _check_algorithm(meta, state, saved_groups, engine.algorithm, kind)
    if len(saved_groups) != len(groups):
        raise ValueError(f"state dict has {len(saved_groups)} param groups, optimizer has {len(groups)}")
    new_groups, index = [], []
    for gi, (g, d) in enumerate(zip(groups, saved_groups)):
        if not isinstance(d, Mapping) or not isinstance(d.get("params"), (list, tuple)):
            raise TypeError(f"state dict param_groups[{gi}] must be a mapping with a list 'params'")
        if len(d["params"]) != g["n_params"]:
            raise ValueError(f"param_groups[{gi}] has {len(d['params'])} params in the state dict, "
                             f"{g['n_params']} here")
        h = {k: H.load(v) for k, v in d.items() if k != "params"}
        for k in (H.SGD if engine.algorithm == "sgd" else H.ADAM).keys:
            h.setdefault(k, g[k])
        if "betas" in h:
            h["betas"] = tuple(h["betas"])
        check_group(h, f"state dict param_groups[{gi}].")
        new_groups.append(h)
        index += list(d["params"])
    steps = np.zeros(len(lay.slots), np.int64)
    out = Parsed(count=0, steps=steps, groups=new_groups)
    if engine.algorithm == "sgd":
        out.started = np.zeros(len(lay.slots), bool)
    for i, (slot, key) in enumerate(zip(lay.slots, index)):
        st = state.get(key, state.get(str(key)))
        where = f"state of param {slot.name!r}"
        if engine.algorithm == "sgd":
            _sgd_slot(out, i, slot, st, where, meta is not None)
            continue
        if st is None or (isinstance(st, Mapping) and not st):
            if meta is not None:
                raise ValueError(f"state dict has no {where}")
            out.reload_masters.append(i)  # torch: a param never stepped has no state yet
            for k in ("exp_avg", "exp_avg_sq"):
                out.updates.append((i, k, np.zeros(slot.numel, np.float32)))
            continue
        if not isinstance(st, Mapping):
            raise TypeError(f"{where} must be a mapping, got {type(st).__name__}")
        missing = [k for k in ("step", "exp_avg", "exp_avg_sq") if k not in st]
        if missing:
            raise ValueError(f"{where} lacks {missing}")
        steps[i] = _int(st["step"], f"{where}: step")
        remainders = slot.dtype == "bfloat16" and engine.precision.remainders
        if "master" in st and "param_remainder" in st:
            raise ValueError(f"{where} has both an fp32 master and a param_remainder")
        for k in STATE_KEYS:
            if k not in st:
                continue
            if k == "param_remainder":
                rem = _remainder(st[k], slot, where)
                if remainders:
                    out.updates.append((i, k, rem))
                elif slot.dtype == "bfloat16":
                    if not convert:
                        raise ValueError(f"{where} holds a param_remainder (store_param_remainders=True) and this "
                                         "optimizer keeps fp32 masters: load_state_dict(sd, convert=True) joins it "
                                         "with the current param")
                    out.updates.append((i, "master", P.join_remainder(param_bits(i), rem)))
                continue
            fp8 = k in MOMENTS and _dtype_name(st[k]).startswith("float8")
            arr = _fp8_values(st, k, slot, where) if fp8 else _float32(st[k], f"{where}: {k}")
            if arr.size != slot.numel or (arr.ndim and arr.shape != slot.shape and arr.ndim != 1):
                raise ValueError(f"{where}: {k} has shape {arr.shape}, expected {slot.shape}")
            _check_moment(k, arr, f"{where}: {k}")
            if k == "master" and slot.dtype == "float32":
                continue
            if k == "max_exp_avg_sq" and not new_groups[slot.group]["amsgrad"]:
                continue
            if k == "master" and remainders:
                if not convert:
                    raise ValueError(f"{where} holds an fp32 master and this optimizer stores param remainders "
                                     "(store_param_remainders=True): load_state_dict(sd, convert=True) splits it "
                                     "(the bf16 param becomes the master's nearest, ties away from zero)")
                bits, rem = P.split_remainder(arr.reshape(-1))
                out.updates.append((i, "param_remainder", rem))
                out.param_bits.append((i, bits))
                continue
            out.updates += [(i, key, a) for key, a in
                            _in_storage(engine, i, k, st[k], st.get(k + "_scale"), arr, convert, f"{where}: {k}")]
        if slot.dtype != "float32" and "master" not in st and "param_remainder" not in st:
            if meta is not None:
                raise ValueError(f"{where} lacks the fp32 master of the {slot.dtype} param")
            out.reload_masters.append(i)
        if new_groups[slot.group]["amsgrad"] and "max_exp_avg_sq" not in st:
            raise ValueError(f"{where} lacks max_exp_avg_sq (its group has amsgrad=True)")
    for bi, b in enumerate(lay.buffers):
        if new_groups[b.group].get("amsgrad"):
            out.amsgrad_buffers.append(bi)
    if meta is not None:
        out.count = _int(meta["step"], "state dict step")
        scaler = meta.get("loss_scaler")
        if scaler is None and loss_scaler is not None:
            raise ValueError("the state dict was saved without a loss scaler but this optimizer has one "
                             f"({loss_scaler!r}); load it into an optimizer without loss_scaler and set "
                             "opt.loss_scaler afterwards to start a fresh scaler")
        if scaler is not None and loss_scaler is None:
            raise ValueError(f"the state dict holds loss-scaler state ({dict(scaler)!r}) but this optimizer "
                             "has no loss_scaler; create it with loss_scaler=npadam.LossScaler() to resume it")
        if scaler is not None:
            if not isinstance(scaler, Mapping):
                raise TypeError(f"state dict loss_scaler must be a mapping, got {type(scaler).__name__}")
            probe = copy.deepcopy(loss_scaler) if loss_scaler is not None else LossScaler()
            probe.load_state_dict(dict(scaler))  # validate (against this optimizer's scaler) before any change
            out.loss_scaler = dict(scaler)
    else:
        out.count = int(steps.max()) if steps.size else 0
    return out


def moment_values(engine: Engine, slot: int, key: str, value: Any, scale: Any, what: str) -> list[tuple[str, np.ndarray]]:
    """A moment set from outside (``opt.state[p][key] = tensor`` in npadam.torch) as ``(key, flat
    array)`` entries in the dtype the engine stores it in (what ``Engine.write_state`` takes):
    float32 state as float32; bfloat16/float16 state bit for bit from its own dtype, else rounded
    to nearest even; fp8 state bit for bit from its own codes with ``scale`` (the entry's
    ``<key>_scale``), else quantized per block (``key`` and ``<key>_scale``). Checked like a loaded
    state dict's (finite; squares >= 0); ValueError/TypeError naming ``what``."""
    want = engine.state_dtype(slot, key)
    if _dtype_name(value).startswith("float8"):
        if want.name != _dtype_name(value):  # other fp8 codes: their values need their scales' blocks
            raise ValueError(f"{what} is {_dtype_name(value)} and this optimizer stores it as {want.name}; set it "
                             f"as float32 (quantized here) or as {want.name} codes with its {key}_scale")
        return _in_storage(engine, slot, key, value, scale, None, True, what)
    wide = _float32(value, what).reshape(-1)
    _check_moment(key, wide, what)
    return _in_storage(engine, slot, key, value, scale, wide, True, what)


def _in_storage(engine: Engine, slot: int, key: str, value: Any, scale: Any, wide: np.ndarray | None, convert: bool,
                what: str) -> list[tuple[str, np.ndarray]]:
    """State entry ``key`` of ``slot`` (``value``; ``wide``: its checked float32 values, unused for
    fp8 codes of the stored kind) as ``(key, flat array)`` entries in the dtype the engine stores it
    in: fp8 state as codes and ``<key>_scale`` (bit for bit with ``scale``, else quantized per
    block), anything else through ``_stored_as``. Narrowing needs ``convert``."""
    want = engine.state_dtype(slot, key)
    if not want.name.startswith("float8"):
        return [(key, _stored_as(value, wide, want, convert, what))]
    if _dtype_name(value) == want.name:
        if scale is None:
            raise ValueError(f"{what} holds {want.name} codes without their {key}_scale; set both")
        codes, scales = _raw8(value).reshape(-1), _float32(scale, f"{what}_scale").reshape(-1)
    elif not convert:
        raise ValueError(f"{what} is {_dtype_name(value)} and this optimizer stores it as {want.name}: pass "
                         "convert=True to load_state_dict to quantize it")
    else:
        codes, scales = P.quantize(wide.reshape(-1), P.F8E4M3 if want.name == "float8_e4m3fn" else P.F8E5M2)
    return [(key, codes.view(want)), (key + "_scale", scales)]


def _check_moment(key: str, arr: np.ndarray, what: str) -> None:
    if key in ("exp_avg_sq", "max_exp_avg_sq") and not (np.isfinite(arr).all() and (arr >= 0).all()):
        raise ValueError(f"{what} must be finite and >= 0 (it holds squares)")
    if key == "exp_avg" and not np.isfinite(arr).all():
        raise ValueError(f"{what} must be finite")


def _stored_as(value: Any, wide: np.ndarray, dtype: np.dtype, convert: bool, what: str) -> np.ndarray:
    """A state entry in the dtype the optimizer stores it in (``wide``: its float32 copy): the same
    dtype bit for bit; float32 state from narrower (exact); narrower state only with ``convert``
    (round to nearest even, ``reference.precision.narrow``)."""
    have = _dtype_name(value)
    if dtype == np.float32:
        return wide.reshape(-1)
    if have == dtype.name:
        return _raw16(value).reshape(-1).view(dtype)
    if not convert:
        raise ValueError(f"{what} is {have} and this optimizer stores it as {dtype.name}: pass convert=True to "
                         "load_state_dict to round it (to nearest even)")
    kind = P.BF16 if dtype.name == "bfloat16" else P.F16
    return P.narrow(wide.reshape(-1), kind).view(dtype)


def _raw8(value: Any) -> np.ndarray:
    """The uint8 codes of an fp8 array or tensor (ml_dtypes, torch, CuPy), on the host."""
    mod = type(value).__module__
    if mod.startswith("torch"):
        import torch

        return value.detach().to("cpu").contiguous().view(torch.uint8).numpy().copy()
    if mod.startswith("cupy"):
        value = value.get()
    return np.ascontiguousarray(value).view(np.uint8).copy()


def _fp8_values(st: Mapping[str, Any], k: str, slot: Any, where: str) -> np.ndarray:
    """An fp8 moment of a state dict as float32 values (``reference.precision.dequantize`` with the
    block scales beside it, ``<k>_scale``), shaped like the saved array."""
    scale_key = k + "_scale"
    if st.get(scale_key) is None:
        raise ValueError(f"{where}: {k} holds fp8 codes but the state has no {scale_key} (their block scales)")
    scales = _float32(st[scale_key], f"{where}: {scale_key}").reshape(-1)
    blocks = -(-slot.numel // P.FP8_BLOCK)
    if scales.size != blocks:
        raise ValueError(f"{where}: {scale_key} has {scales.size} block scales, expected {blocks} (one per "
                         f"{P.FP8_BLOCK} elements)")
    if not (np.isfinite(scales).all() and (scales >= 0).all()):
        raise ValueError(f"{where}: {scale_key} must be finite and >= 0")
    kind = P.F8E4M3 if _dtype_name(st[k]) == "float8_e4m3fn" else P.F8E5M2
    codes = _raw8(st[k])
    return P.dequantize(codes, scales, kind).reshape(codes.shape)


def _raw16(value: Any) -> np.ndarray:
    """The uint16 bits of a 16-bit float array or tensor (NumPy / ml_dtypes, torch, CuPy), on the host."""
    mod = type(value).__module__
    if mod.startswith("torch"):
        import torch

        return value.detach().to("cpu").contiguous().view(torch.int16).numpy().view(np.uint16).copy()
    if mod.startswith("cupy"):
        value = value.get()
    return np.ascontiguousarray(value).view(np.uint16).copy()


def _dtype_name(value: Any) -> str:
    """The element dtype of a NumPy array, torch tensor or CuPy array, as a NumPy-style name."""
    dt = getattr(value, "dtype", None)
    return str(dt).replace("torch.", "") if type(value).__module__.startswith("torch") else np.dtype(dt).name


def _remainder(value: Any, slot: Any, where: str) -> np.ndarray:
    """A ``param_remainder`` entry: int16 values, the param's size, as a flat NumPy copy."""
    if type(value).__module__.startswith("torch"):
        value = value.detach().to("cpu").numpy()
    elif type(value).__module__.startswith("cupy"):
        value = value.get()
    if not isinstance(value, np.ndarray) or value.dtype != np.int16:
        raise TypeError(f"{where}: param_remainder must be an int16 array, got "
                        f"{getattr(value, 'dtype', type(value).__name__)}")
    if value.size != slot.numel:
        raise ValueError(f"{where}: param_remainder has shape {value.shape}, expected {slot.shape}")
    return value.reshape(-1).copy()


def _saved_algorithm(meta: Mapping[str, Any] | None, state: Mapping[Any, Any],
                     saved_groups: Sequence[Any]) -> tuple[str | None, str]:
    """``("sgd" | "adam" | None, why)``: the algorithm a state dict is from, as far as it tells."""
    if meta is not None and isinstance(meta.get("kind"), str):
        return ("sgd" if meta["kind"] == "SGD" else "adam"), f"kind {meta['kind']!r}"
    keys = {k for st in state.values() if isinstance(st, Mapping) for k in st}
    gkeys = {k for d in saved_groups if isinstance(d, Mapping) for k in d}
    for found, algorithm in ((keys & {"exp_avg", "exp_avg_sq"}, "adam"), (keys & {"momentum_buffer"}, "sgd"),
                             (gkeys & {"betas", "eps", "amsgrad"}, "adam"),
                             (gkeys & {"momentum", "dampening", "nesterov"}, "sgd")):
        if found:
            return algorithm, f"it has {sorted(found)}"
    return None, ""


def _check_algorithm(meta: Mapping[str, Any] | None, state: Mapping[Any, Any], saved_groups: Sequence[Any],
                     algorithm: str, kind: str) -> None:
    saved, why = _saved_algorithm(meta, state, saved_groups)
    if saved is not None and saved != algorithm:
        names = {"sgd": "SGD", "adam": "Adam/AdamW"}
        raise ValueError(f"the state dict is from an {names[saved]} optimizer ({why}); this optimizer is {kind}, "
                         f"an {names[algorithm]} optimizer: their states differ, so it cannot be loaded. "
                         "Nothing was changed")


def _sgd_slot(out: Parsed, i: int, slot: Any, st: Any, where: str, npadam_dict: bool) -> None:
    """Check one param's SGD state into ``out``: ``step`` (npadam's, absent in torch's dicts), the
    momentum buffer if the param has one, the fp32 master of a low-precision param."""
    if st is None or (isinstance(st, Mapping) and not st):
        if npadam_dict:
            raise ValueError(f"state dict has no {where}")
        out.reload_masters.append(i)  # torch: no momentum buffer (yet, or momentum 0): starts fresh
        return
    if not isinstance(st, Mapping):
        raise TypeError(f"{where} must be a mapping, got {type(st).__name__}")
    if "step" in st:
        out.steps[i] = _int(st["step"], f"{where}: step")
    elif npadam_dict:
        raise ValueError(f"{where} lacks ['step']")
    for k in SGD_STATE_KEYS:
        if st.get(k) is None or (k == "master" and slot.dtype == "float32"):
            continue
        arr = _float32(st[k], f"{where}: {k}")
        if arr.size != slot.numel or (arr.ndim and arr.shape != slot.shape and arr.ndim != 1):
            raise ValueError(f"{where}: {k} has shape {arr.shape}, expected {slot.shape}")
        if k == "momentum_buffer":
            if not np.isfinite(arr).all():
                raise ValueError(f"{where}: momentum_buffer must be finite")
            out.started[i] = True
        out.updates.append((i, k, arr.reshape(-1)))
    if slot.dtype != "float32" and st.get("master") is None:
        if npadam_dict:
            raise ValueError(f"{where} lacks the fp32 master of the {slot.dtype} param")
        out.reload_masters.append(i)


def apply(parsed: Parsed, engine: Engine) -> None:
    """Write a parsed state dict into the engine (state, step counts, SGD's started buffers)."""
    engine.write_state(parsed.updates, parsed.amsgrad_buffers)
    engine.steps[...] = parsed.steps
    if parsed.started is not None:
        engine.started[...] = parsed.started
        engine.views_version += 1
    engine.count = parsed.count
