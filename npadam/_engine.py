"""The core both front-ends share: flat optimizer state and one step over it.

``Engine`` owns, per flat buffer of a ``FlatLayout``, the float32 state (fp32
master of low-precision params, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``
for Adam; the momentum buffer in ``exp_avg`` for SGD, allocated at the first step
with momentum) in host memory (NumPy) or on the params' GPU (CuPy), the per-tensor
step counts (torch semantics: a tensor without a gradient is not stepped, its bias
correction uses its own count), for SGD whether each tensor's momentum buffer has
started (torch creates it at the tensor's first step with momentum) and the
optimizer's update count ``k`` (what Schedules see).

A front-end (``npadam.AdamW`` on arrays, ``npadam.torch.AdamW`` on torch tensors)
hands ``step`` the pointer tables of this step's params and grads and every
group's hyperparameters as checked floats; the engine computes every scalar
first, then the norm, then skips or updates. Nothing is written before all
inputs are known to be valid.
"""

from __future__ import annotations

import contextlib
import math
from fractions import Fraction
from dataclasses import dataclass
from typing import Any, Sequence

import ml_dtypes
import numpy as np

from . import kernels as K
from .kernels.threads import limited
from .layout import FlatLayout
from .reference import adamw as ref
from .reference import sgd as sgd_ref
from ._placement import DiskPlacement, OffloadPlacement
from ._precision import StatePrecision
from ._tiered import STATE_NAMES, TieredState, _host
from .reference import precision as prec
from .scaler import LossScaler


@dataclass(frozen=True)
class StepInfo:
    """What one ``step`` did.

    ``skipped``: a non-finite gradient skipped the step. ``grad_norm``: the global
    L2 norm of the unscaled gradients (float64; None when no norm pass ran).
    ``lr``: the first group's learning rate for this update. ``loss_scale``: the
    scale the gradients were divided by. ``step``: completed updates after this call.
    ``params``: the new parameters when some producer is read-only (JAX; in the
    caller's pytree structure when the params were given as one), else None.
    """

    skipped: bool
    grad_norm: float | None
    lr: float
    loss_scale: float
    step: int
    params: Any = None


@dataclass(frozen=True)
class StepOptions:
    """The step options both front-ends take, checked once (see ``step_options``)."""

    max_grad_norm: float | None
    loss_scaler: LossScaler | None
    skip_nonfinite: bool
    num_threads: int | None


def step_options(max_grad_norm: Any, loss_scaler: Any, skip_nonfinite: Any, num_threads: Any,
                 comm: Any, shardable: bool = False) -> StepOptions:
    """Check the optimizer options that are not per-group hyperparameters; ValueError/TypeError
    naming the bad value. ``shardable``: the front-end takes ``comm`` and checks it itself
    (``npadam.AdamW`` / ``Adam`` / ``SGD`` and ``npadam.torch``'s, through ``npadam._sharded.Sharding``);
    a front-end that does not shard refuses it."""
    from . import _validate as V
    from .kernels.threads import max_threads

    if max_grad_norm is not None:
        max_grad_norm = V.real("max_grad_norm", max_grad_norm, lo=0.0, lo_open=True)
    if loss_scaler is not None and not isinstance(loss_scaler, LossScaler):
        raise TypeError(f"loss_scaler must be a npadam.LossScaler, got {type(loss_scaler).__name__}")
    V.flag("skip_nonfinite", skip_nonfinite)
    if num_threads is not None:
        num_threads = V.integer("num_threads", num_threads, lo=1)
        if num_threads > max_threads():
            raise ValueError(f"num_threads={num_threads} is more than Numba's {max_threads()} threads "
                             "(NUMBA_NUM_THREADS, set before Numba is imported)")
    if comm is not None and not shardable:
        raise ValueError(f"comm={comm!r}: this optimizer does not shard its state across ranks; "
                         "npadam.AdamW / Adam / SGD and npadam.torch.AdamW / Adam / SGD do (see docs/DISTRIBUTED.md)")
    return StepOptions(max_grad_norm, loss_scaler, bool(skip_nonfinite), num_threads)


