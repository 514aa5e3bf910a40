"""The CUDA source without a GPU: it compiles for sm_90 with the exact flags, and its
element math, built for the host, is bit-identical to the reference (Adam and SGD)."""

from __future__ import annotations

import ctypes
import itertools
import re
import shutil
import subprocess

import ml_dtypes
import numpy as np
import pytest

from npadam.kernels import gpu
from npadam.reference import adamw as R
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
    assert len(entries) == len(gpu.all_names()) == 75 + 27


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
    lib.adam_host.restype = ctypes.c_int
    lib.adam_host.argtypes = [ctypes.c_int] * 5 + [ctypes.c_int64] + [ctypes.c_void_p] * 7
    lib.convert_host.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
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
            rc = host_lib.adam_host(pk, gk, amsgrad, decoupled, maximize, n, _ptr(param), _ptr(g), _ptr(master),
                                    _ptr(m), _ptr(v), _ptr(x), _ptr(sc))
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
    lib.emu_adam.argtypes = [ctypes.c_int] * 5 + [ctypes.c_uint, ctypes.c_uint] + [ctypes.c_void_p] * 6 + \
        [ctypes.c_int64, ctypes.c_int64] + [ctypes.c_void_p] * 5
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
            assert emulator.emu_adam(pk, gk, amsgrad, decoupled, maximize, 3, 128, _ptr(pptr), _ptr(gptr),
                                     _ptr(offsets), _ptr(sz), _ptr(ct), _ptr(cs), ct.size, chunk, _ptr(master),
                                     _ptr(m), _ptr(v), _ptr(x), _ptr(sc)) == 0
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
            assert len(args) == 22, len(args)
            *arrays, nchunks, chunk, w, m, v, x = args[:12]
            assert all(isinstance(a, np.ndarray) for a in (*arrays, w, m, v, x))
            assert [a.dtype for a in arrays] == [np.uint64, np.uint64, np.int64, np.int64, np.int64, np.int64]
            assert isinstance(nchunks, np.int64) and isinstance(chunk, np.int64)
            sc = np.asarray(args[12:], np.float32)
            assert all(isinstance(s, np.float32) for s in args[12:])
            rc = self.lib.emu_adam(*self.opts, grid[0], block[0], *map(ptr, arrays), int(nchunks), int(chunk),
                                   ptr(w), ptr(m), ptr(v), ptr(x), ptr(sc))
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


def _sizes_and_layout(pdt):
    """Four tensors (a big one, tiny odd ones) in one flat buffer."""
    from npadam.layout import FlatLayout

    sizes = [70_001, 3, 4099, 64]
    lay = FlatLayout([(str(i), (n,), pdt, 0) for i, n in enumerate(sizes)])
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
