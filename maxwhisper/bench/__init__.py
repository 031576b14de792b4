"""Side-by-side benchmark: MAX-Whisper against openai-whisper (PyTorch) and faster-whisper
(CTranslate2), run by `maxwhisper bench MODE` (`cli.add_arguments`, `cli.main`) or
`python -m maxwhisper.bench MODE`, which also runs a worker's `--worker SPEC.json`.

One module per concern: `clips` (the audio and its references), `machine` (hardware, versions,
memory), `specs` (each mode's options and a worker's work, as records), `worker` (one
implementation's subprocess), `records` (statistics, accuracy, targets), `report` (Markdown, charts,
output files), `cli` (the subcommands, and the clips and batched modes), and the modes `streaming`,
`bulk`, `serve` and `realtime`. How it measures and what the figures mean: benchmarks/README.md.
"""
