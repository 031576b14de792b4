"""One model's execution plan: every device, dtype and implementation choice about its MAX graphs,
made once per model, so that the graph builders and the runtime read it instead of deciding.

Two kinds of plan:
- "cpu-kernels": on the CPU in float32, the Mojo kernels of `graph/kernels/` wherever the
  model's shapes fit them (every published Whisper's do); with `int8`, the linears' weights
  quantized to int8 at load and the int8 kernels (`--precision int8`), and the cross-attention
  keys and values quantized to int8 as the encoder graph makes them (`cross_int8`), the encoder's
  attention in bfloat16 where that is faster (`encoder_attention_bf16`); with `bf16`,
  the encoder's and the prompts' linears in bfloat16 with `vdpbf16ps` (`--precision bf16`,
  AVX512_BF16 only);
- "portable": MAX's own ops only, exactly the graphs a GPU runs, runnable on any device (on the
  CPU: `--no-kernels`, how those graphs are tested without a GPU).
Both plans' step graphs pick the greedy token. A prompt's call passes the KV cache's write offset
as a host-resident scalar, as slice bounds must be on a GPU; the portable token step graph reads
nothing on the host, so that a GPU can capture it (`decoder.portable_token_layers`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from max.dtype import DType
from max.graph import DeviceRef

from ..checkpoint import ModelDims
from .layers import (
    TEXT_TOKENS,
    WeightBank,
    conv_stem_kernel_fits,
    encoder_attention_fits,
    few_row_attention_fits,
    few_row_linear_fits,
    greedy_choice,
    greedy_choice_ops,
    layer_norm,
    layer_norm_kernel,
    packed_linear_fits,
)


@dataclass(frozen=True)
class ExecutionPlan:
    name: str  # "cpu-kernels" or "portable"
    device: DeviceRef
    dtype: DType  # weights and activations; layer norm and softmax run in float32
    encoder_linear_kernel: bool  # `packed_linear` for the encoder's linears and the cross K/V projection
    encoder_attention_kernel: bool  # `encoder_attention` for the encoder's self-attention
    step_kernels: bool  # `few_row_attention` for one-row step calls, and `greedy_choice` picks the greedy token
    step_linears_kernel: bool  # `few_row_linear` over float16-stored (int8: int8) decoder weights, in the step graph
    token_step: bool  # one-new-token steps (any batch) run the token step graph
    # every linear's weights in int8: `packed_linear_int8` in the encoder, `few_row_linear_int8` in steps
    int8: bool = False
    # the cross-attention K/V in int8 with a float32 scale per key and per value (`decoder.cross_layout`):
    # a one-token step reads a quarter of their float32 bytes
    cross_int8: bool = False
    # the encoder's and the prompts' linears in bfloat16 (`packed_linear_bf16`); one-token steps stay
    # float32 over float16-stored weights (as many bytes as bfloat16 ones, and exact)
    bf16: bool = False
    # `layer_norm_rows` for every layer norm: MAX's layer norm op takes a cold compile seconds
    layer_norm_kernel: bool = False
    # `conv_stem` for the encoder's two convolutions and positional embedding: MAX's conv2d op
    # takes a cold compile seconds
    conv_stem_kernel: bool = False
    # int8's encoder attention in bfloat16 (`encoder_attention` with bf16) where that is faster
    # (`cpu_features.bf16_attention_pays`): a third of the window's operations
    encoder_attention_bf16: bool = False
    # int8's encoder attention on `vpmaddwd` over 12- and 16-bit integers (`encoder_attention` with
    # int16) where the CPU has no AVX-512 (`cpu_features.int16_attention_pays`)
    encoder_attention_int16: bool = False
    # AMX tiles for int8's `packed_linear_int8` and its bfloat16 encoder attention (`cpu_features.amx_permitted`)
    amx_tiles: bool = False
    # greedy steps per call of the token run graph (`decoder.build_token_run_graph`); 1: no such graph
    steps_per_call: int = 1
    # a run's steps pick their tokens from `vocab_draft_int4`'s logits (a 4-bit pass over the rows
    # of the clusters nearest the state, a tenth of the float16 rows' bytes), and the run checks
    # every pick against the exact projection of all its steps at once: the float32 plan's tokens, a
    # step reading far fewer bytes
    drafts_runs: bool = False
    # the drafts also run the layers' int8 copies over int8 cross K/V, and the check runs the exact
    # layers over the run's tokens at once (`decoder.exact_run_states`); else the drafts' layers are
    # the exact ones and the check projects their states (docs/design.md#drafted-runs)
    int8_drafts: bool = False

    @property
    def runs_wait_for_their_graph(self) -> bool:
        """Whether greedy runs wait until `compile_rest` has readied the token run graph (the CPU
        kernels', whose compile must not fall on a transcription) rather than load it on first use."""
        return self.name == "cpu-kernels"

    @property
    def layer_norm(self):
        """The graphs' layer norm, (weights, prefix, x) -> x: `layers.layer_norm_kernel` where the
        plan says so, MAX's op elsewhere."""
        return layer_norm_kernel if self.layer_norm_kernel else layer_norm

    @property
    def greedy_choice(self):
        """The step graphs' greedy choice, (logits, suppress, timestamp_begin) -> (tokens, log
        probabilities): `layers.greedy_choice` with the step kernels, MAX's ops elsewhere."""
        return greedy_choice if self.step_kernels else greedy_choice_ops

    def describe(self) -> str:
        """One line for people: the plan and what it runs."""
        weights = "int8" if self.int8 else "float16-stored"
        packed = "int8 " if self.int8 else "bf16 " if self.bf16 else ""
        attention = (
            "bf16 encoder attention"
            if self.encoder_attention_bf16
            else "int16 encoder attention"
            if self.encoder_attention_int16
            else "encoder attention"
        )
        parts = {
            "layer norms": self.layer_norm_kernel,
            "conv stem": self.conv_stem_kernel,
            f"{packed}encoder linears": self.encoder_linear_kernel,
            attention: self.encoder_attention_kernel,
            "step attention and token choice": self.step_kernels,
            f"{weights} step linears": self.step_linears_kernel,
            "one-token step graph": self.token_step and self.step_kernels,
        }
        kernels = ", ".join(name for name, used in parts.items() if used) or "none"
        kernels += "; AMX tiles" if self.amx_tiles else ""
        if self.steps_per_call > 1:
            kernels += f"; {self.steps_per_call} greedy steps a call"
            kernels += " once compiled behind" if self.runs_wait_for_their_graph else ""
            drafts = "int8 layers and 4 bits" if self.int8_drafts else "4 bits"
            kernels += f", drafted in {drafts} and checked" if self.drafts_runs else ""
        device = "cpu" if self.device.is_cpu() else "gpu"
        int8 = f"int8 weights{' and cross K/V' if self.cross_int8 else ''}, " if self.int8 else ""
        reduced = int8 or ("bf16 encoder and prompt linears, " if self.bf16 else "")
        return f"{self.name} ({device}, {reduced}{self.dtype.name}); Mojo kernels: {kernels}"


def make_plan(
    w: WeightBank,
    dims: ModelDims,
    kernels: bool = True,
    int8: bool = False,
    bf16: bool = False,
    cpu_bf16: bool = False,
    cpu_int16: bool = False,
    amx: bool = False,
) -> ExecutionPlan:
    """The plan for a model whose weights `w` holds (on w.device, in w.dtype). kernels=False, or any
    device but the CPU, or a dtype but float32, gives the portable plan. int8: the CPU kernels'
    plan with int8 weights, its encoder attention in bfloat16 where `cpu_bf16` (the caller's check:
    `cpu_features.bf16_attention_pays`), else in 12- and 16-bit integers where `cpu_int16`
    (`cpu_features.int16_attention_pays`), its packed linears and that attention on AMX tiles where `amx`
    (`cpu_features.amx_permitted`); bf16: with bfloat16 encoder and prompt linears (ValueError where
    the kernels do not run or the shapes do not fit them; whether the CPU has AVX512_BF16 is the
    caller's to check)."""
    cpu_kernels = kernels and w.device.is_cpu() and w.dtype == DType.float32
    if not cpu_kernels:
        if int8 or bf16:
            raise ValueError(f"{'int8' if int8 else 'bf16'} linears need the CPU kernels, in float32 on the CPU")
        return ExecutionPlan(
            "portable", w.device, w.dtype, False, False, False, False, token_step=True, steps_per_call=steps_per_call()
        )
    d_audio, d_text = dims.n_audio_state, dims.n_text_state
    head_dim = d_text // dims.n_text_head
    encoder_linear = all(map(packed_linear_fits, (d_audio, 3 * d_audio, 4 * d_audio, 2 * d_text)))
    step = few_row_attention_fits(head_dim, max(dims.n_text_ctx, dims.n_audio_ctx))
    step_linears = step and few_row_linear_fits(d_text) and few_row_linear_fits(4 * d_text)
    if int8 and not (encoder_linear and step_linears and d_audio % 4 == 0 and d_text % 64 == 0):
        raise ValueError(f"int8 weights: the model's widths ({d_audio}, {d_text}) do not fit the int8 kernels")
    if bf16 and not (encoder_linear and step and packed_linear_fits(d_text) and d_audio % 2 == 0 and d_text % 2 == 0):
        raise ValueError(f"bf16 linears: the model's widths ({d_audio}, {d_text}) do not fit the bf16 kernel")
    # float16-stored linears compute the float32 products exactly only when every decoder weight is
    # a float16 number (true of Whisper's published checkpoints)
    step_linears = step_linears and (int8 or w.float16_exact("decoder."))
    attention = encoder_linear and encoder_attention_fits(d_audio, dims.n_audio_head)
    token_step = step_linears and d_text <= 1280 and head_dim % 8 == 0 and dims.n_audio_ctx <= 2048
    # int8's own steps read the 4-bit pass already, so its runs do not draft (docs/design.md#drafted-runs)
    drafts = token_step and not int8 and d_text % 64 == 0 and dims.n_vocab > TEXT_TOKENS  # `vocab_draft_int4`
    return ExecutionPlan(
        name="cpu-kernels",
        device=w.device,
        dtype=w.dtype,
        encoder_linear_kernel=encoder_linear,
        encoder_attention_kernel=attention,
        step_kernels=step,
        step_linears_kernel=step_linears,
        token_step=token_step,
        int8=int8,
        cross_int8=int8 and token_step and head_dim % 16 == 0,  # `attend_int8`'s 16 lanes
        bf16=bf16,
        layer_norm_kernel=d_audio % 8 == 0 and d_text % 8 == 0,
        conv_stem_kernel=encoder_linear and conv_stem_kernel_fits(d_audio),
        encoder_attention_bf16=int8 and cpu_bf16 and attention,
        encoder_attention_int16=int8 and cpu_int16 and not cpu_bf16 and attention,
        amx_tiles=int8 and amx,
        steps_per_call=steps_per_call() if token_step else 1,
        drafts_runs=drafts,
        int8_drafts=drafts and head_dim % 16 == 0,  # `attend_int8`'s 16 lanes
    )


def steps_per_call() -> int:
    """The greedy steps a token run graph takes per call: `MAXWHISPER_STEPS_PER_CALL` where set, else 8
    (the host's work is per call, docs/design.md#several-steps-a-call)."""
    value = os.environ.get("MAXWHISPER_STEPS_PER_CALL", "").strip()
    if not value:
        return 8
    if not value.isdigit() or not 1 <= int(value) <= 64:
        raise ValueError(f"MAXWHISPER_STEPS_PER_CALL must be a whole number from 1 to 64, not {value!r}")
    return int(value)
