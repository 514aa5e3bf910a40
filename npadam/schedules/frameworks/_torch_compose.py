"""torch's composite schedulers (SequentialLR, ChainedScheduler) over the leaf models.

A config is parsed into a tree (leaves, ``_Seq``, ``_Chain``), then torch's constructors
are replayed on a model of the param group (``_Group``), in torch's order: the schedulers
inside a composite first, in list order, then the composite. That gives every leaf its
``base`` (the group's ``initial_lr`` when it was built; OneCycleLR rewrites it, a CyclicLR
built first sets it to its base_lr), OneCycleLR its group values, SequentialLR the lr it
resets to, and beta1 as construction leaves it. Evaluation is then vectorized:

- **SequentialLR** at ``last_epoch = c``: scheduler ``bisect_right(milestones, c)``; at a
  milestone ``_update_lr(0)`` restarts it from torch's closed form at 0 (MultiplicativeLR,
  which has none, multiplies the lr it finds by ``lr_lambda(0)``). Its constructor resets
  the lr to ``initial_lr`` and makes the initial step of the first scheduler only. A
  SequentialLR or ChainedScheduler nested in it is stepped by that initial step with
  ``step()``: the schedulers inside take a plain (non-initial) first step, and a nested
  SequentialLR's count runs one ahead per enclosing SequentialLR (its milestones come one
  update earlier). A composite anywhere but first raises NotImplementedError in torch when
  its milestone comes (it has no closed form for ``_update_lr(0)``): rejected.
- **ChainedScheduler**: every scheduler steps, in list order, on the lr the previous one
  left. With an *absolute* one (LambdaLR, CyclicLR, OneCycleLR,
  CosineAnnealingWarmRestarts), the last of them sets the lr at every step and only the
  one-step maps of the schedulers after it apply (evaluated exactly, in torch's order).
  Without one, the chain is ``lr_0 * prod_i span_i(1, t)`` (the product of the closed-form
  factors), exact while every scheduler is a factor; one CosineAnnealingLR with
  ``eta_min = 0`` is a factor too, except that after each minimum (where the chain is 0)
  torch *adds* its bump, which restarts the product from there. An affine
  CosineAnnealingLR (``eta_min != 0``), two CosineAnnealingLR, or a SequentialLR inside,
  do not reduce to a closed form: rejected, saying why.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from ... import _validate as V
from ._common import check_keys, require
from . import _torch_absolute as A, _torch_leaves as L
from ._torch_leaves import KWARGS, Leaf

LEAVES: dict[str, type[Leaf]] = {c.name: c for c in (
    A.LambdaLR, L.MultiplicativeLR, L.LinearLR, L.ConstantLR, L.CosineAnnealingLR, L.PolynomialLR, L.ExponentialLR,
    L.StepLR, L.MultiStepLR, A.OneCycleLR, A.CosineAnnealingWarmRestarts, A.CyclicLR)}

COMPOSITES = ("SequentialLR", "ChainedScheduler")
SCHEDULERS = tuple(KWARGS) + COMPOSITES
_ABSOLUTE = "LambdaLR, CyclicLR, OneCycleLR or CosineAnnealingWarmRestarts"


@dataclass
class _Group:
    """The param group's keys that torch's constructors read and write."""

    lr: float
    initial_lr: float | None = None
    one_cycle: tuple[float, float, float] | None = None  # (max_lr, div_factor, final_div_factor)
    momenta: tuple[float, float] | None = None           # (base_momentum, max_momentum)
    beta1: float | None = None                            # as the constructors leave it (None: untouched)


class _Seq:
    def __init__(self, subs: list[Any], milestones: list[int], where: str) -> None:
        self.subs, self.milestones, self.where = subs, milestones, where
        self.counter = 0     # its last_epoch after every constructor: how far it runs ahead of the update index
        self.reset_lr = 0.0  # the lr its constructor resets to (the group's initial_lr then)


class _Chain:
    def __init__(self, units: list[Leaf], where: str) -> None:
        self.units, self.where = units, where
        self.last_absolute = max((i for i, u in enumerate(units) if u.kind == "absolute"), default=None)


# --------------------------------------------------------------------------- parsing


def parse(cfg: Mapping[str, Any], lr: float, where: str, top: bool) -> Any:
    """A validated tree for one param group's config (``{"scheduler": name, **kwargs}``)."""
    if not isinstance(cfg, Mapping) or "scheduler" not in cfg:
        raise ValueError(f"{where} must be a mapping with a 'scheduler' key, got {cfg!r}")
    kw = dict(cfg)
    name = kw.pop("scheduler")
    if name not in SCHEDULERS:
        if name == "ReduceLROnPlateau":  # top level only: from_torch makes it a schedules.Plateau
            raise ValueError(f"{where}: ReduceLROnPlateau cannot be inside ChainedScheduler / SequentialLR: it steps "
                             "on a metric, not with the others (torch: it is not an LRScheduler); wrap the schedule "
                             "in a schedules.Plateau instead")
        raise ValueError(f"unknown torch scheduler {name!r}; supported: {', '.join(SCHEDULERS)}")
    label = f"{where} ({name})" if not top else f"torch {name}"
    known = KWARGS.get(name, ("schedulers", "milestones") if name == "SequentialLR" else ("schedulers",))
    extra = () if name == "ChainedScheduler" else ("last_epoch",)
    check_keys(label, kw, known + extra + (() if top else ("lr",)))
    if not top and "lr" in kw and kw.pop("lr") != lr:
        raise ValueError(f"{where} sets its own 'lr'; every scheduler on an optimizer shares its lr")
    last = V.integer("last_epoch", kw.pop("last_epoch", -1), lo=-1)
    if last != -1 and not (top and name in KWARGS):
        raise ValueError(f"{label}: last_epoch={last} (resuming) is supported on a single scheduler only: "
                         + ("torch's SequentialLR restarts its first scheduler and only shifts its own count"
                            if name == "SequentialLR" else
                            "inside a SequentialLR or ChainedScheduler each scheduler keeps its own count"))
    if name == "SequentialLR":
        node: Any = _parse_sequential(kw, lr, label)
    elif name == "ChainedScheduler":
        node = _parse_chained(kw, lr, label)
    else:
        node = LEAVES[name](kw, label)
    node.last_epoch = last
    return node


