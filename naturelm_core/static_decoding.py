"""Prefill and decode from a preallocated KV cache, replayed on CUDA as captured graphs: the GPU fast path.

Why: one decode step of Llama-3.1-8B reads 15 GB of weights, about 5 ms on an H100, but eager
PyTorch spends 35-50 ms launching its ~2,000 small kernels from Python. A CUDA graph replays all of
them with one launch. A graph freezes shapes and memory addresses, so everything a step reads lives
in buffers allocated once per batch shape (`DecodeState`): the KV cache, the attention mask, each
row's position, the input tokens and, crucially, each row's alpha. Changing alpha is a copy into
that buffer: the same graph serves every alpha and every mix of alphas, with no weight writes and
no recompilation.

The forward pass is Llama's decoder written out (as in transformers' modeling_llama.py) over the
model's own weights, with the LoRA term computed as NatureLM's per-row alpha path computes it
(`RowScaledDropout`): B(A(x * alpha)) * s. One function serves the prompt (all positions, causal)
and the decode steps (one token per row). On the CPU it runs eagerly, which is how the tests prove
it computes what transformers computes.

The cache holds the prompt left-padded to `prompt_capacity` columns, then the generated tokens.
A decode step attends over a window of columns that grows in blocks of `window_block` (one graph
per window), so early steps of a long generation do not read columns that are still empty. Small
prompt batches (interactive requests) are prefilled by a graph too, once per beam; large ones
(sweeps, compute-bound) eagerly, once per item, and the cache is then repeated per beam.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

import torch
from peft.tuners.lora import LoraLayer
from torch import Tensor, nn
from transformers import PreTrainedModel

from naturelm_core.alpha import ADAPTER_NAME
from naturelm_core.prompting import PaddedBatch

PROMPT_BLOCK = 16  # prompt capacity is rounded up to this, so prompts of similar length share a graph
WINDOW_BLOCK = 16  # attention window granularity over generated columns (one graph per window)
MAX_STATES = 4  # batch shapes kept with their buffers and graphs; the least recently used is dropped
SMALL_PREFILL_TOKENS = 1024  # prompt batches up to rows x capacity tokens: prefilled per beam, by a graph


class StaticDecodingUnsupported(RuntimeError):
    """The model has a layer the static step does not implement (merged or variant LoRA, training mode)."""


def row_capacity(rows: int) -> int:
    """Rows a state is built for: powers of two up to 32, then multiples of 32, so few graphs serve all batches."""
    if rows <= 32:
        return 1 << (rows - 1).bit_length()
    return 32 * math.ceil(rows / 32)


def _lora_parts(module: nn.Module) -> tuple[nn.Linear, Tensor, Tensor, float]:
    """(base layer, A weight, B weight, scale) of a peft LoRA projection the static path can run."""
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
    return base, lora_a, lora_b, float(module.scaling[ADAPTER_NAME])


class _Layer:
    """One decoder layer's weights (references) plus a fused copy of its q, k and v LoRA A matrices.

    The three A matrices read the same input, so one [3r, H] product replaces three; the copy is
    refreshed before every generation (`refresh`), so weights loaded in place are always seen.
    """

    def __init__(self, layer: nn.Module) -> None:
        attention = layer.self_attn
        self.input_layernorm = layer.input_layernorm
        self.post_attention_layernorm = layer.post_attention_layernorm
        q, k, v, o = (
            _lora_parts(attention.q_proj),
            _lora_parts(attention.k_proj),
            _lora_parts(attention.v_proj),
            _lora_parts(attention.o_proj),
        )
        self.q, self.k, self.v, self.o = q[0].weight, k[0].weight, v[0].weight, o[0].weight
        self.lora_a_qkv = (q[1], k[1], v[1])
        self.fused_a = torch.cat(self.lora_a_qkv)
        self.rank = q[1].shape[0]
        self.lora_b_qkv = (q[2], k[2], v[2])
        self.lora_a_o, self.lora_b_o = o[1], o[2]
        scales = [torch.full((part[1].shape[0],), part[3], device=self.fused_a.device) for part in (q, k, v)]
        self.scaling_qkv = None if {q[3], k[3], v[3]} == {1.0} else torch.cat(scales)  # NatureLM's are all 1
        self.scaling_o = o[3]
        self.gate, self.up, self.down = layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight, layer.mlp.down_proj.weight
        self.act = layer.mlp.act_fn

    def refresh(self) -> None:
        torch.cat(self.lora_a_qkv, out=self.fused_a)

    def attention_inputs(self, x: Tensor, alphas: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v with their LoRA terms: base(x) + B((A x) * alpha) * s, additions inside the products.

        NatureLM's eager path scales the input, B(A(x * alpha)): the same linear map; alpha is applied
        here to the rank-r product instead, which costs two tiny kernels instead of two full-width ones.
        """
        down = _scaled(nn.functional.linear(x, self.fused_a), alphas, self.scaling_qkv)
        outputs = []
        for index, (weight, lora_b) in enumerate(zip((self.q, self.k, self.v), self.lora_b_qkv, strict=True)):
            part = down[:, index * self.rank : (index + 1) * self.rank]
            outputs.append(nn.functional.linear(x, weight).addmm_(part, lora_b.t()))
        return outputs[0], outputs[1], outputs[2]

    def attention_output(self, attended: Tensor, alphas: Tensor, residual: Tensor) -> Tensor:
        """residual + o(attended) + its LoRA term."""
        down = _scaled(nn.functional.linear(attended, self.lora_a_o), alphas, self.scaling_o)
        return torch.addmm(residual, attended, self.o.t()).addmm_(down, self.lora_b_o.t())

    def mlp(self, x: Tensor, residual: Tensor) -> Tensor:
        """residual + down(act(gate(x)) * up(x)), Llama's SwiGLU."""
        hidden = self.act(nn.functional.linear(x, self.gate)) * nn.functional.linear(x, self.up)
        return torch.addmm(residual, hidden, self.down.t())


