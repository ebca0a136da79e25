"""Prefill and decode from a preallocated KV cache, replayed on CUDA as captured graphs: the GPU fast path.

Why: one decode step of Llama-3.1-8B reads 15 GB of weights, about 5 ms on an H100, but eager
PyTorch spends 35-50 ms launching its ~2,000 small kernels from Python. A CUDA graph replays all of
them with one launch. A graph freezes shapes and memory addresses, so everything a step reads lives
in buffers allocated once per batch shape (`DecodeState`): the KV cache, the attention mask, each
item's position, the input tokens and, crucially, each item's alpha. Changing alpha is a copy into
that buffer: the same graph serves every alpha and every mix of alphas, with no weight writes and
no recompilation.

The forward pass is Llama's decoder written out (as in transformers' modeling_llama.py) over the
model's own weights, with the LoRA term computed as NatureLM's per-row path computes it
(`RowScaledDropout`): B(A(x * alpha)) * s. One function serves the prompt (all positions, causal)
and the decode steps. On the CPU it runs eagerly, which is how the tests prove it computes what
transformers computes.

Merge recipes (naturelm_core.recipes) ride in the same buffers: a state holds one scale per item,
layer and rank column (alpha * layers[l] * modules[m]; a plain alpha's is the alpha), applied to the
rank-r products as the alpha always was, by one multiply. A batch with a spectral row runs a second
variant of the graphs, captured the first time a state meets one: each projection's rank-r product
also goes through its singular basis (naturelm_core.spectral) at the spectral rows' weights, zero on
the other rows, whose numbers are therefore exactly those of the plain variant. Changing recipes
only changes buffer contents: no graph is captured again and no weight is written.

The beams of one item share its prompt, so the cache holds each item's prompt once (left-padded to
`prompt_capacity` columns), then its beams' generated tokens interleaved: column
`prompt_capacity + t * beams + b` holds the token row b generated at step t. A decode step is then a
pass over `beams` tokens per item, each seeing the prompt and the generated columns of its own history,
a per-item mask (`DecodeState.ancestry`) that beam search's reorder gathers instead of moving keys and
values: at the sweep batch (176 items x 2 beams) attention reads each prompt once instead of once per
beam (74 -> 53 µs per layer, benchmarks/decode_parts.py), and a prompt is prefilled once per item.
The attention window grows in blocks of `window_block` generated tokens (one graph per window), so
early steps of a long generation do not read columns that are still empty. Small prompt batches
(interactive requests) are prefilled by a graph too; large ones (sweeps, compute-bound) eagerly, over
the batch's own length.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
from collections import OrderedDict
from collections.abc import Callable

import torch
from peft.tuners.lora import LoraLayer
from torch import Tensor, nn
from transformers import PreTrainedModel

from naturelm_core import decode_attention, low_rank, rmsnorm, rotary_store, swiglu
from naturelm_core.alpha import ADAPTER_NAME, RowMerge, RowScaledDropout
from naturelm_core.prompting import PaddedBatch
from naturelm_core.recipes import MERGE_MODULES
from naturelm_core.spectral import SpectralBasis

PROMPT_BLOCK = 16  # prompt capacity is rounded up to this, so prompts of similar length share a graph
WINDOW_BLOCK = 16  # attention window granularity, in generated tokens (one graph per window)
MAX_STATES = 4  # batch shapes kept with their buffers and graphs; the least recently used is dropped
MAX_MET_SHAPES = 64  # batch shapes remembered as met once (StaticDecoding._key_for)
SMALL_PREFILL_TOKENS = 1024  # prompt batches up to items x capacity tokens are prefilled by a graph
# An eager prefill copies its items' shared first tokens (PaddedBatch.shared_prefix) from an item of the same merge
# when that spares at least this many tokens: below it, the host-side grouping costs more than it saves.
SHARED_PREFIX_TOKENS = 512
PAUSE_PREFILL_TOKENS = 4096  # a prefill that may pause for a waiting user does so after about this many tokens


class StaticDecodingUnsupported(RuntimeError):
    """The model has a layer the static step does not implement (merged or variant LoRA, training mode)."""


def row_capacity(rows: int) -> int:
    """Rows a state is built for: powers of two up to 32, then multiples of 32, so few graphs serve all batches."""
    if rows <= 32:
        return 1 << (rows - 1).bit_length()
    return 32 * math.ceil(rows / 32)


def item_capacity(items: int, beams: int) -> int:
    """Items a state is built for: enough for `row_capacity` of the decoded rows, and no more."""
    return math.ceil(row_capacity(items * beams) / beams)


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

    def attention_inputs(self, x: Tensor, scales: Tensor, spectral_scales: Tensor | None, fused: bool) -> Tensor:
        """[q | k | v] with their LoRA terms: base(x) + B((A x) * scale) * s, LoRA B added inside the product.

        NatureLM's eager path scales the input, B(A(x * alpha)): the same linear map; the scale is applied
        here to the rank-r product instead, a tiny kernel instead of a full-width one. `scales` [items, 1,
        rank columns] (see `DecodeState`); `spectral_scales` likewise for spectral rows, None when the
        batch has none; `fused`: scaled by naturelm_core.low_rank's kernel.
        """
        projected = nn.functional.linear(x, self.qkv)
        width, rank = self.lora_b_qkv.shape
        spectral = None if spectral_scales is None else spectral_scales[..., :rank]
        scaled = low_rank.scale_rows(
            projected[:, width:],
            scales[..., :rank],
            spectral,
            self.into_qkv,
            self.out_of_qkv,
            self.scaling_qkv,
            fused,
            self.rank_block_qkv,
        )
        return projected[:, :width].addmm_(scaled, self.lora_b_qkv.t())

    def attention_output(
        self, attended: Tensor, scales: Tensor, spectral_scales: Tensor | None, residual: Tensor, fused: bool
    ) -> Tensor:
        """residual += o(attended) + its LoRA term, in place: an out-of-place sum first copies the residual."""
        rank = self.lora_a_o.shape[0]
        down = nn.functional.linear(attended, self.lora_a_o)
        spectral = None if spectral_scales is None else spectral_scales[..., -rank:]
        scaled = low_rank.scale_rows(
            down, scales[..., -rank:], spectral, self.into_o, self.out_of_o, self.scaling_o, fused
        )
        return residual.addmm_(attended, self.o.t()).addmm_(scaled, self.lora_b_o.t())

    def mlp(self, x: Tensor, residual: Tensor, fused_swiglu: bool) -> Tensor:
        """residual += down(silu(gate(x)) * up(x)), Llama's SwiGLU, in place. (One fused gate/up product
        measured slower at the sweep batch, 172 vs 149 µs per layer, and equal at one row.)"""
        gate, up = nn.functional.linear(x, self.gate), nn.functional.linear(x, self.up)
        return residual.addmm_(swiglu.silu_mul(gate, up, fused_swiglu), self.down.t())


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
    TRITON_KERNELS = ("fused_rotary", "fused_swiglu", "fused_rmsnorm", "fused_decode_attention", "fused_low_rank")

    def __init__(self, llm: PreTrainedModel) -> None:
        if llm.training:
            raise StaticDecodingUnsupported("the static step implements inference only; call .eval() first")
        config = llm.config
        if getattr(config, "hidden_act", "silu") != "silu" or getattr(config, "mlp_bias", False):
            raise StaticDecodingUnsupported("the static step implements Llama's bias-free SwiGLU MLP only")
        self.llm = llm
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
        and positions advance. Logits [items x beams, V]."""
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
        for index, layer in enumerate(self.layers):
            scales = state.scales[chosen, index, None]  # [items, 1, rank columns]: one per item, for all its tokens
            spectral_scales = state.spectral_scales[chosen, index, None] if state.spectral else None
            normed = _rms_norm(layer.input_layernorm, hidden, self.fused_rmsnorm)
            qkv = layer.attention_inputs(normed, scales, spectral_scales, self.fused_low_rank)
            keys, values = state.keys[index, chosen], state.values[index, chosen]
            query = rotary(qkv, keys, values)
            keys, values = keys[:, :, keys_from:keys_to], values[:, :, keys_from:keys_to]
            if fused_attention:
                attended = decode_attention.attention(query, keys, values, visible, fused=True)
            else:
                attended = self._attention(query, keys, values, bias, queries_as_rows)
            hidden = layer.attention_output(attended, scales, spectral_scales, hidden, self.fused_low_rank)
            normed = _rms_norm(layer.post_attention_layernorm, hidden, self.fused_rmsnorm)
            hidden = layer.mlp(normed, hidden, self.fused_swiglu)
        if not every_token:
            hidden = hidden.view(items, length, -1)[:, -1]
        return self._lm_head(_rms_norm(self.norm, hidden, self.fused_rmsnorm), state, first)

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

    def _lm_head(self, hidden: Tensor, state: DecodeState, first: int = 0) -> Tensor:
        """Logits [rows, V] in float32 (at least), in the state's own buffers: every graph of a state
        writes the same memory (a graph's own output would stay allocated for its lifetime: 270 MB per
        attention window at the sweep batch). The product goes to rows padded to 8-aligned columns:
        with 128257 columns (Llama's 128256 plus [PAD]) cuBLAS otherwise falls back to a kernel that
        runs at a seventh of its speed."""
        rows, vocab = hidden.shape[0], self.lm_head.weight.shape[0]
        aligned = vocab - vocab % 8
        logits = state.projected[first : first + rows, :vocab]
        torch.mm(hidden, self.lm_head.weight[:aligned].t(), out=logits[:, :aligned])
        if aligned < vocab:
            torch.mm(hidden, self.lm_head.weight[aligned:].t(), out=logits[:, aligned:])
        if self.lm_head.bias is not None:
            logits += self.lm_head.bias
        return state.logits[first : first + rows].copy_(logits)

    def fingerprint(self) -> tuple[int, ...]:
        """Addresses of every weight: a captured graph is only valid while none of them moved."""
        return tuple(parameter.data_ptr() for parameter in self.llm.parameters())


