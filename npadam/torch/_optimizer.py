"""``npadam.torch.AdamW`` / ``Adam`` / ``SGD``: real ``torch.optim.Optimizer`` subclasses over npadam's engine.

``param_groups`` and ``state`` are torch's own structures; ``step()`` gathers the
pointers of this step's params and grads and calls the shared engine
(``npadam._engine``), which runs the same kernels as ``npadam.AdamW``. What a
step costs in Python per tensor is a handful of attribute reads (grad, pointer,
version, dtype, shape), measured in ``tools/bench_torch.py``.

Parameters are followed, not their storage: a param whose storage was replaced
(``p.data = ...``, ``model.to(...)`` keeping dtype and shape) is re-bound, and a
low-precision param edited in any way (``load_state_dict``, re-init, EMA swap) is
taken by the kernels where its bits are no longer its fp32 master's rounding
(``current_master``), so npadam never writes a stale master over the caller's
values and never drops a master's precision where the value did not change. After its in-place update npadam
bumps the params' version counters, as torch's own optimizers do.

With ``comm=`` (a ``npadam.distributed`` communicator: ``init("torch")`` inside torchrun,
``init("mpi")`` under mpiexec) each rank keeps the state of one shard of every flat buffer (ZeRO-1/2,
the same as ``npadam.AdamW(comm=)``, ``npadam._sharded``; in the place of
``torch.distributed.optim.ZeroRedundancyOptimizer``): every rank puts its local grads in ``p.grad``
and calls ``step()``, the grads are averaged across ranks, each rank updates its shard and every rank
ends with the full new params, bit for bit what one process would compute from the averaged grads.
Construction, ``add_param_group``, ``step``, ``load_state_dict`` and ``full_state_dict`` are
collectives; a bad value on one rank raises on every rank before anything changes. ``state[p]``
holds ``step`` and the param's state tensors *flat*, over the param's elements in this rank's shard
only (empty when it has none there; ``state_dict()["npadam"]["shard"]["ranges"]`` says which):
views of npadam's state, as ``ZeroRedundancyOptimizer.state`` holds only its rank's params.
``state_dict()`` is this rank's shard, ``full_state_dict()`` the whole state. CPU or CUDA params:
with CUDA params the step's buffers are on the GPU, on torch's current stream; a communicator of
GPU memory (NCCL, torch with nccl) takes them as they are, one of host memory (MPI, gloo) through
host copies. ``offload_fraction`` and ``nvme_offload_fraction`` place each rank's shard of the
state as they place a whole buffer's (``state[p]`` of a param there: flat copies, as its views).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import operator
import os
import warnings
import weakref
from collections import defaultdict
from typing import Any, Callable, Iterable, Sequence

import ml_dtypes
import numpy as np
import torch

from .. import _hyper as H
from .. import _state
from .. import kernels as K
from ..interop import import_array
from ..layout import FlatLayout
from .._params import check_apart, check_no_overlap
from .._engine import Engine, StepInfo, step_options
from .._placement import disk_placement, engine_offload, offload_placement
from .._precision import state_precision
from .._sharded import Sharding, hand_over, layout_digest, unshard_state_dict
from ..reference import precision as prec
from ..scaler import LossScaler

_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_NAMES = ("float32", "bfloat16", "float16")
_ITEMSIZE = np.asarray([4, 2, 2], dtype=np.int64)


def _scalar(x: Any, name: str = "hyperparameter") -> Any:
    """A one-element tensor hyperparameter (torch allows ``lr=torch.tensor(1e-3)``) as a float."""
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise ValueError(f"{name} must be a number or a one-element tensor, got a tensor of shape "
                             f"{tuple(x.shape)}")
        return float(x)
    return x


_FLOAT_KEYS = {"adam": ("lr", "eps", "weight_decay"), "sgd": ("lr", "momentum", "dampening", "weight_decay")}


def _check(g: dict[str, Any], where: str, spec: H.Spec = H.ADAM) -> None:
    for key in _FLOAT_KEYS[spec.algorithm]:
        g[key] = _scalar(g[key], f"{where}{key}")
    if isinstance(g.get("betas"), (tuple, list)):
        g["betas"] = tuple(_scalar(b, f"{where}betas") for b in g["betas"])
    spec.check_group(g, where, schedules=False)


class _State(defaultdict):
    """``optimizer.state``: torch's ``defaultdict(dict)`` that notes when entries are set or removed,
    so that a step can tell in O(1) whether the caller replaced or reset some (``_adopt_state``).
    Changes inside an entry (``state[p]["exp_avg"].zero_()``) need no noting: the entries' tensors
    are views of npadam's state; replacing a single key inside an entry is not followed."""

    dirty = False

    def _touch(name: str):  # noqa: N805 - a decorator factory used in the class body
        base = getattr(defaultdict, name)

        def method(self, *args, **kwargs):
            self.dirty = True
            return base(self, *args, **kwargs)

        method.__name__ = name
        return method

    __setitem__ = _touch("__setitem__")
    __delitem__ = _touch("__delitem__")
    pop = _touch("pop")
    popitem = _touch("popitem")
    clear = _touch("clear")
    update = _touch("update")
    setdefault = _touch("setdefault")
    del _touch

    def __reduce__(self):
        return (_State, (dict,), None, None, iter(self.items()))


def _digest(t: torch.Tensor) -> bytes:
    """A fingerprint of a tensor's bytes (in-place edits of handed-out disk state are found by it)."""
    return hashlib.blake2b(_numpy(t.detach().contiguous().view(-1)).view(np.uint8), digest_size=16).digest()


class _DiskEntry(dict):
    """``state[p]`` for a param whose state lives in files (``nvme_offload_fraction``): ``step`` as
    usual; ``exp_avg``, ``exp_avg_sq``, ... made on access from the disk (``_Base._hand_out``), then
    kept in step with it like the views of memory slots. Keys the caller sets are taken in at the
    next step, as a replaced entry is."""

    def __init__(self, opt: Any, slot: int, base: dict[str, Any]) -> None:
        super().__init__(base)
        self._opt, self._slot, self._set = opt, slot, set()
        self.changed = False

    def _lazy(self) -> list[str]:
        eng = self._opt._engine
        return [k for k in eng._state_keys(self._slot) if k not in dict.keys(self)]

    def __getitem__(self, key: str) -> Any:
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        if key in self._lazy():
            return self._opt._hand_out(self._slot, key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key) or key in self._lazy()

    def keys(self) -> Any:
        return list(dict.keys(self)) + self._lazy()

    def __iter__(self) -> Any:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def items(self) -> Any:
        return [(k, self[k]) for k in self.keys()]

    def values(self) -> Any:
        return [self[k] for k in self.keys()]

    def __setitem__(self, key: str, value: Any) -> None:
        dict.__setitem__(self, key, value)
        self._set.add(key)
        self.changed = True

    def __delitem__(self, key: str) -> None:
        raise TypeError("state entries of params whose state is on disk do not support deleting a key; "
                        "replace the entry (optimizer.state[p] = {...}) or empty it to reset the param")

    def assigned(self) -> dict[str, Any]:
        """What the caller set in this entry (taken in by ``_adopt_state``), plus ``step``."""
        return {k: dict.__getitem__(self, k) for k in self._set | {"step"} if dict.__contains__(self, k)}


