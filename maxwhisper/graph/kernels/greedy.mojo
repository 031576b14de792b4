# Greedy token choice on the CPU, inside the decoder-step graph: the host then reads one token and
# one log probability per sequence instead of a 51k-wide row, and does no 51k-wide numpy work
# between steps (which also let MAX's worker threads cool down).
# It computes what `maxwhisper.decoding` does on the host for greedy decoding at temperature 0:
# the suppression mask, openai's "timestamps more probable than any text token" rule, argmax,
# and the float32 log probability. The exps are float32's, eight lanes at a time, summed in float64:
# within an ulp or two of the host's float64 exps at half the time (docs/design.md#numerics).
import extensibility
from extensibility import InputTensor, OutputTensor
from max.algorithm import sync_parallelize
from max.gpu.host import DeviceContext
from std.math import exp, log
from std.utils.numerics import neg_inf

comptime W = 8  # float32 lanes per SIMD vector (AVX2)


def exp_sum(row: UnsafePointer[Float32, ...], sup: UnsafePointer[Float32, ...], lo: Int, hi: Int, m: Float32) -> Float64:
    """sum of exp(row + sup - m) over [lo, hi), x - m and exp in float32, the sum in float64: a
    float32 sum over 51k terms loses up to ~1e-4 of it, this one an ulp of the exps'."""
    var acc = SIMD[DType.float64, W](0)
    var j = lo
    while j + W <= hi:
        acc += exp(row.load[width=W](j) + sup.load[width=W](j) - m).cast[DType.float64]()
        j += W
    var total = acc.reduce_add()
    while j < hi:
        total += Float64(exp(row[j] + sup[j] - m))
        j += 1
    return total


def log_sum(row: UnsafePointer[Float32, ...], sup: UnsafePointer[Float32, ...], lo: Int, hi: Int, m: Float32) -> Float32:
    """log(sum(exp(x - m))): the float64 sum's log, rounded to float32."""
    return Float32(log(exp_sum(row, sup, lo, hi, m)))


def masked_max(row: UnsafePointer[Float32, ...], sup: UnsafePointer[Float32, ...], lo: Int, hi: Int) -> Float32:
    """max of row + sup over [lo, hi); -inf when empty."""
    var acc = SIMD[DType.float32, W](neg_inf[DType.float32]())
    var j = lo
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


@extensibility.register("greedy_choice")
struct GreedyChoice:
    """For each sequence b: x = logits[b, -1] + suppress[b] (suppress: 0 or -inf). If
    logsumexp(log_softmax(x)[ts:]) > max(log_softmax(x)[:ts]), the text tokens [:ts] are
    suppressed too (ts = timestamp_begin; n_vocab when there are no timestamps). Then
    token[b] = argmax(x) (the first of equal maxima) and logprob[b] = log_softmax(x)[token[b]].

    logits float32 [B, k, V], suppress float32 [B, V], timestamp_begin int64 [B] (each sequence's
    own) or [1] (all the same) -> token int64 [B], logprob float32 [B]. A negative timestamp_begin
    skips the choice (for calls that want only the logits; outputs -1 and 0). Without `with_logprob`
    the token alone (logprob 0), for a draft that is checked later: no sum over the vocabulary,
    so a near tie of the timestamp rule may go the other way. CPU only.
    """

    @staticmethod
    def execute[target: StaticString, with_logprob: Bool](
        token: OutputTensor[dtype=DType.int64, rank=1, ...],
        logprob: OutputTensor[dtype=DType.float32, rank=1, ...],
        logits: InputTensor[dtype=DType.float32, rank=3, ...],
        suppress: InputTensor[dtype=DType.float32, rank=2, ...],
        timestamp_begin: InputTensor[dtype=DType.int64, rank=1, ...],
        ctx: DeviceContext,
    ) raises:
        comptime if target != "cpu":
            raise Error("greedy_choice runs on the CPU only")
        var k = logits.dim_size(1)
        var v = logits.dim_size(2)
        var per_row = timestamp_begin.dim_size(0) != 1
        if per_row and timestamp_begin.dim_size(0) != logits.dim_size(0):
            raise Error("greedy_choice: timestamp_begin is neither [1] nor one per sequence")
        var lp = logits.unsafe_ptr()
        var sp = suppress.unsafe_ptr()
        var tp = token.unsafe_ptr()
        var op = logprob.unsafe_ptr()
        var tsp = timestamp_begin.unsafe_ptr()

        def choose(b: Int) {var lp, var sp, var tp, var op, var k, var v, var tsp, var per_row}:
            var ts = min(Int(tsp[b if per_row else 0]), v)
            if ts < 0:
                tp[b] = -1
                op[b] = 0
                return
            var row = lp + (b * k + k - 1) * v
            var sup = sp + b * v
            # the largest entry among text tokens [0, ts) and among timestamps [ts, v), first index
            var text_max = masked_max(row, sup, 0, ts)
            var ts_max = masked_max(row, sup, ts, v)
            var text_arg = first_index(row, sup, 0, ts, text_max)
            var ts_arg = first_index(row, sup, ts, v, ts_max)
            var chosen = text_arg if text_max >= ts_max else ts_arg
            var stamps = ts < v and ts_max > neg_inf[DType.float32]()
            # the timestamps' logsumexp relative to their largest entry
            var ts_ls = log_sum(row, sup, ts, v, ts_max) if stamps else Float32(0)
            comptime if not with_logprob:  # the rule below without the log-softmax, which cancels from both sides
                if stamps and ts_ls + ts_max > text_max:
                    chosen = ts_arg
                tp[b] = Int64(chosen)
                op[b] = 0
                return
            var m = max(text_max, ts_max)
            var ls = log_sum(row, sup, 0, v, m)
            var chosen_max = m
            if stamps and ts_ls + ((ts_max - m) - ls) > (text_max - m) - ls:  # sample a timestamp
                chosen, chosen_max, ls = ts_arg, ts_max, ts_ls
            tp[b] = Int64(chosen)
            op[b] = (row[chosen] + sup[chosen] - chosen_max) - ls

        sync_parallelize(choose, logits.dim_size(0))
