"""``AdamW``, ``Adam`` and ``SGD`` over flat buffers for arrays from any framework (torch.optim-style API).

Parameters may be NumPy arrays, torch tensors, CuPy arrays, JAX arrays (pytrees
too) or any DLPack producer; writable ones are updated in place (zero copy).
Optimizer state lives in the flat buffers of ``npadam._engine.Engine``, shared
with the torch front-end ``npadam.torch``.

One ``step(grads)``:

1. every group's hyperparameters for update ``k`` are evaluated (Schedules) and
   checked, the gradients are checked: nothing has been written yet;
2. a read-only pass over the gradients gives the global float64 norm and the
   non-finite flag (fixed blocking: independent of the thread count);
3. any non-finite gradient skips the step: no param, state or step-count change,
   the loss scaler backs off;
4. otherwise one fused pass per flat buffer applies ``scale = inv_loss_scale *
   clip_coef``, updates m, v (and vmax), the fp32 master and writes the
   low-precision copy (round to nearest even). See ``npadam.reference.adamw``
   (``SGD``: the momentum buffer instead of m and v, ``npadam.reference.sgd``).

Params whose gradient is None are skipped, like torch: their state and step
count do not change (each param has its own count for the bias correction).
``param_groups[i]["lr"]`` (and ``betas``, ``weight_decay``) always hold floats:
the values the next update uses. A Schedule given for one of them lives in
``param_groups[i]["schedules"]`` and rewrites the float after every update;
assigning a different float replaces the schedule (``del g["schedules"]["lr"]`` freezes it at its
current value), assigning a Schedule installs one.

With ``comm=`` (a ``npadam.distributed`` communicator) each rank keeps the state of one shard of
every flat buffer (ZeRO-1/2, ``npadam._sharded``): construction, ``step``, ``load_state_dict``
and ``full_state_dict`` are collectives; see docs/DISTRIBUTED.md. Params in host memory or on a
GPU (the step's buffers then on that GPU: a communicator of GPU memory takes them as they are,
MPI and gloo through host copies); ``offload_fraction`` and ``nvme_offload_fraction`` place each
rank's shard of the state as they place a whole buffer's.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping, Sequence

import numpy as np

from . import _hyper as H
from . import _state
from . import kernels as K
from . import _params as P
from . import _validate as V
from ._engine import Engine, StepInfo, step_options
from ._sharded import Sharding, hand_over, layout_digest, unshard_state_dict
from ._placement import disk_placement, engine_offload, offload_placement
from ._precision import state_precision
from .reference import precision as prec
from .interop import import_array, is_read_only_producer
from .layout import FlatLayout
from .reference import adamw as ref
from .scaler import LossScaler
from .schedules import GroupSchedules, Schedule, ScheduleSet

FORMAT = _state.FORMAT


class _Optimizer:
    """What ``AdamW``, ``Adam`` and ``SGD`` share: params and groups, schedules, the step, state dicts.

    ``_spec`` (``npadam._hyper.ADAM`` or ``SGD``) names the algorithm, its group keys, the
    values Schedules may drive and their checks; ``defaults`` are the constructor's group values."""

    _spec = H.ADAM
    _decoupled = True

    def __init__(self, params: Any, defaults: dict[str, Any], *, max_grad_norm: float | None = None,
                 loss_scaler: LossScaler | None = None, skip_nonfinite: bool = True, kernel: str | None = None,
                 num_threads: int | None = None, offload_fraction: float = 0.0, comm: Any = None,
                 nvme_offload_fraction: float = 0.0, nvme_offload_dir: str | os.PathLike[str] | None = None,
                 nvme_staging_bytes: int = 64 << 20, host_state_bytes: int | None = None,
                 pin_memory: bool = True, gpu_state_bytes: int | None = None, exp_avg_dtype: Any = "float32",
                 exp_avg_sq_dtype: Any = "float32", store_param_remainders: bool = False, rounding: str = "nearest",
                 seed: int = 0, main_params_dtype: Any = "float32", bucket_bytes: int | None = None) -> None:
        self._spec.check_group(defaults, "")
        #: params of one group and dtype fill flat buffers of about this many bytes (None: one buffer)
        self.bucket_bytes = None if bucket_bytes is None else V.integer("bucket_bytes", bucket_bytes, lo=1)
        self._precision = state_precision(exp_avg_dtype, exp_avg_sq_dtype, store_param_remainders, rounding, seed,
                                          self._spec.algorithm, main_params_dtype)
        self.defaults = defaults
        o = step_options(max_grad_norm, loss_scaler, skip_nonfinite, num_threads, comm, shardable=True)
        self._offload = offload_placement(offload_fraction, pin_memory, gpu_state_bytes)
        self._disk = disk_placement(nvme_offload_fraction, nvme_offload_dir, nvme_staging_bytes, host_state_bytes)
        #: the state sharded across the ranks of ``comm`` (``npadam._sharded``), or None
        self._sharding = Sharding(comm) if comm is not None else None
        self.offload_fraction = self._offload.fraction if self._offload is not None else 0.0
        self.pin_memory = bool(pin_memory)
        self.max_grad_norm, self.loss_scaler, self.skip_nonfinite = o.max_grad_norm, o.loss_scaler, o.skip_nonfinite
        self.num_threads = o.num_threads
        self._kernel_arg = kernel
        self.kernel = K.check_kernel(kernel)
        self.param_groups: list[dict[str, Any]] = []
        self._objects: list[Any] = []
        self._arrays: list[Any] = []
        self._readonly: list[bool] = []
        self._versions: list[int] = []
        self._written: list[dict[str, float]] = []
        self._engine: Engine | None = None
        self._tree: P.Tree | None = None
        self._keys: list[Any] | None = None  # the keys of params given as one flat dict
        self._last_grads: list[Any] = []
        self._last_imports: list[Any] = []  # the arrays the grad pointers point into (copies included)
        self._gptrs = np.zeros(0, np.int64)
        self._gdtypes: list[str] = []
        self._alias_checked: bytes | None = None
        #: buckets handed over by ``grads_ready`` for the next step: bucket -> the grads given
        self._early_objects: dict[int, list[Any]] = {}
        if isinstance(params, Mapping) and "params" in params:
            raise TypeError("params: pass a list of param groups ([{'params': ...}]), not one group dict")
        if P.is_nested(params) or (isinstance(params, (list, tuple)) and any(
                isinstance(x, (Mapping, list, tuple)) and not (isinstance(x, Mapping) and "params" in x)
                and not (isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str)) for x in params)):
            self._tree = P.Tree(params)
            specs = [{"params": list(zip(self._tree.names, self._tree.leaves))}]
        elif isinstance(params, Mapping) or isinstance(params, np.ndarray) or hasattr(params, "__dlpack__"):
            specs = [{"params": params}]
            if isinstance(params, Mapping):  # a flat dict by name: ``params`` / ``info.params`` come back as one
                self._keys = list(params)
        else:
            if "jax" in sys.modules and not isinstance(params, (list, tuple)) and not hasattr(params, "__next__"):
                self._tree = P.Tree(params)  # a registered JAX pytree node (flax FrozenDict, ...)
                params = list(zip(self._tree.names, self._tree.leaves))
            raw = list(params)  # a generator is consumed once, here
            if not raw:
                raise ValueError("optimizer got an empty parameter list")
            specs = raw if P.is_group_list(raw) else [{"params": raw}]
        for spec in specs:
            self.add_param_group(spec)

    # ------------------------------------------------------------------ set-up
    def add_param_group(self, group: Mapping[str, Any]) -> None:
        """Add a group of params (torch's ``add_param_group``): its hyperparameters default to the
        optimizer's; its state starts at zero; existing params and state are untouched.

        With ``comm`` it is a collective: every rank adds the same params (shapes, dtypes, order),
        checked with one ``allgather_object``; a mismatch or a bad param on any rank raises a
        ValueError on every rank and changes nothing."""
        try:
            new = self._checked_group(group)
        except Exception as e:
            if self._sharding is None:
                raise
            self._sharding.agree_layout(None, e)
        if self._sharding is not None:
            state = ", ".join(f"{k}={v}" for k, v in self._precision.describe().items())
            where = "GPU" if new[7] == "gpu" else "host"  # ranks with params in different memories disagree
            self._sharding.agree_layout(layout_digest(new[2], f"{type(self).__name__} with state {state}, params "
                                                              f"in {where} memory"), None)
        self._build_group(*new)

    def _checked_group(self, group: Mapping[str, Any]) -> tuple:
        """Everything ``add_param_group`` checks, before anything is built: ``(group, its values,
        the new layout, the items, names, arrays, readonly flags, device, device id, offload)``."""
        if not isinstance(group, Mapping) or "params" not in group:
            raise TypeError(f"a param group must be a dict with 'params', got {type(group).__name__}")
        gi = len(self.param_groups)
        extra = sorted(set(group) - set(self._spec.keys) - {"params", "names", "schedules"})
        if extra:
            raise ValueError(f"param_groups[{gi}] has unknown keys {extra}; allowed: {', '.join(self._spec.keys)}")
        items, gnames = P.split_named(group["params"])
        if not items:
            raise ValueError(f"param_groups[{gi}] has no params")
        start = len(self._objects)
        gnames = list(group.get("names") or gnames or [str(start + i) for i in range(len(items))])
        if len(gnames) != len(items):
            raise ValueError(f"param_groups[{gi}] has {len(items)} params but {len(gnames)} names")
        g = {**self.defaults, **{k: group[k] for k in self._spec.keys if k in group}}
        self._spec.check_group(g, f"param_groups[{gi}].")
        seen = {id(o) for o in self._objects}
        for o, n in zip(items, gnames):
            if id(o) in seen:
                raise ValueError(f"param {n!r} appears in more than one param group")
            seen.add(id(o))
        imported = [import_array(o, what=f"param {n!r}") for o, n in zip(items, gnames)]
        for (a, d), n in zip(imported, gnames):
            P.check_dtype(d, f"param {n!r}", a)
            if not a.flags.c_contiguous:
                raise ValueError(f"param {n!r} is not contiguous (strides {a.strides}); pass contiguous arrays")
        arrays = [a for a, _ in imported]
        device, device_id = self._place(arrays, gnames)
        old = self._engine.layout if self._engine is not None else FlatLayout([])
        specs = [(s.name, s.shape, s.dtype, s.group) for s in old.slots]
        specs += [(n, a.shape, d, gi) for n, (a, d) in zip(gnames, imported)]
        pad = self._sharding.pad_to if self._sharding is not None else 1
        layout = FlatLayout(specs, self._precision.align, pad, self.bucket_bytes)  # ValueError on duplicate names
        readonly = [not getattr(a.flags, "writeable", True) or is_read_only_producer(o)
                    for a, o in zip(arrays, items)]
        all_arrays = self._arrays + arrays
        names = layout.names
        starts = np.asarray([P.address(a) for a in all_arrays], dtype=np.int64)
        ends = starts + np.asarray([a.nbytes for a in all_arrays], dtype=np.int64)
        P.check_no_overlap(starts, ends, names, "params")
        offload = engine_offload(self._offload, self._disk, device) if self._engine is None else None
        return group, g, layout, items, gnames, arrays, readonly, device, device_id, offload

    def _build_group(self, group: Mapping[str, Any], g: dict[str, Any], layout: FlatLayout, items: list[Any],
                     gnames: list[str], arrays: list[Any], readonly: list[bool], device: str, device_id: int | None,
                     offload: Any) -> None:
        """Build what ``_checked_group`` checked: the engine (or its extension), masters, the group."""
        gi = len(self.param_groups)
        start = len(self._objects)
        if self._engine is None:
            self._engine = Engine(layout, device=device, device_id=device_id, kernel=self.kernel,
                                  decoupled=self._decoupled, num_threads=self.num_threads,
                                  algorithm=self._spec.algorithm, disk=self._disk, offload=offload,
                                  precision=self._precision, sharding=self._sharding)
        else:
            self._engine.extend(layout)
        eng = self._engine
        with eng.on_device():
            # read-only producers (JAX) are never written: keep an owned copy and return it
            arrays = [a.copy() if ro else a for a, ro in zip(arrays, readonly)]
            for i, a in enumerate(arrays):
                eng.load_master(start + i, a)
        eng.sync()
        schedules = dict(group.get("schedules") or {})
        g["params"] = items
        g["names"] = gnames
        g["schedules"] = schedules
        self.param_groups.append(g)
        self._written.append({})
        self._adopt_schedules(gi, g)
        self._write_values(gi, g, eng.count)
        self._objects += items
        self._arrays += arrays
        self._readonly += readonly
        self._versions += [P.version(o) for o in items]
        self._pptrs = np.asarray([P.address(a) for a in self._arrays], dtype=np.int64)
        # the ranges the kernels write: read-only producers' owned copies, not the producers' memory
        self._spans = (self._pptrs.copy(), self._pptrs + np.asarray([a.nbytes for a in self._arrays], np.int64))
        self._last_grads += [None] * len(items)
        self._last_imports += [None] * len(items)
        self._alias_checked = None

    def _place(self, arrays: Sequence[Any], names: Sequence[str]) -> tuple[str, int | None]:
        """Host or GPU for these arrays: all params on one device (the first group's)."""
        gpu = [not isinstance(a, np.ndarray) for a in arrays]
        if any(gpu) and not all(gpu):
            raise ValueError(f"params live in different memories: {names[gpu.index(True)]!r} on a GPU, "
                             f"{names[gpu.index(False)]!r} on the host")
        device = "gpu" if all(gpu) else "cpu"
        device_id = None
        if device == "gpu":
            devices = {a.device.id for a in arrays}
            if len(devices) > 1:
                raise ValueError(f"params live on several GPUs {sorted(devices)}; use one optimizer per device")
            device_id = devices.pop()
        if self._sharding is not None:  # NCCL moves GPU memory only; the others serve GPU params staged
            Sharding.check_memory(self._sharding.comm, device == "gpu", device_id)
        if self._engine is not None:
            if (device, device_id) != (self._engine.device, self._engine.device_id):
                raise ValueError(f"param {names[0]!r} is on {device} {device_id if device_id is not None else ''}"
                                 f", the optimizer's params on {self._engine.device}")
            return device, device_id
        if device == "cpu":
            if self._kernel_arg == "gpu":
                raise ValueError("kernel='gpu' needs params in GPU memory (CuPy arrays, torch CUDA tensors, ...)")
            return device, None
        if self._kernel_arg not in (None, "gpu"):
            raise ValueError(f"params are on a GPU: kernel must be 'gpu' (or None), got {self._kernel_arg!r}")
        self.kernel = "gpu"
        return device, device_id

    # ------------------------------------------------------------------ hyperparameters
    def _adopt_schedules(self, gi: int, g: dict[str, Any]) -> None:
        """Schedules assigned to lr/betas/momentum/weight_decay move to ``g["schedules"]``; a float the
        caller assigned (different from the one npadam wrote) replaces the schedule."""
        sch = g.setdefault("schedules", {})
        written = self._written[gi]
        for name, (key, idx) in self._spec.scheduled.items():
            cur = g[key] if idx is None else g[key][idx]
            if isinstance(cur, Schedule):
                sch[name] = cur
            elif name in sch and name in written and cur != written[name]:
                del sch[name]
        for key in {key for key, idx in self._spec.scheduled.values() if idx is not None}:
            g[key] = tuple(g[key])

    def _write_values(self, gi: int, g: dict[str, Any], k: int) -> None:
        """Put the scheduled values for update ``k`` into the group as floats (what loggers read)."""
        sch = g["schedules"]
        values = {}
        for name in self._spec.scheduled:
            if name in sch:
                values[name] = self._written[gi][name] = float(sch[name](k))
        g.update(self._spec.with_schedules({key: g[key] for key, _ in self._spec.scheduled.values()}, values))

    def _group_values(self, k: int) -> list[dict[str, Any]]:
        out = []
        for gi, g in enumerate(self.param_groups):
            self._adopt_schedules(gi, g)
            h = self._spec.with_schedules(g, g["schedules"])
            out.append(self._spec.values(h, k, f"param_groups[{gi}]."))
        return out

    def _sync_groups(self) -> None:
        """Groups appended to ``param_groups`` directly are adopted like ``add_param_group``. First,
        param all-gathers a step left in flight (``wait_params=False``) are completed."""
        if self._sharding is not None and self._sharding.pending:
            self.wait_params()
        known = len(self._written)
        if len(self.param_groups) > known:
            added = self.param_groups[known:]
            del self.param_groups[known:]
            for g in added:
                self.add_param_group(g)
        counts = [len(g["params"]) for g in self.param_groups]
        if sum(counts) != len(self._objects) or len(self.param_groups) < known:
            raise ValueError("param_groups were changed in place (params added or removed inside a group, or "
                             "groups deleted); add params with add_param_group, or build a new optimizer")

    # ------------------------------------------------------------------ step
    @property
    def step_count(self) -> int:
        """Completed (not skipped) updates: the index ``k`` Schedules see next."""
        return self._engine.count

    @property
    def layout(self) -> FlatLayout:
        return self._engine.layout

    @property
    def device(self) -> str:
        return self._engine.device

    @property
    def params(self) -> Any:
        """The parameters: the caller's objects, or the updated copies of read-only ones (as a pytree
        when they were given as one; a flat dict with JAX arrays as that dict, JAX arrays)."""
        out = [a if ro else o for o, a, ro in zip(self._objects, self._arrays, self._readonly)]
        if self._tree is not None and any(self._readonly):
            return self._tree.unflatten(out)
        keys = getattr(self, "_keys", None)  # (an optimizer pickled before it existed has none)
        if keys is not None and len(keys) == len(out) and any(
                ro and type(o).__module__.startswith("jax") for o, ro in zip(self._objects, self._readonly)):
            # a flat dict of JAX arrays is a pytree to its user: the same dict back, JAX arrays as the tree's are
            import jax.numpy as jnp

            return {k: jnp.asarray(a) if ro else a for k, a, ro in zip(keys, out, self._readonly)}
        return out

    def _rebind(self) -> None:
        """Follow torch tensors whose storage was replaced (``p.data = ...``) or edited in place (the
        new pointers; the values are the kernels' business: ``current_master``)."""
        for i, o in enumerate(self._objects):
            v = P.version(o)
            if v == self._versions[i] and not (hasattr(o, "data_ptr") and o.data_ptr() != self._pptrs[i]):
                continue
            slot = self._engine.layout.slots[i]
            a, d = import_array(o, what=f"param {slot.name!r}")
            if tuple(a.shape) != slot.shape or d != slot.dtype:
                raise ValueError(f"param {slot.name!r} is now {tuple(a.shape)} {d}, was {slot.shape} "
                                 f"{slot.dtype}: build a new optimizer (or load a state dict into one)")
            if not a.flags.c_contiguous:
                raise ValueError(f"param {slot.name!r} is not contiguous any more (strides {a.strides})")
            starts, ends = self._spans[0].copy(), self._spans[1].copy()
            starts[i] = P.address(a)
            ends[i] = starts[i] + a.nbytes
            P.check_no_overlap(starts, ends, self._engine.layout.names, "params")
            self._spans = (starts, ends)
            self._arrays[i] = a
            self._pptrs[i] = starts[i]
            # no master reload: the kernels' current_master select takes the param where its bits are
            # not the master's rounding, and keeps the master's precision where they are
            self._versions[i] = v
            self._alias_checked = None

    def _collect_grads(self, grads: Any) -> tuple[np.ndarray, np.ndarray, list[str], list[Any], list[str], list[Any]]:
        """Check this step's grads: ``(active mask, grad pointers, grad dtype per buffer, grads as given
        (reused by identity next step), grad dtype per param, the imported arrays the pointers point
        into)``. The imported arrays must stay alive as long as the pointers are used: an import may
        be a copy (a bfloat16 JAX array), not a view of the grad as given."""
        names = self._engine.layout.names
        if grads is None:
            if not all(hasattr(o, "grad") for o in self._objects):
                raise ValueError("step() needs grads (in params order) unless every param carries a .grad")
            grads = [o.grad for o in self._objects]
        elif self._tree is not None and not isinstance(grads, list):
            grads = self._tree.flatten(grads)
        elif isinstance(grads, Mapping):
            missing = [n for n in names if n not in grads]
            unknown = [n for n in grads if n not in set(names)]
            if missing or unknown:
                raise ValueError(f"grads dict does not match the params: missing {missing}, unknown {unknown}")
            grads = [grads[n] for n in names]
        else:
            if isinstance(grads, (np.ndarray, str, bytes)) or hasattr(grads, "__dlpack__") \
                    or not hasattr(grads, "__iter__"):
                raise TypeError(f"grads must be a list of arrays (one per param), a dict by name or the params' "
                                f"pytree, got {type(grads).__name__}")
            grads = list(grads)
        if len(grads) != len(names):
            raise ValueError(f"expected {len(names)} gradients (one per param), got {len(grads)}")
        eng = self._engine
        n = len(names)
        if len(self._gptrs) != n:  # params were added: pad, keeping what the reused grads need
            k = n - len(self._gptrs)
            self._gptrs = np.concatenate([self._gptrs, np.zeros(k, np.int64)])
            self._gdtypes = self._gdtypes + [""] * k
        active = np.zeros(n, dtype=bool)
        held = list(self._last_imports) + [None] * (n - len(self._last_imports))
        gptrs = self._gptrs.copy()
        gdt = list(self._gdtypes)
        for i, (g, slot) in enumerate(zip(grads, eng.layout.slots)):
            if g is None:
                continue
            active[i] = True
            if g is self._last_grads[i] and not hasattr(g, "data_ptr"):
                continue  # the same array as last step (flat storage): checked then
            a, d = import_array(g, what=f"grad of {slot.name!r}")
            if isinstance(a, np.ndarray) != (eng.device == "cpu"):
                raise ValueError(f"grad of {slot.name!r} is in {'host' if isinstance(a, np.ndarray) else 'GPU'} "
                                 f"memory, its param in {'host' if eng.device == 'cpu' else 'GPU'} memory")
            if eng.device == "gpu" and a.device.id != eng.device_id:
                raise ValueError(f"grad of {slot.name!r} is on GPU {a.device.id}, the params on GPU {eng.device_id}")
            if a.shape != slot.shape:
                raise ValueError(f"grad of {slot.name!r} has shape {a.shape}, expected {slot.shape}")
            P.check_dtype(d, f"grad of {slot.name!r}", a)
            if not a.flags.c_contiguous:
                raise ValueError(f"grad of {slot.name!r} is not contiguous (strides {a.strides})")
            gptrs[i] = P.address(a)
            gdt[i] = d
            held[i] = a
        gdtypes = []
        for b in eng.layout.buffers:
            kinds = {gdt[t] for t in b.tensors if active[t]}
            if len(kinds) > 1:
                raise TypeError(f"grads of param group {b.group} ({b.dtype} params) mix dtypes {sorted(kinds)}; "
                                "use one gradient dtype per group and param dtype")
            gdtypes.append(kinds.pop() if kinds else "float32")
        self._check_grad_aliasing(grads, active, gptrs, gdt)
        return active, gptrs, gdtypes, grads, gdt, held

    def _check_grad_aliasing(self, grads: list[Any], active: np.ndarray, gptrs: np.ndarray, gdt: list[str]) -> None:
        key = active.tobytes() + gptrs.tobytes()
        if key == self._alias_checked:
            return
        itemsize = np.asarray([4 if d == "float32" else 2 for d in gdt], dtype=np.int64)
        numel = np.asarray([s.numel for s in self._engine.layout.slots], dtype=np.int64)
        gs, ge = gptrs[active], gptrs[active] + (numel * itemsize)[active]
        names = self._engine.layout.names
        sel = np.flatnonzero(active)
        P.check_apart(self._spans[0], self._spans[1], gs, ge,
                    lambda g, p: f"grad of {names[sel[g]]!r} and param {names[p]!r}")
        self._alias_checked = key

    @property
    def buckets(self) -> list[list[str]]:
        """The names of the params in each bucket (flat buffer), in order: what ``grads_ready`` and
        ``wait_params`` take the index of. One bucket per group and param dtype unless
        ``bucket_bytes`` splits them."""
        lay = self._engine.layout
        return [[lay.slots[t].name for t in b.tensors] for b in lay.buffers]

    def grads_ready(self, bucket: int, grads: Any) -> None:
        """Hand over the final grads of one bucket (``buckets[bucket]``) before ``step``: with ``comm``
        their reduce-scatter starts now, while the caller computes the other buckets' grads (the
        backward pass), and the step waits for it instead of sending them again.

        ``grads``: the bucket's grads in ``buckets[bucket]`` order, or a dict by name (None: no grad
        for that param). They are copied into the send buffer now: later changes to those arrays are
        not seen. ``step`` must then be given the same arrays (the same objects, or None where None
        was given here) for that bucket's params; anything else raises on every rank. Every rank
        calls ``grads_ready`` for the same buckets, in the same order (as DDP's bucket hooks fire).
        Without ``comm``: the grads are checked and the bucket is marked; the step does the rest."""
        self._sync_groups()
        bi = self._engine.layout.bucket(bucket)
        names = self.buckets[bi]
        if bi in self._early_objects:
            raise ValueError(f"grads_ready({bi}): bucket {bi} was already handed over for this step")

        def collect() -> tuple:
            if isinstance(grads, Mapping):
                unknown = [k for k in grads if k not in names]
                if unknown:
                    raise ValueError(f"grads_ready({bi}): {unknown[:3]} are not params of bucket {bi} "
                                     f"({names[:5]} ...)")
                given = [grads.get(n) for n in names]
            else:
                given = list(grads)
                if len(given) != len(names):
                    raise ValueError(f"grads_ready({bi}): bucket {bi} has {len(names)} params, got {len(given)} "
                                     "grads")
            full: list[Any] = [None] * len(self._objects)
            for t, g in zip(self._engine.layout.buffers[bi].tensors, given):
                full[t] = g
            active, gptrs, gdtypes, _, _, _ = self._collect_grads(full)
            return active, gptrs, gdtypes, given

        self._early_objects[bi] = hand_over(self._sharding, self._engine, bi, collect)

    def wait_params(self, bucket: int | None = None) -> None:
        """Complete the param all-gather of ``bucket`` (all buckets when None) that
        ``step(..., wait_params=False)`` left in flight: its params then hold the new values. Every
        other call on the optimizer completes them all first. Without one in flight: nothing."""
        if self._sharding is None or not self._sharding.pending:
            if bucket is not None:
                self._engine.layout.bucket(bucket)
            return
        bi = None if bucket is None else self._engine.layout.bucket(bucket)
        if self._sharding.wait_params(self._engine, bi):
            self._versions = [P.version(o, bump=True) for o in self._objects]

    def _check_early(self, raw: list[Any]) -> None:
        """The step's grads of buckets handed over by ``grads_ready`` are the same arrays."""
        bad = self._engine.layout.changed_grad(self._early_objects, raw)
        if bad is not None:
            bi, t = bad
            raise ValueError(f"step: the grad of {self._engine.layout.names[t]!r} is not the array given to "
                             f"grads_ready({bi}); pass the same grads to step (bucket {bi} was already sent)")

    def step(self, grads: Any = None, *, wait_params: bool = True) -> StepInfo:
        """One update. ``grads``: arrays in params order, a dict by name or the params' pytree;
        None reads each param's ``.grad``. A None gradient skips its param (like torch).

        On a GPU the kernels run on CuPy's current stream (see ``npadam.kernels.gpu``):
        run every step on the same stream.

        With ``comm`` it is a collective: every rank passes its local grads (None for the same
        params on every rank) and ends with the same params (see docs/DISTRIBUTED.md).
        ``wait_params=False`` (with ``comm``): return with the params' all-gathers in flight, to
        overlap them with what comes next; ``wait_params(bucket)`` completes one bucket's (e.g.
        before the forward pass reaches it), any other call on the optimizer all of them."""
        try:
            V.flag("wait_params", wait_params)
            self._sync_groups()
            eng = self._engine
            self._rebind()
            k = eng.count
            hyper = self._group_values(k)
            active, gptrs, gdtypes, raw, gdt, held = self._collect_grads(grads)
            self._check_early(raw)
            if not wait_params and any(self._readonly):
                raise ValueError("step(wait_params=False) with read-only params (JAX arrays): their new values "
                                 "are returned by the step, so it must wait for them")
        except Exception as e:
            self._early_objects = {}
            if self._sharding is None:
                raise
            self._sharding.check_step(self._engine.layout, len(self.param_groups), e)
        self._early_objects = {}
        if self._sharding is not None:
            self._sharding.check_step(eng.layout, len(self.param_groups), None, active, gdtypes, hyper,
                                      (self.max_grad_norm, self.skip_nonfinite), eng.steps, wait_params)
        res = eng.step(active, self._pptrs, gptrs, gdtypes, hyper, max_grad_norm=self.max_grad_norm,
                       skip_nonfinite=self.skip_nonfinite, loss_scaler=self.loss_scaler)
        self._gptrs, self._gdtypes, self._last_grads, self._last_imports = gptrs, gdt, list(raw), held
        if not res.skipped:
            for gi, g in enumerate(self.param_groups):
                self._write_values(gi, g, eng.count)
            self._versions = [P.version(o, bump=True) for o in self._objects]
        new = self.params if any(self._readonly) else None
        return StepInfo(res.skipped, res.grad_norm, hyper[0]["lr"], res.loss_scale, eng.count, new)

    def reload_params(self) -> None:
        """Re-read every low-precision param's fp32 master from the param (after editing NumPy
        params in place; torch tensors are followed automatically through their version counter)."""
        for i, a in enumerate(self._arrays):
            self._engine.load_master(i, a)

    def _param_bits(self, i: int) -> np.ndarray:
        """Param ``i``'s storage bits on the host (uint16 for a 16-bit param), flat."""
        a = self._arrays[i]
        host = a if isinstance(a, np.ndarray) else a.get()
        return np.ascontiguousarray(host).reshape(-1).view(np.uint16).copy()

    def _write_bits(self, i: int, bits: np.ndarray) -> None:
        """Write uint16 storage bits into 16-bit param ``i``."""
        a = self._arrays[i]
        if isinstance(a, np.ndarray):
            a.reshape(-1).view(np.uint16)[...] = bits
        else:
            a.reshape(-1).view(self._engine.xp.uint16)[...] = self._engine.xp.asarray(bits)

    def _checkpoint_write_params(self, values: Sequence[np.ndarray]) -> None:
        """Write flat fp32 ``values`` (one per param, checked by ``npadam.checkpoint``) into the params,
        rounded to each param's dtype (round to nearest even, as a step writes them; with param
        remainders the master's high half, ties away from zero). The masters were restored by
        ``load_state_dict`` first: the written params are their rounding."""
        self._engine.sync()
        for i, (a, v) in enumerate(zip(self._arrays, values)):
            dtype = self._engine.layout.slots[i].dtype
            if dtype == "bfloat16" and self._precision.remainders:
                host = prec.split_remainder(np.asarray(v, np.float32).reshape(-1))[0].view(_storage_dtype(dtype))
            else:
                host = ref.to_storage(np.asarray(v, np.float32), _storage_dtype(dtype))
            if isinstance(a, np.ndarray):
                a.reshape(-1)[...] = host.view(a.dtype)
            else:  # CuPy: the bits as they are (bfloat16 params are uint16 arrays there)
                a.reshape(-1)[...] = self._engine.xp.asarray(host.view(a.dtype))
        self._engine.sync()
        self._versions = [P.version(o, bump=True) for o in self._objects]

    def close(self) -> None:
        """Delete the files of state kept on disk (``nvme_offload_fraction``); nothing else to do
        for an optimizer without them. Idempotent; the files also go when the optimizer is
        garbage-collected or the process exits. The optimizer cannot step after ``close()``."""
        if self._engine is not None:
            self._engine.close()

    def __getstate__(self) -> dict[str, Any]:
        """``copy.deepcopy`` and pickling: the state without this process's raw grad pointers."""
        if self._sharding is not None:
            raise TypeError("an optimizer sharded across ranks (comm=) cannot be copied or pickled: its state is "
                            "spread over the ranks; use state_dict() (this rank's shard) or full_state_dict()")
        if self._engine is not None and self._engine.tiered:
            raise TypeError("an optimizer with state in another tier (offload_fraction for GPU params, or "
                            "nvme_offload_fraction) cannot be copied or pickled: save it with npadam.checkpoint.save "
                            "(or state_dict()) instead")
        state = dict(self.__dict__)
        n = len(self._objects)
        state.update(_last_grads=[None] * n, _last_imports=[None] * n, _gptrs=np.zeros(n, np.int64),
                     _gdtypes=[""] * n, _alias_checked=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """The copy's own arrays: writable producers re-imported from the copied objects (a NumPy
        view of a torch tensor would otherwise be a detached copy), read-only producers' owned
        copies kept; the pointer tables rebuilt from them (a copy must never write the original's
        memory, and another process's addresses mean nothing)."""
        self.__dict__.update(state)
        names = self._engine.layout.names
        self._arrays = [a if ro else import_array(o, what=f"param {n!r}")[0]
                        for o, a, ro, n in zip(self._objects, self._arrays, self._readonly, names)]
        self._pptrs = np.asarray([P.address(a) for a in self._arrays], dtype=np.int64)
        self._spans = (self._pptrs.copy(), self._pptrs + np.asarray([a.nbytes for a in self._arrays], np.int64))
        self._versions = [P.version(o) for o in self._objects]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the ``.grad`` of params that carry one (torch tensors): None, or zeros."""
        for o in self._objects:
            if getattr(o, "grad", None) is not None:
                if set_to_none:
                    o.grad = None
                else:
                    o.grad.zero_()

    # ------------------------------------------------------------------ state
    def _plain_groups(self) -> list[dict[str, Any]]:
        out = []
        for g in self.param_groups:
            h = self._spec.with_schedules({k: g[k] for k in self._spec.keys}, g["schedules"])
            d = {k: H.dump(v) for k, v in h.items()}
            d["n_params"] = len(g["params"])
            out.append(d)
        return out

    def state_dict(self) -> dict[str, Any]:
        """torch's layout (``state`` by param index with ``step``, ``exp_avg``, ``exp_avg_sq``,
        ``max_exp_avg_sq``; ``param_groups`` with ``params`` indices) plus, under ``"npadam"``, the
        names, shapes, dtypes, the update count and the loss scaler, and each low-precision param's
        fp32 ``master``. Arrays are NumPy copies in each param's shape; a Schedule is stored as
        ``{"schedule": s.to_dict()}``. See ``npadam._state``. Groups appended to ``param_groups``
        and re-bound params are taken in first, as a step would.

        With ``comm``: this rank's shard (flat arrays of the elements it owns, and
        ``npadam.shard``; see docs/DISTRIBUTED.md); ``full_state_dict()`` gathers the whole state."""
        self._sync_groups()
        self._rebind()
        return _state.export(self._engine, self._plain_groups(), type(self).__name__, self.loss_scaler)

    def full_state_dict(self) -> dict[str, Any]:
        """The whole state dict, as one process holding every shard would return it (``state_dict()``
        without ``comm``), on every rank. With ``comm`` a collective: each buffer's state is
        all-gathered (every rank holds the whole state while the dict is built)."""
        self._sync_groups()
        self._rebind()
        eng = self._engine if self._sharding is None else self._sharding.full_state(self._engine)
        return _state.export(eng, self._plain_groups(), type(self).__name__, self.loss_scaler)

    def _fill_unsaved(self, sd: Mapping[str, Any],
                      pending: list[tuple[Schedule, dict[str, Any]]] | None = None) -> Mapping[str, Any]:
        """``sd`` with the schedules it could not hold (Python callables) taken from this optimizer;
        the saved controller states inside them go to ``pending`` (see ``Spec.fill_unsaved``)."""
        saved = sd.get("param_groups") if isinstance(sd, Mapping) else None
        if not isinstance(saved, (list, tuple)) or not any(
                H.has_unsaved(x) for d in saved if isinstance(d, Mapping) for x in d.values()):
            return sd
        pending = [] if pending is None else pending
        groups = [self._spec.fill_unsaved(self.param_groups[i]["schedules"], d, f"state dict param_groups[{i}].",
                                          pending)
                  if isinstance(d, Mapping) and i < len(self.param_groups) else d  # parse names a count mismatch
                  for i, d in enumerate(saved)]
        return {**sd, "param_groups": groups}

    def load_state_dict(self, sd: Mapping[str, Any], convert: bool = False) -> None:
        """Restore ``state_dict()`` output (or a ``torch.optim.Adam``/``AdamW`` state dict, params
        matched by position). Everything is checked first; nothing changes on error.

        ``convert=True``: state in another precision than this optimizer's (an fp32-state dict
        into ``exp_avg_dtype="bfloat16"``, fp32 masters into ``store_param_remainders``, ...) is
        converted (see docs/PRECISION.md); without it such a dict is a ValueError."""
        V.flag("convert", convert)
        self._sync_groups()
        pending: list[tuple[Schedule, dict[str, Any]]] = []
        try:
            plain = self._plain_groups()
            sd = self._fill_unsaved(self._unshard(sd, convert), pending)
            parsed = _state.parse(sd, self._engine, plain, type(self).__name__, self._spec.check_group,
                                  self.loss_scaler, convert=bool(convert), param_bits=self._param_bits)
        except Exception as e:
            if self._sharding is None:
                raise
            self._sharding.agree("load_state_dict", e)
        if self._sharding is not None:
            self._sharding.agree("load_state_dict", None)
        _state.apply(parsed, self._engine)
        for i, bits in parsed.param_bits:
            self._write_bits(i, bits)
        if parsed.param_bits:
            self._versions = [P.version(o, bump=True) for o in self._objects]
        for live, state in pending:  # a Plateau around a callable schedule: its saved state, now
            live.load_state_dict(state)
        for gi, (g, h) in enumerate(zip(self.param_groups, parsed.groups)):
            h = self._spec.keep_stateful(g["schedules"], h)  # a Plateau the caller steps stays in use
            g.update({k: h[k] for k in self._spec.keys})
            g["schedules"] = {}
            self._written[gi] = {}
            self._adopt_schedules(gi, g)
            self._write_values(gi, g, self._engine.count)
        for i in parsed.reload_masters:
            self._engine.load_master(i, self._arrays[i])
        if parsed.loss_scaler is not None and self.loss_scaler is not None:
            self.loss_scaler.load_state_dict(parsed.loss_scaler)

    def _unshard(self, sd: Any, convert: bool) -> Any:
        """A shard state dict (``npadam.shard``) as a full-shaped one for this rank (zeros elsewhere);
        other dicts as they are. With ``comm``, a full dict loads too: each rank keeps its shard."""
        return unshard_state_dict(sd, self._engine, self._sharding, convert)

    def __repr__(self) -> str:
        lay = self._engine.layout
        return (f"{type(self).__name__}({len(lay.slots)} params in {len(lay.buffers)} buffers, "
                f"{lay.numel:,} elements, kernel={self.kernel!r}, step={self._engine.count})")


class _AdamBase(_Optimizer):
    def __init__(self, params: Any, lr: float | Schedule | ScheduleSet = 1e-3,
                 betas: tuple[float | Schedule, float | Schedule] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float | Schedule = 0.0, amsgrad: bool = False, maximize: bool = False,
                 bias_correction: bool = True, **options: Any) -> None:
        if isinstance(lr, GroupSchedules):
            params, lr = _per_group(params, lr, lambda gs, groups: gs.param_groups(groups, betas=tuple(betas)))
        if isinstance(lr, ScheduleSet):
            sset = lr
            lr = sset.lr
            if sset.weight_decay is not None:
                weight_decay = sset.weight_decay
            betas = (sset.beta1 if sset.beta1 is not None else betas[0],
                     sset.beta2 if sset.beta2 is not None else betas[1])
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, bias_correction=bias_correction)
        super().__init__(params, defaults, **options)


class AdamW(_AdamBase):
    """AdamW (decoupled weight decay, ``torch.optim.AdamW``): ``p *= 1 - lr * wd`` before the Adam step.

    The weight decay is multiplied by the learning rate, as in PyTorch. See the
    module docstring for the step and ``npadam.reference.adamw`` for the exact arithmetic.

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


