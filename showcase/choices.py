"""What this machine offers a visitor to choose from: the installed models, the implementations
that can run, and the devices ("auto" meaning the GPU where MAX can use one)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Choices:
    models: list[str]  # installed, the default first
    backends: list[str]  # implementations whose packages are installed
    gpu: bool  # MAX can use a GPU here

    @classmethod
    def here(cls) -> Choices:
        """This machine's choices (importing max: after `models.use_persistent_storage`)."""
        from maxwhisper.checkpoint import installed_models
        from maxwhisper.graph.model import gpu_available
        from maxwhisper.registry import available_backends

        return cls(installed_models(), available_backends(), gpu_available())

    @property
    def default_device(self) -> str:
        return "gpu" if self.gpu else "cpu"

    @property
    def precisions(self) -> list[str]:
        """The Precision choices: MAX's on the CPU (bf16 only where the CPU has AVX512_BF16)."""
        from maxwhisper.registry import BACKENDS

        return list(BACKENDS["max"].precisions["cpu"])

    def device(self, choice: str) -> str:
        """The device a control's choice means: "auto" is the default device."""
        return self.default_device if choice == "auto" else choice
