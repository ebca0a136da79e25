"""Llama's decoder written out for prefill and decode steps from a static KV cache: the GPU fast path's forward.

The forward pass is Llama's decoder written out (as in transformers' modeling_llama.py) over the model's own
weights, with the LoRA term computed as NatureLM's per-row path computes it (`RowScaledDropout`):
B(A(x * alpha)) * s. One function serves the prompt (all positions, causal) and the decode steps. On the CPU it
runs eagerly, which is how the tests prove it computes what transformers computes. It reads and writes only a
state's buffers (naturelm_core.decode_state) and never synchronises with the host, so naturelm_core.static_decoding
can capture it as CUDA graphs. On CUDA, parts of it run as this project's Triton kernels where their start-up
checks pass (`LlamaStep.TRITON_KERNELS`); the torch versions compute the same.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from peft.tuners.lora import LoraLayer
from torch import Tensor, nn
from transformers import PreTrainedModel

from naturelm_core import decode_attention, low_rank, one_row, one_row_lora, rmsnorm, rotary_store, swiglu
from naturelm_core.alpha import ADAPTER_NAME, RowScaledDropout
from naturelm_core.recipes import MERGE_MODULES
from naturelm_core.spectral import SpectralBasis
from naturelm_core.weight_addresses import WeightAddresses

if TYPE_CHECKING:
    from naturelm_core.decode_state import DecodeState


class StaticDecodingUnsupported(RuntimeError):
    """The model has a layer the static step does not implement (merged or variant LoRA, training mode)."""


def _lora_parts(module: nn.Module) -> tuple[nn.Linear, Tensor, Tensor, float, SpectralBasis]:
    """(base layer, A weight, B weight, scale, singular basis) of a peft LoRA projection the static path can run."""
    if not isinstance(module, LoraLayer):
        raise StaticDecodingUnsupported(f"{type(module).__name__} is not a LoRA layer")
    if module.merged or module.disable_adapters or ADAPTER_NAME in getattr(module, "lora_variant", {}):
        raise StaticDecodingUnsupported(f"{type(module).__name__}: merged, disabled or variant LoRA")
    if list(module.active_adapters) != [ADAPTER_NAME]:
        raise StaticDecodingUnsupported(f"only the '{ADAPTER_NAME}' adapter is supported")
    base = module.base_layer
    lora_a, lora_b = module.lora_A[ADAPTER_NAME].weight, module.lora_B[ADAPTER_NAME].weight
    if lora_a.dtype != base.weight.dtype or base.bias is not None:
        raise StaticDecodingUnsupported("LoRA in another dtype than its layer, or a biased projection")
    merge = module.lora_dropout[ADAPTER_NAME]
    if not isinstance(merge, RowScaledDropout):
        raise StaticDecodingUnsupported("LoRA without per-row merges (naturelm_core.alpha.install_row_alphas)")
    return base, lora_a, lora_b, float(module.scaling[ADAPTER_NAME]), merge.basis


class _Layer:
    """One decoder layer's weights (references), plus one fused copy of q, k, v and their LoRA matrices.

    q, k, v and their three LoRA A matrices all read the same input: one [q + k + v + 3r, H] product
    replaces six, and the three B matrices sit block-diagonally in one [q + k + v, 3r] matrix, one
    product instead of three. On Llama-3.1-8B the copy costs 1.6 GB and saves 27 µs per layer and
    decode step at the sweep batch, 18 µs at one row (benchmarks/decode_parts.py). It is re-copied
    whenever a source weight changed in place (its version counter moved), so weights loaded in place
    are always seen, and never otherwise: a generation at a new alpha writes no weight.

    With them, the r x r maps into and out of each projection's singular basis (naturelm_core.spectral),
    block-diagonal for q, k, v like their B: a few hundred kilobytes per layer, read only by spectral rows.
    """

    def __init__(self, layer: nn.Module) -> None:
        attention = layer.self_attn
        self.input_layernorm = layer.input_layernorm
        self.post_attention_layernorm = layer.post_attention_layernorm
        q, k, v, o = (_lora_parts(getattr(attention, name)) for name in MERGE_MODULES)
        self._weights = tuple(part[0].weight for part in (q, k, v))
        self._lora_a = tuple(part[1] for part in (q, k, v))
        self._lora_b = tuple(part[2] for part in (q, k, v))
        self._bases = tuple(part[4] for part in (q, k, v, o))
        self.widths = tuple(weight.shape[0] for weight in self._weights)
        self.ranks = tuple(part[1].shape[0] for part in (q, k, v, o))  # rank columns: [q | k | v | o]
        self.rank_block_qkv = self.ranks[0] if len(set(self.ranks[:3])) == 1 else None  # the maps' diagonal blocks
        weight = self._weights[0]
        rank_qkv = sum(self.ranks[:3])
        self.qkv = torch.empty(sum(self.widths) + rank_qkv, weight.shape[1], dtype=weight.dtype, device=weight.device)
        self.lora_b_qkv = torch.zeros(sum(self.widths), rank_qkv, dtype=weight.dtype, device=weight.device)
        scales = [torch.full((part[1].shape[0],), part[3], device=weight.device) for part in (q, k, v)]
        self.scaling_qkv = None if {q[3], k[3], v[3]} == {1.0} else torch.cat(scales)  # NatureLM's are all 1
        self.o, self.lora_a_o, self.lora_b_o, self.scaling_o = o[0].weight, o[1], o[2], o[3]
        maps = {"dtype": torch.promote_types(weight.dtype, torch.float32), "device": weight.device}
        self.into_qkv, self.out_of_qkv = (torch.zeros(rank_qkv, rank_qkv, **maps) for _ in range(2))
        self.into_o, self.out_of_o = (torch.zeros(self.ranks[3], self.ranks[3], **maps) for _ in range(2))
        self._versions: tuple[int, ...] = ()
        self.refresh()
        self.gate, self.up, self.down = layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight, layer.mlp.down_proj.weight

    @torch.no_grad()
    def refresh(self) -> None:
        """Re-copy the fused matrices and maps, in place (graphs hold their addresses), if a source weight was
        written since the last copy."""
        sources = (*self._weights, *self._lora_a, *self._lora_b, self.lora_a_o, self.lora_b_o)
        versions = tuple(tensor._version for tensor in sources)
        if versions == self._versions:
            return
        torch.cat((*self._weights, *self._lora_a), out=self.qkv)
        row = column = 0
        for lora_b in self._lora_b:
            self.lora_b_qkv[row : row + lora_b.shape[0], column : column + lora_b.shape[1]] = lora_b
            row, column = row + lora_b.shape[0], column + lora_b.shape[1]
        (into_q, out_of_q), (into_k, out_of_k), (into_v, out_of_v), (into_o, out_of_o) = (b.maps() for b in self._bases)
        self.into_qkv.copy_(torch.block_diag(into_q, into_k, into_v))
        self.out_of_qkv.copy_(torch.block_diag(out_of_q, out_of_k, out_of_v))
        self.into_o.copy_(into_o)
        self.out_of_o.copy_(out_of_o)
        self._versions = versions

    def attention_query(
        self,
        hidden: Tensor,
        scales: Tensor,
        spectral_scales: Tensor | None,
        kernels: StepKernels,
        rotary: rotary_store.RotaryStore,
        keys: Tensor,
        values: Tensor,
    ) -> Tensor:
        """Attention's query [items, heads, length, d], with k and v written to `keys` and `values`: `attention_inputs`
        then the rotary store, or at one row both after the product in one kernel (naturelm_core.one_row_lora)."""
        if kernels.one_row_lora and self._rotation_fusable(rotary.head_dim):
            rank = self.lora_b_qkv.shape[1]
            return one_row_lora.add_lora_and_rotate(
                self._projected_qkv(hidden, kernels),
                scales[..., :rank],
                None if spectral_scales is None else spectral_scales[..., :rank],
                self.into_qkv,
                self.out_of_qkv,
                self.lora_b_qkv,
                self.rank_block_qkv,
                rotary,
                keys,
                values,
                True,
                kernels.dependent_launch,
            )
        return rotary(self.attention_inputs(hidden, scales, spectral_scales, kernels), keys, values)

    def _rotation_fusable(self, head_dim: int) -> bool:
        fusable = one_row_lora.rotation_fusable(head_dim, self.lora_b_qkv, self.rank_block_qkv)
        return fusable and low_rank.is_unit_scale(self.scaling_qkv)

    def _projected_qkv(self, hidden: Tensor, kernels: StepKernels) -> Tensor:
        """[q | k | v | their LoRA A products] of the normed residual stream (at one row the norm folded in)."""
        if kernels.one_row:
            return one_row.linear(
                hidden, self.qkv, True, norm=_gain(self.input_layernorm), dependent=kernels.dependent_launch
            )
        return nn.functional.linear(_rms_norm(self.input_layernorm, hidden, kernels.rmsnorm), self.qkv)

    def attention_inputs(
        self, hidden: Tensor, scales: Tensor, spectral_scales: Tensor | None, kernels: StepKernels
    ) -> Tensor:
        """[q | k | v] of the normed residual stream with their LoRA terms: base(x) + B((A x) * scale) * s, LoRA B
        added inside the product.

        NatureLM's eager path scales the input, B(A(x * alpha)): the same linear map; the scale is applied
        here to the rank-r product instead, a tiny kernel instead of a full-width one. `scales` [items, 1,
        rank columns] (see `DecodeState`); `spectral_scales` likewise for spectral rows, None when the
        batch has none. At one row the norm is folded into the product (naturelm_core.one_row) and the LoRA term
        is added by one kernel (naturelm_core.one_row_lora).
        """
        projected = self._projected_qkv(hidden, kernels)
        width, rank = self.lora_b_qkv.shape
        spectral = None if spectral_scales is None else spectral_scales[..., :rank]
        if kernels.one_row_lora:
            return one_row_lora.add_lora(
                projected[:, :width],
                projected[:, width:],
                scales[..., :rank],
                spectral,
                self.into_qkv,
                self.out_of_qkv,
                self.lora_b_qkv,
                self.scaling_qkv,
                True,
                self.rank_block_qkv,
                kernels.dependent_launch,
            )
        scaled = low_rank.scale_rows(
            projected[:, width:],
            scales[..., :rank],
            spectral,
            self.into_qkv,
            self.out_of_qkv,
            self.scaling_qkv,
            kernels.low_rank,
            self.rank_block_qkv,
        )
        return projected[:, :width].addmm_(scaled, self.lora_b_qkv.t())

    def attention_output(
        self, attended: Tensor, scales: Tensor, spectral_scales: Tensor | None, residual: Tensor, kernels: StepKernels
    ) -> Tensor:
        """residual + o(attended) + its LoRA term: in place (an out-of-place sum first copies the residual), or at
        one row in one pass over o and its LoRA A with the residual added to the sums (naturelm_core.one_row), the
        LoRA term added by one kernel (naturelm_core.one_row_lora)."""
        rank = self.lora_a_o.shape[0]
        if kernels.one_row:
            both = one_row.linear(
                attended, self.o, True, second=self.lora_a_o, residual=residual, dependent=kernels.dependent_launch
            )
            summed, down = both[:, :-rank], both[:, -rank:]
        else:
            down = nn.functional.linear(attended, self.lora_a_o)
            summed = residual.addmm_(attended, self.o.t())
        spectral = None if spectral_scales is None else spectral_scales[..., -rank:]
        if kernels.one_row_lora:
            return one_row_lora.add_lora(
                summed,
                down,
                scales[..., -rank:],
                spectral,
                self.into_o,
                self.out_of_o,
                self.lora_b_o,
                self.scaling_o,
                True,
                dependent=kernels.dependent_launch,
            )
        scaled = low_rank.scale_rows(
            down, scales[..., -rank:], spectral, self.into_o, self.out_of_o, self.scaling_o, kernels.low_rank
        )
        return summed.addmm_(scaled, self.lora_b_o.t())

    def mlp(self, hidden: Tensor, kernels: StepKernels) -> Tensor:
        """hidden + down(silu(gate(x)) * up(x)) with x the normed residual stream, Llama's SwiGLU: in place, or at
        one row as two passes, the norm and the gate folded into the first and the residual into the second
        (naturelm_core.one_row). (One fused gate/up product measured slower at the sweep batch, 172 vs 149 µs
        per layer, and equal at one row.)"""
        if kernels.one_row:
            dependent = kernels.dependent_launch
            norm = _gain(self.post_attention_layernorm)
            inner = one_row.gated(hidden, self.gate, self.up, True, norm=norm, dependent=dependent)
            return one_row.linear(inner, self.down, True, residual=hidden, dependent=dependent)
        x = _rms_norm(self.post_attention_layernorm, hidden, kernels.rmsnorm)
        gate, up = nn.functional.linear(x, self.gate), nn.functional.linear(x, self.up)
        return hidden.addmm_(swiglu.silu_mul(gate, up, kernels.swiglu), self.down.t())


@dataclass(frozen=True)
class StepKernels:
    """Which of the project's kernels one pass of the step runs (each on where its start-up check passed)."""

    rmsnorm: bool
    low_rank: bool
    swiglu: bool
    one_row: bool  # a decode step of one row: the products as naturelm_core.one_row's kernels
    one_row_lora: bool  # a decode step of one row: its LoRA terms as naturelm_core.one_row_lora's kernel
    dependent_launch: bool  # a decode step of one row: its Triton kernels as dependents of the one before


