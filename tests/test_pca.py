import pytest
import torch
import torch.nn.functional as F

from cakd.pca import PCAProjector, attention_output, attention_target, partial_cross, pca_loss, qk_logits, vv_gram


def test_swap_replaces_half_of_the_elements_independently():
    s, t = torch.zeros(32, 12, 196, 64), torch.ones(32, 12, 196, 64)
    g = torch.Generator().manual_seed(0)
    masks = [partial_cross(s, t, 0.5, g)[1] for _ in range(3)]      # Q, K, V
    n = masks[0].numel()
    for m in masks:
        assert abs(m.float().mean().item() - 0.5) < 4 * (0.25 / n) ** 0.5 + 1e-4   # within 4 sigma
    both = (masks[0] & masks[1]).float().mean().item()
    assert abs(both - 0.25) < 0.002                                    # independent masks for Q and K
    assert abs(partial_cross(s, t, 0.2, g)[1].float().mean().item() - 0.2) < 0.002


def test_swap_takes_teacher_values_and_gradient_flows_only_through_kept_entries():
    s = torch.randn(2, 3, 5, 4, requires_grad=True)
    t = torch.randn(2, 3, 5, 4, requires_grad=True)
    mixed, mask = partial_cross(s, t, 0.5)
    assert torch.equal(mixed[mask], t[mask].detach()) and torch.equal(mixed[~mask], s[~mask].detach())
    (mixed * torch.arange(mixed.numel()).view_as(mixed)).sum().backward()
    assert torch.equal(s.grad, torch.where(mask, 0.0, torch.arange(mixed.numel()).view_as(mixed).float()))
    assert t.grad is None


def test_attention_quantities_by_hand():
    q = torch.tensor([[[[1., 0.], [0., 1.]]]])                          # (1, 1, 2, 2)
    k = torch.tensor([[[[1., 0.], [0., 2.]]]])
    v = torch.tensor([[[[1., 2.], [3., 4.]]]])
    logits = torch.tensor([[1., 0.], [0., 2.]]) / 2 ** 0.5
    assert torch.allclose(qk_logits(q, k)[0, 0], logits)
    p = logits.softmax(-1)
    assert torch.allclose(attention_output(q, k, v)[0, 0], p @ v[0, 0])
    assert torch.allclose(vv_gram(v)[0, 0], torch.tensor([[5., 11.], [11., 25.]]) / 2 ** 0.5)
    assert torch.allclose(vv_gram(v, scaled=False)[0, 0], torch.tensor([[5., 11.], [11., 25.]]))
    assert torch.allclose(attention_target(q, k, v, 'probs_avg')[0], p)


def test_official_projector_layout_for_resnet50_layer3():
    proj = PCAProjector(1024, heads=16, head_dim=64, mode='official')
    assert sum(p.numel() for p in proj.parameters()) == 1024 * 3072     # one bias-free Linear, 3.15 M
    q, k, v = proj(torch.randn(2, 1024, 14, 14))
    assert q.shape == (2, 16, 196, 64)


def test_paper_projector_uses_three_3x3_convs_in_teacher_layout():
    proj = PCAProjector(1024, heads=12, head_dim=64, mode='paper')
    assert [m.kernel_size for m in (proj.q, proj.k, proj.v)] == [(3, 3)] * 3
    assert all(m.bias is not None for m in (proj.q, proj.k, proj.v))
    assert proj(torch.randn(1, 1024, 14, 14))[2].shape == (1, 12, 196, 64)


def test_pca_loss_by_hand_and_mismatch_flag():
    t = torch.randn(3, 2, 4, 9, 8).unbind(0)
    s = tuple(x + 0.1 for x in t)
    l = pca_loss(s, t, 'logits_avg')
    assert torch.allclose(l['attn'], F.mse_loss(qk_logits(*s[:2]).mean(1), qk_logits(*t[:2]).mean(1)))
    assert torch.allclose(l['vv'], F.mse_loss(vv_gram(s[2]).mean(1), vv_gram(t[2]).mean(1)))
    lm = pca_loss(s, t, 'logits_avg', vv_teacher_scaled=False)
    assert torch.allclose(lm['vv'], F.mse_loss(vv_gram(s[2]).mean(1), vv_gram(t[2], scaled=False).mean(1)))
    lo = pca_loss(s, t, 'output')
    assert torch.allclose(lo['attn'], F.mse_loss(attention_output(*s), attention_output(*t)))
    assert torch.allclose(lo['vv'], F.mse_loss(vv_gram(s[2]), vv_gram(t[2])))        # per head for 'output'


def test_pca_loss_swap_with_p1_matches_teacher_exactly():
    t = torch.randn(3, 2, 4, 9, 8).unbind(0)
    s = tuple(torch.randn_like(x, requires_grad=True) for x in t)
    l = pca_loss(s, t, 'output', swap_p=1.0)
    assert l['attn'].item() == 0.0                                       # every element swapped
    assert l['vv'] > 0                                                   # V·Vᵀ uses the unswapped student V


def test_pca_loss_shape_errors_name_both_shapes():
    t = torch.randn(3, 2, 4, 16, 8).unbind(0)
    s = torch.randn(3, 2, 4, 9, 8).unbind(0)
    with pytest.raises(ValueError, match=r'student has 9 tokens and teacher 16.*\(2, 4, 9, 8\).*\(2, 4, 16, 8\)'):
        pca_loss(s, t)
    with pytest.raises(ValueError, match=r"needs the teacher's \(B, heads, N, d\) layout"):
        pca_loss(torch.randn(3, 2, 6, 16, 8).unbind(0), t, 'output')


def test_pca_gradients_reach_projector_not_teacher():
    proj = PCAProjector(8, 2, 4, 'paper')
    t = tuple(x.requires_grad_() for x in torch.randn(3, 2, 2, 16, 4).unbind(0))
    l = pca_loss(proj(torch.randn(2, 8, 4, 4)), t, 'output', swap_p=0.5)
    (l['attn'] + l['vv']).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in proj.parameters())
    assert all(x.grad is None for x in t)
