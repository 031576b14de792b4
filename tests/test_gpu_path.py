"""The GPU path without a GPU: the execution plans, every graph a GPU runs built for
`DeviceRef.GPU()` (built, not compiled: seconds), the weights handed to MAX, and what happens
on a machine whose GPU MAX cannot use, and the ops the portable plan writes for a GPU in place of
MAX's naive GPU kernels against references. The portable graphs' tokens are tested on the CPU in
tests/test_max_model.py; `gpu-compile` compiles them for virtual GPUs (tests/test_cli.py)."""

from __future__ import annotations

import numpy as np
import pytest
from max.dtype import DType
from max.graph import DeviceRef, TensorType, ops

from maxwhisper.api import BackendError
from maxwhisper.graph import model as graph_model
from maxwhisper.graph.layers import WeightBank, greedy_choice, greedy_choice_ops
from maxwhisper.graph.model import DTYPES, build_graph, graph_names
from maxwhisper.graph.plan import make_plan
from maxwhisper.graph.weights import graph_arrays

GRAPHS = ("encoder", "decoder_step", "token_step", "token_run", "alignment", "cache_reorder", "batch_repeat")
ONE_STEP_GRAPHS = tuple(name for name in GRAPHS if name != "token_run")  # MAXWHISPER_STEPS_PER_CALL=1
DRAFTED_GRAPHS = GRAPHS[:3] + ("draft_cross",) + GRAPHS[3:]  # the CPU's fp32 plan: its drafts' int8 cross K/V


@pytest.fixture(scope="module")
def tiny_arrays(tiny_en_checkpoint):
    return graph_arrays(tiny_en_checkpoint.state, tiny_en_checkpoint.dims)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_every_gpu_graph_builds_with_weights_of_its_dtype_and_shape(tiny_en_checkpoint, tiny_arrays, precision):
    """The decoder step's host-resident cache offset and the float16 copies of transposed weights
    (non-contiguous before) are what kept this from building or loading."""
    dims, halves = tiny_en_checkpoint.dims, {}
    plan = make_plan(WeightBank(tiny_arrays, DTYPES[precision], DeviceRef.GPU(), halves), dims)
    assert plan.name == "portable" and plan.token_step and plan.greedy_choice is greedy_choice_ops
    assert graph_names(plan) == GRAPHS
    for name in graph_names(plan):
        graph, registry = build_graph(name, tiny_arrays, dims, plan, halves)  # registry() checks each array
        assert "mo.custom" not in str(graph)  # MAX's ops only: no Mojo kernel on the GPU
        assert bool(registry) == (name in ("encoder", "decoder_step", "token_step", "token_run", "alignment"))
        assert all(a.dtype == DTYPES[precision].to_numpy() and a.flags.c_contiguous for a in registry.values())
        on_host = [i for i, v in enumerate(graph.inputs) if v.type.device == DeviceRef.CPU()]
        # a prompt's cache offset is a slice bound, on the host; a token step reads nothing there (capturable)
        assert on_host == ([2] if name == "decoder_step" else [])


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_batch_repeat_takes_and_gives_what_the_encoder_gives(tiny_en_checkpoint, tiny_arrays, precision):
    """Windows encoded together are handed out by `batch_repeat` (a shared encoder call's callers, beam
    groups): it takes the encoder's outputs as they are, float32 features in every precision. In
    fp16 it asked for float16 features, and every shared encoder call of several callers failed."""
    dims, halves = tiny_en_checkpoint.dims, {}
    plan = make_plan(WeightBank(tiny_arrays, DTYPES[precision], DeviceRef.GPU(), halves), dims)
    encoder = build_graph("encoder", tiny_arrays, dims, plan, halves)[0]
    repeat = build_graph("batch_repeat", tiny_arrays, dims, plan, halves)[0]
    encoded = [t.dtype for t in encoder.output_types]
    assert encoded[0] == DType.float32
    assert [v.type.dtype for v in repeat.inputs][1:] == encoded == [t.dtype for t in repeat.output_types]


