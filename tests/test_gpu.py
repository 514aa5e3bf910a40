"""GPU kernels on a real device: bit-identical to the CPU kernel and the reference.

Every test here skips cleanly without CuPy or without a CUDA device (CI has
neither); ``tools/bench_gpu.py`` runs them on an H100/H200.
"""

from __future__ import annotations

import itertools
import os

import ml_dtypes
import numpy as np
import pytest

import npadam

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


def _bytes(x) -> bytes:
    return (x.array if isinstance(x, npadam.interop.Bfloat16) else x).get().tobytes()


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


def test_torch_cuda_tensors_on_the_callers_stream():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
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
