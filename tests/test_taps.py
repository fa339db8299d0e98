import pytest
import timm
import torch
import torchvision
from torch import nn

from cakd.taps import IMAGENET_MEAN, IMAGENET_STD, FrozenTeacher, StudentTap, TeacherTap, find_stage
from conftest import tiny_vit


def mha_weights(block, x_in):
    "nn.MultiheadAttention's own head-averaged attention for a torchvision encoder block."
    h = block.ln_1(x_in)
    return block.self_attention(h, h, h, need_weights=True, average_attn_weights=True)[1]


def block_input(model, block):
    seen = {}
    hook = block.register_forward_pre_hook(lambda m, a: seen.setdefault('x', a[0]))
    with torch.no_grad(): model(torch.randn(1, 3, model.image_size, model.image_size))
    hook.remove()
    return seen['x']


@pytest.mark.parametrize('block', [-1, 0])
def test_torchvision_qk_softmax_equals_mha_weights_vit_b16(vit_b16, block):
    vit = vit_b16.eval()
    tap = TeacherTap(vit, block)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        f = tap(x)
        blk = vit.encoder.layers[block]
        seen = {}
        hook = blk.register_forward_pre_hook(lambda m, a: seen.setdefault('x', a[0]))
        vit(x); hook.remove()
        ref = mha_weights(blk, seen['x'])                          # (B, 197, 197)
    assert f.q.shape == (2, 12, 197, 64) and f.tokens.shape == (2, 197, 768) and f.logits.shape == (2, 1000)
    assert f.grid == (14, 14) and f.patches.shape == (2, 196, 768) and f.patch_qkv[0].shape == (2, 12, 196, 64)
    mine = (f.q @ f.k.transpose(-2, -1) / 8).softmax(-1).mean(1)
    assert (mine - ref).abs().max() < 1e-5
    tap.remove()


def test_tap_values_identical_in_fast_path_and_grad_mode():
    vit = tiny_vit().eval()
    tap = TeacherTap(vit)
    x = torch.randn(3, 3, 32, 32)
    f_grad = tap(x)                                                 # slow path: grad mode
    with torch.inference_mode(): f_fast = tap(x)                    # MHA may take its fused fast path
    for a in ('q', 'k', 'v', 'tokens', 'logits'):
        assert torch.allclose(getattr(f_grad, a), getattr(f_fast, a), atol=1e-5), a
    assert torch.allclose(f_grad.logits, vit(x), atol=1e-6)


@pytest.mark.parametrize('builder,size,grid,heads,dim', [
    (torchvision.models.vit_b_32, 64, (2, 2), 12, 768),
    (torchvision.models.vit_l_16, 64, (4, 4), 16, 1024),
])
def test_torchvision_vit_sizes(builder, size, grid, heads, dim):
    vit = builder(image_size=size).eval()
    t = FrozenTeacher(vit)
    f = t(torch.randn(1, 3, size, size))
    assert f.grid == grid == t.grid
    assert f.q.shape == (1, heads, 1 + grid[0] * grid[1], dim // heads)
    assert f.tokens.shape[-1] == dim


def timm_vit(**kw):
    return timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2,
                                                            num_heads=4, num_classes=10, **kw)


def test_timm_tap_matches_timm_attention():
    vit = timm_vit().eval()
    attn = vit.blocks[-1].attn
    attn.fused_attn = False                                         # timm's supported way to see attention
    seen = {}
    hook = attn.attn_drop.register_forward_hook(lambda m, a, out: seen.setdefault('p', out))
    tap = TeacherTap(vit)
    x = torch.randn(2, 3, 32, 32)
    f = tap(x)
    hook.remove()
    assert f.prefix == 1 and f.grid == (4, 4) and f.q.shape == (2, 4, 17, 16)
    probs = (f.q @ f.k.transpose(-2, -1) / 4).softmax(-1)
    assert (probs - seen['p']).abs().max() < 1e-5
    assert torch.allclose(f.tokens, vit.forward_features(x), atol=1e-6)
    assert torch.allclose(f.logits, vit(x), atol=1e-6)


def test_timm_deit_distilled_has_two_prefix_tokens():
    deit = timm.models.deit.VisionTransformerDistilled(img_size=32, patch_size=8, embed_dim=64, depth=2,
                                                       num_heads=4, num_classes=10).eval()
    f = FrozenTeacher(deit)(torch.randn(2, 3, 32, 32))
    assert f.prefix == 2 and f.patches.shape == (2, 16, 64) and f.patch_qkv[1].shape == (2, 4, 16, 16)


