"""The results table of a bulk job (`results.jsonl` in the output folder: one row per file) and
what makes a job resumable: only the driver writes it, a row at a time, after the file's outputs
are in place; a rerun keeps the rows of the files done with the same settings and does the rest."""

from __future__ import annotations

import json
import os
from pathlib import Path

RESULTS = "results.jsonl"
PARTIAL = ".partial-"  # in the names of output files being written (renamed into place when complete)
SETTINGS = ("backend", "model", "precision", "options")  # a row done with other settings is done again


class ResultsTable:
    """`results.jsonl` under `folder`: read it (a line cut short by a kill is dropped), rewrite it
    with the rows kept, append rows one by one (each on disk before the next)."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / RESULTS

    def read(self) -> list[dict]:
        """Its rows, the last one per output path."""
        rows: dict[str, dict] = {}
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # the last line of a job killed while writing it
            if isinstance(row, dict) and "output" in row:
                rows[row["output"]] = row
        return list(rows.values())

    def rewrite(self, rows: list[dict]) -> None:
        """Replace the table with `rows`, in one rename."""
        tmp = self.path.with_name(f".{RESULTS}{PARTIAL}{os.getpid()}")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        os.replace(tmp, self.path)

    def append(self, row: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def write_parquet(self) -> Path:
        """results.parquet beside it: the same rows; timings and options as columns of structs."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = self.path.with_suffix(".parquet")
        pq.write_table(pa.Table.from_pylist(self.read()), path)
        return path


def settings(row: dict) -> dict:
    return {k: row.get(k) for k in SETTINGS}


def is_done(row: dict, wanted: dict, output: Path, formats: list[str]) -> bool:
    """A row whose file needs no new work: transcribed with the `wanted` settings, its outputs there."""
    return (
        row.get("status") == "ok"
        and settings(row) == wanted
        and all((output / f"{row['output']}.{fmt}").is_file() for fmt in formats)
    )


def remove_partial_files(output: Path) -> None:
    """Output files a killed job left half-written (never renamed into place)."""
    for path in output.rglob(f".*{PARTIAL}*"):
        path.unlink(missing_ok=True)
