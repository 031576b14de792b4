"""The two reference backends behind the Transcriber contract: right text, same weights, clear errors, timings."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from maxwhisper.api import AudioError, BackendError, DecodeOptions, MaxWhisperError
from maxwhisper.checkpoint import load_checkpoint
from maxwhisper.scoring import normalize

AUDIO = Path(__file__).resolve().parent / "audio"


def manifest_reference(name: str) -> str:
    """The reference transcript column of the test audio's MANIFEST for `name`."""
    for line in (AUDIO / "MANIFEST.md").read_text().splitlines():
        if line.startswith(f"| `{name}` |"):
            return line.strip().strip("|").split("|")[-1].strip()
    raise KeyError(name)


@pytest.fixture(scope="session")
def jfk() -> np.ndarray:
    from maxwhisper.audio import load_audio

    return load_audio(AUDIO / "jfk.flac")


@pytest.fixture(scope="session")
def openai_tiny():
    from maxwhisper_baselines.openai_backend import OpenAITranscriber

    return OpenAITranscriber(model="tiny.en", device="cpu", precision="fp32", threads=2)


@pytest.fixture(scope="session")
def faster_tiny():
    from maxwhisper_baselines.faster_backend import FasterTranscriber

    return FasterTranscriber(model="tiny.en", device="cpu", precision="fp32", threads=2)


@pytest.fixture(scope="session")
def openai_jfk(openai_tiny, jfk):
    return openai_tiny.transcribe(jfk, DecodeOptions())


@pytest.fixture(scope="session")
def faster_jfk(faster_tiny, jfk):
    return faster_tiny.transcribe(jfk, DecodeOptions())


JFK = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."


def test_manifest_reference_is_the_jfk_sentence():
    assert manifest_reference("jfk.flac") == JFK


@pytest.mark.parametrize("which", ["openai_jfk", "faster_jfk"])
def test_jfk_text(request, which):
    result = request.getfixturevalue(which)
    assert normalize(result.text) == normalize(manifest_reference("jfk.flac"))
    assert result.language == "en"
    assert result.model == "tiny.en" and result.device == "cpu" and result.precision == "fp32"
    assert result.audio_s == pytest.approx(11.0, abs=0.01)
    assert result.segments and result.segments[0].id == 0
    assert [s.id for s in result.segments] == list(range(len(result.segments)))
    assert all(0 <= s.start <= s.end <= 11.0 + 1e-6 for s in result.segments)
    assert "".join(s.text for s in result.segments) == result.text
    assert result.tokens and all(isinstance(t, int) for t in result.tokens)


@pytest.mark.parametrize("which", ["openai_jfk", "faster_jfk"])
def test_timings_filled_and_consistent(request, which):
    result = request.getfixturevalue(which)
    t = result.timings
    assert t.load_s > 0 and t.compile_s == 0
    assert t.features_s > 0 and t.encode_s > 0 and t.decode_s >= 0 and t.total_s > 0
    assert t.total_s >= t.encode_s + t.features_s
    assert t.decode_s == pytest.approx(t.total_s - t.encode_s - t.features_s, abs=1e-9)
    assert result.rtfx == pytest.approx(result.audio_s / t.total_s)
    d = result.to_dict()
    assert d["timings"]["rtfx"] == pytest.approx(result.rtfx) and d["backend"] == result.backend


def test_same_weights_and_same_tokens(openai_tiny, faster_tiny, openai_jfk, faster_jfk):
    """faster-whisper runs the very CTranslate2 folder load_checkpoint resolved (the weights openai gets)."""
    ckpt = load_checkpoint("tiny.en")
    assert Path(faster_tiny.ct2_dir).resolve() == Path(ckpt.ct2_dir).resolve()
    np.testing.assert_array_equal(
        openai_tiny.net.decoder.token_embedding.weight.detach().numpy(), ckpt.state["decoder.token_embedding.weight"]
    )

    # same weights, same greedy rules: the text tokens agree (timestamps may differ: different mel code)
    def text_tokens(r):
        return [t for t in r.tokens if t < 50257]

    assert text_tokens(openai_jfk) == text_tokens(faster_jfk)