class _Base(torch.optim.Optimizer):
    """What ``AdamW``, ``Adam`` and ``SGD`` share; ``_spec`` (``npadam._hyper.ADAM``/``SGD``) names the
    algorithm and its group keys, ``defaults`` are torch's group defaults of the subclass."""

    _spec = H.ADAM
    _decoupled = True

    def __init__(self, params: Any, defaults: dict[str, Any], *, max_grad_norm: float | None = None,
                 loss_scaler: LossScaler | None = None, skip_nonfinite: bool = True, kernel: str | None = None,
                 num_threads: int | None = None, flat_storage: bool = False, offload_fraction: float = 0.0,
                 comm: Any = None, nvme_offload_fraction: float = 0.0,
                 nvme_offload_dir: str | os.PathLike[str] | None = None, nvme_staging_bytes: int = 64 << 20,
                 host_state_bytes: int | None = None, pin_memory: bool = True,
                 gpu_state_bytes: int | None = None, exp_avg_dtype: Any = "float32", exp_avg_sq_dtype: Any = "float32",
                 store_param_remainders: bool = False, rounding: str = "nearest", seed: int = 0,
                 main_params_dtype: Any = "float32", bucket_bytes: int | None = None,
                 overlap_grads: bool = False) -> None:
        #: the state sharded across the ranks of ``comm`` (``npadam._sharded``), or None
        self._sharding = Sharding(comm) if comm is not None else None
        self._engine: Engine | None = None
        #: buckets handed over by ``grads_ready`` for the next step: bucket -> its params' grads then
        self._early: dict[int, list[Any]] = {}
        self._hooks: list[Any] = []
        self._hooked: weakref.WeakSet = weakref.WeakSet()  # params with an overlap_grads hook
        self._slot_of: tuple[Any, dict[int, int]] = (None, {})
        self._fired: dict[int, set[int]] = {}  # overlap_grads: bucket -> params whose grads are final
        self._no_sync = False
        self._overlap_error: BaseException | None = None  # a second backward pass after buckets were sent
        try:  # with comm, a bad argument on one rank raises on every rank (the agreement in _build)
            from .. import _validate as V

            #: params of one group and dtype fill flat buffers of about this many bytes (None: one buffer)
            self.bucket_bytes = None if bucket_bytes is None else V.integer("bucket_bytes", bucket_bytes, lo=1)
            self.overlap_grads = V.flag("overlap_grads", overlap_grads)
            _check(defaults, "", self._spec)
            self._precision = state_precision(exp_avg_dtype, exp_avg_sq_dtype, store_param_remainders, rounding,
                                              seed, self._spec.algorithm, main_params_dtype)
            o = step_options(max_grad_norm, loss_scaler, skip_nonfinite, num_threads, comm, shardable=True)
            self._offload = offload_placement(offload_fraction, pin_memory, gpu_state_bytes)
            self._disk = disk_placement(nvme_offload_fraction, nvme_offload_dir, nvme_staging_bytes,
                                        host_state_bytes)
            self.offload_fraction = self._offload.fraction if self._offload is not None else 0.0
            self.pin_memory = bool(pin_memory)
            self._handed: dict[tuple[int, str], tuple[Any, bytes]] = {}  # disk slots' state tensors given out
            self._held: dict[tuple[int, str], torch.Tensor] = {}  # ... and kept alive until the next step
            self.max_grad_norm, self.loss_scaler = o.max_grad_norm, o.loss_scaler
            self.skip_nonfinite = o.skip_nonfinite
            self.num_threads = o.num_threads
            self._kernel_arg = K.check_kernel(kernel) if kernel is not None else None
            if not isinstance(flat_storage, bool):
                raise TypeError(f"flat_storage must be a bool, got {flat_storage!r}")
            self.flat_storage = flat_storage
            self._params: list[torch.Tensor] = []
            self._ngroups = 0
            self.last_step: StepInfo | None = None
            self._flat_warned = False
            super().__init__(params, defaults)
        except Exception as e:
            if self._sharding is None:
                raise
            self._sharding.agree_layout(None, e)
        self._build()

    # ------------------------------------------------------------------ structure
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's ``add_param_group``; the new params' state starts at zero. ``_build`` checks the group
        (at construction it runs once, after torch has added every group); a refused group is removed."""
        if self._engine is None:  # construction: torch's __init__ adds the groups, _build checks them all once
            return super().add_param_group(param_group)
        try:  # torch's checks: with comm, a failure on one rank raises on every rank
            super().add_param_group(param_group)
        except Exception as e:
            if self._sharding is None:
                raise
            self._sharding.agree_layout(None, e)
        try:
            self._build()
        except Exception:
            self.param_groups.pop()
            raise

    def _names(self) -> list[str]:
        names = []
        for g in self.param_groups:
            pn = g.get("param_names")
            names += list(pn) if pn else [str(len(names) + i) for i in range(len(g["params"]))]
        return names

    def _build(self) -> None:
        """Lay out every param (new groups appended to the existing layout) and adopt their storage.

        Every check runs before anything changes: a refused group leaves the optimizer as it was.
        With ``comm`` a collective: the ranks' layouts are compared, and a check failing on one rank
        raises on every rank (``Sharding.agree_layout``)."""
        try:
            checked = self._checked_build()
        except Exception as e:
            if self._sharding is None:
                raise
            self._sharding.agree_layout(None, e)
        if checked is None:
            return self._relayout()
        first, old, params, layout, device, kernel, nbytes = checked
        if self._sharding is not None:  # the optimizer and its state precision too: they decide the layout
            what = (f"{type(self).__name__} with state {_shown(self._precision.describe())}, params in "
                    f"{'GPU' if device.type == 'cuda' else 'host'} memory")  # ranks on other memories disagree
            self._sharding.agree_layout(layout_digest(layout, what), None)
        gpu = device.type == "cuda"
        # everything checked: change
        offload = engine_offload(self._offload, self._disk, "gpu" if gpu else "cpu")
        if self._engine is None:
            self._engine = Engine(layout, device="gpu" if gpu else "cpu", device_id=device.index if gpu else None,
                                  kernel=kernel, decoupled=self._decoupled, num_threads=self.num_threads,
                                  algorithm=self._spec.algorithm, disk=self._disk, offload=offload,
                                  precision=self._precision, sharding=self._sharding)
            self._device = device
            self._flat: list[tuple[torch.Tensor, torch.Tensor | None, list[int]]] = []
        else:
            self._engine.extend(layout)
        eng = self._engine
        self._params = params
        self._ngroups = len(self.param_groups)
        if self.flat_storage:
            self._make_flat(range(len(old.buffers), len(layout.buffers)))
        for i in range(first, len(params)):
            eng.load_master(i, import_array(params[i], what=f"param {layout.names[i]!r}")[0])
        eng.sync()
        self._pptrs = np.asarray([p.data_ptr() for p in params], dtype=np.int64)
        self._pbytes = nbytes
        self._numel = np.asarray([p.numel() for p in params], dtype=np.int64)
        self._pptr_list = self._pptrs.tolist()
        self._shapes = [p.shape for p in params]
        # only low-precision params have a master that an in-place edit can make stale
        self._low = [i for i, sl in enumerate(layout.slots) if sl.dtype != "float32"]
        self._versions = [params[i]._version for i in self._low]
        self._last_grads: list[Any] = [None] * len(params)
        self._grad_cache: tuple[list[int], np.ndarray, np.ndarray, list[str]] | None = None
        self._state_views()
        if self.overlap_grads:
            self._hook_grads(first)

    def _checked_build(self) -> tuple | None:
        """Everything ``_build`` checks: ``(first new param, old layout, params, new layout, device,
        kernel, param bytes)``, or None when the state must be laid out again (``_relayout``)."""
        first = len(self._params)
        for g in self.param_groups[self._ngroups if self._engine is not None else 0:]:
            for key, value in self.defaults.items():
                g.setdefault(key, value)  # a group appended without some keys: torch's defaults rule
        params = [p for g in self.param_groups for p in g["params"]]
        names = self._names()
        old = self._engine.layout if self._engine is not None else FlatLayout([])
        if len(params) < first or any(a is not b for a, b in zip(params, self._params)):
            return self._no_relayout("params were removed from or replaced in a param group")
        if len(set(map(id, params))) != len(params):
            raise ValueError("some parameters appear more than once in param_groups")
        new = params[first:]
        gi_of = [gi for gi, g in enumerate(self.param_groups) for _ in g["params"]]
        if self._engine is not None and any(gi < self._ngroups for gi in gi_of[first:]):
            return self._no_relayout("params were appended inside an existing param group")
        for gi in range(self._ngroups if self._engine is not None else 0, len(self.param_groups)):
            _check(self.param_groups[gi], f"param_groups[{gi}].", self._spec)
        for n, p in zip(names[first:], new):
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"param {n!r} is a {type(p).__name__}, not a tensor")
            if p.dtype not in _DTYPES:
                raise TypeError(f"param {n!r} has dtype {p.dtype}; npadam updates float32, bfloat16 or float16 params")
            if p.layout is not torch.strided or not p.is_contiguous():
                raise ValueError(f"param {n!r} of shape {tuple(p.shape)} is not a contiguous dense tensor "
                                 f"(strides {p.stride() if p.layout is torch.strided else p.layout})")
        specs = [(s.name, s.shape, s.dtype, s.group) for s in old.slots]
        specs += [(n, tuple(p.shape), _DTYPES[p.dtype], gi) for n, p, gi in zip(names[first:], new, gi_of[first:])]
        layout = FlatLayout(specs, self._precision.align, self._sharding.pad_to if self._sharding is not None else 1,
                            self.bucket_bytes)
        devices = {p.device for p in params}
        if len(devices) > 1:
            raise ValueError(f"params live on several devices {sorted(map(str, devices))}; use one optimizer "
                             "per device")
        device = devices.pop()
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"params on {device}: npadam runs on CPU memory or CUDA GPUs")
        if self._engine is not None and device != self._device:
            raise ValueError(f"new params are on {device}, the optimizer's on {self._device}")
        gpu = device.type == "cuda"
        if self._sharding is not None:  # NCCL moves GPU memory only; the others serve CUDA params staged
            Sharding.check_memory(self._sharding.comm, gpu, device.index)
        kernel = self._engine.kernel if self._engine is not None else self._kernel_arg or (
            "gpu" if gpu else K.available())
        if gpu != (kernel == "gpu"):
            raise ValueError(f"kernel={kernel!r} cannot update params on {device}")
        pptrs = np.asarray([p.data_ptr() for p in params], dtype=np.int64)
        nbytes = np.asarray([p.numel() * p.element_size() for p in params], dtype=np.int64)
        check_no_overlap(pptrs, pptrs + nbytes, layout.names, "params")  # before flat storage copies them
        return first, old, params, layout, device, kernel, nbytes

    def _no_relayout(self, why: str) -> None:
        """None (``_build`` then lays the state out again), or with ``comm`` a ValueError: a sharded
        state is not moved between ranks."""
        if self._sharding is not None:
            raise ValueError(f"{why}, which npadam.torch follows by laying the state out again; with comm "
                             "(state sharded across ranks) it does not: build a new optimizer and load the old "
                             "one's full_state_dict() into it")
        return None

    def _make_flat(self, buffers: Iterable[int]) -> None:
        """npadam-owned storage: each new buffer's params (``.data``) and grads (``.grad``) become
        views into one contiguous tensor each; autograd then accumulates into the flat grads."""
        lay = self._engine.layout
        for bi in buffers:
            b = lay.buffers[bi]
            first = self._params[b.tensors[0]]
            pflat = torch.zeros(b.size, dtype=first.dtype, device=first.device)
            gflat = torch.zeros(b.size, dtype=first.dtype, device=first.device)
            with torch.no_grad():
                for t in b.tensors:
                    s, p = lay.slots[t], self._params[t]
                    view = pflat[s.offset: s.offset + s.numel].view(s.shape)
                    view.copy_(p)
                    p.data = view
                    if p.requires_grad:
                        gview = gflat[s.offset: s.offset + s.numel].view(s.shape)
                        if p.grad is not None:
                            gview.copy_(p.grad)
                        p.grad = gview
            self._flat.append((pflat, gflat, list(b.tensors)))
            if self._sharding is not None:  # the collectives run on the flat buffers
                self._sharding.flat[bi] = ((import_array(pflat)[0], import_array(gflat)[0]) if pflat.is_cuda
                                           else (_numpy(pflat), _numpy(gflat)))
        self._gviews = [p.grad if self.flat_storage else None for p in self._params]

    def _state_views(self) -> None:
        """``state[p]``: torch tensors that view npadam's flat state (``step`` is the param's count).
        With ``comm``: flat views of the param's elements in this rank's shard (empty when none)."""
        eng = self._engine
        flat = self._sharding is not None
        steps = torch.from_numpy(eng.steps)
        lay = eng.layout
        self._views_version = eng.views_version
        state = _State(dict)
        if getattr(self, "_handed_engine", None) is not eng:  # slot numbers changed: forget what was given
            self._handed, self._held, self._handed_engine = {}, {}, eng
        for i, p in enumerate(self._params):
            if eng.offloaded(lay.slots[i].buffer):  # state in another tier: tensors made on access (_DiskEntry)
                dict.__setitem__(state, p, _DiskEntry(self, i, {"step": steps[i]}))
                continue
            st = {"step": steps[i]}
            for key, view in eng.slot_views(i).items():
                t = torch.from_numpy(view) if isinstance(view, np.ndarray) else torch.from_dlpack(view)
                if view.dtype == np.uint16:  # a 16-bit float moment, stored as its bits
                    t = t.view(torch.int16).view(_TORCH_DTYPES[eng.state_dtype(i, key).name])
                elif view.dtype == np.uint8:  # fp8 codes
                    t = t.view(_TORCH_DTYPES[eng.state_dtype(i, key).name])
                st[key] = t if key.endswith("_scale") or flat else t.view(lay.slots[i].shape)
            dict.__setitem__(state, p, st)  # params no longer in any group are left out
        self.state = state
        self._state_obj = state
        self._state_dicts = [state[p] for p in self._params]

    def _hand_out(self, i: int, key: str) -> torch.Tensor:
        """A disk slot's state tensor: a copy, remembered (weakly) with a digest so that in-place
        changes are written back at the next step (``_flush_handed``) and the tensor is refreshed
        after each step (``_refresh_handed``): the behaviour of the views memory slots hand out."""
        got = self._handed.get((i, key))
        if got is not None and got[0]() is not None:
            t = got[0]()
            self._held[(i, key)] = t
            return t
        arr = self._engine.slot_state(i)[key]
        t = _tensor(arr)
        if not key.endswith("_scale") and self._sharding is None:  # with comm flat, as state[p]'s views
            t = t.view(self._engine.layout.slots[i].shape)
        self._handed[(i, key)] = (weakref.ref(t), _digest(t))
        self._held[(i, key)] = t  # until the next step: an edit of a tensor nobody keeps still counts
        return t

    def _flush_handed(self) -> None:
        """Write back disk slots' state tensors the caller changed in place since they were handed out."""
        updates, alive = [], {}
        for (i, key), (ref, digest) in self._handed.items():
            t = ref()
            if t is None:
                continue
            now = _digest(t)
            alive[(i, key)] = (ref, now)
            if now != digest:
                lo, hi = self._engine.owned_range(i, key)
                if not torch.isfinite(t.float()).all() or t.numel() != hi - lo:
                    raise ValueError(f"state of param {self._engine.layout.slots[i].name!r}: {key} was changed "
                                     "in place to non-finite values or another size")
                updates.append((i, key, self._whole(i, key, _numpy(t.detach().reshape(-1)).copy())))
        self._handed = alive
        self._held = {}  # from now on only the caller's references keep them
        if updates:
            self._engine.write_state(updates, [])

    def _refresh_handed(self) -> None:
        """After a step: the disk slots' state tensors handed out show the new state."""
        for (i, key), (ref, _) in list(self._handed.items()):
            t = ref()
            if t is None:
                del self._handed[(i, key)]
                continue
            fresh = self._engine.slot_state(i).get(key)
            if fresh is not None:
                t.copy_(_tensor(fresh).view(t.shape))
                self._handed[(i, key)] = (ref, _digest(t))

    def close(self) -> None:
        """Delete the files of state kept on disk (``nvme_offload_fraction``); the optimizer cannot
        step afterwards. Idempotent; the files also go at garbage collection or exit."""
        if self._engine is not None:
            self._engine.close()

    # ------------------------------------------------------------------ step
    def _sync(self) -> None:
        """Catch up with what the caller changed since the last step: groups appended to
        ``param_groups`` (adopted like ``add_param_group``), params added, removed or replaced
        inside a group (state laid out again), storage re-bound or low-precision params edited
        in place (followed), entries of ``state`` replaced or removed (taken over)."""
        if self._sharding is not None and self._sharding.pending:  # param gathers a step left in flight
            self.wait_params()
        params = self._params
        groups = self.param_groups
        if len(groups) != self._ngroups or sum(len(g["params"]) for g in groups) != len(params) or \
                not all(map(operator.is_, itertools.chain.from_iterable(g["params"] for g in groups), params)):
            self._build()  # new groups; a relayout for params changed inside groups
            params = self._params
        ptrs = [p.data_ptr() for p in params]
        versions = [params[i]._version for i in self._low]
        if ptrs != self._pptr_list or versions != self._versions:
            self._follow(ptrs, versions)
        self._flush_handed()
        if self.state is not self._state_obj or self.state.dirty or any(
                isinstance(st, _DiskEntry) and st.changed for st in self._state_dicts):
            self._adopt_state()

    def _adopt_state(self) -> None:
        """torch semantics for ``opt.state`` edited from outside: a param whose entry was removed
        or emptied starts afresh (zero moments, step 0; SGD: no momentum buffer); tensors put into a
        replaced entry are copied into npadam's flat state (SGD: ``momentum_buffer`` None or absent
        means none, as in torch). Checked before anything is written."""
        eng = self._engine
        if not isinstance(self.state, dict):
            raise TypeError(f"optimizer.state must be a dict, got {type(self.state).__name__}")
        sgd = self._spec.algorithm == "sgd"
        updates, steps, started = [], {}, {}
        for i, p in enumerate(self._params):
            st = self.state.get(p)
            if st is self._state_dicts[i] and self.state is self._state_obj and not getattr(st, "changed", False):
                continue
            if isinstance(st, _DiskEntry):  # only what the caller set in it is new
                st = st.assigned()
            slot = eng.layout.slots[i]
            if not st:
                steps[i] = 0
                started[i] = False
                # zero moments in their storage dtypes (fp8: zero codes and scales); the master is reloaded
                for k, f in eng._state_keys(i).items() if not sgd else ():
                    if f != "master":
                        lo, hi = eng.slot_range(i, f)
                        updates.append((i, k, np.zeros(hi - lo, eng.state_dtype(i, k))))
                continue
            if sgd:
                started[i] = st.get("momentum_buffer") is not None
            for key in ("momentum_buffer",) if sgd else ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                if key in st and not (sgd and st[key] is None):
                    what = f"state of param {slot.name!r}: {key}"
                    if sgd:
                        values = [(key, _state._float32(st[key], what))]
                    else:  # in the state's own precision (16-bit bits, fp8 codes and scales), else rounded
                        values = _state.moment_values(eng, i, key, st[key], st.get(key + "_scale"), what)
                    updates += [(i, k, self._whole(i, k, a.reshape(-1))) for k, a in values]
            if "step" in st:
                steps[i] = _state._int(st["step"], f"state of param {slot.name!r}: step")
        vmax = sorted({eng.layout.slots[i].buffer for i, k, _ in updates if k == "max_exp_avg_sq"})
        eng.write_state(updates, vmax)
        for i, n in steps.items():
            eng.steps[i] = n
        if sgd:
            for i, v in started.items():
                eng.started[i] = v
        for i in {i for i, _, _ in updates} | set(started):
            eng.load_master(i, import_array(self._params[i], what="param")[0])
        self._state_views()

    def _whole(self, i: int, key: str, arr: np.ndarray) -> np.ndarray:
        """A state array set into ``state[p]`` as the param's whole flat array: one of the param's size
        (fp8 block scales: of its blocks), or with ``comm`` one of this rank's elements (blocks) of it
        (as ``state[p]`` shows them; the engine never reads the zeros put elsewhere)."""
        eng = self._engine
        slot = eng.layout.slots[i]
        lo, hi = eng.slot_range(i, key)
        if arr.size == hi - lo:
            return arr.reshape(-1)
        a, b = eng.owned_range(i, key)
        if self._sharding is not None and arr.size == b - a:
            whole = np.zeros(hi - lo, arr.dtype)
            whole[a - lo: b - lo] = arr.reshape(-1)
            return whole
        also = f" (or {b - a}, this rank's elements of it)" if self._sharding is not None else ""
        raise ValueError(f"state of param {slot.name!r}: {key} has {arr.size} elements, expected {hi - lo}{also}")

    def _collect(self) -> tuple[np.ndarray, np.ndarray, list[str], list[Any]]:
        """This step's ``(active, grad pointers, grad dtype per buffer, grads to keep alive)``.

        The common cases cost a few list comprehensions: the same grad tensors as last
        step (``zero_grad(set_to_none=False)``, flat storage) are recognised by identity and
        pointer; new grad tensors are checked one by one (shape, dtype, layout, device)."""
        self._sync()
        params = self._params
        grads = [p.grad for p in params]
        try:
            gptr_list = [0 if g is None else g.data_ptr() for g in grads]
        except RuntimeError:  # a sparse (storage-less) grad
            self._reject_grads(grads)
        cached = self._grad_cache
        if cached is not None and gptr_list == cached[0] and all(map(operator.is_, grads, self._last_grads)):
            self._last_grads = grads
            return cached[1], cached[2], cached[3], grads
        eng = self._engine
        if [p.shape for p in params] != self._shapes or not all([p.is_contiguous() for p in params]):
            for p, s in zip(params, eng.layout.slots):  # p.data = p.data.t() keeps the pointer
                if tuple(p.shape) != s.shape or not p.is_contiguous():
                    raise ValueError(f"param {s.name!r} is now {tuple(p.shape)} (strides {p.stride()}), was "
                                     f"{s.shape} contiguous: build a new optimizer (and load the old one's state)")
        kinds = self._grad_kinds(grads, range(len(params)))
        gkinds = np.asarray(kinds, dtype=np.int64)
        active = gkinds >= 0
        gptrs = np.asarray(gptr_list, dtype=np.int64)
        gdtypes = [self._buffer_gdtype(bi, gkinds[slots], active[slots]) for bi, slots in enumerate(eng.buffer_slots)]
        self._grads_apart(np.flatnonzero(active), gptrs, gkinds)
        self._grad_cache = (gptr_list, active, gptrs, gdtypes)
        self._last_grads = grads
        return active, gptrs, gdtypes, grads

    def _collect_bucket(self, bi: int) -> tuple[np.ndarray, np.ndarray, list[str], list[Any]]:
        """``_collect`` for ``grads_ready(bi)``: the same checks on buffer ``bi``'s grads only (the
        step checks them all again), so handing over every bucket of a step costs one pass over the
        params, not one per bucket. The caller's changes (``_sync``) are caught up with at the step's
        first bucket. Entries of other buffers: inactive, grad dtype float32 (unused)."""
        if not self._early:
            self._sync()
        eng = self._engine
        slots = eng.layout.buffers[bi].tensors
        if self.flat_storage:
            self._reattach_flat_grads(slots)
        grads = [self._params[t].grad for t in slots]
        try:
            ptrs = [0 if g is None else g.data_ptr() for g in grads]
        except RuntimeError:  # a sparse (storage-less) grad
            self._reject_grads(grads, slots)
        kinds = np.asarray(self._grad_kinds(grads, slots), dtype=np.int64)
        n = len(eng.layout.slots)
        active, gptrs, gkinds = np.zeros(n, bool), np.zeros(n, np.int64), np.full(n, -1, np.int64)
        active[slots], gptrs[slots], gkinds[slots] = kinds >= 0, ptrs, kinds
        gdtypes = ["float32"] * len(eng.layout.buffers)
        gdtypes[bi] = self._buffer_gdtype(bi, kinds, kinds >= 0)
        self._grads_apart(np.asarray(slots, np.int64)[kinds >= 0], gptrs, gkinds)
        return active, gptrs, gdtypes, grads

    def _grad_kinds(self, grads: list[Any], idx: Sequence[int]) -> list[int]:
        """The kind (``_KINDS``; -1 for None) of each grad of the params ``idx``, after checking shape,
        dtype, layout, device and contiguity (a few list comprehensions; ``_reject_grads`` names the
        first bad one)."""
        device = self._device
        cuda = device.type == "cuda"
        kinds = [-1 if g is None else _KINDS.get(g.dtype, -2) for g in grads]
        live = [g for g in grads if g is not None]
        shapes = self._shapes
        strided = torch.strided
        if -2 in kinds or not (all(map(operator.eq, [g.shape for g in live], [shapes[i] for i, k in
                                                                              zip(idx, kinds) if k >= 0]))
                               and all([g.layout is strided and g.is_cuda is cuda for g in live])
                               and all([g.is_contiguous() for g in live])
                               and (not cuda or all([g.device == device for g in live]))):
            self._reject_grads(grads, idx)
        return kinds

    def _buffer_gdtype(self, bi: int, kinds: np.ndarray, active: np.ndarray) -> str:
        """Buffer ``bi``'s grad dtype from its slots' grad ``kinds``; TypeError if they mix dtypes."""
        found = np.unique(kinds[active])
        if found.size > 1:
            raise TypeError(f"grads of param group {self._engine.layout.buffers[bi].group} mix dtypes "
                            f"{[_NAMES[k] for k in found]}; use one gradient dtype per group and param dtype")
        return _NAMES[found[0]] if found.size else "float32"

    def _grads_apart(self, sel: np.ndarray, gptrs: np.ndarray, gkinds: np.ndarray) -> None:
        """ValueError if the grads of slots ``sel`` overlap any param's memory."""
        slots = self._engine.layout.slots
        gbytes = self._numel[sel] * _ITEMSIZE[gkinds[sel]]
        check_apart(self._pptrs, self._pptrs + self._pbytes, gptrs[sel], gptrs[sel] + gbytes,
                    lambda g, p: f"grad of {slots[sel[g]].name!r} and param {slots[p].name!r}")

    def _reject_grads(self, grads: list[Any], idx: Sequence[int] | None = None) -> None:
        """Find the grad that failed a check in ``_collect`` (of the params ``idx``: all by default) and
        raise naming it."""
        names = self._engine.layout.names
        device = self._device
        for i, g in zip(range(len(grads)) if idx is None else idx, grads):
            if g is None:
                continue
            if g.dtype not in _KINDS:
                raise TypeError(f"grad of {names[i]!r} has dtype {g.dtype}; npadam reads float32, "
                                "bfloat16 or float16 gradients")
            if g.shape != self._shapes[i]:
                raise ValueError(f"grad of {names[i]!r} has shape {tuple(g.shape)}, expected "
                                 f"{tuple(self._shapes[i])}")
            if g.layout is not torch.strided or g.device != device or not g.is_contiguous():
                raise ValueError(f"grad of {names[i]!r} must be a contiguous dense tensor on {device}, "
                                 f"got {g.device} {g.layout} strides {g.stride()}")
        raise AssertionError("a grad failed a check but none was found")  # pragma: no cover

    def _follow(self, ptrs: list[int], versions: list[int]) -> None:
        """Re-bind params whose storage changed and note params edited in place (their values reach
        the update through the kernels' ``current_master`` select).

        ``versions``: the version counters of the low-precision params (``self._low``)."""
        eng = self._engine
        lay = eng.layout
        changed = [s for p, s in zip(self._params, lay.slots) if _DTYPES.get(p.dtype) != s.dtype]
        if changed:
            self._no_relayout(f"param {changed[0].name!r} changed dtype (was {changed[0].dtype})")
            return self._relayout()
        edited = {i for i, v, w in zip(self._low, versions, self._versions) if v != w}
        for i, p in enumerate(self._params):
            moved = ptrs[i] != self._pptrs[i]
            if not moved and i not in edited:
                continue
            s = lay.slots[i]
            if tuple(p.shape) != s.shape:
                raise ValueError(f"param {s.name!r} is now {tuple(p.shape)}, was {s.shape}: build a new "
                                 "optimizer (and load the old one's state dict into it)")
            if p.is_sparse or not p.is_contiguous() or p.device != self._device:
                raise ValueError(f"param {s.name!r} is no longer a contiguous tensor on {self._device}")
            if moved and self.flat_storage:
                view = self._flat_view(i)
                with torch.no_grad():
                    view.copy_(p)
                p.data = view
                ptrs[i] = p.data_ptr()
            # no master reload: the kernels' current_master select takes the param where its bits are
            # not the master's rounding, and keeps the master's precision where they are (a copy of the
            # model, p.data = p.data.clone(), an unchanged value written back)
        self._pptrs = np.asarray(ptrs, dtype=np.int64)
        self._pptr_list = list(ptrs)
        self._versions = [self._params[i]._version for i in self._low]
        self._grad_cache = None
        nbytes = self._pbytes
        check_no_overlap(self._pptrs, self._pptrs + nbytes, lay.names, "params")

    def _relayout(self) -> None:
        """Lay the state out again for what ``param_groups`` hold now, torch's way: state follows
        each Parameter object. Used when params changed dtype (``model.to(torch.bfloat16)``) or were
        added to, removed from or replaced in a group. Kept params keep their moments, step counts
        and (same dtype) fp32 masters; a param whose dtype changed takes its master from its values
        now; new params start at zero; removed params' state is dropped. Refused (nothing changes)
        for a shape change and under ``flat_storage``."""
        old = self._engine
        for p, s in zip(self._params, old.layout.slots):
            if tuple(p.shape) != s.shape:
                raise ValueError(f"param {s.name!r} is now {tuple(p.shape)}, was {s.shape}: npadam follows "
                                 "params of unchanged shape; build a new optimizer (and load the old one's "
                                 "state dict into it)")
        if self.flat_storage:
            raise ValueError("param_groups or param dtypes changed under flat_storage=True (its params are "
                             "views into npadam's buffers); build a new optimizer and load the old one's state")
        old.sync()
        saved = {id(p): (old.slot_state(i), int(old.steps[i]), old.layout.slots[i].dtype)
                 for i, p in enumerate(self._params)}
        keep = (self._params, self._ngroups, self._state_obj, self._state_dicts)
        self._engine, self._params, self._ngroups = None, [], 0
        try:
            self._build()
        except Exception:
            self._engine = old
            self._params, self._ngroups, self._state_obj, self._state_dicts = keep
            raise
        eng = self._engine
        updates, vmax = [], set()
        for i, p in enumerate(self._params):
            if id(p) not in saved:
                continue
            st, n, dtype = saved[id(p)]
            slot = eng.layout.slots[i]
            for k, a in st.items():
                if k in ("master", "param_remainder") and (dtype != slot.dtype or slot.dtype == "float32"):
                    continue  # dtype changed: the master is the param's value now (load_master did it)
                updates.append((i, k, a))
                if k == "max_exp_avg_sq":
                    vmax.add(slot.buffer)
            eng.steps[i] = n
            eng.started[i] = "momentum_buffer" in st  # SGD: the param's buffer exists
        eng.write_state(updates, sorted(vmax))
        eng.count = old.count
        old.close()  # its state files, if any: the new engine holds the state now
        self._state_views()

    def _flat_view(self, i: int) -> torch.Tensor:
        s = self._engine.layout.slots[i]
        for pflat, _, tensors in self._flat:
            if i in tensors:
                return pflat[s.offset: s.offset + s.numel].view(s.shape)
        raise AssertionError(i)

    def _reattach_flat_grads(self, idx: Sequence[int] | None = None) -> None:
        """flat_storage: a grad that is not the flat view any more (``model.zero_grad()`` set it to
        None and backward made a new one) is copied into the view, which becomes ``.grad`` again.
        ``idx``: these params only (all by default)."""
        params = self._params if idx is None else [self._params[t] for t in idx]
        gviews = self._gviews if idx is None else [self._gviews[t] for t in idx]
        if all(map(operator.is_, [p.grad for p in params], gviews)) and \
                all([p.requires_grad for p in params]):
            return
        for p, view in zip(params, gviews):
            if view is None:
                continue
            g = p.grad
            if not p.requires_grad:  # frozen since: no grad, so the step skips it
                p.grad = None
                continue
            if g is view:
                continue
            if not self._flat_warned:
                warnings.warn("flat_storage=True: a param's .grad was replaced (model.zero_grad() sets grads to "
                              "None); npadam copies it back into its flat buffer. Call opt.zero_grad() instead "
                              "to keep the zero-copy path", stacklevel=3)
                self._flat_warned = True
            with torch.no_grad():
                if g is None:
                    view.zero_()
                else:
                    view.copy_(g)
            p.grad = view

    # ------------------------------------------------------------------ overlap (buckets)
    @property
    def buckets(self) -> list[list[torch.Tensor]]:
        """The params of each bucket (flat buffer), in order: what ``grads_ready`` and ``wait_params``
        take the index of. One bucket per group and param dtype unless ``bucket_bytes`` splits them."""
        return [[self._params[t] for t in b.tensors] for b in self._engine.layout.buffers]

    def grads_ready(self, bucket: int) -> None:
        """The ``.grad`` of the params of ``buckets[bucket]`` are final for this step: with ``comm``
        their reduce-scatter starts now, while the backward pass computes the other buckets' grads,
        and ``step()`` waits for it instead of sending them again (the grads are copied now, or with
        ``flat_storage`` read from the flat grad buffer while the reduce-scatter runs: do not change
        them until ``step()`` returns; ``step()`` checks that each is still the same tensor).
        ``overlap_grads=True`` calls it from the params' post-accumulate-grad hooks. Every rank
        hands over the same buckets in the same order; a failure of this rank's checks raises here
        and refuses the next step on every rank."""
        bi = self._engine.layout.bucket(bucket)
        if bi in self._early:
            raise ValueError(f"grads_ready({bi}): bucket {bi} was already handed over for this step (a second "
                             "backward before step()? run all but the last micro-batch's backward inside "
                             "optimizer.no_sync())")

        with self._stream():  # CUDA params: the bucket's copies and collectives on torch's current stream
            self._early[bi] = hand_over(self._sharding, self._engine, bi, lambda: self._collect_bucket(bi))

    def wait_params(self, bucket: int | None = None) -> None:
        """Complete the param all-gather of ``bucket`` (all buckets when None) that
        ``step(wait_params=False)`` left in flight: its params then hold the new values (their
        version counters are bumped). Every other call on the optimizer completes them all first."""
        if bucket is not None:
            bucket = self._engine.layout.bucket(bucket)
        if self._sharding is None or not self._sharding.pending:
            return
        todo = list(self._sharding.pending) if bucket is None else [bucket]
        with self._stream():
            waited = self._sharding.wait_params(self._engine, bucket)
        if waited:
            lay = self._engine.layout
            torch.autograd.graph.increment_version([self._params[t] for b in todo for t in lay.buffers[b].tensors])
            self._versions = [self._params[i]._version for i in self._low]

    @contextlib.contextmanager
    def no_sync(self) -> Any:
        """With ``overlap_grads``: backward passes inside do not hand buckets over (gradient
        accumulation: all micro-batches but the last, as DDP's ``no_sync``)."""
        was, self._no_sync = self._no_sync, True
        try:
            yield
        finally:
            self._no_sync = was

    def _hook_grads(self, first: int) -> None:
        """``overlap_grads``: a post-accumulate-grad hook on each param (once per param, also across a
        re-layout); when every param of a bucket has its grad for this backward pass, the bucket is
        handed over (``grads_ready``)."""
        for p in self._params[first:]:
            if p.requires_grad and p not in self._hooked:
                self._hooked.add(p)
                self._hooks.append(p.register_post_accumulate_grad_hook(_GradHook(weakref.ref(self))))

    def _grad_done(self, p: torch.Tensor) -> None:
        if self._no_sync:
            return
        if self._slot_of[0] is not self._params:  # the index of each param, rebuilt after a (re-)layout
            self._slot_of = (self._params, {id(q): i for i, q in enumerate(self._params)})
        i = self._slot_of[1].get(id(p))
        if i is None:  # no longer one of this optimizer's params
            return
        bi = self._engine.layout.slots[i].buffer
        fired = self._fired.setdefault(bi, set())
        if i in fired and bi in self._early:  # the bucket was sent with the first pass's grads: refuse the step
            self._overlap_error = ValueError(
                f"param {self._engine.layout.names[i]!r}: a second backward pass before step() with overlap_grads "
                "(its bucket was already sent with the first pass's grads); run all but the last micro-batch's "
                "backward inside optimizer.no_sync()")
            raise self._overlap_error
        fired.add(i)
        needed = [t for t in self._engine.layout.buffers[bi].tensors if self._params[t].requires_grad]
        if len(fired) == len(needed) and bi not in self._early:
            self.grads_ready(bi)

    def _check_early(self, grads: list[Any]) -> None:
        """The step's grads of buckets handed over by ``grads_ready`` are the same tensors."""
        bad = self._engine.layout.changed_grad(self._early, grads)
        if bad is not None:
            bi, t = bad
            raise ValueError(f"step: the grad of {self._engine.layout.names[t]!r} is not the tensor it was at "
                             f"grads_ready({bi}) (bucket {bi} was already sent); do not replace .grad after handing "
                             "it over")

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, *, wait_params: bool = True) -> Any:
        """One update (torch semantics: params whose ``.grad`` is None are skipped); returns the
        closure's loss. What npadam did (skipped, grad norm, lr, loss scale) is in ``last_step``.
        ``wait_params=False`` (with ``comm``): return with the params' all-gathers in flight;
        ``wait_params(bucket)`` completes them (e.g. in a forward pre-hook)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        sharding = self._sharding
        try:
            if not isinstance(wait_params, bool):
                raise TypeError(f"wait_params must be a bool, got {wait_params!r}")
            if self.flat_storage:
                self._reattach_flat_grads()
            active, gptrs, gdtypes, keep = self._collect()
            eng = self._engine  # after _collect: a dtype change builds a new engine
            spec = self._spec
            hyper = [spec.values(_plain(g, f"param_groups[{gi}].", spec), eng.count, f"param_groups[{gi}].")
                     for gi, g in enumerate(self.param_groups)]
            if self._overlap_error is not None:
                raise self._overlap_error
            self._check_early(keep)
        except Exception as e:
            self._early, self._fired, self._overlap_error = {}, {}, None
            if sharding is None:
                raise
            sharding.check_step(self._engine.layout, self._ngroups, e)
        self._early, self._fired = {}, {}
        if sharding is not None:  # every rank's checks passed, and the ranks agree on grads and hyperparameters
            sharding.check_step(eng.layout, self._ngroups, None, active, gdtypes, hyper,
                                (self.max_grad_norm, self.skip_nonfinite), eng.steps, wait_params)
        with self._stream():
            res = eng.step(active, self._pptrs, gptrs, gdtypes, hyper, max_grad_norm=self.max_grad_norm,
                           skip_nonfinite=self.skip_nonfinite, loss_scaler=self.loss_scaler)
        del keep
        if not res.skipped:
            self._refresh_handed()
            torch.autograd.graph.increment_version(self._params)
            self._versions = [self._params[i]._version for i in self._low]
            if eng.views_version != self._views_version:  # amsgrad's vmax, SGD's momentum buffers appeared
                self._state_views()
        self.last_step = StepInfo(res.skipped, res.grad_norm, hyper[0]["lr"], res.loss_scale, eng.count)
        return loss

    def _stream(self) -> Any:
        """CUDA: run the kernels on torch's current stream of the params' device. CuPy keeps one
        current stream per device, so the params' device is entered first, then the stream."""
        stack = contextlib.ExitStack()
        if self._engine.device == "gpu":
            import cupy

            stack.enter_context(cupy.cuda.Device(self._device.index))
            stream = torch.cuda.current_stream(self._device)
            stack.enter_context(cupy.cuda.ExternalStream(stream.cuda_stream, self._device.index))
        return stack

    def _param_bits(self, i: int) -> np.ndarray:
        """Param ``i``'s uint16 storage bits on the host, flat (16-bit params)."""
        return self._params[i].detach().reshape(-1).view(torch.int16).cpu().numpy().view(np.uint16).copy()

    def _checkpoint_write_params(self, values: Sequence[np.ndarray]) -> None:
        """Write flat fp32 ``values`` (one per param, checked by ``npadam.checkpoint``) into the params,
        rounded to each param's dtype by torch's round-to-nearest-even copy (with param remainders: the
        master's high half, ties away from zero). The masters were restored
        by ``load_state_dict`` first: the params are their rounding, so they are not re-read."""
        self._engine.sync()
        with torch.no_grad():
            for p, v in zip(self._params, values):
                if p.dtype == torch.bfloat16 and self._precision.remainders:  # the master's high half
                    bits = prec.split_remainder(np.asarray(v, np.float32).reshape(-1))[0].view(np.int16)
                    p.view(-1).view(torch.int16).copy_(torch.from_numpy(bits).to(p.device))
                    continue
                p.copy_(torch.from_numpy(np.asarray(v, np.float32)).view(p.shape).to(p.device))
        self._versions = [self._params[i]._version for i in self._low]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """torch's ``zero_grad``; with ``flat_storage`` the flat grad buffers are zeroed (one fill per
        buffer) and the views stay ``.grad`` whatever ``set_to_none`` says."""
        if not self.flat_storage:
            return super().zero_grad(set_to_none)
        for _, gflat, _ in self._flat:
            gflat.zero_()
        self._reattach_flat_grads()

    # ------------------------------------------------------------------ copies
    def __getstate__(self) -> dict[str, Any]:
        """``copy.deepcopy`` and pickling keep npadam's state (torch's own would drop it)."""
        if self._sharding is not None:
            raise TypeError("an npadam.torch optimizer sharded across ranks (comm=) cannot be copied or pickled: "
                            "its state is spread over the ranks; use state_dict() (this rank's shard) or "
                            "full_state_dict()")
        if self.flat_storage:
            raise TypeError("an npadam.torch optimizer with flat_storage=True cannot be copied or pickled "
                            "(its params are views into its buffers); save and load its state_dict() instead")
        if self._engine is not None and self._engine.tiered:
            raise TypeError("an npadam.torch optimizer with state in another tier (offload_fraction for GPU params, "
                            "or nvme_offload_fraction) cannot be copied or pickled; save it with "
                            "npadam.checkpoint.save (or state_dict()) instead")
        # like torch's own: no step hooks, no scheduler's per-instance step wrapper (it holds a weakref
        # to this optimizer: a copy would step the original), no profiling flag
        drop = {"_last_grads", "_grad_cache", "step", "_opt_called", "_hooks", "_hooked", "_slot_of", "_early",
                "_fired", "_no_sync", "_overlap_error", "_optimizer_step_pre_hooks",
                "_optimizer_step_post_hooks", "_optimizer_state_dict_pre_hooks", "_optimizer_state_dict_post_hooks",
                "_optimizer_load_state_dict_pre_hooks", "_optimizer_load_state_dict_post_hooks"}
        return {k: v for k, v in self.__dict__.items() if k not in drop}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_sharding", None)  # pickled before comm= (copies are never sharded)
        for key, value in (("bucket_bytes", None), ("overlap_grads", False)):  # pickled before buckets
            self.__dict__.setdefault(key, value)
        self._hooks, self._hooked, self._slot_of = [], weakref.WeakSet(), (None, {})
        self._early, self._fired, self._no_sync, self._overlap_error = {}, {}, False, None
        if "_engine" not in state:  # a plain torch optimizer pickle: nothing of npadam's to restore
            return
        self._last_grads = [None] * len(self._params)
        self._grad_cache = None
        # the copy's params live elsewhere: bound here, masters kept (a re-bind would lose nothing either)
        self._pptr_list = [p.data_ptr() for p in self._params]
        self._pptrs = np.asarray(self._pptr_list, dtype=np.int64)
        self._versions = [self._params[i]._version for i in self._low]
        self._state_views()
        if self.overlap_grads:  # the copy's params get hooks of their own
            self._hook_grads(0)

    # ------------------------------------------------------------------ state
    def _plain_groups(self) -> list[dict[str, Any]]:
        out = []
        for g in self.param_groups:
            d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"}
            if "betas" in g:
                d["betas"] = tuple(g["betas"])
            d["n_params"] = len(g["params"])
            out.append(d)
        return out

    def state_dict(self) -> dict[str, Any]:
        """torch's state dict (loads into ``torch.optim.AdamW``/``Adam`` and with
        ``torch.load(weights_only=True)``): tensors and plain values only, plus npadam's entry
        (names, shapes, dtypes, update count, loss scaler) and each low-precision param's fp32
        ``master``. Groups appended, params re-bound, edited or cast (``model.to(dtype)``) are taken
        in first, as a step would.

        With ``comm``: this rank's shard, as ``npadam.AdamW(comm=).state_dict()`` (each state tensor
        flat, the param's elements in this rank's shard, and ``npadam.shard``); ``full_state_dict()``
        gathers the whole state."""
        return self._export(sharded=True)

    def full_state_dict(self) -> dict[str, Any]:
        """The whole state dict, as one process holding every shard would return it (``state_dict()``
        without ``comm``), on every rank. With ``comm`` a collective: each buffer's state is
        all-gathered (every rank briefly holds the whole state)."""
        return self._export(sharded=False)

    def _export(self, sharded: bool) -> dict[str, Any]:
        """The state dict of this rank's state (``sharded``), or of the whole state gathered: then, with
        ``comm``, a failure of ``_sync`` on one rank raises on every rank before anything is gathered."""
        gather = not sharded and self._sharding is not None
        try:
            for hook in self._optimizer_state_dict_pre_hooks.values():
                hook(self)
            self._sync()
        except Exception as e:
            if not gather:
                raise
            self._sharding.agree("full_state_dict", e)
        if gather:
            self._sharding.agree("full_state_dict", None)
        eng = self._sharding.full_state(self._engine) if gather else self._engine
        sd = _state.export(eng, self._plain_groups(), type(self).__name__, self.loss_scaler,
                           array=lambda a: _tensor(np.ascontiguousarray(a)))
        for st in sd["state"].values():
            n = st["step"]
            st["step"] = torch.tensor(float(n), dtype=torch.float32 if n < 2**24 else torch.float64)
        for hook in self._optimizer_state_dict_post_hooks.values():
            result = hook(self, sd)
            if result is not None:
                sd = result
        return sd

    def load_state_dict(self, state_dict: dict[str, Any], convert: bool = False) -> None:
        """Load a state dict of this class or of ``torch.optim.AdamW``/``Adam`` (params by position,
        shapes checked). Everything is checked first; nothing changes on error. ``convert=True``:
        state in another precision than this optimizer's is converted (``npadam.AdamW.load_state_dict``).

        With ``comm`` a collective (a dict failing the checks on one rank raises on every rank): this
        rank's ``state_dict()`` (same rank, world size and layout), or a whole state dict
        (``full_state_dict()``, a single-process optimizer's, torch's), of which each rank keeps its
        shard."""
        sharding = self._sharding
        try:
            if not isinstance(convert, bool):
                raise TypeError(f"convert must be a bool, got {convert!r}")
            self._sync()  # groups appended, params re-bound or edited: absorbed first, so the dict's masters win
            sd = state_dict
            for hook in self._optimizer_load_state_dict_pre_hooks.values():
                result = hook(self, sd)
                if result is not None:
                    sd = result
            sd = unshard_state_dict(sd, self._engine, sharding, convert, _host_array)
            parsed = _state.parse(sd, self._engine, self._plain_groups(), type(self).__name__,
                                  lambda g, where: _check(g, where, self._spec), self.loss_scaler, convert=convert,
                                  param_bits=self._param_bits)
        except Exception as e:
            if sharding is None:
                raise
            sharding.agree("load_state_dict", e)
        if sharding is not None:
            sharding.agree("load_state_dict", None)
        with torch.no_grad():
            self._engine.sync()
            _state.apply(parsed, self._engine)
            for i, bits in parsed.param_bits:
                self._params[i].view(-1).view(torch.int16).copy_(torch.from_numpy(bits.view(np.int16)))
            if parsed.param_bits:
                self._versions = [self._params[i]._version for i in self._low]
            for g, h in zip(self.param_groups, parsed.groups):
                keep = {k: g[k] for k in ("params", "param_names") if k in g}
                g.clear()
                g.update({**self.defaults, **{k: v for k, v in h.items() if k not in ("param_names", "n_params")},
                          **keep})
            for i in parsed.reload_masters:
                self._engine.load_master(i, import_array(self._params[i], what="param")[0])
            if parsed.loss_scaler is not None and self.loss_scaler is not None:
                self.loss_scaler.load_state_dict(parsed.loss_scaler)
        self._state_views()
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    @property
    def step_count(self) -> int:
        """Completed (not skipped) ``step()`` calls."""
        return self._engine.count

    def __repr__(self) -> str:
        lay = self._engine.layout
        return (f"npadam.torch.{type(self).__name__}({len(lay.slots)} params in {len(lay.buffers)} buffers, "
                f"{lay.numel:,} elements, kernel={self._engine.kernel!r}, flat_storage={self.flat_storage}, "
                f"step={self._engine.count})")


