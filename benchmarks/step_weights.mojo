# A decoder step's linear, one row against its weights, over float16-stored weights (what the fp32
# and bf16 steps read) and over the same weights stored as bfloat16 (what a bf16 step could read:
# as many bytes, widened by a shift instead of `vcvtph2ps`): `few_row_linear`'s one-row path, all
# cores, median of 41 calls after one, for tiny.en's vocabulary projection (51864 x 384) and an
# MLP linear (1536 x 384).
# Run: .venv/bin/mojo run -I maxwhisper/graph benchmarks/step_weights.mojo
from kernels.linear import few_rows
from std.memory import alloc
from std.time import perf_counter_ns


def median_ms[wtype: DType](n: Int, kd: Int, calls: Int) raises -> Float64:
    var w = alloc[Scalar[wtype]](n * kd)
    for i in range(n * kd):
        w[i] = Scalar[wtype](Float32((i * 7919) % 1000) * 1e-3 - 0.5)
    var x = alloc[Float32](kd)
    for i in range(kd):
        x[i] = Float32(i % 13) * 0.01
    var unused = alloc[Float32](n)  # scales and bias: not read
    var y = alloc[Float32](n)
    var times = List[Float64]()
    for call in range(calls + 1):
        var start = perf_counter_ns()
        few_rows[wtype](y.unsafe_origin_cast[MutAnyOrigin](), x, 1, w, n, kd, unused, unused, False)
        if call > 0:
            times.append(Float64(perf_counter_ns() - start) / 1e6)
    sort(times)
    w.free()
    x.free()
    unused.free()
    y.free()
    return times[len(times) // 2]


def main() raises:
    for shape in [(51864, 384), (1536, 384)]:
        var n = shape[0]
        var kd = shape[1]
        print(n, "x", kd, "weights: float16", median_ms[DType.float16](n, kd, 41), "ms, bfloat16",
              median_ms[DType.bfloat16](n, kd, 41), "ms")
