// Host build of npadam's GPU element math (npadam/kernels/adam_math.cuh), for
// tests/test_gpu_source.py: the same source the GPU kernel compiles, run on the
// CPU over arrays, so its arithmetic is checked against reference/adamw.py on
// machines without a GPU.
#include "adam_math.cuh"

using namespace npadam;

template <int PK, int GK, bool A, bool D, bool M>
static void run(int64_t n, void* p, const void* g, float* master, float* m, float* v, float* vmax, const Scalars& s) {
    typedef typename Storage<PK>::T PT;
    typedef typename Storage<GK>::T GT;
    PT* P = static_cast<PT*>(p);
    const GT* G = static_cast<const GT*>(g);
    for (int64_t i = 0; i < n; ++i) {
        float pv = (PK == F32) ? Storage<PK>::load(P[i]) : master[i];
        float x = A ? vmax[i] : 0.0f;
        adam_element<A, D, M>(pv, Storage<GK>::load(G[i]), m[i], v[i], x, s);
        if (A) vmax[i] = x;
        if (PK != F32) master[i] = pv;
        P[i] = Storage<PK>::store(pv);
    }
}

template <int PK, int GK>
static void flags(int a, int d, int mx, int64_t n, void* p, const void* g, float* w, float* m, float* v, float* x,
                  const Scalars& s) {
    int f = a * 4 + d * 2 + mx;
    switch (f) {
        case 0: run<PK, GK, false, false, false>(n, p, g, w, m, v, x, s); break;
        case 1: run<PK, GK, false, false, true>(n, p, g, w, m, v, x, s); break;
        case 2: run<PK, GK, false, true, false>(n, p, g, w, m, v, x, s); break;
        case 3: run<PK, GK, false, true, true>(n, p, g, w, m, v, x, s); break;
        case 4: run<PK, GK, true, false, false>(n, p, g, w, m, v, x, s); break;
        case 5: run<PK, GK, true, false, true>(n, p, g, w, m, v, x, s); break;
        case 6: run<PK, GK, true, true, false>(n, p, g, w, m, v, x, s); break;
        default: run<PK, GK, true, true, true>(n, p, g, w, m, v, x, s); break;
    }
}

extern "C" int adam_host(int pk, int gk, int a, int d, int mx, int64_t n, void* p, const void* g, float* master,
                         float* m, float* v, float* vmax, const float* sc) {
    const Scalars s = {sc[0], sc[1], sc[2], sc[3], sc[4], sc[5], sc[6], sc[7], sc[8], sc[9]};
#define NPADAM_CASE(P_, G_) if (pk == P_ && gk == G_) { flags<P_, G_>(a, d, mx, n, p, g, master, m, v, vmax, s); return 0; }
    NPADAM_CASE(0, 0) NPADAM_CASE(0, 1) NPADAM_CASE(0, 2)
    NPADAM_CASE(1, 0) NPADAM_CASE(1, 1) NPADAM_CASE(1, 2)
    NPADAM_CASE(2, 0) NPADAM_CASE(2, 1) NPADAM_CASE(2, 2)
    return 1;
}

extern "C" void convert_host(int kind, int64_t n, const float* x, uint16_t* out, float* back) {
    for (int64_t i = 0; i < n; ++i) {
        out[i] = kind == BF16 ? f32_to_bf16(x[i]) : f32_to_f16(x[i]);
        back[i] = kind == BF16 ? bf16_to_f32(out[i]) : f16_to_f32(out[i]);
    }
}
