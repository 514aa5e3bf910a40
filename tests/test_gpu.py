"""GPU kernels on a real device: bit-identical to the CPU kernel and the reference.

Every test here skips cleanly without CuPy or without a CUDA device (CI has
neither); ``tools/bench_gpu.py`` runs them on an H100/H200.

The offload tests at the end put part or all of the GPU params' optimizer state in host memory
(``offload_fraction`` / ``gpu_state_bytes``, with part of that in files) and check the promise
that the placement never changes a bit: tests/test_offload.py checks the same orchestration in CI
with host memory standing in for the GPU; here it runs on real CUDA streams and pinned memory.
"""

from __future__ import annotations

import functools
import itertools
import os
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

import npadam
from npadam import checkpoint

cupy = pytest.importorskip("cupy")
try:
    _NDEV = cupy.cuda.runtime.getDeviceCount()
except Exception:  # noqa: BLE001 - no driver, no device
    _NDEV = 0
pytestmark = pytest.mark.skipif(_NDEV == 0, reason="no CUDA device")

STORE = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16), "float16": np.dtype(np.float16)}


def _to_gpu(a: np.ndarray):
    """A CuPy array holding ``a``; bfloat16 bits in a uint16 array marked with ``Bfloat16``."""
    if a.dtype == STORE["bfloat16"]:
        return npadam.interop.Bfloat16(cupy.asarray(a.view(np.uint16)))
    return cupy.asarray(a)


def _host(x) -> np.ndarray:
    """A host copy of a param as ``_to_gpu`` made it (bfloat16 back as bfloat16; NumPy arrays as they are)."""
    if isinstance(x, npadam.interop.Bfloat16):
        return x.array.get().view(STORE["bfloat16"])
    return x if isinstance(x, np.ndarray) else x.get()


def _bytes(x) -> bytes:
    return _host(x).tobytes()


def _assert_same(copt, cpu_params, gopt, gpu_params):
    for c, g in zip(cpu_params, gpu_params):
        assert c.tobytes() == _bytes(g)
    cs, gs = copt.state_dict(), gopt.state_dict()
    for i in cs["state"]:
        for key, val in cs["state"][i].items():
            assert np.asarray(val).tobytes() == np.asarray(gs["state"][i][key]).tobytes(), key


def _run(kernel_params, grads_seq, **kw):
    opt = npadam.AdamW(kernel_params, **kw)
    infos = [opt.step(g) for g in grads_seq]
    return opt, infos


@pytest.mark.parametrize("pdt, gdt", list(itertools.product(STORE, STORE)))
def test_gpu_matches_cpu_bit_for_bit(pdt, gdt):
    rng = np.random.default_rng(0)
    sizes = [1, 63, 64, 65, 4099, 300_001]
    for amsgrad, decoupled, maximize in itertools.product((False, True), repeat=3):
        init = [rng.standard_normal(n).astype(np.float32).astype(STORE[pdt]) for n in sizes]
        grads = [[(rng.standard_normal(n) * 3).astype(np.float32).astype(STORE[gdt]) for n in sizes]
                 for _ in range(3)]
        cls = npadam.AdamW if decoupled else npadam.Adam
        kw = dict(lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, amsgrad=amsgrad, maximize=maximize,
                  max_grad_norm=1.0)
        cpu_params = [p.copy() for p in init]
        copt = cls(cpu_params, kernel="cpu", **kw)
        cinfo = [copt.step(g) for g in grads]
        gpu_params = [_to_gpu(p) for p in init]
        gopt = cls(gpu_params, kernel="gpu", **kw)
        ginfo = [gopt.step([_to_gpu(g) for g in gs]) for gs in grads]
        assert [i.grad_norm for i in cinfo] == [i.grad_norm for i in ginfo]
        _assert_same(copt, cpu_params, gopt, gpu_params)


@pytest.mark.parametrize("pdt, gdt", list(itertools.product(STORE, STORE)))
def test_sgd_gpu_matches_cpu_bit_for_bit(pdt, gdt):
    """npadam.SGD on the GPU (sgd_multi, __fmaf_rn) against the Numba kernel (llvm.fma): every momentum
    mode, with a tensor left out (grad None) at the first step so that its buffer starts later."""
    rng = np.random.default_rng(6)
    sizes = [1, 63, 64, 65, 4099, 300_001]
    for kw in (dict(momentum=0.0), dict(momentum=0.9, dampening=0.1), dict(momentum=0.9, nesterov=True, maximize=True)):
        init = [rng.standard_normal(n).astype(np.float32).astype(STORE[pdt]) for n in sizes]
        grads = [[None if (k == 0 and i == 2) else (rng.standard_normal(n) * 3).astype(np.float32).astype(STORE[gdt])
                  for i, n in enumerate(sizes)] for k in range(3)]
        kw = dict(lr=0.05, weight_decay=0.01, max_grad_norm=1.0, **kw)
        cpu_params = [p.copy() for p in init]
        copt = npadam.SGD(cpu_params, kernel="cpu", **kw)
        cinfo = [copt.step(g) for g in grads]
        gpu_params = [_to_gpu(p) for p in init]
        gopt = npadam.SGD(gpu_params, kernel="gpu", **kw)
        ginfo = [gopt.step([None if g is None else _to_gpu(g) for g in gs]) for gs in grads]
        assert [i.grad_norm for i in cinfo] == [i.grad_norm for i in ginfo]
        _assert_same(copt, cpu_params, gopt, gpu_params)