def test_a_graph_s_input_record_states_its_inputs_once():
    from maxwhisper.graph.inputs import CacheReorderInputs

    record = CacheReorderInputs("index", ("k0", "v0", "k1", "v1"))
    assert record.flat() == ["index", "k0", "v0", "k1", "v1"]
    assert record.like(range(5)) == CacheReorderInputs(0, (1, 2, 3, 4))
    with pytest.raises(ValueError, match="more inputs than CacheReorderInputs holds"):
        record.like(range(6))


def test_a_weight_array_that_does_not_match_its_weight_is_refused():
    w = WeightBank({"lin.weight_t": np.ones((4, 3), np.float32).T}, DType.float16, DeviceRef.GPU())
    w._weight("transposed", DType.float16, (3, 4), lambda: w.arrays["lin.weight_t"].astype(np.float16))
    with pytest.raises(ValueError, match="not C-contiguous"):
        w.registry()
    w = WeightBank({}, DType.float32, DeviceRef.GPU())
    w._weight("wrong", DType.float32, (2, 2), lambda: np.zeros((2, 2), np.float16))
    with pytest.raises(ValueError, match="float16"):
        w.registry()


def test_the_cpu_plan_runs_every_kernel_and_no_kernels_runs_the_gpu_s_graphs(tiny_en_checkpoint, tiny_arrays):
    dims = tiny_en_checkpoint.dims
    cpu = make_plan(WeightBank(tiny_arrays, DType.float32, DeviceRef.CPU()), dims)
    assert cpu.name == "cpu-kernels" and cpu.greedy_choice is greedy_choice and cpu.token_step
    assert cpu.encoder_linear_kernel and cpu.encoder_attention_kernel and cpu.step_linears_kernel
    assert cpu.conv_stem_kernel and "conv stem" in cpu.describe() and not cpu.encoder_attention_bf16
    # int8's encoder attention in bfloat16 only where the caller says it pays (`cpu_features.bf16_attention_pays`)
    int8 = {
        cpu_bf16: make_plan(WeightBank(tiny_arrays, DType.float32, DeviceRef.CPU()), dims, int8=True, cpu_bf16=cpu_bf16)
        for cpu_bf16 in (False, True)
    }
    assert not int8[False].encoder_attention_bf16 and "bf16 encoder attention" not in int8[False].describe()
    assert int8[True].encoder_attention_bf16 and "bf16 encoder attention" in int8[True].describe()
    # in 12- and 16-bit integers where the caller says that pays (`cpu_features.int16_attention_pays`),
    # never beside bfloat16's, and never outside int8
    int16 = {
        cpu_bf16: make_plan(
            WeightBank(tiny_arrays, DType.float32, DeviceRef.CPU()), dims, int8=True, cpu_bf16=cpu_bf16, cpu_int16=True
        )
        for cpu_bf16 in (False, True)
    }
    assert int16[False].encoder_attention_int16 and "int16 encoder attention" in int16[False].describe()
    assert int16[True].encoder_attention_bf16 and not int16[True].encoder_attention_int16
    assert not int8[False].encoder_attention_int16
    assert not make_plan(
        WeightBank(tiny_arrays, DType.float32, DeviceRef.CPU()), dims, cpu_int16=True
    ).encoder_attention_int16
    # int8's packed linears and attention on AMX tiles where the caller may run them (`cpu_features.amx_permitted`)
    tiles = make_plan(WeightBank(tiny_arrays, DType.float32, DeviceRef.CPU()), dims, int8=True, amx=True)
    assert tiles.amx_tiles and "AMX tiles" in tiles.describe() and not int8[True].amx_tiles
    assert not make_plan(WeightBank(tiny_arrays, DType.float32, DeviceRef.CPU()), dims, amx=True).amx_tiles
    assert graph_names(cpu) == DRAFTED_GRAPHS and cpu.steps_per_call == 8
    portable = make_plan(WeightBank(tiny_arrays, DType.float32, DeviceRef.CPU()), dims, kernels=False)
    gpu = make_plan(WeightBank(tiny_arrays, DType.float32, DeviceRef.GPU()), dims)
    assert (portable.name, graph_names(portable)) == (gpu.name, graph_names(gpu))
    assert {k: v for k, v in vars(portable).items() if k != "device"} == {
        k: v for k, v in vars(gpu).items() if k != "device"
    }
    not_half = {
        k: v.astype(np.float32) + np.float32(1e-6) if k.startswith("decoder.") else v for k, v in tiny_arrays.items()
    }  # decoder weights that are not float16 numbers
    plan = make_plan(WeightBank(not_half, DType.float32, DeviceRef.CPU()), dims)
    assert plan.step_kernels and not plan.step_linears_kernel and not plan.token_step


