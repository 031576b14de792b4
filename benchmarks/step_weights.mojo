# A decoder step's linear, one row against its weights, over float16-stored weights (what the fp32
# and bf16 steps read) and over the same weights stored as bfloat16 (what a bf16 step could read:
# as many bytes, widened by a shift instead of `vcvtph2ps`): `few_row_linear`'s one-row path, all
# cores, median of 41 calls of each after one, the two alternating, for tiny.en's vocabulary
# projection (51864 x 384) and an MLP linear (1536 x 384).
# Run: .venv/bin/mojo run -I maxwhisper/graph benchmarks/step_weights.mojo
from kernels.linear import few_rows
from std.memory import alloc
from std.time import perf_counter_ns


def fill[wtype: DType](n: Int) -> UnsafePointer[Scalar[wtype], MutAnyOrigin]:
    var w = alloc[Scalar[wtype]](n).unsafe_origin_cast[MutAnyOrigin]()
    for i in range(n):
        w[i] = Scalar[wtype](Float32((i * 7919) % 1000) * 1e-3 - 0.5)
    return w


def main() raises:
    comptime CALLS = 41
    for shape in [(51864, 384), (1536, 384)]:
        var n = shape[0]
        var kd = shape[1]
        var half = fill[DType.float16](n * kd)
        var brain = fill[DType.bfloat16](n * kd)
        var x = fill[DType.float32](kd)
        var unused = alloc[Float32](n)  # scales and bias: not read
        var y = alloc[Float32](n).unsafe_origin_cast[MutAnyOrigin]()
        var t16 = List[Float64]()
        var tb16 = List[Float64]()
        for call in range(CALLS + 1):  # alternately, so that a drift in the machine's speed hits both
            var start = perf_counter_ns()
            few_rows[DType.float16](y, x, 1, half, n, kd, unused, unused, False)
            var middle = perf_counter_ns()
            few_rows[DType.bfloat16](y, x, 1, brain, n, kd, unused, unused, False)
            var end = perf_counter_ns()
            if call > 0:
                t16.append(Float64(middle - start) / 1e6)
                tb16.append(Float64(end - middle) / 1e6)
        sort(t16)
        sort(tb16)
        print(n, "x", kd, "weights: float16", t16[CALLS // 2], "ms, bfloat16", tb16[CALLS // 2], "ms")
        half.free()
        brain.free()
        x.free()
        unused.free()
        y.free()
