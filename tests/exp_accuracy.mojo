# `exp_nonpositive` (kernels/attention.mojo) over x in [-87, 0], 8 lanes and 1, against exp in
# float64: prints the largest relative error, then exp_nonpositive of 0 and of -100.
# tests/test_max_model.py runs it (`mojo run`).
from kernels.attention import exp_nonpositive
from std.math import exp


def main():
    comptime N = 1 << 20
    var worst = Float64(0)
    for i in range(0, N, 8):
        var x = SIMD[DType.float32, 8]()
        for j in range(8):
            x[j] = Float32(-87.0 * Float64(i + j) / Float64(N - 1))
        var e = exp_nonpositive[8](x)
        for j in range(8):
            var want = exp(x[j].cast[DType.float64]())
            worst = max(worst, abs(e[j].cast[DType.float64]() - want) / want)
            var one = exp_nonpositive[1](x[j])
            worst = max(worst, abs(one.cast[DType.float64]() - want) / want)
    print(worst)
    print(exp_nonpositive[1](Float32(0)))
    print(exp_nonpositive[1](Float32(-100)))
