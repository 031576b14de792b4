"""Whisper on MAX: compiles the encoder, decoder-step and (CPU kernels) one-token step graphs once and runs them.

`MaxWhisper` implements the `WhisperModel` protocol of `maxwhisper.decoding`: `encode()` returns
features that stay on the device, `inference()` a decoder with its own KV cache buffers.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from max import driver
from max._mlir_context import ensure_default_mlir_context  # private, but what max.graph itself uses
from max.dtype import DType
from max.engine import InferenceSession
from max.graph import DeviceRef, Graph, Module

from ..api import BackendError
from ..checkpoint import Checkpoint, ModelDims
from ..cpu_features import BF16_MISSING, amx_permitted, bf16_attention_pays, has_bf16, int16_attention_pays
from ..decoding import RunRules
from .compiled import artifact_paths, compile_graph, custom_ops_unchecked, gpu_arch
from .decoder import (
    build_alignment_graph,
    build_batch_repeat_graph,
    build_cache_reorder_graph,
    build_decoder_graph,
    build_draft_cross_graph,
    build_token_run_graph,
    build_token_step_graph,
)
from .encoder import build_encoder_graph
from .inputs import (
    AlignmentInputs,
    BatchRepeatInputs,
    CacheReorderInputs,
    DraftCrossInputs,
    EncoderInputs,
    GraphInputs,
    StepInputs,
    TokenRunInputs,
    TokenStepInputs,
    cache_shapes,
)
from .layers import WeightBank
from .plan import ExecutionPlan, make_plan
from .weights import graph_arrays

logger = logging.getLogger(__name__)
GPU_QUEUE = threading.RLock()  # `MaxWhisper.device_lock` on a GPU
# int8: the weights; bf16: the encoder's and the prompts' linears; activations float32 between them
DTYPES = {"fp32": DType.float32, "fp16": DType.float16, "int8": DType.float32, "bf16": DType.float32}
# every graph a model may run: those of `first_graphs` are compiled together at load, the rest on first use
GRAPHS = (
    "encoder",
    "decoder_step",
    "token_step",
    "draft_cross",
    "token_run",
    "alignment",
    "cache_reorder",
    "batch_repeat",
)
RUN_GRAPHS = ("draft_cross", "token_run")  # what greedy runs call (`MaxChoosingInference.greedy_run`)


# MAX starts a thread at a process's first graph call that wakes every 0.5 ms on a timed wait, busy
# or idle, on CPU time that the pool's threads or another worker want. Nothing in MAX sets that
# period; a thread inherits its creator's timer slack (Linux), so each model's first graph call runs
# with this slack (the process's first starts the thread), and that thread wakes about every 10 ms
# instead (docs/design.md: what it saved).
RUNTIME_THREAD_SLACK_NS = 10_000_000
# where the plan has a token step graph, a prompt of at most this many tokens (a window without previous
# text: sot, [language, task,] notimestamps) runs as that many one-token steps of it, which cost less
# than the generic step graph's prompt call (docs/design.md, "Batched steps"); int8's and bf16's steps
# compute otherwise than their prompts (float32 activations), so their tokens may differ in places
PROMPT_TOKEN_STEPS = 3
_PR_SET_TIMERSLACK, _PR_GET_TIMERSLACK = 29, 30


@contextmanager
def timer_slack(ns: int):
    """This thread's timer slack set to `ns` nanoseconds meanwhile (Linux; elsewhere nothing): the
    threads it starts meanwhile keep it."""
    if not sys.platform.startswith("linux"):
        yield
        return
    prctl = ctypes.CDLL(None).prctl
    before = prctl(_PR_GET_TIMERSLACK, 0, 0, 0, 0)
    prctl(_PR_SET_TIMERSLACK, ns, 0, 0, 0)
    try:
        yield
    finally:
        prctl(_PR_SET_TIMERSLACK, before, 0, 0, 0)


def graph_names(plan: ExecutionPlan) -> tuple[str, ...]:
    """The graphs a model runs under `plan` (the token step and run graphs where the plan has them,
    the draft cross graph where it drafts its runs)."""
    runs = plan.token_step and plan.steps_per_call > 1
    has = {"token_step": plan.token_step, "token_run": runs, "draft_cross": runs and plan.int8_drafts}
    return tuple(name for name in GRAPHS if has.get(name, True))


def first_graphs(plan: ExecutionPlan) -> tuple[str, ...]:
    """The graphs a model compiles at load: those a first window needs. Where a window's prompt
    without previous text runs as token steps (`PROMPT_TOKEN_STEPS`), the generic step graph,
    about as long to compile as the two others together, waits for a prompt with previous text."""
    return ("encoder", "token_step") if plan.token_step else ("encoder", "decoder_step")


def build_graph(
    name: str,
    arrays: dict[str, np.ndarray],
    dims: ModelDims,
    plan: ExecutionPlan,
    copies: dict | None = None,
    module: Module | None = None,
) -> tuple[Graph, dict[str, np.ndarray]]:
    """Graph `name` (one of GRAPHS) under `plan`, and the weights registry that fills it (arrays
    from `weights.graph_arrays`; copies: float16, int8 and int4 copies shared between graphs;
    module: built into it, the encoder and step graphs only)."""
    if name == "cache_reorder":
        return build_cache_reorder_graph(dims, plan.dtype, plan.device), {}
    if name == "batch_repeat":
        return build_batch_repeat_graph(dims, plan.dtype, plan.device, plan.cross_int8), {}
    if name == "draft_cross":
        return build_draft_cross_graph(dims, plan.device), {}
    w = WeightBank(arrays, plan.dtype, plan.device, copies)
    graph = {
        "encoder": lambda: build_encoder_graph(w, dims, plan, module),
        "decoder_step": lambda: build_decoder_graph(w, dims, plan, module),
        "token_step": lambda: build_token_step_graph(w, dims, plan, module),
        "token_run": lambda: build_token_run_graph(w, dims, plan, module),
        "alignment": lambda: build_alignment_graph(w, dims, plan),
    }[name]()
    return graph, w.registry()


NO_GPU = "MAX sees no GPU on this machine"


def gpu_status() -> str | None:
    """None when MAX can use a GPU here, else one line saying why not (NO_GPU; a GPU MAX cannot
    open, e.g. under an NVIDIA driver older than MAX needs)."""
    try:
        if driver.accelerator_count() == 0:
            return NO_GPU
        driver.Accelerator()
    except Exception as e:  # noqa: BLE001 - whatever the driver says, the CPU still works
        return f"MAX cannot use the GPU (MAX 26.7 needs an NVIDIA driver 580 or newer): {type(e).__name__}: {e}"
    return None


def gpu_available() -> bool:
    return gpu_status() is None


def resolve_device(device: str) -> tuple[str, str | None]:
    """ "auto" -> ("gpu", None) when MAX can use a GPU, ("cpu", None) when there is none, and
    ("cpu", why not) when there is one MAX cannot use; "gpu" without a usable one is an error."""
    problem = gpu_status() if device in ("auto", "gpu") else None
    if device == "auto":
        return ("cpu", None if problem == NO_GPU else problem) if problem else ("gpu", None)
    if device == "gpu" and problem:
        raise BackendError(f"--device gpu: {problem} (use --device cpu or auto)")
    return device, None


_cpu_threads: list[int] = []  # the CPU threads MAX runs on in this process, once its CPU device exists


def cpu_device(threads: int | None = None) -> driver.CPU:
    """MAX's CPU device, its threads limited to `threads` (None: every core the process may use).
    MAX sizes its thread pool from the process's CPU affinity when the first CPU device is made
    (`InferenceSession(num_threads=...)` aborts in MAX 26.7: another device exists by then), so the
    affinity is narrowed while it is made and widened back for every thread after: the pool has
    `threads` threads that run on any core. Once per process: a later different count is an error."""
    allowed = os.sched_getaffinity(0)
    wanted = len(allowed) if threads is None else min(threads, len(allowed))  # more threads than cores: every core
    if _cpu_threads:
        if threads is not None and wanted != _cpu_threads[0]:
            raise BackendError(
                f"MAX already runs on {_cpu_threads[0]} CPU threads in this process; it cannot change to {threads}"
            )
        return driver.CPU()
    if wanted == len(allowed):
        device = driver.CPU()
    else:
        os.sched_setaffinity(0, sorted(allowed)[:wanted])
        try:
            device = driver.CPU()
        finally:
            for thread in os.listdir("/proc/self/task"):
                os.sched_setaffinity(int(thread), allowed)
    _cpu_threads.append(wanted)
    return device


def check_precision(device: str, precision: str, kernels: bool = True) -> None:
    """A BackendError when MAX cannot run `precision` on `device` ("cpu" or "gpu"), before anything loads."""
    supported = {"cpu": ("fp32", "int8", "bf16") if kernels else ("fp32", "fp16"), "gpu": ("fp32", "fp16")}[device]
    if precision not in supported:
        described = (
            "fp32, int8, bf16 (fp16 only with --no-kernels, to test the GPU's graphs: slow)"
            if kernels and device == "cpu"
            else ", ".join(supported)
        )
        raise BackendError(
            f"MAX on {device}{'' if kernels else ' without kernels'} supports precision {described}, not {precision}"
        )
    if precision == "bf16" and not has_bf16():
        raise BackendError(BF16_MISSING)


@dataclass
class AudioFeatures:
    """Encoder output for n_audio windows, kept on the device."""

    features: driver.Buffer  # float32 [n_audio, T, d]
    # cross K [L, n_audio, H, T, Dh] and V^T [L, n_audio, H, Dh, T] (int8: and their scales), `decoder.cross_layout`
    cross: tuple[driver.Buffer, ...]

    @property
    def n_audio(self) -> int:
        return self.cross[0].shape[1]


class MaxWhisper:
    """kernels=False runs the portable plan on the CPU: MAX's ops only, the graphs a GPU runs."""

    def __init__(
        self,
        ckpt: Checkpoint,
        device: str = "cpu",
        precision: str = "fp32",
        threads: int | None = None,
        kernels: bool = True,
    ):
        check_precision(device, precision, kernels)
        self.dims: ModelDims = ckpt.dims
        self.is_multilingual, self.num_languages = ckpt.is_multilingual, ckpt.num_languages
        self.alignment_heads = ckpt.alignment_heads  # [k, 2] from config.json; None (a .pt): openai's default
        self.precision = precision
        self.device = driver.Accelerator() if device == "gpu" else cpu_device(threads)
        self.device_ref = DeviceRef.GPU() if device == "gpu" else DeviceRef.CPU()
        self.dtype = DTYPES[precision]
        self.arrays = graph_arrays(ckpt.state, ckpt.dims)
        self.copies: dict = {}  # float16, int8 and int4 copies of the weights, made once for every graph
        cpu_int8 = device == "cpu" and precision == "int8"  # only int8 asks for the AMX tiles' state
        self.plan = make_plan(
            WeightBank(self.arrays, self.dtype, self.device_ref, self.copies),
            self.dims,
            kernels,
            int8=precision == "int8",
            bf16=precision == "bf16",
            cpu_bf16=cpu_int8 and bf16_attention_pays(),
            cpu_int16=cpu_int8 and int16_attention_pays(),
            amx=cpu_int8 and amx_permitted(),
        )
        start = time.perf_counter()
        self.session = InferenceSession(devices=[self.device])
        names = first_graphs(self.plan)
        self.graphs = dict(zip(names, self.built_and_loaded(*names)))
        self.compile_s = time.perf_counter() - start
        self._lazy_lock = threading.Lock()
        self._this_thread = threading.local()  # `compile_s_this_thread`
        # one graph call at a time: on the CPU per model (each call spreads over every core), on a GPU
        # for every model in the process, with the copies and reads around a call (a device graph's
        # capture must not see another thread's work on the device's queue)
        self.device_lock = GPU_QUEUE if device == "gpu" else threading.RLock()
        self._ran = False  # a graph call has run (the first one starts MAX's polling thread)
        # a GPU replays the portable plan's token steps as captured device graphs (`device_steps`)
        self.captures = device == "gpu" and os.environ.get("MAXWHISPER_DEVICE_GRAPHS", "1") != "0"
        # greedy decodings take runs of steps where the plan has the token run graph
        self.runs = "token_run" in graph_names(self.plan)

    @property
    def encoder(self):
        return self.graphs["encoder"]

    @property
    def decoder(self):
        """The generic step graph (compiled on first use where the token step graph exists)."""
        return self.lazy_graph("decoder_step")

    @property
    def token_step(self):
        """The one-token step graph, None where the plan has none."""
        return self.graphs.get("token_step")

    def build(self, name: str, module: Module | None = None) -> tuple[Graph, dict[str, np.ndarray]]:
        return build_graph(name, self.arrays, self.dims, self.plan, self.copies, module)

    def to_device(self, array: np.ndarray) -> driver.Buffer:
        with self.device_lock:
            return driver.Buffer.from_numpy(np.require(array, requirements="C")).to(self.device)

    def encode(self, mel: np.ndarray) -> AudioFeatures:
        """mel float32 [n_audio, n_mels, frames] -> AudioFeatures (T = frames / 2)."""
        features, *cross = self.run(self.encoder, *EncoderInputs(self.to_device(mel.astype(np.float32))).flat())
        return AudioFeatures(features, tuple(cross))

    def to_numpy(self, buffer: driver.Buffer) -> np.ndarray:
        with self.device_lock:
            return buffer.to(driver.CPU()).to_numpy()

    def features_numpy(self, features: AudioFeatures) -> np.ndarray:
        return self.to_numpy(features.features)

    def inference(self) -> "MaxChoosingInference":
        if self.plan.step_kernels:
            return MaxChoosingInference(self)
        from .device_steps import DeviceStepInference  # it builds on this module

        return DeviceStepInference(self)

    @functools.cached_property
    def step_buffers(self):
        """The portable plan's `device_steps.StepBufferPool`."""
        from .device_steps import StepBufferPool

        return StepBufferPool(self)

    def run(self, graph, *inputs) -> list[driver.Buffer]:
        """`graph.execute(*inputs)`, one at a time: each call spreads over every core, so calls
        from several threads (`graph.shared_steps`) would only fight over them."""
        with self.device_lock:
            if self._ran:
                return graph.execute(*inputs)
            self._ran = True
            with timer_slack(RUNTIME_THREAD_SLACK_NS):  # the thread MAX starts now polls less often
                return graph.execute(*inputs)

    def capture(self, graph, key: int, inputs: list[driver.Buffer]) -> list[driver.Buffer]:
        """`graph`'s call on `inputs` captured as device graph `key` (a GPU's); its outputs, which
        each `replay` rewrites."""
        with self.device_lock:
            outputs = graph.capture(key, *inputs)
            if hasattr(graph, "_await_device_graphs"):  # MAX instantiates a captured graph on a thread of its own
                graph._await_device_graphs()
            return outputs

    def replay(self, graph, key: int, inputs: list[driver.Buffer]) -> None:
        """Device graph `key` of `graph` run again, on the same input buffers."""
        with self.device_lock:
            graph.replay(key, *inputs)

    def release(self, graph, key: int) -> None:
        """Device graph `key` of `graph` and its memory freed (a key never captured: nothing)."""
        if not self.device_ref.is_cpu():
            with self.device_lock:
                graph.release_captured_graph(key)

    def load_graph(self, graph, weights_registry: dict[str, np.ndarray]):
        return self._loaded(graph, weights_registry, self.artifacts(graph))[graph.name]

    def artifacts(self, graphs: Graph | Sequence[Graph]) -> list[Path]:
        """Where `graphs`' compiled artifact may be, for this model's device (`compiled.artifact_paths`)."""
        return artifact_paths(graphs, None if self.device_ref.is_cpu() else gpu_arch(self.device))

    def _loaded(self, graph, weights_registry: dict[str, np.ndarray], artifacts: list[Path]):
        """The graphs of `graph` (as `compiled.compile_graph` takes it) compiled and bound to
        their weights, by name."""
        # MLIR's current context is per thread and only the main thread has one entered: the app
        # and its warm-up compile from worker threads
        with ensure_default_mlir_context():
            compiled = compile_graph(self.session, graph, artifacts, kernels=self.plan.name == "cpu-kernels")
            return self.session.init_all(compiled, weights_registry=weights_registry)

    def built_and_loaded(self, *names: str) -> list:
        """The graphs `names` built and loaded, from their compiled artifacts where those exist.
        On the CPU compiled together (one MAX Module, one artifact), built first without checking
        their custom ops (`compiled.custom_ops_unchecked`) and loaded so when their artifact exists;
        else (or where it is unreadable) built again with the check and compiled (the same text:
        the same artifact). On a GPU one by one, a missing artifact said in one line."""
        if not self.device_ref.is_cpu():
            return [self._gpu_loaded(name) for name in names]
        with custom_ops_unchecked():
            built = [self.build(name) for name in names]

        def checked() -> Graph | Module:
            module = Module() if len(names) > 1 else None
            graphs = [self.build(name, module)[0] for name in names]
            return module or graphs[0]

        registry = {key: array for _, weights in built for key, array in weights.items()}
        models = self._loaded(checked, registry, self.artifacts([graph for graph, _ in built]))
        return [models[graph.name] for graph, _ in built]

    def _gpu_loaded(self, name: str):
        graph, registry = self.build(name)
        paths = self.artifacts(graph)
        if not paths[0].exists():
            arch = gpu_arch(self.device)
            logger.warning(
                "MAX compiles %s %s for this GPU (%s): no prebuilt graph in the cache; "
                "`maxwhisper warm --device gpu --arch %s` builds them ahead on any machine",
                name,
                self.precision,
                arch,
                arch,
            )
        return self._loaded(graph, registry, paths)[graph.name]

    def lazy_graph(self, name: str):
        """A graph not compiled at load ("decoder_step" with the token step graph, "alignment",
        "cache_reorder", "batch_repeat"), compiled the first time it is needed (once, when
        several threads transcribe at once). A compiled one is returned without waiting for
        another graph's compile on another thread (`compile_rest` behind a running model)."""
        graph = self.graphs.get(name)
        if graph is not None:
            return graph
        with self._lazy_lock:
            if name not in self.graphs:
                start = time.perf_counter()
                self.graphs[name] = self.built_and_loaded(name)[0]
                seconds = time.perf_counter() - start
                self.compile_s += seconds
                self._this_thread.compile_s = self.compile_s_this_thread() + seconds
            return self.graphs[name]

    def compile_s_this_thread(self) -> float:
        """The seconds `lazy_graph` has compiled for in the calling thread: a transcription leaves
        out of its time what its own thread compiled, not what another thread compiled meanwhile."""
        return getattr(self._this_thread, "compile_s", 0.0)

    def compile_rest(self, leave_out: Collection[str] = ()) -> Iterator[tuple[str, float]]:
        """Every graph of the plan not compiled yet (`graph_names`) but those in `leave_out`, compiled in
        turn: its name and seconds as each is ready."""
        for name in graph_names(self.plan):
            if name not in self.graphs and name not in leave_out:
                start = time.perf_counter()
                self.lazy_graph(name)
                yield name, time.perf_counter() - start

    def alignment(self, tokens: np.ndarray, features: AudioFeatures) -> tuple[np.ndarray, np.ndarray]:
        """Whole-sequence decoder pass for word timestamps, for one audio window.

        tokens int [n] -> (logits float32 [n, n_vocab], cross-attention scores before softmax
        float32 [n_text_layer, n_text_head, n, T]). The graph is compiled on first use."""
        n = len(tokens)
        mask = np.triu(np.full((n, n), -np.inf, np.float32), 1)
        if features.n_audio != 1:
            raise ValueError("alignment takes the features of one window")
        inputs = AlignmentInputs(
            self.to_device(np.asarray(tokens, np.int64)[None]), self.to_device(mask), features.cross
        )
        logits, scores = self.run(self.lazy_graph("alignment"), *inputs.flat())
        return self.to_numpy(logits)[0], self.to_numpy(scores)[:, 0]


