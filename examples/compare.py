"""The three implementations on one file (pip install ".[baselines]" first): python examples/compare.py AUDIO [MODEL]

Each loads the same weights, decodes with the same options and transcribes the file twice (the
first run warms up); prints the second run's time and whether its tokens equal openai-whisper's.
"""

import sys
from pathlib import Path

import maxwhisper

path = sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).with_name("jfk.flac"))
name = sys.argv[2] if len(sys.argv) > 2 else "tiny.en"
results = {}
for backend in ("max", "openai", "faster"):
    model = maxwhisper.load_model(name, backend=backend, device="cpu")
    model.transcribe(path)
    results[backend] = model.transcribe(path)

reference = results["openai"]
for backend, result in results.items():
    same = "reference" if backend == "openai" else ("identical" if result.tokens == reference.tokens else "different")
    print(f"{backend:7} {result.timings.total_s:6.2f} s  {result.rtfx:5.1f}x real time  tokens: {same}")
mx = results["max"].timings.total_s
print(
    f"\nMAX Graph ran at {reference.timings.total_s / mx:.2f}x the speed of openai-whisper and "
    f"{results['faster'].timings.total_s / mx:.2f}x that of faster-whisper "
    "(one timed run each, on a machine that may be busy)"
)
print(results["max"].text.strip())
