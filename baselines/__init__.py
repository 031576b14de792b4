"""The reference implementations behind maxwhisper's Transcriber contract: openai-whisper
(PyTorch, `openai_backend`) and faster-whisper (CTranslate2, `faster_backend`).

Installed, this package is `maxwhisper_baselines`, and pyproject.toml's `maxwhisper.backends` entry
point hands BACKENDS to maxwhisper's registry; the app registers them itself where the project is
not installed. Importing this package loads neither implementation.
"""

from maxwhisper.api import Backend

OPENAI = Backend(
    name="openai",
    label="openai-whisper",
    description="openai-whisper (PyTorch)",
    color="#16a34a",
    module=f"{__name__}.openai_backend",
    cls="OpenAITranscriber",
    package="whisper",
    extra="baselines",
    precisions={"cpu": ("fp32",), "gpu": ("fp32", "fp16")},
)
FASTER = Backend(
    name="faster",
    label="faster-whisper",
    description="faster-whisper (CTranslate2)",
    color="#0891b2",
    module=f"{__name__}.faster_backend",
    cls="FasterTranscriber",
    package="faster_whisper",
    extra="baselines",
    precisions={"cpu": ("fp32", "int8"), "gpu": ("fp32", "fp16", "int8")},
    batched=True,
)
BACKENDS = (OPENAI, FASTER)
