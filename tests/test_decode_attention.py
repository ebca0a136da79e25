"""A decode step's attention (naturelm_core.decode_attention): torch everywhere, the Triton kernel on a GPU, and
here in Triton's interpreter.

The static-decoding tests pin the torch path to transformers' Llama on the CPU; `reference` must be that path,
and the kernel must compute what it computes. Triton's interpreter (TRITON_INTERPRET=1, set before Triton is
imported, hence a child process) runs the same kernel on CPU tensors, alone and inside the tiny model's static
decoding, so CI checks both; the GPU test runs on the device.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from naturelm_core import decode_attention, static_decoding
from naturelm_core.decode_attention import fused_kernel_works, reference
from naturelm_core.static_decoding import StaticDecoding
from tests.static_helpers import audio_rows

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["Caption the audio.", "What is the common name for the focal species in the audio?", "Is there a bird?"]


def _case(
    items: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    beams: int,
    window: int,
    dtype: torch.dtype,
    pattern: str = "random",
    device: str = "cpu",
):
    """query [items, heads, beams, d], keys and values [items, kv, window, d] as the state's are (one layer's
    slice of a [layers, capacity, kv, columns, d] cache, its items and columns cut to the window), and visible
    [items, beams, window]: random, or ancestry-like (a left-padded prompt every beam sees, then the generated
    columns of a beam history); the last item is fully masked, as items beyond the loaded batch are."""
    generator = torch.Generator(device=device).manual_seed(items * 1000 + beams * 100 + window)
    capacity, length = items + 2, window + 23
    shape = (3, capacity, kv_heads, length, head_dim)
    keys = torch.randn(shape, generator=generator, device=device, dtype=dtype)[1, :items, :, :window]
    values = torch.randn(shape, generator=generator, device=device, dtype=dtype)[2, :items, :, :window]
    query = torch.randn(items, heads, beams, head_dim, generator=generator, device=device, dtype=dtype)
    if pattern == "random":
        visible = torch.rand(items, beams, window, generator=generator, device=device) < 0.5
        visible[:, :, 0] = True
    else:
        prompt = window // 2
        padding = torch.randint(0, prompt // 2, (items,), generator=generator, device=device)
        columns = torch.arange(window, device=device)
        seen_prompt = (columns[None, :] >= padding[:, None]) & (columns[None, :] < prompt)
        step, column_beam = (columns - prompt).clamp(min=0) // beams, (columns - prompt) % beams
        ancestor = torch.randint(0, beams, (items, beams, window), generator=generator, device=device)  # per step
        generated = (columns >= prompt) & (column_beam == ancestor[:, :, step])  # one column a step
        visible = seen_prompt[:, None, :] | generated
    visible[-1] = False
    return query, keys, values, visible


def test_without_a_gpu_the_fused_kernel_is_not_used(monkeypatch):
    assert not fused_kernel_works(torch.device("cpu"), torch.float32)
    monkeypatch.setattr(decode_attention, "_fused", lambda *case: reference(*case))  # a kernel that would agree
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    assert not fused_kernel_works(torch.device("cpu"), torch.bfloat16, 4, 2, 16)


def test_a_fully_masked_item_averages_the_window_as_the_finite_bias_does():
    query, keys, values, visible = _case(3, 4, 2, 16, 2, 37, torch.float32)
    attended = reference(query, keys, values, visible).view(3, 2, 2, 2, 16)  # [items, beams, kv, groups, d]
    mean = values[-1].mean(dim=1)  # [kv, d]
    torch.testing.assert_close(attended[-1], mean[None, :, None].expand_as(attended[-1]))


def _like_cuda(query, keys, values, visible):
    """`reference` as CUDA's memory-efficient SDPA computes it: the same, except that a row which sees no column is
    0 (its bias, the dtype's lowest value, times log2(e) overflows to -inf there, and a row of zero weights is
    written as 0)."""
    attended = reference(query, keys, values, visible).clone()
    attended.view(query.shape[0], query.shape[2], -1)[~visible.any(-1)] = 0
    return attended


def test_the_check_expects_the_mean_where_a_row_sees_nothing_and_the_reference_elsewhere():
    """`_expected` is `reference` on the CPU (whose math kernel averages a fully masked row) and differs from the
    CUDA-like reference only in the fully masked item, which it sets to the window's mean of its kv head."""
    for beams, window in ((1, 71), (2, 100), (3, 64)):
        case = _case(3, 8, 2, 16, beams, window, torch.float32)
        expected = decode_attention._expected(*case)
        torch.testing.assert_close(expected, reference(*case))
        cuda = _like_cuda(*case)
        live = 2 * beams  # the first two items' rows
        assert torch.equal(expected[:live], cuda[:live])
        assert not cuda[live:].any() and expected[live:].abs().min() > 0


