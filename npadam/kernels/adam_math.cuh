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
// included, so the GPU writes the same bits as the CPU kernel and the reference).
#pragma once

#ifndef __CUDACC_RTC__
#include <stdint.h>
#include <string.h>
#include <math.h>
#else
typedef unsigned int uint32_t;
typedef unsigned short uint16_t;
typedef long long int64_t;
typedef unsigned long long uint64_t;
#endif

#if defined(__CUDACC__)
#define NPADAM_HD __host__ __device__ __forceinline__
#else
#define NPADAM_HD inline
#endif

namespace npadam {

enum Kind { F32 = 0, BF16 = 1, F16 = 2 };

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
