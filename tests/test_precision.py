"""Precision-aware optimizer state (``npadam.reference.precision``): the contract's pieces, and the
Numba kernel against the reference bit for bit for every storage combination, rounding mode,
option and thread count."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from npadam import kernels as K
from npadam.kernels.threads import limited, max_threads
from npadam.reference import adamw as R
from npadam.reference import precision as P

BF16 = np.dtype(ml_dtypes.bfloat16)
STORE = {0: np.dtype(np.float32), 1: BF16, 2: np.dtype(np.float16)}


# ---------------------------------------------------------------------- the generator
def test_threefry_known_answers_and_jax():
    """Random123's known answer for Threefry-2x32-20 (zero key and counter), and jax.random's own
    implementation on random keys and counters."""
    assert [int(x) for x in P.threefry2x32(0, 0, 0, 0)] == [0x6B200159, 0x99BA4EFE]
    jr = pytest.importorskip("jax.extend.random")
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    for _ in range(3):
        k = rng.integers(0, 2**32, 2, dtype=np.uint64).astype(np.uint32)
        c = rng.integers(0, 2**32, (2, 257), dtype=np.uint64).astype(np.uint32)
        ours = P.threefry2x32(k[0], k[1], c[0], c[1])
        theirs = np.asarray(jr.threefry_2x32(jnp.asarray(k), jnp.asarray(np.concatenate(c))))
        assert np.array_equal(ours[0], theirs[:257]) and np.array_equal(ours[1], theirs[257:])


def test_step_keys_differ_by_seed_step_and_buffer():
    keys = {P.step_key(seed, step, buf) for seed in (0, 1, 2**40) for step in (1, 2, 2**33) for buf in (0, 1)}
    assert len(keys) == 18


# ---------------------------------------------------------------------- rounding
@pytest.mark.parametrize("kind", [P.BF16, P.F16])
def test_nearest_rounding_is_ml_dtypes_with_one_nan(kind):
    x = np.random.default_rng(1).standard_normal(10_000).astype(np.float32) * np.float32(1e3)
    x[:4] = [np.inf, -np.inf, np.nan, -np.nan]
    out = P.narrow(x, kind)
    want = x.astype(STORE[kind]).view(np.uint16)
    assert np.array_equal(out[4:], want[4:]) and np.array_equal(out[:2], want[:2])
    assert set(out[2:4].tolist()) == {0x7FC0 if kind == P.BF16 else 0x7E00}
    assert np.array_equal(P.widen(out[4:], kind), want[4:].view(STORE[kind]).astype(np.float32))


def test_every_16_bit_pattern_round_trips():
    bits = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    for kind in (P.BF16, P.F16):
        wide = P.widen(bits, kind)
        back = P.narrow(wide, kind)
        ok = ~np.isnan(wide)
        assert np.array_equal(back[ok], bits[ok])
        r = np.random.default_rng(2).integers(0, 2**32, bits.size, dtype=np.uint64).astype(np.uint32)
        if kind == P.BF16:  # a representable value is never moved by stochastic rounding
            assert np.array_equal(P.narrow(wide, kind, "stochastic", r)[ok], bits[ok])


def test_stochastic_rounding_is_unbiased():
    """The mean of many stochastic roundings of x is x, within its standard error."""
    n = 200_000
    for x in (np.float32(1.0 + 2**-10), np.float32(-3.14159), np.float32(1e-30)):
        key = P.step_key(7, 1, 0)
        r0, _ = P.random_words(key, np.arange(n, dtype=np.uint64))
        y = P.widen(P.narrow(np.full(n, x, np.float32), P.BF16, "stochastic", r0), P.BF16).astype(np.float64)
        lo, hi = np.unique(y)[[0, -1]]
        se = (hi - lo) / 2 / np.sqrt(n)
        assert abs(y.mean() - float(x)) < 4 * se + 1e-300, (x, y.mean())
    with pytest.raises(ValueError, match="bfloat16"):
        P.narrow(np.ones(2, np.float32), P.F16, "stochastic", np.zeros(2, np.uint32))


def test_remainders_reconstruct_every_master_exactly():
    """All 2**16 remainders x a sample of high halves (including the extremes): join(split(m)) == m,
    and the bf16 param is the nearest bf16 to the master (ties away from zero)."""
    highs = np.concatenate([np.arange(0, 2**16, 97), [0, 1, 0x7F7F, 0x7F80, 0x8000, 0x8001, 0xFF7F, 0xFF80,
                                                       0x3F80, 0xBF80]]).astype(np.uint32)
    bits = ((highs[:, None] << np.uint32(16)) | np.arange(2**16, dtype=np.uint32)[None, :]).ravel()
    master = bits.view(np.float32)
    finite = np.isfinite(master)
    p, rem = P.split_remainder(master)
    back = P.join_remainder(p, rem)
    assert np.array_equal(back.view(np.uint32)[finite], bits[finite])
    assert p.dtype == np.uint16 and rem.dtype == np.int16
    m64 = master[finite].astype(np.float64)
    pv = p[finite].view(BF16).astype(np.float64)
    rne = master[finite].astype(BF16).astype(np.float64)
    err, err_rne = np.abs(pv - m64), np.abs(rne - m64)
    assert np.all((err == err_rne) | ~np.isfinite(pv))  # as near as round-to-nearest-even
    tie = (bits[finite] & 0xFFFF) == 0x8000
    assert np.all(np.abs(pv[tie]) >= np.abs(m64[tie]))  # ties go away from zero


# ---------------------------------------------------------------------- kernel == reference
def _stored(x, kind):
    """``(stored array, fp8 scales or None)`` of float32 values ``x`` (fp8: quantized from index 0)."""
    if kind in P.FP8:
        return P.quantize(x, kind)
    return (x.copy() if kind == P.F32 else P.narrow(x, kind)), None


def _state(n, m_kind, v_kind, amsgrad, rem, pdtype, rng, base):
    m, mq = _stored((rng.standard_normal(n) * 1e-2).astype(np.float32), m_kind)
    v32 = np.abs(rng.standard_normal(n) * 1e-3).astype(np.float32)
    v, vq = _stored(v32, v_kind)
    vmax, xq = _stored(v32 * np.float32(1.5), v_kind) if amsgrad else (None, None)
    master = None
    if pdtype != "float32":
        master = rng.integers(-2**15, 2**15, n).astype(np.int16) if rem else None
    return dict(m=m, v=v, vmax=vmax, master=master, mq=mq, vq=vq, xq=xq)


def _buffers(st_, n, pdtype, m_kind, v_kind, sr, rem, base):
    def cp(a):
        return None if a is None else a.copy()
    return K.BufferState(size=n, master=cp(st_["master"]), exp_avg=cp(st_["m"]), exp_avg_sq=cp(st_["v"]),
                         max_exp_avg_sq=cp(st_["vmax"]), pdtype=pdtype, m_kind=m_kind, v_kind=v_kind,
                         stochastic=sr, remainders=rem, base=base, m_scale=cp(st_["mq"]), v_scale=cp(st_["vq"]),
                         vmax_scale=cp(st_["xq"]))


#: (m_kind, v_kind, stochastic, remainders, amsgrad, decoupled, grad dtype): every storage option value
#: and the configurations people use (bf16 moments nearest/stochastic, remainders + bf16 moments); the
#: full cross product is the slow test below (each combination is a Numba compilation)
COVER = [(1, 1, False, False, False, True, "float32"), (1, 1, True, False, True, True, "bfloat16"),
         (2, 2, False, False, False, False, "float16"), (1, 0, True, False, False, True, "float32"),
         (0, 2, False, False, True, True, "bfloat16"), (0, 0, False, True, False, True, "bfloat16"),
         (1, 1, True, True, False, True, "bfloat16"), (2, 1, True, True, True, False, "float32"),
         (3, 4, False, False, True, True, "float32"), (3, 3, False, True, False, True, "bfloat16"),
         (4, 1, True, False, True, False, "bfloat16")]


@pytest.mark.parametrize("m_kind,v_kind,sr,rem,amsgrad,decoupled,gkind", COVER)
@settings(max_examples=8, deadline=None)
@given(maximize=st.booleans(), sizes=st.lists(st.integers(1, 3000), min_size=1, max_size=4),
       base=st.sampled_from([0, 64, 2**33 + 128]), step=st.integers(1, 2**40), seed=st.integers(0, 2**64 - 1),
       threads=st.integers(1, 2), specials=st.booleans())
def test_cpu_kernel_matches_the_reference(m_kind, v_kind, sr, rem, amsgrad, decoupled, gkind, maximize, sizes, base,
                                          step, seed, threads, specials):
    _compare(m_kind, v_kind, sr, rem, amsgrad, decoupled, maximize, gkind, sizes, base, step, seed, threads,
             specials)


@pytest.mark.slow
@pytest.mark.parametrize("m_kind", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("v_kind", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("sr", [False, True])
@pytest.mark.parametrize("rem", [False, True])
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("gkind", ["float32", "bfloat16", "float16"])
def test_every_combination_matches_the_reference(m_kind, v_kind, sr, rem, amsgrad, decoupled, gkind):
    for seed in range(2):
        _compare(m_kind, v_kind, sr, rem, amsgrad, decoupled, bool(seed), gkind, [37, 4099, 1], 64 * seed,
                 seed + 1, seed, 2, bool(seed))


def _compare(m_kind, v_kind, sr, rem, amsgrad, decoupled, maximize, gkind, sizes, base, step, seed, threads,
             specials):
    rng = np.random.default_rng([m_kind, v_kind, sr, rem, *sizes])
    pdtype = "bfloat16" if rem or m_kind == 2 else "float32"  # one param dtype per combination: one compilation
    align = P.FP8_BLOCK if (m_kind in P.FP8 or v_kind in P.FP8) else 64  # fp8: tensors start on blocks
    offsets = np.cumsum([0] + [-(-s // align) * align for s in sizes])[:-1].astype(np.int64)
    n = int(offsets[-1] + sizes[-1])
    params = [rng.standard_normal(s).astype(np.float32).astype(STORE[1] if pdtype == "bfloat16" else np.float32)
              for s in sizes]
    grads = [(rng.standard_normal(s) * 3).astype(np.float32).astype(np.dtype(gkind) if gkind != "bfloat16" else BF16)
             for s in sizes]
    if specials:
        grads[0].reshape(-1)[:1] = np.inf
        grads[-1].reshape(-1)[-1:] = np.float32(1e-41)
    st_ = _state(n, m_kind, v_kind, amsgrad, rem, pdtype, rng, base)
    if pdtype == "bfloat16" and not rem:
        st_["master"] = np.zeros(n, np.float32)
        for p, o in zip(params, offsets):
            st_["master"][o: o + p.size] = p.astype(np.float32)
    s = R.host_scalars(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1, step=3, decoupled=decoupled,
                       grad_scale=0.5)
    flags = K.Flags(decoupled=decoupled, amsgrad=amsgrad, maximize=maximize, key=P.step_key(seed, step, 3))
    outs = []
    for kernel in ("reference", "cpu"):
        ps = [p.copy() for p in params]
        buf = _buffers(st_, n, pdtype, m_kind, v_kind, sr, rem, base)
        batch = K.Batch(K.pointers([p.view(np.uint16) if pdtype == "bfloat16" else p for p in ps]),
                        K.pointers([g.view(np.uint16) if g.dtype.itemsize == 2 else g for g in grads]),
                        offsets, np.asarray(sizes, np.int64), gkind, b"t")
        with limited(min(threads, max_threads())):
            K.get(kernel).adam_step(buf, batch, s, flags)
        outs.append(([p.tobytes() for p in ps], *(None if a is None else a.tobytes() for a in
                                                   (buf.master, buf.exp_avg, buf.exp_avg_sq, buf.max_exp_avg_sq,
                                                    buf.m_scale, buf.v_scale, buf.vmax_scale))))
    assert outs[0] == outs[1]


# ---------------------------------------------------------------------- the optimizers
import npadam  # noqa: E402
from npadam import _placement  # noqa: E402
from npadam.tiers.transfer import HostCopier  # noqa: E402

SIZES = [37, 300, 4097, 1, 2000]


def _run(kernel="cpu", dtype=BF16, steps=6, groups=True, tier=None, sizes=SIZES, threads=None, **kw):
    """A few steps with grads that do not depend on the params (so runs of different precision see the
    same grads): an inf step (skipped), a step where one param has no grad, amsgrad off/on per group."""
    r = np.random.default_rng(0)
    ps = [r.standard_normal(n).astype(np.float32).astype(dtype) for n in sizes]
    spec = [{"params": ps[:2]}, {"params": ps[2:], "weight_decay": 0.0, "amsgrad": True}] if groups else ps
    if tier is not None:
        with _placement.standin(HostCopier, piece_elems=tier):
            opt = npadam.AdamW(spec, lr=1e-2, kernel=kernel, offload_fraction=1.0, num_threads=threads, **kw)
    else:
        opt = npadam.AdamW(spec, lr=1e-2, kernel=kernel, num_threads=threads, **kw)
    for k in range(steps):
        g = [(np.random.default_rng(100 + k).standard_normal(n) * 3).astype(np.float32).astype(dtype) for n in sizes]
        if k == 2:
            g[0][5] = np.inf
        if k == 4:
            g[1] = None
        opt.step(g)
    return ps, opt


def _bits(ps, opt):
    sd = opt.state_dict()
    return ([p.tobytes() for p in ps],
            {(i, k): np.asarray(v).tobytes() for i, st_ in sd["state"].items() for k, v in st_.items()})


OPTIONS = [dict(exp_avg_dtype="float8_e4m3fn", exp_avg_sq_dtype="float8_e5m2", main_params_dtype="float16"),
           dict(exp_avg_dtype="float8_e4m3fn", exp_avg_sq_dtype="float8_e4m3fn", store_param_remainders=True),
           dict(exp_avg_dtype="bfloat16", exp_avg_sq_dtype="bfloat16"),
           dict(exp_avg_dtype="bfloat16", exp_avg_sq_dtype="bfloat16", rounding="stochastic", seed=11),
           dict(exp_avg_dtype="float16", exp_avg_sq_dtype="bfloat16", rounding="stochastic"),
           dict(store_param_remainders=True),
           dict(store_param_remainders=True, exp_avg_dtype="bfloat16", exp_avg_sq_dtype="bfloat16",
                rounding="stochastic", seed=2**63 + 5)]


SLOW = pytest.mark.slow  # every option set compiles its own kernels: CI runs a covering few (each ~5 s cold)


@pytest.mark.parametrize("kw", [OPTIONS[0], pytest.param(OPTIONS[1], marks=SLOW), pytest.param(OPTIONS[2], marks=SLOW),
                                pytest.param(OPTIONS[3], marks=SLOW), OPTIONS[4], pytest.param(OPTIONS[5], marks=SLOW),
                                OPTIONS[6]],
                         ids=["fp8", "fp8-rem", "bf16", "bf16-sr", "fp16-bf16sr", "rem", "rem-bf16-sr"])
def test_optimizer_on_the_numba_kernel_equals_the_reference(kw):
    """Groups, per-param step counts, an inf step, amsgrad: the optimizer on the Numba kernel and on the
    NumPy reference agree bit for bit, state dicts included."""
    assert _bits(*_run("reference", **kw)) == _bits(*_run("cpu", **kw))


@pytest.mark.parametrize("kw", [pytest.param(OPTIONS[3], marks=SLOW), OPTIONS[6], pytest.param(OPTIONS[0], marks=SLOW)],
                         ids=["bf16-sr", "rem-bf16-sr", "fp8"])
def test_stochastic_rounding_does_not_depend_on_threads_or_placement(kw):
    """The random words are keyed on (seed, update, buffer, element): a parallel build on 1 or 2
    threads, and the state streamed through the offload pipeline in small pieces, give the same bits."""
    big = [300_001, 64, 5]
    base = _bits(*_run(sizes=big, threads=1, steps=3, **kw))
    assert _bits(*_run(sizes=big, threads=2, steps=3, **kw)) == base
    assert _bits(*_run(sizes=big, tier=4096, steps=3, **kw)) == base


@pytest.mark.parametrize("kw", [OPTIONS[0], OPTIONS[6], pytest.param(OPTIONS[4], marks=SLOW)],
                         ids=["fp8-fp16masters", "rem-bf16-sr", "fp16-bf16sr"])
def test_state_in_files_keeps_its_precision_and_bits(kw, tmp_path):
    """nvme_offload_fraction with precision-aware state (was refused: the disk tier stored float32):
    the files hold the state in its own dtypes (fp8 codes, 16-bit moments and masters, int16
    remainders) and the fp8 block scales one float32 per block; amsgrad's max and its scales appear
    there at the first step. Bit for bit the in-memory optimizer, params and state dicts, with the
    state in files alone and behind the host tier of GPU params (host memory standing in)."""
    big = [300_001, 64, 5, 4097]
    want = _bits(*_run(sizes=big, steps=4, **kw))
    disk = dict(nvme_offload_fraction=0.7, nvme_offload_dir=tmp_path, nvme_staging_bytes=1 << 16)
    ps, opt = _run(sizes=big, steps=4, **disk, **kw)
    assert _bits(ps, opt) == want
    eng = opt._engine
    assert eng.disk
    for bi, (n1, ds) in eng.disk.items():
        assert n1 % eng.precision.align == 0
        for name in ds.names:  # each file in the state's storage dtype
            assert ds.dtypes[name] == eng.bufs[bi].__dict__[name].dtype, (name, ds.dtypes[name])
            assert ds.blocks[name] == (256 if name.endswith("_scale") else 1)
    assert any("max_exp_avg_sq" in ds.names for _, ds in eng.disk.values())
    assert _bits(*_run(sizes=big, steps=4, tier=4096, **disk, **kw)) == want


def test_fp16_masters_on_the_parallel_build_equal_the_reference():
    """Buffers of 2**18 elements or more run the parallel build; with fp16 masters it did not compile
    (the master's local variable overwrote the prange index). Streamed through the offload pipeline
    the fp16 masters were stepped as float32 ones (the pieces' state lost the master kind)."""
    big = [300_001, 64, 5]
    want = _bits(*_run("reference", sizes=big, steps=3, main_params_dtype="float16"))
    assert _bits(*_run(sizes=big, threads=2, steps=3, main_params_dtype="float16")) == want
    assert _bits(*_run(sizes=big, tier=4096, steps=3, main_params_dtype="float16")) == want


@pytest.mark.parametrize("kinds", [("float8_e4m3fn", "float8_e4m3fn"), ("float8_e5m2", "bfloat16")])
def test_nan_payloads_in_grads_give_the_references_fp8_scales(kinds):
    """NaN grads with payloads (skip_nonfinite=False): the pass fed the new moments to the fp8 block max
    uncanonicalized, so a block's scale kept the grad's NaN payload where the reference's is 0x7FC00000."""
    out = {}
    for kernel in ("reference", "cpu"):
        p = np.ones(600, np.float32)
        opt = npadam.AdamW([p], lr=1e-2, kernel=kernel, skip_nonfinite=False, amsgrad=True,
                           exp_avg_dtype=kinds[0], exp_avg_sq_dtype=kinds[1])
        g = np.full(600, 0.5, np.float32)
        g[3] = np.uint32(0x7FC00123).view(np.float32)
        g[300] = np.uint32(0xFFC00777).view(np.float32)
        opt.step([g])
        out[kernel] = _bits([p], opt)
    assert out["cpu"] == out["reference"]


def test_seeds_change_only_the_rounding():
    a = _bits(*_run(**OPTIONS[3]))
    assert _bits(*_run(**OPTIONS[3])) == a
    b = _bits(*_run(**{**OPTIONS[3], "seed": 12}))
    assert a != b and a[0] != b[0]


def test_remainders_follow_the_fp32_master_run_bit_for_bit():
    """With the same grads, the master a bf16 param and its remainder reconstruct is the fp32-master run's
    master at every step, and the param is that master's nearest bf16 (ties away from zero)."""
    r = np.random.default_rng(5)
    a = [r.standard_normal(n).astype(np.float32).astype(BF16) for n in SIZES]
    b = [x.copy() for x in a]
    oa = npadam.AdamW(a, lr=1e-2)
    ob = npadam.AdamW(b, lr=1e-2, store_param_remainders=True)
    for k in range(8):
        g = [(np.random.default_rng(k).standard_normal(n) * 2).astype(np.float32).astype(BF16) for n in SIZES]
        oa.step(g)
        ob.step(g)
        sa, sb = oa.state_dict()["state"], ob.state_dict()["state"]
        for i, (pa, pb) in enumerate(zip(a, b)):
            master = P.join_remainder(pb.view(np.uint16), sb[i]["param_remainder"])
            assert master.tobytes() == sa[i]["master"].tobytes()
            assert np.array_equal(pb.view(np.uint16), P.split_remainder(sa[i]["master"])[0])
            assert sa[i]["exp_avg"].tobytes() == sb[i]["exp_avg"].tobytes()


def test_state_takes_the_bytes_it_says():
    """bf16 param + remainder + bf16 m and v: 6 bytes of state per param (8 with the param)."""
    ps, opt = _run(groups=False, store_param_remainders=True, exp_avg_dtype="bfloat16", exp_avg_sq_dtype="bfloat16",
                   steps=1)
    buf = opt._engine.bufs[0]
    assert (buf.master.dtype, buf.exp_avg.dtype, buf.exp_avg_sq.dtype) == (np.int16, np.uint16, np.uint16)
    assert buf.master.nbytes + buf.exp_avg.nbytes + buf.exp_avg_sq.nbytes == 6 * buf.size


def test_state_dicts_keep_their_dtypes_and_convert_only_when_asked():
    kw = dict(store_param_remainders=True, exp_avg_dtype="bfloat16", exp_avg_sq_dtype="bfloat16")
    ps, opt = _run(**kw)
    sd = opt.state_dict()
    st0 = sd["state"][0]
    assert st0["exp_avg"].dtype == BF16 and st0["param_remainder"].dtype == np.int16 and "master" not in st0
    assert sd["npadam"]["state_precision"] == {"exp_avg_dtype": "bfloat16", "exp_avg_sq_dtype": "bfloat16",
                                               "rounding": "nearest", "store_param_remainders": True, "seed": 0,
                                               "main_params_dtype": "float32"}
    # the same precision: bit for bit, and the runs continue identically
    ps2, opt2 = _run(steps=0, **kw)
    for p, q in zip(ps2, ps):
        p[...] = q
    opt2.load_state_dict(sd)
    assert _bits(ps2, opt2) == _bits(ps, opt)
    # fp32 state into bf16 moments + remainders: refused, then converted on request
    full, ofull = _run()
    with pytest.raises(ValueError, match="exp_avg is float32 and this optimizer stores it as bfloat16"):
        opt2.load_state_dict(ofull.state_dict())
    assert _bits(ps2, opt2) == _bits(ps, opt)  # nothing changed
    opt2.load_state_dict(ofull.state_dict(), convert=True)
    sd2 = opt2.state_dict()["state"]
    for i, p in enumerate(ps2):
        master = ofull.state_dict()["state"][i]["master"]
        bits, rem = P.split_remainder(master)
        assert np.array_equal(p.view(np.uint16), bits) and np.array_equal(sd2[i]["param_remainder"], rem)
        assert np.array_equal(sd2[i]["exp_avg"].view(np.uint16), P.narrow(ofull.state_dict()["state"][i]["exp_avg"],
                                                                          P.BF16))
    # remainders into fp32 masters: refused, then joined with the param
    with pytest.raises(ValueError, match="param_remainder"):
        ofull.load_state_dict(sd)
    with pytest.raises(ValueError, match="convert=True"):
        ofull.load_state_dict(sd)
    for p, q in zip(full, ps):
        p[...] = q
    ofull.load_state_dict(sd, convert=True)
    for i, p in enumerate(ps):
        want = P.join_remainder(p.view(np.uint16), sd["state"][i]["param_remainder"])
        assert ofull.state_dict()["state"][i]["master"].tobytes() == want.tobytes()


@pytest.mark.parametrize("kw,err,match", [
    (dict(exp_avg_dtype="int8"), ValueError, "exp_avg_dtype must be float32, bfloat16, float16, float8_e4m3fn"),
    (dict(exp_avg_sq_dtype="float8"), ValueError, "fp8 needs its format"),
    (dict(exp_avg_dtype=3), TypeError, "exp_avg_dtype must be a dtype"),
    (dict(rounding="up"), ValueError, "rounding must be one of"),
    (dict(rounding="stochastic"), ValueError, "rounds bfloat16 moments"),
    (dict(exp_avg_dtype="fp16", rounding="stochastic"), ValueError, "rounds bfloat16 moments"),
    (dict(seed=-1), ValueError, "seed must be an integer"),
    (dict(seed=2**64), ValueError, "seed must be an integer"),
    (dict(seed=1.5), ValueError, "seed must be an integer"),
    (dict(store_param_remainders="yes"), TypeError, "store_param_remainders"),
    (dict(main_params_dtype="bfloat16"), ValueError, "main_params_dtype must be float32 or float16"),
    (dict(main_params_dtype="float16", store_param_remainders=True), ValueError, "exclude each other"),
])
def test_bad_precision_options_are_named(kw, err, match):
    with pytest.raises(err, match=match):
        npadam.AdamW([np.ones(4, np.float32)], **kw)


def test_unsupported_combinations_are_refused(tmp_path):
    with pytest.raises(TypeError, match="exp_avg_dtype"):  # not an SGD option
        npadam.SGD([np.ones(4, np.float32)], momentum=0.9, exp_avg_dtype="bfloat16")
    torch = pytest.importorskip("torch")
    import npadam.torch as nt

    with pytest.raises(ValueError, match="Adam and AdamW"):
        nt.SGD([torch.nn.Parameter(torch.ones(4))], momentum=0.9, exp_avg_dtype="bfloat16")


def test_torch_front_end_with_bf16_moments_and_remainders():
    torch = pytest.importorskip("torch")
    import npadam.torch as nt

    def train(kernel, edit=False):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(16, 33), torch.nn.GELU(), torch.nn.Linear(33, 5)).to(torch.bfloat16)
        opt = nt.AdamW(model.parameters(), lr=1e-2, kernel=kernel, exp_avg_dtype=torch.bfloat16,
                       exp_avg_sq_dtype="bf16", store_param_remainders=True, rounding="stochastic", seed=1)
        x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
        y = torch.randn(64, 5, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
        for k in range(4):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            if edit and k == 1:
                opt.state[model[0].weight]["exp_avg"].zero_()  # a view of npadam's bf16 state
        return model, opt

    m0, o0 = train("reference")
    m1, o1 = train("cpu")
    for a, b in zip(m0.parameters(), m1.parameters()):
        assert torch.equal(a, b)
    st = o1.state[m1[0].weight]
    assert st["exp_avg"].dtype == torch.bfloat16 and st["param_remainder"].dtype == torch.int16
    m2, o2 = train("cpu", edit=True)
    assert not torch.equal(m2[0].weight, m1[0].weight)  # the edit of the view reached the state
    sd = o1.state_dict()
    assert sd["state"][0]["exp_avg"].dtype == torch.bfloat16
    m3, o3 = train("cpu")
    o3.load_state_dict(sd)
    assert all(torch.equal(o3.state[p3]["exp_avg"], o1.state[p1]["exp_avg"])
               for p1, p3 in zip(m1.parameters(), m3.parameters()))


# ---------------------------------------------------------------------- fp8
def test_fp8_codes_match_ml_dtypes_in_the_kernel():
    """The Numba kernel's fp8 conversions: every code decodes as ml_dtypes does, and encoding random,
    subnormal, tie (midpoint) and representable values in range rounds as ml_dtypes does."""
    from numba import njit

    from npadam.kernels import cpu

    @njit
    def decode(kind):
        out = np.empty(256, np.float32)
        for c in range(256):
            out[c] = cpu.fp8_decode(np.uint8(c), kind)
        return out

    @njit
    def encode(x, kind):
        out = np.empty(x.size, np.uint8)
        for i in range(x.size):
            out[i] = cpu.fp8_encode(x[i], kind)
        return out

    for kind in P.FP8:
        ref = np.arange(256, dtype=np.uint8).view(P.fp8_dtype(kind)).astype(np.float32)
        got = decode(kind)
        assert np.array_equal(np.isnan(got), np.isnan(ref))
        assert np.array_equal(got[~np.isnan(ref)].view(np.uint32), ref[~np.isnan(ref)].view(np.uint32))
        m = float(P.FP8_MAX[kind])
        vals = np.unique(ref[np.isfinite(ref)])
        rng = np.random.default_rng(kind)
        x = np.concatenate([rng.uniform(-m, m, 50_000), rng.standard_normal(50_000) * 1e-3,
                            rng.standard_normal(50_000) * 1e-7, vals[np.abs(vals) <= m],
                            (vals[1:].astype(np.float64) + vals[:-1]) / 2, [np.nan, -np.nan, 0.0, -0.0]])
        x = x.astype(np.float32)
        x = x[np.isnan(x) | (np.abs(x) <= m)]
        want = np.where(np.isnan(x), P.FP8_NAN[kind], x.astype(P.fp8_dtype(kind)).view(np.uint8))
        assert np.array_equal(encode(x, kind), want)


def test_quantize_blocks_and_scales():
    """One scale per 256 elements; a zero block stays zero; a block's largest magnitude maps to the
    format's largest value; the error is within half a step of the block's grid."""
    x = np.random.default_rng(3).standard_normal(600).astype(np.float32)
    x[256:512] = 0
    codes, scales = P.quantize(x, P.F8E4M3)
    assert scales.shape == (3,) and scales[1] == 0 and not codes[256:512].any()
    assert scales[0] == np.float32(np.abs(x[:256]).max() / np.float32(448))
    assert scales[2] == np.float32(np.abs(x[512:]).max() / np.float32(448))  # the partial block's own max
    y = P.dequantize(codes, scales, P.F8E4M3)
    assert np.abs(y - x).max() <= np.abs(x).max() / 448 * 16  # e4m3: 3 mantissa bits near the top


def test_fp8_state_is_a_byte_per_moment_and_converts():
    ps, opt = _run(groups=False, exp_avg_dtype="float8_e4m3fn", exp_avg_sq_dtype="float8_e5m2", steps=2)
    buf = opt._engine.bufs[0]
    assert buf.exp_avg.dtype == np.uint8 and buf.m_scale.size == buf.size // 256
    assert all(s.offset % 256 == 0 for s in opt._engine.layout.slots)  # blocks never span tensors
    sd = opt.state_dict()
    st0 = sd["state"][2]
    assert st0["exp_avg"].dtype.name == "float8_e4m3fn" and st0["exp_avg_scale"].shape == (-(-4097 // 256),)
    full, ofull = _run(groups=False, steps=2)
    with pytest.raises(ValueError, match="convert=True"):
        opt.load_state_dict(ofull.state_dict())
    opt.load_state_dict(ofull.state_dict(), convert=True)
    codes, scales = P.quantize(ofull.state_dict()["state"][2]["exp_avg"], P.F8E4M3)
    st = opt.state_dict()["state"][2]
    assert np.array_equal(st["exp_avg"].view(np.uint8), codes) and np.array_equal(st["exp_avg_scale"], scales)
    ofull.load_state_dict(sd)  # fp8 into float32 state: widening, no convert needed
    bad = {**sd, "state": {**sd["state"], 0: {k: v for k, v in sd["state"][0].items() if k != "exp_avg_scale"}}}
    with pytest.raises(ValueError, match="no exp_avg_scale"):
        opt.load_state_dict(bad)


def test_torch_fp8_state_with_offload_and_torch_save(tmp_path):
    """npadam.torch with fp8 moments (and amsgrad): reference == Numba == the offloaded stand-in;
    state[p] of an offloaded param hands out fp8 tensors (regression: their digest once failed),
    and the state dict survives torch.save / torch.load(weights_only=True)."""
    torch = pytest.importorskip("torch")
    import npadam.torch as nt

    def train(kernel, off=0.0):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(16, 300), torch.nn.GELU(), torch.nn.Linear(300, 5))
        with _placement.standin(HostCopier, piece_elems=512):
            opt = nt.AdamW(model.parameters(), lr=1e-2, kernel=kernel, exp_avg_dtype=torch.float8_e4m3fn,
                           exp_avg_sq_dtype="float8_e5m2", offload_fraction=off, amsgrad=True)
        x, y = torch.randn(64, 16), torch.randn(64, 5)
        for _ in range(4):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        return model, opt

    runs = [train("reference"), train("cpu"), train("cpu", 0.5)]
    for m, _ in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0][0].parameters(), m.parameters()))
    (m1, o1), (m2, o2) = runs[1], runs[2]
    st = o2.state[m2[0].weight]
    assert st["exp_avg"].dtype == torch.float8_e4m3fn and st["exp_avg_scale"].shape == (-(-4800 // 256),)
    assert torch.equal(st["exp_avg"].view(torch.uint8), o1.state[m1[0].weight]["exp_avg"].view(torch.uint8))
    torch.save(o1.state_dict(), tmp_path / "sd.pt")
    o2.load_state_dict(torch.load(tmp_path / "sd.pt", weights_only=True))
    assert torch.equal(o2.state[m2[0].weight]["exp_avg_sq_scale"], o1.state[m1[0].weight]["exp_avg_sq_scale"])


def test_fp16_masters_round_the_param_from_the_master():
    """main_params_dtype="float16": the master of a bf16 param is float16 and the param its rounding
    (so the master check holds across steps); a float32-master state dict converts on request."""
    ps, opt = _run(groups=False, main_params_dtype="float16", steps=3)
    st = opt.state_dict()["state"]
    for i, p in enumerate(ps):
        assert st[i]["master"].dtype == np.float16
        assert np.array_equal(p.view(np.uint16), st[i]["master"].astype(np.float32).astype(BF16).view(np.uint16))
    full, ofull = _run(groups=False, steps=3)
    with pytest.raises(ValueError, match="master is float32 and this optimizer stores it as float16"):
        opt.load_state_dict(ofull.state_dict())
    opt.load_state_dict(ofull.state_dict(), convert=True)
    assert np.array_equal(opt.state_dict()["state"][2]["master"], ofull.state_dict()["state"][2]["master"]
                          .astype(np.float16))


@pytest.mark.parametrize("kw", [dict(exp_avg_dtype="bfloat16", exp_avg_sq_dtype="bfloat16"),
                                dict(exp_avg_dtype="float8_e4m3fn", exp_avg_sq_dtype="float8_e5m2", amsgrad=True)],
                         ids=["bf16", "fp8"])
def test_torch_state_entries_set_by_the_caller_keep_the_precision(kw, tmp_path):
    """Review finding: ``opt.state[p] = {}`` (or a replaced entry) wrote float32 arrays into 16-bit / fp8
    state as raw bits, twice or four times the slot's length: the next params' moments were zeroed
    or garbled. Now a reset writes zeros in the storage dtype, an entry of the state's own dtype is
    taken bit for bit (fp8 with its scales), float32 values are rounded (fp8: quantized per block);
    the other params' state is untouched, in memory and in files."""
    torch = pytest.importorskip("torch")
    import npadam.torch as nt

    for disk in ({}, dict(nvme_offload_fraction=1.0, nvme_offload_dir=tmp_path)):
        torch.manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(n)) for n in (300, 700)]
        opt = nt.AdamW(ps, lr=1e-2, **kw, **disk)
        for _ in range(2):
            for p in ps:
                p.grad = torch.randn_like(p)
            opt.step()
        before = opt.state_dict()["state"]
        kept = {k: v.clone() for k, v in opt.state[ps[0]].items()}
        opt.state[ps[0]] = {}  # start afresh: zeros, step 0
        after = opt.state_dict()["state"]
        for k, v in before[1].items():  # the other param's state: bit for bit
            assert torch.equal(torch.as_tensor(v).view(-1).view(torch.uint8), torch.as_tensor(after[1][k]).view(-1).view(torch.uint8)), k
        assert int(after[0]["step"]) == 0 and not after[0]["exp_avg"].float().any()
        opt.state[ps[0]] = kept  # its own tensors back: bit for bit
        again = opt.state_dict()["state"][0]
        for k, v in before[0].items():
            assert torch.equal(torch.as_tensor(v).view(-1).view(torch.uint8), torch.as_tensor(again[k]).view(-1).view(torch.uint8)), k
        opt.state[ps[0]] = {"step": kept["step"], "exp_avg": torch.full((300,), 0.5), "exp_avg_sq": torch.full((300,), 0.25),
                            **({"max_exp_avg_sq": torch.full((300,), 0.25)} if kw.get("amsgrad") else {})}
        got = opt.state_dict()["state"][0]

        def values(k):  # fp8: codes times their block's scale
            v = got[k].float()
            return v * got[k + "_scale"].repeat_interleave(256)[:v.numel()] if k + "_scale" in got else v
        assert values("exp_avg").eq(0.5).all() and values("exp_avg_sq").eq(0.25).all()  # exact in every kind
        assert got["exp_avg"].dtype == before[0]["exp_avg"].dtype
        with pytest.raises(ValueError, match="must be finite and >= 0"):
            opt.state[ps[0]] = {"step": kept["step"], "exp_avg": torch.zeros(300), "exp_avg_sq": torch.full((300,), -1.0)}
            opt.step()
        opt.close()
