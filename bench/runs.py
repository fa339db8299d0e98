"""The checks of `bench/gpu_check.py` that train for real: torchrun of cakd-train, the notebooks, the loader."""
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torchvision

import loader
from report import Skip

from cakd.data import write_digits
from cakd.runs import read_records

ROOT = Path(__file__).parents[1]
BIN = Path(sys.executable).parent
TINY_VIT = {'img_size': 32, 'patch_size': 4, 'depth': 2, 'num_classes': 10}   # a random two-block timm ViT
BATCH = 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


CPU_STEPS = 20   # steps per epoch on the CPU (a GPU trains whole epochs)


def train_args(data: Path, out: Path, dev: torch.device, *extra) -> list:
    "cakd_official (logits term off: the teacher is random) on the digits at 32 px, two deterministic epochs."
    cuda = ['--amp', 'bf16', '--channels-last'] if dev.type == 'cuda' else ['--device', 'cpu', '--max-steps-per-epoch',
                                                                            str(CPU_STEPS)]
    return ['--data', str(data), '--output', str(out), '--method', 'cakd_official', '--preset.weights.kd', '0',
            '--preset.ramp', 'none', '--epochs', '2', '--seed', '1', '--deterministic', '--model', 'resnet18',
            '--batch-size', str(BATCH), '--lr', '0.02', '--lr-warmup-epochs', '0', '--crop-scale', '0.5',
            '--auto-augment', 'none', '--random-erase', '0', '--mixup-alpha', '0', '--no-model-ema',
            '--no-ra-sampler', '--workers', '2', '--print-freq', '10', '--teacher', 'timm:vit_tiny_patch16_224',
            '--teacher-weights', 'none', '--teacher-options', json.dumps(TINY_VIT), *cuda, *extra]


def torchrun(args: list, nproc: int, log: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    "`torchrun --nproc_per_node nproc -m cakd.cli args`, its output kept in `log`."
    cmd = [str(BIN / 'torchrun'), f'--nproc_per_node={nproc}', f'--master_port={free_port()}', '-m', 'cakd.cli', *args]
    env = {**os.environ, 'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1'}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(r.stdout + r.stderr)
    return r


def ok_or_raise(r: subprocess.CompletedProcess, log: Path):
    if r.returncode != 0:
        lines = (r.stdout + r.stderr).splitlines()
        errors = [ln for ln in lines if 'error' in ln.lower() and not ln.startswith(('E', ' '))] or lines[-1:]
        raise RuntimeError(f"exit {r.returncode}: {errors[0][:200] if errors else 'no output'} (log: logs/{log.name})")


def max_diff(a: Path, b: Path) -> float:
    sa, sb = (torch.load(p, map_location='cpu', weights_only=True) for p in (a, b))
    return max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa)


def steps_per_epoch(data: Path, dev: torch.device) -> int:
    full = len(list((data / 'train').rglob('*.jpg'))) // BATCH
    return full if dev.type == 'cuda' else min(full, CPU_STEPS)


def one_process(dev, data: Path, work: Path) -> tuple:
    "Two epochs on one process: the accuracy, and the student loading into a stock torchvision model on the CPU."
    r = torchrun(train_args(data, work / 'a', dev), 1, work / 'a.log')
    ok_or_raise(r, work / 'a.log')
    eps = read_records(work / 'a')
    best, n = max(e['val_top1'] for e in eps), eps[-1]['val_n']
    bar = 10 + 3 * 100 * math.sqrt(0.1 * 0.9 / n)    # chance (10 classes) + 3 standard errors of a guesser on n images
    if not best > bar: raise AssertionError(f'best top-1 {best:.1f}% is within chance (10% + 3 s.e. = {bar:.1f}%)')
    ck = torch.load(work / 'a' / 'checkpoint.pt', map_location='cpu', weights_only=True)
    plain = torchvision.models.resnet18(num_classes=10)
    plain.load_state_dict(torch.load(work / 'a' / 'student_last.pt', map_location='cpu', weights_only=True))
    if not torch.isfinite(plain.eval()(torch.zeros(1, 3, 32, 32))).all(): raise FloatingPointError('student output')
    fig = f"best top-1 {best:.1f}% in 2 epochs (chance + 3 s.e.: {bar:.1f}%), checkpoint of epoch {ck['epoch']} " \
          f"loads on the CPU ({len(ck['rng'])} RNG state(s)), student is a stock resnet18"
    return fig, dict(epochs=eps, log=str(work / 'a.log'))


