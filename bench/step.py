"""Time per training step of baseline, logits KD and CAKD at the ImageNet shapes, measured side by side.

python bench/step.py [--batch 8] [--image-size 224] [--reps 3] [--teacher vit_b_16] [--student resnet50]
                     [--amp none|bf16|fp16] [--channels-last] [--compile]

Prints, for each method (baseline, logits KD, CAKD `cakd_official` and `cakd_paper`), the full step
(`Distiller.step`: teacher forward, student forward and backward, projectors, the multi-view pass up to the
tapped stage, discriminator step, optimiser steps), then the parts measured on their own, and last the
ratios to logits KD. Random weights: nothing is downloaded. `bench/gpu_check.py` imports the pieces below.
"""
import argparse
import math

import torch
import torchvision

from cakd.core import default_device
from cakd.distiller import Distiller
from cakd.pca import attention_target

from timing import interleaved  # bench/timing.py, beside this script

METHODS = ('baseline', 'logits', 'cakd_official', 'cakd_paper')


def synchronizer(dev: torch.device):
    "What waits for the device's queued work (CUDA runs asynchronously; the CPU needs nothing)."
    return torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)


def make_batch(batch: int, image_size: int, classes: int, dev: torch.device, channels_last: bool = False) -> tuple:
    "Random images `(batch, 3, size, size)` on `dev` (channels_last if asked) and labels, from a fixed seed."
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, image_size, image_size, generator=g)
    y = torch.randint(0, classes, (batch,), generator=g)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.to(dev).contiguous(memory_format=fmt), y.to(dev)


def build_distiller(teacher, student: str, classes: int, method: str, dev: torch.device, amp: str = 'none',
                    channels_last: bool = False, compile: bool = False, **overrides) -> Distiller:
    "A distiller of `method` with a fresh stock `student`, on `dev`, set up as the trainer does (amp, format)."
    d = Distiller(teacher, torchvision.models.get_model(student, num_classes=classes), method, ramp=None,
                  **overrides).to(dev)
    if channels_last: d.to(memory_format=torch.channels_last)
    d.setup(lr=1e-3, amp=amp)
    if compile: d.compile(student=True, head=True)
    return d


def step_of(d: Distiller, x: torch.Tensor, y: torch.Tensor):
    "One full step at the end of the ramp; returns the step's logged values."
    return lambda: d.step(x, y, 5)


def finite(logs: dict) -> bool:
    "Every logged value of a step is a finite number."
    return all(math.isfinite(v) for v in logs.values())


def parts_of(d: Distiller, baseline: Distiller, x: torch.Tensor, y: torch.Tensor) -> dict:
    "The step's parts, each on its own: teacher forward, student pass, projectors, discriminator."
    with torch.no_grad():
        t, (s, _, _) = d.teacher(x), d.model(x, project=False)
    feat, pooled = d.model.align(s.feat), s.pooled

    def student_step():
        s = baseline.model(x, project=False)[0]
        torch.nn.functional.cross_entropy(s.logits, y).backward()

    def projectors():
        proj = d.head(feat.detach().requires_grad_(), pooled.detach().requires_grad_())
        squares = [v.float().pow(2).mean() if torch.is_tensor(v) else sum(u.pow(2).mean() for u in v)
                   for v in proj.values()]
        sum(squares).backward()

    real = attention_target(*t.patch_qkv, 'logits_avg')
    fake = real.clone().requires_grad_()

    def discriminator():
        d.disc_loss((real, fake)).backward()
        d.fool_loss((real, fake)).backward()

    return {'teacher forward (no grad)': lambda: d.teacher(x), 'student forward+backward': student_step,
            'projectors forward+backward (PCA, GL, cls)': projectors,
            'discriminator (D step + fool loss)': discriminator}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--image-size', type=int, default=224)
    p.add_argument('--reps', type=int, default=3)
    p.add_argument('--teacher', default='vit_b_16')
    p.add_argument('--student', default='resnet50')
    p.add_argument('--classes', type=int, default=1000)
    p.add_argument('--amp', default='none', choices=('none', 'bf16', 'fp16'))
    p.add_argument('--channels-last', action='store_true')
    p.add_argument('--compile', action='store_true', help='torch.compile the student and the head')
    return p.parse_args(argv)


def main(argv=None):
    a = parse(argv)
    dev = default_device()
    sync = synchronizer(dev)
    torch.manual_seed(0)
    teacher = torchvision.models.get_model(a.teacher, image_size=a.image_size, num_classes=a.classes)
    x, y = make_batch(a.batch, a.image_size, a.classes, dev, a.channels_last)
    dist = {m: build_distiller(teacher, a.student, a.classes, m, dev, a.amp, a.channels_last, a.compile)
            for m in METHODS}
    runs = {f'{m} step': step_of(d, x, y) for m, d in dist.items()}
    parts = parts_of(dist['cakd_official'], dist['baseline'], x, y)
    print(f"device={dev} batch={a.batch} image={a.image_size} teacher={a.teacher} student={a.student} amp={a.amp} "
          f"channels_last={a.channels_last} compile={a.compile} threads={torch.get_num_threads()} "
          f"(median of {a.reps}, methods interleaved)")
    t_runs = interleaved(runs, a.reps, sync)
    t_parts = interleaved(parts, a.reps, sync)
    for k, v in {**t_runs, **t_parts}.items():
        print(f"{k:45s} {v * 1000:9.1f} ms")
    print(f"logits/baseline = {t_runs['logits step'] / t_runs['baseline step']:.2f}")
    for m in ('cakd_official', 'cakd_paper'):
        print(f"{m}/logits = {t_runs[f'{m} step'] / t_runs['logits step']:.2f}")


if __name__ == '__main__':
    main()
