"""The singular basis of one LoRA projection, as two r x r maps on its rank-r product: spectral recipes cheaply.

A spectral recipe weighs the singular directions of B A = U diag(sigma) V^T (A [r, in], B [out, r]):
a row computes B A's share U diag(w * sigma) V^T. Rotating A and B themselves into that basis would
cost a second pair of full-width products per projection. It is not needed: U diag(sigma) and V^T
lie in B's column space and A's row space, so with A^T = Q_A R_A (thin QR, R_A [r, r]) and the thin
SVD B R_A^T = U diag(sigma) C^T (C [r, r] orthogonal):

    B A = U diag(sigma) V^T   with   V^T = C^T Q_A^T = `into` @ A,   U diag(sigma) = B @ `out_of`,
    into = C^T R_A^-T,   out_of = R_A^T C,   and   out_of @ into = I.

So the low-rank product A x that LoRA computes anyway enters the basis through `into` (coordinates
V^T x), is weighed per row, and leaves through `out_of` back into what B reads:
U diag(w * sigma) V^T x = B @ out_of @ diag(w) @ into @ (A x). Two r x r products per projection.

Both maps are computed in float64 (an exact thin SVD, up to float64 rounding) from the weights as
they are, and cast to float32 (float64 for a float64 model). Rounding: `into` amplifies the rounding
of A x (bf16 in production) by at most the condition number of A, which LoRA's A (near-orthogonal
random rows at initialisation, barely moved by training) keeps small; where every w_i is 1 the maps
cancel exactly in exact arithmetic, and such rows never take this path anyway.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

ADAPTER_NAME = "default"


def lora_svd(lora_a: Tensor, lora_b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(U [out, r], sigma [r] descending, V^T [r, in]) of B A in float64, without forming B A."""
    q_a, r_a = torch.linalg.qr(lora_a.double().T)  # A^T = Q_A R_A
    u, sigma, c_t = torch.linalg.svd(lora_b.double() @ r_a.T, full_matrices=False)
    return u, sigma, c_t @ q_a.T


def singular_maps(lora_a: Tensor, lora_b: Tensor) -> tuple[Tensor, Tensor]:
    """(into, out_of), float64 [r, r] each: V^T = into @ A and U diag(sigma) = B @ out_of (module docstring).

    A rank-deficient A (a direction it never reads) is handled by the pseudo-inverse: that direction
    has sigma = 0, so no weight can change what it contributes.
    """
    _, r_a = torch.linalg.qr(lora_a.double().T)
    _, _, c_t = torch.linalg.svd(lora_b.double() @ r_a.T, full_matrices=False)
    return c_t @ torch.linalg.pinv(r_a.T), r_a.T @ c_t.T


def weigh_directions(low_rank: Tensor, weights: Tensor, into: Tensor, out_of: Tensor) -> Tensor:
    """out_of @ diag(w) @ into @ (A x) for rank-r products `low_rank` [..., r] and weights broadcastable to
    them: B times the result is U diag(w * sigma) V^T x. Computed in the maps' dtype."""
    return ((low_rank.to(into.dtype) @ into.T) * weights) @ out_of.T


class SpectralBasis:
    """`singular_maps` of one peft LoRA projection, computed once and again only when its A or B changed.

    Weights loaded in place move their version counter, replaced or converted ones their address or
    dtype: either recomputes the maps on the next use, so a spectral row never sees a stale basis.
    """

    def __init__(self, lora_layer: nn.Module) -> None:
        self.lora_layer = lora_layer
        self._source: tuple = ()
        self._maps: tuple[Tensor, Tensor] | None = None

    def factors(self) -> tuple[Tensor, Tensor]:
        """(A, B): the projection's LoRA weights as they are now."""
        return self.lora_layer.lora_A[ADAPTER_NAME].weight, self.lora_layer.lora_B[ADAPTER_NAME].weight

    @torch.no_grad()
    def maps(self) -> tuple[Tensor, Tensor]:
        """(into, out_of) in float32 (float64 for a float64 model), on the weights' device."""
        lora_a, lora_b = self.factors()
        source = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in (lora_a, lora_b))
        if self._maps is None or source != self._source:
            dtype = torch.promote_types(lora_a.dtype, torch.float32)
            self._maps = tuple(m.to(dtype) for m in singular_maps(lora_a, lora_b))
            self._source = source
        return self._maps
