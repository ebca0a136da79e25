"""The per-row merge: every batch row carries its own alpha or recipe, and none outlives a call.

peft's LoRA Linear computes `base(x) + lora_B(lora_A(dropout(x))) * scaling`. The LoRA path is linear
in its input, so scaling the input of the dropout slot by a row's alpha scales that row's LoRA term:
W x + alpha * s * B A x, i.e. the weights (1 - alpha) * W_base + alpha * W_ft. We swap each adapter's
dropout module for `RowScaledDropout`, which owns no parameters, so checkpoint names do not change.

A merge recipe (naturelm_core.recipes) scales layer l's projection m by alpha * layers[l] * modules[m]:
the same slot, with one scale per row, layer and projection (`RowMerge.scales`). For a plain alpha
that scale IS the alpha (alpha * 1.0 * 1.0, rounded once to float32), so plain rows compute exactly
what they computed before recipes existed. A spectral recipe also weighs the singular directions of
B A; a forward hook on LoRA A takes those rows' rank-r products through the singular basis
(naturelm_core.spectral), and hands every other row's product back untouched.

The scales live in one `RowAlphas` per model: a preallocated buffer that a call fills for exactly its
own duration (`with row_alphas.applied(merge): ...`), under a lock. Outside a call the LoRA layers
refuse to run, so a forgotten or stale alpha cannot silently leak from one request into the next (the
public code's defect). The static decoder (naturelm_core.static_decoding) keeps its own copy per state.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from peft.tuners.lora import LoraLayer
from torch import Tensor, nn

from naturelm_core.host_copies import to_device
from naturelm_core.recipes import MERGE_MODULES, MergeRecipe
from naturelm_core.spectral import ADAPTER_NAME, SpectralBasis, weigh_directions

_PROJECTION_NAME = re.compile(rf"layers\.(\d+)\.self_attn\.({'|'.join(MERGE_MODULES)})$")


@dataclass(frozen=True)
class RowMerge:
    """What each row of one call is merged by, as tensors on the model's device.

    scales [rows, layers, modules] float32: alpha * layers[l] * modules[m] (MERGE_MODULES order).
    spectra [rows, rank] float32: the spectral weights w (1 on rows without a spectrum), and
    spectral [rows] bool: the rows that have one; both None when no row does.
    """

    scales: Tensor
    spectra: Tensor | None = None
    spectral: Tensor | None = None

    @classmethod
    def from_alphas(cls, alphas: Tensor, num_layers: int, num_modules: int = len(MERGE_MODULES)) -> RowMerge:
        """Plain rows: one alpha per row [rows], the same in every layer and projection."""
        if alphas.dim() != 1:
            raise ValueError(f"alphas must be a 1-D tensor of one value per row, got shape {tuple(alphas.shape)}")
        return cls(alphas.float()[:, None, None].expand(-1, num_layers, num_modules).contiguous())

    @classmethod
    def from_points(
        cls, points: Sequence[float | MergeRecipe], num_layers: int, rank: int, device: torch.device | str
    ) -> RowMerge:
        """The tensors of checked grid points (naturelm_core.alphas.validate_alphas): floats and recipes.

        Each scale is formed in float64 and rounded once; a float's is the float itself.
        """
        multipliers = torch.ones(len(points), num_layers, len(MERGE_MODULES), dtype=torch.float64)
        alphas = torch.tensor([p.alpha if isinstance(p, MergeRecipe) else p for p in points], dtype=torch.float64)
        weights = [p.spectral_weights(rank) if isinstance(p, MergeRecipe) else None for p in points]
        for row, point in enumerate(points):
            if isinstance(point, MergeRecipe):
                layers = torch.tensor(point.layer_multipliers(num_layers), dtype=torch.float64)
                multipliers[row] = layers[:, None] * torch.tensor(point.module_multipliers(), dtype=torch.float64)
        scales = to_device((alphas[:, None, None] * multipliers).float(), device)
        if all(w is None for w in weights):
            return cls(scales)
        spectra = torch.tensor([[1.0] * rank if w is None else w for w in weights], dtype=torch.float32)
        spectral = torch.tensor([w is not None for w in weights])
        return cls(scales, to_device(spectra, device), to_device(spectral, device))

    @property
    def rows(self) -> int:
        return self.scales.shape[0]

    def repeat_rows(self, repeats: int) -> RowMerge:
        """Each row `repeats` times in place (row r -> rows r * repeats ..), as beam search lays out beams."""
        return self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def take(self, rows: slice | Tensor) -> RowMerge:
        return self._map(lambda t: t[rows])

    def _map(self, change) -> RowMerge:
        spectral = self.spectral is not None
        return RowMerge(
            change(self.scales), change(self.spectra) if spectral else None, change(self.spectral) if spectral else None
        )


class RowAlphas:
    """The merge of the call in progress: per-row scales in a buffer reused across calls, and spectra."""

    def __init__(
        self, capacity: int = 64, device: torch.device | str = "cpu", num_layers: int = 1, num_modules: int = 1
    ) -> None:
        self._buffer = torch.zeros(capacity, num_layers, num_modules, dtype=torch.float32, device=device)
        self._rows: int | None = None
        self._spectra: tuple[Tensor, Tensor] | None = None
        self._lock = threading.Lock()
        self._owner: int | None = None

    def __deepcopy__(self, memo: dict) -> RowAlphas:
        """A copied model gets its own, empty alpha state (a lock cannot be copied, and must not be shared)."""
        capacity, num_layers, num_modules = self._buffer.shape
        return RowAlphas(capacity, self._buffer.device, num_layers, num_modules)

    @contextlib.contextmanager
    def applied(self, merge: RowMerge | Tensor) -> Iterator[None]:
        """Install each row's merge (or, given a 1-D tensor, one plain alpha per row) for the duration of a
        forward or generate call, then clear it.

        The lock spans the whole call: a generate runs many forwards that must all see the same merge,
        so a second thread waits rather than interleaving its own rows into them.
        """
        if self._owner == threading.get_ident():
            raise RuntimeError("alphas are already applied by this thread; calls on one model cannot nest")
        capacity, num_layers, num_modules = self._buffer.shape
        if isinstance(merge, Tensor):
            merge = RowMerge.from_alphas(merge, num_layers, num_modules)
        if merge.scales.shape[1:] != (num_layers, num_modules):
            shape = tuple(merge.scales.shape)
            raise ValueError(f"scales of shape {shape} for a model of {num_layers} layers x {num_modules} modules")
        with self._lock:
            self._owner = threading.get_ident()
            try:
                rows = merge.rows
                if rows > capacity or self._buffer.device != merge.scales.device:
                    self._buffer = torch.zeros(max(rows, capacity), num_layers, num_modules, device=merge.scales.device)
                self._buffer[:rows].copy_(merge.scales)
                self._rows = rows
                self._spectra = None if merge.spectral is None else (merge.spectra, merge.spectral)
                yield
            finally:
                self._rows = None
                self._spectra = None
                self._owner = None

    def scale_rows(self, x: Tensor, layer: int = 0, module: int = 0) -> Tensor:
        """x * its row's scale at (layer, module), formed in float32 so that bf16 inputs lose nothing extra."""
        if self._rows is None:
            raise RuntimeError(
                "the LoRA layers ran without an alpha: run the LLM inside `RowAlphas.applied(...)` "
                "(NatureLM.generate does this), never with an alpha left over from another call"
            )
        if x.shape[0] != self._rows:
            raise RuntimeError(f"LoRA input has {x.shape[0]} rows but {self._rows} alphas were applied")
        scales = self._buffer[: self._rows, layer, module].view(-1, *([1] * (x.dim() - 1)))
        return (x * scales).to(x.dtype)

    def weigh_spectra(self, low_rank: Tensor, basis: SpectralBasis) -> Tensor:
        """The rank-r products A x of the call's rows, those of spectral rows weighed in the singular basis."""
        if self._spectra is None:
            return low_rank
        spectra, spectral = self._spectra
        into, out_of = basis.maps()
        broadcast = (-1, *([1] * (low_rank.dim() - 2)))
        weighted = weigh_directions(low_rank, spectra.view(*broadcast, spectra.shape[-1]), into, out_of)
        return torch.where(spectral.view(*broadcast, 1), weighted.to(low_rank.dtype), low_rank)


