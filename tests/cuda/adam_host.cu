// Host build of npadam's GPU element math (npadam/kernels/adam_math.cuh), for
// tests/test_gpu_source.py: the same source the GPU kernel compiles, run on the
// CPU over arrays, so its arithmetic is checked against reference/adamw.py and
// reference/precision.py on machines without a GPU.
#include "adam_math.cuh"
#include "dispatch.h"

using namespace npadam;
using npadam_test::with_bool;
using npadam_test::with_kind;

// adam_update (the kernel's element: widen, adam_element, narrow, masters or remainders) over one
// tensor of n elements at offset 0 of its buffer's state: element i draws counter base + i.
template <int PK, int GK, bool A, bool D, bool M, int MK, int VK, bool SR, bool REM>
static void run(int64_t n, void* p, const void* g, void* w, void* m, void* v, void* x, const Scalars& s, uint32_t k0,
                uint32_t k1, int64_t base) {
    typedef typename Moment<MK, SR>::T MT;
    typedef typename Moment<VK, SR>::T VT;
    auto* P = static_cast<typename Storage<PK>::T*>(p);
    auto* G = static_cast<const typename Storage<GK>::T*>(g);
    auto* W = static_cast<typename Master<REM>::T*>(w);
    for (int64_t i = 0; i < n; ++i) {
        adam_update<PK, GK, A, D, M, MK, VK, SR, REM>(P, G, W, static_cast<MT*>(m), static_cast<VT*>(v),
                                                      static_cast<VT*>(x), i, i, s, k0, k1, base);
    }
}

// The precision builds (every (pk, gk, a, d, mx) is built with the all-float32 state): AdamW with
// bfloat16 params and grads, either amsgrad, every valid (mk, vk, sr, rem); and with amsgrad, bfloat16
// params with float16 grads, float32 params and grads, float16 params with bfloat16 grads, the six
// moment pairs of two different kinds, stochastic with a bfloat16 moment, remainders with bfloat16
// params (a subset: each instantiation costs the host compiler ~0.1 s).
template <int PK, int GK, bool A, int MK, int VK, bool SR, bool REM> constexpr bool precision_build() {
    if ((SR && MK != 1 && VK != 1) || (REM && PK != 1)) return false;  // never asked for
    if (PK == 1 && GK == 1) return true;
    const bool pair = (PK == 1 && GK == 2) || (PK == 0 && GK == 0) || (PK == 2 && GK == 1);
    return pair && A && MK != VK && SR == (MK == 1 || VK == 1) && REM == (PK == 1);
}

// One step over n elements; returns 0, or 1 for a combination this library does not build: the
// all-float32 state with every (pk, gk, a, d, mx), and precision_build()'s combinations.
extern "C" int adam_host(int pk, int gk, int a, int d, int mx, int mk, int vk, int sr, int rem, int64_t n, void* p,
                         const void* g, void* master, void* m, void* v, void* vmax, const float* sc, uint32_t k0,
                         uint32_t k1, int64_t base) {
    const Scalars s = {sc[0], sc[1], sc[2], sc[3], sc[4], sc[5], sc[6], sc[7], sc[8], sc[9]};
    const bool precision = mk != 0 || vk != 0 || sr || rem;
    if (precision && !(d && !mx)) return 1;
    return with_kind(pk, [&](auto P) { return with_kind(gk, [&](auto G) {
        return with_bool(a, [&](auto A) { return with_bool(d, [&](auto D) { return with_bool(mx, [&](auto X) {
            if (!precision) {
                run<P(), G(), A(), D(), X(), 0, 0, false, false>(n, p, g, master, m, v, vmax, s, k0, k1, base);
                return 0;
            }
            if constexpr (!D() || X()) {
                return 1;
            } else {
                return with_kind(mk, [&](auto MK) { return with_kind(vk, [&](auto VK) {
                    return with_bool(sr, [&](auto SR) { return with_bool(rem, [&](auto REM) {
                        if constexpr (!precision_build<P(), G(), A(), MK(), VK(), SR(), REM()>()) {
                            return 1;
                        } else {
                            run<P(), G(), A(), true, false, MK(), VK(), SR(), REM()>(n, p, g, master, m, v, vmax,
                                                                                     s, k0, k1, base);
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
