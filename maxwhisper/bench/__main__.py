"""`python -m maxwhisper.bench ...`, and a worker's `python -m maxwhisper.bench --worker SPEC.json`."""

import sys

from .cli import cli

sys.exit(cli())
