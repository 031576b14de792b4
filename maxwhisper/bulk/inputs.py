"""What a bulk job transcribes: its INPUTs (files, folders searched recursively, manifests) as one
list of files, each with the name it was given by and the place of its outputs under the output
folder, which mirrors the input tree."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..api import AudioError, MaxWhisperError
from ..audio import MEDIA_SUFFIXES

MANIFEST_SUFFIXES = (".txt", ".csv", ".jsonl")


@dataclass(frozen=True)
class InputFile:
    path: str  # absolute: what the workers read
    name: str  # as the user gave it: a folder's or a manifest's path as given, joined with the file's place
    relative: str  # its outputs' path under the output folder, less the format's suffix: "talks/a.mp3"
    size: int  # bytes; 0 for a file that is not there (its worker says so)


def collect_inputs(inputs: list[str | os.PathLike], output: str | os.PathLike | None = None) -> list[InputFile]:
    """The files of `inputs`, each once, in the order given (a folder's files sorted). A folder
    gives the files under it whose suffix is a media format (hidden ones and the `output` folder
    left out); a .txt, .csv or .jsonl file is a manifest of paths; any other file is taken as audio.
    Raises MaxWhisperError for an input that is not there, a folder without audio or a bad manifest;
    a file a manifest names that is not there is listed (its row will say so)."""
    if not inputs:
        raise MaxWhisperError("no inputs: name files, folders or manifests")
    skip = Path(output).resolve() if output is not None else None
    found: list[tuple[Path, str, Path]] = []  # (absolute path, name as given, root its outputs mirror)
    for given in map(str, inputs):
        path = Path(given).expanduser()
        if path.is_dir():
            files = _media_files(path, skip)
            if not files:
                raise AudioError(
                    f"no audio or video files in folder {given} (searched for {', '.join(sorted(MEDIA_SUFFIXES))})"
                )
            found += [(_absolute(f), os.path.join(given, str(f.relative_to(path))), _absolute(path)) for f in files]
        elif path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
            base = _absolute(path).parent
            found += [
                (
                    _absolute(base / entry),
                    entry if os.path.isabs(entry) else os.path.normpath(os.path.join(os.path.dirname(given), entry)),
                    base,
                )
                for entry in read_manifest(path, given)
            ]
        elif path.is_file():
            found.append((_absolute(path), given, _absolute(path).parent))
        else:
            raise AudioError(f"input not found: {given}")
    unique: dict[Path, tuple[str, Path]] = {}
    for absolute, name, root in found:
        unique.setdefault(absolute, (name, root))
    # the outputs mirror the tree under the roots' common folder (files a manifest names outside
    # its own folder move that folder up), so that different files never share an output name
    base = Path(os.path.commonpath([str(root) for _, root in unique.values()] + [str(p.parent) for p in unique]))
    return [
        InputFile(path=str(p), name=name, relative=str(p.relative_to(base)), size=_size(p))
        for p, (name, _) in unique.items()
    ]


def _absolute(path: Path) -> Path:
    """Absolute, symbolic links kept: the outputs mirror the tree as the user sees it."""
    return Path(os.path.abspath(path))


def _media_files(folder: Path, skip: Path | None) -> list[Path]:
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (skip is None or Path(root, d).resolve() != skip))
        files += [
            Path(root, n) for n in sorted(names) if not n.startswith(".") and Path(n).suffix.lower() in MEDIA_SUFFIXES
        ]
    return files


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def read_manifest(path: Path, given: str) -> list[str]:
    """The paths a manifest lists: .txt one per line (blank lines and # comments skipped), .csv and
    .jsonl a `path` column. Relative paths are relative to the manifest's folder."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise MaxWhisperError(f"cannot read manifest {given}: {e.strerror if isinstance(e, OSError) else e}") from None
    suffix = path.suffix.lower()
    if suffix == ".txt":
        entries = [line.strip() for line in text.splitlines()]
        entries = [e for e in entries if e and not e.startswith("#")]
    elif suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        if "path" not in (reader.fieldnames or []):
            raise MaxWhisperError(
                f"manifest {given} has no 'path' column (its columns: {', '.join(reader.fieldnames or []) or 'none'})"
            )
        entries = [(row["path"] or "").strip() for row in reader]
    else:
        entries = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise MaxWhisperError(f"manifest {given}, line {number}: not JSON ({e.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("path"), str):
                raise MaxWhisperError(f"manifest {given}, line {number}: no 'path' string")
            entries.append(row["path"].strip())
    entries = [e for e in entries if e]
    if not entries:
        raise MaxWhisperError(f"manifest {given} lists no files")
    return entries
