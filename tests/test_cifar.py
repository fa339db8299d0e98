"""CIFAR-100 (issue 12): a CIFAR-format folder written here, through cakd-train for each method, teacher fine-tuning
whose teacher.pt then serves alone as --teacher-weights, the cifar100 notebook on 2 gloo processes, and export."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cakd.cli import cli
from cakd.config import CONFIG_VERSION
from cakd.datasets import write_cifar
from cakd.runs import read_records

ROOT = Path(__file__).parents[1]
BIN = Path(sys.executable).parent
TINY_VIT = {'img_size': 32, 'patch_size': 4, 'depth': 2}
pytestmark = pytest.mark.xdist_group('cifar')   # one worker: the fixtures below are built once
SMALL = ['--epochs', '1', '--max-steps-per-epoch', '2', '--batch-size', '8', '--workers', '0', '--device', 'cpu']


@pytest.fixture(scope='module')
def cifar(tmp_path_factory):
    "A CIFAR-100 folder in torchvision's layout (real digit images, 100 classes) and a 'pretrained' 7-class ViT."
    import timm
    root = tmp_path_factory.mktemp('cifar')
    write_cifar(root / 'data', 'cifar100', 100, train_per_class=2, val_per_class=1)
    torch.manual_seed(0)
    torch.save({'model': timm.create_model('vit_tiny_patch16_224', num_classes=7, **TINY_VIT).state_dict()},
               root / 'pretrained.pth')
    return root


@pytest.fixture(scope='module')
def teacher(cifar):
    "`cakd-train --method finetune` (the console script) on the CIFAR folder: its run folder."
    out = cifar / 'finetune'
    r = subprocess.run([BIN / 'cakd-train', '--method', 'finetune', '--dataset', 'cifar100', '--data', cifar / 'data',
                        '--no-data-checksums', '--teacher', 'timm:vit_tiny_patch16_224', '--teacher-weights',
                        cifar / 'pretrained.pth', '--teacher-options', json.dumps(TINY_VIT), '--lr-warmup-epochs', '0',
                        '--output', out, *SMALL], capture_output=True, text=True,
                       env={**os.environ, 'CAKD_DEVICE': 'cpu'})
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'fine-tunes timm:vit_tiny_patch16_224' in r.stdout
    return out


def test_finetune_writes_a_teacher_that_is_accepted_alone(cifar, teacher):
    t = torch.load(teacher / 'teacher.pt', weights_only=True)
    assert (t['teacher'], t['teacher_options'], len(t['classes'])) == ('timm:vit_tiny_patch16_224', TINY_VIT, 100)
    pre = torch.load(cifar / 'pretrained.pth', weights_only=True)['model']
    w = t['model']
    assert w['head.weight'].shape == (100, 192) and w['head.weight'].abs().sum() > 0     # new head, and it trained
    assert not torch.equal(w['blocks.0.attn.qkv.weight'], pre['blocks.0.attn.qkv.weight'])   # the body trained too
    cfg = json.loads((teacher / 'config.json').read_text())
    assert (cfg['lr'], cfg['weight_decay'], cfg['clip_grad_norm'], cfg['lr_scheduler']) == (0.003, 0.0, 1.0,
                                                                                            'cosineannealinglr')


def test_finetune_on_an_imagefolder_then_its_teacher_pt_alone(digits, cifar, tmp_path, capsys):
    "Fine-tuning works on any ImageFolder (here 10 digit classes from a 7-class 'pretrained' ViT); the teacher.pt it "
    "writes is then the teacher of a kd run given --teacher-weights and nothing else about the teacher."
    from cakd.runs import load_run
    ft, kd = tmp_path / 'ft', tmp_path / 'kd'
    assert cli(['--method', 'finetune', '--data', digits, '--teacher', 'timm:vit_tiny_patch16_224', '--teacher-weights',
                cifar / 'pretrained.pth', '--teacher-options', json.dumps(TINY_VIT), '--output', ft, *SMALL]) == 0
    t = torch.load(ft / 'teacher.pt', weights_only=True)
    assert t['classes'] == [str(c) for c in range(10)] and t['model']['head.weight'].shape == (10, 192)
    assert cli(['--method', 'kd', '--data', digits, '--model', 'resnet18', '--teacher-weights', ft / 'teacher.pt',
                '--output', kd, *SMALL]) == 0, capsys.readouterr().err
    taught = load_run(kd).teacher.model.state_dict()
    assert taught.keys() == t['model'].keys() and all(torch.equal(taught[k], v) for k, v in t['model'].items())


@pytest.mark.parametrize('method', ['baseline', 'kd', 'dkd', 'cakd_official'])
def test_cakd_train_dataset_cifar100_one_epoch(cifar, teacher, method, capsys):
    out = cifar / method
    code = cli(['--method', method, '--dataset', 'cifar100', '--data', cifar / 'data', '--no-data-checksums',
                '--model', 'resnet18', '--teacher-weights', teacher / 'teacher.pt', '--output', out, *SMALL])
    assert code == 0, capsys.readouterr().err
    cfg = json.loads((out / 'config.json').read_text())
    assert (cfg['dataset'], cfg['teacher'], cfg['teacher_options']) == ('cifar100', 'timm:vit_tiny_patch16_224',
                                                                         TINY_VIT)
    assert (cfg['lr'], cfg['lr_scheduler'], cfg['lr_milestones'], cfg['weight_decay'], cfg['model_ema']) == (
        0.1, 'multisteplr', [100, 150], 1e-4, False)                         # the paper's CIFAR recipe, all methods
    (epoch,) = read_records(out)
    terms = {k[6:] for k in epoch if k.startswith('train_') and k not in ('train_loss', 'train_rho')}
    expected = {'baseline': {'ce'}, 'kd': {'ce', 'kd'}, 'dkd': {'ce', 'kd'},
                'cakd_official': {'ce', 'kd', 'attn', 'vv', 'feat', 'cls', 'adv', 'd_loss'}}[method]
    assert terms == expected and epoch['val_n'] == 100 and 0 <= epoch['val_top1'] <= 100
    if method == 'kd': assert epoch['train_loss'] == pytest.approx(0.1 * epoch['train_ce'] + 0.9 * epoch['train_kd'],
                                                                   rel=1e-4)
    if method == 'dkd': assert 0 < epoch['train_rho'] < 1                    # its warm-up, stretched to one epoch


def test_cifar_bad_input_is_named(cifar, teacher, tmp_path, capsys):
    def error(*argv):
        assert cli(['--dataset', 'cifar100', '--model', 'resnet18', '--output', tmp_path / 'r', *SMALL, *argv]) == 1
        return capsys.readouterr().err
    assert 'cifar-100-python is missing: --dataset cifar100 reads' in error('--data', tmp_path, '--teacher-weights',
                                                                             teacher / 'teacher.pt')
    assert "its MD5 sum is not torchvision's" in error('--data', cifar / 'data', '--teacher-weights',
                                                       teacher / 'teacher.pt')      # hand-written files, checked
    err = error('--data', cifar / 'data', '--no-data-checksums', '--teacher', 'timm:vit_tiny_patch16_224',
                '--teacher-weights', cifar / 'pretrained.pth', '--teacher-options', json.dumps(TINY_VIT))
    assert 'predicts 7 classes but' in err and 'has 100 classes: fine-tune the teacher' in err
    bad = tmp_path / 'bad' / 'cifar-100-python'
    bad.mkdir(parents=True)
    for f in ('train', 'test', 'meta'): (bad / f).write_bytes(b'not a pickle')
    assert "meta is not a CIFAR batch in torchvision's format" in error('--data', bad.parent, '--no-data-checksums',
                                                                        '--teacher-weights', teacher / 'teacher.pt')


def test_cifar100_notebook_on_two_gloo_processes(cifar, tmp_path):
    "`make cifar100` as the README prints it, with tiny parameters: fine-tune, then a student through torchrun (the "
    "other methods go through the same launch; the CLI test above trains each)."
    from test_experiments import make
    params = dict(data=str(cifar / 'data'), download=False, data_checksums=False, methods=['kd'],
                  seeds=[0], teacher='timm:vit_tiny_patch16_224', teacher_options=TINY_VIT,
                  finetune_from=str(cifar / 'pretrained.pth'), finetune_epochs=1, epochs=1, batch_size=8, amp='none',
                  nproc_per_node=2, workers=0, device='cpu', max_steps_per_epoch=2,
                  master_port=29000 + os.getpid() % 999)
    (tmp_path / 'p.yaml').write_text(json.dumps(params))
    out = tmp_path / 'cifar100'
    r = make('cifar100', out, DATA=cifar / 'data', ARGS=f"-f {tmp_path / 'p.yaml'}")
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    res = json.loads((out / 'results.json').read_text())
    assert set(res['methods']) == {'kd'} and res['params']['seeds'] == [0]
    assert all(len(v['top1']) == 1 and 0 <= v['top1'][0] <= 100 for v in res['methods'].values())
    assert 0 <= res['teacher']['top1'] <= 100 and res['recipe']['lr_milestones'] == [100, 150]
    log = (out / 'kd_seed0' / 'torchrun.log').read_text()
    assert '[rank 1/2]' in log and 'nccl' not in log.lower()                 # two processes, gloo
    assert json.loads((out / 'kd_seed0' / 'config.json').read_text())['teacher_weights'] == str(
        out / 'teacher' / 'teacher.pt')
    for f in ('accuracy.png', 'curves.png', 'results.png', 'cifar100.ipynb'): assert (out / f).stat().st_size > 0


@pytest.mark.parametrize('fmt', ['onnx', 'torchscript'])
def test_export_is_the_plain_student_and_matches_pytorch(cifar, teacher, fmt, tmp_path):
    import torchvision
    from cakd.build import load_state_dict
    run = cifar / 'cakd_official'
    if not (run / 'checkpoint.pt').exists():                                 # the run of the test above
        assert cli(['--method', 'cakd_official', '--dataset', 'cifar100', '--data', cifar / 'data', '--model',
                    'resnet18', '--no-data-checksums', '--teacher-weights', teacher / 'teacher.pt', '--output', run,
                    *SMALL]) == 0
    r = subprocess.run([BIN / 'cakd-export', run, '--format', fmt], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    path = run / f"student_last.{'onnx' if fmt == 'onnx' else 'torchscript.pt'}"
    info = json.loads(Path(f'{path}.json').read_text())
    assert (info['model'], info['input']['shape'], len(info['output']['classes'])) == ('ResNet', ['batch', 3, 32, 32],
                                                                                       100)
    ref = torchvision.models.resnet18(num_classes=100)
    ref.load_state_dict(load_state_dict(run / 'checkpoint.pt'))              # the stock model, no CAKD parts
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad(): want = ref.eval()(x)
    if fmt == 'onnx':
        import onnx
        import onnxruntime as ort
        graph = onnx.load(str(path)).graph
        n = sum(torch.tensor(list(i.dims)).prod().item() for i in graph.initializer)
        assert abs(n - sum(p.numel() for p in ref.parameters())) < 0.01 * n       # the student's weights, no more
        got = torch.from_numpy(ort.InferenceSession(str(path)).run(None, {'image': x.numpy()})[0])
    else: got = torch.jit.load(str(path))(x)
    tolerance = 1e-5 * max(1.0, want.abs().max().item())                    # fp32 reordering, relative to the logits
    assert (got - want).abs().max().item() <= tolerance
    bad = subprocess.run([BIN / 'cakd-export', run, '--weights', 'ema'], capture_output=True, text=True)
    assert bad.returncode == 1 and 'student_ema_last.pt does not exist' in bad.stderr
    assert info['config'] == {'version': CONFIG_VERSION, 'filled': []}
    if fmt == 'torchscript':                            # a run folder of an earlier version: what was filled is said
        old = tmp_path / 'old_run'
        shutil.copytree(run, old)
        cfg = json.loads((old / 'config.json').read_text())
        earlier = {k: v for k, v in cfg.items() if k not in ('version', 'head_lr_factor')}
        (old / 'config.json').write_text(json.dumps(earlier))
        r = subprocess.run([BIN / 'cakd-export', old, '--format', fmt], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert f"{old}: a config version 1 run; filled at their defaults: head_lr_factor" in r.stdout


def test_download_route_fetches_checks_and_trains(tmp_path, monkeypatch, capsys):
    "--download through torchvision's real downloader, from a local HTTP server holding a CIFAR-100-format archive "
    "(torchvision's URL and MD5 sums pointed at it): fetched, its MD5 checked, unpacked, every file checked, trained."
    import functools
    import hashlib
    import http.server
    import tarfile
    import threading
    import torchvision
    src = write_cifar(tmp_path / 'src', 'cifar100', 100, train_per_class=1, val_per_class=1)
    md5 = lambda p: hashlib.md5(p.read_bytes()).hexdigest()
    with tarfile.open(tmp_path / 'cifar-100-python.tar.gz', 'w:gz') as tar:
        tar.add(src / 'cifar-100-python', arcname='cifar-100-python')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    spec, folder = torchvision.datasets.CIFAR100, src / 'cifar-100-python'
    monkeypatch.setattr(spec, 'url', f'http://127.0.0.1:{server.server_port}/cifar-100-python.tar.gz')
    monkeypatch.setattr(spec, 'tgz_md5', md5(tmp_path / 'cifar-100-python.tar.gz'))
    monkeypatch.setattr(spec, 'train_list', [['train', md5(folder / 'train')]])
    monkeypatch.setattr(spec, 'test_list', [['test', md5(folder / 'test')]])
    monkeypatch.setattr(spec, 'meta', {**spec.meta, 'md5': md5(folder / 'meta')})
    try:
        code = cli(['--method', 'baseline', '--dataset', 'cifar100', '--data', tmp_path / 'data', '--download',
                    '--teacher', 'none', '--train-crop-size', '32', '--output', tmp_path / 'run', *SMALL])
    finally: server.shutdown()
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / 'data' / 'cifar-100-python' / 'meta').is_file()
    assert read_records(tmp_path / 'run')[0]['val_n'] == 100