def test_word_timestamps_and_beam(openai_tiny, faster_tiny, jfk):
    options = DecodeOptions(word_timestamps=True, beam_size=2, temperature=(0.0,))
    for t in (openai_tiny, faster_tiny):
        r = t.transcribe(jfk, options)
        words = [w for s in r.segments for w in s.words]
        assert normalize("".join(w.word for w in words)) == normalize(JFK), t.backend
        assert all(0 <= w.start <= w.end for w in words)
        assert [w.start for w in words] == sorted(w.start for w in words)


def test_without_timestamps(openai_tiny, faster_tiny, jfk):
    for t in (openai_tiny, faster_tiny):
        r = t.transcribe(jfk, DecodeOptions(without_timestamps=True, temperature=(0.0,)))
        assert normalize(r.text) == normalize(JFK), t.backend
        assert not any(tok >= 50363 for tok in r.tokens), t.backend  # no timestamp tokens


@pytest.mark.parametrize("backend", ["openai_tiny", "faster_tiny"])
def test_progress_reports_the_fraction_done(request, backend, jfk):
    """openai-whisper after each 30 s window, faster-whisper after each segment; 1 at the end."""
    fractions = []
    request.getfixturevalue(backend).transcribe(
        np.concatenate([jfk] * 3), DecodeOptions(temperature=(0.0,)), progress=fractions.append
    )
    assert len(fractions) >= 2 and fractions == sorted(fractions) and fractions[0] > 0 and fractions[-1] == 1.0


@pytest.mark.parametrize("backend", ["openai", "faster"])
def test_bad_audio_and_options(request, backend):
    t = request.getfixturevalue(f"{backend}_tiny")
    with pytest.raises(AudioError):
        t.transcribe(np.zeros((2, 16000), np.float32))
    assert t.transcribe(np.zeros(0, np.float32)).segments == []  # no samples: an empty result (tests/test_api.py)
    with pytest.raises(MaxWhisperError, match="language"):
        t.transcribe(np.zeros(16000, np.float32), DecodeOptions(language="xx"))
    with pytest.raises(MaxWhisperError, match="suppress_tokens"):
        t.transcribe(np.zeros(16000, np.float32), DecodeOptions(suppress_tokens="a,b"))


def test_openai_precision_and_device_errors():
    import torch
    from maxwhisper_baselines.openai_backend import OpenAITranscriber

    for precision in ("int8", "bf16", "fp16"):  # cpu: fp32 only
        with pytest.raises(BackendError, match="fp32"):
            OpenAITranscriber(model="tiny.en", device="cpu", precision=precision, threads=2)
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="GPU"):
            OpenAITranscriber(model="tiny.en", device="gpu", precision="fp32", threads=2)
        with pytest.raises(BackendError, match="fp16"):  # auto -> cpu, where fp16 is refused
            OpenAITranscriber(model="tiny.en", device="auto", precision="fp16", threads=2)


def test_faster_precision_and_device_errors():
    import ctranslate2
    from maxwhisper_baselines.faster_backend import FasterTranscriber

    if "float16" not in ctranslate2.get_supported_compute_types("cpu"):
        with pytest.raises(BackendError, match=re.escape("supported: fp32")):
            FasterTranscriber(model="tiny.en", device="cpu", precision="fp16", threads=2)
    with pytest.raises(BackendError):
        FasterTranscriber(model="tiny.en", device="cpu", precision="fp64", threads=2)
    if ctranslate2.get_cuda_device_count() == 0:
        with pytest.raises(BackendError, match="GPU"):
            FasterTranscriber(model="tiny.en", device="gpu", precision="fp32", threads=2)


def test_faster_on_a_gpu_without_cuda_12_s_libraries_says_so_at_load(monkeypatch):
    # CTranslate2 sees the GPU but opens CUDA 12's cuBLAS only at the first transcription: the
    # backend looks for it first; "gpu" is refused in one line, "auto" takes the CPU
    import ctranslate2
    from maxwhisper_baselines import faster_backend

    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 1)
    monkeypatch.setattr(faster_backend, "load_cuda12_libraries", lambda: [])
    monkeypatch.setattr(faster_backend, "cublas12_loads", lambda: False)
    with pytest.raises(BackendError, match=r"libcublas\.so\.12 cannot be loaded here: pip install nvidia-cublas-cu12"):
        faster_backend.FasterTranscriber(model="tiny.en", device="gpu", precision="fp32", threads=2)
    auto = faster_backend.FasterTranscriber(model="tiny.en", device="auto", threads=2)
    assert auto.device == "cpu" and "libcublas.so.12 cannot be loaded" in auto.device_note
    monkeypatch.setattr(faster_backend, "cublas12_loads", lambda: True)
    assert faster_backend._resolve_device("auto") == ("gpu", None)


