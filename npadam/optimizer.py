"""``AdamW`` and ``Adam`` over flat buffers (torch.optim-style object API).

Parameters may be NumPy arrays, torch CPU tensors or any DLPack producer; they
are updated in place (zero copy). Optimizer state (``exp_avg``, ``exp_avg_sq``,
``max_exp_avg_sq`` and the fp32 master copy of bfloat16/float16 params) lives in
flat float32 buffers laid out by ``npadam.layout.FlatLayout``.

One ``step(grads)``:

1. a read-only pass over the gradients gives the global float64 norm and the
   non-finite flag (fixed blocking: independent of the thread count);
2. any non-finite gradient skips the step: no param, state or step-count change,
   the loss scaler backs off;
3. otherwise one fused pass per flat buffer applies ``scale = inv_loss_scale *
   clip_coef``, updates m, v (and vmax), the fp32 master and writes the
   low-precision copy (round to nearest even). See ``reference.adamw``.

Hyperparameters are read from ``param_groups`` at every step; ``lr``,
``weight_decay`` and each beta may be a float or a ``Schedule`` of the update
index ``k`` (0 for the first successful update). The step count is one Python
int per optimizer; skipped steps do not advance it.
"""

from __future__ import annotations

import bisect
import contextlib
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from reference import adamw as ref

from . import _validate as V
from . import kernels as K
from .interop import import_array, is_read_only_producer
from .layout import KINDS, FlatLayout, storage_dtype
from .scaler import LossScaler
from .schedules import Schedule, ScheduleSet, from_dict

_GROUP_KEYS = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "bias_correction")
FORMAT = "npadam.optimizer/1"


@dataclass(frozen=True)
class StepInfo:
    """What one ``step`` did.

    ``skipped``: a non-finite gradient skipped the step. ``grad_norm``: the global
    L2 norm of the unscaled gradients (float64; None when no norm pass ran).
    ``lr``: the first group's learning rate for this update. ``loss_scale``: the
    scale the gradients were divided by. ``step``: completed updates after this call.
    ``params``: the new parameters when some producer is read-only (JAX), else None.
    """

    skipped: bool
    grad_norm: float | None
    lr: float
    loss_scale: float
    step: int
    params: list[np.ndarray] | None = None


def _value(x: Any, k: int) -> float:
    return float(x(k)) if isinstance(x, Schedule) else float(x)


def _check_hyper(name: str, x: Any, lo: float, hi: float | None = None, hi_open: bool = False) -> Any:
    if isinstance(x, Schedule):
        return x
    return V.real(name, x, lo=lo, hi=hi, hi_open=hi_open)


