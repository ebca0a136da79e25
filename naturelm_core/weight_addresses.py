"""Where a module's weights live, read without walking its module tree each time.

Why: a captured CUDA graph reads its weights at fixed addresses, so every generation first checks that no
weight of the LLM moved (StaticDecoding's step). `tuple(p.data_ptr() for p in llm.parameters())` walks
NatureLM's ~1,700 modules through nested generators: 1.8 ms on this project's CPU host and ~4.7 ms of a
generation's set-up on the H100 machine's host (2026-12-07 12:53Z, .ab probe of one Explore answer), with the
GPU idle, since the set-up runs before the prefill is queued: 3% of an Explore answer.

The parameter list is kept and re-read only after torch registered a parameter or a submodule on any module
of the process (its global registration hooks: `module.weight = Parameter(...)`, a replaced submodule,
`load_state_dict(assign=True)`), so a replaced tensor is found as before; a tensor moved in place of the same
Parameter (`.to()`, `param.data = ...`) changes its data_ptr, which is read every time.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.nn.modules.module import (
    register_module_module_registration_hook,
    register_module_parameter_registration_hook,
)

_registrations = 0  # parameters and submodules registered anywhere in the process since import


def _count_registration(module: nn.Module, name: str, value: Any) -> None:
    global _registrations
    _registrations += 1


register_module_parameter_registration_hook(_count_registration)
register_module_module_registration_hook(_count_registration)


class WeightAddresses:
    """`addresses()` is `tuple(p.data_ptr() for p in module.parameters())`, with the list walked only after a
    registration (anywhere: another model's construction re-reads it once, harmlessly)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self._parameters: tuple[nn.Parameter, ...] = ()
        self._listed_at = -1  # the registration count when the list was read; -1: never

    def addresses(self) -> tuple[int, ...]:
        if self._listed_at != _registrations:
            self._listed_at = _registrations
            self._parameters = tuple(self.module.parameters())
        return tuple(parameter.data_ptr() for parameter in self._parameters)
