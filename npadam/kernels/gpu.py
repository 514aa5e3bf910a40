"""CuPy GPU kernels: ``adam.cu`` compiled lazily with NVRTC, memoized per device.

Importing this module imports CuPy; nothing here compiles until a kernel is
first used. The CUDA source (``adam.cu`` + ``adam_math.cuh``, package data) holds
one templated kernel per algorithm; each (param kind, grad kind, amsgrad,
decoupled, maximize, exp_avg kind, exp_avg_sq kind, stochastic rounding, master
mode) Adam combination and each (param kind, grad kind, momentum mode) SGD
combination is instantiated by name on first use and cached per device. Options:
``-fmad=false``, IEEE division and square root and no flush-to-zero, so results
are bit-identical to ``reference.adamw`` and the Numba kernel.

The source is compiled here with NVRTC (``compile_names``) and loaded as a CuPy
``Module``, not through ``cupy.RawModule``: CuPy appends ``-ftz=true`` to the
options of every RawModule/RawKernel (after the caller's, so it wins), which
flushes float32 subnormals and breaks bit-identity with the CPU.

Kernels run on CuPy's current stream; to run on a torch stream, wrap the call in
``with cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream):``. The
gradient-norm pass leaves its block sums on the device; the optimizer reads one
float64 back per step (the total), which is its only host synchronisation.
"""

from __future__ import annotations

import itertools
import pathlib
from typing import Any, Sequence

import numpy as np

from ..layout import work_items

SOURCE_DIR = pathlib.Path(__file__).resolve().parent
CHUNK = 1 << 16
THREADS = 256
LANES = 64
NVRTC_OPTIONS = ("--std=c++17", "-fmad=false", "--prec-div=true", "--prec-sqrt=true", "--ftz=false")


def source() -> str:
    """The kernel source with ``adam_math.cuh`` inlined (NVRTC needs no include path then)."""
    math_h = (SOURCE_DIR / "adam_math.cuh").read_text()
    return (SOURCE_DIR / "adam.cu").read_text().replace('#include "adam_math.cuh"', math_h)


#: storage kinds (``npadam.layout.KINDS``, ``reference.precision``): float32, bfloat16, float16, and for
#: the moments float8_e4m3fn and float8_e5m2 (uint8 codes, a float32 scale per ``FP8_BLOCK`` elements)
F32, BF16, F16, F8E4M3, F8E5M2 = 0, 1, 2, 3, 4
FP8 = (F8E4M3, F8E5M2)
MOMENT_KINDS = (F32, BF16, F16, F8E4M3, F8E5M2)
#: reference.precision.FP8_BLOCK (adam_math.cuh's FP8_BLOCK)
FP8_BLOCK = 256
#: the master modes, adam_multi's template parameter WM (adam_math.cuh's MasterMode): what ``master`` holds
#: for 16-bit params: float32 masters, int16 remainders (``store_param_remainders``), or float16 masters as
#: uint16 bits (``main_params_dtype="float16"``); the last two for bfloat16 params only
MASTER_F32, MASTER_REM, MASTER_F16 = 0, 1, 2
#: the storage kinds of a master (``BufferState.w_kind``): float32, float16
MASTER_KINDS = (F32, F16)
# adam_multi with fp8 moments: chunks start on fp8 blocks, thread blocks are whole warps
assert CHUNK % FP8_BLOCK == 0 and THREADS % 32 == 0


def _b(x: bool) -> str:
    return "true" if x else "false"


def master_mode(pkind: int, rem: bool = False, wk: int = F32) -> int:
    """adam_multi's master mode (``MASTER_F32``, ``MASTER_REM``, ``MASTER_F16``) of params of kind
    ``pkind`` with remainders ``rem`` or a master of storage kind ``wk`` (``MASTER_KINDS``, as
    ``BufferState.w_kind``); ValueError for a combination the kernel does not have."""
    if wk not in MASTER_KINDS:
        raise ValueError(f"master storage kinds are 0 (float32) and 2 (float16); got {wk!r}")
    if rem and wk != F32:
        raise ValueError("param remainders and float16 masters exclude each other (remainders replace the master)")
    if rem and pkind != BF16:
        raise ValueError(f"param remainders need bfloat16 params (pkind 1); got pkind {pkind}")
    if wk == F16 and pkind != BF16:
        raise ValueError(f"float16 masters need bfloat16 params (pkind 1); got pkind {pkind}")
    return MASTER_REM if rem else MASTER_F16 if wk == F16 else MASTER_F32