def kill_and_resume(dev, data: Path, work: Path) -> tuple:
    "SIGKILL in the second epoch, resume from the run folder: the student ends equal to the uninterrupted run's."
    crash = steps_per_epoch(data, dev) + 3
    r = torchrun(train_args(data, work / 'b', dev, '--crash-at-step', str(crash)), 1, work / 'b1.log')
    if r.returncode == 0: raise AssertionError(f'--crash-at-step {crash} did not kill the run (log: logs/b1.log)')
    r = torchrun(train_args(data, work / 'b', dev), 1, work / 'b2.log')
    ok_or_raise(r, work / 'b2.log')
    resumed = read_records(work / 'b', 'resume')
    if not resumed: raise AssertionError(f'the second start did not resume (log: logs/b2.log)')
    diff = max_diff(work / 'a' / 'student_last.pt', work / 'b' / 'student_last.pt')
    if diff > 1e-4: raise AssertionError(f'resumed student differs from the uninterrupted one by {diff:.2e}')
    return f"killed at step {crash}, resumed from epoch {resumed[0]['epoch']}: max |dw| {diff:.1e}", dict(diff=diff)


def all_gpus(dev, data: Path, work: Path) -> tuple:
    "One epoch on every GPU with NCCL: every rank reports, validation counts every image once."
    if dev.type != 'cuda': raise Skip('no CUDA')
    n = torch.cuda.device_count()
    if n < 2: raise Skip(f'{n} GPU: NCCL across GPUs needs two or more')
    r = torchrun(train_args(data, work / 'nccl', dev, '--epochs', '1'), n, work / 'nccl.log')
    ok_or_raise(r, work / 'nccl.log')
    missing = [k for k in range(n) if f'[rank {k}/{n}] epoch 1/1: loss ' not in r.stdout]
    if missing: raise AssertionError(f'ranks {missing} reported no epoch')
    (ep,) = read_records(work / 'nccl')
    return f"{n} processes (NCCL), top-1 {ep['val_top1']:.1f}%, val images {ep['val_n']}", dict(epoch=ep)


def torchrun_checks(rep, dev, out: Path):
    "cakd-train for real under torchrun, in a scratch folder beside the report (removed afterwards)."
    work = Path(tempfile.mkdtemp(prefix='torchrun-', dir=out))
    try:
        data = write_digits(work / 'digits')
        rep.run('torchrun 1 process: cakd-train digits 2 epochs', lambda: one_process(dev, data, work))
        rep.run('torchrun 1 process: kill and resume = uninterrupted', lambda: kill_and_resume(dev, data, work))
        rep.run('torchrun all GPUs (NCCL)', lambda: all_gpus(dev, data, work))
    finally:
        keep_logs(work, out)
        shutil.rmtree(work, ignore_errors=True)


def keep_logs(work: Path, out: Path):
    "The runs' logs into OUT/logs, so that a failure's log outlives the scratch folder."
    (out / 'logs').mkdir(exist_ok=True)
    for f in work.glob('*.log'): shutil.copy(f, out / 'logs' / f.name)


def papermill(name: str, out: Path, params: dict):
    import papermill as pm
    out.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(str(ROOT / f'nbs/experiments/{name}.ipynb'), str(out / f'{name}.ipynb'), cwd=str(ROOT),
                        parameters=dict(output=str(out), **params), progress_bar=False)
    return json.loads((out / 'results.json').read_text())