def _subs(kw: dict[str, Any], label: str) -> list[Any]:
    require(label, kw, "schedulers")
    subs = kw["schedulers"]
    if not isinstance(subs, (list, tuple)):
        raise ValueError(f"{label} schedulers must be a list of scheduler configs, got {subs!r}")
    return list(subs)


def _parse_sequential(kw: dict[str, Any], lr: float, label: str) -> _Seq:
    subs = _subs(kw, label)
    require(label, kw, "milestones")
    if not subs:
        raise ValueError("SequentialLR expects at least one scheduler, but got no scheduler.")
    if not isinstance(kw["milestones"], (list, tuple)):
        raise ValueError(f"{label} milestones must be a list of integers, got {kw['milestones']!r}")
    ms = [V.integer(f"milestones[{i}]", m, lo=0) for i, m in enumerate(kw["milestones"])]
    if len(ms) != len(subs) - 1:
        raise ValueError(f"Sequential Schedulers expects number of schedulers provided to be one more than "
                         f"the number of milestone points, but got number of schedulers {len(subs)} and "
                         f"the number of milestones to be equal to {len(ms)}")
    if any(b <= a for a, b in zip(ms, ms[1:])):
        raise ValueError(f"SequentialLR milestones must be strictly increasing, got {ms}")
    nodes = [parse(s, lr, f"SequentialLR schedulers[{i}]", False) for i, s in enumerate(subs)]
    lead = bisect_right(ms, 0)
    for i, n in enumerate(nodes):
        if i > lead and not isinstance(n, Leaf):
            kind = "SequentialLR" if isinstance(n, _Seq) else "ChainedScheduler"
            raise ValueError(f"{label}: a {kind} at schedulers[{i}] cannot run: at its milestone {ms[i - 1]} "
                             f"SequentialLR restarts it with _update_lr(0), which a {kind} does not implement "
                             "(torch raises NotImplementedError); nest a composite only as the first scheduler")
    return _Seq(nodes, ms, label)


