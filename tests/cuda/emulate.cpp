// Host emulation of npadam's CUDA kernels for tests/test_gpu_source.py: adam.cu compiled by g++ with
// the CUDA built-ins emulated (threads of a block are real threads with a barrier for the kernels that
// synchronize, the norm and fp8 Adam, run one block after another), so the kernels' indexing, chunking,
// lane order and fp8 block reductions run in CI. Warps are one thread wide here (NPADAM_WARP 1: every
// thread is its warp's lane 0 and warp_max is the identity), so fp8's block amax is the shared-memory
// atomicMax of every thread's own max; __shared__ variables are statics (one block runs at a time).
#include <stdint.h>
#include <string.h>
#include <math.h>
#include <atomic>
#include <barrier>
#include <thread>
#include <vector>
#include <stdexcept>

struct emu_dim3 { unsigned x = 0, y = 1, z = 1; };
thread_local emu_dim3 threadIdx, blockIdx;
emu_dim3 blockDim, gridDim;
static std::barrier<>* emu_barrier = nullptr;
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(x)
#define __syncthreads() emu_barrier->arrive_and_wait()
struct alignas(16) float4 { float x, y, z, w; };
#define NPADAM_WARP 1
static inline uint32_t warp_max(uint32_t x) { return x; }
static inline uint32_t atomicMax(uint32_t* a, uint32_t x) {
    std::atomic_ref<uint32_t> r(*a);
    uint32_t old = r.load();
    while (old < x && !r.compare_exchange_weak(old, x)) {
    }
    return old;
}
#include "adam.cu"
#include "dispatch.h"

using npadam_test::with_bool;
using npadam_test::with_kind;
using npadam_test::with_master;
using npadam_test::with_moment_kind;

// Runs f as every thread of every block; THREADS: as real threads with a barrier (the norm kernel's
// __syncthreads), else one after another (a compile-time choice: std::thread code is instantiated
// only for the kernels that need it, which keeps this file's compile time down).
template <bool THREADS, class F> static void run_grid(unsigned grid, unsigned block, F f) {
    gridDim.x = grid; blockDim.x = block;
    for (unsigned b = 0; b < grid; ++b) {
        if constexpr (THREADS) {
            std::barrier<> bar(block);
            emu_barrier = &bar;
            std::vector<std::thread> ts;
            for (unsigned t = 0; t < block; ++t) ts.emplace_back([=] { threadIdx.x = t; blockIdx.x = b; f(); });
            for (auto& th : ts) th.join();
        } else {
            for (unsigned t = 0; t < block; ++t) { threadIdx.x = t; blockIdx.x = b; f(); }
        }
    }
}

template <int P, int G, bool A, bool D, bool M, int MK, int VK, bool SR, int WM>
static void adam_launch(unsigned grid, unsigned block, const uint64_t* pp, const uint64_t* gp, const int64_t* off,
                        const int64_t* sz, const int64_t* ct, const int64_t* cs, int64_t nchunks, int64_t chunk,
                        void* master, void* m, void* v, void* vmax, float* qm, float* qv, float* qx, const float* s,
                        uint32_t k0, uint32_t k1, int64_t base) {
    typedef typename Moment<MK, SR>::T MT;
    typedef typename Moment<VK, SR>::T VT;
    run_grid<is_fp8(MK) || is_fp8(VK)>(grid, block, [=] {
        adam_multi<P, G, A, D, M, MK, VK, SR, WM>(pp, gp, off, sz, ct, cs, nchunks, chunk,
                                                  static_cast<typename Master<WM>::T*>(master), static_cast<MT*>(m),
                                                  static_cast<VT*>(v), static_cast<VT*>(vmax), qm, qv, qx, s[0], s[1],
                                                  s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9], k0, k1, base);
    });
}

// The precision builds (every (pk, gk, a, d, mx) is built with the all-float32 state): bfloat16 params
// and grads, AdamW with amsgrad, every valid (mk, vk, sr, wm) without fp8 moments (wm: the master mode, 0
// fp32 masters, 1 remainders, 2 float16 masters), and every pair of moment kinds with an fp8 one,
// stochastic with a bfloat16 moment, remainders when the kinds' sum is odd, and (e4m3, e5m2) with float16
// masters too; float32 params and grads, AdamW without amsgrad (where the float4 path would be), moments
// (bf16, bf16) stochastic, (fp32, fp16), (fp16, fp32), (e4m3, e5m2), (e5m2, fp32).
template <int P, int G, bool A, bool D, bool M> constexpr bool precision_pair() {
    return D && !M && ((P == 1 && G == 1 && A) || (P == 0 && G == 0 && !A));
}
template <int P, int G, bool A, bool D, bool M, int MK, int VK, bool SR, int WM> constexpr bool precision_build() {
    if ((SR && MK != 1 && VK != 1) || (WM != 0 && P != 1) || !precision_pair<P, G, A, D, M>()) return false;
    const bool fp8 = is_fp8(MK) || is_fp8(VK);
    if (P == 1 && WM == 2) return !fp8 || (MK == 3 && VK == 4 && !SR);
    if (P == 1) return !fp8 || (SR == (MK == 1 || VK == 1) && (WM == 1) == ((MK + VK) % 2 == 1));
    if (fp8) return (MK == 3 && VK == 4) || (MK == 4 && VK == 0);
    return MK + VK == 2 && SR == (MK == 1);
}

