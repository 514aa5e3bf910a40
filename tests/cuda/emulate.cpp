// Host emulation of npadam's CUDA kernels for tests/test_gpu_source.py: adam.cu compiled by g++ with
// the CUDA built-ins emulated (threads of a block are real threads with a barrier for the norm kernel,
// run one block after another), so the kernels' indexing, chunking and lane order run in CI.
#include <stdint.h>
#include <string.h>
#include <math.h>
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
#include "adam.cu"

template <class F> static void run_grid(unsigned grid, unsigned block, bool threads, F f) {
    gridDim.x = grid; blockDim.x = block;
    for (unsigned b = 0; b < grid; ++b) {
        if (threads) {
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

template <int P, int G, bool A, bool D, bool M>
static void adam_launch(unsigned grid, unsigned block, const uint64_t* pp, const uint64_t* gp, const int64_t* off,
                        const int64_t* sz, const int64_t* ct, const int64_t* cs, int64_t nchunks, int64_t chunk,
                        float* master, float* m, float* v, float* vmax, const float* s) {
    run_grid(grid, block, false, [=] {
        adam_multi<P, G, A, D, M>(pp, gp, off, sz, ct, cs, nchunks, chunk, master, m, v, vmax, s[0], s[1], s[2], s[3],
                                  s[4], s[5], s[6], s[7], s[8], s[9]);
    });
}

typedef void (*adam_fn)(unsigned, unsigned, const uint64_t*, const uint64_t*, const int64_t*, const int64_t*,
                        const int64_t*, const int64_t*, int64_t, int64_t, float*, float*, float*, float*, const float*);

template <int P, int G> static adam_fn pick(int f) {
    switch (f) {
        case 0: return adam_launch<P, G, false, false, false>;
        case 1: return adam_launch<P, G, false, false, true>;
        case 2: return adam_launch<P, G, false, true, false>;
        case 3: return adam_launch<P, G, false, true, true>;
        case 4: return adam_launch<P, G, true, false, false>;
        case 5: return adam_launch<P, G, true, false, true>;
        case 6: return adam_launch<P, G, true, true, false>;
        default: return adam_launch<P, G, true, true, true>;
    }
}

extern "C" int emu_adam(int pk, int gk, int a, int d, int mx, unsigned grid, unsigned block, const uint64_t* pp,
                        const uint64_t* gp, const int64_t* off, const int64_t* sz, const int64_t* ct,
                        const int64_t* cs, int64_t nchunks, int64_t chunk, float* master, float* m, float* v,
                        float* vmax, const float* s) {
    int f = a * 4 + d * 2 + mx;
    adam_fn fn = nullptr;
#define C(P_, G_) if (pk == P_ && gk == G_) fn = pick<P_, G_>(f);
    C(0, 0) C(0, 1) C(0, 2) C(1, 0) C(1, 1) C(1, 2) C(2, 0) C(2, 1) C(2, 2)
    if (!fn) return 1;
    fn(grid, block, pp, gp, off, sz, ct, cs, nchunks, chunk, master, m, v, vmax, s);
    return 0;
}

template <int P, int G, int MODE>
static void sgd_launch(unsigned grid, unsigned block, const uint64_t* pp, const uint64_t* gp, const int64_t* off,
                       const int64_t* sz, const int64_t* ct, const int64_t* cs, int64_t nchunks, int64_t chunk,
                       float* master, float* buf, const float* s, int maximize, int decay, int first) {
    run_grid(grid, block, false, [=] {
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
    if (gk == 0) run_grid(grid, block, true, [=] { block_sumsq<0>(gp, off, sz, nt, nb, bl, out); });
    else if (gk == 1) run_grid(grid, block, true, [=] { block_sumsq<1>(gp, off, sz, nt, nb, bl, out); });
    else run_grid(grid, block, true, [=] { block_sumsq<2>(gp, off, sz, nt, nb, bl, out); });
    return 0;
}