def _parse_chained(kw: dict[str, Any], lr: float, label: str) -> _Chain:
    subs = _subs(kw, label)
    if not subs:
        raise ValueError("ChainedScheduler expects at least one scheduler to be chained, but got no scheduler.")
    units: list[Leaf] = []
    for i, s in enumerate(subs):
        n = parse(s, lr, f"ChainedScheduler schedulers[{i}]", False)
        if isinstance(n, _Seq):
            raise ValueError(f"{label}: a SequentialLR inside a ChainedScheduler (schedulers[{i}]) is not "
                             "supported: its constructor resets the lr to initial_lr and its milestones restart "
                             "it from a closed form, which does not compose with the other schedulers' factors")
        units.extend(n.units if isinstance(n, _Chain) else [n])  # a chain in a chain steps the same way
    chain = _Chain(units, label)
    _check_chain(chain)
    return chain


def _check_chain(chain: _Chain) -> None:
    """Reject the chains without an absolute scheduler whose torch recurrence has no closed form."""
    if chain.last_absolute is not None or len(chain.units) == 1:
        return
    cos = [u for u in chain.units if u.kind == "cosine"]
    if len(cos) > 1:
        raise ValueError(f"{chain.where}: two CosineAnnealingLR in one chain (without a {_ABSOLUTE} after them) "
                         "each add their bump after their own minimum, on top of what the other left: torch's "
                         "recurrence then has no closed form npadam reproduces")
    if cos and cos[0].eta != 0:
        raise ValueError(f"{chain.where}: CosineAnnealingLR with eta_min={cos[0].eta} steps the lr as "
                         "eta_min + ratio(t) * (lr - eta_min), an affine map: chained with schedulers that "
                         f"multiply the lr (and no {_ABSOLUTE} after it to set the lr) torch's recurrence "
                         "mixes their factors into lr - eta_min step by step and has no closed form npadam "
                         "reproduces; use eta_min=0, or a SequentialLR")


# --------------------------------------------------------------------------- construction


def construct(node: Any, g: _Group) -> None:
    """Replay ``node``'s constructor (and those inside it, first) on the group."""
    if isinstance(node, Leaf):
        node.construct(g)
        if node.cycler:  # the constructor sets beta1 (its initial step, at counter 0)
            g.beta1 = _beta1_now(node, g)
        return
    if isinstance(node, _Chain):
        for u in node.units:
            construct(u, g)
        return
    for s in node.subs:
        construct(s, g)
    node.counter, node.reset_lr = 0, g.initial_lr
    _touch(node.subs[bisect_right(node.milestones, 0)], g, "initial")


def _touch(node: Any, g: _Group, mode: str) -> None:
    """One step of ``node`` during a constructor: ``mode`` for a leaf's first step."""
    if isinstance(node, Leaf):
        node.check_first(mode)
        if node.cycler:
            g.beta1 = _beta1_now(node, g)
    elif isinstance(node, _Chain):
        for u in node.units:  # ChainedScheduler.step(): every scheduler steps (not in initial mode)
            _touch(u, g, "step")
    else:
        node.counter += 1  # SequentialLR.step() counts, then steps or restarts the scheduler it picks
        i = bisect_right(node.milestones, node.counter)
        restart = i > 0 and node.milestones[i - 1] == node.counter
        _touch(node.subs[i], g, "closed" if restart else "step")


