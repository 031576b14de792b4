"""Whether an English-only model can transcribe a clip. Given another language, a `.en` model writes
made-up English in every implementation alike, and a speed verdict over such transcripts means
nothing: the Compare tab first has a multilingual model (`detector_for`: base where it is
installed) say which language is spoken (`spoken_language`, through the page's `Transcriptions`,
so it takes its turn), and refuses the run where it is another, naming the model that can
transcribe it (`other_language`). A page remembers what was heard on each clip (`HeardLanguages`), so
a clip run again is not heard again."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from maxwhisper.api import SAMPLE_RATE, DecodeOptions, TranscriptionResult
from maxwhisper.tokenizer import LANGUAGES

from .transcriptions import Transcriptions

CHECK_S = 30.0  # Whisper hears the language in the first 30 s window
SURE = 0.5  # a language detected with at least this probability is taken as the clip's
DETECTORS = ("faster", "openai", "max")  # the quickest to load and run on a CPU first
# one greedy pass over the first window: its language is what the model detected before decoding
CHECK_OPTIONS = DecodeOptions(temperature=(0.0,), without_timestamps=True, condition_on_previous_text=False)
REMEMBERED = 64  # the clips whose language a page keeps, the newest


class HeardLanguages:
    """What a detector heard on each clip checked (its first CHECK_S seconds, by hash), the newest
    `size` of them. Thread-safe: the page's visitors share it."""

    def __init__(self, size: int = REMEMBERED):
        self._size = size
        self._heard: OrderedDict[tuple, TranscriptionResult] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(samples: np.ndarray, detector: tuple[str, str], device: str) -> tuple:
        """A clip's key: the detector, the device and a hash of the clip's first CHECK_S seconds."""
        head = np.ascontiguousarray(samples[: int(CHECK_S * SAMPLE_RATE)])
        return (*detector, device, hashlib.sha256(head.tobytes()).hexdigest())

    def get(self, key: tuple) -> TranscriptionResult | None:
        with self._lock:
            return self._heard.get(key)

    def add(self, key: tuple, heard: TranscriptionResult) -> None:
        with self._lock:
            self._heard[key] = heard
            self._heard.move_to_end(key)
            while len(self._heard) > self._size:
                self._heard.popitem(last=False)


def detector_for(models: list[str], backends: list[str]) -> tuple[str, str] | None:
    """(backend, multilingual model) to detect the language with, among those installed; None without one."""
    model = "base" if "base" in models else next((m for m in models if not m.endswith(".en")), None)
    backend = next((b for b in DETECTORS if b in backends), None)
    return (backend, model) if model and backend else None


def needs_check(model: str, options: DecodeOptions) -> bool:
    """An English-only model told to detect the language (translation is refused apart)."""
    return model.endswith(".en") and options.language is None and options.task == "transcribe"


def spoken_language(
    samples: np.ndarray,
    detector: tuple[str, str],
    device: str,
    transcriptions: Transcriptions,
    progress: Callable[[float, str], None] | None = None,
) -> TranscriptionResult:
    """The detector's transcription of the first window: its `language` and `language_probability`."""
    backend, model = detector
    head = samples[: int(CHECK_S * SAMPLE_RATE)]
    return transcriptions.transcribe(head, backend, model, device, CHECK_OPTIONS, progress=progress).result


def other_language(model: str, heard: TranscriptionResult) -> str:
    """The refusal where `heard` is sure of a language other than English, else ""."""
    if heard.language == "en" or (heard.language_probability or 0.0) < SURE:
        return ""
    name = LANGUAGES.get(heard.language, heard.language).title()
    return (
        f"⚠ This sounds like {name} ({100 * heard.language_probability:.0f} % sure, says {heard.model}). "
        f"{model} knows English only: its transcripts would be made-up English, so nothing ran and there is no "
        f"speed verdict. {heard.model} transcribes {name}: press the button below."
    )
