// npadam GPU kernels: the fused AdamW/Adam and SGD passes and the fixed-blocking gradient norm.
//
// One templated source; the options are template parameters:
//   PK, GK      storage kind of params / grads (0 float32, 1 bfloat16, 2 float16)
//   AMSGRAD, DECOUPLED, MAXIMIZE (Adam);  MOMENTUM (SGD: 0 none, 1 heavy ball, 2 Nesterov)
//   MK, VK      (Adam) storage kind of exp_avg / of exp_avg_sq and max_exp_avg_sq (16-bit kinds as
//               uint16 bits, fp8 kinds 3 float8_e4m3fn / 4 float8_e5m2 as uint8 codes with a float32
//               scale per FP8_BLOCK elements; reference/precision.py)
//   SR          (Adam) stochastic rounding of the bfloat16 moments (counter-based: Threefry-2x32-20
//               of the step key (k0, k1) and the element's buffer index base + i; never fp8)
//   WM          (Adam) the master mode, what `master` holds (adam_math.cuh's Master): 0 fp32 masters of
//               16-bit params (unused for float32 params), 1 int16 param remainders instead of them
//               (store_param_remainders), 2 float16 masters as uint16 bits (main_params_dtype=float16; the
//               param is then the rounding of the float16 master); 1 and 2 for bfloat16 params only
// Compile with -fmad=false (and NVRTC's default IEEE division and square root) so
// that the result is bit-identical to reference/adamw.py and the Numba kernel.
//
// Tensors are passed as tables (device arrays): param and grad pointers, their
// offsets in the flat float32 state buffers and their sizes. One launch covers all
// tensors of a flat buffer: the host cuts them into chunks of CHUNK elements
// (chunk_tensor, chunk_start) and each thread block takes chunks in a grid-stride
// loop; indices are 64-bit throughout. Where every pointer of a chunk is 16-byte
// aligned the float32 arrays are read and written as float4 (all-float32 Adam without amsgrad only).
// With fp8 moments a thread block steps a chunk one fp8 block (FP8_BLOCK elements) at a time and
// reduces each block's amax across its threads (adam_fp8_chunk).
#include "adam_math.cuh"

using namespace npadam;

#define NPADAM_LANES 64

// The max of x over a warp's 32 lanes, in every lane (all 32 lanes must call it). tests/cuda/emulate.cpp
// runs warps of one thread: it defines NPADAM_WARP 1 and its own warp_max (the identity).
#ifndef NPADAM_WARP
#define NPADAM_WARP 32
__device__ __forceinline__ uint32_t warp_max(uint32_t x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    return __reduce_max_sync(0xFFFFFFFFu, x);
#else
    for (int o = 16; o > 0; o >>= 1) x = max_u32(x, __shfl_xor_sync(0xFFFFFFFFu, x, o));
    return x;
#endif
}
#endif

// The chunk a thread block works on: tensor t, elements [lo, hi) of it (both passes).
struct Chunk {
    int64_t t, lo, hi;
};

__device__ __forceinline__ Chunk chunk_at(int64_t c, const int64_t* chunk_tensor, const int64_t* chunk_start,
                                          const int64_t* sizes, int64_t chunk) {
    const int64_t t = chunk_tensor[c];
    const int64_t lo = chunk_start[c];
    int64_t hi = lo + chunk;
    if (hi > sizes[t]) hi = sizes[t];
    return {t, lo, hi};
}

