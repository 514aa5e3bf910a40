// Runtime values -> template arguments, for the host builds of npadam's kernels (adam_host.cu,
// emulate.cpp): with_kind / with_bool call a generic lambda with std::integral_constant arguments, so a
// nest of them instantiates the lambda's body for every combination; the body prunes the combinations
// a test library does not build with `if constexpr` (returning 1: "not built").
#pragma once

#include <type_traits>

namespace npadam_test {

template <int K> using Int = std::integral_constant<int, K>;
template <bool B> using Bool = std::integral_constant<bool, B>;

// f(Int<k>()) for a storage kind k in 0, 1, 2; 1 for any other value.
template <class F> int with_kind(int k, F f) {
    switch (k) {
        case 0: return f(Int<0>());
        case 1: return f(Int<1>());
        case 2: return f(Int<2>());
        default: return 1;
    }
}

// f(Int<k>()) for a moment's storage kind k in 0 ... 4 (float32, bfloat16, float16, float8_e4m3fn,
// float8_e5m2); 1 for any other value.
template <class F> int with_moment_kind(int k, F f) {
    switch (k) {
        case 3: return f(Int<3>());
        case 4: return f(Int<4>());
        default: return with_kind(k, f);
    }
}

// f(Bool<b != 0>()).
template <class F> int with_bool(int b, F f) { return b ? f(Bool<true>()) : f(Bool<false>()); }

// f(Int<wm>()) for a master mode wm in 0, 1, 2 (adam_math.cuh's MasterMode: float32 masters, int16
// remainders, float16 masters); 1 for any other value. (The same three values as the storage kinds.)
template <class F> int with_master(int wm, F f) { return with_kind(wm, f); }

}  // namespace npadam_test