@pytest.mark.parametrize("pdt, gdt", [("float32", "float32"), ("float32", "bfloat16"), ("bfloat16", "float32")])
def test_subnormals_are_not_flushed_to_zero(pdt, gdt):
    """Subnormal params, grads and moments (g * g underflows): bit for bit the CPU's, no flush to zero
    (cupy.RawModule would compile with -ftz=true; npadam compiles without it)."""
    rng = np.random.default_rng(3)
    n = 4099
    init = (rng.standard_normal(n) * 1e-39).astype(np.float32).astype(STORE[pdt])
    grads = [[(rng.standard_normal(n) * 10.0 ** rng.integers(-44, -15, n)).astype(np.float32).astype(STORE[gdt])]
             for _ in range(3)]
    # lr = 1e-38: the params stay subnormal; eps > 0: no 0/0 (NaN bits differ between x86 and CUDA)
    kw = dict(lr=1e-38, betas=(0.9, 0.95), eps=1e-30, weight_decay=0.1, amsgrad=True)
    cpu_params = [init.copy()]
    copt = npadam.AdamW(cpu_params, kernel="cpu", **kw)
    cinfo = [copt.step(g) for g in grads]
    gpu_params = [_to_gpu(init)]
    gopt = npadam.AdamW(gpu_params, kernel="gpu", **kw)
    ginfo = [gopt.step([_to_gpu(x) for x in g]) for g in grads]
    assert [i.grad_norm for i in cinfo] == [i.grad_norm for i in ginfo]
    _assert_same(copt, cpu_params, gopt, gpu_params)


def test_unaligned_float32_views_take_the_scalar_path():
    """float32 params and grads at element offsets 1, 2, 3 of larger arrays (not 16-byte aligned)."""
    rng = np.random.default_rng(4)
    host_p = rng.standard_normal(210_100).astype(np.float32)
    host_g = [rng.standard_normal(host_p.size).astype(np.float32) for _ in range(2)]
    cuts = [(1, 70_002), (70_006, 140_007), (140_011, 210_012)]  # params start at 1, 2, 3 mod 4, grads at 0, 1, 2
    dev_p = cupy.asarray(host_p)
    cpu_params = [host_p[a:b].copy() for a, b in cuts]
    gpu_params = [dev_p[a:b] for a, b in cuts]
    kw = dict(lr=1e-3, weight_decay=0.1, max_grad_norm=1.0)
    copt = npadam.AdamW(cpu_params, kernel="cpu", **kw)
    gopt = npadam.AdamW(gpu_params, kernel="gpu", **kw)
    for g in host_g:
        dev_g = cupy.asarray(g)
        assert copt.step([g[a + 3:b + 3].copy() for a, b in cuts]).grad_norm == \
            gopt.step([dev_g[a + 3:b + 3] for a, b in cuts]).grad_norm
    _assert_same(copt, cpu_params, gopt, gpu_params)


def test_skip_on_nonfinite_on_gpu():
    p = cupy.ones(1000, cupy.float32)
    opt = npadam.AdamW([p], lr=1e-2, loss_scaler=npadam.LossScaler(init_scale=8.0))
    g = cupy.ones(1000, cupy.float32)
    g[17] = cupy.inf
    info = opt.step([g])
    assert info.skipped and opt.step_count == 0 and bool((p == 1).all())


def _cuda_torch() -> Any:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    return torch


def test_torch_cuda_tensors_on_the_callers_stream():
    torch = _cuda_torch()
    w = torch.randn(4096, 257, device="cuda")
    b16 = torch.randn(1000, device="cuda").to(torch.bfloat16)
    ref = [w.cpu().numpy().copy(), b16.view(torch.int16).cpu().numpy().view(ml_dtypes.bfloat16).copy()]
    gw, gb = torch.randn_like(w), torch.randn_like(b16)
    grads_np = [gw.cpu().numpy(), gb.view(torch.int16).cpu().numpy().view(ml_dtypes.bfloat16)]
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        opt = npadam.AdamW([w, b16], lr=1e-3)
        with cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream):
            opt.step([gw, gb])
    stream.synchronize()
    npadam.AdamW(ref, lr=1e-3, kernel="cpu").step(grads_np)
    assert w.cpu().numpy().tobytes() == ref[0].tobytes()
    assert b16.view(torch.int16).cpu().numpy().tobytes() == ref[1].view(np.int16).tobytes()


