"""Vectorized text formatting of float64 and int64 columns, exactly as ``repr`` prints them.

``repr(float)`` prints the shortest decimal that reads back as the same float64
(David Gay's algorithm, one Python call per value: ~0.3 s per million values).
Here the same digits are found with array operations:

1. Scale ``|x|`` to ``S = |x| * 10**(16 - e)`` in ``[1e16, 1e17)`` in 80-bit long
   double (powers of ten up to ``10**27`` are exact there, so ``S`` carries a single
   rounding, |error| < 0.004).
2. A ``p``-digit decimal is a multiple of ``m = 10**(17 - p)`` in that scaled
   domain; it reads back as ``x`` iff it lies within half an ulp of ``x`` (``hs``,
   also scaled). The nearest multiple is tried for p = 16, 15, ... while it still
   reads back; the last success is the shortest (and, as in ``repr``, the nearest).
3. Any value whose answer could change within the error bound of ``S`` (near a
   rounding tie or a round-trip boundary), powers of two (asymmetric rounding
   interval), values outside ``[1e-11, 1e26)``, zeros and non-finite values are
   handed to ``repr`` itself. So is everything when ``long double`` is not at least
   the 64-bit-mantissa x87 format.

The text of a column is a ``uint8`` matrix stored column-major, shape ``(width, n)``:
column ``i`` holds the characters of value ``i``, NUL-padded. ``join_rows`` stacks
the fields of a row, transposes once and squeezes the NULs out. Output equals
``repr`` byte for byte (tests compare them on random and adversarial values).
"""

from __future__ import annotations

import numpy as np

__all__ = ["float_field", "int_field", "join_rows", "format_floats"]

_NUL = 0
_FAST_OK = np.finfo(np.longdouble).nmant >= 63
_EPS = 0.01                      # > 2x the worst error of S (0.0039) in scaled units
_LO, _HI = 1e-11, 1e26           # fast path range: all powers of ten used stay <= 10**27
_P10_INT = np.array([10 ** k for k in range(19)], dtype=np.int64)
_P10_F64 = np.array([float(10 ** k) for k in range(28)])


def _ld_powers() -> np.ndarray:
    out = np.empty(28, dtype=np.longdouble)
    p = np.longdouble(1)
    for k in range(28):        # built by exact multiplication, never through float64
        out[k] = p
        p = p * np.longdouble(10)
    return out


_P10_LD = _ld_powers()


