"""The MAX network: the only package that imports `max`.

pyarrow (Ray Data's block format) is loaded first when it is installed: libmax exports
opentelemetry-cpp's context singleton as a unique global symbol, and a libarrow loaded after it
takes that copy for its own and crashes in its first compute call (a bulk job started in a process
that had loaded a MAX model segfaulted). Loaded first, libarrow's copy serves both.
"""

import importlib.util

if importlib.util.find_spec("pyarrow") is not None:
    import pyarrow  # noqa: F401
