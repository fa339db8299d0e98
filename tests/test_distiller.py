import pytest
import torch
import torchvision
from torch import nn

from cakd.core import default_device
from cakd.distiller import Distiller, export_student, train_step
from cakd.losses import Ramp
from conftest import tiny_vit


def optimisers(d):
    opt = torch.optim.SGD(d.student_parameters(), lr=0.01, momentum=0.9)
    return opt, (torch.optim.SGD(d.disc.parameters(), lr=1e-3, momentum=0.9) if d.disc is not None else None)


def batch(n=4, size=32, classes=10):
    return torch.randn(n, 3, size, size), torch.randint(0, classes, (n,))


def test_resnet50_vit_b16_official_step_on_cpu_and_plain_export(vit_b16):
    dev = default_device()
    assert dev.type == 'cpu'
    d = Distiller(vit_b16, torchvision.models.resnet50(num_classes=1000), 'official', ramp=Ramp(0, 1, 0.2)).to(dev)
    assert d.tap.layer == 'layer3'
    assert d.head.pca.heads == 16 and d.head.gl.weight.shape == (16, 1024, 768) and d.head.cls.in_features == 2048
    opt, d_opt = optimisers(d)
    x, y = batch(2, 224, 1000)
    logs = train_step(d, x, y, 5, opt, d_opt)
    assert set(logs) == {'loss', 'ce', 'kd', 'attn', 'vv', 'feat', 'cls', 'adv', 'd_loss', 'rho'}
    assert all(p.grad is None for p in d.teacher.parameters())
    sd = export_student(d)
    plain = torchvision.models.resnet50(num_classes=1000)
    plain.load_state_dict(sd, strict=True)                      # a stock torchvision ResNet-50
    assert type(plain) is torchvision.models.ResNet
    assert set(sd) == set(plain.state_dict())
    with torch.no_grad():
        assert torch.allclose(plain.eval()(x), d.student.eval()(x), atol=1e-5)


@pytest.mark.parametrize('preset', ['official', 'paper'])
def test_adversarial_term_reaches_student_and_projectors_not_teacher_or_d(vit, preset):
    d = Distiller(vit, torchvision.models.resnet18(num_classes=10), preset, ramp=None)
    x, y = batch()
    terms, adv = d.compute(x, y, 1)
    d.disc_loss(adv).backward()                                 # D's own loss: D grads, nothing for the student
    assert all(p.grad is None for p in d.student.parameters())
    d.disc.zero_grad(set_to_none=True)
    d.fool_loss(adv).backward()                                 # the adversarial term alone
    assert d.student.layer1[0].conv1.weight.grad.abs().sum() > 0
    proj = d.head.pca if preset == 'official' else d.head.gl
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in proj.parameters())
    assert all(p.grad is None for p in d.disc.parameters())
    assert all(p.grad is None for p in d.teacher.parameters())


def test_replicate_dead_gan_reproduces_zero_student_gradient(vit):
    d = Distiller(vit, torchvision.models.resnet18(num_classes=10), 'official', ramp=None, replicate_dead_gan=True)
    terms, adv = d.compute(*batch(), 1)
    assert not d.fool_loss(adv).requires_grad


def test_train_steps_on_both_presets_run_and_update(vit):
    for preset in ('official', 'paper', 'logits', 'baseline'):
        d = Distiller(vit, torchvision.models.resnet18(num_classes=10), preset, ramp=None)
        opt, d_opt = optimisers(d)
        w0 = d.student.conv1.weight.clone()
        for _ in range(2): logs = train_step(d, *batch(), 1, opt, d_opt)
        assert not torch.equal(w0, d.student.conv1.weight) and torch.isfinite(torch.tensor(logs['loss']))


def test_while_ramp_is_zero_teacher_does_not_run_and_projectors_get_no_gradient(vit):
    d = Distiller(vit, torchvision.models.resnet18(num_classes=10), 'official')
    calls = []
    hook = vit.register_forward_hook(lambda *a: calls.append(1))
    opt, d_opt = optimisers(d)
    w0 = d.head.gl.weight.clone()
    logs = train_step(d, *batch(), 10, opt, d_opt)
    assert calls == [] and set(logs) == {'loss', 'ce', 'rho'} and logs['rho'] == 0
    assert all(p.grad is None for p in d.head.parameters())
    assert torch.equal(d.head.gl.weight, w0)                   # no weight decay either: SGD skips them
    train_step(d, *batch(), 30, opt, d_opt)
    assert calls == [1]
    hook.remove()


