// Host build of npadam's GPU element math (npadam/kernels/adam_math.cuh), for
// tests/test_gpu_source.py: the same source the GPU kernel compiles, run on the
// CPU over arrays, so its arithmetic is checked against reference/adamw.py and
// reference/precision.py on machines without a GPU.
#include "adam_math.cuh"
#include "dispatch.h"

using namespace npadam;
using npadam_test::with_bool;
using npadam_test::with_kind;
using npadam_test::with_master;
using npadam_test::with_moment_kind;

// adam_update (the kernel's element: widen, adam_element, narrow, masters of master mode WM) over one
// tensor of n elements at offset 0 of its buffer's state: element i draws counter base + i. With fp8
// moments the tensor is stepped one FP8_BLOCK block at a time, serially: each element's update, the
// block's amax (fp8_amax), its scales (fp8_scales, stored in qm, qv, qx), the codes (fp8_store); the
// same functions adam.cu's adam_fp8_chunk calls around its thread-block reduction.
template <int PK, int GK, bool A, bool D, bool M, int MK, int VK, bool SR, int WM>
static void run(int64_t n, void* p, const void* g, void* w, void* m, void* v, void* x, float* qm, float* qv,
                float* qx, const Scalars& s, uint32_t k0, uint32_t k1, int64_t base) {
    auto* P = static_cast<typename Storage<PK>::T*>(p);
    auto* G = static_cast<const typename Storage<GK>::T*>(g);
    auto* W = static_cast<typename Master<WM>::T*>(w);
    auto* MS = static_cast<typename Moment<MK, SR>::T*>(m);
    auto* VS = static_cast<typename Moment<VK, SR>::T*>(v);
    auto* XS = static_cast<typename Moment<VK, SR>::T*>(x);
    if constexpr (!is_fp8(MK) && !is_fp8(VK)) {
        for (int64_t i = 0; i < n; ++i) {
            adam_update<PK, GK, A, D, M, MK, VK, SR, WM>(P, G, W, MS, VS, XS, qm, qv, qx, i, i, s, k0, k1, base);
        }
    } else {
        for (int64_t b0 = 0; b0 < n; b0 += FP8_BLOCK) {
            const int64_t b1 = n - b0 < FP8_BLOCK ? n : b0 + FP8_BLOCK;
            Fp8Values values[FP8_BLOCK];
            uint32_t amax[3] = {0u, 0u, 0u};
            for (int64_t i = b0; i < b1; ++i) {
                values[i - b0] = adam_update<PK, GK, A, D, M, MK, VK, SR, WM>(P, G, W, MS, VS, XS, qm, qv, qx, i, i,
                                                                              s, k0, k1, base);
                fp8_amax<MK, VK, A>(amax, values[i - b0]);
            }
            const Fp8Values scale = fp8_scales<MK, VK, A>(amax, qm, qv, qx, b0 >> FP8_SHIFT, true);
            for (int64_t i = b0; i < b1; ++i) fp8_store<MK, VK, A, SR>(values[i - b0], scale, MS, VS, XS, i);
        }
    }
}

// The precision builds (every (pk, gk, a, d, mx) is built with the all-float32 state), a subset (each
// instantiation costs the host compiler ~0.1 s, one with fp8 moments ~0.15 s); WM: the master mode (0 fp32
// masters, 1 remainders, 2 float16 masters):
//   - AdamW with bfloat16 params and grads: without fp8 moments every valid (mk, vk, sr, wm) with either
//     amsgrad; with fp8 moments (fp8_build) and amsgrad every (mk, vk, sr) with fp32 masters and the two
//     fp8 pairs with remainders and with float16 masters, and without amsgrad the fp8 pairs and fp8
//     beside float32, nearest, fp32 masters;
//   - with amsgrad: bfloat16 params with float16 grads, float32 params and grads, float16 params with
//     bfloat16 grads, moments of two different kinds (the six pairs of 32/16-bit kinds and the two fp8
//     pairs), stochastic with a bfloat16 moment, remainders and float16 masters with bfloat16 params.
template <bool A, int MK, int VK, bool SR, int WM> constexpr bool fp8_build() {
    if (A) return WM == 0 || (!SR && MK + VK == 7);
    return !SR && WM == 0 && (MK + VK == 7 || MK == 0 || VK == 0);
}
template <int PK, int GK, bool A> constexpr bool precision_pair() {
    return (PK == 1 && GK == 1) || (A && ((PK == 1 && GK == 2) || (PK == 0 && GK == 0) || (PK == 2 && GK == 1)));
}
template <int PK, int GK, bool A, int MK, int VK, bool SR, int WM> constexpr bool precision_build() {
    if ((SR && MK != 1 && VK != 1) || (WM != 0 && PK != 1) || !precision_pair<PK, GK, A>()) return false;
    if (PK == 1 && GK == 1) return (!is_fp8(MK) && !is_fp8(VK)) || fp8_build<A, MK, VK, SR, WM>();
    return MK != VK && is_fp8(MK) == is_fp8(VK) && SR == (MK == 1 || VK == 1) && (WM != 0) == (PK == 1);
}

