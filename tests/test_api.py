"""The public API: `maxwhisper.load_model(...).transcribe(path or samples, **options)`."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import AUDIO

import maxwhisper
from maxwhisper.api import SAMPLE_RATE, DecodeOptions, OptionError
from maxwhisper.audio import load_audio

JFK = AUDIO / "jfk.flac"


def test_import_loads_no_backend():
    code = "import sys, maxwhisper; print(sorted({'torch', 'max', 'whisper', 'faster_whisper'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"backend": "nope"}, "unknown backend"),
        ({"device": "tpu"}, "unknown device"),
        ({"precision": "fp8"}, "unknown precision"),
        ({"name": "no-such-model"}, "unknown model"),
    ],
)
def test_load_model_errors(kwargs, needle):
    with pytest.raises(maxwhisper.MaxWhisperError, match=needle):
        maxwhisper.load_model(**kwargs)


@pytest.fixture(scope="module")
def openai_model():
    return maxwhisper.load_model("tiny.en", backend="openai", device="cpu")


def test_transcribe_path(openai_model):
    fractions = []
    result = openai_model.transcribe(str(JFK), progress=fractions.append)
    assert fractions and fractions == sorted(fractions) and fractions[-1] == 1.0
    assert isinstance(result, maxwhisper.TranscriptionResult)
    assert "ask not what your country can do for you" in result.text
    assert result.language == "en" and result.segments and result.timings.total_s > 0
    assert all(isinstance(s, maxwhisper.Segment) for s in result.segments)
    assert openai_model.backend == "openai" and openai_model.device == "cpu"


def test_transcribe_samples_with_options(openai_model):
    options = maxwhisper.DecodeOptions(temperature=0.0)
    result = openai_model.transcribe(load_audio(JFK), options, without_timestamps=True)
    assert result.options == maxwhisper.DecodeOptions(temperature=0.0, without_timestamps=True)
    assert "ask not what your country can do for you" in result.text
    with pytest.raises(TypeError):
        openai_model.transcribe(load_audio(JFK), beam=5)


# --- options and audio from strangers: refused up front, in one line ---------------------------

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "changes, field, message",
    [
        (
            {"temperature": -1},
            "temperature",
            "temperature must be 0 (greedy) or a finite number of at least 0.01, got -1",
        ),
        ({"temperature": NAN}, "temperature", "at least 0.01, got nan"),
        ({"temperature": (0.0, INF)}, "temperature", "at least 0.01, got inf"),
        ({"temperature": 1e-40}, "temperature", "at least 0.01, got 1e-40"),  # overflows float32 logits: '!!!!'
        ({"temperature": "hot"}, "temperature", "got 'hot'"),
        ({"temperature": ()}, "temperature", "temperature schedule is empty"),
        ({"beam_size": 0}, "beam_size", "beam_size must be a whole number of at least 1, got 0"),
        ({"beam_size": 2.5}, "beam_size", "beam_size must be a whole number of at least 1, got 2.5"),
        ({"best_of": NAN}, "best_of", "best_of must be a whole number of at least 1, got nan"),
        ({"batch_size": 0}, "batch_size", "batch_size must be a whole number of at least 1, got 0"),
        ({"patience": NAN}, "patience", "patience must be a finite number above 0, got nan"),
        ({"beam_size": 2, "patience": -1}, "patience", "patience must be a finite number above 0, got -1"),
        ({"beam_size": 2, "patience": 0.2}, "patience", "patience must be at least 1/beam_size (0.5 with beam_size 2"),
        (
            {"compression_ratio_threshold": NAN},
            "compression_ratio_threshold",
            "compression_ratio_threshold must be a finite number above 0 (a gzip compression ratio), "
            "or None (off), got nan",
        ),
        ({"compression_ratio_threshold": 0}, "compression_ratio_threshold", "above 0"),
        (
            {"logprob_threshold": -INF},
            "logprob_threshold",
            "logprob_threshold must be a finite number of at most 0 (an average log probability), or "
            "None (off), got -inf",
        ),
        ({"logprob_threshold": 0.5}, "logprob_threshold", "at most 0"),
        (
            {"no_speech_threshold": 1.5},
            "no_speech_threshold",
            "no_speech_threshold must be a probability from 0 to 1, or None (off), got 1.5",
        ),
        ({"no_speech_threshold": NAN}, "no_speech_threshold", "from 0 to 1"),
        (
            {"hallucination_silence_threshold": -1},
            "hallucination_silence_threshold",
            "hallucination_silence_threshold must be a finite number of seconds, 0 or more, or None (off), got -1",
        ),
        (
            {"suppress_tokens": "999999"},
            "suppress_tokens",
            "suppress_tokens: 999999 is not a token id of any Whisper model (0 to 51865, or -1 for "
            "the non-speech symbols)",
        ),
        ({"suppress_tokens": "51866"}, "suppress_tokens", "51866 is not a token id of any Whisper model"),
        ({"suppress_tokens": "-2"}, "suppress_tokens", "-2 is not a token id of any Whisper model"),
        ({"suppress_tokens": "1,x"}, "suppress_tokens", "suppress_tokens must be comma-separated integers, not '1,x'"),
        ({"suppress_tokens": 5}, "suppress_tokens", "comma-separated integers or a list of them, not 5"),
        ({"language": "xx"}, "language", "unknown language 'xx'; use a code such as en, de or fr"),
        ({"task": "summarise"}, "task", "task must be 'transcribe' or 'translate', not 'summarise'"),
        ({"word_timestamps": "yes"}, "word_timestamps", "word_timestamps must be True or False, got 'yes'"),
        ({"initial_prompt": 7}, "initial_prompt", "initial_prompt must be text or None, got 7"),
        ({"batch_size": 2, "word_timestamps": True}, "word_timestamps", "not available with batched transcription"),
    ],
)
def test_options_that_cannot_work_are_refused_in_one_line(changes, field, message):
    with pytest.raises(OptionError) as error:
        DecodeOptions(**changes)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert error.value.field == field and isinstance(error.value, maxwhisper.MaxWhisperError)


def test_options_are_stored_as_plain_values_and_their_edges_work():
    o = DecodeOptions(
        temperature=np.float32(0.5),
        beam_size=np.int64(3),
        best_of=4.0,
        patience=np.float64(0.5),
        no_speech_threshold=np.float32(0.25),
        suppress_tokens=[-1, np.int64(220)],
        language="German",
        word_timestamps=np.bool_(True),
    )
    assert (o.temperature, o.beam_size, o.best_of, o.patience, o.no_speech_threshold) == ((0.5,), 3, 4, 0.5, 0.25)
    assert [
        type(v)
        for v in (o.temperature[0], o.beam_size, o.best_of, o.patience, o.no_speech_threshold, o.word_timestamps)
    ] == [float, int, int, float, float, bool]
    assert o.suppress_tokens == "-1,220" and o.language == "de"  # a name or any case: the code
    assert DecodeOptions(temperature=np.array([0, 0.5], np.float32)).temperature == (0.0, 0.5)
    edges = DecodeOptions(
        temperature=(0, 0.01, 1e6),
        beam_size=2,
        patience=0.5,
        compression_ratio_threshold=1e-3,
        logprob_threshold=0,
        no_speech_threshold=1,
        hallucination_silence_threshold=0,
        suppress_tokens="0,51865",
    )
    assert edges.temperature == (0.0, 0.01, 1e6)
    assert DecodeOptions(patience=0.5).patience == 0.5  # greedy decoding ignores patience


def test_a_token_id_is_checked_against_the_model_s_vocabulary():
    options = DecodeOptions(suppress_tokens="-1,51863,51864")
    options.check_vocabulary(51865)  # base's vocabulary
    with pytest.raises(OptionError, match=r"^suppress_tokens: 51864 is not a token id of this model \(0 to 51863, "):
        options.check_vocabulary(51864)  # tiny.en's


@pytest.fixture(params=["max", "openai", "faster"])
def tiny_en(request):
    """tiny.en on each backend, on the CPU."""
    if request.param == "faster":
        return request.getfixturevalue("faster_tiny_en")
    return request.getfixturevalue(f"{request.param}_tiny_en")


@pytest.fixture(scope="module")
def faster_tiny_en():
    from maxwhisper.registry import create_transcriber

    return create_transcriber("faster", "tiny.en", device="cpu", threads=2)


def test_empty_audio_gives_an_empty_result_without_running_the_model(tiny_en):
    for options in (
        DecodeOptions(language="English"),
        DecodeOptions(batch_size=2) if tiny_en.backend != "openai" else DecodeOptions(temperature=0.0),
    ):
        result = tiny_en.transcribe(np.zeros(0, np.float32), options)
        assert (result.text, result.segments, result.language, result.audio_s) == ("", [], "en", 0.0)
        assert result.timings.encode_s is None and result.timings.total_s == 0  # the model did not run
        assert (result.backend, result.options, result.language_probability) == (tiny_en.backend, options, None)
    with pytest.raises(OptionError, match="not a token id of this model"):  # checked as any request
        tiny_en.transcribe(np.zeros(0, np.float32), DecodeOptions(suppress_tokens="51864"))


def test_a_token_beyond_the_model_s_vocabulary_is_refused_before_decoding(tiny_en, jfk_audio):
    """51864 exists in multilingual vocabularies, not in tiny.en's: openai-whisper and MAX would end in
    an IndexError, CTranslate2 would ignore it."""
    with pytest.raises(OptionError, match=r"suppress_tokens: 51864 is not a token id of this model \(0 to 51863"):
        tiny_en.transcribe(jfk_audio, DecodeOptions(suppress_tokens="220,51864"))


def test_short_and_silent_audio_are_transcribed_as_the_peers_do(tiny_en):
    """The Python API does not refuse audio with nothing to say (the command line and the app do)."""
    tone = 0.5 * np.sin(np.arange(SAMPLE_RATE // 20, dtype=np.float32) * 0.3)  # 50 ms
    for samples in (tone, np.zeros(SAMPLE_RATE, np.float32)):
        result = tiny_en.transcribe(samples, DecodeOptions(temperature=0.0))
        assert result.timings.encode_s > 0 and result.audio_s == len(samples) / SAMPLE_RATE


def test_model_transcribe_takes_empty_samples_but_not_an_empty_file(openai_model, tmp_path):
    assert openai_model.transcribe(np.zeros(0, np.float32)).segments == []
    (tmp_path / "empty.wav").touch()
    for empty in (tmp_path / "empty.wav", b""):
        with pytest.raises(maxwhisper.MaxWhisperError, match=r"empty \(0 bytes\)"):
            openai_model.transcribe(empty)


def test_a_backend_s_record_says_what_it_can_do_and_the_registry_asks_it_not_its_name(monkeypatch):
    """`Backend` capabilities: a backend with CPU kernels takes kernels=False (--no-kernels), one that
    decodes together takes max_batch; one without either refuses them in one line that names the
    backends that have it. MAX has every capability; the baselines none."""
    import dataclasses
    import types

    from maxwhisper import registry
    from maxwhisper.api import BackendError

    made = []
    module = types.ModuleType("capability_test_backend")
    module.Made = lambda **kwargs: made.append(kwargs)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(registry, "BACKENDS", dict(registry.BACKENDS))
    plain = dataclasses.replace(
        registry.BACKENDS["max"],
        name="plain",
        label="Plain",
        module=module.__name__,
        cls="Made",
        package="numpy",
        compiles=False,
        kernels=False,
        decodes_together=False,
    )
    able = dataclasses.replace(plain, name="able", label="Able", kernels=True, decodes_together=True)
    registry.register(plain, able)
    registry.create_transcriber("able", device="cpu", kernels=False, max_batch=4)
    assert made[-1]["kernels"] is False and made[-1]["max_batch"] == 4
    registry.create_transcriber("plain", device="cpu")
    assert "kernels" not in made[-1] and "max_batch" not in made[-1]
    with pytest.raises(BackendError, match=r"^--no-kernels is an option of the MAX and Able backends only$"):
        registry.create_transcriber("plain", kernels=False)
    with pytest.raises(BackendError, match=r"^max_batch \(.*\) is an option of the MAX and Able backends only$"):
        registry.create_transcriber("plain", max_batch=2)
    capable = {b.name: (b.compiles, b.kernels, b.decodes_together) for b in registry.BACKENDS.values()}
    assert capable["max"] == (True, True, True) and capable["openai"] == capable["faster"] == (False, False, False)
