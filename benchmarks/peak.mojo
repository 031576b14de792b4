# The CPU's arithmetic peaks, measured: every core runs 12 independent chains of one vector
# instruction on registers only (no memory traffic), at the widest vector width compiled for:
# - fp32: FMAs (2 operations per lane);
# - int8: the products of `packed_linear_int8` (kernels/linear_int8.mojo): `vpdpbusd` with VNNI, 4
#   uint8 x int8 products added per int32 lane; without, `vpmaddwd` and an add, 2 int16 products;
# - bf16: `vdpbf16ps` (AVX512_BF16), 2 bfloat16 products added per float32 lane; skipped without it.
# Run: .venv/bin/mojo run -I maxwhisper/graph benchmarks/peak.mojo
# benchmarks/encoder_gflops.py compares the encoder's throughput with them.
from kernels.linear_int8 import B64, BYTE_DOT, I16, I32V, W16, dot4, madd
from max.algorithm import sync_parallelize
from std.memory import stack_allocation
from std.memory.unsafe import bitcast
from std.sys import CompilationTarget, llvm_intrinsic, num_physical_cores, simd_width_of
from std.time import perf_counter_ns

comptime W = simd_width_of[DType.float32]()
comptime V = SIMD[DType.float32, W]
comptime CHAINS = 12  # independent instructions in flight: more than 2 units x 4-5 cycles of latency
comptime STEPS = 100_000_000
comptime BF16 = CompilationTarget._has_feature["avx512bf16"]()


@no_inline
def fma_chains(seed: Float32) -> Float32:
    var acc = stack_allocation[CHAINS, V]()
    comptime for i in range(CHAINS):
        acc[i] = V(seed + Float32(i))
    var m = V(0.999999)
    var c = V(1e-7)
    for _ in range(STEPS):
        comptime for i in range(CHAINS):
            acc[i] = acc[i] * m + c
    var total = V(0)
    comptime for i in range(CHAINS):
        total += acc[i]
    return total.reduce_add()


comptime INT8_OPS = 64 * 2 if BYTE_DOT else W * 2 * 2  # per step of a chain: `dot4`'s 64 products, or `madd`'s


@no_inline
def int8_chains(seed: Float32) -> Float32:
    comptime if BYTE_DOT:
        var acc = stack_allocation[CHAINS, I16]()
        comptime for i in range(CHAINS):
            acc[i] = I16(Int32(Int(seed)) + Int32(i))
        var a = B64(UInt8(Int(seed) % 3))
        var b = B64(1)
        for _ in range(STEPS):
            comptime for i in range(CHAINS):
                acc[i] = dot4(acc[i], a, b)
        var total = I16(0)
        comptime for i in range(CHAINS):
            total += acc[i]
        return Float32(total.reduce_add())
    else:
        var acc = stack_allocation[CHAINS, I32V]()
        comptime for i in range(CHAINS):
            acc[i] = I32V(Int32(Int(seed)) + Int32(i))
        var b = W16(1)
        for _ in range(STEPS):
            comptime for i in range(CHAINS):  # a product of the chain's own sums: no loop-invariant product
                acc[i] = madd(acc[i], bitcast[DType.int16, 2 * W](acc[i]), b)
        var total = I32V(0)
        comptime for i in range(CHAINS):
            total += acc[i]
        return Float32(total.reduce_add())


@no_inline
def bf16_chains(seed: Float32) -> Float32:
    comptime F = SIMD[DType.float32, 16]
    var acc = stack_allocation[CHAINS, F]()
    comptime for i in range(CHAINS):
        acc[i] = F(seed + Float32(i))
    var a = SIMD[DType.bfloat16, 32](1e-3)
    var b = SIMD[DType.bfloat16, 32](1e-3)
    for _ in range(STEPS):
        comptime for i in range(CHAINS):
            acc[i] = llvm_intrinsic["llvm.x86.avx512bf16.dpbf16ps.512", F](acc[i], a, b)
    var total = F(0)
    comptime for i in range(CHAINS):
        total += acc[i]
    return total.reduce_add()


def main() raises:
    var cores = min(num_physical_cores(), 1024)
    var sums = stack_allocation[1024, Float32]()

    def fp32(core: Int) {var sums}:
        sums[core] = fma_chains(Float32(core))

    def int8(core: Int) {var sums}:
        sums[core] = int8_chains(Float32(core))

    def bf16(core: Int) {var sums}:
        comptime if BF16:
            sums[core] = bf16_chains(Float32(core))

    for _ in range(3):
        var start = perf_counter_ns()
        sync_parallelize(fp32, cores)
        var seconds = Float64(perf_counter_ns() - start) / 1e9
        print("fp32:", Float64(cores * STEPS * CHAINS * W * 2) / seconds / 1e9, "GOP/s,", cores, "cores,", W,
              "lanes (check:", sums[0], ")")
        start = perf_counter_ns()
        sync_parallelize(int8, cores)
        seconds = Float64(perf_counter_ns() - start) / 1e9
        print("int8:", Float64(cores * STEPS * CHAINS * INT8_OPS) / seconds / 1e9, "GOP/s,",
              "vpdpbusd" if BYTE_DOT else "vpmaddwd + vpaddd", "(check:", sums[0], ")")
        comptime if BF16:
            start = perf_counter_ns()
            sync_parallelize(bf16, cores)
            seconds = Float64(perf_counter_ns() - start) / 1e9
            print("bf16:", Float64(cores * STEPS * CHAINS * 32 * 2) / seconds / 1e9, "GOP/s, vdpbf16ps (check:",
                  sums[0], ")")
