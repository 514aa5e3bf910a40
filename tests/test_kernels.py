"""Numba CPU kernels against the NumPy reference, bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import npadam
from npadam import functional as F
from npadam import kernels as K
from npadam.kernels import cpu
from npadam.reference import adamw as R

BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = {"float32": np.dtype(np.float32), "bfloat16": BF16, "float16": np.dtype(np.float16)}


def test_bf16_decode_all_patterns_and_encode_random():
    u = np.arange(1 << 16, dtype=np.uint16)
    want = u.view(ml_dtypes.bfloat16).astype(np.float32)
    got = np.empty(u.size, np.float32)
    cpu.decode_copy(u, got, cpu.BF16)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    bits = np.random.default_rng(1).integers(0, 1 << 32, 200_000, dtype=np.uint64).astype(np.uint32)
    specials = np.array([0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFFFFFFFF,
                         0x3F808000, 0x3F818000, 0x7F7FFFFF, 0x00000001, 0x807FFFFF], dtype=np.uint32)
    x = np.concatenate([bits, specials]).view(np.float32)
    out = np.empty(x.size, np.uint16)
    cpu.cast_copy(x, out, cpu.BF16)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN and overflow inputs are part of the test
        want = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    assert np.array_equal(out, want)


def test_fp16_encode_decode_match_numpy():
    u = np.arange(1 << 16, dtype=np.uint16)
    got = np.empty(u.size, np.float32)
    cpu.decode_copy(u, got, cpu.F16)
    want = u.view(np.float16).astype(np.float32)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    rng = np.random.default_rng(2)
    bits = rng.integers(0, 1 << 32, 300_000, dtype=np.uint64).astype(np.uint32)
    # every float32 exponent near the half range, with random mantissas, and exact halfway cases
    near = (rng.integers(0x30000000, 0x48000000, 300_000, dtype=np.uint64)).astype(np.uint32)
    halfway = (np.arange(0x33000000, 0x47800000, 0x2000, dtype=np.uint64) | 0x1000).astype(np.uint32)
    x = np.concatenate([bits, near, halfway, halfway ^ 0x80000000]).view(np.float32)
    out = np.empty(x.size, np.uint16)
    cpu.cast_copy(x, out, cpu.F16)
    with np.errstate(over="ignore", invalid="ignore"):
        want16 = x.astype(np.float16).view(np.uint16)
    assert np.array_equal(out, want16)


@st.composite
def problems(draw):
    ntensors = draw(st.integers(1, 4))
    sizes = draw(st.lists(st.sampled_from([0, 1, 2, 7, 63, 64, 65, 1000, 40_000, 50_001]),
                          min_size=ntensors, max_size=ntensors))
    pdt = draw(st.sampled_from(list(DTYPES)))
    gdt = draw(st.sampled_from(list(DTYPES)))
    if pdt == gdt == "bfloat16" and draw(st.booleans()):
        # the buffer reaches cpu.PARALLEL_MIN: the parallel build (the same source as the serial one, which
        # every dtype pair runs; one pair keeps CI's cold compiles down: a parallel build takes ~15 s)
        sizes = [*sizes, 300_001]
    hyper = dict(lr=draw(st.floats(1e-5, 1e-1)), betas=(draw(st.floats(0.0, 0.99)), draw(st.floats(0.9, 0.9999))),
                 eps=draw(st.sampled_from([1e-8, 1e-6, 0.0, 1e-3])), weight_decay=draw(st.floats(0.0, 0.3)),
                 amsgrad=draw(st.booleans()), maximize=draw(st.booleans()),
                 bias_correction=draw(st.booleans()))
    return sizes, pdt, gdt, hyper, draw(st.booleans()), draw(st.integers(0, 2**32 - 1)), draw(st.booleans())


@settings(max_examples=40, deadline=None)
@given(problems())
def test_optimizer_cpu_kernel_is_bit_identical_to_reference(problem):
    sizes, pdt, gdt, hyper, decoupled, seed, clip = problem
    rng = np.random.default_rng(seed)
    cls = npadam.AdamW if decoupled else npadam.Adam
    init = [rng.standard_normal(n).astype(np.float32).astype(DTYPES[pdt]) for n in sizes]
    runs = {}
    for kernel in ("cpu", "reference"):
        params = [p.copy() for p in init]
        opt = cls(params, kernel=kernel, max_grad_norm=0.5 if clip else None, **hyper)
        grng = np.random.default_rng(seed + 1)
        norms = []
        for k in range(3):
            grads = [(grng.standard_normal(n) * 3).astype(np.float32).astype(DTYPES[gdt]) for n in sizes]
            norms.append(opt.step(grads).grad_norm)
            if k == 0:  # params written behind the optimizer's back (a re-init, an EMA swap): they win
                for p in params:
                    p[::5] = (grng.standard_normal(p[::5].size) * 4).astype(np.float32).astype(p.dtype)
        sd = opt.state_dict()
        runs[kernel] = (params, sd, norms)
    (p1, s1, n1), (p2, s2, n2) = runs["cpu"], runs["reference"]
    assert n1 == n2
    for a, b in zip(p1, p2):
        assert a.tobytes() == b.tobytes()
    for i in s1["state"]:
        for key in s1["state"][i]:
            assert np.asarray(s1["state"][i][key]).tobytes() == np.asarray(s2["state"][i][key]).tobytes(), key


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 3000), seed=st.integers(0, 2**31), amsgrad=st.booleans(), maximize=st.booleans(),
       decoupled=st.booleans(), scale=st.sampled_from([1.0, 2.0**-10, 0.37]))
def test_functional_matches_reference_oracle(n, seed, amsgrad, maximize, decoupled, scale):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n).astype(np.float32)
    rp = p.copy()
    st_ = F.init(p, amsgrad=amsgrad)
    rm, rv, rvm = np.zeros(n, np.float32), np.zeros(n, np.float32), np.zeros(n, np.float32)
    kw = dict(lr=3e-3, eps=1e-8, weight_decay=0.05, decoupled=decoupled, amsgrad=amsgrad, maximize=maximize)
    for step in range(1, 4):
        g = rng.standard_normal(n).astype(np.float32)
        st_ = F.update(p, g, st_, betas=(0.9, 0.95), grad_scale=scale, **kw)
        R.adam_step(rp, g, rm, rv, rvm if amsgrad else None, beta1=0.9, beta2=0.95, step=step,
                    grad_scale=scale, **kw)
    assert st_.step == 3
    assert p.tobytes() == rp.tobytes() and st_.exp_avg.tobytes() == rm.tobytes()
    assert st_.exp_avg_sq.tobytes() == rv.tobytes()
    if amsgrad:
        assert st_.max_exp_avg_sq.tobytes() == rvm.tobytes()


@pytest.mark.parametrize("block", [64, 1024, 4096, R.NORM_BLOCK])
def test_block_sumsq_with_offsets_and_padding(block):
    rng = np.random.default_rng(block)
    lay, flats, views = npadam.flat_parameters([rng.standard_normal(s).astype(np.float32)
                                                for s in (5, 1, 3000, 64, 130_001)])
    got = cpu.block_sumsq(K.pointers(views), lay.offsets(0), lay.sizes(0),
                          -(-lay.buffers[0].size // block), block, cpu.F32)
    assert got.tobytes() == R.block_sumsq(flats[0], block).tobytes()
    assert F.grad_norm(flats[0]) == F.grad_norm(flats[0], kernel="reference")
    assert abs(F.grad_norm(flats[0]) - np.linalg.norm(flats[0].astype(np.float64))) < 1e-9


def test_float32_reference_tracks_float64():
    rng = np.random.default_rng(0)
    p32 = rng.standard_normal(10_000).astype(np.float32)
    p64 = p32.astype(np.float64)
    s32 = [np.zeros(10_000, np.float32) for _ in range(2)]
    s64 = [np.zeros(10_000, np.float64) for _ in range(2)]
    for step in range(1, 201):
        g = rng.standard_normal(10_000).astype(np.float32)
        kw = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1, step=step)
        R.adam_step(p32, g, *s32, None, **kw)
        R.adam_step(p64, g.astype(np.float64), *s64, None, **kw)
    err = np.abs(p32 - p64)
    ulp = float(np.spacing(np.float32(np.max(np.abs(p64)))))
    # each step rounds p once (half an ulp of its magnitude) plus the update's float32 error:
    # the worst drift stays below 200 steps x 1 ulp, the typical one like a random walk
    assert err.max() <= 200 * ulp, err.max() / ulp
    assert err.mean() <= np.sqrt(200) * ulp, err.mean() / ulp


THREAD_SCRIPT = textwrap.dedent("""
    import hashlib, sys, numpy as np, numba, npadam
    rng = np.random.default_rng(7)
    params = [rng.standard_normal(n).astype(np.float32) for n in (300_001, 5, 99_999)]
    opt = npadam.AdamW(params, lr=1e-3, weight_decay=0.1, max_grad_norm=1.0)
    h = hashlib.sha256()
    for _ in range(3):
        info = opt.step([rng.standard_normal(p.size).astype(np.float32) for p in params])
        h.update(np.float64(info.grad_norm).tobytes())
    for p in params:
        h.update(p.tobytes())
    print(numba.get_num_threads(), h.hexdigest())