def test_unsupported_teacher_is_named():
    with pytest.raises(TypeError, match='cannot tap a ResNet'):
        TeacherTap(torchvision.models.resnet18())


def test_frozen_teacher_stays_frozen_and_gradless(vit):
    t = FrozenTeacher(vit)
    t.train()
    assert not t.training and not t.model.training
    assert all(not p.requires_grad for p in t.parameters())
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    f = t(x)
    assert not f.q.requires_grad and not f.tokens.requires_grad and f.q.dtype == torch.float32
    assert all(p.grad is None for p in t.parameters())


def test_frozen_teacher_normalisation_and_size(vit):
    half = ((0.5,) * 3, (0.5,) * 3)
    t = FrozenTeacher(vit, student_norm=(IMAGENET_MEAN, IMAGENET_STD), teacher_norm=half)
    img = torch.rand(2, 3, 32, 32)
    m, s = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(t.prepare((img - m) / s), (img - 0.5) / 0.5, atol=1e-5)
    with pytest.raises(ValueError, match='expects 32x32 inputs, got 40x24'):
        FrozenTeacher(vit)(torch.randn(1, 3, 40, 24))
    assert FrozenTeacher(vit, resize=True)(torch.randn(1, 3, 40, 24)).grid == (8, 8)


def test_resnet50_default_stage_is_layer3_for_a_16px_teacher():
    r50 = torchvision.models.resnet50(num_classes=100)
    assert find_stage(r50, 16, (224, 224)) == 'layer3'
    tap = StudentTap(r50, stride=16, image_size=(224, 224))
    s = tap(torch.randn(2, 3, 224, 224))
    assert s.feat.shape == (2, 1024, 14, 14) and s.pooled.shape == (2, 2048) and s.logits.shape == (2, 100)


@pytest.mark.parametrize('name,stage,pooled', [
    ('mobilenet_v3_large', 'features.12', 1280),
    ('convnext_tiny', 'features.5', 768),
    ('efficientnet_b0', 'features.5', 1280),
    ('resnet18', 'layer3', 512),
])
def test_other_cnns_default_stage(name, stage, pooled):
    m = getattr(torchvision.models, name)(num_classes=10)
    tap = StudentTap(m, stride=16, image_size=(64, 64))
    assert tap.layer == stage
    s = tap(torch.randn(2, 3, 64, 64))
    assert s.feat.shape[-2:] == (4, 4) and s.pooled.shape == (2, pooled) and s.logits.shape == (2, 10)


def test_no_stage_with_that_stride_is_an_error():
    with pytest.raises(ValueError, match=r'no stage with output stride \(3, 3\)'):
        find_stage(torchvision.models.resnet18(), 3, (64, 64))


def test_student_tap_through_compile_prefix_and_removal():
    m = torchvision.models.resnet18(num_classes=10)
    compiled = torch.compile(m)
    tap = StudentTap(compiled, layer='_orig_mod.layer2')
    assert tap.stage is m.layer2
    tap.model = m                                                    # run eagerly; the hooks sit on m's modules
    assert tap(torch.randn(1, 3, 64, 64)).feat.shape == (1, 128, 8, 8)
    tap.remove()
    assert not m.layer2._forward_hooks and not m.fc._forward_pre_hooks


def test_student_layer_that_is_not_a_map():
    with pytest.raises(ValueError, match=r"student layer 'fc' returned \(2, 10\)"):
        StudentTap(torchvision.models.resnet18(num_classes=10), layer='fc')(torch.randn(2, 3, 32, 32))


def test_student_tap_through_ddp_module_prefix():
    import socket
    import torch.distributed as dist
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=0, world_size=1)
    try:
        m = torchvision.models.resnet18(num_classes=10)
        ddp = nn.parallel.DistributedDataParallel(m)
        tap = StudentTap(ddp, layer='module.layer3')
        assert tap.stage is m.layer3
        out = tap(torch.randn(2, 3, 64, 64))                         # runs through DDP's forward
        assert out.feat.shape == (2, 256, 4, 4) and out.pooled.shape == (2, 512)
        out.logits.sum().backward()
        assert m.conv1.weight.grad is not None
    finally:
        dist.destroy_process_group()