@pytest.mark.skipif(os.environ.get("NPADAM_GPU_BIG") != "1", reason="set NPADAM_GPU_BIG=1 (needs ~40 GB)")
def test_buffer_past_2_31_elements():
    n = (1 << 31) + 4099
    p = cupy.zeros(n, cupy.float32)
    g = cupy.zeros(n, cupy.float32)
    tail = cupy.asarray(np.random.default_rng(5).standard_normal(4099).astype(np.float32))
    g[-4099:] = tail
    opt = npadam.AdamW([p], lr=1e-3, weight_decay=0.0)
    info = opt.step([g])
    host_p = np.zeros(4099, np.float32)
    ref_norm = npadam.functional.grad_norm(tail.get())
    npadam.AdamW([host_p], lr=1e-3, weight_decay=0.0).step([tail.get()])
    assert p[-4099:].get().tobytes() == host_p.tobytes()
    assert bool((p[: -4099] == 0).all())
    assert abs(info.grad_norm - ref_norm) <= 1e-12 * ref_norm


# ---------------------------------------------------------------------- state in host memory (offload_fraction)

#: odd sizes, a 2-D and a 3-D weight, a 1-D bias, one element, and a tensor of more than four staging pieces
#: (the default piece is 2**21 elements), so that pieces end inside tensors and, with all of the state in
#: host memory, the three staging slots are reused
OFFLOAD_SHAPES = [(37, 129), (4099,), (1,), (3, 5, 7), ((1 << 23) + 4099,), (65,)]
OFFLOAD_ALGOS = [
    (npadam.AdamW, dict(lr=1e-2, weight_decay=0.1, max_grad_norm=1.0)),
    (npadam.AdamW, dict(lr=1e-2, amsgrad=True, max_grad_norm=1e3)),
    (npadam.Adam, dict(lr=1e-2, weight_decay=0.1)),
    (npadam.SGD, dict(lr=1e-2, momentum=0.9, dampening=0.1, max_grad_norm=0.5)),
]
OFFLOAD_STEPS = 5  # step 2 has an inf grad (skipped), step 3 no grad for tensor 0 (its step count lags)
#: where the state goes besides the params' GPU (the "gpu" run keeps it all there)
PLACES = {
    "gpu": {},
    "half": dict(offload_fraction=0.5),
    "host": dict(offload_fraction=1.0),
    "budget": dict(gpu_state_bytes=-1),  # -1: two bytes per param element, set by _places
    "half+nvme": dict(offload_fraction=0.5, nvme_offload_fraction=0.5, nvme_staging_bytes=1 << 18),
}


def _places(elements: int, nvme_dir: Path) -> dict[str, dict[str, Any]]:
    """``PLACES`` with the budget (the first buffers keep their state on the GPU, the rest goes to
    host memory; SGD's fp32 momentum is not counted) and the directory filled in."""
    out = {}
    for name, place in PLACES.items():
        place = dict(place)
        if place.get("gpu_state_bytes") == -1:
            place["gpu_state_bytes"] = 2 * elements
        if "nvme_offload_fraction" in place:
            place["nvme_offload_dir"] = nvme_dir
        out[name] = place
    return out


@functools.lru_cache(maxsize=None)
def _offload_data(pdt: str, gdt: str, seed: int = 7) -> tuple[list[np.ndarray], list[list[np.ndarray | None]]]:
    """Host params and ``OFFLOAD_STEPS`` steps of host grads (see ``OFFLOAD_STEPS``); made once, never
    written (runs copy them)."""
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(np.float32).astype(STORE[pdt]) for s in OFFLOAD_SHAPES]
    steps: list[list[np.ndarray | None]] = []
    for k in range(OFFLOAD_STEPS):
        grads: list[np.ndarray | None] = [(rng.standard_normal(s) * 3).astype(np.float32).astype(STORE[gdt])
                                          for s in OFFLOAD_SHAPES]
        if k == 2:
            grads[4].flat[-5] = np.inf  # in the tail: the part in host memory (on disk with nvme)
        if k == 3:
            grads[0] = None
        steps.append(grads)
    return init, steps


def _offload_run(cls, kw: dict[str, Any], params: list[Any], steps: list[list[np.ndarray | None]],
                 place: dict[str, Any], to_dev=_to_gpu) -> tuple[Any, list[Any]]:
    """An optimizer over ``params`` (two groups) placed by ``place``, stepped with ``steps`` (host
    grads, each moved with ``to_dev``); returns it and the step infos."""
    opt = cls([{"params": params[:3]}, {"params": params[3:], "weight_decay": 0.0}], **kw, **place)
    infos = [opt.step([None if g is None else to_dev(g) for g in grads]) for grads in steps]
    return opt, infos