def adam_name(pkind: int, gkind: int, amsgrad: bool, decoupled: bool, maximize: bool, mk: int = F32,
              vk: int = F32, sr: bool = False, rem: bool = False, wk: int = F32) -> str:
    """The name expression of one ``adam_multi`` instantiation.

    ``pkind``/``gkind``: storage kind of params / grads (0, 1, 2); ``mk``/``vk``: storage kind of
    exp_avg / of exp_avg_sq and max_exp_avg_sq (0 ... 4, ``MOMENT_KINDS``); ``sr``: stochastic
    rounding of the bfloat16 moments (no effect unless ``mk`` or ``vk`` is bfloat16: ``adam_step``
    passes False then, so that such a kernel is never compiled twice); ``rem``: the ``master`` array
    holds int16 param remainders; ``wk``: the masters' storage kind, float32 or float16 (uint16 bits of
    the masters of bfloat16 params). The last template argument is their ``master_mode``."""
    if pkind not in (F32, BF16, F16) or gkind not in (F32, BF16, F16):
        raise ValueError(f"param and grad storage kinds are 0, 1, 2; got {(pkind, gkind)}")
    if mk not in MOMENT_KINDS or vk not in MOMENT_KINDS:
        raise ValueError(f"moment storage kinds are 0, 1, 2, 3, 4; got {(mk, vk)}")
    wm = master_mode(pkind, rem, wk)
    return f"adam_multi<{pkind}, {gkind}, {_b(amsgrad)}, {_b(decoupled)}, {_b(maximize)}, {mk}, {vk}, {_b(sr)}, {wm}>"


def precision_options(pkind: int) -> list[tuple[int, int, bool, bool, int]]:
    """Every valid ``(mk, vk, sr, rem, wk)`` for params of kind ``pkind``: any two moment kinds, stochastic
    rounding only with a bfloat16 moment, remainders or float16 masters only with bfloat16 params
    (102 for bfloat16 params: 34 moment options times float32 masters, remainders, float16 masters;
    else 34)."""
    masters = [(False, F32), (True, F32), (False, F16)] if pkind == BF16 else [(False, F32)]
    out = []
    for mk, vk in itertools.product(MOMENT_KINDS, repeat=2):
        for sr in (False, True) if BF16 in (mk, vk) else (False,):
            out += [(mk, vk, sr, rem, wk) for rem, wk in masters]
    return out


def sgd_name(pkind: int, gkind: int, momentum: int) -> str:
    """The name expression of one ``sgd_multi`` instantiation."""
    return f"sgd_multi<{pkind}, {gkind}, {momentum}>"


def norm_name(gkind: int) -> str:
    """The name expression of one ``block_sumsq`` instantiation."""
    return f"block_sumsq<{gkind}>"


def compile_names(names: Sequence[str], arch: int, cubin: bool = True) -> tuple[bytes, dict[str, str]]:
    """Compile ``source()`` with NVRTC for the name expressions ``names``.

    Returns the cubin for ``sm_<arch>`` (or the PTX for ``compute_<arch>`` when
    ``cubin`` is False) and each name's lowered (mangled) name. Needs no device.
    """
    from cupy_backends.cuda.libs import nvrtc

    options = [*NVRTC_OPTIONS, f"--gpu-architecture={'sm' if cubin else 'compute'}_{int(arch)}"]
    prog = nvrtc.createProgram(source(), "adam.cu", [], [])
    try:
        for name in names:
            nvrtc.addNameExpression(prog, name)
        try:
            nvrtc.compileProgram(prog, options)
        except nvrtc.NVRTCError as exc:
            raise RuntimeError(f"NVRTC could not compile npadam's kernels ({' '.join(options)}):\n"
                               f"{nvrtc.getProgramLog(prog)}") from exc
        lowered = {name: nvrtc.getLoweredName(prog, name) for name in names}
        binary = nvrtc.getCUBIN(prog) if cubin else nvrtc.getPTX(prog)
    finally:
        nvrtc.destroyProgram(prog)
    return binary, lowered


