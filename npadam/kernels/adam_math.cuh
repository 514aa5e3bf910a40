// npadam: the element math of one AdamW/Adam step and of one SGD step, for the GPU kernels and the
// host tests.
//
// Everything here is __host__ __device__ so that the same source is compiled for
// the GPU (adam.cu, NVRTC or nvcc with -fmad=false and IEEE division/sqrt) and for
// the host (tests/test_gpu_source.py builds it with nvcc and checks it bit for bit
// against reference/adamw.py). The float32 operation order is the contract's:
//
//   g  = grad * scale;  if maximize: g = -g;  if !decoupled: g = g + wd * p
//   m  = b1 * m + omb1 * g;   v = b2 * v + omb2 * (g * g)
//   vh = amsgrad ? max(vmax, v) : v          (NaN-propagating, vmax <- vh)
//   if decoupled: p = p * decay
//   p  = p - step_size * m / (sqrt(vh) / bc2_sqrt + eps)
//
// SGD (reference/sgd.py, torch.optim.SGD) uses explicit fused multiply-adds, as torch's CPU and CUDA
// kernels do; fma_rn is __fmaf_rn on the device (fused whatever -fmad says) and fmaf on the host:
//
//   g = grad * scale;  if maximize: g = -g;  if decay: g = fma(wd, p, g)
//   momentum: buf = first ? g : fma(1 - dampening, g, momentum * buf);  g = nesterov ? fma(momentum, buf, g) : buf
//   p = fma(-lr, g, p)
//
// Every value written (m, v, vmax, p, SGD's buffer) goes through canonical_nan (reference.adamw).
//
// Storage kinds: 0 float32, 1 bfloat16, 2 float16 (16-bit kinds as raw uint16 bits,
// converted with round-to-nearest-even exactly as ml_dtypes / NumPy do, NaN payloads
// included, so the GPU writes the same bits as the CPU kernel and the reference); for the moments
// also 3 float8_e4m3fn and 4 float8_e5m2 (uint8 codes with a float32 scale per FP8_BLOCK elements).
//
// Precision-aware state (reference/precision.py; adam_update below):
//   - the moments exp_avg (kind MK), exp_avg_sq and max_exp_avg_sq (kind VK) are widened to float32
//     (exact), the float32 adam_element runs unchanged (the param update uses the float32 m and vh),
//     then they are narrowed back: float32 as computed; float16 nearest-even with NaN -> 0x7E00;
//     bfloat16 nearest-even, or stochastic ((bits + (r & 0xFFFF)) >> 16) when SR, NaN -> 0x7FC0
//     (16-bit NaNs are always the POSITIVE canonical NaN of the kind).
//   - the random words of state element `index` (the element's flat index in its buffer) are
//     threefry2x32-20(key (k0, k1), counter (lo32(index), hi32(index))): r0 rounds exp_avg, r1
//     exp_avg_sq and max_exp_avg_sq; (k0, k1) is reference.precision.step_key(seed, step, buffer).
//   - the master of a low-precision param, by the master mode WM (adam.cu's template parameter; Master
//     below): 0 = float32 masters (none for float32 params); 1 = remainders (store_param_remainders, bf16
//     params only): the fp32 master is not stored, an int16 remainder holds its low 16 bits
//     (join_remainder / split_remainder), the bf16 param its high 16 bits rounded to nearest, ties away
//     from zero; 2 = float16 masters (main_params_dtype=float16, bf16 params only): uint16 float16 bits,
//     widened exactly, the param checked against them (current_master), and after the float32 update
//     h = f16_nearest(p) (NaN -> 0x7E00) is stored and the bf16 param is the rounding of widen(h), so
//     that the check holds at the next step.
//   - fp8 moments (reference.precision.quantize / dequantize): uint8 codes, one float32 scale per block
//     of FP8_BLOCK elements of the flat buffer (block of state element i: i >> FP8_SHIFT; tensors start
//     on block boundaries, so a block never spans two tensors; a tensor's last block may be partial).
//     Widened as float32(fp8(code)) * scale (exact decode, one rounded multiply); after the float32
//     update, per block and per moment:
//         amax  = max |x| over the block's elements (NaN-propagating)
//         scale = amax / FP8_MAX (float32 division; a NaN amax gives the canonical NaN 0x7FC00000)
//         q     = x if scale == 0 else x / scale, clamped to [-FP8_MAX, FP8_MAX] (NaN passes)
//         code  = fp8(q), round to nearest even as ml_dtypes; NaN -> FP8_NAN (0x7F e4m3fn, 0x7E e5m2)
//     adam_update returns the element's float32 values (Fp8Values); the caller reduces the block's amax
//     (fp8_amax per thread; adam.cu: then across the thread block; tests/cuda/adam_host.cu: serially) and
//     stores the scales and codes (fp8_scales, fp8_store). Stochastic rounding never applies to fp8.
#pragma once