def _state_bytes(sd: dict[str, Any]) -> dict[tuple[int, str], bytes]:
    """Every state entry of a state dict as bytes (NumPy arrays, torch CPU tensors, step counts)."""
    return {(i, k): np.asarray(v).tobytes() for i, st in sd["state"].items() for k, v in st.items()}


def _fingerprint(opt, params: list[Any], infos: list[Any]) -> dict[str, Any]:
    sd = opt.state_dict()
    return {"params": [_bytes(p) for p in params], "state": _state_bytes(sd), "count": sd["npadam"]["step"],
            "infos": [(i.skipped, i.grad_norm) for i in infos]}


def _assert_all_equal(runs: dict[str, dict[str, Any]], base: str) -> None:
    for name, run in runs.items():
        for key in run:
            assert run[key] == runs[base][key], f"{name} differs from {base} in {key}"


@pytest.mark.parametrize("pdt, gdt", [("float32", "float32"), ("float32", "bfloat16"), ("bfloat16", "bfloat16")])
@pytest.mark.parametrize("cls, kw", OFFLOAD_ALGOS, ids=["adamw-clip", "amsgrad", "adam-l2", "sgd-momentum"])
def test_offload_placements_are_bit_identical(cls, kw, pdt, gdt, tmp_path):
    """GPU-only, half and all of the state in host memory, a GPU budget, and half in host memory of
    which half in files: the same params, state, step counts and grad norms after every step kind
    (clipped, skipped on inf, a tensor without grad); the all-in-host-memory run also equals the
    CPU optimizer on the same data in NumPy arrays."""
    init, steps = _offload_data(pdt, gdt)
    runs = {}
    for name, place in _places(sum(p.size for p in init), tmp_path).items():
        params = [_to_gpu(p) for p in init]
        opt, infos = _offload_run(cls, kw, params, steps, place)
        eng = opt._engine
        assert bool(eng.host) == ("offload_fraction" in place) or name == "budget", name
        assert bool(eng.disk) == ("nvme_offload_fraction" in place), name
        assert infos[2].skipped and not any(i.skipped for i in infos[:2] + infos[3:])
        runs[name] = _fingerprint(opt, params, infos)
        opt.close()
    params = [p.copy() for p in init]
    opt, infos = _offload_run(cls, dict(kw, kernel="cpu"), params, steps, {}, to_dev=np.copy)
    runs["numpy"] = _fingerprint(opt, params, infos)
    _assert_all_equal(runs, "gpu")


def test_checkpoint_moves_between_placements(tmp_path):
    """A checkpoint of a half-offloaded run (bfloat16: masters too) loads into every other placement:
    params and state as saved, and the next steps bit-identical to the run that saved it."""
    init, steps = _offload_data("bfloat16", "bfloat16", seed=8)
    cls, kw = npadam.AdamW, dict(lr=1e-2, weight_decay=0.1, amsgrad=True, max_grad_norm=1.0)
    places = _places(sum(p.size for p in init), tmp_path)
    src_params = [_to_gpu(p) for p in init]
    src, _ = _offload_run(cls, kw, src_params, steps[:3], places["half"])
    checkpoint.save(tmp_path / "ck", src)
    saved = _fingerprint(src, src_params, [])
    runs = {"saved": _fingerprint(src, src_params, _offload_run_more(src, steps[3:]))}
    fresh = _offload_data("bfloat16", "bfloat16", seed=9)[0]  # other values: the checkpoint must write them
    for name, place in places.items():
        params = [_to_gpu(p) for p in fresh]
        opt, _ = _offload_run(cls, kw, params, [], place)
        checkpoint.load(tmp_path / "ck", opt)
        loaded = _fingerprint(opt, params, [])
        assert loaded == saved, name
        runs[name] = _fingerprint(opt, params, _offload_run_more(opt, steps[3:]))
        opt.close()
    src.close()
    _assert_all_equal(runs, "saved")


def _offload_run_more(opt, steps: list[list[np.ndarray | None]]) -> list[Any]:
    return [opt.step([None if g is None else _to_gpu(g) for g in grads]) for grads in steps]


def _mlp(torch, dtype: str, device: str = "cuda") -> Any:
    """A small model, the same weights every time."""
    torch.manual_seed(0)
    nn = torch.nn
    model = nn.Sequential(nn.Linear(33, 257), nn.Tanh(), nn.Linear(257, 65, bias=False), nn.Tanh(), nn.Linear(65, 7))
    return model.to(device=device, dtype=getattr(torch, dtype))