def _gain(norm: nn.Module) -> one_row.Norm:
    return norm.weight, norm.variance_epsilon


def _rms_norm(norm: nn.Module, x: Tensor, fused: bool) -> Tensor:
    """Llama's RMSNorm as one kernel (transformers' module launches seven): torch's, or with `fused` this
    project's Triton kernel (naturelm_core.rmsnorm), faster on the one-row calls of a decode step."""
    return rmsnorm.rms_norm(x, norm.weight, norm.variance_epsilon, fused)


class LlamaStep:
    """Llama's weights arranged for prefill and decode steps (references, not copies, but for fused q/k/v).

    On an H100 each layer launches about 18 kernels instead of eager transformers' ~70 (592 per step
    at the sweep batch, lm_head included): fused RMSNorm, one product for q, k, v and their LoRA A,
    one for their LoRA B, alpha applied to the rank-r products, the residuals summed inside the
    products, rotary embedding and the cache write in one Triton kernel, the SwiGLU gate in another,
    and one attention mask per pass instead of per layer. A decode step is a chain of small kernels,
    and each costs microseconds whatever its size.
    """

    # Our Triton kernels, each on where its start-up check passed (the torch version serves elsewhere).
    TRITON_KERNELS = (
        "fused_rotary",
        "fused_swiglu",
        "fused_rmsnorm",
        "fused_decode_attention",
        "fused_low_rank",
        "fused_one_row",
        "fused_one_row_lora",
        "dependent_launch",  # not a kernel: how the one-row step launches its kernels (naturelm_core.dependent_launch)
    )

    def __init__(self, llm: PreTrainedModel) -> None:
        if llm.training:
            raise StaticDecodingUnsupported("the static step implements inference only; call .eval() first")
        config = llm.config
        if getattr(config, "hidden_act", "silu") != "silu" or getattr(config, "mlp_bias", False):
            raise StaticDecodingUnsupported("the static step implements Llama's bias-free SwiGLU MLP only")
        self.llm = llm
        self._addresses = WeightAddresses(llm)
        self.embed_tokens: nn.Embedding = llm.get_input_embeddings()
        self.norm = llm.model.norm
        self.lm_head = llm.lm_head
        self.rotary_emb = llm.model.rotary_emb
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.layers = [_Layer(layer) for layer in llm.model.layers[: config.num_hidden_layers]]
        self.lora_ranks = self.layers[0].ranks
        if any(layer.ranks != self.lora_ranks for layer in self.layers):
            raise StaticDecodingUnsupported("LoRA ranks differ between layers")
        self.cudnn_gqa = _cudnn_gqa_works(self.weight, self.num_heads, self.num_kv_heads, self.head_dim)
        self.fused_rotary = rotary_store.fused_kernel_works(
            self.weight.device, self.weight.dtype, self.num_heads, self.num_kv_heads, self.head_dim
        )
        self.fused_swiglu = swiglu.fused_kernel_works(self.weight.device, self.weight.dtype)
        self.fused_rmsnorm = rmsnorm.fused_kernel_works(self.weight.device, self.weight.dtype)
        self.fused_decode_attention = decode_attention.fused_kernel_works(
            self.weight.device, self.weight.dtype, self.num_heads, self.num_kv_heads, self.head_dim
        )
        self.fused_low_rank = low_rank.fused_kernel_works(self.weight.device, self.weight.dtype)
        self.fused_one_row = one_row.fused_kernel_works(self.weight.device, self.weight.dtype)
        self.fused_one_row_lora = one_row_lora.fused_kernel_works(self.weight.device, self.weight.dtype)
        self.dependent_launch = one_row.dependent_launch_works(self.weight.device, self.weight.dtype)

    def kernels_in_use(self) -> dict[str, bool]:
        """cuDNN's grouped-query attention and each of our Triton kernels: on or off (what a benchmark's figures
        were measured with)."""
        return {name: bool(getattr(self, name)) for name in ("cudnn_gqa", *self.TRITON_KERNELS)}

    def refresh(self) -> None:
        """Re-copy the fused matrices of layers whose weights were loaded in place since the last generation."""
        for layer in self.layers:
            layer.refresh()

    @property
    def weight(self) -> Tensor:
        return self.embed_tokens.weight

    @torch.no_grad()
    def decode(self, state: DecodeState, window: int) -> Tensor:
        """One token per beam from `state.tokens`: keys and values written at `state.columns`, each beam
        attending to the prompt and the columns of its history (`state.ancestry`) below `window`; then columns
        and positions advance. Logits [items x beams, V]: at several rows in the model's dtype (see `_lm_head`)."""
        state.mask.index_fill_(1, state.columns, True)
        logits = self._forward(
            state,
            hidden=self.embed_tokens(state.tokens),
            positions=state.positions[:, None].expand(-1, state.beams),
            columns=state.columns,
            visible=state.mask[:, None, :window] & state.ancestry[:, :, :window],
            keys_from=0,
            every_token=True,
        )
        state.columns += state.beams
        state.positions += 1
        return logits

    @torch.no_grad()
    def prefill(
        self, state: DecodeState, items: int | None = None, length: int | None = None, first: int = 0, shared: int = 0
    ) -> Tensor:
        """The prompts of `items` items from item `first` (default: all), causal over their last `length` prompt
        columns (default: all), keys and values written there. Logits [items, V] of each item's first new token,
        in rows first.. of the state's logits. With `shared`, the first `shared` of those columns already hold
        their keys and values (`copy_prefix`): attended to, not computed."""
        items = state.items - first if items is None else items
        start = state.prompt_capacity - (state.prompt_capacity if length is None else length)
        queries = start + shared
        chosen = slice(first, first + items)
        return self._forward(
            state,
            hidden=state.prompt_embeds[chosen, queries:].flatten(0, 1).clone(),  # summed into in place
            positions=state.prompt_positions[chosen, queries:],
            columns=state.prompt_columns[queries:],
            visible=state.mask[chosen, None, start : state.prompt_capacity] & state.causal[queries:, start:],
            keys_from=start,
            every_token=False,
            first=first,
        )

    @torch.no_grad()
    def copy_prefix(self, state: DecodeState, sources: Tensor, first: int, shared: int) -> None:
        """Items first, first + 1, .. take the keys and values of their first `shared` real prompt tokens from items
        `sources` (already prefilled, of the same merge): the same ids at positions 0..shared-1 under the same
        merge give the same keys and values. Columns are each item's own (a padded item's prompt starts later)."""
        device = sources.device
        targets = torch.arange(first, first + sources.shape[0], device=device)
        starts = (~state.mask[:, : state.prompt_capacity]).sum(dim=1)  # prompts are right-aligned
        offsets = torch.arange(shared, device=device)
        target_columns, source_columns = (starts[items][:, None] + offsets for items in (targets, sources))
        for cache in (state.keys, state.values):
            cache[:, targets[:, None], :, target_columns] = cache[:, sources[:, None], :, source_columns]

    def _forward(
        self,
        state: DecodeState,
        hidden: Tensor,
        positions: Tensor,
        columns: Tensor,
        visible: Tensor,
        keys_from: int,
        every_token: bool,
        first: int = 0,
    ) -> Tensor:
        """The decoder layers over `hidden` [items x length, H] (the residual stream, summed into in place)
        at `positions` [items, length], writing keys and values to `columns`, attending to columns
        [keys_from, keys_from + visible's last dimension) where `visible` [items, length, columns]
        allows it. Logits of every token, or of each item's last, for the items from item `first`. No host
        synchronisation: it can be captured."""
        items, length = positions.shape
        chosen = slice(first, first + items)
        keys_to = keys_from + visible.shape[-1]
        fused_attention = every_token and self.fused_decode_attention  # reads `visible` itself: no bias is built
        bias = None
        if not fused_attention:
            bias = torch.zeros((), dtype=hidden.dtype, device=hidden.device).masked_fill(
                ~visible[:, None], torch.finfo(hidden.dtype).min
            )  # [items, 1, length, keys]
        queries_as_rows = every_token or not self.cudnn_gqa  # see `_attention`
        if queries_as_rows and bias is not None:
            groups = self.num_heads // self.num_kv_heads
            bias = bias[:, :, None].expand(-1, -1, groups, -1, -1).flatten(2, 3)
        rotary = rotary_store.RotaryStore(
            state.cos,
            state.signed_sin,
            positions,
            columns,
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
            self.fused_rotary,
        )
        one_row_step = every_token and hidden.shape[0] == 1  # a decode step of one row: an Explore answer
        kernels = StepKernels(
            rmsnorm=self.fused_rmsnorm,
            low_rank=self.fused_low_rank,
            swiglu=self.fused_swiglu,
            one_row=one_row_step and self.fused_one_row,
            one_row_lora=one_row_step and self.fused_one_row_lora,
            dependent_launch=one_row_step and self.fused_one_row and self.dependent_launch,
        )
        for index, layer in enumerate(self.layers):
            scales = state.scales[chosen, index, None]  # [items, 1, rank columns]: one per item, for all its tokens
            spectral_scales = state.spectral_scales[chosen, index, None] if state.spectral else None
            keys, values = state.keys[index, chosen], state.values[index, chosen]
            query = layer.attention_query(hidden, scales, spectral_scales, kernels, rotary, keys, values)
            keys, values = keys[:, :, keys_from:keys_to], values[:, :, keys_from:keys_to]
            if fused_attention:
                attended = decode_attention.attention(
                    query, keys, values, visible, fused=True, dependent=kernels.dependent_launch
                )
            else:
                attended = self._attention(query, keys, values, bias, queries_as_rows)
            hidden = layer.attention_output(attended, scales, spectral_scales, hidden, kernels)
            hidden = layer.mlp(hidden, kernels)
        if not every_token:
            hidden = hidden.view(items, length, -1)[:, -1]
        return self._lm_head(hidden, state, kernels, first, to_float32=not every_token or one_row_step)

    def _attention(self, query: Tensor, keys: Tensor, values: Tensor, bias: Tensor, queries_as_rows: bool) -> Tensor:
        """Grouped-query attention of query [items, heads, length, d]; output [items x length, heads x d].

        A prompt (many query tokens) runs cuDNN's grouped-query kernel where it works. A decode step
        (a token per beam) takes the query heads of each kv head as query rows instead, so the same
        attention is ordinary attention over [items, kv, groups x length, d], with no key copied per
        query head: at the sweep batch cuDNN's grouped kernel took 193 µs per layer for it, ordinary
        attention 53 µs (cuDNN) or 56 µs (memory-efficient, used where cuDNN is not). Where its check passes,
        `_forward` runs a decode step's attention as this project's Triton kernel instead
        (naturelm_core.decode_attention), which reads the visibility mask itself; this is its torch version.
        """
        items, _, length, _ = query.shape
        if not queries_as_rows:
            with _cudnn_attention():
                attended = nn.functional.scaled_dot_product_attention(
                    query, keys, values, attn_mask=bias, enable_gqa=True
                )
            return attended.transpose(1, 2).reshape(items * length, -1)
        groups = self.num_heads // self.num_kv_heads
        with _cudnn_attention() if self.cudnn_gqa else contextlib.nullcontext():
            attended = nn.functional.scaled_dot_product_attention(
                query.reshape(items, self.num_kv_heads, groups * length, self.head_dim), keys, values, attn_mask=bias
            )
        attended = attended.view(items, self.num_kv_heads, groups, length, self.head_dim).permute(0, 3, 1, 2, 4)
        return attended.reshape(items * length, -1)

    def _lm_head(
        self, hidden: Tensor, state: DecodeState, kernels: StepKernels, first: int, to_float32: bool
    ) -> Tensor:
        """Logits [rows, V] of the residual stream `hidden` (final RMSNorm, then lm_head), in the state's own
        buffers: every graph of a state writes the same memory (a graph's own output would stay allocated for its
        lifetime: 270 MB per attention window at the sweep batch). At one row the norm is folded into the product
        (naturelm_core.one_row). Otherwise the product goes to rows padded to 8-aligned columns: with 128257
        columns (Llama's 128256 plus [PAD]) cuBLAS otherwise falls back to a kernel that runs at a seventh of its
        speed.

        `to_float32`: copied to float32 (at least), as prefills and one-row steps return them; otherwise the
        product's own columns in the model's dtype, which the searches read exactly (a bf16 number is a float32
        one): the copy of a sweep batch's 352 rows took 164-168 µs of a 12.2 ms step (H100 profiles, 2026-12-07).
        """
        rows, vocab = hidden.shape[0], self.lm_head.weight.shape[0]
        if kernels.one_row:
            logits = one_row.linear(
                hidden, self.lm_head.weight, True, norm=_gain(self.norm), dependent=kernels.dependent_launch
            )
        else:
            hidden = _rms_norm(self.norm, hidden, self.fused_rmsnorm)
            aligned = vocab - vocab % 8
            logits = state.projected[first : first + rows, :vocab]
            torch.mm(hidden, self.lm_head.weight[:aligned].t(), out=logits[:, :aligned])
            if aligned < vocab:
                torch.mm(hidden, self.lm_head.weight[aligned:].t(), out=logits[:, aligned:])
        if self.lm_head.bias is not None:
            logits += self.lm_head.bias
        return state.logits[first : first + rows].copy_(logits) if to_float32 else logits

    def fingerprint(self) -> tuple[int, ...]:
        """Addresses of every weight: a captured graph is only valid while none of them moved."""
        return self._addresses.addresses()


