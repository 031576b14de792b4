"""Transcribe a file with MAX-Whisper (pip install . first): python examples/transcribe.py AUDIO [MODEL]

The first run compiles MAX's graphs (minutes on a CPU); later runs load them from the compile cache.
"""

import sys
from pathlib import Path

import maxwhisper

path = sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).with_name("jfk.flac"))
model = maxwhisper.load_model(sys.argv[2] if len(sys.argv) > 2 else "tiny.en", backend="max")
print(model.transcribe(path).text.strip())