def imagenet_notebook(dev, work: Path) -> tuple:
    "The ImageNet launcher on the digits, one process per GPU: its preflight passes and one short epoch trains."
    needs = dict(device='') if dev.type == 'cuda' else dict(device='cpu')
    n = torch.cuda.device_count() if dev.type == 'cuda' else 1
    res = papermill('imagenet', work / 'imagenet', dict(
        data=str(write_digits(work / 'digits', per_class=40)), nproc_per_node=n, epochs=1, batch_size=16, workers=2,
        student='resnet18', master_port=free_port(), teacher='timm:vit_tiny_patch16_224', teacher_weights='none',
        teacher_options=TINY_VIT, options={'max_steps_per_epoch': 4, 'lr': 0.01, 'preset': {'ramp': None}}, **needs))
    (top1,) = res['methods']['cakd_official']['top1']
    return f"preflight passed, {res['world_size']} process(es), 1 epoch, top-1 {top1:.1f}%", dict(results=res)


def cifar_notebook(dev, work: Path) -> tuple:
    "The CIFAR-100 protocol on a generated CIFAR folder: fine-tune a tiny ViT teacher, then a kd student."
    import timm
    from cakd.datasets import write_cifar
    write_cifar(work / 'cifar', 'cifar100', 100, train_per_class=2, val_per_class=1)
    torch.manual_seed(0)
    vit = {k: v for k, v in TINY_VIT.items() if k != 'num_classes'}
    torch.save({'model': timm.create_model('vit_tiny_patch16_224', num_classes=7, **vit).state_dict()},
               work / 'pretrained.pth')
    res = papermill('cifar100', work / 'cifar100', dict(
        data=str(work / 'cifar'), download=False, data_checksums=False, methods=['kd'], seeds=[0],
        teacher='timm:vit_tiny_patch16_224', teacher_options=vit, finetune_from=str(work / 'pretrained.pth'),
        finetune_epochs=1, epochs=1, batch_size=16, amp='bf16' if dev.type == 'cuda' else 'none', nproc_per_node=1,
        workers=2, device='' if dev.type == 'cuda' else 'cpu', max_steps_per_epoch=4, master_port=free_port()))
    (top1,) = res['methods']['kd']['top1']
    return f"teacher fine-tuned (top-1 {res['teacher']['top1']:.1f}%), kd student top-1 {top1:.1f}%", dict(results=res)


def notebook_checks(rep, dev, out: Path):
    work = Path(tempfile.mkdtemp(prefix='notebooks-', dir=out))
    try:
        rep.run('notebook imagenet (papermill, tiny data)', lambda: imagenet_notebook(dev, work))
        rep.run('notebook cifar100 (papermill, tiny data)', lambda: cifar_notebook(dev, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def best_step(results: dict) -> tuple:
    "The fastest measured cakd_official step: (name, images/s), or (None, None) if none was measured."
    steps = {k: v['images_s'] for k, v in results.items() if k.startswith('step cakd_official')}
    return max(steps.items(), key=lambda kv: kv[1]) if steps else (None, None)


def loader_check(rep, dev, shapes, results: dict):
    "Images/s per worker of each decode path, and the workers per GPU the fastest CAKD step needs."
    images, reps = (8, 1) if shapes.tiny else (48, 3)

    def check():
        ips = loader.measure(images, 224, reps, min(shapes.batch, 64))   # the ImageNet crop, whatever the step's
        fig = ', '.join(f'{k}: {v:.0f}/s' for k, v in ips.items())
        name, step_ips = best_step(results)
        workers = None
        if step_ips:
            fig = f'{loader.workers_line(step_ips, ips, name)}; {fig}'
            workers = {p: loader.workers_needed(step_ips, ips[p]) for p in (loader.PIL_PATH, loader.TENSOR_PATH)}
        return fig, dict(images_s=ips, step=name, step_images_s=step_ips, workers=workers)
    rep.run('loader: images/s per worker, workers per GPU', check)