// Elements [lo, hi) of one tensor with fp8 moments (adam_multi's loop body; every thread of the block
// calls it with the same arguments). lo and off are multiples of FP8_BLOCK, so the chunk is stepped one
// fp8 block at a time: elements b0 + e, e < FP8_BLOCK, all of block (off + b0) >> FP8_SHIFT. Per block:
//   1. each thread updates elements e = threadIdx.x, threadIdx.x + blockDim.x, ... below hi - b0
//      (adam_update writes params, masters and the non-fp8 moments), keeps their float32 fp8 moments in
//      shared memory (its own slots) and their running max of abs_bits;
//   2. each warp reduces that max (warp_max) and its lane 0 atomicMax-es it into the shared block_max[u]
//      (unsigned max: exact, order-free, a NaN above every number); one __syncthreads;
//   3. every thread reads block_max[u] (the block's amax), thread 0 stores the scales, and each thread
//      quantizes its own elements (fp8_scales, fp8_store).
// u (0, 1, 2, 0, ... from block to block of the thread block's chunks) rotates through three buffers so
// that one __syncthreads per block suffices: during block b, thread 0 zeroes buffer (u + 1) % 3, whose
// last reads (step 3 of block b - 2) came before the __syncthreads of block b - 1 and whose next atomics
// (step 2 of block b + 1) come after that of block b. Threads with no element (a partial last block) add
// nothing but reach every __syncthreads.
template <int PK, int GK, bool AMSGRAD, bool DECOUPLED, bool MAXIMIZE, int MK, int VK, bool SR, int WM>
__device__ __forceinline__ void adam_fp8_chunk(typename Storage<PK>::T* P, const typename Storage<GK>::T* G,
                                               typename Master<WM>::T* W, typename Moment<MK, SR>::T* M,
                                               typename Moment<VK, SR>::T* V, typename Moment<VK, SR>::T* X,
                                               float* QM, float* QV, float* QX, int64_t lo, int64_t hi,
                                               int64_t off, const Scalars& s, uint32_t k0, uint32_t k1, int64_t base,
                                               uint32_t (&block_max)[3][3], int& u) {
    constexpr bool FP8[3] = {is_fp8(MK), is_fp8(VK), is_fp8(VK) && AMSGRAD};  // exp_avg, exp_avg_sq, vmax
    __shared__ Fp8Values values[FP8_BLOCK];
    for (int64_t b0 = lo; b0 < hi; b0 += FP8_BLOCK, u = (u + 1) % 3) {
        const int64_t n = hi - b0 < FP8_BLOCK ? hi - b0 : FP8_BLOCK;
        uint32_t a[3] = {0u, 0u, 0u};
        for (int64_t e = threadIdx.x; e < n; e += blockDim.x) {
            values[e] = adam_update<PK, GK, AMSGRAD, DECOUPLED, MAXIMIZE, MK, VK, SR, WM>(
                P, G, W, M, V, X, QM, QV, QX, b0 + e, off + b0 + e, s, k0, k1, base);
            fp8_amax<MK, VK, AMSGRAD>(a, values[e]);
        }
        uint32_t* bmax = block_max[u];
        if (threadIdx.x == 0) {
            for (int k = 0; k < 3; ++k) block_max[(u + 1) % 3][k] = 0u;
        }
#pragma unroll
        for (int k = 0; k < 3; ++k) {
            if (!FP8[k]) continue;
            a[k] = warp_max(a[k]);
            if (threadIdx.x % NPADAM_WARP == 0 && a[k] != 0u) atomicMax(&bmax[k], a[k]);
        }
        __syncthreads();
        for (int k = 0; k < 3; ++k) a[k] = bmax[k];
        const Fp8Values scale = fp8_scales<MK, VK, AMSGRAD>(a, QM, QV, QX, (off + b0) >> FP8_SHIFT, threadIdx.x == 0);
        for (int64_t e = threadIdx.x; e < n; e += blockDim.x) {
            fp8_store<MK, VK, AMSGRAD, SR>(values[e], scale, M, V, X, off + b0 + e);
        }
    }
}