@dataclass(frozen=True)
class StepResult:
    skipped: bool
    grad_norm: float | None
    loss_scale: float


class Engine(TieredState):
    """Flat state + the fused step for one ``FlatLayout`` (see the module docstring).

    ``device``: ``"cpu"`` or ``"gpu"`` (then ``device_id`` is the CUDA device);
    ``kernel``: ``"cpu"``, ``"reference"`` or ``"gpu"``; ``algorithm``: ``"adam"`` (``decoupled``
    chooses AdamW or Adam-L2) or ``"sgd"``. ``views_version`` changes whenever a state array
    appears (amsgrad's ``max_exp_avg_sq``, SGD's momentum buffers): views taken before are stale.
    """

    def __init__(self, layout: FlatLayout, *, device: str = "cpu", device_id: int | None = None,
                 kernel: str = "cpu", decoupled: bool = True, num_threads: int | None = None,
                 algorithm: str = "adam", disk: DiskPlacement | None = None,
                 offload: OffloadPlacement | None = None, precision: StatePrecision | None = None,
                 sharding: Any = None) -> None:
        if algorithm not in ("adam", "sgd"):
            raise ValueError(f"internal: unknown algorithm {algorithm!r}")
        self.precision = precision if precision is not None else StatePrecision()
        self.device = device
        self.device_id = device_id
        self.kernel = kernel
        self.decoupled = decoupled
        self.num_threads = num_threads
        self.algorithm = algorithm
        #: ``npadam._sharded.Sharding`` when the state is sharded across ranks (``comm=``), else None;
        #: ``shards[bi]``: the elements ``[lo, hi)`` of buffer ``bi`` whose state this engine holds
        self.sharding = sharding
        self.shards: list[tuple[int, int]] = []
        self.layout = FlatLayout([])
        self.bufs: list[K.BufferState] = []
        self.steps = np.zeros(0, np.int64)
        self.started = np.zeros(0, bool)  # SGD: the tensor's momentum buffer exists (torch's state)
        self.views_version = 0
        self.count = 0
        self.placement = disk
        self.offload = offload
        # buffer -> (first element on disk, DiskState of [first, size))
        self.disk: dict[int, tuple[int, Any]] = {}
        # GPU params: buffer -> (first element in host memory, BufferState of the host part up to the disk)
        self.host: dict[int, tuple[int, K.BufferState]] = {}
        self.host_left = disk.host_bytes if disk is not None and disk.host_bytes is not None else 0
        self.device_left = offload.device_bytes if offload is not None and offload.device_bytes is not None else 0
        self._copier: Any = None
        self._staging: Any = None
        if sharding is not None:  # the step's send, receive and gather buffers where the state is
            sharding.bind(self)
        self.extend(layout)

    # ------------------------------------------------------------------ structure
    @property
    def xp(self) -> Any:
        """NumPy for host state, CuPy for GPU state (a property: engines pickle and deep-copy)."""
        if self.device == "gpu":
            import cupy

            return cupy
        return np

    def on_device(self) -> Any:
        """Context: the params' GPU as CuPy's current device (nothing on the host)."""
        return contextlib.nullcontext() if self.device == "cpu" else self.xp.cuda.Device(self.device_id)

    def sync(self) -> None:
        """Wait for all work on the params' GPU (every stream); nothing on the host."""
        if self.device == "gpu":
            self.xp.cuda.Device(self.device_id).synchronize()

    def extend(self, layout: FlatLayout) -> None:
        """Adopt a layout that keeps every existing buffer and slot as it is and may add buffers
        (``add_param_group``); new buffers get zero state, existing state is kept."""
        old = self.layout
        if len(layout.slots) < len(old.slots) or any(
                a != b for a, b in zip(old.slots, layout.slots[: len(old.slots)])):
            raise ValueError("internal: a new layout must extend the old one")
        for b_old, b_new in zip(old.buffers, layout.buffers):
            if (b_old.group, b_old.dtype, b_old.size) != (b_new.group, b_new.dtype, b_new.size):
                raise ValueError("internal: existing buffers must not change")
        xp = self.xp
        adam = self.algorithm == "adam"
        with self.on_device():
            for bi, b in enumerate(layout.buffers[len(old.buffers):], start=len(old.buffers)):
                dtypes = self._dtypes(b.dtype)
                names = [k for k in ("master", "exp_avg", "exp_avg_sq") if k in dtypes and (adam or k == "master")]
                # this engine's elements [lo, hi) (a shard across ranks, or the whole buffer): state of
                # [lo, n0) with the params, [n0, n1) in host memory (GPU params), [n1, hi) on disk
                lo, hi = self.sharding.shard(b.size) if self.sharding is not None else (0, b.size)
                self.shards.append((lo, hi))
                # budgets count the state every step has: SGD's momentum buffer too (made at its first step)
                # (a Fraction: fp8 moments add one float32 scale per block of 256 elements)
                scales = list(self._scales(np, 0))
                per_elem = Fraction(sum(dtypes[k].itemsize for k in names) + (0 if adam else 4)) + \
                    Fraction(4 * len(scales), prec.FP8_BLOCK)
                align = self.precision.align
                moved = 0
                if self.offload is not None:
                    moved, self.device_left = self.offload.split(hi - lo, per_elem, self.device_left, align)
                on_disk = 0
                if self.placement is not None:
                    base = moved if self.offload is not None else hi - lo
                    on_disk, self.host_left = self.placement.split(base, per_elem, self.host_left, align)
                n1 = hi - on_disk
                n = hi - moved if self.offload is not None else n1
                if on_disk:  # precision-aware state in its own storage dtypes, fp8 scales one per block
                    self.disk[bi] = (n1, self.placement.store(
                        on_disk, names + scales, {k: dtypes[k] for k in names + scales},
                        {q: prec.FP8_BLOCK for q in scales}))
                kinds = self._kinds(b.dtype)
                if n1 > n:  # pageable: the state never crosses the bus
                    self.host[bi] = (n, K.BufferState(n1 - n, *(np.zeros(n1 - n, dtypes[k]) if k in names else None
                                                                for k in STATE_NAMES), b.dtype, **kinds,
                                                      **self._scales(np, n1 - n)))
                self.bufs.append(K.BufferState(hi - lo, *(xp.zeros(n - lo, dtypes[k]) if k in names else None
                                                          for k in STATE_NAMES), b.dtype, **kinds, base=lo,
                                               **self._scales(xp, n - lo)))
        self.sync()
        self.steps = np.concatenate([self.steps, np.zeros(len(layout.slots) - len(old.slots), np.int64)])
        self.started = np.concatenate([self.started, np.zeros(len(layout.slots) - len(old.slots), bool)])
        self.layout = layout
        self.buffer_slots = [np.asarray(b.tensors, dtype=np.int64) for b in layout.buffers]
        self.slot_groups = np.asarray([s.group for s in layout.slots], dtype=np.int64)
        self.offsets = [layout.offsets(i) for i in range(len(layout.buffers))]
        self.sizes = [layout.sizes(i) for i in range(len(layout.buffers))]

    def _dtypes(self, pdtype: str) -> dict[str, np.dtype]:
        """The storage dtype of each state array a buffer of params ``pdtype`` has from the start
        (``max_exp_avg_sq`` takes ``exp_avg_sq``'s; SGD's momentum buffer is float32)."""
        pr = self.precision
        out: dict[str, np.dtype] = {}
        if pdtype != "float32":
            out["master"] = np.dtype(np.int16 if pr.remainders and pdtype == "bfloat16" else
                                     np.uint16 if pr.w_kind == prec.F16 and pdtype == "bfloat16" else np.float32)
        if self.algorithm == "adam":
            out["exp_avg"] = prec.storage(pr.m_kind)
            out["exp_avg_sq"] = out["max_exp_avg_sq"] = prec.storage(pr.v_kind)
            out["m_scale"] = out["v_scale"] = out["vmax_scale"] = np.dtype(np.float32)  # fp8 block scales
        else:
            out["exp_avg"] = np.dtype(np.float32)
        return out

    def _scales(self, xp: Any, n: int) -> dict[str, Any]:
        """The fp8 block-scale arrays of ``n`` state elements (``n`` a multiple of the block)."""
        pr, nb = self.precision, -(-n // prec.FP8_BLOCK)
        out = {}
        if pr.m_kind in prec.FP8:
            out["m_scale"] = xp.zeros(nb, np.float32)
        if pr.v_kind in prec.FP8:
            out["v_scale"] = xp.zeros(nb, np.float32)
        return out

    def _kinds(self, pdtype: str) -> dict[str, Any]:
        """A buffer's ``BufferState`` storage fields (``npadam.kernels.BufferState``)."""
        pr = self.precision
        return dict(m_kind=pr.m_kind, v_kind=pr.v_kind, stochastic=pr.stochastic,
                    remainders=pr.remainders and pdtype == "bfloat16",
                    w_kind=pr.w_kind if pdtype == "bfloat16" else prec.F32)

    def load_master(self, slot: int, param: Any) -> None:
        """Set a low-precision param's fp32 master from the param (widened exactly, on its device);
        with remainders, zero its remainder (the master is then the param).

        ``param``: a 1-D NumPy array (bfloat16/float16) or CuPy ``uint16``/``float16`` array."""
        s = self.layout.slots[slot]
        buf = self.bufs[s.buffer]
        if buf.master is None:
            return
        if buf.remainders:
            self._write_range(s.buffer, "master", s.offset, np.zeros(s.numel, np.int16))
            return
        if self.device == "cpu":
            wide = np.asarray(param).reshape(-1).astype(np.float32)
            self._write_range(s.buffer, "master", s.offset, wide if buf.w_kind == prec.F32 else
                              prec.narrow(wide, buf.w_kind))
            return
        cp = self.xp
        with self.on_device():
            bits = param.reshape(-1).view(cp.uint16)
            if s.dtype == "bfloat16":
                wide = (bits.astype(cp.uint32) << 16).view(cp.float32)
            else:
                wide = bits.view(cp.float16).astype(cp.float32)
            if buf.w_kind != prec.F32:  # float16 masters: prec.narrow (nearest even, NaN -> 0x7E00) on the device
                wide = cp.where(cp.isnan(wide), cp.uint16(0x7E00), wide.astype(cp.float16).view(cp.uint16))
            self._write_range(s.buffer, "master", s.offset, wide)

    # ------------------------------------------------------------------ the step
    def _batches(self, bi: int, active: np.ndarray, pptrs: np.ndarray, gptrs: np.ndarray,
                 gdtype: str) -> tuple[K.Batch, list[tuple[int, K.Batch]]]:
        """This step's batch for buffer ``bi`` (its active tensors, for the norm) and the same
        split by per-tensor step count (Adam: ``(step, batch)``, one kernel call each; one in the
        usual case) or by whether the momentum buffer has started (SGD: ``(1, batch)`` for the
        tensors' first step with momentum, ``(2, batch)`` for the others)."""
        slots = self.buffer_slots[bi]
        mask = active[slots]
        if mask.all():
            sel = slots
            offsets, sizes = self.offsets[bi], self.sizes[bi]
            key = b"all"
        else:
            sel = slots[mask]
            offsets, sizes = self.offsets[bi][mask], self.sizes[bi][mask]
            key = mask.tobytes()
        whole = K.Batch(pptrs[sel], gptrs[sel], offsets, sizes, gdtype, key)
        steps = self.steps[sel] if self.algorithm == "adam" else self.started[sel].astype(np.int64)
        if not steps.size or (steps == steps[0]).all():
            return whole, [(int(steps[0]) + 1 if steps.size else 1, whole)]
        parts = []
        for t in np.unique(steps):
            m = steps == t
            parts.append((int(t) + 1, K.Batch(whole.params[m], whole.grads[m], offsets[m], sizes[m], gdtype,
                                              key + b"/" + m.tobytes())))
        return whole, parts

    def step(self, active: np.ndarray, pptrs: np.ndarray, gptrs: np.ndarray, gdtypes: Sequence[str],
             hyper: Sequence[dict[str, Any]], *, max_grad_norm: float | None, skip_nonfinite: bool,
             loss_scaler: LossScaler | None) -> StepResult:
        """One update of the slots marked ``active`` (those with a gradient).

        ``pptrs``/``gptrs``: int64 addresses of each slot's param and grad (ignored where
        inactive); ``gdtypes``: each buffer's grad dtype; ``hyper``: per group, checked floats
        ``lr, beta1, beta2, weight_decay, eps`` and bools ``amsgrad, maximize, bias_correction``
        (Adam, ``_hyper.values``) or ``lr, momentum, dampening, weight_decay`` and bools
        ``nesterov, maximize`` (SGD, ``_hyper.sgd_values``).
        """
        self.check_disk()  # before anything is written: a closed or failed disk tier cannot take a step
        n = len(self.layout.slots)
        if not (len(active) == len(pptrs) == len(gptrs) == n and len(gdtypes) == len(self.layout.buffers)):
            raise RuntimeError(f"internal: a step got tables for {len(pptrs)} params and {len(gdtypes)} buffers, "
                               f"the layout has {n} and {len(self.layout.buffers)}")
        kern = K.get(self.kernel)
        if self.sharding is not None:  # the grads averaged over ranks, this rank's shard reduced in place
            gptrs = self.sharding.reduce_grads(self, active, gptrs, gdtypes)
        plan = []
        for bi, b in enumerate(self.layout.buffers):
            whole, parts = self._batches(bi, active, pptrs, gptrs, gdtypes[bi])
            if len(whole):
                plan.append((bi, whole, parts))
        scaler = loss_scaler
        loss_scale = scaler.scale if scaler is not None else 1.0
        inv = scaler.inv_scale if scaler is not None else 1.0
        norm = None
        with self.on_device(), limited(self.num_threads if self.kernel == "cpu" or self.host else None):
            if skip_nonfinite or max_grad_norm is not None or scaler is not None:
                sums = [self._block_sums(kern, bi, whole) for bi, whole, _ in plan]
                lens = [int(s.size) for s in sums]
                if not sums:
                    flat = np.zeros(0)
                elif self.device == "gpu":  # one device-to-host copy per step: the block sums
                    flat = self.xp.concatenate(sums).get()
                else:
                    flat = np.concatenate(sums)
                if self.sharding is not None:  # every rank's blocks, in the single-process order
                    flat = self.sharding.combine_sums(flat, lens)
                total = float(np.cumsum(flat)[-1]) if flat.size else 0.0
                norm = math.sqrt(total) * inv
                if not math.isfinite(total) and (skip_nonfinite or scaler is not None):
                    if scaler is not None:
                        scaler.update(True)
                    return StepResult(True, norm, loss_scale)
            scale = inv * ref.clip_coefficient(norm, max_grad_norm) if norm is not None else inv
            sgd = self.algorithm == "sgd"
            with np.errstate(over="ignore"):  # a float32 overflow is reported by _check_scalars
                calls = self._calls(plan, hyper, scale, sgd)  # every scalar before any write
            for bi, b in enumerate(self.layout.buffers):
                buf = self.bufs[bi]
                if sgd:
                    if hyper[b.group]["momentum"] != 0 and buf.exp_avg is None:
                        self._add_state(bi, "exp_avg")
                elif hyper[b.group]["amsgrad"] and buf.max_exp_avg_sq is None:
                    self._add_state(bi, "max_exp_avg_sq", like="exp_avg_sq")
            name = "sgd_step" if sgd else "adam_step"
            for bi, batch, s, flags in calls:  # the params' part first: on a GPU it runs while the host works
                part = self._primary_batch(bi, batch)
                if len(part):
                    getattr(kern, name)(self.bufs[bi], part, s, flags)
            for bi, batch, s, flags in calls:
                self._run_rest(name, bi, batch, s, flags)
            if self.sharding is not None:  # every rank's updated shard, into every rank's params
                self.sharding.gather_params(self, [(bi, whole) for bi, whole, _ in plan])
        self.steps[active] += 1
        if self.algorithm == "sgd":
            with_momentum = np.asarray([h["momentum"] != 0 for h in hyper], bool)[self.slot_groups]
            new = active & with_momentum & ~self.started
            if new.any():
                self.started |= new
                self.views_version += 1
        self.count += 1
        if scaler is not None:
            scaler.update(False)
        return StepResult(False, norm, loss_scale)

    def _block_sums(self, kern: Any, bi: int, whole: K.Batch) -> Any:
        """The float64 sums of squares of the norm blocks of this engine's elements of buffer ``bi``
        (all of them; a rank's shard starts on a block and holds whole blocks)."""
        if self.sharding is None:
            return kern.block_sumsq(self.bufs[bi], whole, ref.NORM_BLOCK)
        lo, hi = self.shards[bi]
        sums = kern.block_sumsq(self.bufs[bi], K.sub_batch(whole, self.layout.buffers[bi].dtype, lo, hi),
                                ref.NORM_BLOCK)
        nblocks = -(-(hi - lo) // ref.NORM_BLOCK)
        return sums if sums.size == nblocks else self.xp.zeros(nblocks)  # no tensor in the shard: zero blocks

    def _calls(self, plan: list[tuple[int, K.Batch, list[tuple[int, K.Batch]]]], hyper: Sequence[dict[str, Any]],
               scale: float, sgd: bool) -> list[tuple[int, K.Batch, Any, Any]]:
        """Every kernel call of the step with its checked scalars, ``(buffer, batch, scalars, flags)``;
        ValueError if a scalar cannot be computed (nothing has been written)."""
        calls: list[tuple[int, K.Batch, Any, Any]] = []
        for bi, _, parts in plan:
            group = self.layout.buffers[bi].group
            h = hyper[group]
            if sgd:
                calls += _sgd_calls(bi, parts, h, scale, group)
                continue
            key = prec.step_key(self.precision.seed, self.count + 1, bi) if self.precision.stochastic else (0, 0)
            flags = K.Flags(decoupled=self.decoupled, amsgrad=h["amsgrad"], maximize=h["maximize"],
                            key=(int(key[0]), int(key[1])))
            for t, batch in parts:
                s = ref.host_scalars(lr=h["lr"], beta1=h["beta1"], beta2=h["beta2"], eps=h["eps"],
                                     weight_decay=h["weight_decay"], step=t, decoupled=self.decoupled,
                                     bias_correction=h["bias_correction"], grad_scale=scale)
                _check_scalars(s, h, t, group)
                calls.append((bi, batch, s, flags))
        return calls

    # ------------------------------------------------------------------ state
    def slot_state(self, slot: int) -> dict[str, np.ndarray]:
        """Host copies of one slot's state arrays (flat): exp_avg, exp_avg_sq[, max_exp_avg_sq][, master]
        (Adam) or [momentum_buffer][, master] (SGD: once the tensor's buffer has started)."""
        s = self.layout.slots[slot]
        if self.offloaded(s.buffer):
            self.check_disk()
            keys = self._state_keys(slot)
            raw = {out: self._read_range(s.buffer, key, *self.owned_range(slot, key)) for out, key in keys.items()}
        else:
            raw = {key: _host(view) for key, view in self.slot_views(slot).items()}
        return {key: a.view(self.state_dtype(slot, key)) for key, a in raw.items()}

    def state_dtype(self, slot: int, name: str) -> np.dtype:
        """The dtype state dicts hold entry ``name`` of ``slot`` in: float32, bfloat16 (ml_dtypes),
        float16, or int16 (``param_remainder``); the engine stores 16-bit floats as uint16 bits."""
        if name == "param_remainder":
            return np.dtype(np.int16)
        if name == "master" and self.bufs[self.layout.slots[slot].buffer].w_kind == prec.F16:
            return np.dtype(np.float16)
        if name in ("master", "momentum_buffer") or name.endswith("_scale") or self.algorithm != "adam":
            return np.dtype(np.float32)
        kind = self.precision.m_kind if name == "exp_avg" else self.precision.v_kind
        return _PRESENT[kind]

    def _stored(self, bi: int, key: str, arr: Any) -> np.ndarray:
        """A checked host array in its state-dict dtype as the engine stores it (16-bit floats as
        uint16 bits, float32 as float32, remainders as int16)."""
        arr = np.asarray(arr)
        if key == "exp_avg" and self.algorithm != "adam":
            return arr.astype(np.float32, copy=False)
        want = self._dtypes(self.layout.buffers[bi].dtype)[key]
        if want in (np.uint16, np.uint8):  # bf16/fp16 bits, fp8 codes
            if arr.dtype.itemsize != want.itemsize:  # a float32 array viewed as bits would spill past the slot
                raise RuntimeError(f"internal: state {key!r} of buffer {bi} is stored as {want}; got {arr.dtype} values")
            return arr.view(want)
        return arr.astype(want, copy=False)

    def _state_keys(self, slot: int) -> dict[str, str]:
        """The slot's state entries: ``{name in state dicts: BufferState field}``."""
        s = self.layout.slots[slot]
        buf = self.bufs[s.buffer]
        if self.algorithm == "sgd":
            out = {"momentum_buffer": "exp_avg"} if self.started[slot] and buf.exp_avg is not None else {}
        else:
            out = {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"}
        if buf.max_exp_avg_sq is not None:
            out["max_exp_avg_sq"] = "max_exp_avg_sq"
        for name, field in list(out.items()):  # fp8 moments: their block scales
            scale = K.SCALE_FIELDS.get(field)
            if scale is not None and getattr(buf, scale) is not None:
                out[name + "_scale"] = scale
        if buf.master is not None:
            out["param_remainder" if buf.remainders else "master"] = "master"
        return out

    def slot_range(self, slot: int, field: str) -> tuple[int, int]:
        """The slot's range in state array ``field``: its elements, or its fp8 blocks (``*_scale``)."""
        s = self.layout.slots[slot]
        if field.endswith("_scale"):
            return s.offset // prec.FP8_BLOCK, -(-(s.offset + s.numel) // prec.FP8_BLOCK)
        return s.offset, s.offset + s.numel

    def owned_range(self, slot: int, field: str) -> tuple[int, int]:
        """The part of ``slot_range`` whose state this engine holds (all of it unless sharded; empty,
        ``a == b``, when the slot lies outside this rank's shard)."""
        s = self.layout.slots[slot]
        lo, hi = self.shards[s.buffer]
        a = max(s.offset, lo)
        b = max(a, min(s.offset + s.numel, hi))
        if field.endswith("_scale"):
            return a // prec.FP8_BLOCK, (-(-b // prec.FP8_BLOCK) if b > a else a // prec.FP8_BLOCK)
        return a, b

    def slot_views(self, slot: int) -> dict[str, Any]:
        """Views (not copies) of one slot's state arrays, flat (for ``state[p]`` in npadam.torch)."""
        s = self.layout.slots[slot]
        if self.offloaded(s.buffer):
            raise RuntimeError("internal: a slot whose state is in another tier has no views (use slot_state)")
        buf = self.bufs[s.buffer]
        out = {}
        for name, key in self._state_keys(slot).items():
            a, b = self.owned_range(slot, key)
            first = self._first(s.buffer, key)
            out[name] = getattr(buf, key)[a - first: b - first]
        return out

    def write_state(self, updates: Sequence[tuple[int, str, np.ndarray]], amsgrad_buffers: Sequence[int]) -> None:
        """Write checked host arrays into the state: ``(slot, key, flat float32 array)``;
        ``amsgrad_buffers`` get a ``max_exp_avg_sq`` array first (zeros) if they have none. SGD's
        ``momentum_buffer`` goes to ``exp_avg`` (allocated if needed; the caller sets ``started``)."""
        self.sync()  # a step still running on another stream must not overwrite what is written
        self.check_disk()
        with self.on_device():
            for bi in amsgrad_buffers:
                if self.bufs[bi].max_exp_avg_sq is None:
                    self._add_state(bi, "max_exp_avg_sq")
            for slot, key, arr in updates:
                s = self.layout.slots[slot]
                buf = self.bufs[s.buffer]
                key = {"param_remainder": "master", "momentum_buffer": "exp_avg"}.get(key, key)
                key = {f"{m}_scale": q for m, q in K.SCALE_FIELDS.items()}.get(key, key)
                if self.algorithm == "sgd" and key == "exp_avg" and buf.exp_avg is None:
                    self._add_state(s.buffer, "exp_avg")
                self._write_range(s.buffer, key, self.slot_range(slot, key)[0], self._stored(s.buffer, key, arr))
        self.sync()




#: the state-dict dtype of each storage kind
_PRESENT = {prec.F32: np.dtype(np.float32), prec.BF16: np.dtype(ml_dtypes.bfloat16), prec.F16: np.dtype(np.float16),
            prec.F8E4M3: np.dtype(ml_dtypes.float8_e4m3fn), prec.F8E5M2: np.dtype(ml_dtypes.float8_e5m2)}


def _sgd_calls(bi: int, parts: list[tuple[int, K.Batch]], h: dict[str, Any], scale: float,
               group: int) -> list[tuple[int, K.Batch, sgd_ref.HostScalars, K.SgdFlags]]:
    """The SGD kernel calls of buffer ``bi`` (its batches' first step with momentum or not), the
    scalars checked: ValueError, before anything is written, if one overflows float32."""
    s = sgd_ref.host_scalars(lr=h["lr"], momentum=h["momentum"], dampening=h["dampening"],
                             weight_decay=h["weight_decay"], grad_scale=scale)  # under the caller's errstate
    name = nonfinite(s, SGD_SCALARS)
    if name is not None:
        raise ValueError(f"param_groups[{group}]: lr={h['lr']!r}, momentum={h['momentum']!r}, dampening="
                         f"{h['dampening']!r}, weight_decay={h['weight_decay']!r} give a non-finite float32 "
                         f"{name}; nothing was changed")
    mode = sgd_ref.mode(h["momentum"], h["nesterov"])
    return [(bi, batch, s, K.SgdFlags(maximize=h["maximize"], weight_decay=h["weight_decay"] != 0, momentum=mode,
                                      first=t == 1)) for t, batch in parts]


#: the float32 scalars of an Adam / SGD step that a large lr, weight decay or scale can overflow
ADAM_SCALARS = ("decay", "step_size", "scale", "weight_decay")
SGD_SCALARS = ("neg_lr", "momentum", "one_minus_dampening", "weight_decay", "scale")


def nonfinite(s: Any, names: Sequence[str]) -> str | None:
    """The first of the step's float32 scalars ``names`` that is not finite (None: all are). E.g.
    lr=1e39 is finite in float64 but inf in float32, or lr / bias_correction1 overflows."""
    for name in names:
        if not math.isfinite(getattr(s, name)):
            return name
    return None


def _check_scalars(s: ref.HostScalars, h: dict[str, Any], t: int, group: int) -> None:
    """ValueError if a float32 scalar of the step overflows: nothing has been written yet."""
    name = nonfinite(s, ADAM_SCALARS)
    if name is not None:
        raise ValueError(f"param_groups[{group}]: lr={h['lr']!r}, weight_decay={h['weight_decay']!r}, "
                         f"beta1={h['beta1']!r} at the tensors' step {t} give a non-finite float32 "
                         f"{name}; nothing was changed")
