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
def _state(n, m_kind, v_kind, amsgrad, rem, pdtype, rng, base):
    def moment(kind, scale):
        x = (rng.standard_normal(n) * scale).astype(np.float32)
        if kind == P.F32:
            return x
        return P.narrow(x, kind)
    v = np.abs(moment(P.F32, 1e-3)) if v_kind == P.F32 else P.narrow(np.abs(rng.standard_normal(n) * 1e-3)
                                                                       .astype(np.float32), v_kind)
    vmax = None
    if amsgrad:
        vmax = P.narrow(P.widen(v, v_kind) * np.float32(1.5), v_kind) if v_kind else P.widen(v, 0) * np.float32(1.5)
    master = None
    if pdtype != "float32":
        master = rng.integers(-2**15, 2**15, n).astype(np.int16) if rem else None
    return dict(m=moment(m_kind, 1e-2), v=v, vmax=vmax, master=master)


def _buffers(st_, n, pdtype, m_kind, v_kind, sr, rem, base):
    def cp(a):
        return None if a is None else a.copy()
    return K.BufferState(size=n, master=cp(st_["master"]), exp_avg=cp(st_["m"]), exp_avg_sq=cp(st_["v"]),
                         max_exp_avg_sq=cp(st_["vmax"]), pdtype=pdtype, m_kind=m_kind, v_kind=v_kind,
                         stochastic=sr, remainders=rem, base=base)


#: (m_kind, v_kind, stochastic, remainders, amsgrad, decoupled, grad dtype): every storage option value
#: and the configurations people use (bf16 moments nearest/stochastic, remainders + bf16 moments); the
#: full cross product is the slow test below (each combination is a Numba compilation)
COVER = [(1, 1, False, False, False, True, "float32"), (1, 1, True, False, True, True, "bfloat16"),
         (2, 2, False, False, False, False, "float16"), (1, 0, True, False, False, True, "float32"),
         (0, 2, False, False, True, True, "bfloat16"), (0, 0, False, True, False, True, "bfloat16"),
         (1, 1, True, True, False, True, "bfloat16"), (2, 1, True, True, True, False, "float32")]


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
@pytest.mark.parametrize("m_kind", [0, 1, 2])
@pytest.mark.parametrize("v_kind", [0, 1, 2])
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
    offsets = np.cumsum([0] + [-(-s // 64) * 64 for s in sizes])[:-1].astype(np.int64)
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
                                                   (buf.master, buf.exp_avg, buf.exp_avg_sq, buf.max_exp_avg_sq))))
    assert outs[0] == outs[1]