""")


def test_result_independent_of_thread_count():
    digests = set()
    for threads in ("1", "2", "3"):
        env = dict(os.environ, NUMBA_NUM_THREADS=threads)
        out = subprocess.run([sys.executable, "-c", THREAD_SCRIPT], env=env, capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, out.stderr
        n, digest = out.stdout.split()
        assert n == threads
        digests.add(digest)
    assert len(digests) == 1


def test_indexing_past_2_31_elements(tmp_path):
    """A tensor whose state offset is beyond 2**31: state arrays are sparse memory maps."""
    n_state = (1 << 31) + 4096
    off = (1 << 31) + 64
    m = np.memmap(tmp_path / "m", dtype=np.float32, mode="w+", shape=(n_state,))
    v = np.memmap(tmp_path / "v", dtype=np.float32, mode="w+", shape=(n_state,))
    rng = np.random.default_rng(3)
    p = rng.standard_normal(1000).astype(np.float32)
    g = rng.standard_normal(1000).astype(np.float32)
    rp, rm, rv = p.copy(), np.zeros(1000, np.float32), np.zeros(1000, np.float32)
    s = R.host_scalars(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1, step=1)
    t, lo, hi = npadam.layout.work_items(np.array([1000]), cpu.CHUNK)
    offsets = np.array([off], dtype=np.int64)
    kernel = cpu.adam_pass(cpu.F32, cpu.F32, amsgrad=False, decoupled=True)
    kernel(K.pointers([p]), K.pointers([g]), offsets, t, lo, hi, np.zeros(0, np.float32), m, v,
                  np.zeros(0, np.float32), *[np.zeros(0, np.float32)] * 3, False, s.scale, np.uint32(0), np.uint32(0), np.int64(0), s.beta1,
                  s.one_minus_beta1, s.beta2,
                  s.one_minus_beta2, s.weight_decay, s.decay, s.step_size, s.bc2_sqrt, s.eps)
    R.apply_step(rp, g, rm, rv, None, s)
    assert p.tobytes() == rp.tobytes()
    assert np.asarray(m[off: off + 1000]).tobytes() == rm.tobytes()
    assert not np.any(m[off - 64: off]) and not np.any(m[:4096])
    nblocks = -(-(off + 1000) // R.NORM_BLOCK)
    sums = cpu.block_sumsq(K.pointers([g]), offsets, np.array([1000]), nblocks, R.NORM_BLOCK, 0)
    assert sums.shape == (nblocks,) and np.count_nonzero(sums) == 1
    bs = off // R.NORM_BLOCK * R.NORM_BLOCK
    x = np.zeros(R.NORM_BLOCK, np.float32)
    x[off - bs: off - bs + 1000] = g
    assert sums[off // R.NORM_BLOCK] == R.block_sumsq(x)[0]


def test_layout_offsets_are_64_bit():
    big = npadam.FlatLayout([("a", (1 << 31,), "float32", 0), ("b", (3,), "float32", 0),
                             ("c", (1 << 20, 1 << 12), "bfloat16", 0)])
    assert big.slots[1].offset == 1 << 31 and big.buffers[0].size == (1 << 31) + 64
    assert big.slots[2].numel == 1 << 32 and big.offsets(1).dtype == np.int64


def test_serial_and_parallel_builds_cache_apart():
    """Numba keys its disk cache on closure variables: both builds must capture PARALLEL,
    else whichever compiles first is loaded for the other (a serial pass for a huge buffer)."""
    for parallel in (False, True):
        for fn in (cpu.adam_pass(cpu.F32, cpu.BF16, amsgrad=True, decoupled=False, parallel=parallel),
                   (cpu.block_sumsq(K.pointers([]), np.zeros(0, np.int64), np.zeros(0, np.int64), 0, 64, cpu.F32,
                                    parallel), cpu._BLOCK_SUMSQ[(cpu.F32, parallel)])[1]):
            free = fn.py_func.__code__.co_freevars
            cells = dict(zip(free, (c.cell_contents for c in fn.py_func.__closure__)))
            assert cells.get("PARALLEL") is parallel
            assert fn.targetoptions.get("parallel", False) is parallel


def test_params_edited_in_place_win_over_the_master_in_every_kernel():
    """bf16/fp16 params written without the optimizer knowing (NumPy writes, torch ``p.data.clamp_()``,
    which moves no version counter): the next update starts from the written values."""
    for dtype in (ml_dtypes.bfloat16, np.float16):
        for kernel in ("cpu", "reference"):
            for n in (1000, 300_000):
                p = np.ones(n, dtype)
                opt = npadam.AdamW([p], lr=0.1, weight_decay=0.0, kernel=kernel)
                opt.step([np.ones(n, np.float32).astype(dtype)])
                p[: n // 2] = 0.5  # e.g. clamping
                opt.param_groups[0]["lr"] = 0.0
                opt.step([np.zeros(n, dtype)])
                assert (p[: n // 2].astype(np.float32) == 0.5).all(), (dtype, kernel, n)
                assert (p[n // 2:].astype(np.float32) < 1.0).all()


@pytest.mark.parametrize("n", [1000, 300_000])
@pytest.mark.parametrize("kernel", ["cpu", "reference"])
def test_eps_zero_with_zero_grads_gives_nan_like_torch_in_every_build(n, kernel):
    """eps=0 and an exactly-zero gradient: 0/0. The serial build raised ZeroDivisionError mid-pass
    (params half written); every build now gives NaN there, like torch and the reference."""
    p = np.ones(n, np.float32)
    g = np.ones(n, np.float32)
    g[n // 2:] = 0.0
    opt = npadam.AdamW([p], lr=1e-3, eps=0.0, weight_decay=0.0, kernel=kernel)
    opt.step([g])
    assert np.isnan(p[n // 2:]).all() and np.isfinite(p[: n // 2]).all() and opt.step_count == 1
    torch = pytest.importorskip("torch")
    want = torch.ones(n, requires_grad=True)
    topt = torch.optim.AdamW([want], lr=1e-3, eps=0.0, weight_decay=0.0)
    want.grad = torch.from_numpy(g)
    topt.step()
    assert np.array_equal(np.isnan(want.detach().numpy()), np.isnan(p))



def test_amsgrad_tie_between_zeros_keeps_the_stored_max_in_reference_and_kernel():
    """A loaded max_exp_avg_sq of -0 against a new exp_avg_sq of +0: the kernels keep the stored -0; the
    reference used np.maximum, whose choice between equal zeros NumPy does not specify (+0 on NumPy 2.4)."""
    out = {}
    for kernel in ("reference", "cpu"):
        p = np.ones(8, np.float32)
        opt = npadam.AdamW([p], lr=1e-3, amsgrad=True, kernel=kernel)
        sd = opt.state_dict()
        sd["state"] = {0: {"step": 1, "exp_avg": np.zeros(8, np.float32), "exp_avg_sq": np.zeros(8, np.float32),
                           "max_exp_avg_sq": np.full(8, -0.0, np.float32)}}
        opt.load_state_dict(sd)
        opt.step([np.zeros(8, np.float32)])
        out[kernel] = opt.state_dict()["state"][0]["max_exp_avg_sq"]
        assert np.signbit(out[kernel]).all(), kernel
    assert out["reference"].tobytes() == out["cpu"].tobytes()

@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.sampled_from([0, 1, 5, 64, 65, 300, 1000]), min_size=1, max_size=4),
       pdt=st.sampled_from(list(DTYPES)), gdt=st.sampled_from(list(DTYPES)), kernel=st.sampled_from(["cpu", "reference"]),
       amsgrad=st.booleans(), cuts=st.lists(st.integers(1, 2400), max_size=4), seed=st.integers(0, 2**31))
def test_a_buffer_stepped_chunk_by_chunk_is_bit_identical(sizes, pdt, gdt, kernel, amsgrad, cuts, seed):
    """``sub_batch``: the state of a buffer in chunks (a disk or host tier streams it so) gives the same
    params and state bits as the whole buffer in one call, whatever the chunk boundaries."""
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    total = int(sum(sizes))
    params0 = [rng.standard_normal(n).astype(np.float32).astype(DTYPES[pdt]) for n in sizes]
    grads = [(rng.standard_normal(n) * 2).astype(np.float32).astype(DTYPES[gdt]) for n in sizes]
    state0 = {k: rng.random(total).astype(np.float32) for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")}
    master0 = np.concatenate([p.astype(np.float32) for p in params0]) if pdt != "float32" else None
    s = R.host_scalars(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1, step=3, decoupled=True,
                       bias_correction=True, grad_scale=0.5)
    flags = K.Flags(amsgrad=amsgrad)
    kern = K.get(kernel)

    def state(lo, hi):
        return K.BufferState(size=hi - lo, master=None if master0 is None else whole_master[lo:hi].copy(),
                             exp_avg=whole["exp_avg"][lo:hi].copy(), exp_avg_sq=whole["exp_avg_sq"][lo:hi].copy(),
                             max_exp_avg_sq=whole["max_exp_avg_sq"][lo:hi].copy() if amsgrad else None, pdtype=pdt)

    results = []
    for bounds in ([0, total], sorted({0, total, *[c for c in cuts if c < total]})):
        whole = {k: v.copy() for k, v in state0.items()}
        whole_master = None if master0 is None else master0.copy()
        params = [p.copy() for p in params0]
        batch = K.Batch.of_arrays(params, grads, offsets, gdt)
        for lo, hi in zip(bounds, bounds[1:]):
            buf = state(lo, hi)
            kern.adam_step(buf, K.sub_batch(batch, pdt, lo, hi), s, flags)
            for k in ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ()):
                whole[k][lo:hi] = getattr(buf, k)
            if whole_master is not None:
                whole_master[lo:hi] = buf.master
        results.append((b"".join(p.tobytes() for p in params), {k: v.tobytes() for k, v in whole.items()},
                        None if whole_master is None else whole_master.tobytes()))
    assert results[0] == results[1]
