"""MAX-Whisper: OpenAI's Whisper on Modular's MAX Graph engine, beside openai-whisper and faster-whisper.

    import maxwhisper
    model = maxwhisper.load_model("tiny.en", backend="max", device="cpu")
    result = model.transcribe("speech.flac", beam_size=5)
    print(result.text)

Importing this package loads no backend (neither torch nor max): `load_model` imports the one it needs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import numpy as np

from .api import DecodeOptions, MaxWhisperError, OptionError, Segment, Transcriber, TranscriptionResult

__all__ = [
    "load_model",
    "Model",
    "DecodeOptions",
    "TranscriptionResult",
    "Segment",
    "MaxWhisperError",
    "OptionError",
    "transcribe_many",
]


class Model:
    """A model loaded on one backend: `transcribe` takes a path or samples and keyword options.

    The backend's transcriber is `.transcriber`; its attributes (backend, model, device, precision,
    load_s, compile_s) read through.
    """

    def __init__(self, transcriber: Transcriber):
        self.transcriber = transcriber

    def __getattr__(self, name: str):
        return getattr(self.transcriber, name)

    def transcribe(
        self,
        audio: str | os.PathLike | bytes | np.ndarray,
        options: DecodeOptions | None = None,
        progress: Callable[[float], None] | None = None,
        **changes,
    ) -> TranscriptionResult:
        """`audio`: a file path (anything FFmpeg reads), its bytes, or float32 mono samples at 16 kHz.
        `options` and keyword `changes` (DecodeOptions' fields, e.g. `language="de"`, `beam_size=5`)
        default to openai-whisper's `transcribe()` options, greedy. `progress` is called with the
        fraction of the audio done (0 to 1) as the transcription goes. Audio without samples gives an
        empty result, as in openai-whisper and faster-whisper; a value no backend can decode with, a
        0-byte file or data that is not audio raise MaxWhisperError."""
        from .audio import load_audio

        options = dataclasses.replace(options or DecodeOptions(), **changes)
        return self.transcriber.transcribe(load_audio(audio), options, progress=progress)


def load_model(
    name: str = "tiny.en", backend: str = "max", device: str = "auto", precision: str = "fp32", **kwargs
) -> Model:
    """Load `name` (an installed model such as "tiny.en" or "base", a CTranslate2 folder, or an
    openai-whisper .pt file) on `backend` ("max", "openai" or "faster"); `device` is "auto", "cpu"
    or "gpu"; `kwargs` go to the backend (`threads=`). Raises MaxWhisperError for an unknown backend,
    device or precision and for a model that is not installed."""
    from .registry import create_transcriber

    return Model(create_transcriber(backend, model=name, device=device, precision=precision, **kwargs))


def transcribe_many(inputs, output, **kwargs):
    """A bulk job on Ray Data: every file of `inputs` (files, folders, manifests) transcribed into
    the folder `output`, with a results table; resumable. See `maxwhisper.bulk.transcribe_many`."""
    from .bulk import transcribe_many as run

    return run(inputs, output, **kwargs)
