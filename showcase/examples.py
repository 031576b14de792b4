"""The example clips the app offers (examples/, described in examples/README.md): the Compare tab's
buttons and the Live tab's stand-ins for a microphone."""

from __future__ import annotations

from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
JFK_TEXT = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
EXAMPLES = (  # (clip in examples/, its button, the model it shows best, reference text); see examples/README.md
    ("jfk.flac", "JFK, 11 s", "tiny.en", JFK_TEXT),
    ("physicsworks-excerpt.flac", "Physics lecture, 43 s", "tiny.en", ""),
    ("german.flac", "German, 29 s", "base", ""),
)


def example_rows(models: list[str], english: bool = False) -> list[tuple[str, str, str, str]]:
    """(clip path, button, model, reference text) for each clip in examples/ (with `english`, the
    English ones), with the default model where the clip's model is not installed."""
    return [
        (str(EXAMPLES_DIR / name), button, model if model in models else models[0], text)
        for name, button, model, text in EXAMPLES
        if (EXAMPLES_DIR / name).is_file() and (model.endswith(".en") or not english)
    ]


def reference_for_new_audio(reference: str) -> str:
    """The reference text once other audio is in the box: an example's text went with its clip, so
    it goes; one the visitor typed stays."""
    return "" if reference in {text for *_, text in EXAMPLES if text} else reference
