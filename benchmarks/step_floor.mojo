# The floor of an int8 one-token step on this machine: its bytes (tiny.en at position 150, as
# benchmarks/step_split.py counts them) streamed by every thread with nothing else to do, once as
# one phase and once cut into the step's phases (`share_phases`, 11 a layer, then the projection's
# 4-bit pass), the two alternating, median of 41 calls of each after one.
# Run: .venv/bin/mojo run -I maxwhisper/graph benchmarks/step_floor.mojo
from kernels.threads import MAX_PHASES, share_phases
from std.memory import alloc, stack_allocation
from std.time import perf_counter_ns

comptime CHUNK = 4096  # bytes a work item
comptime CALLS = 41


def stream(data: UnsafePointer[Int8, MutAnyOrigin], starts: UnsafePointer[Int, MutAnyOrigin], last: Int,
           sink: UnsafePointer[Int32, MutAnyOrigin]) raises:
    """Reads every byte of data, phase p < last over [starts[p], starts[p + 1]), at most MAX_PHASES
    phases a `share_phases` call."""
    var first = 0
    while first < last:
        var phases = min(MAX_PHASES, last - first)
        var items = stack_allocation[MAX_PHASES, Int]()
        for p in range(phases):
            items[p] = (starts[first + p + 1] - starts[first + p] + CHUNK - 1) // CHUNK
        var base = first

        def read(p: Int, i: Int) {var data, var sink, var starts, var base}:
            var start = starts[base + p] + i * CHUNK
            var end = min(start + CHUNK, starts[base + p + 1])
            var acc = SIMD[DType.int8, 32](0)
            for j in range(start, end - 31, 32):
                acc ^= data.load[width=32](j)
            sink[i % 1024] = Int32(acc.reduce_add())

        share_phases(items, phases, read)
        first += phases


def main() raises:
    comptime d = 384
    comptime heads = 6
    comptime frames = 1500
    comptime position = 150
    comptime vocab = 51864
    var phases = List[Int]()  # bytes each phase reads
    for _ in range(4):
        for size in [d * 4, 3 * d * d, 2 * position * d * 4, d * d, d * 4, d * d, 2 * frames * d + 2 * heads * frames * 4,
                     d * d, d * 4, 4 * d * d, 4 * d * d]:
            phases.append(size)
    phases.append(vocab * d // 2 + vocab * d // 64 * 4)
    var cut = alloc[Int](len(phases) + 1).unsafe_origin_cast[MutAnyOrigin]()
    cut[0] = 0
    for p in range(len(phases)):
        cut[p + 1] = cut[p] + phases[p]
    var total = cut[len(phases)]
    var whole = alloc[Int](2).unsafe_origin_cast[MutAnyOrigin]()
    whole[0] = 0
    whole[1] = total
    var data = alloc[Int8](total).unsafe_origin_cast[MutAnyOrigin]()
    for i in range(total):
        data[i] = Int8(i % 7)
    var sink = alloc[Int32](1024).unsafe_origin_cast[MutAnyOrigin]()
    var t_whole = List[Float64]()
    var t_cut = List[Float64]()
    for call in range(CALLS + 1):
        var start = perf_counter_ns()
        stream(data, whole, 1, sink)
        var middle = perf_counter_ns()
        stream(data, cut, len(phases), sink)
        var end = perf_counter_ns()
        if call > 0:
            t_whole.append(Float64(middle - start) / 1e6)
            t_cut.append(Float64(end - middle) / 1e6)
    sort(t_whole)
    sort(t_cut)
    print(Float64(total) / 1e6, "MB a step")
    print("one phase:", t_whole[CALLS // 2], "ms,", Float64(total) / t_whole[CALLS // 2] / 1e6, "GB/s")
    print(len(phases), "phases:", t_cut[CALLS // 2], "ms,", Float64(total) / t_cut[CALLS // 2] / 1e6, "GB/s")
    data.free()
    sink.free()
    cut.free()
    whole.free()
