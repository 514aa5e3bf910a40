"""The CUDA source without a GPU: it compiles for sm_90 with the exact flags, and its
element math, built for the host, is bit-identical to the reference (Adam and SGD), including the
precision-aware state of reference/precision.py (16-bit moments, stochastic rounding with the
Threefry generator, param remainders, float16 masters of bfloat16 params, fp8 moments with per-block
scales and the kernel's block-wide amax reduction, emulated)."""

from __future__ import annotations

import ctypes
import itertools
import re
import shutil
import subprocess
import zlib

import ml_dtypes
import numpy as np
import pytest

from npadam.kernels import gpu
from npadam.reference import adamw as R
from npadam.reference import precision as P
from npadam.reference import sgd as RS

NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found (CUDA toolkit not installed)")
KERNEL_DIR = gpu.SOURCE_DIR
HOST_SRC = KERNEL_DIR.parents[1] / "tests" / "cuda" / "adam_host.cu"
STORE = {0: np.dtype(np.float32), 1: np.dtype(ml_dtypes.bfloat16), 2: np.dtype(np.float16)}


def _instantiations(names: list[str]) -> str:
    refs = ",\n    ".join(f"(void*)&{n.replace(' ', '')}" for n in names)
    return f'#include "adam.cu"\nvoid npadam_instantiate() {{\n  void* k[] = {{\n    {refs}}};\n  (void)k;\n}}\n'


