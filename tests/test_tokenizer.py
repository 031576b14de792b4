"""maxwhisper.tokenizer against openai-whisper's tokenizer: same ids, same special tokens, same text."""

import pytest

from maxwhisper.tokenizer import LANGUAGES, TO_LANGUAGE_CODE, get_encoding, get_tokenizer

whisper_tokenizer = pytest.importorskip("whisper.tokenizer")

CONFIGS = [(False, 99), (True, 99), (True, 100)]  # English-only, multilingual, large-v3

TEXTS = [
    " And so my fellow Americans, ask not what your country can do for you.",
    "Hello world! It's 3.14 o'clock -- isn't it? (yes) [laughs] ♪♪",
    " Jedem, der dieses Software erhält, wird hiermit unentgeltlich die Genehmigung erteilt.",
    " 你好，世界。こんにちは世界。 Привет, мир! مرحبا بالعالم",
    "  multiple   spaces\tand\nnewlines  ",
    "",
]

SPECIAL = [
    "eot",
    "sot",
    "transcribe",
    "translate",
    "sot_prev",
    "sot_lm",
    "no_speech",
    "no_timestamps",
    "timestamp_begin",
]


def test_language_tables_are_whisper_s():
    assert LANGUAGES == whisper_tokenizer.LANGUAGES
    assert list(LANGUAGES) == list(whisper_tokenizer.LANGUAGES)  # order gives the token ids
    assert TO_LANGUAGE_CODE == whisper_tokenizer.TO_LANGUAGE_CODE


@pytest.mark.parametrize("multilingual,num_languages", CONFIGS)
def test_special_tokens_equal_whisper(multilingual, num_languages):
    ours = get_tokenizer(multilingual, num_languages=num_languages)
    ref = whisper_tokenizer.get_tokenizer(multilingual, num_languages=num_languages)
    assert ours.encoding.n_vocab == ref.encoding.n_vocab
    assert ours.special_tokens == ref.special_tokens
    for name in SPECIAL:
        assert getattr(ours, name) == getattr(ref, name), name
    assert ours.sot_sequence == ref.sot_sequence
    assert ours.sot_sequence_including_notimestamps == ref.sot_sequence_including_notimestamps
    assert ours.non_speech_tokens == ref.non_speech_tokens
    # whisper lists them in the order of a set (varies between processes); ours are in id order
    assert sorted(ours.all_language_tokens) == sorted(ref.all_language_tokens)
    assert list(ours.all_language_tokens) == sorted(ours.all_language_tokens)
    assert dict(zip(ours.all_language_tokens, ours.all_language_codes)) == dict(
        zip(ref.all_language_tokens, ref.all_language_codes)
    )
    assert len(ours.all_language_tokens) == num_languages
    if multilingual:
        assert ours.language_token == ref.language_token
        for code in ("en", "de", "zh", "haw"):
            assert ours.to_language_token(code) == ref.to_language_token(code)


@pytest.mark.parametrize(
    "language,task", [("de", "translate"), ("German", "transcribe"), ("mandarin", None), (None, "translate")]
)
def test_sot_sequence_with_language_and_task(language, task):
    for multilingual, num_languages in CONFIGS:
        ours = get_tokenizer(multilingual, num_languages=num_languages, language=language, task=task)
        ref = whisper_tokenizer.get_tokenizer(multilingual, num_languages=num_languages, language=language, task=task)
        assert (ours.language, ours.task, ours.sot_sequence) == (ref.language, ref.task, ref.sot_sequence)


def test_unknown_language_raises_like_whisper():
    with pytest.raises(ValueError, match="Unsupported language"):
        get_tokenizer(True, language="klingon")


@pytest.mark.parametrize("multilingual", [False, True])
def test_round_trip_and_ids_equal_whisper(multilingual):
    ours = get_tokenizer(multilingual)
    ref = whisper_tokenizer.get_tokenizer(multilingual)
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == ref.encode(text)
        assert ours.decode(ids) == text
        with_ts = [ours.timestamp_begin] + ids + [ours.timestamp_begin + 50, ours.eot]
        assert ours.decode(with_ts) == ref.decode(with_ts) == text + "<|endoftext|>"
        assert ours.decode_with_timestamps(with_ts) == ref.decode_with_timestamps(with_ts)
        assert "<|1.00|>" in ours.decode_with_timestamps(with_ts)


@pytest.mark.parametrize("language", ["en", "ja"])
def test_split_to_word_tokens_equal_whisper(language):
    ours = get_tokenizer(True, language=language)
    ref = whisper_tokenizer.get_tokenizer(True, language=language)
    for text in TEXTS:
        ids = ours.encode(text) + [ours.eot]
        assert ours.split_to_word_tokens(ids) == ref.split_to_word_tokens(ids)


def test_encoding_is_cached():
    assert get_encoding("gpt2") is get_encoding("gpt2")
    assert get_tokenizer(True, language="de") is get_tokenizer(True, language="de")


@pytest.mark.parametrize("name", ["gpt2", "multilingual"])
def test_vocabulary_files_are_openai_whisper_s(name):
    from pathlib import Path

    from maxwhisper.tokenizer import vocabulary_path

    theirs = Path(whisper_tokenizer.__file__).parent / "assets" / f"{name}.tiktoken"
    assert vocabulary_path(name).read_bytes() == theirs.read_bytes()