def _train(torch, model, opt, first: int, steps: int) -> list[float]:
    """Training steps on batches ``first, first + 1, ...``, on a side stream (torch's current stream
    there) with no host synchronization between steps: a step whose copies did not wait for the
    backward pass, or a forward pass that did not wait for the params coming back from the host,
    changes the bits. Returns the losses."""
    p0 = next(model.parameters())
    batches = []
    for k in range(first, first + steps):
        gen = torch.Generator().manual_seed(k)
        x, y = torch.randn(64, 33, generator=gen), torch.randn(64, 7, generator=gen)
        batches.append((x.to(p0.device, p0.dtype), y.to(p0.device, p0.dtype)))
    stream = torch.cuda.Stream(p0.device) if p0.is_cuda else None
    if stream is not None:
        stream.wait_stream(torch.cuda.current_stream(p0.device))
    losses = []
    with torch.cuda.stream(stream):
        for x, y in batches:
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.detach())
    if stream is not None:
        stream.synchronize()
    return [float(v) for v in losses]


def _torch_fingerprint(torch, model, opt, losses: list[float]) -> dict[str, Any]:
    return {"losses": losses, "state": _state_bytes(opt.state_dict()),
            "params": [p.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes() for p in model.parameters()]}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_torch_training_is_bit_identical_across_placements(dtype):
    """npadam.torch on CUDA tensors: training with all state on the GPU, half and all of it in host
    memory gives the same losses, params and state, bit for bit."""
    torch = _cuda_torch()
    from npadam.torch import AdamW

    runs = {}
    for name in ("gpu", "half", "host"):
        place = PLACES[name]
        model = _mlp(torch, dtype)
        opt = AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, max_grad_norm=1.0, **place)
        losses = _train(torch, model, opt, 0, 6)
        assert bool(opt._engine.host) == bool(place)
        runs[name] = _torch_fingerprint(torch, model, opt, losses)
    _assert_all_equal(runs, "gpu")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_torch_state_dict_moves_between_placements(dtype, tmp_path):
    """npadam.torch: a state dict saved (torch.save) from a half-offloaded run loads into every other
    placement, reads back the same, and training goes on bit-identically to the run that saved it."""
    torch = _cuda_torch()
    from npadam.torch import AdamW

    kw = dict(lr=1e-2, weight_decay=0.1, amsgrad=True)
    model = _mlp(torch, dtype)
    src = AdamW(model.parameters(), **kw, **PLACES["half"])
    _train(torch, model, src, 0, 3)
    torch.save({"model": model.state_dict(), "opt": src.state_dict()}, tmp_path / "ck.pt")
    saved = _state_bytes(src.state_dict())
    runs = {"saved": _torch_fingerprint(torch, model, src, _train(torch, model, src, 3, 3))}
    elements = sum(p.numel() for p in model.parameters())
    for name, place in _places(elements, tmp_path).items():
        ck = torch.load(tmp_path / "ck.pt", weights_only=True)
        other = _mlp(torch, dtype)
        other.load_state_dict(ck["model"])
        opt = AdamW(other.parameters(), **kw, **place)
        opt.load_state_dict(ck["opt"])
        assert _state_bytes(opt.state_dict()) == saved, name
        runs[name] = _torch_fingerprint(torch, other, opt, _train(torch, other, opt, 3, 3))
        opt.close()
    _assert_all_equal(runs, "saved")


# ---------------------------------------------------------------------- precision-aware state (issue 11)
#: optimizer options of the low-precision state (reference/precision.py): 16-bit moments rounded to nearest
#: or stochastically (bfloat16), bfloat16 params with int16 remainders instead of fp32 masters, or with float16
#: masters (main_params_dtype)
PRECISION_KWS = {
    "bf16-nearest": dict(exp_avg_dtype="bfloat16", exp_avg_sq_dtype="bfloat16"),
    "bf16-fp16-stochastic": dict(exp_avg_dtype="bfloat16", exp_avg_sq_dtype="float16", rounding="stochastic",
                                 seed=1234),
    "fp16-fp32": dict(exp_avg_dtype="float16", exp_avg_sq_dtype="float32"),
    "fp32-bf16-stochastic": dict(exp_avg_dtype="float32", exp_avg_sq_dtype="bfloat16", rounding="stochastic",
                                 seed=2**40 + 3),
    "bf16-stochastic-remainders": dict(exp_avg_dtype="bfloat16", exp_avg_sq_dtype="bfloat16", rounding="stochastic",
                                       seed=7, store_param_remainders=True),
    "remainders": dict(store_param_remainders=True),
    "fp16-masters": dict(main_params_dtype="float16"),
    "fp16-masters-bf16-stochastic": dict(main_params_dtype="float16", exp_avg_dtype="bfloat16",
                                         exp_avg_sq_dtype="bfloat16", rounding="stochastic", seed=5),
}
#: the options that change the master of bfloat16 params only (the other params keep float32 masters)
BF16_MASTER_OPTIONS = ("store_param_remainders", "main_params_dtype")