// One Adam pass over a flat buffer's tensors. master, m, v, vmax: the buffer's state arrays (or a piece
// of them) indexed by offsets[t] + j; `master` is unused for float32 params, holds the fp32 masters of
// 16-bit params, or (bfloat16 params) their int16 remainders or float16 masters (WM); vmax is unused
// without AMSGRAD. m_scale, v_scale,
// vmax_scale: the fp8 block scales of m, v, vmax (element i's block is i >> FP8_SHIFT; unused for other
// kinds); with fp8 state the arrays start on a block boundary, every offsets[t] and `chunk` are
// multiples of FP8_BLOCK, and the block has a multiple of 32 threads (THREADS = 256 in gpu.py).
// (k0, k1): the step key of reference.precision.step_key, `base`: the buffer index of state element 0,
// so that element i draws its random words from counter base + i (used only when SR rounds a bfloat16
// moment).
template <int PK, int GK, bool AMSGRAD, bool DECOUPLED, bool MAXIMIZE, int MK, int VK, bool SR, int WM>
__global__ void adam_multi(const uint64_t* __restrict__ param_ptrs, const uint64_t* __restrict__ grad_ptrs,
                           const int64_t* __restrict__ offsets, const int64_t* __restrict__ sizes,
                           const int64_t* __restrict__ chunk_tensor, const int64_t* __restrict__ chunk_start,
                           int64_t nchunks, int64_t chunk, typename Master<WM>::T* __restrict__ master,
                           typename Moment<MK, SR>::T* __restrict__ m, typename Moment<VK, SR>::T* __restrict__ v,
                           typename Moment<VK, SR>::T* __restrict__ vmax, float* __restrict__ m_scale,
                           float* __restrict__ v_scale, float* __restrict__ vmax_scale, float scale, float beta1,
                           float one_minus_beta1, float beta2, float one_minus_beta2, float weight_decay,
                           float decay, float step_size, float bc2_sqrt, float eps, uint32_t k0, uint32_t k1,
                           int64_t base) {
    const Scalars s = {scale, beta1, one_minus_beta1, beta2, one_minus_beta2, weight_decay, decay, step_size,
                       bc2_sqrt, eps};
    typedef typename Storage<PK>::T PT;
    typedef typename Storage<GK>::T GT;
    // the float4 path: every array float32, no max_exp_avg_sq, no master
    constexpr bool FLOAT4 = PK == F32 && GK == F32 && MK == F32 && VK == F32 && !AMSGRAD && WM == MASTER_F32;
    // fp8: the block-wide amax of each fp8 moment in three rotating buffers, and the one in use
    // (adam_fp8_chunk)
    __shared__ uint32_t block_max[3][3];
    int u = 0;
    if constexpr (is_fp8(MK) || is_fp8(VK)) {
        if (threadIdx.x == 0) block_max[0][0] = block_max[0][1] = block_max[0][2] = 0u;
        __syncthreads();
    }
    for (int64_t c = blockIdx.x; c < nchunks; c += gridDim.x) {
        const Chunk k = chunk_at(c, chunk_tensor, chunk_start, sizes, chunk);
        const int64_t t = k.t, lo = k.lo, hi = k.hi;
        PT* P = reinterpret_cast<PT*>(param_ptrs[t]);
        const GT* G = reinterpret_cast<const GT*>(grad_ptrs[t]);
        const int64_t off = offsets[t];
        int64_t j0 = lo;
        if constexpr (FLOAT4) {
            const bool vec = ((lo & 3) == 0) &&
                             ((reinterpret_cast<uint64_t>(P) | reinterpret_cast<uint64_t>(G)) & 15) == 0 &&
                             (((off + lo) & 3) == 0) &&
                             ((reinterpret_cast<uint64_t>(m) | reinterpret_cast<uint64_t>(v)) & 15) == 0;
            if (vec) {
                const int64_t nvec = (hi - lo) / 4;
                for (int64_t q = threadIdx.x; q < nvec; q += blockDim.x) {
                    const int64_t j = lo + 4 * q, i = off + j;
                    float4 pp = *reinterpret_cast<float4*>(P + j);
                    const float4 gg = *reinterpret_cast<const float4*>(G + j);
                    float4 mm = *reinterpret_cast<float4*>(m + i);
                    float4 vv = *reinterpret_cast<float4*>(v + i);
                    float unused = 0.0f;
                    adam_element<false, DECOUPLED, MAXIMIZE>(pp.x, gg.x, mm.x, vv.x, unused, s);
                    adam_element<false, DECOUPLED, MAXIMIZE>(pp.y, gg.y, mm.y, vv.y, unused, s);
                    adam_element<false, DECOUPLED, MAXIMIZE>(pp.z, gg.z, mm.z, vv.z, unused, s);
                    adam_element<false, DECOUPLED, MAXIMIZE>(pp.w, gg.w, mm.w, vv.w, unused, s);
                    *reinterpret_cast<float4*>(P + j) = pp;
                    *reinterpret_cast<float4*>(m + i) = mm;
                    *reinterpret_cast<float4*>(v + i) = vv;
                }
                j0 = lo + 4 * nvec;
            }
        }
        if constexpr (is_fp8(MK) || is_fp8(VK)) {
            adam_fp8_chunk<PK, GK, AMSGRAD, DECOUPLED, MAXIMIZE, MK, VK, SR, WM>(P, G, master, m, v, vmax, m_scale,
                                                                                  v_scale, vmax_scale, lo, hi, off,
                                                                                  s, k0, k1, base, block_max, u);
        } else {
            for (int64_t j = j0 + threadIdx.x; j < hi; j += blockDim.x) {
                adam_update<PK, GK, AMSGRAD, DECOUPLED, MAXIMIZE, MK, VK, SR, WM>(
                    P, G, master, m, v, vmax, m_scale, v_scale, vmax_scale, j, off + j, s, k0, k1, base);
            }
        }
    }
}