// One emulated adam_multi launch; returns 0, 1 for a combination this library does not build, 2 for fp8
// moments with a chunk that is not a multiple of FP8_BLOCK (adam_multi's requirement).
extern "C" int emu_adam(int pk, int gk, int a, int d, int mx, int mk, int vk, int sr, int wm, unsigned grid,
                        unsigned block, const uint64_t* pp, const uint64_t* gp, const int64_t* off, const int64_t* sz,
                        const int64_t* ct, const int64_t* cs, int64_t nchunks, int64_t chunk, void* master, void* m,
                        void* v, void* vmax, float* qm, float* qv, float* qx, const float* s, uint32_t k0, uint32_t k1,
                        int64_t base) {
    const bool precision = mk != 0 || vk != 0 || sr || wm;
    if ((mk >= 3 || vk >= 3) && chunk % FP8_BLOCK != 0) return 2;
    return with_kind(pk, [&](auto P) { return with_kind(gk, [&](auto G) {
        return with_bool(a, [&](auto A) { return with_bool(d, [&](auto D) { return with_bool(mx, [&](auto X) {
            if (!precision) {
                adam_launch<P(), G(), A(), D(), X(), 0, 0, false, 0>(grid, block, pp, gp, off, sz, ct, cs, nchunks,
                                                                     chunk, master, m, v, vmax, qm, qv, qx, s, k0, k1,
                                                                     base);
                return 0;
            }
            if constexpr (!precision_pair<P(), G(), A(), D(), X()>()) {
                return 1;  // (tested first: no nested instantiations for the pairs not built)
            } else {
                return with_moment_kind(mk, [&](auto MK) { return with_moment_kind(vk, [&](auto VK) {
                    return with_bool(sr, [&](auto SR) { return with_master(wm, [&](auto WM) {
                        if constexpr (!precision_build<P(), G(), A(), D(), X(), MK(), VK(), SR(), WM()>()) {
                            return 1;
                        } else {
                            adam_launch<P(), G(), A(), D(), X(), MK(), VK(), SR(), WM()>(
                                grid, block, pp, gp, off, sz, ct, cs, nchunks, chunk, master, m, v, vmax, qm, qv, qx,
                                s, k0, k1, base);
                            return 0;
                        }
                    }); });
                }); });
            }
        }); }); });
    }); });
}

template <int P, int G, int MODE>
static void sgd_launch(unsigned grid, unsigned block, const uint64_t* pp, const uint64_t* gp, const int64_t* off,
                       const int64_t* sz, const int64_t* ct, const int64_t* cs, int64_t nchunks, int64_t chunk,
                       float* master, float* buf, const float* s, int maximize, int decay, int first) {
    run_grid<false>(grid, block, [=] {
        sgd_multi<P, G, MODE>(pp, gp, off, sz, ct, cs, nchunks, chunk, master, buf, s[0], s[1], s[2], s[3], s[4],
                              maximize, decay, first);
    });
}

typedef void (*sgd_fn)(unsigned, unsigned, const uint64_t*, const uint64_t*, const int64_t*, const int64_t*,
                       const int64_t*, const int64_t*, int64_t, int64_t, float*, float*, const float*, int, int, int);

template <int P, int G> static sgd_fn pick_sgd(int mode) {
    return mode == 0 ? sgd_launch<P, G, 0> : mode == 1 ? sgd_launch<P, G, 1> : sgd_launch<P, G, 2>;
}

extern "C" int emu_sgd(int pk, int gk, int mode, unsigned grid, unsigned block, const uint64_t* pp,
                       const uint64_t* gp, const int64_t* off, const int64_t* sz, const int64_t* ct,
                       const int64_t* cs, int64_t nchunks, int64_t chunk, float* master, float* buf, const float* s,
                       int maximize, int decay, int first) {
    sgd_fn fn = nullptr;
#define CS(P_, G_) if (pk == P_ && gk == G_) fn = pick_sgd<P_, G_>(mode);
    CS(0, 0) CS(0, 1) CS(0, 2) CS(1, 0) CS(1, 1) CS(1, 2) CS(2, 0) CS(2, 1) CS(2, 2)
    if (!fn || mode < 0 || mode > 2) return 1;
    fn(grid, block, pp, gp, off, sz, ct, cs, nchunks, chunk, master, buf, s, maximize, decay, first);
    return 0;
}

extern "C" int emu_norm(int gk, unsigned grid, unsigned block, const uint64_t* gp, const int64_t* off,
                        const int64_t* sz, int64_t nt, int64_t nb, int64_t bl, double* out) {
    if (gk == 0) run_grid<true>(grid, block, [=] { block_sumsq<0>(gp, off, sz, nt, nb, bl, out); });
    else if (gk == 1) run_grid<true>(grid, block, [=] { block_sumsq<1>(gp, off, sz, nt, nb, bl, out); });
    else run_grid<true>(grid, block, [=] { block_sumsq<2>(gp, off, sz, nt, nb, bl, out); });
    return 0;
}
