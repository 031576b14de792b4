# Greedy token choice on the CPU, inside the decoder-step graph: the host then reads one token and
# one log probability per sequence instead of a 51k-wide row, and does no 51k-wide numpy work
# between steps (which also let MAX's worker threads cool down).
# It computes what `maxwhisper.decoding` does on the host for greedy decoding at temperature 0:
# the suppression mask, openai's "timestamps more probable than any text token" rule, argmax,
# and the float32 log probability with exp and its sum in float64, as the host computes them.
# The vocabulary is cut into chunks that every thread shares (`share_phases`): the largest entries,
# then the float64 exp sum (most of the work), then each sequence's choice from the chunks' results.
import extensibility
from extensibility import InputTensor, OutputTensor
from max.gpu.host import DeviceContext
from std.math import exp, log
from std.memory import alloc, stack_allocation
from std.utils.numerics import neg_inf

from .threads import share_phases

comptime W = 8  # float32 lanes per SIMD vector (AVX2)
comptime CHUNK = 8192  # vocabulary entries per work item (7 for Whisper's 51864-51866)


def exp_sum(row: UnsafePointer[Float32, ...], sup: UnsafePointer[Float32, ...], lo: Int, hi: Int, m: Float32) -> Float64:
    """sum of exp(row + sup - m) over [lo, hi), x - m in float32, exp and sum in float64: exact
    to float64 rounding, where a float32 sum over 51k terms loses up to ~1e-4 of it."""
    var acc = SIMD[DType.float64, W](0)
    var j = lo
    while j + W <= hi:
        acc += exp((row.load[width=W](j) + sup.load[width=W](j) - m).cast[DType.float64]())
        j += W
    var total = acc.reduce_add()
    while j < hi:
        total += exp(Float64(row[j] + sup[j] - m))
        j += 1
    return total


def log_sum(row: UnsafePointer[Float32, ...], sup: UnsafePointer[Float32, ...], lo: Int, hi: Int, m: Float32) -> Float32:
    """log(sum(exp(x - m))) as decoding.py computes it: the float64 sum's log, rounded to float32."""
    return Float32(log(exp_sum(row, sup, lo, hi, m)))


def masked_max(row: UnsafePointer[Float32, ...], sup: UnsafePointer[Float32, ...], lo: Int, hi: Int) -> Float32:
    """max of row + sup over [lo, hi); -inf when empty. Four running maxima, so that each max
    does not wait for the one before (a maximum is the same in any order)."""
    comptime V = SIMD[DType.float32, W]
    var a0 = V(neg_inf[DType.float32]())
    var a1 = a0
    var a2 = a0
    var a3 = a0
    var j = lo
    while j + 4 * W <= hi:
        a0 = max(a0, row.load[width=W](j) + sup.load[width=W](j))
        a1 = max(a1, row.load[width=W](j + W) + sup.load[width=W](j + W))
        a2 = max(a2, row.load[width=W](j + 2 * W) + sup.load[width=W](j + 2 * W))
        a3 = max(a3, row.load[width=W](j + 3 * W) + sup.load[width=W](j + 3 * W))
        j += 4 * W
    var acc = max(max(a0, a1), max(a2, a3))
    while j + W <= hi:
        acc = max(acc, row.load[width=W](j) + sup.load[width=W](j))
        j += W
    var m = acc.reduce_max()
    while j < hi:
        m = max(m, row[j] + sup[j])
        j += 1
    return m


def first_index(row: UnsafePointer[Float32, ...], sup: UnsafePointer[Float32, ...], lo: Int, hi: Int, value: Float32) -> Int:
    """The first j in [lo, hi) with row[j] + sup[j] == value (lo when there is none)."""
    var j = lo
    while j + W <= hi:
        if (row.load[width=W](j) + sup.load[width=W](j)).eq(value).reduce_or():
            break
        j += W
    while j < hi:
        if row[j] + sup[j] == value:
            return j
        j += 1
    return lo


def timestamp_logsumexp(row: UnsafePointer[Float32, ...], sup: UnsafePointer[Float32, ...], lo: Int, hi: Int,
                        m: Float32, ls: Float32, top: Float32) -> Float32:
    """decoding.logsumexp of the log probabilities x - m - ls over [lo, hi), whose largest is
    `top`: each term's x - m - ls - top in float32, its exp and their sum in float64."""
    var acc = SIMD[DType.float64, W](0)
    var j = lo
    while j + W <= hi:
        acc += exp((((row.load[width=W](j) + sup.load[width=W](j) - m) - ls) - top).cast[DType.float64]())
        j += W
    var total = acc.reduce_add()
    while j < hi:
        total += exp(Float64(((row[j] + sup[j] - m) - ls) - top))
        j += 1
    return Float32(log(total)) + top