@pytest.mark.parametrize("name", list(PRECISION_KWS))
@pytest.mark.parametrize("pdt, gdt", [("float32", "float32"), ("bfloat16", "bfloat16"), ("bfloat16", "float32"),
                                      ("float16", "bfloat16")])
def test_gpu_precision_state_matches_cpu_bit_for_bit(pdt, gdt, name):
    """adam_multi's MK / VK / SR / WM options against the Numba kernel (which equals
    reference.precision): params, 16-bit moments (and max_exp_avg_sq), remainders or float16 masters, grad
    norms, with and without amsgrad, AdamW and Adam, a tensor without a grad at one step (its random
    counters do not move)."""
    precision = PRECISION_KWS[name]
    if any(precision.get(k) not in (None, False, "float32") for k in BF16_MASTER_OPTIONS) and pdt != "bfloat16":
        pytest.skip("param remainders and float16 masters are for bfloat16 params")
    rng = np.random.default_rng(11)
    sizes = [1, 63, 64, 65, 4099, 300_001]
    for amsgrad, cls in ((False, npadam.AdamW), (True, npadam.AdamW), (True, npadam.Adam)):
        init = [rng.standard_normal(n).astype(np.float32).astype(STORE[pdt]) for n in sizes]
        grads = [[None if (k == 1 and i == 3) else (rng.standard_normal(n) * 3).astype(np.float32).astype(STORE[gdt])
                  for i, n in enumerate(sizes)] for k in range(3)]
        kw = dict(lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, amsgrad=amsgrad, max_grad_norm=1.0, **precision)
        cpu_params = [p.copy() for p in init]
        copt = cls(cpu_params, kernel="cpu", **kw)
        cinfo = [copt.step(g) for g in grads]
        gpu_params = [_to_gpu(p) for p in init]
        gopt = cls(gpu_params, kernel="gpu", **kw)
        ginfo = [gopt.step([None if g is None else _to_gpu(g) for g in gs]) for gs in grads]
        assert [i.grad_norm for i in cinfo] == [i.grad_norm for i in ginfo]
        _assert_same(copt, cpu_params, gopt, gpu_params)


def test_gpu_stochastic_rounding_depends_on_the_seed_only():
    """The same seed gives the same bits (launch geometry, streams and runs do not matter); another
    seed other bits; stochastic rounding other bits than nearest."""
    rng = np.random.default_rng(12)
    init = [rng.standard_normal(n).astype(np.float32).astype(STORE["bfloat16"]) for n in (4099, 300_001)]
    grads = [[(rng.standard_normal(p.size) * 3).astype(np.float32) for p in init] for _ in range(3)]

    def run(**kw) -> dict[str, Any]:
        params = [_to_gpu(p) for p in init]
        opt = npadam.AdamW(params, kernel="gpu", lr=1e-3, exp_avg_dtype="bfloat16", exp_avg_sq_dtype="bfloat16", **kw)
        infos = [opt.step([_to_gpu(g) for g in gs]) for gs in grads]
        return _fingerprint(opt, params, infos)

    a, b = run(rounding="stochastic", seed=1), run(rounding="stochastic", seed=1)
    assert a == b
    assert a["state"] != run(rounding="stochastic", seed=2)["state"]
    assert a["state"] != run(rounding="nearest")["state"]


@pytest.mark.parametrize("pdt, precision", [("bfloat16", "bf16-stochastic-remainders"),
                                            ("float32", "bf16-fp16-stochastic"),
                                            ("bfloat16", "fp16-masters-bf16-stochastic")])
def test_gpu_precision_offload_placements_are_bit_identical(pdt, precision, tmp_path):
    """Low-precision state streamed between host memory and the GPU piece by piece: each piece's kernel
    gets its buffer index (``base``), so stochastic rounding draws the same random words as with all of the
    state on the GPU, and the host pieces run the Numba kernel with the same master (float16 masters too);
    every placement gives the same bits as the CPU optimizer. The disk tier stores float32 state only: a
    placement with files is refused (docs/PRECISION.md)."""
    init, steps = _offload_data(pdt, "bfloat16", seed=13)
    kw = dict(lr=1e-2, weight_decay=0.1, amsgrad=True, max_grad_norm=1.0, **PRECISION_KWS[precision])
    runs = {}
    for name, place in _places(sum(p.size for p in init), tmp_path).items():
        params = [_to_gpu(p) for p in init]
        if "nvme_offload_fraction" in place:
            with pytest.raises(ValueError, match="disk tier stores float32 state"):
                _offload_run(npadam.AdamW, kw, params, steps, place)
            continue
        opt, infos = _offload_run(npadam.AdamW, kw, params, steps, place)
        runs[name] = _fingerprint(opt, params, infos)
        opt.close()
    params = [p.copy() for p in init]
    opt, infos = _offload_run(npadam.AdamW, dict(kw, kernel="cpu"), params, steps, {}, to_dev=np.copy)
    runs["numpy"] = _fingerprint(opt, params, infos)
    _assert_all_equal(runs, "gpu")