def _beta1_now(leaf: Leaf, g: _Group) -> float:
    """The beta1 a cycling scheduler's step at counter 0 writes now (during construction)."""
    if leaf.name == "OneCycleLR":  # its get_lr reads the momenta in the group now
        return leaf.momentum_now(g.momenta)  # type: ignore[attr-defined]
    return float(leaf.momentum(np.zeros(1, np.int64))[0])


def finalize(node: Any, g: _Group) -> None:
    """After every constructor: the leaves read the group as training sees it, and the restarts
    training reaches are checked."""
    for leaf in leaves(node):
        leaf.finalize(g)
    _check_runtime(node)


def leaves(node: Any) -> list[Leaf]:
    """Every single scheduler in the tree, in construction order."""
    if isinstance(node, Leaf):
        return [node]
    return list(node.units) if isinstance(node, _Chain) else [x for s in node.subs for x in leaves(s)]


def _check_runtime(node: Any, end: float = np.inf) -> None:
    """The restarts at milestones reached while training, before update ``end`` (torch raises there)."""
    if isinstance(node, _Seq):
        first, restart0 = _first(node)
        for j, start, stop in _pieces(node):
            if start >= end:
                break
            sub = node.subs[j]
            if j > first or restart0:
                sub.check_first("closed")
            elif not isinstance(sub, Leaf):
                _check_runtime(sub, min(end, stop))


# --------------------------------------------------------------------------- evaluation


def _first(seq: _Seq) -> tuple[int, bool]:
    """The scheduler active at update 0, and whether it is restarted there (``_update_lr(0)``)."""
    ms = [m - seq.counter for m in seq.milestones]
    i = bisect_right(ms, 0)
    return i, seq.counter > 0 and i > 0 and ms[i - 1] == 0


def _pieces(seq: _Seq) -> list[tuple[int, int, float]]:
    """``(index, start, end)`` of the schedulers that run, in update indices."""
    ms = [m - seq.counter for m in seq.milestones]
    first, _ = _first(seq)
    return [(j, 0 if j == first else ms[j - 1], ms[j] if j < len(ms) else np.inf)
            for j in range(first, len(seq.subs))]


def lr_values(node: Any, t: np.ndarray, x0: float, mode: str) -> np.ndarray:
    """The lr at update indices ``t`` (int64): ``x0`` is the lr the node starts from, ``mode`` its
    leaves' first step (a SequentialLR's own count says how its first scheduler starts)."""
    if isinstance(node, Leaf):
        return node.run(x0, t, mode)
    if isinstance(node, _Chain):
        return _chain_values(node, t, x0, mode)
    out = np.empty(t.shape)
    first, restart0 = _first(node)
    for j, start, end in _pieces(node):
        m = (t >= start) & (t < end)
        if not m.any():
            continue
        sub, tl = node.subs[j], t[m] - start
        if j == first and not restart0:  # only a leaf stepped by this SequentialLR's constructor is initial
            initial = node.counter == 0 and isinstance(sub, Leaf)
            out[m] = lr_values(sub, tl, x0, "initial" if initial else "step")
            continue
        prev = 0.0  # the lr before the restart: only MultiplicativeLR reads it
        if sub.needs_prev:
            prev = x0 if start == 0 else float(lr_values(node, np.asarray([start - 1]), x0, mode)[0])
        out[m] = sub.restart(tl, prev)
    return out