def test_greedy_steps_a_call_come_from_the_plan_and_can_be_set(tiny_en_checkpoint, tiny_arrays, monkeypatch):
    """Both plans take 8 greedy steps a call (the token run graph), the CPU kernels' in float32
    drafted from 4 bits and checked; MAXWHISPER_STEPS_PER_CALL sets the count of either (1: no run
    graph), and a value that is not a count is refused."""
    dims = tiny_en_checkpoint.dims

    def plan(device, **kw):
        return make_plan(WeightBank(tiny_arrays, DType.float32, device), dims, **kw)

    assert plan(DeviceRef.GPU()).steps_per_call == 8 and "8 greedy steps a call" in plan(DeviceRef.GPU()).describe()
    assert plan(DeviceRef.CPU()).steps_per_call == 8 and plan(DeviceRef.CPU()).name == "cpu-kernels"
    assert "8 greedy steps a call once compiled behind, drafted" in plan(DeviceRef.CPU()).describe()
    assert plan(DeviceRef.CPU()).drafts_runs and not plan(DeviceRef.CPU(), int8=True).drafts_runs
    assert plan(DeviceRef.CPU()).int8_drafts and "drafted in int8 layers" in plan(DeviceRef.CPU()).describe()
    assert not plan(DeviceRef.CPU(), int8=True).int8_drafts and not plan(DeviceRef.GPU()).int8_drafts
    assert not plan(DeviceRef.GPU()).drafts_runs and not plan(DeviceRef.CPU(), kernels=False).drafts_runs
    monkeypatch.setenv("MAXWHISPER_STEPS_PER_CALL", "4")
    assert plan(DeviceRef.CPU()).steps_per_call == 4 and "token_run" in graph_names(plan(DeviceRef.CPU()))
    monkeypatch.setenv("MAXWHISPER_STEPS_PER_CALL", "1")
    assert graph_names(plan(DeviceRef.CPU(), kernels=False)) == ONE_STEP_GRAPHS == graph_names(plan(DeviceRef.CPU()))
    for wrong in ("0", "eight", "100"):
        monkeypatch.setenv("MAXWHISPER_STEPS_PER_CALL", wrong)
        with pytest.raises(ValueError, match="MAXWHISPER_STEPS_PER_CALL must be a whole number from 1 to 64"):
            plan(DeviceRef.GPU())


def test_the_graph_s_timestamp_rules_are_the_host_s(tiny_en_checkpoint):
    """`layers.timestamp_rules`, what a run of steps in the graph forbids, against
    `decoding.ApplyTimestampRules.suppress` on sampled sequences of every kind: no timestamp yet,
    a pair open, a pair ended, text after a timestamp, one token sampled, no timestamp rules."""
    from max import driver
    from max.engine import InferenceSession
    from max.graph import Graph, TensorType

    from maxwhisper.decoding import ApplyTimestampRules
    from maxwhisper.graph.layers import timestamp_rules
    from maxwhisper.tokenizer import get_tokenizer

    tokenizer = get_tokenizer(False)
    v, ts, eot = tiny_en_checkpoint.dims.n_vocab, tokenizer.timestamp_begin, tokenizer.eot
    column = TensorType(DType.int64, ["b"], device=DeviceRef.CPU())
    with Graph("timestamp_rules_test", input_types=[column] * 5) as graph:
        graph.output(timestamp_rules(v, *(x.tensor for x in graph.inputs)))
    rules = InferenceSession(devices=[driver.CPU()]).load(graph)

    sample_begin = 3
    text = [400, 1000]
    sequences = [
        [ts],  # one token sampled: the pair is open
        [ts, *text],
        [ts, *text, ts + 50],
        [ts, *text, ts + 50, ts + 50],
        [ts + 10, ts + 10, 220],
        [*text],  # no timestamp at all
        [ts, 100, ts + 7, ts + 9, 500],
        [ts + 3, ts + 3, 100, 200, 300],  # the last timestamp three tokens back
    ]
    for timestamps_on in (True, False):
        begin = ts if timestamps_on else v
        for seq in sequences:
            tokens = np.array([[1, 2, 3, *seq]], np.int64)
            expected = np.zeros((1, v), np.float32)
            if timestamps_on:
                ApplyTimestampRules(tokenizer, sample_begin, None).suppress(expected, tokens)
                expected[:, tokenizer.no_timestamps] = 0  # the run's suppress input holds it
            sampled = tokens[0, sample_begin:]
            stamps = sampled[sampled >= begin]
            row = [
                np.array([x], np.int64)
                for x in (
                    sampled[-1],
                    sampled[-2] if len(sampled) >= 2 else begin,
                    stamps[-1] if stamps.size else -1,
                    begin,
                    eot,
                )
            ]
            (mask,) = rules.execute(*row)
            np.testing.assert_array_equal(mask.to_numpy(), expected, err_msg=f"{seq}, timestamps {timestamps_on}")