@pytest.mark.parametrize("precision", ["fp16-masters", "fp16-masters-bf16-stochastic"])
def test_gpu_fp16_masters_match_cpu_bit_for_bit(precision):
    """main_params_dtype="float16" on the GPU (adam_multi's master mode 2) against the Numba kernel: the
    float16 masters made from the bf16 params on the device (load_master: nearest even, beyond float16's
    range inf, below it subnormal or zero, NaN 0x7E00), and after steps with params written in place
    between them (the param wins where it is not its master's rounding), the params, masters and moments,
    bit for bit; beside a float32 param (which keeps no master) in the same optimizer."""
    rng = np.random.default_rng(14)
    specials = np.array([0.0, -0.0, 1e-7, -3e-6, 6.1e-5, 65504.0, 65520.0, 7e4, -3e38, np.inf, -np.inf, np.nan, 1.5],
                        np.float32)
    init = [np.concatenate([specials, rng.standard_normal(n).astype(np.float32)]).astype(STORE["bfloat16"])
            for n in (50, 4099, 300_001)] + [rng.standard_normal(999).astype(np.float32)]
    grads = [[(rng.standard_normal(p.size) * 3).astype(np.float32).astype(p.dtype) for p in init] for _ in range(3)]
    edits = [[(rng.standard_normal(p[::7].size) * 4).astype(np.float32).astype(p.dtype) for p in init] for _ in grads]
    kw = dict(lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, amsgrad=True, **PRECISION_KWS[precision])
    cpu_params = [p.copy() for p in init]
    copt = npadam.AdamW(cpu_params, kernel="cpu", **kw)
    gpu_params = [_to_gpu(p) for p in init]
    gopt = npadam.AdamW(gpu_params, kernel="gpu", **kw)
    cmaster, gmaster = (next(b.master for b in o._engine.bufs if b.pdtype == "bfloat16") for o in (copt, gopt))
    assert cmaster.dtype == np.uint16 and gmaster.dtype == cupy.uint16
    assert gmaster.get().tobytes() == cmaster.tobytes()  # load_master on the device == reference.precision.narrow
    for k, gs in enumerate(grads):
        if k:  # params written behind the optimizer's back (in place): the params win there
            for c, g, e in zip(cpu_params, gpu_params, edits[k]):
                c[::7] = e
                if isinstance(g, npadam.interop.Bfloat16):
                    g.array[::7] = cupy.asarray(e.view(np.uint16))
                else:
                    g[::7] = cupy.asarray(e)
        copt.step(gs)
        gopt.step([_to_gpu(g) for g in gs])
    _assert_same(copt, cpu_params, gopt, gpu_params)
    st = gopt.state_dict()["state"]
    assert st[0]["master"].dtype == np.float16 and "master" not in st[3]


# ---------------------------------------------------------------------- fp8 moments (issue 11)
#: fp8 state (reference/precision.py: uint8 codes, a float32 scale per 256-element block): the two
#: formats both ways, fp8 beside a stochastically rounded bfloat16 moment, and beside param remainders
FP8_KWS = {
    "e4m3-e5m2": dict(exp_avg_dtype="float8_e4m3fn", exp_avg_sq_dtype="float8_e5m2"),
    "e5m2-e4m3": dict(exp_avg_dtype="float8_e5m2", exp_avg_sq_dtype="float8_e4m3fn"),
    "bf16-stochastic-e4m3": dict(exp_avg_dtype="bfloat16", exp_avg_sq_dtype="float8_e4m3fn", rounding="stochastic",
                                 seed=99),
    "e4m3-fp32-remainders": dict(exp_avg_dtype="float8_e4m3fn", exp_avg_sq_dtype="float32",
                                 store_param_remainders=True),
    "e4m3-e5m2-fp16-masters": dict(exp_avg_dtype="float8_e4m3fn", exp_avg_sq_dtype="float8_e5m2",
                                   main_params_dtype="float16"),
}


@pytest.mark.parametrize("pdt, gdt, name", [
    ("float32", "float32", "e4m3-e5m2"), ("float32", "float32", "e5m2-e4m3"),
    ("float32", "float32", "bf16-stochastic-e4m3"),
    ("bfloat16", "bfloat16", "e4m3-e5m2"), ("bfloat16", "bfloat16", "bf16-stochastic-e4m3"),
    ("bfloat16", "bfloat16", "e4m3-fp32-remainders"), ("bfloat16", "float32", "e5m2-e4m3"),
    ("float16", "bfloat16", "e4m3-e5m2"), ("bfloat16", "bfloat16", "e4m3-e5m2-fp16-masters"),
])
def test_gpu_fp8_state_matches_cpu_bit_for_bit(pdt, gdt, name, monkeypatch):
    """adam_multi with fp8 moments (each 256-element block's amax reduced across the thread block) against
    the Numba kernel (which equals reference.precision), as test_gpu_precision_state_matches_cpu_bit_for_bit
    runs it: params, fp8 codes and block scales (of max_exp_avg_sq too), masters or remainders, grad norms,
    with and without amsgrad, AdamW and Adam, tensors ending in partial blocks, one of 300,001 elements
    (five chunks, thread blocks taking several in turn), a tensor without a grad at one step."""
    monkeypatch.setitem(PRECISION_KWS, name, FP8_KWS[name])
    test_gpu_precision_state_matches_cpu_bit_for_bit(pdt, gdt, name)