def test_the_check_refuses_a_kernel_wrong_in_a_row_that_sees_something(monkeypatch):
    """The check on the CPU, with stand-ins for the kernel: it passes the reference, and refuses zeros in the item
    that sees nothing (the kernel must average there, as documented) and a window short of its last column."""

    def a_column_short(query, keys, values, visible):
        return reference(query, keys[:, :, :-1], values[:, :, :-1], visible[..., :-1])

    verdicts = {}
    for kernel in (reference, _like_cuda, a_column_short):
        monkeypatch.setattr(decode_attention, "_fused", kernel)
        verdicts[kernel] = decode_attention._disagreement(torch.device("cpu"), torch.float32, 8, 2, 16)
    assert verdicts[reference] is None
    assert verdicts[_like_cuda].startswith("differs from the reference at 1 beams, window 71")
    assert verdicts[a_column_short].startswith("differs from the reference at 1 beams, window 71")


@pytest.fixture(scope="module")
def model(static_tiny_model):
    return static_tiny_model


@pytest.fixture(scope="module")
def rows() -> list[list[torch.Tensor]]:
    return audio_rows(len(PROMPTS), seed=5)


@pytest.mark.parametrize("num_beams", [1, 2, 3])
def test_the_reference_is_the_decode_steps_torch_path(model, rows, num_beams, monkeypatch):
    """The decode step with the fused flag on, the kernel replaced by `reference`, gives the flag-off step's
    logits bit for bit: the reference is today's path, and the step hands it the query, keys, values and
    visibility that path reads."""
    calls = []

    def stand_in(query, keys, values, visible, dependent=False):
        calls.append(query.shape)
        return reference(query, keys, values, visible)

    monkeypatch.setattr(decode_attention, "_fused", stand_in)
    logits = {}
    for fused in (False, True):
        decoding = StaticDecoding(prompt_block=8, window_block=3)
        decoding._llama_step(model.llm).fused_decode_attention = fused
        batch = model.build_inputs(rows, PROMPTS)
        alphas = torch.tensor([0.2, 0.9, 1.7]).repeat_interleave(num_beams)
        decoder = decoding.decoder(model.llm, batch, alphas, num_beams, 7)
        steps = [decoder.prefill().clone()]
        for step in range(6):
            row = torch.arange(len(steps[-1]))
            tokens = steps[-1].argmax(-1) + row % num_beams  # beams fed apart: a beam's columns are its own
            if step == 2 and num_beams > 1:  # a beam reorder: histories cross, ancestry moves
                decoder.reorder(row.view(-1, num_beams).flip(1).flatten())
            steps.append(decoder.step(tokens).clone())
        logits[fused] = steps
    assert len(calls) == 6 * len(model.llm.model.layers)
    for off, on in zip(logits[False], logits[True], strict=True):
        assert torch.equal(off, on)


def test_every_kernel_flag_of_the_step_is_one_the_capture_fallback_turns_off(model):
    """A kernel added to LlamaStep but not to TRITON_KERNELS would stay on through a failed capture, and the
    benchmark would not report it."""
    step = StaticDecoding()._llama_step(model.llm)
    flags = {name for name in vars(step) if name.startswith("fused_") or name == "dependent_launch"}
    assert flags == set(step.TRITON_KERNELS)
    assert set(step.kernels_in_use()) == {"cudnn_gqa", *step.TRITON_KERNELS}