def test_auto_falls_back_to_the_cpu_with_a_reason_when_max_cannot_use_the_gpu(monkeypatch):
    def broken():
        raise RuntimeError("CUDA driver version is insufficient")

    monkeypatch.setattr(graph_model.driver, "accelerator_count", lambda: 1)
    monkeypatch.setattr(graph_model.driver, "Accelerator", broken)
    device, why = graph_model.resolve_device("auto")
    assert device == "cpu" and "driver 580" in why and "insufficient" in why
    with pytest.raises(BackendError, match="--device gpu: MAX cannot use the GPU"):
        graph_model.resolve_device("gpu")
    assert graph_model.resolve_device("cpu") == ("cpu", None)
    assert graph_model.describe_devices() == ["cpu", "a GPU MAX cannot use"]
    monkeypatch.setattr(graph_model.driver, "accelerator_count", lambda: 0)
    assert graph_model.resolve_device("auto") == ("cpu", None)  # no GPU at all: nothing to say
    assert graph_model.gpu_status() == graph_model.NO_GPU


def test_no_kernels_is_an_option_of_the_max_backend_only():
    from maxwhisper.registry import create_transcriber

    with pytest.raises(BackendError, match="MAX backend only"):
        create_transcriber("openai", kernels=False)
    with pytest.raises(BackendError, match="fp16 only with --no-kernels"):
        create_transcriber("max", device="cpu", precision="fp16")


def _copies(monkeypatch) -> dict:
    """Counts, by input name, the copies `device_steps.StepBuffers.set` makes to the device."""
    from maxwhisper.graph import device_steps

    counts: dict[str, int] = {}
    original = device_steps.StepBuffers.set

    def counted(buffers, name, array):
        copied = original(buffers, name, array)
        counts[name] = counts.get(name, 0) + copied
        return copied

    monkeypatch.setattr(device_steps.StepBuffers, "set", counted)
    return counts


@pytest.mark.parametrize("runs", [True, False], ids=["runs", "steps"])
def test_portable_token_steps_copy_only_what_changed(
    max_tiny_en_portable, openai_tiny_en, jfk_audio, monkeypatch, runs
):
    """The token step and run graphs advance their own tokens and positions (a run its timestamp
    rules' state too): after a window's first steps nothing but a changed suppression mask is
    copied to the device. The buffers outlive the decoding: the next one borrows them again."""
    from maxwhisper.api import DecodeOptions
    from maxwhisper.graph.device_steps import DeviceStepInference, run_graph

    net = max_tiny_en_portable.net
    assert isinstance(net.inference(), DeviceStepInference) and not net.captures  # the CPU runs plain calls
    monkeypatch.setattr(net, "runs", runs)
    calls = []
    monkeypatch.setattr(
        "maxwhisper.graph.device_steps.run_graph", lambda n, b, name: calls.append((b, name)) or run_graph(n, b, name)
    )
    copies = _copies(monkeypatch)
    result = max_tiny_en_portable.transcribe(jfk_audio, DecodeOptions())
    assert result.tokens == openai_tiny_en.transcribe(jfk_audio, DecodeOptions()).tokens
    assert len({id(b) for b, _ in calls}) == 1  # one window, one set of buffers
    # the prompt's tokens run as token steps, then the graph feeds itself
    # rows and cross_keys once, or never where the pool lends buffers that hold them already
    assert copies["tokens"] <= 4 and copies["positions"] <= 4 and copies["rows"] <= 1 >= copies["cross_keys"]
    names = [name for _, name in calls]
    if runs:  # the first sampled token by a step, the rest 8 a call; each run's state was the graph's
        assert 0 < names.count("token_run") <= len(result.tokens) // 8 + 1 and names.count("token_step") <= 4
        assert copies["eot"] <= 1 and copies["previous"] <= 1 and copies["last_timestamp"] <= 1
        assert copies["suppress"] <= 3
    else:
        assert set(names) == {"token_step"} and len(names) > 20 and copies["suppress"] < len(names) / 2
    max_tiny_en_portable.transcribe(jfk_audio, DecodeOptions())
    assert len({id(b) for b, _ in calls}) == 1  # lent again


