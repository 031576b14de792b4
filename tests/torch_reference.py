"""openai-whisper's PyTorch model behind maxwhisper.decoding's `WhisperModel` protocol.

It exists so that the numpy decoding (and later the MAX backend) can be tested against
openai-whisper with the same weights and without MAX: `TorchModel` runs whisper's own modules,
and its `TorchInference` caches keys and values with the decoder's hooks exactly like
`whisper.decoding.PyTorchInference`, so the logits are bit for bit those of `whisper.transcribe`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Sequence

import numpy as np
import torch
from whisper.model import ModelDimensions, Whisper

from maxwhisper.api import DecodeOptions
from maxwhisper.checkpoint import Checkpoint, ModelDims


def build_whisper(ckpt: Checkpoint) -> Whisper:
    """openai-whisper's module with the checkpoint's weights (strict: every parameter loaded) and
    its alignment heads (as baselines/openai_backend.py sets them; openai's default without)."""
    model = Whisper(ModelDimensions(**asdict(ckpt.dims)))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in ckpt.state.items()}, strict=True)
    if ckpt.alignment_heads is not None:
        mask = torch.zeros(ckpt.dims.n_text_layer, ckpt.dims.n_text_head, dtype=torch.bool)
        mask[ckpt.alignment_heads[:, 0], ckpt.alignment_heads[:, 1]] = True
        model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)
    return model.eval()


class TorchInference:
    """`maxwhisper.decoding.Inference` over a `Whisper` module's decoder."""

    def __init__(self, model: Whisper):
        self.model = model
        self.kv_cache: dict = {}
        self.hooks: list = []
        self.n_cached = 0  # tokens whose keys and values are in the cache
        self.kv_modules = [b.attn.key for b in model.decoder.blocks] + [b.attn.value for b in model.decoder.blocks]

    @torch.no_grad()
    def logits(self, tokens: np.ndarray, audio_features: torch.Tensor, positions: Sequence[int] = (-1,)) -> np.ndarray:
        if not self.kv_cache:
            self.kv_cache, self.hooks = self.model.install_kv_cache_hooks()
        n = tokens.shape[1]
        new = torch.from_numpy(np.ascontiguousarray(tokens[:, self.n_cached :], dtype=np.int64))
        if audio_features.shape[0] not in (1, tokens.shape[0]):  # batch 1 broadcasts, as in whisper
            audio_features = audio_features.repeat_interleave(tokens.shape[0] // audio_features.shape[0], dim=0)
        logits = self.model.decoder(new, audio_features, kv_cache=self.kv_cache)
        index = [p % n - self.n_cached for p in positions]
        if min(index) < 0:
            raise ValueError(f"positions {positions} are not among the {n - self.n_cached} tokens run now")
        self.n_cached = n
        return logits[:, index].numpy()

    def rearrange_kv_cache(self, source_indices: Sequence[int]) -> None:
        if list(source_indices) != list(range(len(source_indices))):
            for module in self.kv_modules:
                self.kv_cache[module] = self.kv_cache[module][list(source_indices)].detach()

    def cleanup_caching(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.kv_cache, self.hooks, self.n_cached = {}, [], 0


class TorchModel:
    """`maxwhisper.decoding.WhisperModel` over openai-whisper's PyTorch module (float32, CPU)."""

    def __init__(self, ckpt: Checkpoint, module: Whisper | None = None):
        self.module = module if module is not None else build_whisper(ckpt)
        self.dims: ModelDims = ckpt.dims
        self.is_multilingual = ckpt.is_multilingual
        self.num_languages = ckpt.num_languages
        self.alignment_heads = ckpt.alignment_heads

    @torch.no_grad()
    def encode(self, mel: np.ndarray) -> torch.Tensor:
        return self.module.encoder(torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32)))

    def inference(self) -> TorchInference:
        return TorchInference(self.module)

    @torch.no_grad()
    def alignment(self, tokens: np.ndarray, audio_features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """What `whisper.timing.find_alignment` computes: the logits, and each cross-attention's
        scores before the softmax as its hooks capture them (outs[-1][0], without SDPA)."""
        from whisper.model import disable_sdpa

        qks = [None] * self.dims.n_text_layer
        hooks = [
            block.cross_attn.register_forward_hook(lambda _, ins, outs, i=i: qks.__setitem__(i, outs[-1][0]))
            for i, block in enumerate(self.module.decoder.blocks)
        ]
        try:
            with disable_sdpa():
                logits = self.module.decoder(torch.from_numpy(np.asarray(tokens, np.int64))[None], audio_features)[0]
        finally:
            for hook in hooks:
                hook.remove()
        return logits.float().numpy(), torch.stack(qks).float().numpy()


def openai_transcribe(module: Whisper, audio: np.ndarray, options: DecodeOptions, **extra) -> dict:
    """`whisper.transcribe` with the same options as `maxwhisper.transcribe.transcribe` gets, mapped
    as the openai backend maps them (`extra`: keyword arguments to override, e.g. clip_timestamps)."""
    import whisper
    from maxwhisper_baselines.openai_backend import transcribe_kwargs

    return whisper.transcribe(module, audio, **{**transcribe_kwargs(options, fp16=False), **extra})


def whisper_mel(audio: np.ndarray, n_mels: int) -> np.ndarray:
    """The log-Mel spectrogram exactly as `whisper.transcribe` computes it (30 s of padding)."""
    from whisper.audio import N_SAMPLES, log_mel_spectrogram

    return log_mel_spectrogram(torch.from_numpy(audio), n_mels, padding=N_SAMPLES).numpy()
