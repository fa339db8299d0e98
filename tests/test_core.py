import os
import socket

import pytest
import torch
import torch.distributed as dist
from torch import nn

from cakd.core import align_grid, check_choice, clean_state_dict, default_device, freeze, get_module, seed_everything, to_map, to_tokens, unwrap


def test_default_device_honours_env(monkeypatch):
    monkeypatch.setenv('CAKD_DEVICE', 'cpu')
    assert default_device() == torch.device('cpu')
    monkeypatch.setenv('CAKD_DEVICE', 'meta')
    assert default_device() == torch.device('meta')


def test_seed_everything_repeats_draws():
    g = seed_everything(3)
    a, b = torch.rand(4), torch.rand(4, generator=g)
    g = seed_everything(3)
    assert torch.equal(a, torch.rand(4)) and torch.equal(b, torch.rand(4, generator=g))


def test_freeze():
    m = freeze(nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5)))
    assert not m.training and not any(p.requires_grad for p in m.parameters())


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture
def process_group():
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{free_port()}', rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_unwrap_and_prefixes_through_ddp_and_compile(process_group):
    net = nn.Sequential(nn.Linear(2, 2))
    ddp = nn.parallel.DistributedDataParallel(torch.compile(net))
    assert unwrap(ddp) is net
    keys = list(ddp.state_dict())
    assert keys == ['module._orig_mod.0.weight', 'module._orig_mod.0.bias']
    assert list(clean_state_dict(ddp.state_dict())) == ['0.weight', '0.bias']
    assert get_module(ddp, 'module._orig_mod.0') is net[0]


def test_get_module_error_names_children():
    net = nn.Sequential()
    net.add_module('stem', nn.Conv2d(3, 4, 3))
    with pytest.raises(KeyError, match=r"no submodule 'head'.*top-level children are \['stem'\]"):
        get_module(net, 'head')


def test_check_choice_lists_valid_values():
    with pytest.raises(ValueError, match="unknown colour 'red'; valid values are: green, blue"):
        check_choice('red', ['green', 'blue'], 'colour')


def test_tokens_roundtrip_and_row_major_order():
    x = torch.randn(2, 5, 3, 4)
    t = to_tokens(x)
    assert t.shape == (2, 12, 5)
    assert torch.equal(t[:, 2 * 4 + 3], x[:, :, 2, 3])
    assert torch.equal(to_map(t, (3, 4)), x)


def test_align_grid_resamples_and_checks():
    x = torch.randn(1, 2, 7, 7)
    assert align_grid(x, (14, 14)).shape == (1, 2, 14, 14)
    assert torch.allclose(align_grid(torch.ones(1, 2, 7, 7), (14, 14), 'area'), torch.ones(1, 2, 14, 14))
    with pytest.raises(ValueError, match=r'\(B, C, H, W\)'):
        align_grid(torch.randn(2, 49, 8), (14, 14))
    with pytest.raises(ValueError, match='unknown resampling mode'):
        align_grid(x, (14, 14), 'lanczos')
