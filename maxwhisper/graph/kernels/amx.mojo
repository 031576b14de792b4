# Intel AMX tiles (Sapphire Rapids and later): 8 tile registers of up to 16 rows of 64 bytes.
# In one instruction `tdpbf16ps` adds a 16 x 32 bfloat16 tile times a 32 x 16 one to a 16 x 16
# float32 tile, and `tdpbusd` a 16 x 64 uint8 tile times a 64 x 16 int8 one to a 16 x 16 int32 tile.
# Every tile here is 16 rows of 64 bytes. A thread configures the tiles before its first tile
# instruction and releases them after; the process must have asked Linux for the tile state first
# (`registry.amx_permitted`), or the first tile instruction faults.
from std.memory import stack_allocation
from std.sys import CompilationTarget, llvm_intrinsic

comptime AMX_BF16 = CompilationTarget._has_feature["amx-bf16"]()
comptime AMX_INT8 = CompilationTarget._has_feature["amx-int8"]()


@always_inline
def configure_tiles():
    """This thread's 8 tiles set to 16 rows of 64 bytes (palette 1)."""
    var config = stack_allocation[64, UInt8]()
    for i in range(64):
        config[i] = 0
    config[0] = 1
    for t in range(8):
        config[16 + 2 * t] = 64  # bytes per row, a little-endian 16-bit field
        config[48 + t] = 16  # rows
    llvm_intrinsic["llvm.x86.ldtilecfg", NoneType](config)


@always_inline
def release_tiles():
    llvm_intrinsic["llvm.x86.tilerelease", NoneType]()


@always_inline
def tile_zero[t: Int]():
    llvm_intrinsic["llvm.x86.tilezero", NoneType](Int8(t))


@always_inline
def tile_load[dtype: DType, //, t: Int](source: UnsafePointer[Scalar[dtype], ...], stride_bytes: Int):
    """Tile t's 16 rows of 64 bytes from source, stride_bytes apart."""
    llvm_intrinsic["llvm.x86.tileloadd64", NoneType](Int8(t), source, Int64(stride_bytes))


@always_inline
def tile_store[dtype: DType, //, t: Int](dest: UnsafePointer[Scalar[dtype], ...], stride_bytes: Int):
    llvm_intrinsic["llvm.x86.tilestored64", NoneType](Int8(t), dest, Int64(stride_bytes))


@always_inline
def tile_dot_bf16[c: Int, a: Int, b: Int]():
    """Float32 tile c [16, 16] += bfloat16 tile a [16, 32] x tile b, whose row p holds, for each of
    16 columns, the pair of rows 2p and 2p + 1."""
    llvm_intrinsic["llvm.x86.tdpbf16ps", NoneType](Int8(c), Int8(a), Int8(b))


@always_inline
def tile_dot_int8[c: Int, a: Int, b: Int]():
    """Int32 tile c [16, 16] += uint8 tile a [16, 64] x int8 tile b, whose row p holds, for each of
    16 columns, the 4 rows 4p .. 4p + 3: the sums exact, as `vpdpbusd`'s."""
    llvm_intrinsic["llvm.x86.tdpbusd", NoneType](Int8(c), Int8(a), Int8(b))