def _plain(g: dict[str, Any], where: str, spec: H.Spec = H.ADAM) -> dict[str, Any]:
    """A group's hyperparameters with one-element tensors read as floats (checked by ``spec.values``)."""
    if spec.algorithm == "sgd":
        return {"lr": _scalar(g["lr"], f"{where}lr"), "momentum": _scalar(g["momentum"], f"{where}momentum"),
                "dampening": _scalar(g["dampening"], f"{where}dampening"),
                "weight_decay": _scalar(g["weight_decay"], f"{where}weight_decay"), "nesterov": g["nesterov"],
                "maximize": g["maximize"]}
    betas = g["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"{where}betas must be a pair (beta1, beta2), got {betas!r}")
    return {"lr": _scalar(g["lr"], f"{where}lr"), "betas": tuple(_scalar(b, f"{where}betas") for b in betas),
            "eps": _scalar(g["eps"], f"{where}eps"), "weight_decay": _scalar(g["weight_decay"], f"{where}weight_decay"),
            "amsgrad": g["amsgrad"], "maximize": g["maximize"], "bias_correction": g.get("bias_correction", True)}


class _AdamBase(_Base):
    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, capturable: bool = False, differentiable: bool = False,
                 fused: bool | None = None, bias_correction: bool = True, **options: Any) -> None:
        if capturable or differentiable:
            raise ValueError("npadam.torch optimizers do not support capturable=True or differentiable=True")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, foreach=foreach, capturable=False, differentiable=False, fused=fused,
                        bias_correction=bias_correction)
        super().__init__(params, defaults, **options)