def target(compute_capability: int) -> tuple[int, bool]:
    """``(arch, cubin)`` for a device: its own SASS when NVRTC supports it, else the
    PTX of the newest older architecture NVRTC knows (JIT-compiled by the driver)."""
    from cupy_backends.cuda.libs import nvrtc

    cc = int(compute_capability)
    try:
        archs = sorted(int(a) for a in nvrtc.getSupportedArchs())
    except Exception:  # noqa: BLE001 - very old NVRTC: no query, try the device's own
        return cc, True
    if cc in archs:
        return cc, True
    older = [a for a in archs if a <= cc]
    return (older[-1] if older else cc), False


def all_names() -> list[str]:
    """The template instantiations compile checks build (tests/test_gpu_source.py): a subset.

    The runtime compiles each kernel it uses on first use, so any valid combination may be asked
    for; the full cross product has 4,080 Adam kernels (bfloat16 params: 3 grad kinds * 8 flag
    combinations * 102 ``(mk, vk, sr, rem, wk)``; float32 / float16 params: 2 * 3 * 8 * 34), many minutes
    of compilation. This subset instantiates every value of every template parameter and every valid
    ``(mk, vk, sr, rem)`` with float32 masters (``precision_options``) with amsgrad, the ones without fp8
    moments also without it:

    - the norm and SGD kernels (3 + 27), and every (param kind, grad kind, amsgrad, decoupled,
      maximize) Adam kernel with all-float32 state (72; the float4 path among them);
    - bfloat16 params and grads (the mixed-precision case), AdamW: with amsgrad every valid
      ``(mk, vk, sr, rem)`` (68, less the all-float32 one above); without it every one without fp8
      moments (28 - 1) and each pair of moment kinds with an fp8 one (16: stochastic with a bfloat16
      moment, no remainders);
    - the same with float16 masters (``wk``): with amsgrad every ``(mk, vk, sr)`` without fp8 moments
      (14) and the pair float8_e4m3fn / float8_e5m2 (1), without it the float32 moments (1);
    - float32 params and grads, and float16 params and grads: AdamW with amsgrad and every other valid
      ``(mk, vk, sr)`` without fp8 moments, and the two pairs of fp8 kinds (2 * 15: low-precision
      moments beside 32-bit and 16-bit params, the float4 path compiled out).

    258 kernels: ``nvcc -ptx`` for sm_90 takes ~13.5 s and NVRTC ~13 s of CPU time on two shared cores (an
    fp8 kernel ~0.2 s, another Adam kernel ~0.1 s; the 242 kernels before the float16 masters, measured
    beside them: ~12 s each).
    """
    names = [norm_name(g) for g in range(3)]
    for p in range(3):
        for g in range(3):
            for a in (False, True):
                for d in (False, True):
                    for m in (False, True):
                        names.append(adam_name(p, g, a, d, m))
            names += [sgd_name(p, g, mode) for mode in range(3)]
    default = (F32, F32, False, False, F32)
    for kind, amsgrad in ((BF16, False), (BF16, True), (F32, True), (F16, True)):
        for opt in precision_options(kind):
            mk, vk, sr, rem, wk = opt
            fp8 = mk in FP8 or vk in FP8
            if wk == F16:
                keep = (not fp8 or (mk, vk) == (F8E4M3, F8E5M2)) if amsgrad else (mk, vk) == (F32, F32)
            elif kind == BF16:
                keep = amsgrad or not fp8 or (sr == (BF16 in (mk, vk)) and not rem)
            else:
                keep = not fp8 or {mk, vk} == set(FP8)
            if keep and opt != default:
                names.append(adam_name(kind, kind, amsgrad, True, False, *opt))
    return names