def _chain_values(chain: _Chain, t: np.ndarray, x0: float, mode: str) -> np.ndarray:
    units, j = chain.units, chain.last_absolute
    if len(units) == 1:
        return units[0].run(x0, t, mode)
    at0 = t == 0
    if j is not None:  # the last absolute scheduler sets the lr; those after it apply one step each
        x = units[j].run(x0, t, mode)
        for u in units[j + 1:]:
            x[at0] = u.first(x[at0], mode)
            x[~at0] = u.apply(x[~at0], t[~at0])
        return x
    lr0 = x0
    for u in units:
        lr0 = u.first(lr0, mode)
    cos = [i for i, u in enumerate(units) if u.kind == "cosine"]
    if not cos:  # every step a product of the units' spans from 1 (no masked copies: 1M steps in one pass)
        tp = np.maximum(t, 1)
        v = np.full(tp.shape, float(lr0))
        for u in units:
            v *= u.span_from_1(tp)
        v[at0] = lr0
        return v
    out = np.full(t.shape, float(lr0))
    tp = t[~at0]
    ones = np.ones(tp.shape, dtype=np.int64)
    c = cos[0]
    T = units[c].T  # type: ignore[attr-defined]
    v = np.empty(tp.shape)
    pre = tp <= T  # until its first minimum (at T_max) the cosine is one more factor
    v[pre] = lr0
    for u in units:
        v[pre] = v[pre] * u.span(ones[pre], tp[pre])
    # after minimum T + 2Tm the chain is exactly 0; the next step adds the bump, which the
    # schedulers after the cosine multiply by their ratio of that step: a fresh product
    tt = tp[~pre]
    tau = T + 1 + 2 * T * ((tt - T - 1) // (2 * T))
    w = np.full(tt.shape, units[c]._bump())  # type: ignore[attr-defined]
    for i, u in enumerate(units):
        if i < c:
            w = w * u.span(tau + 1, tt)
        elif i > c:
            w = w * u.span(tau, tt)
    v[~pre] = w * units[c].span(tau + 1, tt)
    out[~at0] = v
    return out


def momentum_values(node: Any, t: np.ndarray, incoming: float | None) -> np.ndarray:
    """beta1 at update indices ``t``: what the cycling schedulers set, else ``incoming`` (what
    the group held when the node took over)."""
    if isinstance(node, Leaf) and node.cycler:
        return node.momentum(t)
    if incoming is None:  # pragma: no cover - every cycling scheduler's constructor sets beta1
        raise AssertionError("beta1 before any cycling scheduler set it")
    if isinstance(node, Leaf):
        return np.full(t.shape, incoming)
    if isinstance(node, _Chain):
        cyc = [u for u in node.units if u.cycler]
        return cyc[-1].momentum(t) if cyc else np.full(t.shape, incoming)
    out = np.empty(t.shape)
    first, restart0 = _first(node)
    for j, start, end in _pieces(node):
        m = (t >= start) & (t < end)
        if not m.any():
            continue
        held = incoming if j == first else float(momentum_values(node, np.asarray([start - 1]), incoming)[0])
        out[m] = momentum_values(node.subs[j], t[m] - start, held)
    return out


def cycles_momentum(node: Any) -> bool:
    """Whether torch changes beta1 (a OneCycleLR or CyclicLR with ``cycle_momentum`` inside)."""
    return any(leaf.cycler for leaf in leaves(node))


def horizon(node: Any) -> int | None:
    """A chain's longest horizon; a sequence's last start plus its last scheduler's."""
    if isinstance(node, Leaf):
        return node.horizon
    if isinstance(node, _Chain):
        hs = [u.horizon for u in node.units if u.horizon is not None]
        return max(hs) if hs else None
    j, start, _ = _pieces(node)[-1]
    h = horizon(node.subs[j])
    return None if h is None else int(start) + h


def limit(node: Any) -> int | None:
    """Update indices ``0 .. limit - 1`` are defined (torch's OneCycleLR raises past its total_steps)."""
    if isinstance(node, Leaf):
        return node.limit
    if isinstance(node, _Chain):
        lims = [u.limit for u in node.units if u.limit is not None]
        return min(lims) if lims else None
    lims = []
    for j, start, end in _pieces(node):
        lim = limit(node.subs[j])
        if lim is not None and start + lim < end:
            lims.append(int(start + lim))
    return min(lims) if lims else None