class SGD(_Optimizer):
    """SGD with momentum, ``torch.optim.SGD`` (what Megatron-Core builds for ``optimizer="sgd"``).

    ``weight_decay`` is L2 (added to the gradient), ``dampening`` damps the gradient's share of
    the momentum buffer after the first step, ``nesterov`` needs ``momentum > 0`` and
    ``dampening == 0``. ``lr``, ``momentum`` and ``weight_decay`` may be Schedules (a ScheduleSet
    gives lr, weight decay and, as momentum, beta1). The options after ``maximize`` are
    ``AdamW``'s. The momentum buffer is the only state (none with ``momentum=0``); see
    ``npadam.reference.sgd`` for the exact arithmetic (torch's fused multiply-adds included).

    >>> import numpy as np, npadam
    >>> w = np.ones(2, np.float32)
    >>> opt = npadam.SGD([w], lr=0.5, momentum=0.9)
    >>> [opt.step([np.ones(2, np.float32)]).step for _ in range(2)], w.tolist()
    ([1, 2], [-0.44999998807907104, -0.44999998807907104])
    """

    _spec = H.SGD

    def __init__(self, params: Any, lr: float | Schedule | ScheduleSet = 1e-3, momentum: float | Schedule = 0.0,
                 dampening: float = 0.0, weight_decay: float | Schedule = 0.0, nesterov: bool = False,
                 maximize: bool = False, *, max_grad_norm: float | None = None, loss_scaler: LossScaler | None = None,
                 skip_nonfinite: bool = True, kernel: str | None = None, num_threads: int | None = None,
                 offload_fraction: float = 0.0, comm: Any = None, nvme_offload_fraction: float = 0.0,
                 nvme_offload_dir: str | os.PathLike[str] | None = None, nvme_staging_bytes: int = 64 << 20,
                 host_state_bytes: int | None = None, pin_memory: bool = True,
                 gpu_state_bytes: int | None = None) -> None:
        if isinstance(lr, GroupSchedules):
            params, lr = _per_group(params, lr, _sgd_groups)
        if isinstance(lr, ScheduleSet):
            sset = lr
            lr = sset.lr
            if sset.weight_decay is not None:
                weight_decay = sset.weight_decay
            if sset.beta1 is not None:
                momentum = sset.beta1
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize)
        super().__init__(params, defaults, max_grad_norm=max_grad_norm, loss_scaler=loss_scaler,
                         skip_nonfinite=skip_nonfinite, kernel=kernel, num_threads=num_threads,
                         offload_fraction=offload_fraction, comm=comm, nvme_offload_fraction=nvme_offload_fraction,
                         nvme_offload_dir=nvme_offload_dir, nvme_staging_bytes=nvme_staging_bytes,
                         host_state_bytes=host_state_bytes, pin_memory=pin_memory, gpu_state_bytes=gpu_state_bytes)