@pytest.fixture(scope="module")
def ptx(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("ptx")
    (d / "all.cu").write_text(_instantiations(gpu.all_names()))
    out = subprocess.run([NVCC, "-ptx", "-arch=sm_90", "-std=c++17", "-fmad=false", "-prec-div=true",
                          "-prec-sqrt=true", "-ftz=false", "-diag-suppress", "550", "-I", str(KERNEL_DIR),
                          str(d / "all.cu"), "-o", str(d / "all.ptx")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return (d / "all.ptx").read_text()


def _entries(ptx: str) -> dict[str, str]:
    """Each kernel's PTX body by its (mangled) entry name."""
    parts = re.split(r"\.entry\s+", ptx)[1:]
    return {part.split("(", 1)[0]: part for part in parts}


def _check_fused_operations(ptx: str) -> None:
    """Adam and the norm: no fused multiply-add at all (-fmad=false). SGD: its explicit fmas are
    all fma.rn.f32 (reference.sgd), and its multiplies and adds are not contracted into more."""
    entries = _entries(ptx)
    assert entries
    for name, body in entries.items():
        if "sgd_multi" in name:
            fmas = re.findall(r"\bfma\.[\w.]+", body)
            assert fmas and set(fmas) == {"fma.rn.f32"}, (name, set(fmas))
        else:
            assert "fma." not in body, name
    assert ".ftz" not in ptx


@needs_nvcc
def test_every_instantiation_compiles_for_sm90(ptx):
    entries = re.findall(r"\.entry\s+(\S+)\(", ptx)
    assert len(entries) == len(gpu.all_names()) == 3 + 72 + 27 + 67 + (27 + 16) + (15 + 1) + 2 * 15


@needs_nvcc
def test_no_fused_multiply_add_and_ieee_div_sqrt(ptx):
    _check_fused_operations(ptx)
    assert not re.search(r"(div|sqrt|rcp)\.approx", ptx)
    assert "div.rn.f32" in ptx and "sqrt.rn.f32" in ptx


def test_source_inlines_header_for_nvrtc():
    src = gpu.source()
    assert '#include "adam_math.cuh"' not in src and "adam_element" in src
    assert "-fmad=false" in gpu.NVRTC_OPTIONS


@pytest.fixture(scope="module")
def host_lib(tmp_path_factory):
    d = tmp_path_factory.mktemp("host")
    so = d / "libadam_host.so"
    out = subprocess.run([NVCC, "-shared", "-O2", "-std=c++17", "-Xcompiler", "-fPIC", "-Xcompiler",
                          "-ffp-contract=off", "-I", str(KERNEL_DIR), str(HOST_SRC), "-o", str(so)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lib = ctypes.CDLL(str(so))
    vp, u32, i64 = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int64
    lib.adam_host.restype = ctypes.c_int
    lib.adam_host.argtypes = [ctypes.c_int] * 9 + [i64] + [vp] * 10 + [u32, u32, i64]
    lib.convert_host.argtypes = [ctypes.c_int, i64, vp, vp, vp]
    lib.threefry_host.argtypes = [i64] + [vp] * 6
    lib.random_words_host.argtypes = [u32, u32, i64, vp, vp, vp]
    lib.moment_host.restype = ctypes.c_int
    lib.moment_host.argtypes = [ctypes.c_int, ctypes.c_int, i64, vp, vp, vp, vp]
    lib.remainder_host.argtypes = [i64, vp, vp, vp, vp]
    lib.fp8_host.restype = ctypes.c_int
    lib.fp8_host.argtypes = [ctypes.c_int, i64, vp, vp, i64, vp, vp]
    lib.quantize_host.restype = ctypes.c_int
    lib.quantize_host.argtypes = [ctypes.c_int, i64, vp, vp, vp]
    return lib


def _ptr(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data


@needs_nvcc
@pytest.mark.parametrize("pk, gk", list(itertools.product(range(3), range(3))))
def test_host_build_of_element_math_is_bit_identical(host_lib, pk, gk):
    rng = np.random.default_rng(10 * pk + gk)
    n = 5_000
    for amsgrad, decoupled, maximize in itertools.product((False, True), repeat=3):
        p0 = (rng.standard_normal(n) * 2).astype(np.float32)
        p0[:4] = [0.0, -0.0, 1e-30, 6.1e-5]
        param = p0.astype(STORE[pk])
        master = p0.copy() if pk else None
        ref_p = p0.copy()
        m, v, x = (np.zeros(n, np.float32) for _ in range(3))
        rm, rv, rx = (np.zeros(n, np.float32) for _ in range(3))
        for step in range(1, 4):
            g = (rng.standard_normal(n) * 10.0 ** rng.integers(-6, 3, n)).astype(np.float32).astype(STORE[gk])
            s = R.host_scalars(lr=3e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, step=step,
                               decoupled=decoupled, grad_scale=0.5)
            sc = np.array([s.scale, s.beta1, s.one_minus_beta1, s.beta2, s.one_minus_beta2, s.weight_decay,
                           s.decay, s.step_size, s.bc2_sqrt, s.eps], np.float32)
            rc = host_lib.adam_host(pk, gk, amsgrad, decoupled, maximize, 0, 0, 0, 0, n, _ptr(param), _ptr(g),
                                    _ptr(master), _ptr(m), _ptr(v), _ptr(x), None, None, None, _ptr(sc), 0, 0, 0)
            assert rc == 0
            R.apply_step(ref_p, g, rm, rv, rx if amsgrad else None, s, decoupled=decoupled, amsgrad=amsgrad,
                         maximize=maximize)
        assert m.tobytes() == rm.tobytes() and v.tobytes() == rv.tobytes()
        if amsgrad:
            assert x.tobytes() == rx.tobytes()
        if pk:
            assert master.tobytes() == ref_p.tobytes()
            assert param.tobytes() == R.to_storage(ref_p, STORE[pk]).tobytes()
        else:
            assert param.tobytes() == ref_p.tobytes()


@needs_nvcc
@pytest.mark.parametrize("kind", [1, 2])
def test_host_build_of_conversions_matches_ml_dtypes_and_numpy(host_lib, kind):
    rng = np.random.default_rng(kind)
    bits = rng.integers(0, 1 << 32, 400_000, dtype=np.uint64).astype(np.uint32)
    ties = (np.arange(0x33000000, 0x47800000, 0x1000, dtype=np.uint64) | (0x8000 if kind == 1 else 0x1000))
    x = np.concatenate([bits, ties.astype(np.uint32), np.array([0x7F800001, 0xFFC00001, 0x7F800000], np.uint32)])
    x = x.view(np.float32)
    out = np.empty(x.size, np.uint16)
    back = np.empty(x.size, np.float32)
    host_lib.convert_host(kind, x.size, _ptr(x), _ptr(out), _ptr(back))
    with np.errstate(over="ignore", invalid="ignore"):
        want = x.astype(STORE[kind])
    assert out.tobytes() == want.view(np.uint16).tobytes()
    assert back.view(np.uint32).tobytes() == want.astype(np.float32).view(np.uint32).tobytes()


def _nvrtc():
    nvrtc = pytest.importorskip("cupy_backends.cuda.libs.nvrtc")
    try:
        nvrtc.getVersion()
    except Exception as exc:  # noqa: BLE001 - the nvidia-cuda-nvrtc library is not installed
        pytest.skip(f"NVRTC not loadable: {exc}")
    return nvrtc


def test_nvrtc_compiles_the_runtime_source_for_sm90():
    """What the runtime does on first use (``gpu.compile_names``: NVRTC, the header inlined,
    every name expression, the runtime's exact options), minus the device."""
    _nvrtc()
    names = gpu.all_names()
    ptx, lowered = gpu.compile_names(names, 90, cubin=False)
    ptx = ptx.rstrip(b"\0").decode()
    assert ptx.count(".entry") == len(names)
    _check_fused_operations(ptx)
    assert not re.search(r"(div|sqrt|rcp)\.approx", ptx)
    # no flush-to-zero (cupy.RawModule appends -ftz=true to every option list: the runtime must not use it)
    assert ".ftz" not in ptx
    assert all(lowered[n].startswith("_Z") for n in names)
    cubin, _ = gpu.compile_names(names[:2], 90)  # what a device of compute capability 9.0 loads
    assert cubin[:4] == b"\x7fELF"


def test_compile_target_falls_back_to_ptx_for_unknown_architectures():
    nvrtc = _nvrtc()
    archs = sorted(int(a) for a in nvrtc.getSupportedArchs())
    assert gpu.target(archs[-1]) == (archs[-1], True)
    assert gpu.target(archs[-1] + 1) == (archs[-1], False)


def test_cuda_sources_ship_as_package_data():
    import fnmatch

    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    cfg = tomllib.loads((KERNEL_DIR.parents[1] / "pyproject.toml").read_text())
    globs = cfg["tool"]["setuptools"]["package-data"]["npadam"]
    for name in ("kernels/adam.cu", "kernels/adam_math.cuh"):
        assert (KERNEL_DIR.parent / name).exists()
        assert any(fnmatch.fnmatch(name, g) for g in globs), name


GXX = shutil.which("g++")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """adam.cu itself, compiled for the host with the CUDA built-ins emulated (tests/cuda/emulate.cpp)."""
    if GXX is None:
        pytest.skip("g++ not found")
    so = tmp_path_factory.mktemp("emu") / "libemu.so"
    out = subprocess.run([GXX, "-std=c++20", "-O1", "-shared", "-fPIC", "-ffp-contract=off", "-pthread",
                          "-I", str(KERNEL_DIR), "-x", "c++", str(HOST_SRC.parent / "emulate.cpp"), "-o", str(so)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lib = ctypes.CDLL(str(so))
    lib.emu_adam.restype = ctypes.c_int
    lib.emu_adam.argtypes = [ctypes.c_int] * 9 + [ctypes.c_uint, ctypes.c_uint] + [ctypes.c_void_p] * 6 + \
        [ctypes.c_int64, ctypes.c_int64] + [ctypes.c_void_p] * 8 + [ctypes.c_uint32, ctypes.c_uint32, ctypes.c_int64]
    lib.emu_norm.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint] + [ctypes.c_void_p] * 3 + \
        [ctypes.c_int64] * 3 + [ctypes.c_void_p]
    lib.emu_sgd.argtypes = [ctypes.c_int] * 3 + [ctypes.c_uint, ctypes.c_uint] + [ctypes.c_void_p] * 6 + \
        [ctypes.c_int64, ctypes.c_int64] + [ctypes.c_void_p] * 3 + [ctypes.c_int] * 3
    return lib


def _tables(arrays, sizes, chunk):
    from npadam.layout import work_items

    t, start, _ = work_items(np.asarray(sizes, np.int64), chunk)
    ptrs = np.asarray([a.ctypes.data for a in arrays], np.uint64)
    return ptrs, t, start


@pytest.mark.parametrize("pk, gk", [(0, 0), (0, 1), (1, 1), (1, 2), (2, 0)])
def test_emulated_kernels_match_the_reference(emulator, pk, gk):
    """The GPU kernels' own code (multi-tensor chunks with a grid smaller than the chunk count,
    the float4 path and unaligned views, the norm's 64 lanes) against the reference, bit for bit."""
    rng = np.random.default_rng(pk * 3 + gk)
    sizes = [1, 63, 64, 4099, 70_001, 5]
    offsets = np.cumsum([0] + [-(-n // 64) * 64 for n in sizes[:-1]]).astype(np.int64)
    total = int(offsets[-1] + -(-sizes[-1] // 64) * 64)
    chunk = 4096
    for amsgrad, decoupled, maximize in itertools.product((False, True), repeat=3):
        raw = [(rng.standard_normal(n + 1) * 2).astype(np.float32) for n in sizes]
        params = [r[1:].astype(STORE[pk]) if i == 3 else r[:-1].astype(STORE[pk]) for i, r in enumerate(raw)]
        params[4] = np.concatenate([np.zeros(1, STORE[pk]), params[4]])[1:]  # a view that is not 16-byte aligned
        ref_p = [p.astype(np.float32) for p in params]
        master = np.zeros(total, np.float32)
        for p, off in zip(params, offsets):
            master[off: off + p.size] = p.astype(np.float32)
        m, v, x = (np.zeros(total, np.float32) for _ in range(3))
        rm, rv, rx = (np.zeros(total, np.float32) for _ in range(3))
        for step in range(1, 3):
            if step == 2 and pk != 0:  # params written behind the optimizer's back: the params win
                for i, p in enumerate(params):
                    p[::7] = (rng.standard_normal(p[::7].size) * 5).astype(np.float32).astype(STORE[pk])
                    R.current_master(ref_p[i], p)
            grads = [(rng.standard_normal(n) * 3).astype(np.float32).astype(STORE[gk]) for n in sizes]
            s = R.host_scalars(lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, step=step,
                               decoupled=decoupled, grad_scale=0.7)
            sc = np.array([s.scale, s.beta1, s.one_minus_beta1, s.beta2, s.one_minus_beta2, s.weight_decay,
                           s.decay, s.step_size, s.bc2_sqrt, s.eps], np.float32)
            pptr, ct, cs = _tables(params, sizes, chunk)
            gptr, _, _ = _tables(grads, sizes, chunk)
            sz = np.asarray(sizes, np.int64)
            assert emulator.emu_adam(pk, gk, amsgrad, decoupled, maximize, 0, 0, 0, 0, 3, 128, _ptr(pptr),
                                     _ptr(gptr), _ptr(offsets), _ptr(sz), _ptr(ct), _ptr(cs), ct.size, chunk,
                                     _ptr(master), _ptr(m), _ptr(v), _ptr(x), None, None, None, _ptr(sc), 0, 0,
                                     0) == 0
            for i, (g, off) in enumerate(zip(grads, offsets)):
                sl = slice(off, off + sizes[i])
                R.apply_step(ref_p[i], g, rm[sl], rv[sl], rx[sl] if amsgrad else None, s, decoupled=decoupled,
                             amsgrad=amsgrad, maximize=maximize)
            if step == 1:  # the norm kernel, 4096-element blocks, 2 thread blocks in a grid-stride loop
                nblocks = -(-total // 4096)
                out = np.zeros(nblocks)
                emulator.emu_norm(gk, 2, 64, _ptr(gptr), _ptr(offsets), _ptr(sz), len(sizes), nblocks, 4096,
                                  _ptr(out))
                flat = np.zeros(total, STORE[gk])
                for g, off in zip(grads, offsets):
                    flat[off: off + g.size] = g
                assert out.tobytes() == R.block_sumsq(flat, 4096).tobytes()
        for i, (p, off) in enumerate(zip(params, offsets)):
            want = ref_p[i] if pk == 0 else R.to_storage(ref_p[i], STORE[pk])
            assert p.tobytes() == want.tobytes(), (i, amsgrad, decoupled, maximize)
        assert m.tobytes() == rm.tobytes() and v.tobytes() == rv.tobytes()
        if amsgrad:
            assert x.tobytes() == rx.tobytes()


def test_norm_blocking_constants_agree():
    from npadam.kernels import cpu

    src = (KERNEL_DIR / "adam.cu").read_text()
    assert gpu.LANES == cpu.LANES == R.NORM_LANES == int(re.search(r"#define NPADAM_LANES (\d+)", src).group(1))
    assert R.NORM_BLOCK % R.NORM_LANES == 0 and 64 % R.NORM_LANES == 0  # tensors start at lane 0


class _HostCupy:
    """Just enough of CuPy for ``GpuKernels``' table building and launches, on host memory."""

    float32, float64, uint16, uint32 = np.float32, np.float64, np.uint16, np.uint32

    @staticmethod
    def asarray(a):
        return np.array(a, copy=True)

    zeros, empty, concatenate = staticmethod(np.zeros), staticmethod(np.empty), staticmethod(np.concatenate)


class _EmulatedLaunch:
    """A kernel 'function' that runs the emulated adam.cu with the launch's own arguments, after
    checking their count and types against the kernels' signatures."""

    def __init__(self, lib, name):
        self.lib, self.name = lib, name
        self.opts = [int(x) if x.isdigit() else x == "true" for x in re.findall(r"<(.*)>", name)[0].split(", ")]

    def __call__(self, grid, block, args):
        ptr = lambda a: a.ctypes.data  # noqa: E731
        if self.name.startswith("adam_multi"):
            assert len(args) == 28, len(args)
            *arrays, nchunks, chunk, w, m, v, x, qm, qv, qx = args[:15]
            assert all(isinstance(a, np.ndarray) for a in (*arrays, w, m, v, x, qm, qv, qx))
            assert [a.dtype for a in arrays] == [np.uint64, np.uint64, np.int64, np.int64, np.int64, np.int64]
            assert isinstance(nchunks, np.int64) and isinstance(chunk, np.int64)
            sc = np.asarray(args[15:25], np.float32)
            assert all(isinstance(s, np.float32) for s in args[15:25])
            k0, k1, base = args[25:]
            assert isinstance(k0, np.uint32) and isinstance(k1, np.uint32) and isinstance(base, np.int64)
            # the state arrays' element types are the kernel's (16-bit kinds as 2-byte words, fp8 as bytes;
            # the master by the master mode: float32, int16 remainders, float16 bits); the block scales float32
            mk, vk, wm = self.opts[5], self.opts[6], self.opts[8]
            want = [np.dtype([np.float32, np.int16, np.uint16][wm])] + \
                [np.dtype(np.float32) if k == 0 else np.dtype(np.uint8 if k in P.FP8 else np.uint16)
                 for k in (mk, vk, vk)] + [np.dtype(np.float32)] * 3
            for a, dt in zip((w, m, v, x, qm, qv, qx), want):
                assert a.size <= 1 or a.dtype.itemsize == dt.itemsize, (a.dtype, dt)
            rc = self.lib.emu_adam(*self.opts, grid[0], block[0], *map(ptr, arrays), int(nchunks), int(chunk),
                                   ptr(w), ptr(m), ptr(v), ptr(x), ptr(qm), ptr(qv), ptr(qx), ptr(sc), int(k0),
                                   int(k1), int(base))
        elif self.name.startswith("sgd_multi"):
            assert len(args) == 18, len(args)
            *arrays, nchunks, chunk, w, buf = args[:10]
            assert all(isinstance(a, np.ndarray) for a in (*arrays, w, buf))
            assert [a.dtype for a in arrays] == [np.uint64, np.uint64, np.int64, np.int64, np.int64, np.int64]
            assert isinstance(nchunks, np.int64) and isinstance(chunk, np.int64)
            assert all(isinstance(s, np.float32) for s in args[10:15])
            assert all(isinstance(f, np.int32) for f in args[15:])
            sc = np.asarray(args[10:15], np.float32)
            rc = self.lib.emu_sgd(*self.opts, grid[0], block[0], *map(ptr, arrays), int(nchunks), int(chunk),
                                  ptr(w), ptr(buf), ptr(sc), *map(int, args[15:]))
        else:
            assert len(args) == 7, len(args)
            gp, off, sz, n, nblocks, blk, out = args
            rc = self.lib.emu_norm(self.opts[0], grid[0], block[0], ptr(gp), ptr(off), ptr(sz), int(n), int(nblocks),
                                   int(blk), ptr(out))
        assert rc == 0


def _sizes_and_layout(pdt, align: int = 64):
    """Four tensors (a big one, tiny odd ones) in one flat buffer (tensors start on ``align``-element
    boundaries: 256, the fp8 block, for fp8 state)."""
    from npadam.layout import FlatLayout

    sizes = [70_001, 3, 4099, 64]
    lay = FlatLayout([(str(i), (n,), pdt, 0) for i, n in enumerate(sizes)], align_to=align)
    return sizes, lay, lay.buffers[0].size


def _params_and_master(pdt, sizes, lay):
    """The same random params for every kernel compared (seed 1), their fp32 master, and the
    generator (the grads come from the same stream)."""
    from npadam.layout import storage_dtype

    r = np.random.default_rng(1)
    params = [(r.standard_normal(n) * 2).astype(np.float32).astype(storage_dtype(pdt)) for n in sizes]
    master = None
    if pdt != "float32":
        master = np.zeros(lay.buffers[0].size, np.float32)
        for p, off in zip(params, lay.offsets(0)):
            master[off: off + p.size] = p.astype(np.float32)
    return params, master, r


def _emulated_gpu_kernels(emulator):
    """gpu.GpuKernels with its CuPy calls served by the host stand-in and its launches by the
    emulated kernels (two "SMs")."""
    kern = object.__new__(gpu.GpuKernels)
    kern.cp, kern._functions, kern._sms = _HostCupy, {}, {}
    kern._function = lambda name: _EmulatedLaunch(emulator, name)
    kern._sm_count = lambda: 2
    return kern


@pytest.mark.parametrize("pdt, gdt", [("float32", "float32"), ("bfloat16", "float32"), ("float16", "bfloat16")])
def test_gpu_launch_code_runs_through_the_emulated_kernels(emulator, pdt, gdt):
    """gpu.py's own table building, chunking, caching and launch argument packing (CI has no GPU),
    on a batch that leaves a tensor out (its grad is None), against the reference kernel."""
    from npadam import kernels as K
    from npadam.layout import storage_dtype

    kern = _emulated_gpu_kernels(emulator)
    sizes, lay, size = _sizes_and_layout(pdt)
    results = []
    for kernel in (kern, K.get("reference")):
        params, master, r = _params_and_master(pdt, sizes, lay)
        buf = K.BufferState(size=size, master=master, exp_avg=np.zeros(size, np.float32),
                            exp_avg_sq=np.zeros(size, np.float32), max_exp_avg_sq=np.zeros(size, np.float32),
                            pdtype=pdt)
        norms = []
        for step in (1, 2):
            grads = [(r.standard_normal(n)).astype(np.float32).astype(storage_dtype(gdt)) for n in sizes]
            active = [0, 2, 3] if step == 1 else [0, 1, 2, 3]
            u16 = lambda a: a if a.dtype == np.float32 else a.view(np.uint16)  # noqa: E731
            batch = K.Batch.of_arrays([u16(params[i]) for i in active], [u16(grads[i]) for i in active],
                                      lay.offsets(0)[active], gdt)
            norms.append(np.asarray(kernel.block_sumsq(buf, batch, 4096)).tobytes())
            s = R.host_scalars(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, step=step)
            kernel.adam_step(buf, batch, s, K.Flags(decoupled=True, amsgrad=True, maximize=False))
        results.append((norms, [p.tobytes() for p in params], buf.exp_avg.tobytes(), buf.max_exp_avg_sq.tobytes()))
    assert results[0] == results[1]


@pytest.mark.parametrize("pk, gk", [(0, 0), (0, 1), (1, 1), (2, 0), (2, 2)])
def test_emulated_sgd_kernel_matches_the_reference(emulator, pk, gk):
    """sgd_multi's own code (chunks in a grid-stride loop, an unaligned view, the fp32 master
    select, the first step's buffer) against reference.sgd, bit for bit, in every mode."""
    rng = np.random.default_rng(20 + pk * 3 + gk)
    sizes = [1, 63, 64, 4099, 9_001, 5]
    offsets = np.cumsum([0] + [-(-n // 64) * 64 for n in sizes[:-1]]).astype(np.int64)
    total = int(offsets[-1] + -(-sizes[-1] // 64) * 64)
    chunk = 4096
    for mode, maximize, decay in itertools.product((RS.PLAIN, RS.MOMENTUM, RS.NESTEROV), (False, True), (False, True)):
        raw = [(rng.standard_normal(n + 1) * 2).astype(np.float32) for n in sizes]
        params = [r[:-1].astype(STORE[pk]) for r in raw]
        params[4] = np.concatenate([np.zeros(1, STORE[pk]), params[4]])[1:]  # not 16-byte aligned
        ref_p = [p.astype(np.float32) for p in params]
        master = np.zeros(total, np.float32)
        for p, off in zip(params, offsets):
            master[off: off + p.size] = p.astype(np.float32)
        buf, rbuf = np.zeros(total, np.float32), np.zeros(total, np.float32)
        for step in range(3):
            if step == 2 and pk != 0:  # params written behind the optimizer's back: the params win
                for i, p in enumerate(params):
                    p[::7] = (rng.standard_normal(p[::7].size) * 5).astype(np.float32).astype(STORE[pk])
                    R.current_master(ref_p[i], p)
            grads = [(rng.standard_normal(n) * 3).astype(np.float32).astype(STORE[gk]) for n in sizes]
            s = RS.host_scalars(lr=0.05, momentum=0.9, dampening=0.0 if mode == RS.NESTEROV else 0.25,
                                weight_decay=0.1, grad_scale=0.7)
            sc = np.array([s.scale, s.weight_decay, s.momentum, s.one_minus_dampening, s.neg_lr], np.float32)
            pptr, ct, cs = _tables(params, sizes, chunk)
            gptr, _, _ = _tables(grads, sizes, chunk)
            sz = np.asarray(sizes, np.int64)
            assert emulator.emu_sgd(pk, gk, mode, 3, 128, _ptr(pptr), _ptr(gptr), _ptr(offsets), _ptr(sz), _ptr(ct),
                                    _ptr(cs), ct.size, chunk, _ptr(master), _ptr(buf), _ptr(sc), maximize, decay,
                                    step == 0) == 0
            for i, (g, off) in enumerate(zip(grads, offsets)):
                sl = slice(off, off + sizes[i])
                RS.apply_step(ref_p[i], g, rbuf[sl], s, maximize=maximize, weight_decay=decay, momentum=mode,
                              first=step == 0)
        for i, p in enumerate(params):
            want = ref_p[i] if pk == 0 else R.to_storage(ref_p[i], STORE[pk])
            assert p.tobytes() == want.tobytes(), (i, mode, maximize, decay)
        assert buf.tobytes() == rbuf.tobytes()


@pytest.mark.parametrize("pdt, gdt, mode", [("float32", "float32", RS.NESTEROV), ("bfloat16", "float32", RS.MOMENTUM),
                                            ("float16", "bfloat16", RS.PLAIN)])
def test_gpu_sgd_launch_code_runs_through_the_emulated_kernels(emulator, pdt, gdt, mode):
    """gpu.py's SGD launch (tables, chunks, argument packing, the buffer placeholder without
    momentum) through the emulated sgd_multi, on a batch that leaves a tensor out, against the
    reference kernel."""
    from npadam import kernels as K
    from npadam.layout import storage_dtype

    kern = _emulated_gpu_kernels(emulator)
    sizes, lay, size = _sizes_and_layout(pdt)
    results = []
    for kernel in (kern, K.get("reference")):
        params, master, r = _params_and_master(pdt, sizes, lay)
        buf = K.BufferState(size=size, master=master, exp_avg=np.zeros(size, np.float32), exp_avg_sq=None,
                            max_exp_avg_sq=None, pdtype=pdt)
        for step in (1, 2, 3):
            grads = [(r.standard_normal(n)).astype(np.float32).astype(storage_dtype(gdt)) for n in sizes]
            active = [0, 2, 3] if step == 1 else [0, 1, 2, 3]
            u16 = lambda a: a if a.dtype == np.float32 else a.view(np.uint16)  # noqa: E731
            batch = K.Batch.of_arrays([u16(params[i]) for i in active], [u16(grads[i]) for i in active],
                                      lay.offsets(0)[active], gdt)
            s = RS.host_scalars(lr=1e-2, momentum=0.9, dampening=0.0, weight_decay=0.1, grad_scale=0.5)
            kernel.sgd_step(buf, batch, s, K.SgdFlags(maximize=step == 2, weight_decay=True, momentum=mode,
                                                      first=step == 1))
        results.append(([p.tobytes() for p in params], buf.exp_avg.tobytes()))
    assert results[0] == results[1]


# ---------------------------------------------------------------------- precision-aware state (issue 11)
#
# The contract is reference/precision.py: moments stored as float32 / bfloat16 / float16 (16-bit kinds
# as uint16 bits), widened to float32, stepped by reference.adamw.apply_step, narrowed back (nearest, or
# stochastic for bfloat16 with Threefry-2x32-20 words of the element's flat buffer index); or as fp8
# (float8_e4m3fn / float8_e5m2 uint8 codes with a float32 scale per 256-element block: dequantize,
# step, quantize per block); bfloat16 params with int16 remainders instead of fp32 masters, or with float16
# masters (uint16 bits; the param is the rounding of the float16 master).
# `_contract_step` restates it in NumPy; the CUDA source (adam_math.cuh's adam_update and fp8 block
# functions, adam.cu's adam_multi with its block-wide amax reduction) must equal it bit for bit.

#: every valid (mk, vk, sr, rem, wk) of bfloat16 params (102: fp32 masters, remainders, float16 masters)
PRECISION_OPTIONS = gpu.precision_options(P.BF16)
#: fp32 bit patterns the random data mixes in: zeros, subnormals, the smallest normals, the largest
#: finite values (round to inf in 16 bits), values at bf16 / fp16 ties, fp16's limits, infs, NaNs
SPECIAL_BITS = np.array([0x00000000, 0x80000000, 0x00000001, 0x807FFFFF, 0x00800000, 0x7F7FFFFF, 0xFF7FFFFF,
                         0x7F7F8000, 0x3F808000, 0x3F818000, 0x477FE000, 0x477FF000, 0x33000000, 0x387FC000,
                         0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFFC00001, 0x7FFFFFFF], np.uint32)


def _sprinkle(rng: np.random.Generator, x: np.ndarray, frac: float = 0.05, nan: bool = True) -> np.ndarray:
    """float32 ``x`` with a fraction of its elements replaced by ``SPECIAL_BITS`` (NaNs only the
    canonical one unless ``nan``: float32 state never holds another)."""
    bits = SPECIAL_BITS if nan else SPECIAL_BITS[~np.isnan(SPECIAL_BITS.view(np.float32))]
    bits = np.concatenate([bits, [0x7FC00000]]).astype(np.uint32)
    x = np.array(x, np.float32)
    where = rng.random(x.size) < frac
    x.view(np.uint32)[where] = rng.choice(bits, int(where.sum()))
    return x


def _grad(rng: np.random.Generator, x: np.ndarray, kind: int, frac: float = 0.05) -> np.ndarray:
    """A grad of storage ``kind`` from values ``x`` with a fraction ``frac`` of specials (NaNs with
    payloads among them; fp8 tests use few: one NaN or inf makes its whole block NaN)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return _sprinkle(rng, x, frac).astype(STORE[kind])


def _fp8(*kinds: int) -> bool:
    return any(k in P.FP8 for k in kinds)


def _random_moment(rng: np.random.Generator, n: int, kind: int, scale: float) -> tuple[np.ndarray, np.ndarray | None]:
    """Stored moments of ``kind`` and their fp8 block scales (None for other kinds): float32 values with
    specials (canonical NaN only); 16-bit words that are mostly the narrowed values and partly arbitrary
    bit patterns (NaN payloads, negative NaNs); or fp8 codes of values spanning four decades per block
    (``reference.precision.quantize`` of the whole array: tensors start on block boundaries), with
    blocks of every kind a step meets: all zero (fresh state: codes and scale 0), NaN, inf and subnormal
    scales, and a few arbitrary codes (NaN codes, negative values among them)."""
    x = _sprinkle(rng, np.abs(rng.standard_normal(n) * scale), nan=False)
    if kind == P.F32:
        return x, None
    if kind in P.FP8:
        x = np.abs(rng.standard_normal(n) * scale * 10.0 ** rng.integers(-4, 1, n)).astype(np.float32)
        codes, scales = P.quantize(x, kind)
        special = rng.random(scales.size)
        zero = special < 0.15
        codes.reshape(-1)[np.repeat(zero, P.FP8_BLOCK)[:n]] = 0
        scales[zero] = 0.0
        scales[(special >= 0.15) & (special < 0.2)] = np.nan
        scales[(special >= 0.2) & (special < 0.25)] = np.inf
        scales[(special >= 0.25) & (special < 0.3)] = np.float32(3e-41)
        where = rng.random(n) < 0.01
        codes[where] = rng.integers(0, 256, int(where.sum()), dtype=np.uint8)
        return codes, scales
    with np.errstate(over="ignore"):
        out = P.narrow(x, kind)
    where = rng.random(n) < 0.03
    out[where] = rng.integers(0, 1 << 16, int(where.sum()), dtype=np.uint16)
    return out, None


def _blocks(sl: slice) -> slice:
    """The fp8 blocks of a tensor's state slice (it starts on a block boundary)."""
    return slice(sl.start // P.FP8_BLOCK, -(-sl.stop // P.FP8_BLOCK))


def _contract_step(param: np.ndarray, grad: np.ndarray, master: np.ndarray | None, m: np.ndarray, v: np.ndarray,
                   x: np.ndarray | None, s: R.HostScalars, index: np.ndarray, key: tuple[int, int], *, pk: int,
                   mk: int, vk: int, sr: bool, rem: bool, amsgrad: bool, decoupled: bool = True,
                   maximize: bool = False, scales: tuple = (None, None, None), wk: int = P.F32) -> None:
    """One Adam step of the contract on one tensor, in place, built from reference.precision: the
    value stepped is the param (float32), its current_master (16-bit params; with ``wk`` float16 that of
    the widened float16 master, stored back narrowed, the param then rounded from it), or join_remainder
    (rem, ``master`` holding int16 remainders); moments widened (fp8: dequantized with their block scales,
    ``scales`` = the tensor's blocks of exp_avg's, exp_avg_sq's, max_exp_avg_sq's), reference.adamw.apply_step
    on float32 copies, narrowed with random_words(key, index) (r0: exp_avg, r1: exp_avg_sq and
    max_exp_avg_sq) or quantized (fp8: new codes and scales, in place). ``param``: the param as stored
    (float32, ml_dtypes.bfloat16, float16); ``index``: each element's flat buffer index."""
    if rem:
        p32 = P.join_remainder(param.view(np.uint16), master)
    elif pk == P.F32:
        p32 = param.copy()
    elif wk != P.F32:
        with np.errstate(over="ignore"):
            p32 = R.current_master(P.widen(master, wk).copy(), param)
    else:
        with np.errstate(over="ignore"):
            p32 = R.current_master(master.copy(), param)
    def widen(a: np.ndarray, kind: int, q: np.ndarray | None) -> np.ndarray:
        if kind in P.FP8:
            with np.errstate(all="ignore"):
                return P.dequantize(a, q, kind)
        return P.widen(a, kind).copy()

    mw, vw = widen(m, mk, scales[0]), widen(v, vk, scales[1])
    xw = widen(x, vk, scales[2]) if amsgrad else None
    with np.errstate(all="ignore"):
        R.apply_step(p32, grad, mw, vw, xw, s, decoupled=decoupled, amsgrad=amsgrad, maximize=maximize)
    r0, r1 = P.random_words(key, index)

    def narrow(a: np.ndarray, kind: int, q: np.ndarray | None, value: np.ndarray, r: np.ndarray) -> None:
        if kind in P.FP8:  # stochastic rounding never applies to fp8
            with np.errstate(all="ignore"):
                a[...], q[...] = P.quantize(value, kind)
        else:
            a[...] = P.narrow(value, kind, "stochastic" if sr and kind == P.BF16 else "nearest", r)

    with np.errstate(over="ignore", invalid="ignore"):  # float16 overflows to inf, like the kernels
        narrow(m, mk, scales[0], mw, r0)
        narrow(v, vk, scales[1], vw, r1)
        if amsgrad:
            narrow(x, vk, scales[2], xw, r1)
        if rem:
            hi, low = P.split_remainder(p32)
            param.view(np.uint16)[...] = hi
            master[...] = low
        elif pk == P.F32:
            param[...] = p32
        elif wk != P.F32:
            master[...] = P.narrow(p32, wk)
            param[...] = R.to_storage(P.widen(master, wk), param.dtype)
        else:
            master[...] = p32
            param[...] = R.to_storage(p32, param.dtype)


def _sc(s: R.HostScalars) -> np.ndarray:
    return np.array([s.scale, s.beta1, s.one_minus_beta1, s.beta2, s.one_minus_beta2, s.weight_decay, s.decay,
                     s.step_size, s.bc2_sqrt, s.eps], np.float32)


def _initial_params(rng: np.random.Generator, n: int, pk: int, rem: bool,
                    wk: int = P.F32) -> tuple[np.ndarray, np.ndarray | None]:
    """A param as stored (with specials) and its ``master`` array: None (float32), fp32 masters, int16
    remainders (rem: split_remainder of random masters), or float16 masters (``wk``: the float16 rounding
    of the values the param rounds; where the param is not the rounding of that, beyond float16's range
    or its precision near zero, the param wins at the first step)."""
    p0 = _sprinkle(rng, rng.standard_normal(n) * 2)
    p0[:4] = np.array([0.0, -0.0, 1e-30, 6.1e-5], np.float32)[: min(4, n)]
    if rem:
        hi, low = P.split_remainder(p0)
        return hi.view(STORE[P.BF16]), low
    if pk == P.F32:
        return p0, None
    with np.errstate(over="ignore"):
        param = R.to_storage(R.canonical_nan(p0), STORE[pk])
        return param, (R.canonical_nan(p0) if wk == P.F32 else P.narrow(p0, wk))


@needs_nvcc
def test_host_threefry_is_the_reference_generator(host_lib):
    """adam_math.cuh's threefry2x32 (host build) against reference.precision.threefry2x32 on random keys
    and counters, the Random123 known answer, and random_words on 64-bit indices."""
    rng = np.random.default_rng(11)
    n = 100_000
    k0, k1, c0, c1 = (rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32) for _ in range(4))
    # Random123's kat_vectors (counter, key): zeros, all ones, the digits of pi
    k0[:3], k1[:3] = [0, 0xFFFFFFFF, 0x13198A2E], [0, 0xFFFFFFFF, 0x03707344]
    c0[:3], c1[:3] = [0, 0xFFFFFFFF, 0x243F6A88], [0, 0xFFFFFFFF, 0x85A308D3]
    r0, r1 = np.empty(n, np.uint32), np.empty(n, np.uint32)
    host_lib.threefry_host(n, _ptr(k0), _ptr(k1), _ptr(c0), _ptr(c1), _ptr(r0), _ptr(r1))
    w0, w1 = P.threefry2x32(k0, k1, c0, c1)
    assert r0.tobytes() == w0.tobytes() and r1.tobytes() == w1.tobytes()
    assert [(r0[i], r1[i]) for i in range(3)] == [(0x6B200159, 0x99BA4EFE), (0x1CB996FC, 0xBB002BE7),
                                                  (0xC4923A9C, 0x483DF7A0)]
    key = P.step_key(0xDEADBEEF12345678, 1000, 3)
    index = np.concatenate([np.arange(1000, dtype=np.uint64), rng.integers(0, 1 << 63, 1000, dtype=np.uint64),
                            np.array([(1 << 32) - 1, 1 << 32, (1 << 64) - 1], np.uint64)])
    r0, r1 = np.empty(index.size, np.uint32), np.empty(index.size, np.uint32)
    host_lib.random_words_host(int(key[0]), int(key[1]), index.size, _ptr(index), _ptr(r0), _ptr(r1))
    w0, w1 = P.random_words(key, index)
    assert r0.tobytes() == w0.tobytes() and r1.tobytes() == w1.tobytes()


@needs_nvcc
@pytest.mark.parametrize("kind, sr", [(P.BF16, False), (P.BF16, True), (P.F16, False), (P.F16, True)])
def test_host_moment_storage_is_the_reference_narrow(host_lib, kind, sr):
    """Moment<kind, sr>::narrow / widen: every 16-bit pattern round-trips (NaNs to the kind's positive
    canonical NaN), and random fp32 patterns, ties and specials narrow as reference.precision.narrow
    (float16 rounds to nearest whatever sr says)."""
    rng = np.random.default_rng(12 + kind + 4 * sr)
    rounding = "stochastic" if sr and kind == P.BF16 else "nearest"
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    wide = P.widen(every, kind)
    bits = rng.integers(0, 1 << 32, 300_000, dtype=np.uint64).astype(np.uint32)
    ties = np.arange(0x33000000, 0x47800000, 0x1000, dtype=np.uint64) | (0x8000 if kind == P.BF16 else 0x1000)
    x = np.concatenate([wide, bits.view(np.float32), ties.astype(np.uint32).view(np.float32),
                        SPECIAL_BITS.view(np.float32)])
    r = rng.integers(0, 1 << 32, x.size, dtype=np.uint64).astype(np.uint32)
    r[1 << 16: (1 << 16) + 1000] = 0xFFFF  # the largest offsets: round up from anything above the grid
    out, back = np.empty(x.size, np.uint16), np.empty(x.size, np.float32)
    assert host_lib.moment_host(kind, sr, x.size, _ptr(x), _ptr(r), _ptr(out), _ptr(back)) == 0
    with np.errstate(over="ignore", invalid="ignore"):
        want = P.narrow(x, kind, rounding, r)
    assert out.tobytes() == want.tobytes()
    assert back.tobytes() == P.widen(want, kind).tobytes()
    nan = np.isnan(wide)
    canonical = 0x7FC0 if kind == P.BF16 else 0x7E00
    assert out[: 1 << 16].tobytes() == np.where(nan, np.uint16(canonical), every).tobytes()


@needs_nvcc
def test_host_param_remainders_are_the_reference_split_and_join(host_lib):
    """split_remainder / join_remainder: as reference.precision on random fp32 patterns and specials,
    and the join gives back every master exactly (NaN payloads included)."""
    rng = np.random.default_rng(13)
    bits = np.concatenate([rng.integers(0, 1 << 32, 400_000, dtype=np.uint64).astype(np.uint32), SPECIAL_BITS,
                           np.array([0x7F7FFFFF, 0xFFFF8000, 0x0000FFFF, 0x80008000, 0xFFFFFFFF], np.uint32)])
    master = bits.view(np.float32)
    param, rem, back = np.empty(master.size, np.uint16), np.empty(master.size, np.int16), np.empty_like(master)
    host_lib.remainder_host(master.size, _ptr(master), _ptr(param), _ptr(rem), _ptr(back))
    hi, low = P.split_remainder(master)
    assert param.tobytes() == hi.tobytes() and rem.tobytes() == low.tobytes()
    assert back.tobytes() == master.tobytes() == P.join_remainder(hi, low).tobytes()


def _host_builds_fp8(amsgrad: bool, mk: int, vk: int, sr: bool, rem: bool, wk: int) -> bool:
    """tests/cuda/adam_host.cu's fp8_build: which fp8 options the host library builds for bfloat16
    params and grads (with amsgrad every (mk, vk, sr) with fp32 masters and the fp8 pairs with remainders
    and with float16 masters; without it the fp8 pairs and fp8 beside float32, nearest, fp32 masters)."""
    fp32_masters = not rem and wk == P.F32
    if amsgrad:
        return fp32_masters or (not sr and mk + vk == 7)
    return not sr and fp32_masters and (mk + vk == 7 or P.F32 in (mk, vk))


#: the host library's precision builds (tests/cuda/adam_host.cu: precision_build): bfloat16 params and
#: grads with every option without fp8 and either amsgrad, and ``_host_builds_fp8``; a few other param /
#: grad kinds with amsgrad and options whose moments are of two different kinds (bfloat16 params with
#: remainders and with float16 masters)
HOST_PRECISION_CASES = [(1, 1, amsgrad, *opt) for amsgrad in (False, True) for opt in PRECISION_OPTIONS
                        if not _fp8(*opt[:2]) or _host_builds_fp8(amsgrad, *opt)] + \
    [(pk, gk, True, mk, vk, P.BF16 in (mk, vk), rem, wk) for pk, gk in ((1, 2), (0, 0), (2, 1))
     for mk, vk in [*itertools.permutations((P.F32, P.BF16, P.F16), 2), (P.F8E4M3, P.F8E5M2), (P.F8E5M2, P.F8E4M3)]
     for rem, wk in ([(True, P.F32), (False, P.F16)] if pk == P.BF16 else [(False, P.F32)])]


def _ids(case: tuple) -> str:
    pk, gk, amsgrad, mk, vk, sr, rem, wk = case
    return (f"p{pk}g{gk}{'-ams' if amsgrad else ''}-m{mk}v{vk}{'-sr' if sr else ''}{'-rem' if rem else ''}"
            f"{'-w16' if wk == P.F16 else ''}")


@needs_nvcc
@pytest.mark.parametrize("case", HOST_PRECISION_CASES, ids=_ids)
def test_host_build_of_precision_element_math_is_the_contract(host_lib, case):
    """adam_update (the kernel's element) with precision options, built for the host, against
    ``_contract_step`` over three steps of random data with NaN, inf, subnormal and extreme values in
    params, grads and the stored state, a 64-bit random counter base and, for 16-bit params, stale
    masters (params written behind the optimizer's back). fp8 moments: 3,000 elements are 11 full
    blocks and a partial one, stepped with the kernel's block functions (fp8_amax, fp8_scales,
    fp8_store) serially; the stored blocks include zero, NaN, inf and subnormal scales, and a few grads
    are NaN or inf (their blocks turn NaN). float16 masters (``wk``): masters beyond float16's range and
    params that are not their master's rounding at the start, as well as later."""
    pk, gk, amsgrad, mk, vk, sr, rem, wk = case
    rng = np.random.default_rng(zlib.crc32(_ids(case).encode()))
    n = 3_000
    base = (1 << 33) + 12_345  # the counter's high word is not zero
    index = (base + np.arange(n)).astype(np.uint64)
    param, master = _initial_params(rng, n, pk, rem, wk)
    (m, qm), (v, qv) = _random_moment(rng, n, mk, 0.1), _random_moment(rng, n, vk, 0.01)
    x, qx = _random_moment(rng, n, vk, 0.02) if amsgrad else (np.zeros(1, np.float32), None)
    fp8 = _fp8(mk, vk)
    zero = slice(2 * P.FP8_BLOCK, 3 * P.FP8_BLOCK)  # fp8: a block that stays zero (fresh state, zero grads)
    if fp8:
        for a in (m, v, x) if amsgrad else (m, v):
            a[zero] = 0
        for q in (qm, qv, qx):
            if q is not None:
                q[2] = 0.0
    ref = [a.copy() if a is not None else None for a in (param, master, m, v, x, qm, qv, qx)]
    for step in range(1, 4):
        if step == 3 and pk != P.F32 and not rem:
            param[::7] = (rng.standard_normal(param[::7].size) * 5).astype(np.float32).astype(STORE[pk])
            ref[0][::7] = param[::7]
        g = _grad(rng, rng.standard_normal(n) * 10.0 ** rng.integers(-6, 3, n), gk, 0.0005 if fp8 else 0.05)
        if fp8:  # block 2 stays zero; a NaN grad makes block 5 NaN for good (a NaN scale dequantizes to NaN)
            g[zero] = 0
            g[5 * P.FP8_BLOCK + 7] = np.nan
        s = R.host_scalars(lr=3e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, step=step, grad_scale=0.5)
        key = P.step_key(0x1234_5678_9ABC_DEF0, step, 2)
        rc = host_lib.adam_host(pk, gk, amsgrad, True, False, mk, vk, sr, gpu.master_mode(pk, rem, wk), n, _ptr(param),
                                _ptr(g), _ptr(master), _ptr(m), _ptr(v), _ptr(x), _ptr(qm), _ptr(qv), _ptr(qx),
                                _ptr(_sc(s)), int(key[0]), int(key[1]), base)
        assert rc == 0, "not built (tests/cuda/adam_host.cu: precision_build)"
        _contract_step(ref[0], g, ref[1], ref[2], ref[3], ref[4] if amsgrad else None, s, index, key, pk=pk, mk=mk,
                       vk=vk, sr=sr, rem=rem, amsgrad=amsgrad, scales=tuple(ref[5:]), wk=wk)
        for name, got, want in zip(("param", "master", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "exp_avg scales",
                                    "exp_avg_sq scales", "max_exp_avg_sq scales"), (param, master, m, v, x, qm, qv, qx),
                                   ref):
            if want is not None:
                assert got.tobytes() == want.tobytes(), (name, step)
    for q in (qm, qv):  # the data reach the cases the test is for: finite, zero and NaN blocks
        assert q is None or (np.isfinite(q).sum() > 2 and q[2] == 0 and np.isnan(q).any())


def _stored_state(rng: np.random.Generator, total: int, mk: int, vk: int, amsgrad: bool) -> list[np.ndarray | None]:
    """exp_avg, exp_avg_sq, max_exp_avg_sq of a buffer and their fp8 block scales (None unless fp8)
    (random stored values; a 1-element placeholder for max_exp_avg_sq without amsgrad, as the runtime
    passes)."""
    (m, qm), (v, qv) = _random_moment(rng, total, mk, 0.1), _random_moment(rng, total, vk, 0.01)
    x, qx = _random_moment(rng, total, vk, 0.02) if amsgrad else (np.zeros(1, np.float32), None)
    return [m, v, x, qm, qv, qx]


def _emulator_builds_fp8(mk: int, vk: int, sr: bool, rem: bool, wk: int) -> bool:
    """tests/cuda/emulate.cpp's fp8 builds for bfloat16 params and grads with amsgrad: every pair of moment
    kinds with an fp8 one, stochastic with a bfloat16 moment, remainders when the kinds' sum is odd, fp32
    masters otherwise; and (e4m3, e5m2) with float16 masters."""
    if wk == P.F16:
        return (mk, vk, sr) == (P.F8E4M3, P.F8E5M2, False)
    return sr == (P.BF16 in (mk, vk)) and rem == ((mk + vk) % 2 == 1)


#: the emulator's precision builds (tests/cuda/emulate.cpp: precision_build): bfloat16 params and grads
#: with amsgrad, every option without fp8 (fp32 masters, remainders, float16 masters) and
#: ``_emulator_builds_fp8``; float32 params and grads without amsgrad
EMU_PRECISION_CASES = [(1, 1, True, *opt) for opt in PRECISION_OPTIONS
                       if not _fp8(*opt[:2]) or _emulator_builds_fp8(*opt)] + \
    [(0, 0, False, *opt, P.F32) for opt in ((P.BF16, P.BF16, True, False), (P.F32, P.F16, False, False),
                                            (P.F16, P.F32, False, False), (P.F8E4M3, P.F8E5M2, False, False),
                                            (P.F8E5M2, P.F32, False, False))]


@pytest.mark.parametrize("case", EMU_PRECISION_CASES, ids=_ids)
def test_emulated_precision_kernels_match_the_contract(emulator, case):
    """adam_multi with precision options (multi-tensor chunks, a grid smaller than the chunk count, an
    unaligned view, float32 params where the float4 path would be) on a piece of a buffer whose state
    starts at flat index `base` (past 2**32: the random counter's high word), against ``_contract_step``.
    fp8 moments: tensors on 256-element blocks, partial last blocks, blocks of 96 or 256 threads (a
    thread then updates 2 or 3 elements of an fp8 block, or 1), real threads meeting at each block's
    __syncthreads, the amax buffers rotating across chunks, zero / NaN / inf blocks. 16-bit params with
    fp32 or float16 masters: params written behind the optimizer's back before the second step."""
    pk, gk, amsgrad, mk, vk, sr, rem, wk = case
    rng = np.random.default_rng(zlib.crc32(_ids(case).encode()))
    fp8 = _fp8(mk, vk)
    align, threads = (P.FP8_BLOCK, 96 if pk == P.BF16 else 256) if fp8 else (64, 128)
    sizes = [1, 63, 64, 4099, 9_001, 5]
    offsets = np.cumsum([0] + [-(-n // align) * align for n in sizes[:-1]]).astype(np.int64)
    total = int(offsets[-1] + -(-sizes[-1] // align) * align)
    base, chunk = 3 * (1 << 31) + 4096, 4096
    params, masters = zip(*(_initial_params(rng, n + 1, pk, rem, wk) for n in sizes))
    params = [p[1:] if i == 4 else p[:-1] for i, p in enumerate(params)]  # tensor 4: not 16-byte aligned
    master = None
    if pk != P.F32:
        master = np.zeros(total, masters[0].dtype)
        for mst, off, n, i in zip(masters, offsets, sizes, itertools.count()):
            master[off: off + n] = mst[1:] if i == 4 else mst[:-1]
    state = _stored_state(rng, total, mk, vk, amsgrad)
    ref_p, ref_w = [p.copy() for p in params], None if master is None else master.copy()
    ref = [None if a is None else a.copy() for a in state]
    sz = np.asarray(sizes, np.int64)
    for step in (1, 2):
        if step == 2 and pk != P.F32 and not rem:  # params written behind the optimizer's back: the params win
            for p, rp in zip(params, ref_p):
                p[::7] = (rng.standard_normal(p[::7].size) * 5).astype(np.float32).astype(STORE[pk])
                rp[::7] = p[::7]
        grads = [_grad(rng, rng.standard_normal(n) * 3, gk, 0.0003 if fp8 else 0.05) for n in sizes]
        s = R.host_scalars(lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, step=step, grad_scale=0.7)
        key = P.step_key(99, step, 1)
        pptr, ct, cs = _tables(params, sizes, chunk)
        gptr, _, _ = _tables(grads, sizes, chunk)
        wm = gpu.master_mode(pk, rem, wk)
        assert emulator.emu_adam(pk, gk, amsgrad, True, False, mk, vk, sr, wm, 3, threads, _ptr(pptr), _ptr(gptr),
                                 _ptr(offsets), _ptr(sz), _ptr(ct), _ptr(cs), ct.size, chunk, _ptr(master),
                                 *map(_ptr, state), _ptr(_sc(s)), int(key[0]), int(key[1]), base) == 0
        for i, (g, off, n) in enumerate(zip(grads, offsets, sizes)):
            sl = slice(off, off + n)
            rm, rv, rx, qm, qv, qx = ref
            _contract_step(ref_p[i], g, None if ref_w is None else ref_w[sl], rm[sl], rv[sl],
                           rx[sl] if amsgrad else None, s, (base + off + np.arange(n)).astype(np.uint64), key,
                           pk=pk, mk=mk, vk=vk, sr=sr, rem=rem, amsgrad=amsgrad,
                           scales=tuple(None if q is None else q[_blocks(sl)] for q in (qm, qv, qx)), wk=wk)
    for i, p in enumerate(params):
        assert p.tobytes() == ref_p[i].tobytes(), i
    names = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "exp_avg scales", "exp_avg_sq scales", "max_exp_avg_sq scales")
    for name, got, want in (("master", master, ref_w), *zip(names, state, ref)):
        assert got is None or got.tobytes() == want.tobytes(), name


@pytest.mark.parametrize("pdt, gdt, amsgrad, opt", [
    ("bfloat16", "bfloat16", True, (P.BF16, P.BF16, True, True, P.F32)),
    ("bfloat16", "bfloat16", True, (P.F32, P.BF16, True, False, P.F32)),
    ("bfloat16", "bfloat16", True, (P.F16, P.F32, False, True, P.F32)),
    ("float32", "float32", False, (P.BF16, P.BF16, True, False, P.F32)),
    ("bfloat16", "bfloat16", True, (P.F8E4M3, P.F8E5M2, False, True, P.F32)),
    ("bfloat16", "bfloat16", True, (P.BF16, P.F8E4M3, True, False, P.F32)),
    ("float32", "float32", False, (P.F8E5M2, P.F32, False, False, P.F32)),
    ("bfloat16", "bfloat16", True, (P.F32, P.BF16, True, False, P.F16)),
    ("bfloat16", "bfloat16", True, (P.F8E4M3, P.F8E5M2, False, False, P.F16)),
], ids=["bf16-sr-rem", "bf16-m32-vbf16-sr", "bf16-m16-rem", "fp32-bf16-moments-sr", "bf16-e4m3-e5m2-rem",
        "bf16-mbf16-ve4m3-sr", "fp32-me5m2", "bf16-w16-m32-vbf16-sr", "bf16-w16-e4m3-e5m2"])
def test_gpu_precision_launch_code_runs_through_the_emulated_kernels(emulator, pdt, gdt, amsgrad, opt, monkeypatch):
    """gpu.GpuKernels.adam_step's precision options through the emulated adam_multi: it reads
    ``m_kind``, ``v_kind``, ``stochastic``, ``remainders``, ``w_kind``, ``base`` and the fp8 block scales
    ``m_scale``, ``v_scale``, ``vmax_scale`` from the buffer and ``key`` from the flags (set as
    attributes here, so this runs before and after npadam.kernels declares them), and a buffer stepped
    in pieces (``sub_batch`` with each piece's state and ``base`` = its start, as the offload pipeline
    streams it; fp8: pieces of whole blocks) is bit-identical to the whole buffer, to
    ``_contract_step`` and to npadam.kernels' reference kernel. fp8 launches 64 threads a block here
    (the emulator's threads are real ones and meet at every fp8 block; THREADS = 256 runs in
    test_emulated_precision_kernels_match_the_contract)."""
    from types import SimpleNamespace

    from npadam import kernels as K
    from npadam.layout import KINDS

    mk, vk, sr, rem, wk = opt
    pk, gk = KINDS[pdt], KINDS[gdt]
    fp8 = _fp8(mk, vk)
    if fp8:
        monkeypatch.setattr(gpu, "THREADS", 64)
    kern = _emulated_gpu_kernels(emulator)
    sizes, lay, size = _sizes_and_layout(pdt, P.FP8_BLOCK if fp8 else 64)
    offsets = lay.offsets(0)
    rng = np.random.default_rng(21)
    init = [_initial_params(rng, n, pk, rem, wk) for n in sizes]
    master0 = None
    if pk != P.F32:
        master0 = np.zeros(size, init[0][1].dtype)
        for (_, mst), off in zip(init, offsets):
            master0[off: off + mst.size] = mst
    state0 = _stored_state(rng, size, mk, vk, amsgrad)
    if not amsgrad:
        state0[2] = None
    steps = [[_grad(rng, rng.standard_normal(n), gk, 0.0003 if fp8 else 0.05) for n in sizes] for _ in range(2)]
    u16 = lambda a: a if a.dtype == np.float32 else a.view(np.uint16)  # noqa: E731
    scalars = [R.host_scalars(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, step=k) for k in (1, 2)]
    keys = [P.step_key(5, k, 0) for k in (1, 2)]

    def fresh() -> tuple[list[np.ndarray], list[np.ndarray | None]]:
        """Copies of the params and of (master, exp_avg, exp_avg_sq, max_exp_avg_sq, their fp8 scales)."""
        return [p.copy() for p, _ in init], [None if a is None else a.copy() for a in (master0, *state0)]

    def snapshot(params: list[np.ndarray], arrays: list[np.ndarray | None]) -> list[bytes | None]:
        return [p.tobytes() for p in params] + [None if a is None else a.tobytes() for a in arrays]

    cut = (1024, 70_656) if fp8 else (1000, 70_100)  # the second cuts tensor 2 (fp8: on a block boundary)
    results = {}
    for name, cuts in {"whole": [(0, size)], "pieces": [(0, cut[0]), cut, (cut[1], size)]}.items():
        params, arrays = fresh()
        for grads, s, key in zip(steps, scalars, keys):
            batch = K.Batch.of_arrays([u16(p) for p in params], [u16(g) for g in grads], offsets, gdt)
            flags = SimpleNamespace(decoupled=True, amsgrad=amsgrad, maximize=False, key=key)
            for start, stop in cuts:
                w, m, v, x = (None if a is None else a[start:stop] for a in arrays[:4])
                buf = K.BufferState(size=stop - start, master=w, exp_avg=m, exp_avg_sq=v, max_exp_avg_sq=x,
                                    pdtype=pdt)
                buf.m_kind, buf.v_kind, buf.stochastic, buf.remainders, buf.base = mk, vk, sr, rem, start
                buf.w_kind = wk
                buf.m_scale, buf.v_scale, buf.vmax_scale = (None if q is None else q[_blocks(slice(start, stop))]
                                                            for q in arrays[4:])
                kern.adam_step(buf, K.sub_batch(batch, pdt, start, stop), s, flags)
        results[name] = snapshot(params, arrays)
    params, arrays = fresh()
    w, m, v, x = arrays[:4]
    for grads, s, key in zip(steps, scalars, keys):
        for p, g, off in zip(params, grads, offsets):
            sl = slice(off, off + p.size)
            _contract_step(p, g, None if w is None else w[sl], m[sl], v[sl], x[sl] if amsgrad else None, s,
                           (off + np.arange(p.size)).astype(np.uint64), key, pk=pk, mk=mk, vk=vk, sr=sr, rem=rem,
                           amsgrad=amsgrad, scales=tuple(None if q is None else q[_blocks(sl)] for q in arrays[4:]),
                           wk=wk)
    want = snapshot(params, arrays)
    assert results["whole"] == want
    assert results["pieces"] == want
    if "m_kind" in getattr(K.BufferState, "__dataclass_fields__", {}) and "key" in K.Flags.__dataclass_fields__:
        # npadam.kernels has the precision fields: its reference kernel is the same contract
        params, arrays = fresh()
        w, m, v, x, qm, qv, qx = arrays
        buf = K.BufferState(size=size, master=w, exp_avg=m, exp_avg_sq=v, max_exp_avg_sq=x, pdtype=pdt, m_kind=mk,
                            v_kind=vk, stochastic=sr, remainders=rem, w_kind=wk)
        if fp8:
            buf.m_scale, buf.v_scale, buf.vmax_scale = qm, qv, qx
        for grads, s, key in zip(steps, scalars, keys):
            batch = K.Batch.of_arrays([u16(p) for p in params], [u16(g) for g in grads], offsets, gdt)
            with np.errstate(all="ignore"):
                K.get("reference").adam_step(buf, batch, s, K.Flags(decoupled=True, amsgrad=amsgrad, key=key))
        assert snapshot(params, arrays) == want


def test_all_names_cover_every_precision_option():
    """all_names() (the compile checks' subset) holds every value of every template parameter, every
    valid (mk, vk, sr, rem) with fp32 masters with amsgrad, those without fp8 moments also without it,
    each fp8 pair of moment kinds without it, float16 masters with every (mk, vk, sr) without fp8 moments
    and an fp8 pair, each name once, and no invalid combination; adam_name's master mode and errors."""
    opts = [re.findall(r"<(.*)>", n)[0].split(", ") for n in gpu.all_names() if n.startswith("adam_multi")]
    assert all(len(o) == 9 for o in opts) and len({tuple(o) for o in opts}) == len(opts)
    parsed = [(int(p), int(g), a == "true", d == "true", x == "true", int(mk), int(vk), sr == "true", int(wm))
              for p, g, a, d, x, mk, vk, sr, wm in opts]
    assert {o[:5] for o in parsed} == set(itertools.product(range(3), range(3), *[(False, True)] * 3))
    built = {(o[2], *o[5:]) for o in parsed}

    def mode(opt: tuple) -> tuple:  # (mk, vk, sr, rem, wk) -> (mk, vk, sr, master mode)
        return (*opt[:3], gpu.master_mode(P.BF16, *opt[3:]))

    fp32_masters = [opt for opt in PRECISION_OPTIONS if opt[4] == P.F32]
    fp16_masters = [opt for opt in PRECISION_OPTIONS if opt[4] == P.F16]
    assert {(True, *mode(opt)) for opt in fp32_masters} <= built
    assert {(False, *mode(opt)) for opt in fp32_masters if not _fp8(*opt[:2])} <= built
    assert {(True, *mode(opt)) for opt in fp16_masters if not _fp8(*opt[:2])} <= built
    assert {(mk, vk) for a, mk, vk, sr, wm in built if wm == gpu.MASTER_F16 and _fp8(mk, vk)} == {(P.F8E4M3, P.F8E5M2)}
    assert {wm for *_, wm in built} == {gpu.MASTER_F32, gpu.MASTER_REM, gpu.MASTER_F16}
    assert {(mk, vk) for a, mk, vk, *_ in built if not a} == set(itertools.product(gpu.MOMENT_KINDS, repeat=2))
    assert {o[0] for o in parsed if _fp8(*o[5:7])} == {0, 1, 2}  # fp8 beside every param kind
    assert all(not o[8] or o[0] == P.BF16 for o in parsed)  # remainders, float16 masters: bfloat16 params only
    assert all(not o[7] or P.BF16 in o[5:7] for o in parsed)  # stochastic: a bfloat16 moment
    assert len(PRECISION_OPTIONS) == 3 * 34 and len(fp16_masters) == 34 and len(gpu.precision_options(P.F32)) == 34
    assert gpu.MOMENT_KINDS == tuple(P.KIND_NAMES) and gpu.FP8 == P.FP8 and gpu.FP8_BLOCK == P.FP8_BLOCK
    assert gpu.MASTER_KINDS == (P.F32, P.F16)
    header = (KERNEL_DIR / "adam_math.cuh").read_text()
    assert "enum MasterMode { MASTER_F32 = %d, MASTER_REM = %d, MASTER_F16 = %d };" % (
        gpu.MASTER_F32, gpu.MASTER_REM, gpu.MASTER_F16) in header
    for pk in (P.F32, P.F16):
        with pytest.raises(ValueError, match="remainders need bfloat16 params"):
            gpu.adam_name(pk, 0, False, True, False, rem=True)
        with pytest.raises(ValueError, match="float16 masters need bfloat16 params"):
            gpu.adam_name(pk, 0, False, True, False, wk=P.F16)
    with pytest.raises(ValueError, match="exclude each other"):
        gpu.adam_name(1, 1, False, True, False, rem=True, wk=P.F16)
    with pytest.raises(ValueError, match="master storage kinds"):
        gpu.adam_name(1, 1, False, True, False, wk=P.BF16)
    with pytest.raises(ValueError, match="param and grad"):
        gpu.adam_name(3, 1, False, True, False)
    with pytest.raises(ValueError, match="moment"):
        gpu.adam_name(1, 1, False, True, False, mk=5)
    assert gpu.adam_name(1, 0, True, False, True, 2, 1, True, True) == \
        "adam_multi<1, 0, true, false, true, 2, 1, true, 1>"
    assert gpu.adam_name(1, 2, False, True, False, 0, 1, wk=P.F16) == \
        "adam_multi<1, 2, false, true, false, 0, 1, false, 2>"
    assert gpu.adam_name(0, 0, True, True, False, 3, 4) == "adam_multi<0, 0, true, true, false, 3, 4, false, 0>"


# ---------------------------------------------------------------------- fp8 moments (issue 11)

def _fp8_values(kind: int) -> tuple[np.ndarray, np.ndarray]:
    """Every code of an fp8 kind and its float32 value (ml_dtypes)."""
    codes = np.arange(256, dtype=np.uint8)
    return codes, codes.view(P.fp8_dtype(kind)).astype(np.float32)


@needs_nvcc
@pytest.mark.parametrize("kind", P.FP8, ids=["e4m3fn", "e5m2"])
def test_host_fp8_codes_are_ml_dtypes(host_lib, kind):
    """fp8_decode of all 256 codes and fp8_encode of every fp8 value, every midpoint between neighbours
    (ties to even) and the float32 values next to them, subnormal and tiny float32 values, random float32
    patterns within [-FP8_MAX, FP8_MAX] and NaNs (any payload, either sign: FP8_NAN) are ml_dtypes'."""
    rng = np.random.default_rng(40 + kind)
    codes, values = _fp8_values(kind)
    fmax = P.FP8_MAX[kind]
    finite = np.unique(values[np.isfinite(values)])  # ascending, -0 and 0 once
    mid = ((finite[:-1].astype(np.float64) + finite[1:]) / 2).astype(np.float32)  # exact in float32
    assert (mid.astype(np.float64) == (finite[:-1].astype(np.float64) + finite[1:]) / 2).all()
    near = np.concatenate([np.nextafter(mid, np.float32(np.inf)), np.nextafter(mid, np.float32(-np.inf))])
    bits = rng.integers(0, 1 << 32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    tiny = np.concatenate([np.array([0.0, -0.0, 1e-45, -1e-45, 1e-38], np.float32),
                           (rng.standard_normal(20_000) * finite[finite > 0][0] * 4).astype(np.float32)])
    nans = (rng.integers(0x7F800001, 0x80000000, 1000, dtype=np.uint64).astype(np.uint32)
            | (rng.integers(0, 2, 1000).astype(np.uint32) << 31)).view(np.float32)
    x = np.concatenate([values[np.isfinite(values)], mid, near, bits[np.abs(bits) <= fmax], tiny, nans])
    x = x[np.isnan(x) | (np.abs(x) <= fmax)]
    out, back = np.empty(x.size, np.uint8), np.empty(256, np.float32)
    assert host_lib.fp8_host(kind, x.size, _ptr(x), _ptr(out), 256, _ptr(codes), _ptr(back)) == 0
    assert back.tobytes() == values.tobytes()  # NaN codes decode to +-0x7FC00000, as ml_dtypes
    want = x.astype(P.fp8_dtype(kind)).view(np.uint8)
    want = np.where(np.isnan(x), P.FP8_NAN[kind], want)
    bad = np.flatnonzero(out != want)
    assert bad.size == 0, [(hex(x.view(np.uint32)[i]), hex(out[i]), hex(want[i])) for i in bad[:5]]


@needs_nvcc
@pytest.mark.parametrize("kind", P.FP8, ids=["e4m3fn", "e5m2"])
def test_host_fp8_block_quantization_is_the_reference(host_lib, kind):
    """The kernel's block math (max of abs_bits, fp8_scale, fp8_quantize) is reference.precision.quantize,
    codes and scales bit for bit: ordinary blocks spanning many decades, all-zero blocks (scale 0, -0
    kept), blocks with a NaN (NaN scale, every code FP8_NAN) or an inf (inf scale: the inf's code NaN,
    the rest +-0), subnormal blocks whose scale is subnormal or underflows to 0, blocks near the float32
    maximum, and partial last blocks of several lengths."""
    rng = np.random.default_rng(50 + kind)
    blk = P.FP8_BLOCK

    def block(what: str) -> np.ndarray:
        x = (rng.standard_normal(blk) * 10.0 ** rng.integers(-8, 3, blk)).astype(np.float32)
        if what == "zero":
            return np.where(rng.random(blk) < 0.5, np.float32(0.0), np.float32(-0.0)).astype(np.float32)
        if what in ("nan", "inf", "-inf"):
            x[rng.integers(blk)] = np.float32(what)
        if what == "subnormal":
            x = (x / np.float32(1e30) / np.float32(1e10)).astype(np.float32)
        if what == "underflow":  # amax / FP8_MAX rounds to 0: the values are taken as they are
            x = np.where(rng.random(blk) < 0.5, np.float32(1e-45), np.float32(-1e-45)).astype(np.float32)
        if what == "huge":
            x = (x / np.abs(x).max() * np.float32(3.4e38)).astype(np.float32)
        return x

    kinds = ["plain", "zero", "nan", "inf", "-inf", "subnormal", "underflow", "huge"]
    x = np.concatenate([block(k) for k in rng.permutation(kinds * 3)])
    for n in (1, 255, 256, 257, x.size - 100, x.size):
        codes, scales = np.empty(n, np.uint8), np.empty(-(-n // blk), np.float32)
        assert host_lib.quantize_host(kind, n, _ptr(x), _ptr(codes), _ptr(scales)) == 0
        with np.errstate(all="ignore"):
            want_codes, want_scales = P.quantize(x[:n], kind)
        assert codes.tobytes() == want_codes.tobytes(), n
        assert scales.tobytes() == want_scales.tobytes(), n
    assert np.isnan(scales).any() and np.isinf(scales).any() and (scales == 0).any()


def _adam_entries(ptx: str) -> dict[tuple[int, ...], str]:
    """The adam_multi PTX bodies by their 9 template arguments (from the mangled names)."""
    out = {}
    for name, body in _entries(ptx).items():
        m = re.match(r"_Z10adam_multiI" + r"L[ib](\d+)E" * 9, name)
        if m:
            out[tuple(int(a) for a in m.groups())] = body
    return out


@needs_nvcc
def test_fp8_kernels_reduce_each_block_across_the_thread_block(ptx):
    """Adam kernels with an fp8 moment reduce each block's amax with the warp instruction (sm_80+) and
    shared-memory atomics, and synchronize the thread block (once at the start, once per fp8 block);
    the other Adam kernels have none of it (and the all-float32 ones keep their float4 path)."""
    entries = _adam_entries(ptx)
    assert len(entries) == sum(n.startswith("adam_multi") for n in gpu.all_names())
    for opts, body in entries.items():
        mk, vk, amsgrad = opts[5], opts[6], opts[2]
        reductions = (mk in P.FP8) + (vk in P.FP8) * (2 if amsgrad else 1)
        assert body.count("redux.sync.max.u32") == reductions, opts
        assert len(re.findall(r"atom\.shared(?:\.\w+)*\.max\.u32", body)) == reductions, opts
        assert body.count("bar.sync") == (2 if reductions else 0), opts
        if opts[:2] == (0, 0) and opts[5:] == (0, 0, 0, 0) and not amsgrad:
            assert "ld.global.v4.f32" in body or "ld.global.nc.v4.f32" in body, opts


@needs_nvcc
def test_fp8_warp_reduction_falls_back_to_shuffles_before_sm80(tmp_path):
    """On devices older than sm_80 (no redux.sync) warp_max is a butterfly of shuffles."""
    name = gpu.adam_name(1, 1, True, True, False, P.F8E4M3, P.F8E5M2, False, True)
    (tmp_path / "one.cu").write_text(_instantiations([name]))
    out = subprocess.run([NVCC, "-ptx", "-arch=sm_75", "-std=c++17", "-fmad=false", "-prec-div=true",
                          "-prec-sqrt=true", "-ftz=false", "-diag-suppress", "550", "-I", str(KERNEL_DIR),
                          str(tmp_path / "one.cu"), "-o", str(tmp_path / "one.ptx")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    body = (tmp_path / "one.ptx").read_text()
    assert "redux" not in body and body.count("shfl.sync.bfly.b32") == 3 * 5
    assert "fma." not in body and ".ftz" not in body


def test_gpu_fp8_launch_checks_what_the_kernel_assumes():
    """GpuKernels.adam_step refuses fp8 state the kernel would step wrongly, naming the value: state not
    starting on a block (base), a tensor not starting on one, a missing or short or non-float32 scale
    array; with everything in place it launches (here: a stand-in that records the launch)."""
    from types import SimpleNamespace

    from npadam import kernels as K

    launched = []
    kern = object.__new__(gpu.GpuKernels)
    kern.cp, kern._functions, kern._sms = _HostCupy, {}, {}
    kern._function = lambda name: (lambda grid, block, args: launched.append((name, block, len(args))))
    kern._sm_count = lambda: 2
    p, g = np.zeros(300, np.float32), np.ones(300, np.float32)
    s = R.host_scalars(lr=1e-3, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.0, step=1)
    flags = SimpleNamespace(decoupled=True, amsgrad=True, maximize=False, key=(1, 2))

    def step(offset: int = 256, base: int = 0, **scales) -> None:
        size = 768
        buf = K.BufferState(size=size, master=None, exp_avg=np.zeros(size, np.uint8),
                            exp_avg_sq=np.zeros(size, np.uint8), max_exp_avg_sq=np.zeros(size, np.uint8))
        buf.m_kind, buf.v_kind, buf.base = P.F8E4M3, P.F8E5M2, base
        buf.m_scale, buf.v_scale, buf.vmax_scale = (np.zeros(3, np.float32) for _ in range(3))
        for key, val in scales.items():
            setattr(buf, key, val)
        kern.adam_step(buf, K.Batch.of_arrays([p], [g], np.array([offset])), s, flags)

    with pytest.raises(ValueError, match="base 128"):
        step(base=128)
    with pytest.raises(ValueError, match="offset 320"):
        step(offset=320)
    with pytest.raises(ValueError, match="vmax_scale is None"):
        step(vmax_scale=None)
    with pytest.raises(ValueError, match="at least 3 scales"):
        step(m_scale=np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="float64"):
        step(v_scale=np.zeros(3, np.float64))
    assert not launched
    step(base=1 << 40)
    assert launched == [(gpu.adam_name(0, 0, True, True, False, P.F8E4M3, P.F8E5M2), (gpu.THREADS,), 28)]
    # the buffer's tail in another tier (offload): scales for the blocks on the GPU only, which the batch covers
    launched.clear()
    step(offset=0, **{k: np.zeros(2, np.float32) for k in ("m_scale", "v_scale", "vmax_scale")})
    assert len(launched) == 1
    assert gpu.THREADS % 32 == 0 and gpu.CHUNK % gpu.FP8_BLOCK == 0
    shift = re.search(r"constexpr int FP8_SHIFT = (\d+);", (KERNEL_DIR / "adam_math.cuh").read_text()).group(1)
    assert 1 << int(shift) == gpu.FP8_BLOCK == P.FP8_BLOCK


def test_gpu_master_launch_checks_what_the_kernel_assumes():
    """GpuKernels.adam_step reads ``w_kind`` and ``remainders`` of the buffer: float16 masters and
    remainders need bfloat16 params and a 2-byte master array (named in the error, nothing launched);
    with them it launches the kernel of master mode 2 or 1 (here: a stand-in that records the launch)."""
    from npadam import kernels as K

    launched = []
    kern = object.__new__(gpu.GpuKernels)
    kern.cp, kern._functions, kern._sms = _HostCupy, {}, {}
    kern._function = lambda name: (lambda grid, block, args: launched.append(name))
    kern._sm_count = lambda: 2
    g = np.ones(300, np.float32)
    s = R.host_scalars(lr=1e-3, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.0, step=1)

    def step(pdtype: str, master: np.ndarray | None, **kinds) -> None:
        p = np.zeros(300, np.float32 if pdtype == "float32" else np.uint16)
        buf = K.BufferState(size=320, master=master, exp_avg=np.zeros(320, np.float32),
                            exp_avg_sq=np.zeros(320, np.float32), max_exp_avg_sq=None, pdtype=pdtype, **kinds)
        kern.adam_step(buf, K.Batch.of_arrays([p], [g], np.array([0])), s, K.Flags())

    with pytest.raises(ValueError, match="float16 masters need bfloat16 params.*float16 params"):
        step("float16", np.zeros(320, np.uint16), w_kind=P.F16)
    with pytest.raises(ValueError, match="uint16 array of float16 masters.*float32"):
        step("bfloat16", np.zeros(320, np.float32), w_kind=P.F16)
    with pytest.raises(ValueError, match="int16 remainder array.*None"):
        step("bfloat16", None, remainders=True)
    assert not launched
    step("bfloat16", np.zeros(320, np.uint16), w_kind=P.F16)
    step("bfloat16", np.zeros(320, np.int16), remainders=True)
    step("bfloat16", np.zeros(320, np.float32))
    assert launched == [gpu.adam_name(1, 0, False, True, False, wk=P.F16),
                        gpu.adam_name(1, 0, False, True, False, rem=True), gpu.adam_name(1, 0, False, True, False)]
    assert [n[-2] for n in launched] == ["2", "1", "0"]


def test_emulated_fp8_kernel_refuses_chunks_off_the_block(emulator):
    """emu_adam's guard of adam_multi's requirement (chunks that are whole fp8 blocks)."""
    z = np.zeros(8, np.int64)
    assert emulator.emu_adam(1, 1, 1, 1, 0, P.F8E4M3, P.F8E5M2, 0, 1, 1, 32, *[_ptr(z)] * 6, 1, 1000,
                             *[_ptr(z)] * 8, 0, 0, 0) == 2