def _merge_groups(item_merge: RowMerge) -> tuple[Tensor, Tensor]:
    """Each item's group of identical merges [items], and each group's first item [groups], on the host: the
    merges are a few hundred numbers an item (layers x projections, spectral weights), where the state's rank
    columns are 8,192 (torch.unique over those took 63 ms on an H100)."""
    parts = [item_merge.scales.flatten(1)]
    if item_merge.spectral is not None:
        parts += [item_merge.spectra, item_merge.spectral[:, None].float()]
    _, group_of_item = torch.unique(torch.cat(parts, dim=1).cpu(), dim=0, return_inverse=True)
    items = group_of_item.shape[0]
    first = torch.full((int(group_of_item.max()) + 1,), items).scatter_reduce_(
        0, group_of_item, torch.arange(items), "amin"
    )
    return group_of_item, first


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


class DecodeState:
    """Every buffer a forward pass reads or writes, for one shape: (items, beams, prompt capacity, new tokens).

    Column `prompt_capacity + t * beams + b` of an item's cache holds the token row b generated at step t;
    `ancestry[i, b]` marks the columns beam b of item i sees (the prompt, and its history's tokens).
    Each item's merge: `scales` [items, layers, rank columns q | k | v | o], every column of projection m
    at alpha * layers[l] * modules[m], and `spectral_scales` the same times the direction's weight w_i
    for spectral items; each zero on the other kind of item. `spectral`: whether the loaded generation
    has a spectral item (the graph variant it runs).
    """

    def __init__(self, step: LlamaStep, items: int, beams: int, prompt_capacity: int, max_new_tokens: int) -> None:
        weight = step.weight
        device, dtype = weight.device, weight.dtype
        self.items = items
        self.beams = beams
        self.rows = items * beams
        self.prompt_capacity = prompt_capacity
        self.max_new_tokens = max_new_tokens
        self.length = prompt_capacity + max_new_tokens * beams
        shape = (len(step.layers), items, step.num_kv_heads, self.length, step.head_dim)
        # Zeros, not empty: masked columns still meet the values in softmax(.) @ V, and 0 * NaN is NaN.
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        # Prompt columns holding real tokens, and generated columns written so far.
        self.mask = torch.zeros(items, self.length, device=device, dtype=torch.bool)
        column_beam = (torch.arange(self.length, device=device) - prompt_capacity) % beams
        is_prompt = torch.arange(self.length, device=device) < prompt_capacity
        # Which columns beam b's token may see at the start of a generation: the whole prompt, and the columns of
        # beam b. `ancestry` is that per item, and after each reorder the columns of the beam it continues.
        self.own_beam = is_prompt[None] | (column_beam[None] == torch.arange(beams, device=device)[:, None])
        self.ancestry = self.own_beam.expand(items, -1, -1).clone()  # [items, beams, length]
        self.positions = torch.zeros(items, device=device, dtype=torch.long)
        self.columns = prompt_capacity + torch.arange(beams, device=device)
        self.tokens = torch.zeros(self.rows, device=device, dtype=torch.long)
        self.ranks = step.lora_ranks
        self.scales = torch.zeros(items, len(step.layers), sum(self.ranks), device=device, dtype=torch.float32)
        self.spectral_scales = torch.zeros_like(self.scales)
        self.spectral = False
        vocab = step.lm_head.weight.shape[0]
        self.projected = torch.empty(self.rows, vocab - vocab % 8 + 8, device=device, dtype=dtype)
        self.logits = torch.empty(self.rows, vocab, device=device, dtype=torch.promote_types(dtype, torch.float32))
        self.prompt_embeds = torch.zeros(items, prompt_capacity, weight.shape[1], device=device, dtype=dtype)
        self.prompt_positions = torch.zeros(items, prompt_capacity, device=device, dtype=torch.long)
        self.prompt_columns = torch.arange(prompt_capacity, device=device)
        self.causal = torch.ones(prompt_capacity, prompt_capacity, device=device, dtype=torch.bool).tril()
        positions = torch.arange(prompt_capacity + max_new_tokens, device=device)[None]
        cos, sin = step.rotary_emb(weight[:1], positions)
        half = step.head_dim // 2
        self.cos = cos[0]
        self.signed_sin = torch.cat((-sin[0, :, :half], sin[0, :, half:]), dim=-1)

    def windows(self, window_block: int) -> list[int]:
        """The attention windows decode steps use: prompt capacity plus whole blocks of generated tokens."""
        blocks = math.ceil(self.max_new_tokens / window_block)
        return [
            self.prompt_capacity + min(self.max_new_tokens, (b + 1) * window_block) * self.beams for b in range(blocks)
        ]

    def load(self, batch: PaddedBatch, item_merge: RowMerge) -> None:
        """Start a generation: each item's prompt right-aligned in the prompt columns, nothing generated."""
        items, prompt_length = batch.attention_mask.shape
        start = self.prompt_capacity - prompt_length
        self.prompt_embeds[:items, :start] = 0.0
        self.prompt_embeds[:items, start:] = batch.inputs_embeds
        self.mask.zero_()
        self.mask[:items, start : self.prompt_capacity] = batch.attention_mask.bool()
        self.prompt_positions[:items] = 0
        self.prompt_positions[:items, start:] = batch.position_ids
        self.rewind()
        self.positions[:items] = batch.position_ids[:, -1] + 1
        self.tokens.zero_()
        scales, spectral_scales = _rank_columns(item_merge, self.ranks)
        self.scales.zero_()
        self.scales[:items] = scales
        self.spectral_scales.zero_()
        if spectral_scales is not None:
            self.spectral_scales[:items] = spectral_scales
        self.spectral = spectral_scales is not None

    def rewind(self) -> None:
        """Back to the first generated column, as `load` leaves it, without touching the prompts."""
        self.columns.copy_(self.prompt_capacity + torch.arange(self.beams, device=self.columns.device))
        self.positions.zero_()
        self.ancestry.copy_(self.own_beam.expand_as(self.ancestry))

    def reorder(self, rows: Tensor, generated: int) -> None:
        """Row i continues beam rows[i], a beam of its own item: the generated columns that beam sees become row
        i's. Nothing moves in the cache: a beam's history is a set of columns (`ancestry`), gathered here, a few
        bytes per item, where moving the keys and values themselves copied up to 0.5 GB a step at the sweep
        batch. Each beam's next token still goes to its own column, which no other beam's history holds."""
        items = rows.shape[0] // self.beams
        first_row = torch.arange(items, device=rows.device)[:, None] * self.beams
        source_beam = (rows.view(items, self.beams) - first_row)[:, :, None]  # [items, beams, 1]
        stop = self.prompt_capacity + generated * self.beams
        history = self.ancestry[:items, :, self.prompt_capacity : stop]
        history.copy_(torch.gather(history, 1, source_beam.expand_as(history)))


