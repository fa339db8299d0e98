import pytest
import torch
from torch import nn

from cakd.mrt import MapDiscriminator, MultiViewGenerator, TokenDiscriminator, discriminator_loss, frozen_call, generator_loss
from cakd.taps import IMAGENET_MEAN, IMAGENET_STD


def test_generator_loss_reaches_student_only_after_a_d_step_without_version_error():
    torch.manual_seed(0)
    student = nn.Linear(6, 64)
    D = MapDiscriminator()                                         # the official PatchGAN with BatchNorm
    d_opt = torch.optim.SGD(D.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):                                             # several steps: the official code crashed here
        fake = student(torch.randn(2, 64, 6)).view(2, 64, 64)
        real = torch.randn(2, 64, 64)
        d_loss = discriminator_loss(D, real, fake)
        d_opt.zero_grad(); d_loss.backward(); d_opt.step()
        student.zero_grad()
        generator_loss(D, fake).backward()
        assert student.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in D.parameters())         # from D's own step only


def test_fool_loss_leaves_discriminator_gradients_and_statistics_alone():
    D = MapDiscriminator().train()
    fake = torch.randn(2, 32, 32, requires_grad=True)
    stats = {n: b.clone() for n, b in D.named_buffers()}
    generator_loss(D, fake).backward()
    assert all(p.grad is None for p in D.parameters())
    assert all(torch.equal(b, stats[n]) for n, b in D.named_buffers())
    assert fake.grad.abs().sum() > 0


def test_frozen_call_equals_plain_call_in_eval():
    D = TokenDiscriminator(8).eval()
    x = torch.randn(3, 5, 8)
    assert torch.allclose(frozen_call(D, x), D(x))


def test_discriminator_learns_from_both_halves():
    D = TokenDiscriminator(4, hidden=(8,))
    real, fake = torch.randn(4, 3, 4) + 2, torch.randn(4, 3, 4)
    w = D.net[0].weight
    g_real = torch.autograd.grad(0.5 * nn.functional.binary_cross_entropy_with_logits(D(real), torch.ones(4)), w)[0]
    g_fake = torch.autograd.grad(0.5 * nn.functional.binary_cross_entropy_with_logits(D(fake), torch.zeros(4)), w)[0]
    g = torch.autograd.grad(discriminator_loss(D, real, fake), w)[0]
    assert torch.allclose(g, g_real + g_fake, atol=1e-6) and g_real.abs().sum() > 0
    g_dead = torch.autograd.grad(discriminator_loss(D, real, fake, replicate_dead_gan=True), w)[0]
    assert torch.allclose(g_dead, g_fake, atol=1e-6)                # official BUG-2: fakes only


def test_replicated_dead_gan_gives_student_nothing():
    student = nn.Linear(4, 4)
    loss = generator_loss(TokenDiscriminator(4), student(torch.randn(2, 3, 4)), replicate_dead_gan=True)
    assert not loss.requires_grad                                   # official BUG-1


def test_discriminator_training_separates_real_from_fake():
    torch.manual_seed(0)
    D = TokenDiscriminator(8, hidden=(16,))
    opt = torch.optim.Adam(D.parameters(), 1e-2)
    real, fake = torch.randn(16, 4, 8) + 1, torch.randn(16, 4, 8) - 1
    first = discriminator_loss(D, real, fake).item()
    for _ in range(50):
        l = discriminator_loss(D, real, fake); opt.zero_grad(); l.backward(); opt.step()
    assert l.item() < 0.1 < first
    assert (D(real) > 0).all() and (D(fake) < 0).all()


def test_multiview_generator_probabilities_and_device_agnostic_shapes():
    x = torch.randn(400, 3, 32, 32)
    mvg = MultiViewGenerator(8, IMAGENET_MEAN, IMAGENET_STD, p=0.5, jitter=0.0, mask_ratio=0.25)
    g = torch.Generator().manual_seed(0)
    view = mvg(x, g)
    masked = (view == 0).flatten(1).float().mean(1)                 # only masking can zero pixels here
    share = (masked > 0.2).float().mean().item()
    assert abs(share - 0.5) < 0.1                                   # about half the samples are masked
    assert torch.allclose(masked[masked > 0.2], torch.tensor(0.25), atol=0.01)   # 4 of 16 patches
    assert view.shape == x.shape and view.dtype == x.dtype
    assert torch.equal(mvg(x, torch.Generator().manual_seed(1)), mvg(x, torch.Generator().manual_seed(1)))


def test_map_discriminator_rejects_small_maps_clearly():
    with pytest.raises(ValueError, match=r'needs maps of at least 24x24, got \(2, 16, 16\)'):
        MapDiscriminator()(torch.randn(2, 16, 16))
