# `vocab_projection_int4`'s first pass (`panel_sums`: NP4 panels of 16 vocabulary rows, a low- and
# a high-nibble accumulator each) for one target CPU, as a program to compile, not to run:
# tests/test_max_model.py reads its assembly, as tile_int8_asm.mojo's. Sizes come from the
# command line so that the compiler cannot fold them into the loop.
from kernels.linear import V16
from kernels.linear_int8 import I8, I32
from kernels.vocab_projection import NP4, panel_sums
from std.memory import alloc, stack_allocation
from std.sys import argv


@no_inline
def sums(xq: I8, group_sums: I32, nibbles: UnsafePointer[UInt8, MutAnyOrigin], scales: UnsafePointer[Float32, MutAnyOrigin],
         kd: Int, dst: UnsafePointer[Float32, MutAnyOrigin]):
    var f = stack_allocation[NP4, V16]()
    panel_sums[NP4](xq, group_sums, nibbles, scales, kd, kd // 64, NP4, f)
    for i in range(NP4):
        dst.store(16 * i, f[i])


def main():
    var n = len(argv()) * 64
    var p = alloc[Float32](n * NP4 * 16).unsafe_origin_cast[MutAnyOrigin]()
    var z = alloc[Int32](n).unsafe_origin_cast[MutAnyOrigin]()
    sums(p.bitcast[Int8](), z, p.bitcast[UInt8](), p, n, p)