def _per_group(params: Any, gs: GroupSchedules, apply: Any) -> tuple[Any, Any]:
    """``lr=GroupSchedules``: ``(params, lr)`` with group i's schedules put on param group i
    (by ``apply(gs, groups)``). One schedule set and params that are not a group list: that set
    is the optimizer's (any params form works then)."""
    if isinstance(params, (list, tuple)) or hasattr(params, "__next__"):
        params = list(params)  # a generator is consumed once, here
        if params and P.is_group_list(params):
            return apply(gs, params), 1e-3
    if len(gs) == 1:
        return params, gs[0]
    raise ValueError(f"lr has schedules for {len(gs)} param groups: pass params as a list of "
                     f"{len(gs)} group dicts ([{{'params': ...}}, ...])")


def _sgd_groups(gs: GroupSchedules, groups: Sequence[Any]) -> list[dict[str, Any]]:
    """Per-group schedules on SGD groups: beta1 is the momentum; a beta2 has no place."""
    if any(s.beta2 is not None for s in gs):
        raise ValueError("the per-group schedules set beta2, which SGD does not have")
    out = GroupSchedules(ScheduleSet(lr=s.lr, weight_decay=s.weight_decay) for s in gs).param_groups(groups)
    for g, s in zip(out, gs):
        if s.beta1 is not None:
            g["momentum"] = s.beta1
    return out


def _storage_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)
