"""What the app refuses before any model runs: audio that cannot be read, too long, too short or silent."""
from __future__ import annotations

import numpy as np

from maxwhisper.api import AudioError
from maxwhisper.audio import SAMPLE_RATE, load_audio

SILENT_PEAK = 1e-4  # -80 dBFS: audio whose loudest sample is quieter than this has nothing to transcribe
MIN_SECONDS = 0.1  # shorter audio holds no word


def check_not_silent(audio: np.ndarray) -> None:
    if not np.abs(audio).max() >= SILENT_PEAK:
        raise AudioError("the audio is silent (nothing louder than -80 dBFS): there is nothing to transcribe")


def check_audio(audio, max_seconds: float | None) -> np.ndarray:
    """The samples of `audio`, or an AudioError saying why there is nothing to transcribe."""
    samples = load_audio(audio, max_seconds=max_seconds)
    if len(samples) < MIN_SECONDS * SAMPLE_RATE:
        raise AudioError(f"the audio is {len(samples) / SAMPLE_RATE:.2f} s long, too short to hold speech: "
                         "there is nothing to transcribe")
    check_not_silent(samples)
    return samples
