"""What the app refuses before any model runs: audio that cannot be read, too long, too short or silent."""

from __future__ import annotations

import numpy as np

from maxwhisper.api import MaxWhisperError
from maxwhisper.audio import check_transcribable, load_audio

from .formatting import error_message


def check_audio(audio, max_seconds: float | None) -> np.ndarray:
    """The samples of `audio`, or an AudioError saying why there is nothing to transcribe (the command
    line's and the service's refusal, `maxwhisper.audio.check_transcribable`)."""
    samples = load_audio(audio, max_seconds=max_seconds)
    check_transcribable(samples)
    return samples


def cannot_use(e: MaxWhisperError) -> str:
    return f"⚠ Cannot use this audio: {error_message(e)}"


def refusal(audio, max_seconds: float | None) -> str:
    """What a run would say of `audio` before any model runs (`cannot_use`), "" where it can run:
    said as soon as a file is uploaded."""
    try:
        check_audio(audio, max_seconds)
    except MaxWhisperError as e:
        return cannot_use(e)
    return ""