def test_captured_token_steps_give_the_tokens_of_plain_calls(
    max_tiny_en_portable, jfk_audio, lecture_60s_audio, monkeypatch, caplog, request
):
    """A GPU captures each token step once per batch size and audio length, then replays it on the
    same buffers. Emulated on the CPU: a capture that also runs the graph (as it may on a GPU), a
    replay that writes into the captured outputs. The tokens are those of plain calls; a capture
    that fails leaves plain calls, said once."""
    from maxwhisper.api import DecodeOptions
    from maxwhisper.graph.device_steps import StepBufferPool

    net = max_tiny_en_portable.net
    plain = [max_tiny_en_portable.transcribe(a, DecodeOptions()).tokens for a in (jfk_audio, lecture_60s_audio)]
    captured, replays = request.getfixturevalue("emulated_device_graphs")(net)
    assert [max_tiny_en_portable.transcribe(a, DecodeOptions()).tokens for a in (jfk_audio, lecture_60s_audio)] == plain
    assert len(captured) == 2 and len(replays) > 20  # every window has 30 s of audio: one step, one run

    def broken(graph, key, inputs):
        raise RuntimeError("capture is not supported here")

    monkeypatch.setattr(net, "capture", broken)
    monkeypatch.setattr(net, "step_buffers", StepBufferPool(net))
    with caplog.at_level("WARNING", logger="maxwhisper.graph.device_steps"):
        assert max_tiny_en_portable.transcribe(jfk_audio, DecodeOptions()).tokens == plain[0]
    assert not net.captures
    assert [r.getMessage() for r in caplog.records] == [
        "the GPU runs MAX's decoder steps one by one: capturing them failed (RuntimeError: capture "
        "is not supported here)"
    ]


def test_the_step_buffer_pool_keeps_its_newest_idle_buffers(max_tiny_en_portable):
    """Buffers lent again come from the pool; past `keep` idle ones the oldest shape's go, a shape
    whose buffers are all out included."""
    from maxwhisper.graph.device_steps import StepBufferPool

    pool = StepBufferPool(max_tiny_en_portable.net, keep=2)
    beams = pool.lend(2, 10)
    pool.give_back(beams)
    assert pool.lend(2, 10) is beams  # lent again: none of that shape is idle now
    singles = [pool.lend(1, 10) for _ in range(3)]
    for buffers in singles:
        pool.give_back(buffers)
    pool.give_back(beams)
    assert pool.lend(2, 10) is beams and pool.lend(1, 10) is singles[-1] and pool.lend(1, 10) is not singles[0]


def _run_on_cpu(name: str, input_types: list, build, *arrays: np.ndarray) -> np.ndarray:
    """A small graph built by `build(*inputs)` run on the CPU: its one output."""
    from max import driver
    from max.engine import InferenceSession
    from max.graph import Graph

    with Graph(name, input_types=input_types) as graph:
        graph.output(build(*(value.tensor for value in graph.inputs)))
    model = InferenceSession(devices=[driver.CPU()]).load(graph)
    return model.execute(*map(driver.Buffer.from_numpy, arrays))[0].to_numpy()