class RowScaledDropout(nn.Module):
    """Takes the place of peft's `lora_dropout` in the LoRA of layer `layer`, projection `module`: dropout as
    configured, then each row times its scale; and, hooked onto LoRA A, each spectral row's weighting.

    It holds the projection's `SpectralBasis` (the static decoder reads it here too), so the basis is
    computed once per projection whichever path asks first.
    """

    def __init__(self, row_alphas: RowAlphas, dropout: float, layer: int, module: int, lora_layer: LoraLayer) -> None:
        super().__init__()
        self.row_alphas = row_alphas
        self.dropout = dropout
        self.layer = layer
        self.module = module
        self.basis = SpectralBasis(lora_layer)
        lora_layer.lora_A[ADAPTER_NAME].register_forward_hook(self.weigh_spectra)

    def forward(self, x: Tensor) -> Tensor:
        x = nn.functional.dropout(x, self.dropout, self.training)
        return self.row_alphas.scale_rows(x, self.layer, self.module)

    def weigh_spectra(self, lora_a: nn.Module, inputs: tuple[Tensor, ...], low_rank: Tensor) -> Tensor:
        """Forward hook of LoRA A: its output, with spectral rows' products weighed (`RowAlphas.weigh_spectra`)."""
        return self.row_alphas.weigh_spectra(low_rank, self.basis)

    def extra_repr(self) -> str:
        return f"p={self.dropout}, scaled per row at layer {self.layer}, {MERGE_MODULES[self.module]}"


def install_row_alphas(model: nn.Module, dropout: float, capacity: int = 64) -> RowAlphas:
    """Route every LoRA adapter of `model` (q/k/v/o of each decoder layer) through one shared `RowAlphas`."""
    device = next(model.parameters()).device
    adapted = [
        (module, _projection(name))
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer) and ADAPTER_NAME in module.lora_dropout
    ]
    if not adapted:
        raise ValueError("the model has no LoRA adapter named 'default' to scale per row")
    num_layers = 1 + max(layer for _, (layer, _) in adapted)
    row_alphas = RowAlphas(capacity, device, num_layers, len(MERGE_MODULES))
    for module, (layer, projection) in adapted:
        module.lora_dropout[ADAPTER_NAME] = RowScaledDropout(row_alphas, dropout, layer, projection, module)
    return row_alphas


def _projection(name: str) -> tuple[int, int]:
    """(layer, index in MERGE_MODULES) of a LoRA projection, from its module name."""
    match = _PROJECTION_NAME.search(name)
    if match is None:
        raise ValueError(f"LoRA on {name!r}: per-row merges cover {', '.join(MERGE_MODULES)} of decoder layers only")
    return int(match.group(1)), MERGE_MODULES.index(match.group(2))