def test_a_failed_capture_turns_the_kernel_off_with_the_others(model, rows, monkeypatch):
    """Should a capture fail on a RuntimeError (a kernel that refuses to be captured), the runner captures
    again without cuDNN, then without every Triton kernel, this one included, before giving up."""
    seen = []

    def refuse(self, prefill):
        step = self.step
        seen.append(
            (step.cudnn_gqa, step.fused_rotary, step.fused_rmsnorm, step.fused_decode_attention, step.fused_low_rank)
        )
        if len(seen) > 3:  # a flag left on would have it retry for ever
            raise torch.OutOfMemoryError("still capturing with a fused kernel on")
        raise RuntimeError("operation not permitted when stream is capturing (simulated)")

    monkeypatch.setattr(static_decoding._Runner, "_capture_graphs", refuse)
    decoding = StaticDecoding(use_graphs=True)
    step = decoding._llama_step(model.llm)
    step.cudnn_gqa = step.fused_rotary = step.fused_swiglu = step.fused_rmsnorm = True
    step.fused_decode_attention = step.fused_low_rank = True
    with pytest.raises(RuntimeError, match="simulated"):
        decoding.decoder(model.llm, model.build_inputs(rows, PROMPTS), torch.zeros(3), 1, 4)
    assert seen == [(True,) * 5, (False,) + (True,) * 4, (False,) * 5]


# Run first in every interpreter child. Triton 3.6's interpreter (the one torch 2.11 bundles) hands a kernel's
# scalar arguments over as one-element arrays, and a tensor's `__index__` (what `range(0, window, BLOCK_N)` calls)
# is `int()` of that array, which numpy 2.4 refuses: "only 0-dimensional arrays can be converted to Python scalars".
# Later Triton squeezes the array first; `.item()` reads one element whatever the array's rank.
_SCALAR_INDEX = """
from triton.runtime import interpreter as _interpreter

if hasattr(_interpreter, "_patch_lang_tensor"):
    _patch_tensor = _interpreter._patch_lang_tensor

    def _index(self):
        return int(self.handle.data.item())

    def _patch_lang_tensor(tensor, *scope):
        _patch_tensor(tensor, *scope)
        if scope:
            scope[0].set_attr(tensor, "__index__", _index)
        else:
            tensor.__index__ = _index

    _interpreter._patch_lang_tensor = _patch_lang_tensor
"""


# A child's tiny model and three rows of audio embeddings: what the kernels' static-decoding tests run.
# Triton's interpreter (3.8) multiplies bf16 tensors in tl.dot as their raw 16-bit patterns: taught here what they
# hold (the pattern in a float32's top half), so the kernel's bf16 products compute on the CPU what they do on a GPU.
BF16_DOTS = """
import numpy as np
import triton.language as tl
from triton.runtime import interpreter as _bf16_interpreter


def _widened(x):
    if x.dtype != tl.bfloat16:
        return x
    return _bf16_interpreter.TensorHandle((x.data.astype(np.uint32) << 16).view(np.float32), tl.float32)


_create_dot = _bf16_interpreter.InterpreterBuilder.create_dot
_bf16_interpreter.InterpreterBuilder.create_dot = lambda self, a, b, d, *rest: _create_dot(
    self, _widened(a), _widened(b), d, *rest
)
"""


TINY_MODEL_IN_CHILD = """
import tempfile
import torch
from naturelm_core.loading import load_model
from naturelm_core.tiny import write_tiny_checkpoint
from tests.test_decode_attention import PROMPTS

model = load_model(str(write_tiny_checkpoint(tempfile.mkdtemp())), device="cpu", dtype="float32")
generator = torch.Generator().manual_seed(11)
rows = [[torch.randn(29, 64, generator=generator)] for _ in PROMPTS]


# The tiny model's static decoding at three alphas, `switch(fused)` turning a kernel on or off in a fresh
# StaticDecoding: the same ids both ways, at each beam count (reorders move each beam's history).
def same_ids_with_the_kernel_on_and_off(switch, beam_counts):
    from naturelm_core import static_decoding

    model.decode_with_static_cache = True
    for beams in beam_counts:
        answers = {}
        for fused in (False, True):
            model.static_decoding = static_decoding.StaticDecoding(prompt_block=8, window_block=4)
            switch(fused)
            answers[fused] = model.generate_ids_from_embeddings(rows, PROMPTS, [0.0, 0.5, 1.0], beams, 10)
        assert answers[True] == answers[False], beams
        assert all(len(ids) > 1 for ids in answers[True])


# Explore-shaped generations (one item, greedy: one row a step) at a plain alpha, a spectral recipe and a layer and
# module recipe, `switch(step, fused)` turning a one-row kernel on or off once the step is built: the same ids.
def same_one_row_ids_with_the_kernel_on_and_off(switch):
    from naturelm_core import static_decoding

    model.decode_with_static_cache = True
    points = [0.5, {"alpha": 0.8, "rank": 2}, {"layers": "linear:0.2:1", "modules": {"k_proj": 0.5}}]
    for prompt, row, point in zip(PROMPTS, rows, points, strict=True):
        answers = {}
        for fused in (False, True):
            model.static_decoding = static_decoding.StaticDecoding(prompt_block=8, window_block=4)
            model.generate_ids_from_embeddings([row], prompt, [0.5], 1, 2)  # builds the step
            switch(model.static_decoding.step, fused)
            answers[fused] = model.generate_ids_from_embeddings([row], prompt, [point], 1, 10)
        assert answers[True] == answers[False], point
        assert len(answers[True][0]) > 1
"""


