"""Wrappers that need a process group: DistributedDataParallel (one gloo process) and torch.compile prefixes,
seen through `cakd.core.unwrap`, `clean_state_dict`, `get_module` and the student tap."""
import pytest
import torch
import torch.distributed as dist
import torchvision
from torch import nn

from cakd.core import clean_state_dict, get_module, unwrap
from cakd.taps import StudentTap
from conftest import free_port


@pytest.fixture
def process_group():
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{free_port()}', rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_unwrap_and_prefixes_through_ddp_and_compile(process_group):
    net = nn.Sequential(nn.Linear(2, 2))
    ddp = nn.parallel.DistributedDataParallel(torch.compile(net))
    assert unwrap(ddp) is net
    assert list(ddp.state_dict()) == ['module._orig_mod.0.weight', 'module._orig_mod.0.bias']
    assert list(clean_state_dict(ddp.state_dict())) == ['0.weight', '0.bias']
    assert get_module(ddp, 'module._orig_mod.0') is net[0]


def test_student_tap_through_ddp_module_prefix(process_group):
    m = torchvision.models.resnet18(num_classes=10)
    ddp = nn.parallel.DistributedDataParallel(m)
    tap = StudentTap(ddp, layer='module.layer3')
    assert tap.stage is m.layer3
    out = tap(torch.randn(2, 3, 64, 64))                         # runs through DDP's forward
    assert out.feat.shape == (2, 256, 4, 4) and out.pooled.shape == (2, 512)
    out.logits.sum().backward()
    assert m.conv1.weight.grad is not None


def test_distiller_distribute_wraps_student_and_head_once(process_group):
    from cakd.distiller import Distiller
    vit = torchvision.models.VisionTransformer(32, 4, 2, 4, 64, 128, num_classes=10)
    d = Distiller(vit, torchvision.models.resnet18(num_classes=10), 'cakd_official').setup(lr=0.01).distribute()
    assert isinstance(d.model, nn.parallel.DistributedDataParallel) and type(d.student) is torchvision.models.ResNet
    assert not any(isinstance(m, nn.parallel.DistributedDataParallel) for m in unwrap(d.model).modules())
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    assert set(d.step(x, y, 0)) == {'loss', 'ce', 'rho'}                              # ramp at zero: projectors idle
    logs = d.step(x, y, 50)                                                           # then all of them
    assert {'attn', 'feat', 'cls', 'adv'} <= set(logs)
    assert set(d.state_dict()) == {f'student.{k}' for k in d.student.state_dict()} | \
        {f'head.{k}' for k in d.head.state_dict()} | {f'disc.{k}' for k in d.disc.state_dict()}