@pytest.mark.parametrize("stride, frames", [(1, 7), (2, 3000), (2, 501)])
def test_the_portable_convolution_is_pytorch_s_conv1d(stride, frames):
    """`layers.conv1d`, one matrix product over the three taps (MAX's conv2d is a naive kernel on a
    GPU), gives torch's Conv1d (kernel 3, padding 1) on symbolic frames, odd counts included."""
    import torch

    from maxwhisper.graph.layers import conv1d

    rng = np.random.default_rng(stride + frames)
    weight, bias = rng.standard_normal((24, 16, 3), np.float32), rng.standard_normal(24, np.float32)
    x = rng.standard_normal((2, frames, 16), np.float32)
    bank = {"conv.weight_rscf": weight.transpose(2, 1, 0)[None].copy(), "conv.bias": bias}

    def w(name):
        return ops.constant(bank[name], DType.float32, device=DeviceRef.CPU())

    ours = _run_on_cpu(
        "conv",
        [TensorType(DType.float32, ["batch", "frames", 16], device=DeviceRef.CPU())],
        lambda mel: conv1d(w, "conv", mel, stride),
        x,
    )
    conv = torch.nn.functional.conv1d(
        torch.from_numpy(x).transpose(1, 2), torch.from_numpy(weight), torch.from_numpy(bias), stride, 1
    )
    reference = conv.transpose(1, 2).numpy()
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)


def test_one_row_attention_is_softmax_of_the_scaled_scores_times_v():
    """A step's attention for one query row (`layers._one_row`: products summed along each row
    in place of a batched matrix product) against numpy's, with a mask that hides some keys."""
    from maxwhisper.graph.layers import attend_few_rows, attention_scores_few_rows

    rng = np.random.default_rng(0)
    b, h, s, dh = 2, 6, 50, 64
    q = rng.standard_normal((b, h, 1, dh), np.float32)
    k = rng.standard_normal((b, h, s, dh), np.float32)
    v_t = rng.standard_normal((b, h, dh, s), np.float32)
    mask = np.where(np.arange(s) < 30, 0.0, -np.inf).astype(np.float32).reshape(1, 1, 1, s)
    cpu = DeviceRef.CPU()
    ours = _run_on_cpu(
        "one_row_attention",
        [
            TensorType(DType.float32, ["batch", h, 1, dh], device=cpu),
            TensorType(DType.float32, ["batch", h, s, dh], device=cpu),
            TensorType(DType.float32, ["batch", h, dh, s], device=cpu),
            TensorType(DType.float32, [1, 1, 1, s], device=cpu),
        ],
        lambda q, k, v_t, mask: attend_few_rows(attention_scores_few_rows(q, k), v_t, mask),
        q,
        k,
        v_t,
        mask,
    )
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dh) + mask
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    np.testing.assert_allclose(ours, weights @ v_t.transpose(0, 1, 3, 2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("row_sums", [True, False])
def test_the_portable_step_linear_is_x_times_w_transposed_plus_b(row_sums):
    """`linear_few_rows` for one row a sequence (a token step) against numpy: each output's products
    summed, MAX's row reduction in place of its matrix-vector product (12 blocks on a GPU for a
    384-wide layer), or the matrix product without `row_sums` (the vocabulary's projection)."""
    from max import driver
    from max.engine import InferenceSession
    from max.graph import Graph

    from maxwhisper.graph.layers import linear_few_rows

    rng = np.random.default_rng(0)
    d_in, d_out = 384, 1536
    arrays = {"lin.weight": rng.standard_normal((d_out, d_in), np.float32) * 0.05}
    arrays["lin.bias"] = rng.standard_normal(d_out, np.float32)
    x = rng.standard_normal((2, 1, d_in), np.float32)
    w = WeightBank(arrays, DType.float32, DeviceRef.CPU())
    with Graph(
        f"step_linear_{row_sums}",
        input_types=[TensorType(DType.float32, ["batch", 1, d_in], device=DeviceRef.CPU())],
    ) as graph:
        graph.output(linear_few_rows(w, "lin", row_sums=row_sums)(graph.inputs[0].tensor))
    assert ("matmul" in str(graph)) is not row_sums
    model = InferenceSession(devices=[driver.CPU()]).load(graph, weights_registry=w.registry())
    ours = model.execute(driver.Buffer.from_numpy(x))[0].to_numpy()
    expected = x.astype(np.float64) @ arrays["lin.weight"].T.astype(np.float64) + arrays["lin.bias"]
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