def test_gpu_fp8_nan_inf_and_zero_blocks_match_cpu_bit_for_bit():
    """Steps that are not skipped on non-finite grads (skip_nonfinite=False): a NaN grad turns its block
    of every moment NaN (scale the canonical NaN 0x7FC00000 on the GPU too, codes FP8_NAN), an inf grad
    gives an inf scale (its block dequantizes to NaN at the next step), a tensor with zero grads keeps
    zero blocks (scale 0); the state dict holds fp8 arrays and a float32 scale per block; bit for bit
    the CPU's."""
    rng = np.random.default_rng(32)
    sizes = [300, 4099, 70_000]
    init = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    grads = [[(rng.standard_normal(n) * 3).astype(np.float32) for n in sizes] for _ in range(3)]
    grads[0][1][1000] = np.nan
    grads[1][2][5] = np.inf
    for gs in grads:
        gs[0][:] = 0.0
    kw = dict(lr=1e-3, amsgrad=True, skip_nonfinite=False, **FP8_KWS["e4m3-e5m2"])
    runs = {}
    for kernel, to_dev in (("cpu", np.copy), ("gpu", _to_gpu)):
        params = [to_dev(p) for p in init]
        opt = npadam.AdamW(params, kernel=kernel, **kw)
        assert not any(opt.step([to_dev(g) for g in gs]).skipped for gs in grads)
        runs[kernel] = (opt, params)
    _assert_same(*runs["cpu"], *runs["gpu"])
    st = runs["gpu"][0].state_dict()["state"]
    assert st[1]["exp_avg"].dtype.name == "float8_e4m3fn" and st[1]["max_exp_avg_sq"].dtype.name == "float8_e5m2"
    assert all(st[i][k].shape == (-(-n // 256),) for i, n in enumerate(sizes) for k in st[i] if k.endswith("_scale"))
    assert (st[0]["exp_avg_scale"] == 0).all() and (st[0]["exp_avg"].view(np.uint8) == 0).all()
    nan_scale = st[1]["exp_avg_scale"][1000 // 256]
    assert np.isnan(nan_scale) and np.asarray(nan_scale).view(np.uint32) == 0x7FC00000
    assert (st[1]["exp_avg"].view(np.uint8)[768:1024] == 0x7F).all()
    assert np.isnan(st[2]["exp_avg_sq_scale"][0])


@pytest.mark.parametrize("pdt", ["float32", "bfloat16"])
def test_gpu_fp8_offload_placements_are_bit_identical(pdt, tmp_path, monkeypatch):
    """fp8 state streamed between host memory (and files) and the GPU piece by piece (codes and their
    block scales together; pieces start on blocks): every placement gives the same bits as the CPU
    optimizer (test_gpu_precision_offload_placements_are_bit_identical's run with the fp8 options)."""
    monkeypatch.setitem(PRECISION_KWS, "fp8-e4m3-e5m2", FP8_KWS["e4m3-e5m2"])
    test_gpu_precision_offload_placements_are_bit_identical(pdt, "fp8-e4m3-e5m2", tmp_path)


def test_gpu_params_sharded_on_two_ranks():
    """comm= with params on the GPU (issue 12): two MPI ranks sharing this GPU, npadam.AdamW on CuPy
    arrays and npadam.torch.AdamW on CUDA tensors (flat storage, buckets sent from the backward
    hooks, a bf16 layer), their collectives staged through host copies (pip's MPI moves host memory)
    and direct on device buffers (a communicator that takes CuPy arrays); params, norms and state
    bit-identical to one CPU process, a checkpoint saved and loaded by the ranks (tests/ranks/gpu_sharded_check.py)."""
    import importlib.util
    import re

    try:
        from .ranks import launch
    except ImportError:
        from ranks import launch
    if not (importlib.util.find_spec("mpi4py") and launch.mpiexec_path()):
        pytest.skip("needs mpi4py and mpiexec: python3 -m pip install mpi4py mpich")
    out = launch.mpiexec(2, Path(__file__).resolve().parent / "ranks" / "gpu_sharded_check.py", "gpu", timeout=300)
    assert sorted(re.findall(r"OK gpu-sharded rank (\d)/2 4", out)) == ["0", "1"], out