def test_the_cuda_12_library_check_asks_the_loader(monkeypatch):
    import ctypes

    from maxwhisper_baselines.faster_backend import cublas12_loads

    opened = []

    def cdll(name, *args, **kwargs):
        opened.append(name)
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", cdll)
    assert cublas12_loads() is False and opened == ["libcublas.so.12"]
    monkeypatch.setattr(ctypes, "CDLL", lambda name, *args, **kwargs: None)
    assert cublas12_loads() is True


def test_faster_refuses_a_pt_checkpoint(tmp_path):
    from dataclasses import asdict

    import torch
    from maxwhisper_baselines.faster_backend import FasterTranscriber
    from whisper.model import ModelDimensions, Whisper

    dims = ModelDimensions(
        n_mels=80,
        n_audio_ctx=1500,
        n_audio_state=32,
        n_audio_head=2,
        n_audio_layer=1,
        n_vocab=51864,
        n_text_ctx=448,
        n_text_state=32,
        n_text_head=2,
        n_text_layer=1,
    )
    torch.save({"dims": asdict(dims), "model_state_dict": Whisper(dims).state_dict()}, tmp_path / "m.pt")
    with pytest.raises(BackendError, match="CTranslate2"):
        FasterTranscriber(model=str(tmp_path / "m.pt"), device="cpu", precision="fp32", threads=2)


def test_openai_runs_a_pt_checkpoint(tmp_path, jfk):
    """A random-weight multilingual .pt loads through the same path (the words are noise; the call
    must work, and language detection must report its probability)."""
    from dataclasses import asdict

    import torch
    from maxwhisper_baselines.openai_backend import OpenAITranscriber
    from whisper.model import ModelDimensions, Whisper

    dims = ModelDimensions(
        n_mels=80,
        n_audio_ctx=1500,
        n_audio_state=32,
        n_audio_head=2,
        n_audio_layer=1,
        n_vocab=51865,
        n_text_ctx=448,
        n_text_state=32,
        n_text_head=2,
        n_text_layer=1,
    )
    torch.manual_seed(0)
    model = Whisper(dims)
    with torch.no_grad():  # openai leaves the decoder's positional embedding as torch.empty (garbage, maybe NaN)
        for name, p in model.named_parameters():
            p.copy_(
                torch.ones_like(p) if name.endswith(("ln.weight", "ln_post.weight")) else torch.randn_like(p) * 0.02
            )
    torch.save({"dims": asdict(dims), "model_state_dict": model.state_dict()}, tmp_path / "m.pt")
    t = OpenAITranscriber(model=str(tmp_path / "m.pt"), device="cpu", precision="fp32", threads=2)
    r = t.transcribe(jfk[:16000], DecodeOptions(temperature=(0.0,), without_timestamps=True))
    assert r.model == str(tmp_path / "m.pt") and r.timings.total_s > 0
    from whisper.tokenizer import LANGUAGES

    assert 0 < r.language_probability <= 1 and r.language in LANGUAGES


def test_registry_builds_both():
    from maxwhisper_baselines.faster_backend import FasterTranscriber
    from maxwhisper_baselines.openai_backend import OpenAITranscriber

    from maxwhisper.registry import available_backends, create_transcriber

    assert {"openai", "faster"} <= set(available_backends())
    for name, cls in (("openai", OpenAITranscriber), ("faster", FasterTranscriber)):
        t = create_transcriber(name, model="tiny.en", device="cpu", precision="fp32", threads=2)
        assert isinstance(t, cls) and t.backend == name and t.model == "tiny.en"
        assert t.device == "cpu" and t.precision == "fp32" and t.load_s > 0 and t.compile_s == 0