class AdamW(_AdamBase):
    """``torch.optim.AdamW`` on npadam's kernels: decoupled weight decay (multiplied by the lr).

    Arguments as torch's (``foreach``/``fused`` are accepted and ignored: npadam has one
    fused path), plus ``max_grad_norm`` (clip inside the step, torch's
    ``clip_grad_norm_`` coefficient), ``loss_scaler`` (``npadam.LossScaler``),
    ``skip_nonfinite``, ``bias_correction``, ``kernel``, ``num_threads``,
    ``flat_storage`` (npadam-owned contiguous params and grads) and ``comm`` (the state sharded
    across ranks, ZeRO-1/2: see the module docstring; ``state[p]`` then holds flat tensors of the
    param's elements in this rank's shard, ``state_dict()`` is this rank's shard and
    ``full_state_dict()`` the whole state).
    """

    _decoupled = True

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, **kwargs: Any) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, **kwargs)


class Adam(_AdamBase):
    """``torch.optim.Adam`` on npadam's kernels: weight decay as L2 (added to the gradient)."""

    _decoupled = False

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, **kwargs: Any) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, **kwargs)


class SGD(_Base):
    """``torch.optim.SGD`` on npadam's kernels: momentum, dampening, Nesterov, L2 weight decay.

    Arguments as torch's (``foreach``/``fused`` are accepted and ignored), plus npadam's
    options as in ``AdamW``. Bit for bit ``torch.optim.SGD`` on float32 params (see
    ``npadam.reference.sgd``); ``state[p]`` holds ``momentum_buffer`` once the param's first
    step with momentum made it (torch's rule), plus npadam's ``step`` and, for bf16/fp16
    params, the fp32 ``master``.
    """

    _spec = H.SGD

    def __init__(self, params: Any, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, differentiable: bool = False, fused: bool | None = None,
                 **options: Any) -> None:
        if differentiable:
            raise ValueError("npadam.torch optimizers do not support differentiable=True")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                        maximize=maximize, foreach=foreach, differentiable=False, fused=fused)
        super().__init__(params, defaults, **options)


