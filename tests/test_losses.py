import math

import pytest
import torch
import torch.nn.functional as F

from cakd.losses import LOSS_TERMS, PRESETS, Preset, Ramp, ce_loss, feature_loss, get_preset, kd_loss, total_loss


def test_official_ramp_values():
    r = Ramp()
    assert [r(e) for e in range(24, 37)] == pytest.approx([0, 0, .02, .04, .06, .08, .1, .12, .14, .16, .18, .2, .2])
    assert r(119) == 0.2 and r.plateau_epoch == 35


def test_ramp_scaled_to_cifar_schedule():
    c = Ramp().scaled(200)
    assert c.start / 200 == pytest.approx(0.2083, abs=1e-3) and c.plateau_epoch / 200 == pytest.approx(0.2917, abs=1e-3)
    assert c(199) == 0.2 and c(c.start) == 0


def test_ce_hand_values():
    assert ce_loss(torch.zeros(3, 5), torch.tensor([0, 1, 2])).item() == pytest.approx(math.log(5))
    # label smoothing eps: loss = (1-eps)·CE(onehot) + eps·mean_k(-log p_k)
    z, y, eps = torch.randn(2, 4), torch.tensor([1, 3]), 0.1
    logp = z.log_softmax(-1)
    by_hand = -((1 - eps) * logp.gather(1, y[:, None]).squeeze(1) + eps * logp.mean(-1)).mean()
    assert ce_loss(z, y, eps).item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_kd_hand_values():
    s, t = torch.tensor([[0., 0.]]), torch.tensor([[1., 3.]])
    assert kd_loss(s, t).item() == pytest.approx(5.0)
    T = 2.0
    pt = (t / T).softmax(-1)
    by_hand = (pt * (pt.log() - (s / T).log_softmax(-1))).sum() * T * T
    assert kd_loss(s, t, 'kl', T).item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_kd_and_feature_targets_are_constants():
    t = torch.randn(2, 3, requires_grad=True)
    s = torch.randn(2, 3, requires_grad=True)
    (kd_loss(s, t) + feature_loss(s, t)).backward()
    assert t.grad is None and s.grad is not None


def test_presets_hold_method_weights():
    o, p = PRESETS['official'], PRESETS['paper']
    assert o.weights == dict(ce=1, kd=1, attn=0.2, vv=0.05, feat=0.05, cls=1, adv=1)
    assert (o.pca_mode, o.attn_target, o.swap_p, o.disc, o.mvg, o.label_smoothing) == ('official', 'logits_avg', 0.0, 'map', False, 0.1)
    assert (p.pca_mode, p.attn_target, p.swap_p, p.disc, p.mvg, p.gl_dropout) == ('paper', 'output', 0.5, 'token', True, 0.1)
    assert not p.uses('kd') and not p.uses('cls')
    assert PRESETS['logits'].ramp is None and PRESETS['logits'].uses('kd') and not PRESETS['logits'].uses('attn')
    assert [t for t in LOSS_TERMS if PRESETS['baseline'].uses(t)] == ['ce']


def test_total_loss_by_hand():
    terms = {t: torch.tensor(float(i + 1)) for i, t in enumerate(LOSS_TERMS)}   # ce=1, kd=2, attn=3, ...
    o = get_preset('official')
    assert total_loss(terms, o, 30).item() == pytest.approx(1 + 0.1 * (2 + 0.2 * 3 + 0.05 * 4 + 0.05 * 5 + 6 + 7))
    assert total_loss(terms, o, 10).item() == 1.0


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match='unknown preset .*valid values are: official, paper, logits, baseline'):
        get_preset('cakd')
    with pytest.raises(ValueError, match=r"unknown preset option\(s\) \['lambda_'\]; valid options are: name, weights"):
        get_preset('official', lambda_=0.2)
    with pytest.raises(ValueError, match='valid values are: logits_avg, probs_avg, output'):
        get_preset('official', attn_target='probs')
    with pytest.raises(ValueError, match='valid values are: mse, kl'):
        Preset(kd='js')
    with pytest.raises(ValueError, match='unknown resampling mode'):
        get_preset('paper', resample='lanczos')