def _scaled(down: Tensor, alphas: Tensor, scaling: Tensor | float | None) -> Tensor:
    """Each row's rank-r LoRA product times its alpha (in float32, as alphas are) and the LoRA scale."""
    scaled = down * alphas
    if isinstance(scaling, Tensor) or (scaling is not None and scaling != 1.0):
        scaled = scaled * scaling
    return scaled.to(down.dtype)


def _rms_norm(norm: nn.Module, x: Tensor) -> Tensor:
    """Llama's RMSNorm as one fused kernel (transformers' module launches seven)."""
    return nn.functional.rms_norm(x, (x.shape[-1],), norm.weight, norm.variance_epsilon)


class LlamaStep:
    """Llama's weights arranged for prefill and decode steps (references, not copies, but for fused LoRA A).

    Each layer launches about 40 kernels (cuBLAS's split-K reductions included) instead of eager
    transformers' ~70: fused RMSNorm, one LoRA A
    product for q, k and v, alpha applied to the rank-r products, LoRA B and the residuals added inside
    the matrix products, and one attention mask and one rotary table per pass instead of per layer.
    On a GPU a decode step is a chain of small kernels, and each costs microseconds whatever its size.
    """

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
        self.cudnn_gqa = _cudnn_gqa_works(self.weight, self.num_heads, self.num_kv_heads, self.head_dim)

    def refresh(self) -> None:
        """Re-copy what is held as copies (the fused LoRA A), so in-place weight loads are always seen."""
        for layer in self.layers:
            layer.refresh()

    @property
    def weight(self) -> Tensor:
        return self.embed_tokens.weight

    @torch.no_grad()
    def decode(self, state: DecodeState, window: int) -> Tensor:
        """One token per row from `state.tokens`: keys and values written at `state.column`, attention
        over columns [0, window), then column and positions advance. Logits [rows, V]."""
        state.mask.index_fill_(1, state.column, True)
        logits = self._forward(
            state,
            hidden=self.embed_tokens(state.tokens),
            positions=state.positions[:, None],
            columns=state.column,
            visible=state.mask[:, None, :window],
            keys_from=0,
        )
        state.column += 1
        state.positions += 1
        return logits

    @torch.no_grad()
    def prefill(self, state: DecodeState, rows: int | None = None, length: int | None = None) -> Tensor:
        """The prompts of the first `rows` rows, causal over their last `length` prompt columns (default:
        all), keys and values written there. Logits [rows, V] of each row's first new token."""
        rows = state.rows if rows is None else rows
        start = state.prompt_capacity - (state.prompt_capacity if length is None else length)
        return self._forward(
            state,
            hidden=state.prompt_embeds[:rows, start:].flatten(0, 1),
            positions=state.prompt_positions[:rows, start:],
            columns=state.prompt_columns[start:],
            visible=state.mask[:rows, None, start : state.prompt_capacity] & state.causal[start:, start:],
            keys_from=start,
        )

    def _forward(
        self, state: DecodeState, hidden: Tensor, positions: Tensor, columns: Tensor, visible: Tensor, keys_from: int
    ) -> Tensor:
        """The decoder layers over `hidden` [rows x length, H] at `positions` [rows, length], writing keys
        and values to `columns`, attending to columns [keys_from, keys_from + visible's last dimension)
        where `visible` [rows, length, columns] allows it. No host synchronisation: it can be captured."""
        rows, length = positions.shape
        keys_to = keys_from + visible.shape[-1]
        bias = torch.zeros((), dtype=hidden.dtype, device=hidden.device).masked_fill(
            ~visible[:, None], torch.finfo(hidden.dtype).min
        )  # [rows, 1, length, keys]
        if not self.cudnn_gqa:
            groups = self.num_heads // self.num_kv_heads
            bias = bias[:, :, None].expand(-1, -1, groups, -1, -1).flatten(2, 3)
        # Rotary tables tiled over the heads: same-shape products run vectorised, broadcast ones do not.
        cos = state.cos[positions].reshape(rows * length, 1, -1)
        sin = state.signed_sin[positions].reshape(rows * length, 1, -1)
        rotary_q = (cos.expand(-1, self.num_heads, -1).flatten(1), sin.expand(-1, self.num_heads, -1).flatten(1))
        rotary_k = (cos.expand(-1, self.num_kv_heads, -1).flatten(1), sin.expand(-1, self.num_kv_heads, -1).flatten(1))
        alphas = state.alphas[:rows, None].expand(rows, length).reshape(-1, 1)
        for index, layer in enumerate(self.layers):
            query, key, value = layer.attention_inputs(_rms_norm(layer.input_layernorm, hidden), alphas)
            query = _rotate(query, *rotary_q, self.head_dim).view(rows, length, self.num_heads, self.head_dim)
            key = _rotate(key, *rotary_k, self.head_dim).view(rows, length, self.num_kv_heads, self.head_dim)
            value = value.view(rows, length, self.num_kv_heads, self.head_dim)
            keys, values = state.keys[index, :rows], state.values[index, :rows]
            keys.index_copy_(2, columns, key.transpose(1, 2))
            values.index_copy_(2, columns, value.transpose(1, 2))
            attended = self._attention(query, keys[:, :, keys_from:keys_to], values[:, :, keys_from:keys_to], bias)
            hidden = layer.attention_output(attended, alphas, hidden)
            hidden = layer.mlp(_rms_norm(layer.post_attention_layernorm, hidden), hidden)
        logits = self._lm_head(_rms_norm(self.norm, hidden.view(rows, length, -1)[:, -1]))
        return logits.to(torch.promote_types(logits.dtype, torch.float32))

    def _attention(self, query: Tensor, keys: Tensor, values: Tensor, bias: Tensor) -> Tensor:
        """Grouped-query attention of query [rows, length, heads, d]; output [rows x length, heads x d].

        With cuDNN (Hopper), the kernel takes the query heads as they are. Otherwise the query heads
        are laid out kv-head-major, so the same attention is ordinary attention over [rows, kv,
        groups x length, d]: no key is copied per query head, and memory-efficient attention runs it.
        """
        rows, length = query.shape[:2]
        if self.cudnn_gqa:
            with _cudnn_attention():
                attended = nn.functional.scaled_dot_product_attention(
                    query.transpose(1, 2), keys, values, attn_mask=bias, enable_gqa=True
                )
            return attended.transpose(1, 2).reshape(rows * length, -1)
        groups = self.num_heads // self.num_kv_heads
        query = query.view(rows, length, self.num_kv_heads, groups, self.head_dim).permute(0, 2, 3, 1, 4)
        attended = nn.functional.scaled_dot_product_attention(
            query.reshape(rows, self.num_kv_heads, groups * length, self.head_dim), keys, values, attn_mask=bias
        )
        attended = attended.view(rows, self.num_kv_heads, groups, length, self.head_dim).permute(0, 3, 1, 2, 4)
        return attended.reshape(rows * length, -1)

    def _lm_head(self, hidden: Tensor) -> Tensor:
        """The output projection into a buffer whose rows are 8-aligned: with 128257 columns (Llama's
        128256 plus [PAD]) cuBLAS otherwise falls back to a kernel that runs at a seventh of its speed."""
        weight = self.lm_head.weight
        vocab = weight.shape[0]
        aligned = vocab - vocab % 8
        padded = torch.empty(hidden.shape[0], aligned + 8, dtype=hidden.dtype, device=hidden.device)
        logits = padded[:, :vocab]
        torch.mm(hidden, weight[:aligned].t(), out=logits[:, :aligned])
        if aligned < vocab:
            torch.mm(hidden, weight[aligned:].t(), out=logits[:, aligned:])
        if self.lm_head.bias is not None:
            logits += self.lm_head.bias
        return logits

    def fingerprint(self) -> tuple[int, ...]:
        """Addresses of every weight: a captured graph is only valid while none of them moved."""
        return tuple(parameter.data_ptr() for parameter in self.llm.parameters())


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


