"""Side-by-side benchmark: MAX-Whisper against openai-whisper (PyTorch) and faster-whisper
(CTranslate2), run by `maxwhisper bench` (`cli.add_arguments`, `cli.main`) or `python -m maxwhisper.bench`,
which also runs a worker's `--worker SPEC.json`.

One module per concern: `clips` (the audio and its references), `machine` (hardware, versions,
memory), `worker` (one implementation's subprocess), `records` (statistics, accuracy, targets),
`report` (Markdown, charts, output files), `cli` (the flags and the runs), and the modes `streaming`,
`serve` and `bulk`. How it measures and what the figures mean: benchmarks/README.md.
"""