def _interpret(script: str, prelude: str = "") -> str:
    pytest.importorskip("triton")
    environment = {
        **os.environ,
        "TRITON_INTERPRET": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))),
    }
    done = subprocess.run(
        [sys.executable, "-c", _SCALAR_INDEX + prelude + textwrap.dedent(script)],
        capture_output=True,
        text=True,
        env=environment,
        cwd=ROOT,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_bf16_inputs_are_multiplied_as_bf16_and_float32_inputs_exactly(monkeypatch):
    """The decode step's kernel takes bf16 operands for bf16 inputs (flash attention's numerics, 40.1 against 46.6 µs
    a layer on an H100) and exact float32 products for float32 inputs (the CPU-checked path)."""
    launches = []

    class Launcher:
        def __getitem__(self, grid):
            return lambda *arguments, **options: launches.append(options)

    monkeypatch.setattr(decode_attention, "_kernel", lambda: Launcher())
    for dtype in (torch.bfloat16, torch.float32):
        decode_attention.attention(*_case(2, 4, 2, 16, 2, 9, dtype, "random"), fused=True)
    assert [(options["FLOAT32_DOT"], options["PRECISION"]) for options in launches] == [(False, "tf32"), (True, "ieee")]


def test_the_kernel_in_tritons_interpreter_computes_the_reference():
    out = _interpret(
        """
        import torch
        from naturelm_core.decode_attention import _fused, reference
        from tests.test_decode_attention import _case
        checked = 0
        # Llama's heads and the tiny model's; 1, 2 and 4 beams; windows below one block, the block's own,
        # several blocks and a block overhung; random and ancestry-like visibility
        for heads, kv_heads, head_dim in ((32, 8, 128), (4, 2, 16)):
            for beams, window, pattern in ((1, 71, "random"), (2, 100, "ancestry"), (4, 37, "ancestry"),
                                           (2, 64, "random"), (3, 130, "ancestry")):
                for dtype in (torch.float32, torch.bfloat16):
                    query, keys, values, visible = _case(3, heads, kv_heads, head_dim, beams, window, dtype, pattern)
                    queries = [query, query.transpose(1, 2).contiguous().transpose(1, 2)]  # the unfused rotary's view
                    for query in queries:
                        got = _fused(query, keys, values, visible)
                        expected = reference(query, keys, values, visible)
                        assert got.shape == expected.shape and got.dtype == dtype and got.is_contiguous()
                        assert got.isfinite().all()
                        tolerance = (
                            {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 2e-2}
                        )
                        torch.testing.assert_close(got.float(), expected.float(), **tolerance)
                        checked += 1
        print("ok", checked)
        """,
        prelude=BF16_DOTS,
    )
    assert out.strip() == "ok 40"


def test_the_launch_options_benchmarks_compare_compute_the_same_in_tritons_interpreter():
    """benchmarks/decode_parts.py times other column blocks, warps and pipeline stages: each must compute the
    reference too (the interpreter runs warps and stages alike; the blocks change the online softmax's steps)."""
    out = _interpret(
        """
        import torch
        from naturelm_core.decode_attention import _fused, reference
        from tests.test_decode_attention import _case
        case = _case(2, 32, 8, 128, 2, 100, torch.float32, "ancestry")
        expected = reference(*case)
        for options in ({"block_columns": 32}, {"num_warps": 2, "num_stages": 1}, {"num_warps": 8, "num_stages": 4}):
            torch.testing.assert_close(_fused(*case, **options), expected, atol=1e-5, rtol=1e-5)
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_the_start_up_check_passes_the_kernel_against_cudas_sdpa_in_the_interpreter():
    """The H100's start-up check said "differs from the reference at 1 beams, window 71: max abs 0.361". Its
    cases, run here on the CPU with `reference` replaced by what SDPA computes on CUDA (`_like_cuda`): the old
    comparison of every row fails as it did there, at each of its cases, on the fully masked item alone; the check
    (against `_expected`) passes the kernel, in float32 and bf16."""
    out = _interpret(
        """
        import torch
        from naturelm_core import decode_attention
        from tests.test_decode_attention import _case, _like_cuda

        for beams, window in ((1, 71), (2, 100), (3, 64), (1, 130)):
            case = _case(4, 32, 8, 128, beams, window, torch.bfloat16)
            got = decode_attention._fused(*case).float()
            difference = (got - _like_cuda(*case).float()).abs().view(4, beams, -1)
            assert difference[-1].max() > 0.1, (beams, window)  # the symptom: the item that sees nothing
            assert difference[:-1].max() < 3e-2, (beams, window)
        decode_attention.reference = _like_cuda
        for dtype in (torch.float32, torch.bfloat16):
            assert decode_attention._disagreement(torch.device("cpu"), dtype, 32, 8, 128) is None, dtype
        print("ok")
        """,
        prelude=BF16_DOTS,
    )
    assert out.strip() == "ok"


def test_the_kernels_native_bf16_products_in_a_corrected_interpreter():
    """bf16 operands (the kernel's default for bf16 inputs) in an interpreter whose tl.dot is taught what a bf16
    tensor holds, and the float32 operands benchmarks/decode_parts.py compares them with."""
    out = _interpret(
        """
        import torch
        from naturelm_core.decode_attention import _fused, reference
        from tests.test_decode_attention import _case

        for float32_products in (False, True):
            case = _case(3, 32, 8, 128, 2, 100, torch.bfloat16, "ancestry")
            got = _fused(*case, float32_products=float32_products)
            torch.testing.assert_close(got.float(), reference(*case).float(), atol=3e-2, rtol=2e-2)
        for beams, window, pattern in ((1, 71, "random"), (2, 100, "ancestry"), (4, 37, "ancestry")):
            case = _case(3, 32, 8, 128, beams, window, torch.bfloat16, pattern)
            got = _fused(*case)
            assert got.isfinite().all()
            torch.testing.assert_close(got.float(), reference(*case).float(), atol=3e-2, rtol=2e-2)
        print("ok")
        """,
        prelude=BF16_DOTS,
    )
    assert out.strip() == "ok"


def test_static_decoding_through_the_kernel_generates_the_torch_paths_ids():
    """The tiny model's static decoding with the kernel switched on (in the interpreter) against the same with it
    off: greedy, beams 2 and 3 (reorders move each beam's history), and the kernel is what ran."""
    out = _interpret(
        """
        from naturelm_core import decode_attention
        calls = []
        kernel = decode_attention._fused
        decode_attention._fused = lambda *args, **options: calls.append(1) or kernel(*args, **options)

        def switch(fused):
            model.static_decoding._llama_step(model.llm).fused_decode_attention = fused

        same_ids_with_the_kernel_on_and_off(switch, (1, 2, 3))
        assert calls, "the kernel never ran"
        print("ok", len(calls))
        """,
        prelude=TINY_MODEL_IN_CHILD,
    )
    assert out.strip().startswith("ok")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernel runs on a GPU only")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("items", "beams", "window"), [(1, 1, 80), (176, 2, 104), (64, 4, 208)])
def test_the_fused_kernel_computes_the_reference_on_a_gpu(dtype, items, beams, window):
    assert fused_kernel_works(torch.device("cuda"), dtype)
    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 2e-2}
    for pattern in ("random", "ancestry"):
        case = _case(items + 1, 32, 8, 128, beams, window, dtype, pattern, device="cuda")
        got = decode_attention.attention(*case, fused=True)
        assert got.isfinite().all()
        # the last item sees nothing: CUDA's memory-efficient SDPA gives it zeros, the kernel the window's mean
        torch.testing.assert_close(got.float(), decode_attention._expected(*case).float(), **tolerance)
        live = len(got) - beams
        torch.testing.assert_close(got[:live].float(), reference(*case)[:live].float(), **tolerance)
