"""Whisper on MAX: compiles the encoder, decoder-step and (CPU) one-token step graphs once and runs them.

`MaxWhisper` implements the `WhisperModel` protocol of `maxwhisper.decoding`: `encode()` returns
features that stay on the device, `inference()` a decoder with its own KV cache buffers.
"""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from max import driver
from max._mlir_context import ensure_default_mlir_context  # private, but what max.graph itself uses
from max.dtype import DType
from max.engine import InferenceSession
from max.graph import DeviceRef

from ..api import BackendError
from ..checkpoint import Checkpoint, ModelDims
from .decoder import (build_alignment_graph, build_batch_repeat_graph, build_cache_reorder_graph, build_decoder_graph,
                      build_token_step_graph, cache_shapes, step_uses_kernels, token_step_fits)
from .encoder import build_encoder_graph
from .layers import WeightBank
from .weights import graph_arrays

DTYPES = {"fp32": DType.float32, "fp16": DType.float16}


def gpu_available() -> bool:
    return driver.accelerator_count() > 0


def resolve_device(device: str) -> str:
    """"auto" -> "gpu" when MAX sees an accelerator, else "cpu"; "gpu" without one is an error."""
    if device == "auto":
        return "gpu" if gpu_available() else "cpu"
    if device == "gpu" and not gpu_available():
        raise BackendError("--device gpu: MAX sees no GPU on this machine (use --device cpu or auto)")
    return device


@dataclass
class AudioFeatures:
    """Encoder output for n_audio windows, kept on the device."""

    features: driver.Buffer  # float32 [n_audio, T, d]
    cross_k: driver.Buffer  # [L, n_audio, H, T, Dh]
    cross_v_t: driver.Buffer  # V^T [L, n_audio, H, Dh, T]

    @property
    def n_audio(self) -> int:
        return self.cross_k.shape[1]


class MaxWhisper:
    def __init__(self, ckpt: Checkpoint, device: str = "cpu", precision: str = "fp32", threads: int | None = None):
        if precision not in DTYPES or (device == "cpu" and precision != "fp32"):
            supported = "fp32" if device == "cpu" else "fp32, fp16"
            raise BackendError(f"MAX on {device} supports precision {supported}, not {precision}"
                               + (" (half precision is slow on CPU)" if device == "cpu" else ""))
        self.dims: ModelDims = ckpt.dims
        self.is_multilingual, self.num_languages = ckpt.is_multilingual, ckpt.num_languages
        self.alignment_heads = ckpt.alignment_heads  # [k, 2] from config.json; None (a .pt): openai's default
        self.precision = precision
        self.device = driver.Accelerator() if device == "gpu" else driver.CPU()
        self.device_ref = DeviceRef.GPU() if device == "gpu" else DeviceRef.CPU()
        self.dtype = DTYPES[precision]
        self.decoder_chooses = step_uses_kernels(self.device_ref, ckpt.dims)  # the step graph's greedy choice
        self.arrays = graph_arrays(ckpt.state, ckpt.dims)
        if threads not in (None, os.cpu_count()):  # InferenceSession(num_threads=...) aborts in MAX 26.7
            raise BackendError(f"MAX uses all {os.cpu_count()} CPU threads; it cannot be limited to {threads}")
        start = time.perf_counter()
        self.session = InferenceSession(devices=[self.device])
        halves: dict[str, np.ndarray] = {}  # float16 copies of the weights, made once for the three graphs
        enc_w, dec_w, token_w = (WeightBank(self.arrays, self.dtype, self.device_ref, halves) for _ in range(3))
        self.encoder = self.load_graph(build_encoder_graph(enc_w, self.dims), enc_w.registry())
        self.decoder = self.load_graph(build_decoder_graph(dec_w, self.dims), dec_w.registry())
        self.token_step = None  # one token of one sequence (greedy steps), where it fits
        if token_step_fits(token_w, self.dims):
            self.token_step = self.load_graph(build_token_step_graph(token_w, self.dims), token_w.registry())
        self.compile_s = time.perf_counter() - start
        self.lazy_graphs: dict[str, object] = {}  # compiled on first use (word timestamps, beams)

    def to_device(self, array: np.ndarray) -> driver.Buffer:
        return driver.Buffer.from_numpy(np.require(array, requirements="C")).to(self.device)

    def encode(self, mel: np.ndarray) -> AudioFeatures:
        """mel float32 [n_audio, n_mels, frames] -> AudioFeatures (T = frames / 2)."""
        return AudioFeatures(*self.encoder.execute(self.to_device(mel.astype(np.float32))))

    def features_numpy(self, features: AudioFeatures) -> np.ndarray:
        return features.features.to(driver.CPU()).to_numpy()

    def inference(self) -> "MaxInference":
        return MaxChoosingInference(self) if self.decoder_chooses else MaxInference(self)

    def load_graph(self, graph, weights_registry: dict[str, np.ndarray]):
        # MLIR's current context is per thread and only the main thread has one entered: the app
        # and its warm-up compile from worker threads
        with ensure_default_mlir_context():
            return self.session.load(graph, weights_registry=weights_registry)

    def lazy_graph(self, name: str):
        """"alignment", "cache_reorder" or "batch_repeat", compiled the first time it is needed."""
        if name not in self.lazy_graphs:
            start = time.perf_counter()
            if name == "alignment":
                w = WeightBank(self.arrays, self.dtype, self.device_ref)
                graph, registry = build_alignment_graph(w, self.dims), w.registry()
            else:
                build = {"cache_reorder": build_cache_reorder_graph, "batch_repeat": build_batch_repeat_graph}[name]
                graph, registry = build(self.dims, self.dtype, self.device_ref), {}
            self.lazy_graphs[name] = self.load_graph(graph, registry)
            self.compile_s += time.perf_counter() - start
        return self.lazy_graphs[name]

    def alignment(self, tokens: np.ndarray, features: AudioFeatures) -> tuple[np.ndarray, np.ndarray]:
        """Whole-sequence decoder pass for word timestamps, for one audio window.

        tokens int [n] -> (logits float32 [n, n_vocab], cross-attention scores before softmax
        float32 [n_text_layer, n_text_head, n, T]). The graph is compiled on first use."""
        n = len(tokens)
        mask = np.triu(np.full((n, n), -np.inf, np.float32), 1)
        cross = features.cross_k, features.cross_v_t
        if features.n_audio != 1:
            raise ValueError("alignment takes the features of one window")
        logits, scores = self.lazy_graph("alignment").execute(
            self.to_device(np.asarray(tokens, np.int64)[None]), self.to_device(mask), *cross)
        return logits.to(driver.CPU()).to_numpy()[0], scores.to(driver.CPU()).to_numpy()[:, 0]