def _rank_columns(merge: RowMerge, ranks: tuple[int, ...]) -> tuple[Tensor, Tensor | None]:
    """Per item and layer, the scale of every rank column (see `DecodeState`): plain items' (a copy of their
    scale, so a plain alpha's numbers are unchanged), and spectral items' (None when there are none)."""
    scales = merge.scales.repeat_interleave(torch.tensor(ranks, device=merge.scales.device), dim=2)
    if merge.spectral is None:
        return scales, None
    weights = torch.cat([merge.spectra[:, :rank] for rank in ranks], dim=1)  # [items, rank columns]
    spectral = merge.spectral[:, None, None]
    return scales.masked_fill(spectral, 0.0), (scales * weights[:, None, :]).masked_fill(~spectral, 0.0)


class _Runner:
    """A state plus how to run it: CUDA graphs replayed on the GPU, the plain forward elsewhere.

    Graphs come in two variants, plain and spectral (`DecodeState.spectral`); each is captured the
    first time the state runs it, and replayed for every later generation, whatever its recipes.
    """

    def __init__(
        self,
        step: LlamaStep,
        state: DecodeState,
        window_block: int,
        use_graphs: bool,
        small_prefill_tokens: int,
        shared_prefix_tokens: int = SHARED_PREFIX_TOKENS,
    ) -> None:
        self.step = step
        self.state = state
        self.windows = state.windows(window_block)
        self.window_block = window_block
        self.use_graphs = use_graphs
        # A small prompt batch is prefilled over the whole capacity by a graph; a large one eagerly.
        self.prefill_by_graph = state.items * state.prompt_capacity <= small_prefill_tokens
        self.shared_prefix_tokens = shared_prefix_tokens
        self.graphs: dict[tuple[int, bool], tuple[torch.cuda.CUDAGraph, Tensor]] = {}  # by (window, spectral)
        self.prefill_graphs: dict[bool, tuple[torch.cuda.CUDAGraph, Tensor]] = {}  # by spectral
        self.captured: set[bool] = set()  # variants whose graphs exist
        self.pool: tuple | None = None  # one memory pool for all of them: their outputs live in the state

    def prepare(self, spectral: bool) -> bool:
        """Set the variant the next generation runs; capture its graphs if it is the first to. True if it did."""
        self.state.spectral = spectral
        if not self.use_graphs or spectral in self.captured:
            return False
        self._capture(prefill=self.prefill_by_graph)
        self.captured.add(spectral)
        return True

    def _capture(self, prefill: bool) -> None:
        """Capture the graphs of the state's variant; should cuDNN attention or our Triton kernels refuse to
        be captured, capture without them (the torch versions compute the same)."""
        while True:
            try:
                self._capture_graphs(prefill)
                return
            except torch.OutOfMemoryError:  # not the kernels' fault: the engine retries with fewer rows
                raise
            except RuntimeError:
                variant = self.state.spectral
                self.graphs = {key: graph for key, graph in self.graphs.items() if key[1] != variant}
                self.prefill_graphs.pop(variant, None)
                if self.step.cudnn_gqa:
                    self.step.cudnn_gqa = False
                elif any(getattr(self.step, name) for name in LlamaStep.TRITON_KERNELS):
                    for name in LlamaStep.TRITON_KERNELS:
                        setattr(self.step, name, False)
                else:
                    raise

    def _capture_graphs(self, prefill: bool) -> None:
        """Warm up on a side stream (library handles, kernel choices), then capture one graph per window
        and, for small batches, one for the prefill. Warm-up mutates the state; every generation reloads it."""
        variant = self.state.spectral
        self.pool = self.pool or torch.cuda.graph_pool_handle()
        self.state.rewind()  # a state captured again (another variant) may sit at its last column: warm-up moves on
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), _attention_kernels():
            if prefill:
                self.step.prefill(self.state)
            for window in self.windows:
                self.step.decode(self.state, window)
        torch.cuda.current_stream().wait_stream(side)
        if prefill:
            self.prefill_graphs[variant] = self._graph(self.pool, lambda: self.step.prefill(self.state))
        for window in self.windows:
            decode = functools.partial(self.step.decode, self.state, window)
            self.graphs[window, variant] = self._graph(self.pool, decode)

    @staticmethod
    def _graph(pool: tuple, run: Callable[[], Tensor]) -> tuple[torch.cuda.CUDAGraph, Tensor]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"), _attention_kernels():
            logits = run()
        return graph, logits

    def prefill(
        self, batch: PaddedBatch, item_merge: RowMerge, between_chunks: Callable[[], None] | None = None
    ) -> Tensor:
        """Load the prompts and run them, once per item; logits [items x beams, V] of each row's first new token.

        With `between_chunks`, a large prefill runs in chunks of about PAUSE_PREFILL_TOKENS tokens and calls
        it between them: a sweep batch's prefill (about 230 ms at 176 items on an H100) is the longest stretch
        a waiting user would otherwise sit through. Each item's prefill is independent of the others'.
        """
        items, prompt_length = batch.attention_mask.shape
        self.state.load(batch, item_merge)
        graph = self.prefill_graphs.get(self.state.spectral)
        if not self.prefill_by_graph:
            chunk = items if between_chunks is None else max(1, PAUSE_PREFILL_TOKENS // prompt_length)
            passes, sources = self._prefill_passes(batch, item_merge)
            with _attention_kernels():  # over the batch's own length: no compute on the capacity's padding
                for begin, end, shared in passes:
                    if shared:
                        self.step.copy_prefix(self.state, sources, begin, shared)
                    for first in range(begin, end, chunk):
                        if first and between_chunks is not None:
                            _catch_up(self.state.logits)  # or the host runs ahead and the pause comes too late
                            between_chunks()
                        count = min(chunk, end - first)
                        self.step.prefill(self.state, items=count, length=prompt_length, first=first, shared=shared)
            logits = self.state.logits[:items]
        elif graph is None:
            logits = self.step.prefill(self.state)[:items]
        else:
            graph[0].replay()
            logits = graph[1][:items]
        return logits.repeat_interleave(self.state.beams, dim=0)

    def _prefill_passes(
        self, batch: PaddedBatch, item_merge: RowMerge
    ) -> tuple[list[tuple[int, int, int]], Tensor | None]:
        """The eager prefill's passes (first item, end, shared tokens) and the items the second pass copies from.

        Items up to the last first-of-its-merge are prefilled whole; every later item takes its shared prompt
        prefix (PaddedBatch.shared_prefix) from the first item of its merge and computes only the rest. A sweep
        batch lists a recording's alphas together, so the first recording's items hold every merge: 8 of each
        later item's 58 prompt tokens are copied, not computed, and no pass is added.
        """
        items, shared = item_merge.rows, batch.shared_prefix
        whole = [(0, items, 0)]
        if items * shared < self.shared_prefix_tokens:
            return whole, None
        group_of_item, first_of_group = _merge_groups(item_merge)
        split = int(first_of_group.max()) + 1
        if (items - split) * shared < max(1, self.shared_prefix_tokens):
            return whole, None
        sources = first_of_group[group_of_item[split:]].to(self.state.keys.device)
        return [(0, split, 0), (split, items, shared)], sources

    def run(self, generated: int) -> Tensor:
        """The decode step that writes generated token number `generated` (0-based) of every beam."""
        window = self.windows[generated // self.window_block]
        graph = self.graphs.get((window, self.state.spectral))
        if graph is None:
            return self.step.decode(self.state, window)
        graph[0].replay()
        return graph[1]


def _catch_up(on: Tensor) -> None:
    """Wait for the device to finish what was queued: a pause point means something only when the host is not
    several chunks ahead of the GPU (work a waiting user's request would queue behind)."""
    if on.is_cuda:
        torch.cuda.current_stream(on.device).synchronize()


def _attention_kernels():
    """Memory-efficient attention (masks, bf16) or the math kernel, both safe to capture (cuDNN is asked
    for explicitly, where `_cudnn_gqa_works` found it)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


class StaticDecoding:
    """Owns the decode states (and their graphs) of one model, a few batch shapes at a time."""

    def __init__(
        self,
        use_graphs: bool | None = None,
        max_states: int = MAX_STATES,
        prompt_block: int = PROMPT_BLOCK,
        window_block: int = WINDOW_BLOCK,
        small_prefill_tokens: int = SMALL_PREFILL_TOKENS,
        shared_prefix_tokens: int = SHARED_PREFIX_TOKENS,
    ) -> None:
        """`use_graphs=None` captures graphs exactly when the model is on CUDA."""
        self.use_graphs = use_graphs
        self.max_states = max_states
        self.prompt_block = prompt_block
        self.window_block = window_block
        self.small_prefill_tokens = small_prefill_tokens
        self.shared_prefix_tokens = shared_prefix_tokens
        # Keyed by (shape, slot): a generation paused for another one of the same shape (the engine answering a
        # user inside a sweep batch) must not have its state reloaded under it, so the second takes slot 1.
        self._runners: OrderedDict[tuple[tuple[int, int, int, int], int], _Runner] = OrderedDict()
        self._in_use: set[tuple[tuple[int, int, int, int], int]] = set()
        self._met: OrderedDict[tuple[int, int, int, int], None] = OrderedDict()  # shapes asked for (see _key_for)
        self._step: LlamaStep | None = None
        self._fingerprint: tuple[int, ...] = ()
        self.captures = 0  # graph sets captured (per state and variant): a benchmark proves alphas cause none

    def __deepcopy__(self, memo: dict) -> StaticDecoding:
        """A copied model starts with no states: graphs point at the original's weights."""
        return StaticDecoding(
            self.use_graphs,
            self.max_states,
            self.prompt_block,
            self.window_block,
            self.small_prefill_tokens,
            self.shared_prefix_tokens,
        )

    @property
    def step(self) -> LlamaStep | None:
        """The model's step as last built (None before the first generation)."""
        return self._step

    @property
    def shapes(self) -> list[tuple[int, int, int, int]]:
        """(item capacity, beams, prompt capacity, new tokens) of the states held, least recently used first."""
        return [shape for shape, _ in self._runners]

    def clear(self) -> None:
        self.drop_states()
        self._step = None

    def drop_states(self) -> None:
        """Forget every batch shape's buffers and graphs; the step (and its fused weight copies) stays."""
        self._runners.clear()
        self._met.clear()

    @torch.no_grad()
    def decoder(
        self,
        llm: PreTrainedModel,
        batch: PaddedBatch,
        row_alphas: RowMerge | Tensor,
        repeats: int,
        max_new_tokens: int,
    ) -> StaticCacheDecoder:
        """A decoder for one generation over `batch` (one row per item), each item repeated `repeats` times.

        `row_alphas` holds each decoded row's merge (item-major, repeated per beam), or one plain alpha
        per row [rows]; the beams of an item share its prompt, hence its merge.
        """
        step = self._llama_step(llm)
        step.refresh()
        items, prompt_length = batch.attention_mask.shape
        rows = items * repeats
        merge = row_alphas if isinstance(row_alphas, RowMerge) else RowMerge.from_alphas(row_alphas, len(step.layers))
        if merge.rows != rows:
            raise ValueError(f"expected {rows} row alphas (items x repeats), got {merge.rows}")
        if merge.spectra is not None and merge.spectra.shape[1] < max(step.lora_ranks):
            raise ValueError(f"{merge.spectra.shape[1]} spectral weights per row for LoRA ranks {step.lora_ranks}")
        prompt_capacity = self.prompt_block * math.ceil(prompt_length / self.prompt_block)
        shape = (item_capacity(items, repeats), repeats, prompt_capacity, max_new_tokens)
        key = self._key_for(shape)
        runner = self._runners.get(key)
        if runner is None:
            while len(self._runners) >= self.max_states:
                self._runners.popitem(last=False)
            use_graphs = step.weight.is_cuda if self.use_graphs is None else self.use_graphs
            state = DecodeState(step, *shape)
            runner = _Runner(
                step, state, self.window_block, use_graphs, self.small_prefill_tokens, self.shared_prefix_tokens
            )
        self.captures += runner.prepare(spectral=merge.spectral is not None)
        self._runners[key] = runner
        self._runners.move_to_end(key)
        self._in_use.add(key)
        return StaticCacheDecoder(
            runner, batch, merge.take(slice(None, None, repeats)), rows, lambda: self._in_use.discard(key)
        )

    def _key_for(self, shape: tuple[int, int, int, int]) -> tuple[tuple[int, int, int, int], int]:
        """The state a generation of `shape` runs in: its own where held; the first time a shape is met, the
        smallest free held state of the same beams, prompt capacity and new tokens with more items, if any.

        Why: a sweep meets one-off batch sizes (its first batch of one recording, a short last one) and a
        state of their own costs its graphs' capture (~0.5 s on an H100, the time of several batches), where
        a held larger state only decodes the padding rows for one generation. A shape met again gets its own.
        """
        own = (shape, next(slot for slot in itertools.count() if (shape, slot) not in self._in_use))
        if own in self._runners or shape in self._met:
            return own
        self._met[shape] = None
        while len(self._met) > MAX_MET_SHAPES:
            self._met.popitem(last=False)
        larger = [
            key for key in self._runners if key not in self._in_use and key[0][1:] == shape[1:] and key[0][0] > shape[0]
        ]
        return min(larger, key=lambda key: key[0][0]) if larger else own

    def _llama_step(self, llm: PreTrainedModel) -> LlamaStep:
        """The step for `llm`, rebuilt (and every graph dropped) when the model or a weight's address changed."""
        if self._step is None or self._step.llm is not llm or self._step.fingerprint() != self._fingerprint:
            self.clear()
            self._step = LlamaStep(llm)
            self._fingerprint = self._step.fingerprint()
        return self._step


class StaticCacheDecoder:
    """The `TokenDecoder` of one generation on a static state; see the module docstring.

    The logits a call returns live in the state and are overwritten by the next call: read them first
    (the search loops do). `reorder` expects beam search's rows: each row continues a beam of its own item.
    """

    def __init__(
        self,
        runner: _Runner,
        batch: PaddedBatch,
        item_merge: RowMerge,
        rows: int,
        release: Callable[[], None] = lambda: None,
    ) -> None:
        self.runner = runner
        self.batch = batch
        self.item_merge = item_merge
        self.rows = rows
        self.generated = 0
        self.between_steps: Callable[[], None] | None = None
        self.release = release  # the state is free for another generation of its shape once this is called

    @torch.no_grad()
    def prefill(self) -> Tensor:
        return self.runner.prefill(self.batch, self.item_merge, self.between_steps)

    @torch.no_grad()
    def step(self, tokens: Tensor) -> Tensor:
        if self.generated >= self.runner.state.max_new_tokens:
            raise RuntimeError(f"the state holds {self.runner.state.max_new_tokens} new tokens; no room for more")
        self.runner.state.tokens[: self.rows].copy_(tokens)
        logits = self.runner.run(self.generated)
        self.generated += 1
        return logits[: self.rows]

    @torch.no_grad()
    def reorder(self, rows: Tensor) -> None:
        self.runner.state.reorder(rows, self.generated)