def test_teacher_is_not_a_submodule_but_follows_to(vit):
    d = Distiller(vit, torchvision.models.resnet18(num_classes=10))
    assert not any(k.startswith('teacher') for k in d.state_dict())
    assert not any(p is q for p in d.parameters() for q in vit.parameters())
    d.double()
    assert next(vit.parameters()).dtype == torch.float64
    assert d(*(t.double() if t.is_floating_point() else t for t in batch()), epoch=50)['loss'].dtype == torch.float64


def test_class_count_mismatch_is_refused_with_both_counts():
    with pytest.raises(ValueError, match='the teacher has 1000 classes and the student 100'):
        Distiller(tiny_vit(num_classes=1000), torchvision.models.resnet18(num_classes=100))
    with pytest.raises(ValueError, match=r"class_map='ignore' drops the teacher's logits"):
        Distiller(tiny_vit(num_classes=1000), torchvision.models.resnet18(num_classes=100), class_map='ignore')
    with pytest.raises(ValueError, match=r"one teacher class in \[0, 1000\) for each of the student's 3 classes"):
        Distiller(tiny_vit(num_classes=1000), torchvision.models.resnet18(num_classes=3), class_map=[0, 1])
    d = Distiller(tiny_vit(num_classes=1000), torchvision.models.resnet18(num_classes=100), 'paper', class_map='ignore')
    assert d.class_map is None
    d = Distiller(tiny_vit(num_classes=1000), torchvision.models.resnet18(num_classes=3), class_map=[7, 8, 9])
    x = torch.randn(2, 3, 32, 32)
    t = d.teacher(x).logits[:, [7, 8, 9]]
    s = d.student(x)
    assert d(x, torch.tensor([0, 1]), epoch=50)['kd'].item() == pytest.approx(nn.functional.mse_loss(s, t).item(), rel=1e-4)


def test_other_student_grid_is_resampled_or_refused(vit):
    d = Distiller(vit, torchvision.models.resnet18(num_classes=10), student_layer='layer3')   # a 2x2 map, teacher 8x8
    assert d(*batch(), epoch=50)['attn'] > 0
    with pytest.raises(ValueError, match=r"student layer 'layer3' gives a 2x2 map \(1, 256, 2, 2\), but teacher block -1 has a 8x8 token grid \(B, 64, 64\)"):
        Distiller(vit, torchvision.models.resnet18(num_classes=10), student_layer='layer3', resample='none')


def test_other_input_size_is_refused_or_resized(vit):
    d = Distiller(vit, torchvision.models.resnet18(num_classes=10))
    with pytest.raises(ValueError, match='expects 32x32 inputs, got 48x48'):
        d(*batch(2, 48), epoch=50)
    d = Distiller(vit, torchvision.models.resnet18(num_classes=10), resize_teacher_input=True)
    out = d(*batch(2, 48), epoch=50)                             # student 6x6 map, resampled to the 8x8 grid
    assert torch.isfinite(out['loss'])


def test_unknown_preset_and_option():
    vit = tiny_vit()
    with pytest.raises(ValueError, match='unknown preset .*valid values are: official, paper, logits, baseline'):
        Distiller(vit, torchvision.models.resnet18(num_classes=10), 'cakd')
    with pytest.raises(ValueError, match=r"unknown preset option\(s\) \['swap'\]"):
        Distiller(vit, torchvision.models.resnet18(num_classes=10), 'paper', swap=0.5)


def test_paper_swap_only_in_training(vit):
    d = Distiller(vit, torchvision.models.resnet18(num_classes=10), 'paper', ramp=None)
    x, y = batch()
    d.eval()
    with torch.no_grad():
        a, b = d(x, y, 1)['attn'], d(x, y, 1)['attn']
    assert a == b                                                # deterministic: no swap at evaluation
    d.train()
    with torch.no_grad():
        torch.manual_seed(1); c = d.compute(x, y, 1)[0]['attn']
        torch.manual_seed(2); e = d.compute(x, y, 1)[0]['attn']
    assert c != e


def test_baseline_never_runs_the_teacher(vit):
    d = Distiller(vit, torchvision.models.resnet18(num_classes=10), 'baseline')
    calls = []
    hook = vit.register_forward_hook(lambda *a: calls.append(1))
    opt, _ = optimisers(d)
    logs = train_step(d, *batch(), 50, opt)
    hook.remove()
    assert calls == [] and set(logs) == {'loss', 'ce', 'rho'}