def _check_group(g: dict[str, Any], where: str) -> None:
    g["lr"] = _check_hyper(f"{where}lr", g["lr"], 0.0)
    betas = g["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"{where}betas must be a pair (beta1, beta2), got {betas!r}")
    g["betas"] = tuple(_check_hyper(f"{where}betas[{i}]", b, 0.0, 1.0, hi_open=True) for i, b in enumerate(betas))
    g["eps"] = V.real(f"{where}eps", g["eps"], lo=0.0)
    g["weight_decay"] = _check_hyper(f"{where}weight_decay", g["weight_decay"], 0.0)
    for flag in ("amsgrad", "maximize", "bias_correction"):
        if not isinstance(g[flag], (bool, np.bool_)):
            raise TypeError(f"{where}{flag} must be a bool, got {g[flag]!r}")


def _split_named(items: Any) -> tuple[list[Any], list[str] | None]:
    if isinstance(items, Mapping):
        return list(items.values()), [str(n) for n in items]
    items = list(items)
    if items and all(isinstance(i, tuple) and len(i) == 2 and isinstance(i[0], str) for i in items):
        return [i[1] for i in items], [i[0] for i in items]
    return items, None


def _byte_range(a: Any) -> tuple[int, int]:
    start = a.__array_interface__["data"][0] if isinstance(a, np.ndarray) else a.data.ptr
    return start, start + a.nbytes


def _host(a: Any) -> np.ndarray:
    """A host (NumPy) copy of a NumPy or CuPy array."""
    return a.copy() if isinstance(a, np.ndarray) else a.get()


def _as_host_array(x: Any) -> Any:
    """A CuPy array (which NumPy cannot convert implicitly) as a NumPy array; anything else as is."""
    return x.get() if type(x).__module__.startswith("cupy") and hasattr(x, "get") else x


def _check_dtype(name: str, dtype: str, what: str) -> None:
    if dtype not in KINDS:
        raise TypeError(f"{what} has dtype {dtype}; npadam updates float32, bfloat16 or float16 "
                        "parameters with float32, bfloat16 or float16 gradients")


def _check_no_overlap(arrays: Sequence[np.ndarray], names: Sequence[str], what: str) -> None:
    spans = sorted((*_byte_range(a), n) for a, n in zip(arrays, names) if a.nbytes)
    for (s0, e0, n0), (s1, e1, n1) in zip(spans, spans[1:]):
        if s1 < e0:
            raise ValueError(f"{what} {n0!r} and {n1!r} share memory (aliased buffers)")


class _AdamBase:
    _decoupled = True

    def __init__(self, params: Any, lr: float | Schedule | ScheduleSet = 1e-3,
                 betas: tuple[float | Schedule, float | Schedule] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float | Schedule = 0.0, amsgrad: bool = False, maximize: bool = False,
                 bias_correction: bool = True, max_grad_norm: float | None = None,
                 loss_scaler: LossScaler | None = None, skip_nonfinite: bool = True, kernel: str | None = None,
                 num_threads: int | None = None, offload_fraction: float = 0.0, comm: Any = None) -> None:
        if isinstance(lr, ScheduleSet):
            sset = lr
            lr = sset.lr
            if sset.weight_decay is not None:
                weight_decay = sset.weight_decay
            betas = (sset.beta1 if sset.beta1 is not None else betas[0],
                     sset.beta2 if sset.beta2 is not None else betas[1])
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, bias_correction=bias_correction)
        _check_group(defaults, "")
        self.defaults = defaults
        self.max_grad_norm = None if max_grad_norm is None else V.real("max_grad_norm", max_grad_norm,
                                                                       lo=0.0, lo_open=True)
        if loss_scaler is not None and not isinstance(loss_scaler, LossScaler):
            raise TypeError(f"loss_scaler must be a npadam.LossScaler, got {type(loss_scaler).__name__}")
        self.loss_scaler = loss_scaler
        self.skip_nonfinite = bool(skip_nonfinite)
        self._kernel_arg = kernel
        self.kernel = K.check_kernel(kernel)
        self.num_threads = None if num_threads is None else V.integer("num_threads", num_threads, lo=1)
        self.offload_fraction = V.real("offload_fraction", offload_fraction, lo=0.0, hi=1.0)
        if comm is not None:
            raise ValueError("comm: sharding across ranks is not available in this version of npadam")
        self._step = 0
        self._build(params)

    # ------------------------------------------------------------------ set-up
    def _build(self, params: Any) -> None:
        if isinstance(params, (np.ndarray,)) or hasattr(params, "__dlpack__"):
            raise TypeError("params must be a list of arrays (or of param-group dicts), not a single array")
        raw = list(params.items()) if isinstance(params, Mapping) else list(params)
        if not raw:
            raise ValueError("optimizer got an empty parameter list")
        group_specs = raw if all(isinstance(g, Mapping) and "params" in g for g in raw) else [{"params": params}]
        self.param_groups: list[dict[str, Any]] = []
        objs: list[Any] = []
        names: list[str] = []
        for gi, spec in enumerate(group_specs):
            extra = sorted(set(spec) - set(_GROUP_KEYS) - {"params", "names"})
            if extra:
                raise ValueError(f"param_groups[{gi}] has unknown keys {extra}; allowed: {', '.join(_GROUP_KEYS)}")
            items, gnames = _split_named(spec["params"])
            gnames = list(spec.get("names") or gnames or [str(len(objs) + i) for i in range(len(items))])
            if len(gnames) != len(items):
                raise ValueError(f"param_groups[{gi}] has {len(items)} params but {len(gnames)} names")
            group = {**self.defaults, **{k: spec[k] for k in _GROUP_KEYS if k in spec}}
            _check_group(group, f"param_groups[{gi}].")
            group["params"] = items
            group["names"] = gnames
            self.param_groups.append(group)
            objs += items
            names += gnames
        imported = [import_array(o, what=f"param {n!r}") for o, n in zip(objs, names)]
        arrays = [a for a, _ in imported]
        dnames = [d for _, d in imported]
        for a, d, n in zip(arrays, dnames, names):
            _check_dtype(n, d, f"param {n!r}")
            if not a.flags.c_contiguous:
                raise ValueError(f"param {n!r} is not contiguous (strides {a.strides}); pass contiguous arrays")
        self._place(arrays, names)
        specs = []
        for gi, g in enumerate(self.param_groups):
            for _ in g["params"]:
                i = len(specs)
                specs.append((names[i], arrays[i].shape, dnames[i], gi))
        _check_no_overlap(arrays, names, "params")
        self.layout = FlatLayout(specs)
        self._objects = objs
        self._readonly = [not getattr(a.flags, "writeable", True) or is_read_only_producer(o)
                          for a, o in zip(arrays, objs)]
        with self._on_device():
            # read-only producers (JAX) are never written: keep an owned copy and return it
            self._arrays = [a.copy() if ro else a for a, ro in zip(arrays, self._readonly)]
            self._make_buffers()
        # byte ranges of the arrays the kernels write, sorted: no grad may alias one (checked each step)
        self._param_spans = sorted((*_byte_range(a), n) for a, n in zip(self._arrays, names) if a.nbytes)

    def _make_buffers(self) -> None:
        xp = self._xp
        self._bufs: list[K.BufferView] = []
        for bi, b in enumerate(self.layout.buffers):
            views = [self._arrays[t].reshape(-1) for t in b.tensors]
            master = None
            if b.dtype != "float32":
                master = xp.zeros(b.size, dtype=np.float32)
                for t, view in zip(b.tensors, views):
                    off = self.layout.slots[t].offset
                    wide = _host(view).view(storage_dtype(b.dtype)).astype(np.float32)
                    master[off: off + view.size] = wide if xp is np else xp.asarray(wide)
            amsgrad = self.param_groups[b.group]["amsgrad"]
            self._bufs.append(K.BufferView(
                params=views, grads=[], offsets=self.layout.offsets(bi), sizes=self.layout.sizes(bi),
                size=b.size, master=master, exp_avg=xp.zeros(b.size, np.float32),
                exp_avg_sq=xp.zeros(b.size, np.float32),
                max_exp_avg_sq=xp.zeros(b.size, np.float32) if amsgrad else None, pdtype=b.dtype))
        self._sync()  # the state was written on this stream; a step may run on another one

    def _on_device(self) -> Any:
        """Context: the params' GPU as CuPy's current device (nothing on the host)."""
        return contextlib.nullcontext() if self.device == "cpu" else self._xp.cuda.Device(self._device_id)

    def _sync(self) -> None:
        """Wait for all work on the params' GPU (every stream); nothing on the host."""
        if self.device == "gpu":
            self._xp.cuda.Device(self._device_id).synchronize()

    def _place(self, arrays: Sequence[Any], names: Sequence[str]) -> None:
        """Host or GPU: pick the array module and the kernel; all params on one device."""
        gpu = [not isinstance(a, np.ndarray) for a in arrays]
        if any(gpu) and not all(gpu):
            first = names[gpu.index(True)]
            other = names[gpu.index(False)]
            raise ValueError(f"params live in different memories: {first!r} on a GPU, {other!r} on the host")
        self.device = "gpu" if gpu and all(gpu) else "cpu"
        self._device_id = None
        if self.device == "cpu":
            if self._kernel_arg == "gpu":
                raise ValueError("kernel='gpu' needs params in GPU memory (CuPy arrays, torch CUDA tensors, ...)")
            self._xp = np
            return
        if self._kernel_arg not in (None, "gpu"):
            raise ValueError(f"params are on a GPU: kernel must be 'gpu' (or None), got {self._kernel_arg!r}")
        devices = {a.device.id for a in arrays}
        if len(devices) > 1:
            raise ValueError(f"params live on several GPUs {sorted(devices)}; use one optimizer per device")
        if self.offload_fraction > 0:
            raise ValueError("offload_fraction > 0 (optimizer state in host memory for GPU params) is not "
                             "available in this version of npadam")
        import cupy

        self._xp = cupy
        self._device_id = devices.pop()
        self.kernel = "gpu"

    # ------------------------------------------------------------------ step
    @property
    def step_count(self) -> int:
        """Completed (not skipped) updates."""
        return self._step

    @property
    def params(self) -> list[Any]:
        """The parameters: the caller's objects, or the updated copies of read-only ones."""
        return [a if ro else o for o, a, ro in zip(self._objects, self._arrays, self._readonly)]

    def _collect_grads(self, grads: Any) -> list[np.ndarray]:
        names = self.layout.names
        if grads is None:
            if not all(hasattr(o, "grad") for o in self._objects):
                raise ValueError("step() needs grads (in params order) unless every param carries a .grad")
            grads = [o.grad for o in self._objects]
        elif isinstance(grads, Mapping):
            missing = [n for n in names if n not in grads]
            unknown = [n for n in grads if n not in set(names)]
            if missing or unknown:
                raise ValueError(f"grads dict does not match the params: missing {missing}, unknown {unknown}")
            grads = [grads[n] for n in names]
        else:
            grads = list(grads)
        if len(grads) != len(names):
            raise ValueError(f"expected {len(names)} gradients (one per param), got {len(grads)}")
        out, dnames = [], []
        for g, slot in zip(grads, self.layout.slots):
            if g is None:
                raise ValueError(f"param {slot.name!r} has no gradient")
            a, d = import_array(g, what=f"grad of {slot.name!r}")
            if isinstance(a, np.ndarray) != (self.device == "cpu"):
                raise ValueError(f"grad of {slot.name!r} is in {'host' if isinstance(a, np.ndarray) else 'GPU'} "
                                 f"memory, its param in {'host' if self.device == 'cpu' else 'GPU'} memory")
            if self.device == "gpu" and a.device.id != self._device_id:
                raise ValueError(f"grad of {slot.name!r} is on GPU {a.device.id}, the params on GPU {self._device_id}")
            if a.shape != slot.shape:
                raise ValueError(f"grad of {slot.name!r} has shape {a.shape}, expected {slot.shape}")
            _check_dtype(slot.name, d, f"grad of {slot.name!r}")
            if not a.flags.c_contiguous:
                raise ValueError(f"grad of {slot.name!r} is not contiguous (strides {a.strides})")
            out.append(a)
            dnames.append(d)
        for b in self.layout.buffers:
            kinds = {dnames[t] for t in b.tensors}
            if len(kinds) > 1:
                raise TypeError(f"grads of param group {b.group} ({b.dtype} params) mix dtypes {sorted(kinds)}; "
                                "use one gradient dtype per group and param dtype")
        self._grad_dtypes = dnames
        spans = self._param_spans
        starts = [s[0] for s in spans]
        for g, n in zip(out, names):
            if not g.nbytes:
                continue
            gs, ge = _byte_range(g)
            i = bisect.bisect_right(starts, ge - 1) - 1
            if i >= 0 and spans[i][1] > gs:
                raise ValueError(f"grad of {n!r} shares memory with param {spans[i][2]!r}")
        return out

    def _hyper(self, k: int) -> list[dict[str, Any]]:
        out = []
        for gi, g in enumerate(self.param_groups):
            _check_group(g, f"param_groups[{gi}].")
            out.append(dict(lr=_value(g["lr"], k), beta1=_value(g["betas"][0], k), beta2=_value(g["betas"][1], k),
                            weight_decay=_value(g["weight_decay"], k), eps=g["eps"], amsgrad=bool(g["amsgrad"]),
                            maximize=bool(g["maximize"]), bias_correction=bool(g["bias_correction"])))
        return out

    def _run(self, fn: Any, *args: Any) -> Any:
        if self.num_threads is None or self.kernel != "cpu":
            return fn(*args)
        import numba

        before = numba.get_num_threads()
        numba.set_num_threads(min(self.num_threads, numba.config.NUMBA_NUM_THREADS))
        try:
            return fn(*args)
        finally:
            numba.set_num_threads(before)

    def step(self, grads: Any = None) -> StepInfo:
        """One update. ``grads``: arrays in params order (or a dict by name); None reads ``.grad``.

        On a GPU the kernels run on CuPy's current stream (see ``npadam.kernels.gpu``):
        run every step on the same stream."""
        with self._on_device():
            return self._update(grads)

    def _update(self, grads: Any) -> StepInfo:
        arrays = self._collect_grads(grads)
        k = self._step
        hyper = self._hyper(k)
        kern = K.get(self.kernel)
        for bi, (b, buf) in enumerate(zip(self.layout.buffers, self._bufs)):
            buf.grads = [arrays[t].reshape(-1) for t in b.tensors]
            buf.gdtype = self._grad_dtypes[b.tensors[0]] if b.tensors else "float32"
            if hyper[b.group]["amsgrad"] and buf.max_exp_avg_sq is None:
                buf.max_exp_avg_sq = buf.exp_avg_sq.copy()
        scaler = self.loss_scaler
        loss_scale = scaler.scale if scaler is not None else 1.0
        inv = scaler.inv_scale if scaler is not None else 1.0
        norm = None
        if self.skip_nonfinite or self.max_grad_norm is not None or scaler is not None:
            sums = [self._run(kern.block_sumsq, buf, ref.NORM_BLOCK) for buf in self._bufs]
            if self.device == "gpu":  # one device-to-host copy per step: the block sums
                sums = [self._xp.concatenate(sums).get()] if sums else []
            flat = np.concatenate(sums) if sums else np.zeros(0)
            total = float(np.cumsum(flat)[-1]) if flat.size else 0.0
            norm = math.sqrt(total) * inv
            if not math.isfinite(total) and (self.skip_nonfinite or scaler is not None):
                if scaler is not None:
                    scaler.update(True)
                for buf in self._bufs:
                    buf.grads = []
                return StepInfo(True, norm, hyper[0]["lr"], loss_scale, self._step, self._new_params())
        scale = inv * ref.clip_coefficient(norm, self.max_grad_norm) if norm is not None else inv
        for b, buf in zip(self.layout.buffers, self._bufs):
            h = hyper[b.group]
            s = ref.host_scalars(lr=h["lr"], beta1=h["beta1"], beta2=h["beta2"], eps=h["eps"],
                                 weight_decay=h["weight_decay"], step=k + 1, decoupled=self._decoupled,
                                 bias_correction=h["bias_correction"], grad_scale=scale)
            flags = K.Flags(decoupled=self._decoupled, amsgrad=h["amsgrad"], maximize=h["maximize"])
            self._run(kern.adam_step, buf, s, flags)
            buf.grads = []
        self._step += 1
        if scaler is not None:
            scaler.update(False)
        return StepInfo(False, norm, hyper[0]["lr"], loss_scale, self._step, self._new_params())

    def _new_params(self) -> list[np.ndarray] | None:
        return [a for a in self._arrays] if any(self._readonly) else None

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the ``.grad`` of params that carry one (torch tensors): None, or zeros."""
        for o in self._objects:
            if getattr(o, "grad", None) is not None:
                if set_to_none:
                    o.grad = None
                else:
                    o.grad.zero_()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """torch's layout (``state`` by param index with ``step``, ``exp_avg``, ``exp_avg_sq``,
        ``max_exp_avg_sq``; ``param_groups`` with ``params`` indices) plus ``names``, ``shapes``,
        ``dtypes``, the fp32 ``master`` of low-precision params and the loss scaler. Arrays are copies
        in each param's shape; Schedules are stored as their ``to_dict()``."""
        self._sync()  # the last step may have run on another stream than the copies below
        state: dict[int, dict[str, Any]] = {}
        for i, slot in enumerate(self.layout.slots):
            buf = self._bufs[slot.buffer]
            sl = slice(slot.offset, slot.offset + slot.numel)
            st: dict[str, Any] = {"step": self._step, "exp_avg": _host(buf.exp_avg[sl]).reshape(slot.shape),
                                  "exp_avg_sq": _host(buf.exp_avg_sq[sl]).reshape(slot.shape)}
            if buf.max_exp_avg_sq is not None:
                st["max_exp_avg_sq"] = _host(buf.max_exp_avg_sq[sl]).reshape(slot.shape)
            if buf.master is not None:
                st["master"] = _host(buf.master[sl]).reshape(slot.shape)
            state[i] = st
        groups, start = [], 0
        for g in self.param_groups:
            d = {k: _dump(g[k]) for k in _GROUP_KEYS}
            d["params"] = list(range(start, start + len(g["params"])))
            start += len(g["params"])
            groups.append(d)
        return {"format": FORMAT, "kind": type(self).__name__, "step": self._step, "state": state,
                "param_groups": groups, "names": self.layout.names,
                "shapes": [list(s.shape) for s in self.layout.slots], "dtypes": [s.dtype for s in self.layout.slots],
                "loss_scaler": None if self.loss_scaler is None else self.loss_scaler.state_dict()}

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        """Restore ``state_dict()`` output. Names, shapes and dtypes must match; nothing changes on error."""
        if sd.get("format") != FORMAT:
            raise ValueError(f"not an npadam optimizer state dict (format {sd.get('format')!r}, expected {FORMAT!r})")
        slots = self.layout.slots
        if list(sd["names"]) != self.layout.names:
            raise ValueError(f"state dict params {list(sd['names'])[:5]}... do not match the optimizer's "
                             f"{self.layout.names[:5]}...")
        for slot, shape, dt in zip(slots, sd["shapes"], sd["dtypes"]):
            if tuple(shape) != slot.shape or dt != slot.dtype:
                raise ValueError(f"param {slot.name!r}: state dict has shape {tuple(shape)} {dt}, "
                                 f"optimizer has {slot.shape} {slot.dtype}")
        if len(sd["param_groups"]) != len(self.param_groups):
            raise ValueError(f"state dict has {len(sd['param_groups'])} param groups, optimizer has "
                             f"{len(self.param_groups)}")
        step = V.integer("step", sd["step"], lo=0)
        new_groups = []
        for gi, (g, d) in enumerate(zip(self.param_groups, sd["param_groups"])):
            if len(d["params"]) != len(g["params"]):
                raise ValueError(f"param_groups[{gi}] has {len(d['params'])} params in the state dict, "
                                 f"{len(g['params'])} here")
            h = {k: _load(d[k]) for k in _GROUP_KEYS}
            h["betas"] = tuple(h["betas"])
            _check_group(h, f"state dict param_groups[{gi}].")
            new_groups.append(h)
        updates = []
        for i, slot in enumerate(slots):
            st = sd["state"].get(i, sd["state"].get(str(i)))
            if st is None:
                raise ValueError(f"state dict has no state for param {slot.name!r}")
            for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "master"):
                if key in st:
                    arr = np.asarray(_as_host_array(st[key]), dtype=np.float32)
                    if arr.shape != slot.shape:
                        raise ValueError(f"state {key!r} of {slot.name!r} has shape {arr.shape}, expected {slot.shape}")
                    updates.append((slot, key, arr))
            if "master" not in st and slot.dtype != "float32":
                raise ValueError(f"state dict lacks the fp32 master of {slot.name!r}")
            if new_groups[slot.group]["amsgrad"] and "max_exp_avg_sq" not in st:
                raise ValueError(f"state dict lacks max_exp_avg_sq of {slot.name!r} (amsgrad)")
        scaler_sd = sd.get("loss_scaler")
        if scaler_sd is not None and self.loss_scaler is not None:
            LossScaler().load_state_dict(scaler_sd)  # validate before changing anything
        # everything checked: apply
        for g, h in zip(self.param_groups, new_groups):
            g.update(h)
        self._sync()  # a step still running on another stream must not overwrite what is loaded
        with self._on_device():
            for buf, b in zip(self._bufs, self.layout.buffers):
                if self.param_groups[b.group]["amsgrad"] and buf.max_exp_avg_sq is None:
                    buf.max_exp_avg_sq = self._xp.zeros(b.size, np.float32)
            for slot, key, arr in updates:
                buf = self._bufs[slot.buffer]
                target = {"exp_avg": buf.exp_avg, "exp_avg_sq": buf.exp_avg_sq,
                          "max_exp_avg_sq": buf.max_exp_avg_sq, "master": buf.master}[key]
                if target is not None:
                    flat = arr.reshape(-1)
                    target[slot.offset: slot.offset + slot.numel] = flat if self._xp is np else self._xp.asarray(flat)
        self._sync()
        self._step = step
        if scaler_sd is not None and self.loss_scaler is not None:
            self.loss_scaler.load_state_dict(scaler_sd)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self.layout.slots)} params in {len(self.layout.buffers)} buffers, "
                f"{self.layout.numel:,} elements, kernel={self.kernel!r}, step={self._step})")