class GpuKernels:
    """The operations of ``npadam.kernels`` on CuPy arrays of one device."""

    def __init__(self) -> None:
        import cupy
        from cupy.cuda import function

        self.cp = cupy
        self._module_type = function.Module
        self._functions: dict[tuple[int, str], Any] = {}
        self._sms: dict[int, int] = {}

    def _function(self, name: str) -> Any:
        """The kernel ``name`` on the current device (compiled and loaded on first use)."""
        dev = self.cp.cuda.runtime.getDevice()
        key = (dev, name)
        if key not in self._functions:
            arch, cubin = target(self.cp.cuda.Device(dev).compute_capability)
            binary, lowered = compile_names([name], arch, cubin)
            mod = self._module_type()
            mod.load(binary)
            self._functions[key] = mod.get_function(lowered[name])  # the Function keeps its Module loaded
        return self._functions[key]

    def _sm_count(self) -> int:
        dev = self.cp.cuda.runtime.getDevice()
        if dev not in self._sms:
            rt = self.cp.cuda.runtime
            self._sms[dev] = int(rt.deviceGetAttribute(rt.cudaDevAttrMultiProcessorCount, dev))
        return self._sms[dev]

    def _tables(self, buf: Any, batch: Any, ptrs: np.ndarray, key: str) -> tuple[Any, ...]:
        """Device tables (pointers, offsets, sizes) of a batch, cached per buffer while the
        pointers and the tensor set stay the same (the tables are never written, so reuse is safe)."""
        cp = self.cp
        ident = (batch.key, ptrs.tobytes())
        cached = buf.cache.get(key)
        if cached is not None and cached[0] == ident:
            return cached[1]
        tables = (cp.asarray(ptrs.astype(np.uint64)), cp.asarray(batch.offsets), cp.asarray(batch.sizes))
        buf.cache[key] = (ident, tables)
        return tables

    def _chunks(self, buf: Any, batch: Any) -> tuple[Any, Any, int]:
        key = ("chunks", batch.key)
        if key not in buf.cache:
            t, start, _ = work_items(batch.sizes, CHUNK)
            buf.cache[key] = (self.cp.asarray(t), self.cp.asarray(start), int(t.size))
        return buf.cache[key]

    def block_sumsq(self, buf: Any, batch: Any, block: int) -> Any:
        """float64 block sums, left on the device (a CuPy array)."""
        cp = self.cp
        nblocks = -(-buf.size // block)
        if not len(batch) or not nblocks:
            return cp.zeros(0, dtype=cp.float64)
        ptrs, offsets, sizes = self._tables(buf, batch, batch.grads, "grads")
        out = cp.empty(nblocks, dtype=cp.float64)
        fn = self._function(norm_name(batch.gkind))
        grid = min(nblocks, 65_535)
        fn((grid,), (LANES,), (ptrs, offsets, sizes, np.int64(len(batch)), np.int64(nblocks),
                                np.int64(block), out))
        return out

    def _launch(self, buf: Any, batch: Any, name: str, state: Sequence[Any], scalars: Sequence[Any]) -> None:
        """One launch of kernel ``name`` over the batch: tables, chunks, ``master``, the ``state``
        arrays (None: a placeholder), then ``scalars``."""
        cp = self.cp
        pptrs, offsets, sizes = self._tables(buf, batch, batch.params, "params")
        gptrs, _, _ = self._tables(buf, batch, batch.grads, "grads")
        chunk_t, chunk_s, nchunks = self._chunks(buf, batch)
        if "empty" not in buf.cache:
            buf.cache["empty"] = cp.zeros(1, dtype=cp.float32)
        empty = buf.cache["empty"]
        arrays = tuple(empty if a is None else a for a in (buf.master, *state))
        grid = min(nchunks, 32 * self._sm_count())
        self._function(name)((max(grid, 1),), (THREADS,),
                             (pptrs, gptrs, offsets, sizes, chunk_t, chunk_s, np.int64(nchunks), np.int64(CHUNK),
                              *arrays, *scalars))

    def adam_step(self, buf: Any, batch: Any, s: Any, flags: Any) -> None:
        """One fused Adam pass over the batch (``npadam.kernels``).

        Reads the precision options of ``buf`` (``m_kind``, ``v_kind``, ``stochastic``, ``remainders``,
        ``w_kind``: float16 masters, ``base``: the buffer index of the state arrays' element 0; with fp8
        moments their block scales ``m_scale``, ``v_scale``, ``vmax_scale``) and the step key of ``flags``
        (``key``), with the defaults of an all-float32 state where an object lacks them."""
        if not len(batch):
            return
        mk, vk = int(getattr(buf, "m_kind", F32)), int(getattr(buf, "v_kind", F32))
        sr = bool(getattr(buf, "stochastic", False)) and BF16 in (mk, vk)  # only bfloat16 rounds stochastically
        rem, wk = bool(getattr(buf, "remainders", False)), int(getattr(buf, "w_kind", F32))
        if rem or wk != F32:
            what = "an int16 remainder array" if rem else "a uint16 array of float16 masters"
            if buf.pkind != BF16 or buf.master is None or np.dtype(buf.master.dtype).itemsize != 2:
                raise ValueError(f"{'param remainders' if rem else 'float16 masters'} need bfloat16 params and "
                                 f"{what} in buf.master; got {buf.pdtype} params and "
                                 f"{None if buf.master is None else buf.master.dtype}")
        base = int(getattr(buf, "base", 0))
        scales = tuple(getattr(buf, name, None) for name in ("m_scale", "v_scale", "vmax_scale"))
        if mk in FP8 or vk in FP8:
            _check_fp8(buf, batch, mk, vk, bool(flags.amsgrad), base, scales)
        k0, k1 = getattr(flags, "key", (0, 0))
        scalars = tuple(np.float32(x) for x in (s.scale, s.beta1, s.one_minus_beta1, s.beta2, s.one_minus_beta2,
                                                s.weight_decay, s.decay, s.step_size, s.bc2_sqrt, s.eps))
        scalars += (np.uint32(k0), np.uint32(k1), np.int64(base))
        name = adam_name(buf.pkind, batch.gkind, flags.amsgrad, flags.decoupled, flags.maximize, mk, vk, sr, rem, wk)
        self._launch(buf, batch, name, (buf.exp_avg, buf.exp_avg_sq, buf.max_exp_avg_sq, *scales), scalars)

    def sgd_step(self, buf: Any, batch: Any, s: Any, flags: Any) -> None:
        if not len(batch):
            return
        scalars = tuple(np.float32(x) for x in (s.scale, s.weight_decay, s.momentum, s.one_minus_dampening,
                                                s.neg_lr))
        scalars += tuple(np.int32(bool(x)) for x in (flags.maximize, flags.weight_decay, flags.first))
        self._launch(buf, batch, sgd_name(buf.pkind, batch.gkind, flags.momentum),
                     (buf.exp_avg if flags.momentum else None,), scalars)


def _check_fp8(buf: Any, batch: Any, mk: int, vk: int, amsgrad: bool, base: int, scales: Sequence[Any]) -> None:
    """What adam_multi assumes of fp8 state: the state arrays start on an fp8 block (``base``), every
    tensor does too (its offset), and each fp8 moment has a float32 scale array with a scale for every
    block the batch touches (``(end + FP8_BLOCK - 1) // FP8_BLOCK``, ``end`` its last tensor's end)."""
    if base % FP8_BLOCK:
        raise ValueError(f"fp8 state must start on a {FP8_BLOCK}-element block; got base {base}")
    offsets = np.asarray(batch.offsets)
    if (offsets % FP8_BLOCK).any():
        bad = int(offsets[(offsets % FP8_BLOCK) != 0][0])
        raise ValueError(f"with fp8 state every tensor starts on a {FP8_BLOCK}-element block; got offset {bad}")
    # the blocks the batch touches: a buffer whose tail is in another tier (offload) has scales for
    # the part on the GPU only, and the batch covers just that part
    end = int((offsets + np.asarray(batch.sizes)).max()) if offsets.size else 0
    blocks = -(-end // FP8_BLOCK)
    for name, kind, scale in zip(("m_scale", "v_scale", "vmax_scale"), (mk, vk, vk), scales):
        if kind not in FP8 or (name == "vmax_scale" and not amsgrad):
            continue
        if scale is None:
            raise ValueError(f"fp8 moments need their block scales: buf.{name} is None")
        if np.dtype(scale.dtype) != np.float32 or scale.size < blocks:
            raise ValueError(f"buf.{name} must be float32 with at least {blocks} scales (one per {FP8_BLOCK} "
                             f"elements up to the batch's end, {end}); got {scale.dtype} with {scale.size}")

