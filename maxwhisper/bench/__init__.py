"""Side-by-side benchmark: MAX-Whisper vs openai-whisper (PyTorch) vs faster-whisper (CTranslate2).

    python -m maxwhisper.bench [--backends max,openai,faster] [--models tiny.en] [--devices cpu,gpu]
                               [--audio FILE|FOLDER|FILE#left ...] [--repeats 5] [--rounds 1] [--quick]
                               [--out benchmarks/results] [--throughput [--batch-sizes 1,8]]

(`cli.add_arguments(parser)` / `cli.main(args)` are what `python -m maxwhisper bench` wires in.)

One module per concern: `clips` (the audio and its references), `machine` (hardware, versions,
memory), `worker` (one implementation's subprocess), `records` (statistics, accuracy, targets),
`report` (Markdown, charts, output files) and `cli` (the flags and the runs).

How it measures (see benchmarks/README.md for what the figures mean):
- Each implementation, a (backend, model, device, precision), runs in its own subprocess
  (`python -m maxwhisper.bench --worker SPEC.json`), which loads the model once (load_s, compile_s),
  then for each clip makes one untimed warm-up transcription and N timed ones, and writes its figures
  as JSON. Peak RSS is therefore that implementation's own, and no backend's threads, allocator or
  imports are in another's process.
- `--rounds R` runs every implementation's worker R times in turn (A B C, A B C, ...) and pools the
  timed runs: on a shared machine whose speed drifts over minutes, one slow spell then hits every
  implementation instead of whichever happened to be running.
- Every implementation gets the same DecodeOptions (openai-whisper's transcribe() defaults, greedy)
  and the same thread count (os.cpu_count(): MAX 26.7 cannot use fewer).
- The parent process computes WER (`maxwhisper.scoring`, as the app) against the reference
  transcripts in `clips`, agreement with openai-whisper's transcript, the target ratios, and writes
  JSON, Markdown and a Plotly chart per device.

`--throughput` instead runs batched long-form transcription (`--batch-size`: Silero VAD speech chunks
decoded N at a time) of one long recording at batch sizes 1 and 8, MAX against faster-whisper's
`BatchedInferencePipeline`, with WER against the lecture's whisper-medium transcript.
"""
