"""Bulk transcription on Ray Data: `transcribe_many` (and `python -m maxwhisper transcribe-many`)
transcribes a whole archive, on this machine or a Ray cluster, resumable, nothing lost.

    inputs (files, folders, manifests) -> the files not done yet
      -> read_audio: Ray Data tasks decode each file to 16 kHz samples
      -> Transcribe: an actor pool, each actor loading the model once, writes each file's outputs
      -> this process appends each file's row to results.jsonl as it comes, and shows progress

One module per part: `inputs` (what to transcribe, where its outputs go), `worker` (the read task
and the actors), `table` (the results table, resuming), `progress`, `job` (the pipeline) and `cli`.
"""

from .job import BulkSummary, transcribe_many

__all__ = ["transcribe_many", "BulkSummary"]