#ifndef __CUDACC_RTC__
#include <stdint.h>
#include <string.h>
#include <math.h>
#else
typedef unsigned int uint32_t;
typedef unsigned short uint16_t;
typedef unsigned char uint8_t;
typedef short int16_t;
typedef long long int64_t;
typedef unsigned long long uint64_t;
#endif

#if defined(__CUDACC__)
#define NPADAM_HD __host__ __device__ __forceinline__
#else
#define NPADAM_HD inline
#endif

namespace npadam {

enum Kind { F32 = 0, BF16 = 1, F16 = 2, F8E4M3 = 3, F8E5M2 = 4 };

// reference.precision.FP8_BLOCK: fp8 moments have one float32 scale per this many elements.
constexpr int FP8_SHIFT = 8;
constexpr int FP8_BLOCK = 1 << FP8_SHIFT;

NPADAM_HD constexpr bool is_fp8(int kind) { return kind == F8E4M3 || kind == F8E5M2; }

NPADAM_HD uint32_t f32_bits(float x) {
#if defined(__CUDA_ARCH__)
    return __float_as_uint(x);
#else
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
#endif
}

NPADAM_HD float bits_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
    return __uint_as_float(u);
#else
    float x;
    memcpy(&x, &u, 4);
    return x;
#endif
}

// reference.adamw.canonical_nan: every value an update writes has one NaN, 0x7FC00000.
NPADAM_HD float canonical_nan(float x) { return x == x ? x : bits_f32(0x7FC00000u); }

NPADAM_HD float bf16_to_f32(uint16_t h) { return bits_f32(((uint32_t)h) << 16); }

NPADAM_HD uint16_t f32_to_bf16(float x) {
    uint32_t b = f32_bits(x);
    if ((b & 0x7FFFFFFFu) > 0x7F800000u) return (b >> 31) ? 0xFFC0u : 0x7FC0u;  // quiet NaN, sign kept
    uint32_t lsb = (b >> 16) & 1u;
    return (uint16_t)((b + 0x7FFFu + lsb) >> 16);
}

