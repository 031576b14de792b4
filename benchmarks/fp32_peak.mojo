# The CPU's float32 peak, measured: every core runs 12 independent chains of vector FMAs on
# registers only (no memory traffic), at the widest vector width the compiler targets here.
# Run: .venv/bin/mojo run benchmarks/fp32_peak.mojo
# docs/design.md compares the encoder's GFLOP/s with it.
from max.algorithm import sync_parallelize
from std.memory import stack_allocation
from std.sys import num_physical_cores, simd_width_of
from std.time import perf_counter_ns

comptime W = simd_width_of[DType.float32]()
comptime V = SIMD[DType.float32, W]
comptime CHAINS = 12  # independent FMAs in flight: more than 2 FMA units x 4-5 cycles of latency
comptime STEPS = 100_000_000


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


def main() raises:
    var cores = min(num_physical_cores(), 1024)
    var sums = stack_allocation[1024, Float32]()

    def run(core: Int) {var sums}:
        sums[core] = fma_chains(Float32(core))

    for _ in range(3):
        var start = perf_counter_ns()
        sync_parallelize(run, cores)
        var seconds = Float64(perf_counter_ns() - start) / 1e9
        var gflops = Float64(cores * STEPS * CHAINS * W * 2) / seconds / 1e9
        print(cores, "cores,", W, "float32 lanes:", gflops, "GFLOP/s (check:", sums[0], ")")
