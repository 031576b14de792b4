# What a decoder layer's GELU costs one thread in a token step: its half of tiny.en's 1536 hidden
# values one at a time through the standard library's erf, and 8 lanes at a time through
# `gelu_erf` (as `gelu_in_place` runs it). The best of 5 rounds of 20000 calls each.
# Run: .venv/bin/mojo run -I maxwhisper/graph benchmarks/gelu_cost.mojo
from kernels.linear import gelu_erf
from std.math import erf
from std.memory import alloc
from std.time import perf_counter_ns

comptime N = 768  # one of two threads' share of a layer's hidden values
comptime W = 8
comptime CALLS = 20000


def main():
    var src = alloc[Float32](N)
    var dst = alloc[Float32](N)
    for i in range(N):
        src[i] = Float32(i % 97) * 0.08 - 3.9  # -3.9 .. 3.78, where GELU bends
    var scalar = Float64(1e18)
    var vector = Float64(1e18)
    for _ in range(5):
        var t0 = perf_counter_ns()
        for _ in range(CALLS):
            for j in range(N):
                var v = src[j]
                dst[j] = 0.5 * v * (1 + erf(v * 0.7071067811865476))
        var t1 = perf_counter_ns()
        for _ in range(CALLS):
            for j in range(0, N, W):
                dst.store(j, gelu_erf[W](src.load[width=W](j)))
        var t2 = perf_counter_ns()
        scalar = min(scalar, Float64(t1 - t0) / CALLS)
        vector = min(vector, Float64(t2 - t1) / CALLS)
    print("GELU over", N, "values, us a call: scalar erf", scalar / 1000, "| gelu_erf", vector / 1000, "|", dst[N - 1])
    src.free()
    dst.free()
