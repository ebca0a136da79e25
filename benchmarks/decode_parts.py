"""The decode step's parts, timed alone on the GPU: the measurements behind its attention layout and fusions.

    python benchmarks/decode_parts.py --out DIR

Each candidate runs `--layers` times (distinct weights per layer, so nothing is served from L2) inside
one CUDA graph, replayed and timed with events: kernel time without Python's launch cost, as the
decode graphs run. Shapes are Llama-3.1-8B's (hidden 4096, 32 query / 8 key-value heads of 128,
MLP 14336, LoRA r=32 on q/k/v/o) at one interactive row and at a sweep batch of 176 items x 2 beams,
with a 58-token prompt (capacity 64) and 20 new tokens.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # naturelm_core, for its Triton kernels

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, MLP, RANK = 4096, 32, 8, 128, 14336, 32
PROMPT, PROMPT_CAPACITY, NEW_TOKENS = 58, 64, 20


def graph_ms(run: Callable[[], Any], repeats: int = 20) -> float:
    """Milliseconds per call of `run`, captured once in a CUDA graph and replayed `repeats` times."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / repeats


def layer_weights(layers: int, *shape: int) -> list[torch.Tensor]:
    """One bf16 weight of `shape` per layer on the GPU: the candidates run over distinct weights, nothing from L2."""
    return [torch.randn(*shape, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(layers)]


def attention_candidates(items: int, beams: int, layers: int) -> dict[str, float]:
    """Decode attention per layer at the last window: per-row caches (today) vs the prompt shared by beams."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    device, dtype = torch.device("cuda"), torch.bfloat16
    rows, groups = items * beams, HEADS // KV_HEADS
    per_row_columns = PROMPT_CAPACITY + NEW_TOKENS
    shared_columns = PROMPT_CAPACITY + beams * NEW_TOKENS
    neg = torch.finfo(dtype).min

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, dtype=dtype)

    # Today: [layers, rows, kv, columns, d], every beam holding its item's prompt.
    keys, values = (
        randn(layers, rows, KV_HEADS, per_row_columns, HEAD_DIM),
        randn(layers, rows, KV_HEADS, per_row_columns, HEAD_DIM),
    )
    query = randn(rows, HEADS, 1, HEAD_DIM)
    bias = torch.zeros(rows, 1, 1, per_row_columns, device=device, dtype=dtype)
    bias[..., : PROMPT_CAPACITY - PROMPT] = neg
    query_rows = randn(rows, KV_HEADS, groups, HEAD_DIM)
    bias_rows = bias.expand(-1, -1, groups, -1)

    # Shared: [layers, items, kv, prompt + beams x new, d]; generated columns time-major, beam-minor.
    shared_keys = randn(layers, items, KV_HEADS, shared_columns, HEAD_DIM)
    shared_values = randn(layers, items, KV_HEADS, shared_columns, HEAD_DIM)
    shared_query = randn(items, KV_HEADS, beams * groups, HEAD_DIM)
    column_beam = torch.arange(NEW_TOKENS * beams, device=device) % beams
    query_beam = torch.arange(beams * groups, device=device) // groups
    visible = torch.ones(items, 1, beams * groups, shared_columns, device=device, dtype=torch.bool)
    visible[..., : PROMPT_CAPACITY - PROMPT] = False
    visible[..., PROMPT_CAPACITY:] = column_beam[None, :] == query_beam[:, None]
    shared_bias = torch.zeros((), device=device, dtype=dtype).masked_fill(~visible, neg)

    def per_layer(function: Callable[[int], Any]) -> Callable[[], None]:
        def run() -> None:
            for layer in range(layers):
                function(layer)

        return run

    def shared(i: int) -> torch.Tensor:
        return F.scaled_dot_product_attention(shared_query, shared_keys[i], shared_values[i], attn_mask=shared_bias)

    candidates: dict[str, tuple[list[SDPBackend], Callable[[int], Any]]] = {
        "per_row_cudnn_gqa": (
            [SDPBackend.CUDNN_ATTENTION],
            lambda i: F.scaled_dot_product_attention(query, keys[i], values[i], attn_mask=bias, enable_gqa=True),
        ),
        "per_row_efficient_groups_as_rows": (
            [SDPBackend.EFFICIENT_ATTENTION],
            lambda i: F.scaled_dot_product_attention(query_rows, keys[i], values[i], attn_mask=bias_rows),
        ),
        "shared_prompt_efficient": ([SDPBackend.EFFICIENT_ATTENTION], shared),
        "shared_prompt_cudnn": ([SDPBackend.CUDNN_ATTENTION], shared),
    }
    result: dict[str, Any] = {}
    for name, (backends, function) in candidates.items():
        try:
            with sdpa_kernel(backends):
                result[name] = graph_ms(per_layer(function)) / layers
        except RuntimeError as error:
            result[name] = f"unavailable: {str(error)[:100]}"
    result.update(triton_attention_candidates(shared_keys, shared_values, beams))
    return result


def triton_attention_candidates(keys: torch.Tensor, values: torch.Tensor, beams: int) -> dict[str, Any]:
    """naturelm_core.decode_attention's kernel over the shared candidates' keys and values [layers, items, kv,
    prompt + beams x new, d], as the decode step calls it: query [items, heads, beams, d] (rotary's layout), each
    beam's boolean visibility [items, beams, columns] (the left padding hidden, the generated columns of its own
    beam seen), no bias; output [items x beams, heads x d], the layout the o projection reads (no permute)."""
    from naturelm_core import decode_attention

    device, dtype = keys.device, keys.dtype
    items, columns = keys.shape[1], keys.shape[3]
    result: dict[str, Any] = {"triton_check": decode_attention.why_not_fused(device, dtype, HEADS, KV_HEADS, HEAD_DIM)}
    query = torch.randn(items, HEADS, beams, HEAD_DIM, device=device, dtype=dtype)
    column_beam = (torch.arange(columns, device=device) - PROMPT_CAPACITY) % beams
    visible = (column_beam[None, :] == torch.arange(beams, device=device)[:, None]).expand(items, -1, -1).clone()
    visible[..., :PROMPT_CAPACITY] = True
    visible[..., : PROMPT_CAPACITY - PROMPT] = False
    variants = {  # the default (bf16 operands, P rounded to bf16); float32 operands; other column blocks and launches
        "shared_prompt_triton": {},
        "shared_prompt_triton_float32_products": {"float32_products": True},
        "shared_prompt_triton_block_128": {"block_columns": 128},
        "shared_prompt_triton_float32_products_block_128": {"float32_products": True, "block_columns": 128},
        "shared_prompt_triton_block_32": {"block_columns": 32},
        "shared_prompt_triton_float32_products_block_32": {"float32_products": True, "block_columns": 32},
        "shared_prompt_triton_warps_2": {"num_warps": 2},
        "shared_prompt_triton_warps_8": {"num_warps": 8},
        "shared_prompt_triton_stages_1": {"num_stages": 1},
        "shared_prompt_triton_stages_4": {"num_stages": 4},
        "shared_prompt_triton_block_32_warps_2": {"block_columns": 32, "num_warps": 2},
    }
    for name, options in variants.items():  # timed whatever the check says: its reason is reported beside

        def run(options: dict = options) -> None:
            for layer in range(len(keys)):
                decode_attention._fused(query, keys[layer], values[layer], visible, **options)

        try:
            result[name] = graph_ms(run) / len(keys)
        except Exception as error:  # a Triton compile error is not a RuntimeError
            result[name] = f"unavailable: {str(error)[:100]}"
    return result


def projection_candidates(rows: int, layers: int) -> dict[str, float]:
    """q/k/v with LoRA, o with its LoRA A, and the MLP's gate/up, as separate products or one fused product
    per layer."""
    device, dtype = torch.device("cuda"), torch.bfloat16
    kv_width = KV_HEADS * HEAD_DIM
    widths = (HIDDEN, kv_width, kv_width)
    x = torch.randn(rows, HIDDEN, device=device, dtype=dtype)
    alphas = torch.rand(rows, 1, device=device)

    # [Wq; Wk; Wv; Aq; Ak; Av], as llama_step holds it
    fused_qkv = layer_weights(layers, sum(widths) + 3 * RANK, HIDDEN)
    lora_a = [weight[sum(widths) :] for weight in fused_qkv]
    lora_b = [[torch.randn(w, RANK, device=device, dtype=dtype) * 0.02 for w in widths] for _ in range(layers)]
    block_b = []
    for parts in lora_b:
        block = torch.zeros(sum(widths), 3 * RANK, device=device, dtype=dtype)
        row = 0
        for index, part in enumerate(parts):
            block[row : row + part.shape[0], index * RANK : (index + 1) * RANK] = part
            row += part.shape[0]
        block_b.append(block)
    gate_up = layer_weights(layers, 2 * MLP, HIDDEN)
    down_proj = layer_weights(layers, HIDDEN, MLP)
    hidden = torch.randn(rows, MLP, device=device, dtype=dtype)

    def down(i: int) -> torch.Tensor:
        return (F.linear(x, lora_a[i]) * alphas).to(dtype)

    def qkv_separate(i: int) -> None:
        low = down(i)
        q, k, v = fused_qkv[i][: sum(widths)].split(widths)
        for index, weight in enumerate((q, k, v)):
            F.linear(x, weight).addmm_(low[:, index * RANK : (index + 1) * RANK], lora_b[i][index].t())

    def qkv_fused(i: int) -> None:
        projected = F.linear(x, fused_qkv[i])
        low = torch.empty(rows, 3 * RANK, device=device, dtype=dtype)
        torch.mul(projected[:, sum(widths) :], alphas, out=low)
        projected[:, : sum(widths)].addmm_(low, block_b[i].t())

    def mlp_separate(i: int) -> None:
        gate, up = gate_up[i].split(MLP)
        F.silu(F.linear(x, gate)) * F.linear(x, up)

    def mlp_fused(i: int) -> None:
        both = F.linear(x, gate_up[i])
        F.silu(both[:, :MLP]) * both[:, MLP:]

    o_with_lora_a = layer_weights(layers, HIDDEN + RANK, HIDDEN)  # [Wo; Ao]
    lora_b_o = layer_weights(layers, HIDDEN, RANK)
    residual = torch.randn(rows, HIDDEN, device=device, dtype=dtype)

    def o_lora_separate(i: int) -> None:  # as llama_step runs it: the residual summed inside o's product
        low = (F.linear(x, o_with_lora_a[i][HIDDEN:]) * alphas).to(dtype)
        residual.addmm_(x, o_with_lora_a[i][:HIDDEN].t()).addmm_(low, lora_b_o[i].t())

    def o_lora_fused(i: int) -> None:  # one product for o and its LoRA A (as for q/k/v), the residual added after
        projected = F.linear(x, o_with_lora_a[i])
        low = (projected[:, HIDDEN:] * alphas).to(dtype)
        residual.add_(projected[:, :HIDDEN]).addmm_(low, lora_b_o[i].t())

    def down_addmm(i: int) -> None:
        torch.addmm(x, hidden, down_proj[i].t())

    def down_then_add(i: int) -> None:
        F.linear(hidden, down_proj[i]).add_(x)

    result = {}
    for name, function in {
        "down_residual_in_product": down_addmm,
        "down_then_residual_add": down_then_add,
        "o_lora_separate": o_lora_separate,
        "o_lora_fused": o_lora_fused,
        "qkv_lora_separate": qkv_separate,
        "qkv_lora_fused": qkv_fused,
        "gate_up_separate": mlp_separate,
        "gate_up_fused": mlp_fused,
    }.items():
        result[name] = graph_ms(lambda f=function: [f(i) for i in range(layers)]) / layers
    return result


def products_by_rows(row_counts: list[int], layers: int) -> dict[str, dict[str, float]]:
    """One layer's matrix products as the decode step runs them, at several row counts: cuBLAS's tile
    shapes make the cost per row depend on how the rows fill the tiles."""
    device, dtype = torch.device("cuda"), torch.bfloat16
    qkv_width = HIDDEN + 2 * KV_HEADS * HEAD_DIM

    qkv, o, gate, up, down = (
        layer_weights(layers, qkv_width + 3 * RANK, HIDDEN),
        layer_weights(layers, HIDDEN, HIDDEN),
        layer_weights(layers, MLP, HIDDEN),
        layer_weights(layers, MLP, HIDDEN),
        layer_weights(layers, HIDDEN, MLP),
    )
    result = {}
    for rows in row_counts:
        x = torch.randn(rows, HIDDEN, device=device, dtype=dtype)
        hidden = torch.randn(rows, MLP, device=device, dtype=dtype)

        def layer(i: int, x: torch.Tensor = x, hidden: torch.Tensor = hidden) -> None:
            F.linear(x, qkv[i])
            torch.addmm(x, x, o[i].t())
            F.linear(x, gate[i])
            F.linear(x, up[i])
            torch.addmm(x, hidden, down[i].t())

        ms = graph_ms(lambda layer=layer: [layer(i) for i in range(layers)]) / layers
        result[str(rows)] = {"ms_per_layer": ms, "us_per_row": 1000 * ms / rows}
    return result


def product_orientations(rows: int, layers: int) -> dict[str, float]:
    """x @ W^T as cuBLAS is asked today, or as (W @ x^T)^T: the same product, another kernel choice."""
    device, dtype = torch.device("cuda"), torch.bfloat16
    result = {}
    shapes = {"o": (HIDDEN, HIDDEN), "gate": (MLP, HIDDEN), "down": (HIDDEN, MLP)}
    for name, (out_features, in_features) in shapes.items():
        weight = [torch.randn(out_features, in_features, device=device, dtype=dtype) for _ in range(layers)]
        x = torch.randn(rows, in_features, device=device, dtype=dtype)
        x_t = x.t().contiguous()
        result[f"{name}_x_wt"] = graph_ms(lambda w=weight, x=x: [F.linear(x, w[i]) for i in range(layers)]) / layers
        result[f"{name}_w_xt"] = graph_ms(lambda w=weight, x=x: [torch.mm(w[i], x.t()) for i in range(layers)]) / layers
        result[f"{name}_w_xt_contiguous"] = (
            graph_ms(lambda w=weight, x=x_t: [torch.mm(w[i], x) for i in range(layers)]) / layers
        )
    return result


def products_by_blas_library(rows: int, layers: int) -> dict[str, Any]:
    """Each product of a layer at `rows` rows under cuBLAS and under cuBLASLt
    (torch.backends.cuda.preferred_blas_library): another library's heuristics may pick other kernels for the
    step's products, which run at 63-76% of the card's bf16 rate at 352 rows (2026-12-07 profiles). Products as
    llama_step runs them: q | k | v with their LoRA A, o and down summed into the residual, gate."""
    device, dtype = torch.device("cuda"), torch.bfloat16
    qkv_width = HIDDEN + 2 * KV_HEADS * HEAD_DIM + 3 * RANK

    qkv, o, gate, down = (
        layer_weights(layers, qkv_width, HIDDEN),
        layer_weights(layers, HIDDEN, HIDDEN),
        layer_weights(layers, MLP, HIDDEN),
        layer_weights(layers, HIDDEN, MLP),
    )
    x = torch.randn(rows, HIDDEN, device=device, dtype=dtype)
    inner = torch.randn(rows, MLP, device=device, dtype=dtype)
    products = {
        "qkv": (lambda: [F.linear(x, w) for w in qkv], qkv_width * HIDDEN),
        "o_into_residual": (lambda: [x.addmm_(x, w.t()) for w in o], HIDDEN * HIDDEN),
        "gate": (lambda: [F.linear(x, w) for w in gate], MLP * HIDDEN),
        "down_into_residual": (lambda: [x.addmm_(inner, w.t()) for w in down], HIDDEN * MLP),
    }
    chosen = torch.backends.cuda.preferred_blas_library()
    result: dict[str, Any] = {"default": str(chosen)}
    try:
        for library in ("cublas", "cublaslt"):
            torch.backends.cuda.preferred_blas_library(library)
            for name, (run, weight_elements) in products.items():
                try:
                    us = 1000 * graph_ms(run) / layers
                except RuntimeError as error:
                    result[f"{library}.{name}"] = f"unavailable: {str(error)[:100]}"
                    continue
                result[f"{library}.{name}_us"] = us
                result[f"{library}.{name}_tflops"] = 2 * rows * weight_elements / us / 1e6
    finally:
        torch.backends.cuda.preferred_blas_library(chosen)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--items", type=int, default=176)
    parser.add_argument("--beams", type=int, default=2)
    parser.add_argument("--layers", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    results["attention_ms_per_layer"] = attention_candidates(args.items, args.beams, args.layers)
    for rows in (1, args.items * args.beams):
        results[f"projections_ms_per_layer_rows_{rows}"] = projection_candidates(rows, args.layers)
    results["product_orientations"] = product_orientations(args.items * args.beams, args.layers)
    results["products_by_rows"] = products_by_rows([256, 288, 320, 336, 352, 384, 416, 448, 512], args.layers)
    # Where a library would be chosen per state, its rows decide: Explore's two beams, a small batch of files, a greedy
    # and a beam-2 sweep batch, and a 352-item beam-2 batch (cuBLASLt was 1.7% faster at 352 rows, 2026-12-07 22:49Z).
    results["products_by_blas_library"] = {
        rows: products_by_blas_library(rows, args.layers) for rows in (2, 32, args.items, args.items * args.beams, 704)
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode_parts.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