class MaxInference:
    """Decoder state for one decoding task: the KV cache buffers and how many tokens they hold."""

    def __init__(self, model: MaxWhisper):
        self.model = model
        self.cache: list[driver.Buffer] | None = None
        self.cached = 0  # tokens already in the cache
        self.cross: tuple[driver.Buffer, driver.Buffer] | None = None
        self.np_dtype = np.float16 if model.precision == "fp16" else np.float32

    def _setup(self, batch: int, features: AudioFeatures):
        d = self.model.dims
        self.cache = [self.model.to_device(np.zeros(shape, self.np_dtype))
                      for _ in range(d.n_text_layer) for shape in cache_shapes(d, batch)]
        self.cross = (features.cross_k, features.cross_v_t)
        if batch != features.n_audio:  # beam search / best-of: each audio's group is contiguous
            index = np.repeat(np.arange(features.n_audio), batch // features.n_audio)
            self.cross = tuple(self.model.lazy_graph("batch_repeat").execute(self.model.to_device(index), *self.cross))

    def logits(self, tokens: np.ndarray, audio_features: AudioFeatures, positions: Sequence[int] = (-1,)) -> np.ndarray:
        """tokens int [batch, n], the whole sequence so far -> float32 logits [batch, len(positions), n_vocab]."""
        no_choice = []
        if self.model.decoder_chooses:  # the graph's choice inputs; a negative timestamp_begin skips it
            no_choice = [np.zeros((tokens.shape[0], self.model.dims.n_vocab), np.float32), np.array([-1], np.int64)]
        return self._step(tokens, audio_features, positions, no_choice)[0].to(driver.CPU()).to_numpy()

    def _step(self, tokens: np.ndarray, audio_features: AudioFeatures, positions: Sequence[int],
              choice_inputs: list[np.ndarray]) -> list[driver.Buffer]:
        """One call of the step graph on tokens[:, cached:]; returns its outputs."""
        if self.cache is None:
            self._setup(tokens.shape[0], audio_features)
        n_total = tokens.shape[1]
        new = tokens[:, self.cached:]
        n = new.shape[1]
        index = np.array([p % n_total - self.cached for p in positions], np.int64)
        if n == 0 or index.min() < 0:
            raise ValueError("logits requested for positions already in the KV cache")
        pos = np.arange(self.cached, n_total, dtype=np.int64)
        m = self.model
        inputs = [new.astype(np.int64), pos, np.array(self.cached, np.int64)]
        if m.token_step is not None and new.shape == (1, 1) and index.tolist() == [0]:
            graph = m.token_step  # takes no mask and no index: one token, its own logits
        else:
            graph = m.decoder
            inputs += [np.where(np.arange(m.dims.n_text_ctx)[None, :] <= pos[:, None], 0.0, -np.inf).astype(np.float32),
                       index]
        outputs = graph.execute(*(m.to_device(a) for a in [*inputs, *choice_inputs]), *self.cross, *self.cache)
        self.cached = n_total
        return outputs

    def rearrange_kv_cache(self, source_indices: Sequence[int]) -> None:
        if self.cache is not None and list(source_indices) != list(range(len(source_indices))):
            index = self.model.to_device(np.asarray(source_indices, np.int64))
            self.model.lazy_graph("cache_reorder").execute(index, *self.cache)

    def cleanup_caching(self) -> None:
        self.cache, self.cross, self.cached = None, None, 0


class MaxChoosingInference(MaxInference):
    """On the CPU the step graph also picks the greedy token (`decoding.ChoosingInference`)."""

    def logits_and_choice(self, tokens: np.ndarray, audio_features: AudioFeatures, positions: Sequence[int],
                          suppress: np.ndarray, timestamp_begin: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        logits, token, logprob = self._step(tokens, audio_features, positions,
                                            [suppress, np.array([timestamp_begin], np.int64)])
        return logits.to_numpy(), token.to_numpy(), logprob.to_numpy()


def describe_devices() -> list[str]:
    """The devices MAX sees, for people: the host CPU and each accelerator by architecture."""
    names = ["cpu"]
    for i in range(driver.accelerator_count()):
        gpu = driver.Accelerator(i)
        names.append(f"gpu:{i} {gpu.model_name} ({gpu.api}, {gpu.architecture_name})")
    return names