NPADAM_HD float f16_to_f32(uint16_t u) {
    uint32_t h = u;
    uint32_t sign = (h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu;
    uint32_t mant = h & 0x3FFu;
    if (exp == 0) {
        float mag = (float)mant * 5.9604644775390625e-08f;  // mant * 2**-24, exact
        return sign ? -mag : mag;
    }
    if (exp == 31) return bits_f32(sign | 0x7F800000u | (mant << 13));
    return bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

NPADAM_HD uint16_t f32_to_f16(float x) {  // NumPy's npy_floatbits_to_halfbits
    uint32_t f = f32_bits(x);
    uint32_t h_sgn = (f & 0x80000000u) >> 16;
    uint32_t f_exp = f & 0x7F800000u;
    if (f_exp >= 0x47800000u) {
        uint32_t f_sig = f & 0x007FFFFFu;
        if (f_exp == 0x7F800000u && f_sig != 0) {
            uint32_t ret = 0x7C00u + (f_sig >> 13);
            if (ret == 0x7C00u) ret += 1;
            return (uint16_t)(h_sgn + ret);
        }
        return (uint16_t)(h_sgn + 0x7C00u);
    }
    if (f_exp <= 0x38000000u) {
        if (f_exp < 0x33000000u) return (uint16_t)h_sgn;
        uint32_t e = f_exp >> 23;
        uint32_t f_sig = 0x00800000u + (f & 0x007FFFFFu);
        f_sig >>= (113u - e);
        if (((f_sig & 0x3FFFu) != 0x1000u) || (f & 0x7FFu) != 0) f_sig += 0x1000u;
        return (uint16_t)(h_sgn + (f_sig >> 13));
    }
    uint32_t h_exp = (f_exp - 0x38000000u) >> 13;
    uint32_t f_sig = f & 0x007FFFFFu;
    if ((f_sig & 0x3FFFu) != 0x1000u) f_sig += 0x1000u;
    return (uint16_t)(h_sgn + h_exp + (f_sig >> 13));
}

template <int KIND> struct Storage;
template <> struct Storage<F32> {
    typedef float T;
    static NPADAM_HD float load(T x) { return x; }
    static NPADAM_HD T store(float x) { return x; }
};
template <> struct Storage<BF16> {
    typedef uint16_t T;
    static NPADAM_HD float load(T x) { return bf16_to_f32(x); }
    static NPADAM_HD T store(float x) { return f32_to_bf16(x); }
};
template <> struct Storage<F16> {
    typedef uint16_t T;
    static NPADAM_HD float load(T x) { return f16_to_f32(x); }
    static NPADAM_HD T store(float x) { return f32_to_f16(x); }
};

// ---------------------------------------------------------------- precision-aware state

// True for every NaN bit pattern (a bit test: no floating-point comparison to be optimized away).
NPADAM_HD bool is_nan(float x) { return (f32_bits(x) & 0x7FFFFFFFu) > 0x7F800000u; }

// reference.precision.narrow(x, BF16, "nearest"): round to nearest even, NaN -> 0x7FC0 (positive).
NPADAM_HD uint16_t bf16_nearest(float x) { return is_nan(x) ? (uint16_t)0x7FC0u : f32_to_bf16(x); }

// reference.precision.narrow(x, BF16, "stochastic", r): (bits + (r & 0xFFFF)) >> 16, i.e. the
// magnitude rounds up with probability equal to the discarded fraction; NaN -> 0x7FC0. No overflow
// in uint32: the largest non-NaN pattern is 0xFF800000 (-inf).
NPADAM_HD uint16_t bf16_stochastic(float x, uint32_t r) {
    return is_nan(x) ? (uint16_t)0x7FC0u : (uint16_t)((f32_bits(x) + (r & 0xFFFFu)) >> 16);
}

// reference.precision.narrow(x, F16): round to nearest even (NumPy's conversion), NaN -> 0x7E00.
NPADAM_HD uint16_t f16_nearest(float x) { return is_nan(x) ? (uint16_t)0x7E00u : f32_to_f16(x); }

// A moment's storage (kind KIND; SR: stochastic rounding, used by bfloat16 only): widen to float32
// (exact) and narrow back (reference.precision.widen / narrow). float32 is stored as computed, as
// without the precision options (m and v come out of canonical_nan; reference.precision.narrow
// copies float32).
template <int KIND, bool SR> struct Moment {
    typedef float T;
    static NPADAM_HD float widen(T x) { return x; }
    static NPADAM_HD T narrow(float x, uint32_t) { return x; }
};
template <bool SR> struct Moment<BF16, SR> {
    typedef uint16_t T;
    static NPADAM_HD float widen(T x) { return bf16_to_f32(x); }
    static NPADAM_HD T narrow(float x, uint32_t r) { return SR ? bf16_stochastic(x, r) : bf16_nearest(x); }
};
template <bool SR> struct Moment<F16, SR> {  // always nearest: stochastic rounding is bfloat16's only
    typedef uint16_t T;
    static NPADAM_HD float widen(T x) { return f16_to_f32(x); }
    static NPADAM_HD T narrow(float x, uint32_t) { return f16_nearest(x); }
};

// ---------------------------------------------------------------- fp8 moments

// The two fp8 formats (ml_dtypes float8_e4m3fn: no infinities, NaN S.1111.111; float8_e5m2: IEEE-like).
template <int KIND> struct Fp8;
template <> struct Fp8<F8E4M3> {
    static constexpr int MANT = 3, BIAS = 7;
    static NPADAM_HD float max() { return 448.0f; }   // reference.precision.FP8_MAX
    static NPADAM_HD uint8_t nan() { return 0x7Fu; }  // reference.precision.FP8_NAN
};
template <> struct Fp8<F8E5M2> {
    static constexpr int MANT = 2, BIAS = 15;
    static NPADAM_HD float max() { return 57344.0f; }
    static NPADAM_HD uint8_t nan() { return 0x7Eu; }
};

// An fp8 code as float32, exactly (ml_dtypes' astype(float32), NaNs as +-0x7FC00000).
template <int KIND> NPADAM_HD float fp8_decode(uint8_t code) {
    constexpr int MANT = Fp8<KIND>::MANT, BIAS = Fp8<KIND>::BIAS;
    const uint32_t c = code;
    const uint32_t e = (c >> MANT) & ((1u << (7 - MANT)) - 1u);
    const uint32_t m = c & ((1u << MANT) - 1u);
    float mag;
    if (KIND == F8E4M3 && e == 15u && m == 7u) {
        mag = bits_f32(0x7FC00000u);
    } else if (KIND == F8E5M2 && e == 31u) {
        mag = bits_f32(m == 0u ? 0x7F800000u : 0x7FC00000u);
    } else if (e == 0u) {  // subnormal: m units of 2**(1 - BIAS - MANT), exact
        mag = (float)m * bits_f32((uint32_t)(128 - BIAS - MANT) << 23);
    } else {
        mag = bits_f32(((e + (uint32_t)(127 - BIAS)) << 23) | (m << (23 - MANT)));
    }
    return (c >> 7) ? -mag : mag;
}

// float32 q (|q| <= Fp8<KIND>::max(), or NaN) to its fp8 code, round to nearest even (ml_dtypes); NaN
// becomes the canonical positive NaN code (reference.precision.FP8_NAN), -0 stays -0.
template <int KIND> NPADAM_HD uint8_t fp8_encode(float q) {
    constexpr int MANT = Fp8<KIND>::MANT, BIAS = Fp8<KIND>::BIAS;
    if (is_nan(q)) return Fp8<KIND>::nan();
    const uint32_t b = f32_bits(q);
    const uint32_t sign = (b >> 31) << 7, a = b & 0x7FFFFFFFu;
    uint32_t code;
    if ((a >> 23) >= (uint32_t)(128 - BIAS)) {  // at least the smallest normal: round the mantissa
        constexpr uint32_t shift = 23 - MANT;
        const uint32_t r = a + (1u << (shift - 1)) - 1u + ((a >> shift) & 1u);
        code = (r >> shift) - ((uint32_t)(127 - BIAS) << MANT);
    } else {  // below it: in units of the smallest subnormal (an exact power-of-two product), half to even
        code = (uint32_t)rintf(bits_f32(a) * bits_f32((uint32_t)(126 + BIAS + MANT) << 23));
    }
    return (uint8_t)(sign | code);
}

// |x| as bits: their unsigned order is the order of |x| for numbers, and every NaN is above +inf, so the
// unsigned max of a block's abs_bits is its NaN-propagating amax (in any order).
NPADAM_HD uint32_t abs_bits(float x) { return f32_bits(x) & 0x7FFFFFFFu; }

NPADAM_HD uint32_t max_u32(uint32_t a, uint32_t b) { return a > b ? a : b; }

// A block's scale from the max of its abs_bits: amax / FP8_MAX, the canonical NaN for a NaN amax.
template <int KIND> NPADAM_HD float fp8_scale(uint32_t amax_bits) {
    return amax_bits > 0x7F800000u ? bits_f32(0x7FC00000u) : bits_f32(amax_bits) / Fp8<KIND>::max();
}

// One value of a block with scale `scale`: x / scale (x itself for a zero scale), clamped, encoded.
template <int KIND> NPADAM_HD uint8_t fp8_quantize(float x, float scale) {
    float q = scale == 0.0f ? x : x / scale;
    if (q > Fp8<KIND>::max()) q = Fp8<KIND>::max();
    if (q < -Fp8<KIND>::max()) q = -Fp8<KIND>::max();
    return fp8_encode<KIND>(q);
}

template <bool SR> struct Moment<F8E4M3, SR> {
    typedef uint8_t T;
};
template <bool SR> struct Moment<F8E5M2, SR> {
    typedef uint8_t T;
};

// Stored moment element i of kind KIND as float32: widened, or an fp8 code times its block's scale in Q.
template <int KIND, bool SR>
NPADAM_HD float load_moment(const typename Moment<KIND, SR>::T* S, const float* Q, int64_t i) {
    if constexpr (is_fp8(KIND)) {
        return fp8_decode<KIND>(S[i]) * Q[i >> FP8_SHIFT];
    } else {
        return Moment<KIND, SR>::widen(S[i]);
    }
}

// The float32 values of an element's moments after its update (exp_avg, exp_avg_sq, max_exp_avg_sq), for
// the fp8 ones to be quantized per block; k indexes them in the per-block helpers below.
struct Fp8Values {
    float x[3];
};

// amax[k] = max(amax[k], abs_bits of the element's fp8 moment k) (0 exp_avg, 1 exp_avg_sq, 2 max_exp_avg_sq).
template <int MK, int VK, bool AMSGRAD> NPADAM_HD void fp8_amax(uint32_t (&amax)[3], const Fp8Values& e) {
    if constexpr (is_fp8(MK)) amax[0] = max_u32(amax[0], abs_bits(e.x[0]));
    if constexpr (is_fp8(VK)) amax[1] = max_u32(amax[1], abs_bits(e.x[1]));
    if constexpr (is_fp8(VK) && AMSGRAD) amax[2] = max_u32(amax[2], abs_bits(e.x[2]));
}

// The block's scales from its amax: scale[k] of each fp8 moment k, stored in Q[k][block] when `store`.
template <int MK, int VK, bool AMSGRAD>
NPADAM_HD Fp8Values fp8_scales(const uint32_t (&amax)[3], float* QM, float* QV, float* QX, int64_t block, bool store) {
    Fp8Values s = {{0.0f, 0.0f, 0.0f}};
    if constexpr (is_fp8(MK)) s.x[0] = fp8_scale<MK>(amax[0]);
    if constexpr (is_fp8(VK)) s.x[1] = fp8_scale<VK>(amax[1]);
    if constexpr (is_fp8(VK) && AMSGRAD) s.x[2] = fp8_scale<VK>(amax[2]);
    if (store) {
        if constexpr (is_fp8(MK)) QM[block] = s.x[0];
        if constexpr (is_fp8(VK)) QV[block] = s.x[1];
        if constexpr (is_fp8(VK) && AMSGRAD) QX[block] = s.x[2];
    }
    return s;
}

// The codes of element i's fp8 moments (values e) under their block's scales.
template <int MK, int VK, bool AMSGRAD, bool SR>
NPADAM_HD void fp8_store(const Fp8Values& e, const Fp8Values& scale, typename Moment<MK, SR>::T* M,
                         typename Moment<VK, SR>::T* V, typename Moment<VK, SR>::T* X, int64_t i) {
    if constexpr (is_fp8(MK)) M[i] = fp8_quantize<MK>(e.x[0], scale.x[0]);
    if constexpr (is_fp8(VK)) V[i] = fp8_quantize<VK>(e.x[1], scale.x[1]);
    if constexpr (is_fp8(VK) && AMSGRAD) X[i] = fp8_quantize<VK>(e.x[2], scale.x[2]);
}

// The random words of one element: r0 rounds exp_avg, r1 exp_avg_sq and max_exp_avg_sq.
struct Words {
    uint32_t r0, r1;
};

NPADAM_HD uint32_t rotl32(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }

// One Threefry-2x32 round: x0 += x1; x1 = rotl(x1, r) ^ x0 (uint32 arithmetic, modulo 2**32).
NPADAM_HD void threefry_round(uint32_t& x0, uint32_t& x1, int r) {
    x0 += x1;
    x1 = rotl32(x1, r) ^ x0;
}

// Threefry-2x32 with 20 rounds (Salmon et al., SC'11; Random123's threefry2x32_20, jax.random's
// generator) of counter (c0, c1) under key (k0, k1): reference.precision.threefry2x32. Rotations
// 13 15 26 6 | 17 29 16 24, alternating per block of 4 rounds; the key schedule (k0, k1,
// k0 ^ k1 ^ 0x1BD11BDA) is injected before the first round and after each of the 5 blocks (the
// block's number added to the second word). Random123's known answer: key 0, counter 0 ->
// (0x6b200159, 0x99ba4efe).
NPADAM_HD Words threefry2x32(uint32_t k0, uint32_t k1, uint32_t c0, uint32_t c1) {
    const uint32_t k2 = k0 ^ k1 ^ 0x1BD11BDAu;
    uint32_t x0 = c0 + k0, x1 = c1 + k1;
    threefry_round(x0, x1, 13); threefry_round(x0, x1, 15); threefry_round(x0, x1, 26); threefry_round(x0, x1, 6);
    x0 += k1; x1 += k2 + 1u;
    threefry_round(x0, x1, 17); threefry_round(x0, x1, 29); threefry_round(x0, x1, 16); threefry_round(x0, x1, 24);
    x0 += k2; x1 += k0 + 2u;
    threefry_round(x0, x1, 13); threefry_round(x0, x1, 15); threefry_round(x0, x1, 26); threefry_round(x0, x1, 6);
    x0 += k0; x1 += k1 + 3u;
    threefry_round(x0, x1, 17); threefry_round(x0, x1, 29); threefry_round(x0, x1, 16); threefry_round(x0, x1, 24);
    x0 += k1; x1 += k2 + 4u;
    threefry_round(x0, x1, 13); threefry_round(x0, x1, 15); threefry_round(x0, x1, 26); threefry_round(x0, x1, 6);
    x0 += k2; x1 += k0 + 5u;
    return {x0, x1};
}

// reference.precision.random_words: the words of flat buffer element `index` under the step key
// (k0, k1) = reference.precision.step_key(seed, step, buffer); counter (lo32(index), hi32(index)).
NPADAM_HD Words random_words(uint32_t k0, uint32_t k1, uint64_t index) {
    return threefry2x32(k0, k1, (uint32_t)(index & 0xFFFFFFFFu), (uint32_t)(index >> 32));
}

// reference.precision.join_remainder: (bf16 param bits, int16 remainder) -> the fp32 master, exactly.
// The param holds the master's high 16 bits plus one when the remainder is negative (bit 15 set).
NPADAM_HD float join_remainder(uint16_t param, int16_t rem) {
    const uint32_t low = (uint16_t)rem;
    const uint32_t hi = (uint16_t)(param - ((low & 0x8000u) ? 1u : 0u));  // wraps like uint16
    return bits_f32((hi << 16) | low);
}

// reference.precision.split_remainder: the fp32 master -> bf16 param bits (the high half rounded to
// nearest, ties away from zero) and the int16 remainder (the low half).
NPADAM_HD void split_remainder(float master, uint16_t& param, int16_t& rem) {
    const uint32_t b = f32_bits(master);
    const uint32_t low = b & 0xFFFFu;
    param = (uint16_t)((b >> 16) + ((low & 0x8000u) ? 1u : 0u));  // wraps like uint16
    rem = (int16_t)(low >= 0x8000u ? (int)low - 0x10000 : (int)low);
}

// The master modes (WM): what a buffer's `master` array holds. gpu.py's MASTER_F32, MASTER_REM, MASTER_F16.
enum MasterMode { MASTER_F32 = 0, MASTER_REM = 1, MASTER_F16 = 2 };

// The element type of the `master` array of mode WM: the fp32 masters (unused for float32 params), the int16
// remainders, or the float16 masters' bits.
template <int WM> struct Master {
    typedef float T;
};
template <> struct Master<MASTER_REM> {
    typedef int16_t T;
};
template <> struct Master<MASTER_F16> {
    typedef uint16_t T;
};

// The fp32 value a low-precision param's update starts from (reference.adamw.current_master):
// the master, unless the param's stored bits are not its rounding (the param was written since).
template <int PK>
NPADAM_HD float current_master(float master, typename Storage<PK>::T stored) {
    return Storage<PK>::store(master) == stored ? master : Storage<PK>::load(stored);
}

// The per-step scalars, float32, from reference.adamw.host_scalars (same order as there).
struct Scalars {
    float scale, beta1, one_minus_beta1, beta2, one_minus_beta2, weight_decay, decay, step_size, bc2_sqrt, eps;
};

// One element: updates p (fp32 value), m, v and vmax in place.
template <bool AMSGRAD, bool DECOUPLED, bool MAXIMIZE>
NPADAM_HD void adam_element(float& p, float grad, float& m, float& v, float& vmax, const Scalars& s) {
    float g = grad * s.scale;
    if (MAXIMIZE) g = -g;
    if (!DECOUPLED) g = g + s.weight_decay * p;
    float mi = canonical_nan(s.beta1 * m + s.one_minus_beta1 * g);
    float vi = canonical_nan(s.beta2 * v + s.one_minus_beta2 * (g * g));
    m = mi;
    v = vi;
    float vh = vi;
    if (AMSGRAD) {
        float vo = vmax;
        if (!(vi > vo || vi != vi)) vh = vo;
        vmax = vh;
    }
    if (DECOUPLED) p = p * s.decay;
    p = canonical_nan(p - s.step_size * mi / (sqrtf(vh) / s.bc2_sqrt + s.eps));
}

// One element of a flat buffer's Adam pass on stored state (the body of adam.cu's adam_multi; the
// host tests run it too). P[j], G[j]: the param and grad (storage kinds PK, GK); W[i] by the master mode
// WM: the fp32 master (PK != F32), the int16 remainder (MASTER_REM: the master is join_remainder(P[j],
// W[i]), no current_master check) or the float16 master's bits (MASTER_F16: widened, then checked by
// current_master; stored back rounded to float16, the param rounded from that); M[i], V[i], X[i]: exp_avg (kind MK), exp_avg_sq and, with AMSGRAD,
// max_exp_avg_sq (kind VK); QM, QV, QX: their fp8 block scales (read only here; unused for other
// kinds). The moments are widened (load_moment), adam_element runs in float32 (the param update uses
// the float32 m and vh), then the 16-bit and float32 ones are narrowed and stored (Moment); the fp8 ones
// are left to the caller, which quantizes them per block from the returned values. SR: bfloat16 moments
// round stochastically with random_words(k0, k1, base + i), i.e. `base` is the buffer index of state
// element 0 (the host passes a piece of the buffer's state starting there).
template <int PK, int GK, bool AMSGRAD, bool DECOUPLED, bool MAXIMIZE, int MK, int VK, bool SR, int WM>
NPADAM_HD Fp8Values adam_update(typename Storage<PK>::T* P, const typename Storage<GK>::T* G,
                                typename Master<WM>::T* W, typename Moment<MK, SR>::T* M,
                                typename Moment<VK, SR>::T* V, typename Moment<VK, SR>::T* X, const float* QM,
                                const float* QV, const float* QX, int64_t j, int64_t i, const Scalars& s,
                                uint32_t k0, uint32_t k1, int64_t base) {
    static_assert(WM == MASTER_F32 || WM == MASTER_REM || WM == MASTER_F16, "master modes are 0, 1, 2");
    static_assert(WM == MASTER_F32 || PK == BF16, "param remainders and float16 masters need bfloat16 params");
    float p;
    if constexpr (WM == MASTER_REM) {
        p = join_remainder(P[j], W[i]);
    } else if constexpr (PK == F32) {
        p = Storage<PK>::load(P[j]);
    } else if constexpr (WM == MASTER_F16) {
        p = current_master<PK>(f16_to_f32(W[i]), P[j]);
    } else {
        p = current_master<PK>(W[i], P[j]);
    }
    float m = load_moment<MK, SR>(M, QM, i), v = load_moment<VK, SR>(V, QV, i);
    float vmax = AMSGRAD ? load_moment<VK, SR>(X, QX, i) : 0.0f;
    adam_element<AMSGRAD, DECOUPLED, MAXIMIZE>(p, Storage<GK>::load(G[j]), m, v, vmax, s);
    Words r = {0u, 0u};
    if constexpr (SR && (MK == BF16 || VK == BF16)) r = random_words(k0, k1, (uint64_t)(base + i));
    if constexpr (!is_fp8(MK)) M[i] = Moment<MK, SR>::narrow(m, r.r0);
    if constexpr (!is_fp8(VK)) {
        V[i] = Moment<VK, SR>::narrow(v, r.r1);
        if (AMSGRAD) X[i] = Moment<VK, SR>::narrow(vmax, r.r1);
    }
    if constexpr (WM == MASTER_REM) {
        split_remainder(p, P[j], W[i]);
    } else if constexpr (WM == MASTER_F16) {  // the param is the rounding of the float16 master
        const uint16_t h = f16_nearest(p);
        W[i] = h;
        P[j] = Storage<PK>::store(f16_to_f32(h));
    } else {
        if constexpr (PK != F32) W[i] = p;
        P[j] = Storage<PK>::store(p);
    }
    return {{m, v, vmax}};
}

// a * b + c with one rounding (IEEE fusedMultiplyAdd).
NPADAM_HD float fma_rn(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
    return __fmaf_rn(a, b, c);
#else
    return fmaf(a, b, c);
#endif
}

// The per-step SGD scalars, float32, from reference.sgd.host_scalars.
struct SgdScalars {
    float scale, weight_decay, momentum, one_minus_dampening, neg_lr;
};

// One SGD element: updates p (fp32 value) and the momentum buffer in place. MOMENTUM: 0 none (buf
// untouched), 1 heavy ball, 2 Nesterov (reference.sgd.PLAIN, MOMENTUM, NESTEROV); decay: wd != 0;
// first: the tensor's first step with momentum (the buffer starts as the gradient).
template <int MOMENTUM>
NPADAM_HD void sgd_element(float& p, float grad, float& buf, bool maximize, bool decay, bool first,
                           const SgdScalars& s) {
    float g = grad * s.scale;
    if (maximize) g = -g;
    if (decay) g = fma_rn(s.weight_decay, p, g);
    if (MOMENTUM != 0) {
        buf = canonical_nan(first ? g : fma_rn(s.one_minus_dampening, g, s.momentum * buf));
        g = (MOMENTUM == 2) ? fma_rn(s.momentum, buf, g) : buf;
    }
    p = canonical_nan(fma_rn(s.neg_lr, g, p));
}

}  // namespace npadam