# a step's greedy choice: what the logit filters suppress [k, n_vocab] and the first timestamp token
Choice = tuple[np.ndarray, int]


class MaxInference:
    """Decoder state for one decoding task: the KV cache buffers and how many tokens they hold."""

    def __init__(self, model: MaxWhisper):
        self.model = model
        self.cache: tuple[driver.Buffer, ...] | None = None
        self.cached = 0  # tokens already in the cache
        self.cross: tuple[driver.Buffer, ...] | None = None
        self.draft_cross: tuple[driver.Buffer, ...] = ()  # `cross` in int8 for drafted runs, made by the first
        self.np_dtype = np.float16 if model.precision == "fp16" else np.float32

    def _setup(self, batch: int, features: AudioFeatures):
        d = self.model.dims
        self.cache = tuple(
            self.model.to_device(np.zeros(shape, self.np_dtype))
            for _ in range(d.n_text_layer)
            for shape in cache_shapes(d, batch)
        )
        self.cross = self._cross_for(batch, features)
        self.draft_cross = ()

    def _cross_for(self, batch: int, features: AudioFeatures) -> tuple[driver.Buffer, ...]:
        """The features' cross K/V for `batch` rows: beam search and best-of repeat each window's
        for its group, contiguous."""
        if batch == features.n_audio:
            return features.cross
        index = np.repeat(np.arange(features.n_audio), batch // features.n_audio)
        return tuple(
            self._call(
                self.model.lazy_graph("batch_repeat"), BatchRepeatInputs(index, features.features, features.cross)
            )[1:]
        )

    def _call(self, graph, inputs: GraphInputs) -> list[driver.Buffer]:
        """`graph` run on `inputs`, numpy arrays among them copied to the device."""
        m = self.model
        return m.run(graph, *(a if isinstance(a, driver.Buffer) else m.to_device(a) for a in inputs.flat()))

    def logits(self, tokens: np.ndarray, audio_features: AudioFeatures, positions: Sequence[int] = (-1,)) -> np.ndarray:
        """tokens int [batch, n], the whole sequence so far -> float32 logits [batch, len(positions), n_vocab]."""
        return self.model.to_numpy(self._step(tokens, audio_features, positions, None)[0])

    def leaves_rows_out(self, tokens: np.ndarray, positions: Sequence[int]) -> bool:
        """Whether the next call on `tokens` is a one-token step on the token step graph, which
        can leave rows out."""
        return (
            self.model.token_step is not None
            and tokens.shape[1] == self.cached + 1
            and [p % tokens.shape[1] for p in positions] == [self.cached]
        )

    def _choice_arrays(self, k: int, choice: Choice | None) -> tuple[np.ndarray, np.ndarray]:
        """A step graph's suppress [k, n_vocab] and timestamp_begin [k]; without a choice zeros and -1s."""
        if choice is None:
            return np.zeros((k, self.model.dims.n_vocab), np.float32), np.full(k, -1, np.int64)
        return choice[0], np.full(k, choice[1], np.int64)

    def _step(
        self,
        tokens: np.ndarray,
        audio_features: AudioFeatures,
        positions: Sequence[int],
        choice: Choice | None,
        rows: np.ndarray | None = None,
    ) -> list[driver.Buffer]:
        """One call of the step graph on tokens[:, cached:]; returns its outputs. rows: the rows
        that step, ascending (None: all); the others sit it out (one new token per row only), and
        are not to step again: their cache stops where it was."""
        if self.cache is None:
            self._setup(tokens.shape[0], audio_features)
        n_total = tokens.shape[1]
        new = tokens[:, self.cached :]
        n = new.shape[1]
        index = np.array([p % n_total - self.cached for p in positions], np.int64)
        if n == 0 or index.min() < 0:
            raise ValueError("logits requested for positions already in the KV cache")
        m = self.model
        if rows is not None and not self.leaves_rows_out(tokens, positions):
            raise ValueError("only one-token steps on the token step graph leave rows out")
        if rows is None and self.cached == 0 and n <= PROMPT_TOKEN_STEPS and m.plan.token_step and index[-1] == n - 1:
            outputs = self._prompt_by_token_steps(new, index, choice)
        elif self.leaves_rows_out(tokens, positions):
            # one new token per sequence, all at the same position, each its own logits; rows
            # left out sit at position -1 (the token step graph neither reads nor writes them)
            batch = tokens.shape[0]
            at = np.full(batch, self.cached, np.int64)
            if rows is None:
                rows = np.arange(batch, dtype=np.int64)
            else:
                at[np.setdiff1d(np.arange(batch), rows)] = -1
            outputs = self._token_step(
                new.astype(np.int64), at, np.asarray(rows, np.int64), *self._choice_arrays(len(rows), choice)
            )
        else:
            pos = np.arange(self.cached, n_total, dtype=np.int64)
            mask = np.where(np.arange(m.dims.n_text_ctx)[None, :] <= pos[:, None], 0.0, -np.inf).astype(np.float32)
            suppress, timestamp_begin = self._choice_arrays(tokens.shape[0], choice)
            outputs = self._call(
                m.decoder,
                StepInputs(
                    tokens=new.astype(np.int64),
                    positions=pos,
                    offset=driver.Buffer.from_numpy(np.array(self.cached, np.int64)),  # stays on the host
                    mask=mask,
                    logit_index=index,
                    suppress=suppress,
                    timestamp_begin=timestamp_begin,
                    cross=self.cross,
                    caches=self.cache,
                ),
            )
        self.cached = n_total
        return outputs

    def _token_step(
        self,
        tokens: np.ndarray,
        positions: np.ndarray,
        rows: np.ndarray,
        suppress: np.ndarray,
        timestamp_begin: np.ndarray,
    ) -> list[driver.Buffer]:
        """One call of the token step graph (`inputs.TokenStepInputs`)."""
        return self._call(
            self.model.token_step,
            TokenStepInputs(
                tokens,
                positions,
                self._cross_keys(len(tokens)),
                rows,
                suppress,
                timestamp_begin,
                self.cross,
                self.cache,
            ),
        )

    def _prompt_by_token_steps(self, new: np.ndarray, index: np.ndarray, choice: Choice | None) -> list[driver.Buffer]:
        """The step graph's outputs for a short prompt new [B, n] at the cache's start, from n
        one-token steps: the logits after each position of `index`, the choice after the last,
        which must be the prompt's last."""
        batch, n = new.shape
        rows = np.arange(batch, dtype=np.int64)
        logits = {}
        for j in range(n):
            outputs = self._token_step(
                new[:, j : j + 1].astype(np.int64),
                np.full(batch, j, np.int64),
                rows,
                *self._choice_arrays(batch, choice if j == n - 1 else None),
            )
            if j in index:
                logits[j] = self.model.to_numpy(outputs[0])
        return [driver.Buffer.from_numpy(np.concatenate([logits[j] for j in index.tolist()], axis=1)), *outputs[1:]]

    def _cross_keys(self, batch: int) -> np.ndarray:
        """The token step graph's cross_keys: every row attends to all of its window's audio positions."""
        return np.full(batch, self.cross[0].shape[3], np.int64)

    def rearrange_kv_cache(self, source_indices: Sequence[int]) -> None:
        if self.cache is not None and list(source_indices) != list(range(len(source_indices))):
            self._call(
                self.model.lazy_graph("cache_reorder"),
                CacheReorderInputs(np.asarray(source_indices, np.int64), self.cache),
            )

    def rewind(self, n: int) -> None:
        """Positions from n on are written again by the next calls (attention reads only those
        before each query's position)."""
        self.cached = min(self.cached, n)

    def cleanup_caching(self) -> None:
        self.cache, self.cross, self.cached, self.draft_cross = None, None, 0, ()


class MaxChoosingInference(MaxInference):
    """The step graph also picks the greedy token (`decoding.ChoosingInference`)."""

    def logits_and_choice(
        self,
        tokens: np.ndarray,
        audio_features: AudioFeatures,
        positions: Sequence[int],
        suppress: np.ndarray,
        timestamp_begin: int,
        rows: np.ndarray | None = None,
        logits_wanted: bool = True,
    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        if rows is not None and not self.leaves_rows_out(tokens, positions):
            return every_row_then_some(
                self.logits_and_choice,
                tokens,
                audio_features,
                positions,
                suppress,
                timestamp_begin,
                rows,
                logits_wanted,
            )
        logits, token, logprob = self._step(tokens, audio_features, positions, (suppress, timestamp_begin), rows)[:3]
        m = self.model
        return m.to_numpy(logits) if logits_wanted else None, m.to_numpy(token), m.to_numpy(logprob)

    @property
    def steps_per_call(self) -> int:
        """`decoding.RunningInference.steps_per_call`: the plan's, where the model takes runs. The CPU
        kernels' plan takes them once its run graph is ready (`compile_rest`: the app's and the
        benchmark's warm-up), so its compile never falls on a transcription; the portable
        plan, a GPU's, loads or compiles it on first use (docs/design.md#several-steps-a-call)."""
        m = self.model
        run_graphs = set(RUN_GRAPHS) & set(graph_names(m.plan))
        ready = not m.plan.runs_wait_for_their_graph or run_graphs <= m.graphs.keys()
        return m.plan.steps_per_call if m.runs and ready else 1

    def greedy_run(
        self, tokens: np.ndarray, audio_features: AudioFeatures, rules: RunRules
    ) -> tuple[np.ndarray, np.ndarray]:
        """`decoding.RunningInference.greedy_run`: one call of the token run graph."""
        n, batch = tokens.shape[1], tokens.shape[0]
        if self.cache is None or self.cached != n - 1:
            raise ValueError("a run of steps follows a step: every token but the last is in the KV cache")
        column = functools.partial(np.full, batch, dtype=np.int64)
        if self.model.plan.int8_drafts and not self.draft_cross:
            graph = self.model.lazy_graph("draft_cross")
            self.draft_cross = tuple(self._call(graph, DraftCrossInputs(self.cross)))
        outputs = self._run(
            TokenRunInputs(
                tokens=tokens[:, -1:].astype(np.int64),
                positions=column(n - 1),
                previous=rules.previous,
                last_timestamp=rules.last_timestamp,
                cross_keys=self._cross_keys(batch),
                suppress=rules.suppress,
                timestamp_begin=column(rules.timestamp_begin),
                eot=column(rules.eot),
                cross=self.cross,
                caches=self.cache,
                draft_cross=self.draft_cross,
            )
        )
        if self.model.plan.drafts_runs:  # the checked steps up to the first overruled draft
            drafted, chosen, logprobs = outputs
            kept = checked_steps(drafted, chosen, tokens[:, -1], rules.eot)
            chosen, logprobs = chosen[:, :kept], logprobs[:, :kept]
        else:
            chosen, logprobs = outputs
        self.cached = n - 1 + chosen.shape[1]
        return chosen, logprobs

    def _run(self, inputs: TokenRunInputs) -> Sequence[np.ndarray]:
        """The token run graph on `inputs`, numpy arrays among them copied to the device (the graph
        writes its state into them): its outputs read."""
        return [self.model.to_numpy(v) for v in self._call(self.model.lazy_graph("token_run"), inputs)]


def checked_steps(drafted: np.ndarray, checked: np.ndarray, last: np.ndarray, eot: int) -> int:
    """How many steps of a drafted run stand: up to the first whose draft differs from its check in
    a live row, that step included, for its check was chosen after tokens that all stand. A row has
    ended once its token before the step is eot: `last` before the first step, its check after.
    drafted, checked int64 [B, K]; last int64 [B], each row's token before the run."""
    ended = last == eot
    for j in range(drafted.shape[1]):
        if (drafted[~ended, j] != checked[~ended, j]).any():
            return j + 1
        ended |= checked[:, j] == eot
    return drafted.shape[1]


def every_row_then_some(
    logits_and_choice,
    tokens: np.ndarray,
    audio_features,
    positions: Sequence[int],
    suppress: np.ndarray,
    timestamp_begin: int,
    rows: np.ndarray,
    logits_wanted: bool = True,
):
    """`ChoosingInference.logits_and_choice` for `rows` only, by one that steps every row: the
    others' suppress rows zeros, their results dropped."""
    full = np.zeros((len(tokens), suppress.shape[1]), suppress.dtype)
    full[rows] = suppress
    out = logits_and_choice(tokens, audio_features, positions, full, timestamp_begin, logits_wanted=logits_wanted)
    return tuple(None if o is None else o[rows] for o in out)


def describe_devices() -> list[str]:
    """The devices MAX sees, for people: the host CPU and each accelerator by architecture."""
    names = ["cpu"]
    try:
        for i in range(driver.accelerator_count()):
            gpu = driver.Accelerator(i)
            names.append(f"gpu:{i} {gpu.model_name} ({gpu.api}, {gpu.architecture_name})")
    except Exception:  # noqa: BLE001 - gpu_status() says why
        names.append("a GPU MAX cannot use")
    return names