def _rotate(x: Tensor, cos: Tensor, signed_sin: Tensor, head_dim: int) -> Tensor:
    """Llama's rotary embedding on [N, heads x d]: x * cos + rotate_half(x) * sin, where rotate_half(x) * sin
    is (x's halves swapped) * [-sin_1, sin_2]; the same products, three kernels instead of six."""
    half = head_dim // 2
    heads = x.view(x.shape[0], -1, head_dim)
    swapped = torch.cat((heads[..., half:], heads[..., :half]), dim=-1).view_as(x)
    return torch.addcmul(x * cos, swapped, signed_sin)


class DecodeState:
    """Every buffer a forward pass reads or writes, for one shape: (row capacity, prompt capacity, new tokens)."""

    def __init__(self, step: LlamaStep, rows: int, prompt_capacity: int, max_new_tokens: int) -> None:
        weight = step.weight
        device, dtype = weight.device, weight.dtype
        layers = len(step.layers)
        self.rows = rows
        self.prompt_capacity = prompt_capacity
        self.max_new_tokens = max_new_tokens
        self.length = prompt_capacity + max_new_tokens
        shape = (layers, rows, step.num_kv_heads, self.length, step.head_dim)
        # Zeros, not empty: masked columns still meet the values in softmax(.) @ V, and 0 * NaN is NaN.
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.mask = torch.zeros(rows, self.length, device=device, dtype=torch.bool)
        self.positions = torch.zeros(rows, device=device, dtype=torch.long)
        self.column = torch.full((1,), prompt_capacity, device=device, dtype=torch.long)
        self.tokens = torch.zeros(rows, device=device, dtype=torch.long)
        self.alphas = torch.zeros(rows, device=device, dtype=torch.float32)
        self.prompt_embeds = torch.zeros(rows, prompt_capacity, weight.shape[1], device=device, dtype=dtype)
        self.prompt_positions = torch.zeros(rows, prompt_capacity, device=device, dtype=torch.long)
        self.prompt_columns = torch.arange(prompt_capacity, device=device)
        self.causal = torch.ones(prompt_capacity, prompt_capacity, device=device, dtype=torch.bool).tril()
        positions = torch.arange(self.length, device=device)[None]
        cos, sin = step.rotary_emb(weight[:1], positions)
        half = step.head_dim // 2
        self.cos = cos[0]
        self.signed_sin = torch.cat((-sin[0, :, :half], sin[0, :, half:]), dim=-1)

    def windows(self, window_block: int) -> list[int]:
        """The attention windows decode steps use: prompt capacity plus whole blocks of generated columns."""
        blocks = math.ceil(self.max_new_tokens / window_block)
        return [min(self.length, self.prompt_capacity + (b + 1) * window_block) for b in range(blocks)]

    def load(self, batch: PaddedBatch, alphas: Tensor, repeats: int) -> None:
        """Start a generation: each item's prompt, right-aligned in the prompt columns, `repeats` times.

        With `repeats=1` and item alphas, the state holds one row per item (for an eager prefill that
        `expand` then repeats per beam); otherwise one row per beam, ready for every step.
        """
        items, prompt_length = batch.attention_mask.shape
        rows = items * repeats
        start = self.prompt_capacity - prompt_length
        self.prompt_embeds[:rows, :start] = 0.0
        self.prompt_embeds[:rows, start:] = batch.inputs_embeds.repeat_interleave(repeats, dim=0)
        self.mask.zero_()
        self.mask[:rows, start : self.prompt_capacity] = batch.attention_mask.repeat_interleave(repeats, dim=0).bool()
        self.prompt_positions[:rows] = 0
        self.prompt_positions[:rows, start:] = batch.position_ids.repeat_interleave(repeats, dim=0)
        self.positions.zero_()
        self.positions[:rows] = (batch.position_ids[:, -1] + 1).repeat_interleave(repeats)
        self.column.fill_(self.prompt_capacity)
        self.tokens.zero_()
        self.alphas.zero_()
        self.alphas[:rows] = alphas

    def expand(self, items: int, repeats: int, row_alphas: Tensor) -> None:
        """After a prefill of one row per item: every item's prompt cache, mask and position copied to its beams."""
        rows, prompt = items * repeats, self.prompt_capacity
        for cache in (self.keys, self.values):
            cache[:, :rows, :, :prompt] = cache[:, :items, :, :prompt].repeat_interleave(repeats, dim=1)
        self.mask[:rows, :prompt] = self.mask[:items, :prompt].repeat_interleave(repeats, dim=0)
        self.positions[:rows] = self.positions[:items].repeat_interleave(repeats)
        self.alphas[:rows] = row_alphas

    def reorder(self, rows: Tensor, generated: int) -> None:
        """Row i continues beam rows[i]; only generated columns differ between beams of one item."""
        start, stop = self.prompt_capacity, self.prompt_capacity + generated
        count = rows.shape[0]
        for cache in (self.keys, self.values):
            cache[:, :count, :, start:stop] = cache[:, :count, :, start:stop].index_select(1, rows)