// One step over n elements; returns 0, or 1 for a combination this library does not build: the
// all-float32 state with every (pk, gk, a, d, mx), and precision_build()'s combinations. wm: the master
// mode (`master` holds fp32 masters, int16 remainders or float16 masters' bits). qm, qv, qx: the fp8 block
// scales of m, v, vmax (read and written; unused for other kinds).
extern "C" int adam_host(int pk, int gk, int a, int d, int mx, int mk, int vk, int sr, int wm, int64_t n, void* p,
                         const void* g, void* master, void* m, void* v, void* vmax, float* qm, float* qv, float* qx,
                         const float* sc, uint32_t k0, uint32_t k1, int64_t base) {
    const Scalars s = {sc[0], sc[1], sc[2], sc[3], sc[4], sc[5], sc[6], sc[7], sc[8], sc[9]};
    const bool precision = mk != 0 || vk != 0 || sr || wm;
    if (precision && !(d && !mx)) return 1;
    return with_kind(pk, [&](auto P) { return with_kind(gk, [&](auto G) {
        return with_bool(a, [&](auto A) { return with_bool(d, [&](auto D) { return with_bool(mx, [&](auto X) {
            if (!precision) {
                run<P(), G(), A(), D(), X(), 0, 0, false, 0>(n, p, g, master, m, v, vmax, qm, qv, qx, s, k0, k1, base);
                return 0;
            }
            if constexpr (!D() || X() || !precision_pair<P(), G(), A()>()) {
                return 1;  // (tested first: no nested instantiations for the pairs not built)
            } else {
                return with_moment_kind(mk, [&](auto MK) { return with_moment_kind(vk, [&](auto VK) {
                    return with_bool(sr, [&](auto SR) { return with_master(wm, [&](auto WM) {
                        if constexpr (!precision_build<P(), G(), A(), MK(), VK(), SR(), WM()>()) {
                            return 1;
                        } else {
                            run<P(), G(), A(), true, false, MK(), VK(), SR(), WM()>(n, p, g, master, m, v, vmax, qm,
                                                                                    qv, qx, s, k0, k1, base);
                            return 0;
                        }
                    }); });
                }); });
            }
        }); }); });
    }); });
}

extern "C" void convert_host(int kind, int64_t n, const float* x, uint16_t* out, float* back) {
    for (int64_t i = 0; i < n; ++i) {
        out[i] = kind == BF16 ? f32_to_bf16(x[i]) : f32_to_f16(x[i]);
        back[i] = kind == BF16 ? bf16_to_f32(out[i]) : f16_to_f32(out[i]);
    }
}

// threefry2x32 of n (key, counter) pairs.
extern "C" void threefry_host(int64_t n, const uint32_t* k0, const uint32_t* k1, const uint32_t* c0,
                              const uint32_t* c1, uint32_t* r0, uint32_t* r1) {
    for (int64_t i = 0; i < n; ++i) {
        const Words w = threefry2x32(k0[i], k1[i], c0[i], c1[i]);
        r0[i] = w.r0;
        r1[i] = w.r1;
    }
}

// random_words of n flat indices under one key.
extern "C" void random_words_host(uint32_t k0, uint32_t k1, int64_t n, const uint64_t* index, uint32_t* r0,
                                  uint32_t* r1) {
    for (int64_t i = 0; i < n; ++i) {
        const Words w = random_words(k0, k1, index[i]);
        r0[i] = w.r0;
        r1[i] = w.r1;
    }
}

// A 16-bit moment's narrow (Moment<kind, sr>::narrow with random words r) and widen of n values:
// out = narrow(x, r), back = widen(out).
extern "C" int moment_host(int kind, int sr, int64_t n, const float* x, const uint32_t* r, uint16_t* out,
                           float* back) {
    return with_kind(kind, [&](auto K) { return with_bool(sr, [&](auto SR) {
        if constexpr (K() == 0) {
            return 1;
        } else {
            for (int64_t i = 0; i < n; ++i) {
                out[i] = Moment<K(), SR()>::narrow(x[i], r[i]);
                back[i] = Moment<K(), SR()>::widen(out[i]);
            }
            return 0;
        }
    }); });
}

// split_remainder of n fp32 masters, and join_remainder of the result.
extern "C" void remainder_host(int64_t n, const float* master, uint16_t* param, int16_t* rem, float* back) {
    for (int64_t i = 0; i < n; ++i) {
        split_remainder(master[i], param[i], rem[i]);
        back[i] = join_remainder(param[i], rem[i]);
    }
}

// fp8 codes of n float32 values (fp8_encode; |x| <= FP8_MAX or NaN) and the decode of n codes.
extern "C" int fp8_host(int kind, int64_t n, const float* x, uint8_t* codes, int64_t ncodes, const uint8_t* c,
                        float* decoded) {
    return with_moment_kind(kind, [&](auto K) {
        if constexpr (!is_fp8(K())) {
            return 1;
        } else {
            for (int64_t i = 0; i < n; ++i) codes[i] = fp8_encode<K()>(x[i]);
            for (int64_t i = 0; i < ncodes; ++i) decoded[i] = fp8_decode<K()>(c[i]);
            return 0;
        }
    });
}

// reference.precision.quantize of n float32 values (one tensor from a block boundary) with the kernel's
// block math: abs_bits max per block, fp8_scale, fp8_quantize.
extern "C" int quantize_host(int kind, int64_t n, const float* x, uint8_t* codes, float* scales) {
    return with_moment_kind(kind, [&](auto K) {
        if constexpr (!is_fp8(K())) {
            return 1;
        } else {
            for (int64_t b0 = 0; b0 < n; b0 += FP8_BLOCK) {
                const int64_t b1 = n - b0 < FP8_BLOCK ? n : b0 + FP8_BLOCK;
                uint32_t amax = 0u;
                for (int64_t i = b0; i < b1; ++i) amax = max_u32(amax, abs_bits(x[i]));
                const float scale = fp8_scale<K()>(amax);
                scales[b0 >> FP8_SHIFT] = scale;
                for (int64_t i = b0; i < b1; ++i) codes[i] = fp8_quantize<K()>(x[i], scale);
            }
            return 0;
        }
    });
}