@extensibility.register("greedy_choice")
struct GreedyChoice:
    """For each sequence b: x = logits[b, -1] + suppress[b] (suppress: 0 or -inf). If
    logsumexp(log_softmax(x)[ts:]) > max(log_softmax(x)[:ts]), the text tokens [:ts] are
    suppressed too (ts = timestamp_begin; n_vocab when there are no timestamps). Then
    token[b] = argmax(x) (the first of equal maxima) and logprob[b] = log_softmax(x)[token[b]].

    logits float32 [B, k, V], suppress float32 [B, V], timestamp_begin int64 [B] (each sequence's
    own) or [1] (all the same) -> token int64 [B], logprob float32 [B]. A negative timestamp_begin
    skips the choice (for calls that want only the logits; outputs -1 and 0). CPU only.
    """

    @staticmethod
    def execute[target: StaticString](
        token: OutputTensor[dtype=DType.int64, rank=1, ...],
        logprob: OutputTensor[dtype=DType.float32, rank=1, ...],
        logits: InputTensor[dtype=DType.float32, rank=3, ...],
        suppress: InputTensor[dtype=DType.float32, rank=2, ...],
        timestamp_begin: InputTensor[dtype=DType.int64, rank=1, ...],
        ctx: DeviceContext,
    ) raises:
        comptime if target != "cpu":
            raise Error("greedy_choice runs on the CPU only")
        var nb = logits.dim_size(0)
        var k = logits.dim_size(1)
        var v = logits.dim_size(2)
        var per_row = timestamp_begin.dim_size(0) != 1
        if per_row and timestamp_begin.dim_size(0) != nb:
            raise Error("greedy_choice: timestamp_begin is neither [1] nor one per sequence")
        var lp = logits.unsafe_ptr()
        var sp = suppress.unsafe_ptr()
        var tp = token.unsafe_ptr()
        var op = logprob.unsafe_ptr()
        var tsp = timestamp_begin.unsafe_ptr()
        var chunks = (v + CHUNK - 1) // CHUNK
        # each chunk's results, [B, chunks]: the largest text and timestamp entries and where they
        # first are, then its sum of exp(x - m) over the row's largest m
        var text_max = alloc[Float32](nb * chunks)
        var text_arg = alloc[Int](nb * chunks)
        var ts_max = alloc[Float32](nb * chunks)
        var ts_arg = alloc[Int](nb * chunks)
        var sums = alloc[Float64](nb * chunks)

        def largest(item: Int) {var lp, var sp, var tsp, var per_row, var k, var v, var chunks, var text_max,
                                var text_arg, var ts_max, var ts_arg}:
            var b = item // chunks
            var ts = min(Int(tsp[b if per_row else 0]), v)
            if ts < 0:
                return
            var row = lp + (b * k + k - 1) * v
            var sup = sp + b * v
            var lo = (item % chunks) * CHUNK
            var hi = min(lo + CHUNK, v)
            var text_hi = max(lo, min(hi, ts))  # text tokens [lo, text_hi), timestamps [ts_lo, hi)
            var ts_lo = min(hi, max(lo, ts))
            text_max[item] = masked_max(row, sup, lo, text_hi)
            text_arg[item] = first_index(row, sup, lo, text_hi, text_max[item])
            ts_max[item] = masked_max(row, sup, ts_lo, hi)
            ts_arg[item] = first_index(row, sup, ts_lo, hi, ts_max[item])

        def exp_sums(item: Int) {var lp, var sp, var tsp, var per_row, var k, var v, var chunks, var text_max,
                                 var ts_max, var sums}:
            var b = item // chunks
            if min(Int(tsp[b if per_row else 0]), v) < 0:
                return
            var m = neg_inf[DType.float32]()
            for c in range(b * chunks, (b + 1) * chunks):
                m = max(m, max(text_max[c], ts_max[c]))
            var lo = (item % chunks) * CHUNK
            sums[item] = exp_sum(lp + (b * k + k - 1) * v, sp + b * v, lo, min(lo + CHUNK, v), m)

        def choose(b: Int) {var lp, var sp, var tp, var op, var k, var v, var tsp, var per_row, var chunks,
                            var text_max, var text_arg, var ts_max, var ts_arg, var sums}:
            var ts = min(Int(tsp[b if per_row else 0]), v)
            if ts < 0:
                tp[b] = -1
                op[b] = 0
                return
            var row = lp + (b * k + k - 1) * v
            var sup = sp + b * v
            # the largest entry among text tokens [0, ts) and among timestamps [ts, v), first index
            var best_text = neg_inf[DType.float32]()
            var best_ts = neg_inf[DType.float32]()
            var best_text_arg = 0
            var best_ts_arg = ts
            var total = Float64(0)
            for c in range(b * chunks, (b + 1) * chunks):
                if text_max[c] > best_text:
                    best_text, best_text_arg = text_max[c], text_arg[c]
                if ts_max[c] > best_ts:
                    best_ts, best_ts_arg = ts_max[c], ts_arg[c]
                total += sums[c]
            var m = max(best_text, best_ts)
            var ls = Float32(log(total))
            var chosen = best_text_arg if best_text >= best_ts else best_ts_arg
            var chosen_max = m
            if ts < v and best_ts > neg_inf[DType.float32]():
                # logsumexp of the timestamps' log probabilities, as decoding.logsumexp (float64 sum)
                var timestamp_logprob = timestamp_logsumexp(row, sup, ts, v, m, ls, (best_ts - m) - ls)
                if timestamp_logprob > (best_text - m) - ls:  # sample a timestamp
                    chosen, chosen_max = best_ts_arg, best_ts
                    ls = log_sum(row, sup, ts, v, best_ts)
            tp[b] = Int64(chosen)
            op[b] = (row[chosen] + sup[chosen] - chosen_max) - ls

        def phase(p: Int, item: Int) {var largest, var exp_sums, var choose}:
            if p == 0:
                largest(item)
            elif p == 1:
                exp_sums(item)
            else:
                choose(item)

        var items = stack_allocation[3, Int]()
        items[0] = nb * chunks
        items[1] = nb * chunks
        items[2] = nb
        share_phases(items, 3, phase)
        text_max.free()
        text_arg.free()
        ts_max.free()
        ts_arg.free()
        sums.free()