class _Runner:
    """A state plus how to run it: CUDA graphs replayed on the GPU, the plain forward elsewhere."""

    def __init__(
        self, step: LlamaStep, state: DecodeState, window_block: int, use_graphs: bool, small_prefill_tokens: int
    ) -> None:
        self.step = step
        self.state = state
        self.windows = state.windows(window_block)
        self.window_block = window_block
        # A small prompt batch is prefilled for every beam at once (one graph); a large one once per item.
        self.prefill_every_row = state.rows * state.prompt_capacity <= small_prefill_tokens
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, Tensor]] = {}
        self.prefill_graph: tuple[torch.cuda.CUDAGraph, Tensor] | None = None
        if use_graphs:
            self._capture(prefill=self.prefill_every_row)

    def _capture(self, prefill: bool) -> None:
        """Capture the graphs; should cuDNN attention refuse to be captured, capture without it."""
        try:
            self._capture_graphs(prefill)
        except RuntimeError:
            if not self.step.cudnn_gqa:
                raise
            self.step.cudnn_gqa = False
            self.graphs, self.prefill_graph = {}, None
            self._capture_graphs(prefill)

    def _capture_graphs(self, prefill: bool) -> None:
        """Warm up on a side stream (library handles, kernel choices), then capture one graph per window
        and, for small batches, one for the prefill. Warm-up mutates the state; every generation reloads it."""
        pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), _attention_kernels():
            if prefill:
                self.step.prefill(self.state)
            for window in self.windows:
                self.step.decode(self.state, window)
        torch.cuda.current_stream().wait_stream(side)
        if prefill:
            self.prefill_graph = self._graph(pool, lambda: self.step.prefill(self.state))
        for window in self.windows:
            self.graphs[window] = self._graph(pool, lambda window=window: self.step.decode(self.state, window))

    @staticmethod
    def _graph(pool: tuple, run: Callable[[], Tensor]) -> tuple[torch.cuda.CUDAGraph, Tensor]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"), _attention_kernels():
            logits = run()
        return graph, logits

    def prefill(self, batch: PaddedBatch, row_alphas: Tensor, repeats: int) -> Tensor:
        """Load the prompts and run them; logits [items x repeats, V] of each row's first new token."""
        items = batch.attention_mask.shape[0]
        if self.prefill_every_row:
            self.state.load(batch, row_alphas, repeats)
            if self.prefill_graph is None:
                return self.step.prefill(self.state)[: items * repeats]
            graph, logits = self.prefill_graph
            graph.replay()
            return logits[: items * repeats]
        self.state.load(batch, row_alphas[::repeats], 1)  # large batch: once per item, then copied per beam
        with _attention_kernels():  # over the batch's own length: no compute on the capacity's padding
            logits = self.step.prefill(self.state, rows=items, length=batch.attention_mask.shape[1])
        if repeats > 1:
            self.state.expand(items, repeats, row_alphas)
        return logits.repeat_interleave(repeats, dim=0)

    def run(self, generated: int) -> Tensor:
        """The decode step that writes generated token number `generated` (0-based)."""
        window = self.windows[generated // self.window_block]
        if not self.graphs:
            return self.step.decode(self.state, window)
        graph, logits = self.graphs[window]
        graph.replay()
        return logits


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
    ) -> None:
        """`use_graphs=None` captures graphs exactly when the model is on CUDA."""
        self.use_graphs = use_graphs
        self.max_states = max_states
        self.prompt_block = prompt_block
        self.window_block = window_block
        self.small_prefill_tokens = small_prefill_tokens
        self._runners: OrderedDict[tuple[int, int, int], _Runner] = OrderedDict()
        self._step: LlamaStep | None = None
        self._fingerprint: tuple[int, ...] = ()
        self.captures = 0  # states whose graphs were captured: a benchmark proves alphas cause none

    def __deepcopy__(self, memo: dict) -> StaticDecoding:
        """A copied model starts with no states: graphs point at the original's weights."""
        return StaticDecoding(
            self.use_graphs, self.max_states, self.prompt_block, self.window_block, self.small_prefill_tokens
        )

    @property
    def step(self) -> LlamaStep | None:
        """The model's step as last built (None before the first generation)."""
        return self._step

    @property
    def shapes(self) -> list[tuple[int, int, int]]:
        """(row capacity, prompt capacity, new tokens) of the states held, least recently used first."""
        return list(self._runners)

    def clear(self) -> None:
        self._runners.clear()
        self._step = None

    @torch.no_grad()
    def decoder(
        self, llm: PreTrainedModel, batch: PaddedBatch, row_alphas: Tensor, repeats: int, max_new_tokens: int
    ) -> StaticCacheDecoder:
        """A decoder for one generation over `batch` (one row per item), each item repeated `repeats` times.

        `row_alphas` holds one alpha per decoded row (item-major, repeated per beam).
        """
        step = self._llama_step(llm)
        step.refresh()
        items, prompt_length = batch.attention_mask.shape
        rows = items * repeats
        if row_alphas.shape != (rows,):
            raise ValueError(f"expected {rows} row alphas (items x repeats), got shape {tuple(row_alphas.shape)}")
        prompt_capacity = self.prompt_block * math.ceil(prompt_length / self.prompt_block)
        key = (row_capacity(rows), prompt_capacity, max_new_tokens)
        runner = self._runners.get(key)
        if runner is None:
            while len(self._runners) >= self.max_states:
                self._runners.popitem(last=False)
            use_graphs = step.weight.is_cuda if self.use_graphs is None else self.use_graphs
            state = DecodeState(step, *key)
            runner = _Runner(step, state, self.window_block, use_graphs, self.small_prefill_tokens)
            self.captures += bool(runner.graphs)
            self._runners[key] = runner
        self._runners.move_to_end(key)
        return StaticCacheDecoder(runner, batch, row_alphas, repeats)

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

    def __init__(self, runner: _Runner, batch: PaddedBatch, row_alphas: Tensor, repeats: int) -> None:
        self.runner = runner
        self.batch = batch
        self.row_alphas = row_alphas
        self.repeats = repeats
        self.rows = row_alphas.shape[0]
        self.generated = 0

    @torch.no_grad()
    def prefill(self) -> Tensor:
        return self.runner.prefill(self.batch, self.row_alphas, self.repeats)

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
