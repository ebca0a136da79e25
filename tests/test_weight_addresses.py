"""WeightAddresses: what `parameters()`'s data_ptrs say, after every way a weight can move, with no walk between."""

from __future__ import annotations

import torch
from torch import nn

from naturelm_core.weight_addresses import WeightAddresses


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8)))


def _walked(module: nn.Module) -> tuple[int, ...]:
    return tuple(parameter.data_ptr() for parameter in module.parameters())


def test_the_addresses_are_the_parameters_data_ptrs():
    net = _net()
    assert WeightAddresses(net).addresses() == _walked(net)


def test_a_replaced_parameter_is_seen():
    net = _net()
    addresses = WeightAddresses(net)
    before = addresses.addresses()
    net[2][0].weight = nn.Parameter(net[2][0].weight.detach() * 2)
    assert addresses.addresses() != before
    assert addresses.addresses() == _walked(net)


def test_a_tensor_moved_under_the_same_parameter_is_seen():
    net = _net()
    addresses = WeightAddresses(net)
    before = addresses.addresses()
    net[0].weight.data = net[0].weight.data.clone()
    assert addresses.addresses() != before
    assert addresses.addresses() == _walked(net)


def test_a_replaced_or_added_submodule_is_seen():
    net = _net()
    addresses = WeightAddresses(net)
    before = addresses.addresses()
    net[2][1] = nn.LayerNorm(8, elementwise_affine=False)  # two parameters fewer
    assert addresses.addresses() == _walked(net) and len(addresses.addresses()) == len(before) - 2
    net.add_module("extra", nn.Linear(2, 2))
    assert addresses.addresses() == _walked(net) and len(addresses.addresses()) == len(before)


def test_a_state_dict_loaded_by_assignment_is_seen():
    net = _net()
    addresses = WeightAddresses(net)
    before = addresses.addresses()
    net.load_state_dict({name: value.clone() for name, value in net.state_dict().items()}, assign=True)
    after = addresses.addresses()
    assert after == _walked(net) and set(after).isdisjoint(before)


def test_the_tree_is_walked_again_only_after_a_registration(monkeypatch):
    """The contract that makes it cheap: without a registration in between, no walk (and an in-place write,
    which moves nothing, is no registration)."""
    net = _net()
    addresses = WeightAddresses(net)
    walks = []
    original = nn.Module.parameters

    def counted(self, recurse: bool = True):
        if self is net:
            walks.append(1)
        return original(self, recurse)

    monkeypatch.setattr(nn.Module, "parameters", counted)
    addresses.addresses()
    with torch.no_grad():
        net[0].weight.mul_(2)
    for _ in range(3):
        addresses.addresses()
    assert len(walks) == 1
    nn.Linear(2, 2)  # any module built anywhere registers parameters: one more walk, the same answer
    assert addresses.addresses() == _walked(net)
    assert len(walks) == 3  # the re-read, and _walked's own