def test_faster_window_is_the_seek_loop_s_first_window_in_one_encoder_pass(faster_tiny, monkeypatch):
    """The stream's hypothesis (`maxwhisper.streaming`) on faster-whisper, as MAX's."""
    from maxwhisper.audio import SAMPLE_RATE, load_audio

    audio = load_audio(AUDIO / "physicsworks.flac")[30 * SAMPLE_RATE : 40 * SAMPLE_RATE]  # its end is decoded again
    options = DecodeOptions(word_timestamps=True, temperature=(0.0,))
    calls, encode = [], faster_tiny.whisper.encode
    monkeypatch.setattr(
        faster_tiny.whisper, "encode", lambda features: calls.append(features.shape) or encode(features)
    )
    whole = faster_tiny.transcribe(audio, options)
    assert len(calls) == 2
    window, decoded = faster_tiny.transcribe_window(audio, options, padding_s=None)  # the 30 s window
    assert decoded == ()  # faster-whisper checks no draft
    assert len(calls) == 3
    assert "_split_segments_by_timestamps" not in vars(faster_tiny.whisper)  # the seek loop is faster-whisper's again
    first = [s for s in whole.segments if s.seek == 0]
    assert window.segments == first and len(first) < len(whole.segments)
    assert faster_tiny.transcribe(audio, options).segments == whole.segments


def test_faster_window_encodes_its_audio_and_stream_padding_s_of_silence_not_30_s(faster_tiny, monkeypatch):
    """As MAX's (`maxwhisper.audio.STREAM_PADDING_S`): CTranslate2's encoder hears the window's 10 s and 5 s."""
    from whisper.normalizers import EnglishTextNormalizer

    from maxwhisper.audio import SAMPLE_RATE, load_audio

    class Recording:  # CTranslate2's model, its encoder's inputs recorded
        def __init__(self, inner):
            self.inner, self.shapes = inner, []

        def encode(self, features, **kwargs):
            self.shapes.append(tuple(features.shape))
            return self.inner.encode(features, **kwargs)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    audio = load_audio(AUDIO / "physicsworks.flac")[30 * SAMPLE_RATE : 40 * SAMPLE_RATE]
    options = DecodeOptions(word_timestamps=True, temperature=(0.0,))
    model = Recording(faster_tiny.whisper.model)
    monkeypatch.setattr(faster_tiny.whisper, "model", model)
    short, _ = faster_tiny.transcribe_window(audio, options)
    whole, _ = faster_tiny.transcribe_window(audio, options, padding_s=None)
    faster_tiny.transcribe(audio[: 5 * SAMPLE_RATE], options)
    assert model.shapes == [(1, 80, 1500), (1, 80, 3000), (1, 80, 3000)]
    normalise = EnglishTextNormalizer()
    assert normalise(short.text).startswith(normalise(whole.text)) and whole.text  # maybe more words at the end


def test_faster_short_window_stops_at_the_stream_s_token_cap(faster_tiny, monkeypatch):
    """As MAX's: jfk's first second and 5 s of silence loop, cut at `stream_sample_len` new tokens."""
    from maxwhisper.audio import SAMPLE_RATE, load_audio
    from maxwhisper.windows import stream_sample_len

    class Recording:  # CTranslate2's model, each generate call's length limit recorded
        def __init__(self, inner):
            self.inner, self.limits = inner, []

        def generate(self, features, prompts, **kwargs):
            self.limits.append(kwargs["max_length"] - len(prompts[0]))
            return self.inner.generate(features, prompts, **kwargs)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    audio = load_audio(AUDIO / "jfk.flac")[:SAMPLE_RATE]
    model = Recording(faster_tiny.whisper.model)
    monkeypatch.setattr(faster_tiny.whisper, "model", model)
    looped, _ = faster_tiny.transcribe_window(audio, DecodeOptions(temperature=(0.0,)))
    whole, _ = faster_tiny.transcribe_window(audio, DecodeOptions(temperature=(0.0,)), padding_s=None)
    assert model.limits[0] == stream_sample_len(1.0) < model.limits[1]  # the 30 s window is not capped
    assert looped.text.count("and so") < 8  # 37 without the cap
