"""What the app refuses before any model runs: audio that cannot be read, too long, too short or silent."""
from __future__ import annotations

import numpy as np

from maxwhisper.audio import check_transcribable, load_audio


def check_audio(audio, max_seconds: float | None) -> np.ndarray:
    """The samples of `audio`, or an AudioError saying why there is nothing to transcribe (the command
    line's and the service's refusal, `maxwhisper.audio.check_transcribable`)."""
    samples = load_audio(audio, max_seconds=max_seconds)
    check_transcribable(samples)
    return samples