// One SGD pass over a flat buffer's tensors (chunks as in adam_multi; one element per thread and step).
// buf: the momentum buffer (unused when MOMENTUM == 0); maximize, decay (wd != 0) and first are flags
// of the whole launch.
template <int PK, int GK, int MOMENTUM>
__global__ void sgd_multi(const uint64_t* __restrict__ param_ptrs, const uint64_t* __restrict__ grad_ptrs,
                          const int64_t* __restrict__ offsets, const int64_t* __restrict__ sizes,
                          const int64_t* __restrict__ chunk_tensor, const int64_t* __restrict__ chunk_start,
                          int64_t nchunks, int64_t chunk, float* __restrict__ master, float* __restrict__ buf,
                          float scale, float weight_decay, float momentum, float one_minus_dampening, float neg_lr,
                          int maximize, int decay, int first) {
    const SgdScalars s = {scale, weight_decay, momentum, one_minus_dampening, neg_lr};
    typedef typename Storage<PK>::T PT;
    typedef typename Storage<GK>::T GT;
    for (int64_t c = blockIdx.x; c < nchunks; c += gridDim.x) {
        const Chunk k = chunk_at(c, chunk_tensor, chunk_start, sizes, chunk);
        PT* P = reinterpret_cast<PT*>(param_ptrs[k.t]);
        const GT* G = reinterpret_cast<const GT*>(grad_ptrs[k.t]);
        const int64_t base = offsets[k.t];
        for (int64_t j = k.lo + threadIdx.x; j < k.hi; j += blockDim.x) {
            const int64_t i = base + j;
            float p = (PK == F32) ? Storage<PK>::load(P[j]) : current_master<PK>(master[i], P[j]);
            float b = (MOMENTUM != 0 && !first) ? buf[i] : 0.0f;
            sgd_element<MOMENTUM>(p, Storage<GK>::load(G[j]), b, maximize != 0, decay != 0, first != 0, s);
            if (MOMENTUM != 0) buf[i] = b;
            if (PK != F32) master[i] = p;
            P[j] = Storage<PK>::store(p);
        }
    }
}

// Sum of squares of each `block`-element block of the buffer's index space, float64.
// Launch with exactly NPADAM_LANES threads per block (enforced: __launch_bounds__ makes a larger
// block fail to launch), one thread block per norm block (grid-stride).
// Lane l adds the squares of elements l, l + 64, l + 128, ... of the block in order (each
// tensor starts at a multiple of 64, so at lane 0); thread 0 then adds the 64 lane sums in
// order. Same numbers, same order as reference.adamw.block_sumsq and the Numba kernel.
template <int GK>
__global__ void __launch_bounds__(NPADAM_LANES)
block_sumsq(const uint64_t* __restrict__ grad_ptrs, const int64_t* __restrict__ offsets,
            const int64_t* __restrict__ sizes, int64_t ntensors, int64_t nblocks, int64_t block,
            double* __restrict__ out) {
    typedef typename Storage<GK>::T GT;
    __shared__ double lanes[NPADAM_LANES];
    const int lane = threadIdx.x;
    for (int64_t b = blockIdx.x; b < nblocks; b += gridDim.x) {
        const int64_t lo = b * block, hi = lo + block;
        // first tensor whose range may overlap [lo, hi): the last with offset <= lo
        int64_t a = 0, z = ntensors;
        while (z - a > 1) {
            const int64_t mid = (a + z) / 2;
            if (offsets[mid] <= lo) a = mid; else z = mid;
        }
        double acc = 0.0;
        for (int64_t t = a; t < ntensors && offsets[t] < hi; ++t) {
            const GT* G = reinterpret_cast<const GT*>(grad_ptrs[t]);
            int64_t s0 = lo - offsets[t];
            if (s0 < 0) s0 = 0;
            int64_t e0 = hi - offsets[t];
            if (e0 > sizes[t]) e0 = sizes[t];
            for (int64_t j = s0 + lane; j < e0; j += NPADAM_LANES) {
                const double x = (double)Storage<GK>::load(G[j]);
                acc += x * x;
            }
        }
        lanes[lane] = acc;
        __syncthreads();
        if (lane == 0) {
            double total = 0.0;
            for (int l = 0; l < NPADAM_LANES; ++l) total += lanes[l];
            out[b] = total;
        }
        __syncthreads();
    }
}