def _scale(v: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``v * 10**k`` in long double with one rounding, for ``|k| <= 27``."""
    k = np.clip(k, -27, 27)
    neg = k < 0
    if not neg.any():
        return v * _P10_LD[k]
    out = v * _P10_LD[np.maximum(k, 0)]
    out[neg] = v[neg] / _P10_LD[-k[neg]]
    return out


def _ndigits(v: np.ndarray) -> np.ndarray:
    """Number of decimal digits of non-negative int64 values (1 for 0)."""
    return np.maximum(np.searchsorted(_P10_INT, v, side="right"), 1)


def shortest_digits(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For finite, non-zero float64 ``x``: ``(digits, exp10, fast)``.

    ``|x|`` prints as the integer ``digits`` times ``10**exp10`` (no trailing zeros in
    ``digits``) wherever ``fast`` is True; elsewhere the caller must use ``repr``.
    """
    n = x.size
    digits = np.zeros(n, dtype=np.int64)
    exp10 = np.zeros(n, dtype=np.int64)
    fast = np.zeros(n, dtype=bool)
    if not _FAST_OK or n == 0:
        return digits, exp10, fast
    a = np.abs(x)
    bits = a.view(np.uint64)
    cand = (a >= _LO) & (a < _HI) & ((bits & np.uint64((1 << 52) - 1)) != 0)
    idx = np.flatnonzero(cand)
    a = a[idx]
    aL = a.astype(np.longdouble)
    e = np.floor(np.log10(a)).astype(np.int64)
    S = _scale(aL, 16 - e)
    for _ in range(2):          # log10 may be one off next to a power of ten
        off = np.flatnonzero((S >= 1e17) | (S < 1e16))
        if off.size == 0:
            break
        e[off] += np.where(S[off] >= 1e17, 1, -1)
        S[off] = _scale(aL[off], 16 - e[off])
    good = (S >= 1e16) & (S < 1e17)
    s_int = S.astype(np.int64)                                   # truncation, S > 0
    s_frac = (S - s_int.astype(np.longdouble)).astype(np.float64)
    k = np.clip(16 - e, -27, 27)      # half an ulp of x, scaled (float64 is precise enough)
    hs = np.where(k >= 0, np.spacing(a) * _P10_F64[np.maximum(k, 0)],
                  np.spacing(a) / _P10_F64[np.maximum(-k, 0)]) * 0.5

    best = np.where(s_frac > 0.5, s_int + 1, s_int)             # p = 17 always reads back
    best_p = np.full(idx.size, 17, dtype=np.int64)
    good &= np.abs(s_frac - 0.5) >= _EPS

    def attempt(at: np.ndarray, p: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
        """Try the nearest ``p``-digit decimal for elements ``at``; record hits."""
        m = _P10_INT[17 - p] if isinstance(p, np.ndarray) else int(_P10_INT[17 - p])
        si, sf, h = s_int[at], s_frac[at], hs[at]
        q = si // m
        r = si - q * m
        t = (2 * r - m) * 0.5 + sf           # S minus the midpoint between q*m and (q+1)*m
        up = t > 0
        dist = np.where(up, (m - r) - sf, r + sf)
        ambiguous = (np.abs(t) < _EPS) | (np.abs(dist - h) < _EPS)
        good[at[ambiguous]] = False
        hit = (dist < h) & ~ambiguous
        best[at[hit]] = (q + up)[hit]
        best_p[at[hit]] = p[hit] if isinstance(p, np.ndarray) else p
        return hit, ambiguous

    # p = 16 and 15 settle most values; the rest (short decimals) by bisection on p.
    active = np.flatnonzero(good)
    for p in (16, 15):
        hit, _ = attempt(active, p)
        active = active[hit]
    lo = np.zeros(active.size, dtype=np.int64)       # p = lo fails (0: nothing shorter)
    hi = np.full(active.size, 15, dtype=np.int64)    # p = hi reads back
    while active.size:
        mid = (lo + hi) // 2
        hit, ambiguous = attempt(active, mid)
        hi = np.where(hit, mid, hi)
        lo = np.where(hit, lo, mid)
        keep = (hi - lo > 1) & ~ambiguous
        active, lo, hi = active[keep], lo[keep], hi[keep]
    exp_ = e - best_p + 1                # value = best * 10**(e - p + 1)
    # strip trailing zeros (a carry such as 9.99..95 -> 10**p)
    while True:
        z = good & (best % 10 == 0) & (best != 0)
        if not z.any():
            break
        best = np.where(z, best // 10, best)
        exp_ = np.where(z, exp_ + 1, exp_)
    sel = idx[good]
    digits[sel] = best[good]
    exp10[sel] = exp_[good]
    fast[sel] = True
    return digits, exp10, fast


def _digit_columns(v: np.ndarray, width: int, keep: np.ndarray) -> np.ndarray:
    """Right-aligned ASCII digits of non-negative ints: a ``(width, n)`` text matrix.

    Position ``j`` is NUL where ``j < width - keep`` (``keep`` digits are shown,
    leading zeros included). uint32 arithmetic on 9-digit chunks.
    """
    out = np.empty((width, v.size), dtype=np.uint8)
    rest = v.astype(np.int64, copy=False)
    j = width
    while j > 0:
        take = min(9, j)
        if j == width and (v.size == 0 or int(v.max()) < 10 ** take):
            q, chunk = None, rest.astype(np.uint32)
        else:
            q = rest // (10 ** take)
            chunk = (rest - q * (10 ** take)).astype(np.uint32)
        for _ in range(take):
            c = chunk // np.uint32(10)
            out[j - 1] = (chunk - c * np.uint32(10)).astype(np.uint8)
            out[j - 1] += 48
            chunk = c
            j -= 1
        if q is None:
            out[:j] = 48
            break
        rest = q
    out *= np.arange(width)[:, None] >= (width - np.asarray(keep))[None, :]
    return out


def int_field(v: np.ndarray) -> np.ndarray:
    """Non-negative int64 values as a ``(width, n)`` text matrix of their decimal digits."""
    v = np.asarray(v, dtype=np.int64).ravel()
    if v.size and v.min() < 0:
        raise ValueError("int_field takes non-negative integers")
    nd = _ndigits(v)
    width = int(nd.max()) if v.size else 1
    return _digit_columns(v, width, nd)


def _runs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Start indices and lengths of runs of bit-identical values, if that saves work."""
    bits = x.view(np.int64)
    starts = np.flatnonzero(np.concatenate(([True], bits[1:] != bits[:-1])))
    if starts.size > 0.7 * x.size:
        return None
    return starts, np.diff(np.append(starts, x.size))


def float_field(x: np.ndarray) -> np.ndarray:
    """float64 values as a ``(width, n)`` text matrix; column i squeezes to ``repr(x[i])``."""
    x = np.ascontiguousarray(x, dtype=np.float64).ravel()
    runs = _runs(x) if x.size > 64 else None
    if runs is not None:
        starts, lengths = runs
        return np.repeat(_float_field(x[starts]), lengths, axis=1)
    return _float_field(x)


def _float_field(x: np.ndarray) -> np.ndarray:
    n = x.size
    finite = np.isfinite(x)
    nz = finite & (x != 0)
    digits, exp10, fast = shortest_digits(np.where(nz, x, 1.5))
    fast &= nz
    # layout: [sign][int part][dot][fraction][e][exp sign][exp digits]
    nd = _ndigits(digits)
    decpt = nd + exp10
    use_exp = (decpt <= -4) | (decpt > 16)
    fixed = ~use_exp
    # fixed: decpt <= 0 -> 0.000ddd ; 0 < decpt < nd -> ddd.ddd ; decpt >= nd -> ddd000.0
    shift = np.clip(nd - np.maximum(decpt, 0), 0, 18)       # digits after the point (fixed)
    shift = np.where(use_exp, nd - 1, shift)
    pw = _P10_INT[np.clip(shift, 0, 18)]
    ipart = digits // pw
    fpart = digits - ipart * pw
    grow = np.clip(decpt - nd, 0, 18)                          # fixed, decpt >= nd: append zeros
    ipart = np.where(fixed & (decpt >= nd), digits * _P10_INT[grow], ipart)
    fwidth = np.where(fixed, np.maximum(nd - decpt, 1), nd - 1)
    dot = fixed | (nd > 1)
    ipart = np.where(fast, ipart, 0)
    fpart = np.where(fast, fpart, 0)
    fwidth = np.where(fast, fwidth, 0)
    use_exp &= fast
    neg = fast & (x < 0)

    def row(mask: np.ndarray, char: str | np.ndarray) -> np.ndarray:
        return np.where(mask, char if not isinstance(char, str) else ord(char), _NUL).astype(np.uint8)[None, :]

    parts = []
    if neg.any():
        parts.append(row(neg, "-"))
    ind = _ndigits(ipart)
    parts.append(_digit_columns(ipart, int(ind[fast].max()) if fast.any() else 1,
                                np.where(fast, ind, 0)))
    parts.append(row(fast & dot, "."))
    fw = int(fwidth.max()) if n else 0
    if fw:
        parts.append(_digit_columns(fpart, fw, fwidth))
    if use_exp.any():
        ex = decpt - 1
        aex = np.abs(ex)
        parts.append(row(use_exp, "e"))
        parts.append(row(use_exp, np.where(ex < 0, ord("-"), ord("+"))))
        parts.append(_digit_columns(np.where(use_exp, aex, 0), 3,
                                    np.where(use_exp, np.maximum(_ndigits(aex), 2), 0)))
    out = np.concatenate(parts, axis=0)
    slow = np.flatnonzero(~fast)
    if slow.size:
        texts = [repr(v).encode("ascii") for v in x[slow].tolist()]
        width = max(map(len, texts))
        if width > out.shape[0]:
            out = np.concatenate([out, np.zeros((width - out.shape[0], n), np.uint8)], axis=0)
        block = np.zeros((slow.size, out.shape[0]), dtype=np.uint8)
        for i, t in enumerate(texts):
            block[i, :len(t)] = np.frombuffer(t, dtype=np.uint8)
        out[:, slow] = block.T
    return out


def join_rows(fields: list[np.ndarray | bytes], end: bytes = b"\n") -> bytes:
    """Rows made of the fields (text matrices, or constant bytes such as ``b","``)
    followed by ``end``, as one bytes object with the NUL padding removed."""
    n = next(f.shape[1] for f in fields if isinstance(f, np.ndarray))
    rows = []
    for f in fields + [end]:
        if isinstance(f, np.ndarray):
            rows.append(f)
        elif f:
            rows.append(np.broadcast_to(np.frombuffer(f, dtype=np.uint8)[:, None], (len(f), n)))
    mat = np.ascontiguousarray(np.concatenate(rows, axis=0).T)
    flat = mat.ravel()
    return np.compress(flat != _NUL, flat).tobytes()


def format_floats(x: np.ndarray) -> list[str]:
    """``[repr(v) for v in x]`` computed through the vectorized path (for tests and tools)."""
    text = join_rows([float_field(np.asarray(x, dtype=np.float64))], end=b"\n")
    return text.decode("ascii").split("\n")[:-1]