def _cudnn_attention():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.CUDNN_ATTENTION])


def _cudnn_gqa_works(weight: Tensor, heads: int, kv_heads: int, head_dim: int) -> bool:
    """Whether cuDNN attention takes grouped queries and a bias on this GPU, and agrees with the math kernel."""
    if not weight.is_cuda:
        return False
    generator = torch.Generator(device=weight.device).manual_seed(0)
    shapes = ((1, heads, 3, head_dim), (1, kv_heads, 16, head_dim), (1, kv_heads, 16, head_dim))
    query, keys, values = (
        torch.randn(s, generator=generator, device=weight.device, dtype=weight.dtype) for s in shapes
    )
    bias = torch.zeros(1, 1, 3, 16, device=weight.device, dtype=weight.dtype)
    bias[..., 10:] = torch.finfo(weight.dtype).min
    try:
        with _cudnn_attention():
            fast = nn.functional.scaled_dot_product_attention(query, keys, values, attn_mask=bias, enable_gqa=True)
    except RuntimeError:
        return False
    exact = nn.functional.scaled_dot_product_attention(
        query.float(), keys.float(), values.float(), attn_mask=bias.float(), enable_gqa=True
    )
    return bool(torch.allclose(fast.float(), exact, atol=2e-2, rtol=2e-2))