#: torch's dtype of each narrow state dtype
_TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float8_e4m3fn": torch.float8_e4m3fn,
                 "float8_e5m2": torch.float8_e5m2}
_ML_DTYPES = {torch.bfloat16: ml_dtypes.bfloat16, torch.float8_e4m3fn: ml_dtypes.float8_e4m3fn,
              torch.float8_e5m2: ml_dtypes.float8_e5m2}


class _GradHook:
    """A param's post-accumulate-grad hook (``overlap_grads``); holds the optimizer weakly."""

    def __init__(self, opt: Any) -> None:
        self.opt = opt

    def __call__(self, p: torch.Tensor) -> None:
        opt = self.opt()
        if opt is not None and opt._engine is not None:
            opt._grad_done(p)


def _shown(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items())


def _host_array(value: Any) -> Any:
    """A state-dict entry as NumPy (torch tensors of any dtype, bfloat16 and fp8 included); others as given."""
    if isinstance(value, torch.Tensor):
        return _numpy(value.detach().cpu().contiguous())
    return np.asarray(value)


def _tensor(a: np.ndarray) -> torch.Tensor:
    """A host state array as a CPU tensor sharing its memory (bfloat16 and fp8 through their bits:
    torch's ``from_numpy`` does not take ml_dtypes' types)."""
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    if a.dtype.name.startswith("float8"):
        return torch.from_numpy(a.view(np.uint8)).view(_TORCH_DTYPES[a.dtype.name])
    return torch.from_numpy(a)


def _numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor as a NumPy array of its dtype (bfloat16 and fp8 as ml_dtypes'), sharing memory."""
    if t.dtype in _ML_DTYPES:
        raw = t.view(torch.int16 if t.dtype == torch.bfloat16 else torch.uint8).numpy()
        return raw.view(_ML_DTYPES[t.dtype])
    return t.numpy()