def _dump(x: Any) -> Any:
    if isinstance(x, Schedule):
        return {"schedule": x.to_dict()}
    if isinstance(x, tuple):
        return [_dump(v) for v in x]
    return x


def _load(x: Any) -> Any:
    if isinstance(x, Mapping) and "schedule" in x:
        return from_dict(x["schedule"])
    if isinstance(x, list):
        return [_load(v) for v in x]
    return x


class AdamW(_AdamBase):
    """AdamW (decoupled weight decay, ``torch.optim.AdamW``): ``p *= 1 - lr * wd`` before the Adam step.

    The weight decay is multiplied by the learning rate, as in PyTorch. See the
    module docstring for the step and ``reference.adamw`` for the exact arithmetic.

    >>> import numpy as np, npadam
    >>> w = np.ones(4, np.float32)
    >>> opt = npadam.AdamW([w], lr=0.1, weight_decay=0.0)
    >>> opt.step([np.ones(4, np.float32)]).step, [round(float(x), 6) for x in w]
    (1, [0.9, 0.9, 0.9, 0.9])
    """

    _decoupled = True

    def __init__(self, params: Any, lr: float | Schedule | ScheduleSet = 1e-3,
                 betas: tuple[float | Schedule, float | Schedule] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float | Schedule = 1e-2, **kwargs: Any) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **kwargs)


class Adam(_AdamBase):
    """Adam with L2 weight decay (``torch.optim.Adam``): ``g += wd * p`` before the moments."""

    _decoupled = False

    def __init__(self, params: Any, lr: float | Schedule | ScheduleSet = 1e-3,
                 betas: tuple[float | Schedule, float | Schedule] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float | Schedule = 0.0, **kwargs: Any) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **kwargs)

