"""Time per training step of baseline, logits KD and CAKD at the ImageNet shapes, measured side by side.

python bench/step.py [--batch 8] [--image-size 224] [--reps 3] [--teacher vit_b_16] [--student resnet50]

Prints, for each method (baseline, logits KD, CAKD `cakd_official` and `cakd_paper`), the full step
(`Distiller.step`: teacher forward, student forward and backward, projectors, the multi-view pass up to the
tapped stage, discriminator step, optimiser steps), then the parts measured on their own, and last the
ratios to logits KD. Random weights: nothing is downloaded.
"""
import argparse

import torch
import torchvision

from cakd.core import default_device
from cakd.distiller import Distiller
from cakd.pca import attention_target

from timing import interleaved  # bench/timing.py, beside this script


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--image-size', type=int, default=224)
    p.add_argument('--reps', type=int, default=3)
    p.add_argument('--teacher', default='vit_b_16')
    p.add_argument('--student', default='resnet50')
    p.add_argument('--classes', type=int, default=1000)
    a = p.parse_args(argv)
    dev = default_device()
    sync = torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)
    torch.manual_seed(0)
    teacher = torchvision.models.get_model(a.teacher, image_size=a.image_size, num_classes=a.classes)
    x = torch.randn(a.batch, 3, a.image_size, a.image_size, device=dev)
    y = torch.randint(0, a.classes, (a.batch,), device=dev)
    runs, dist = {}, {}
    for method in ('baseline', 'logits', 'cakd_official', 'cakd_paper'):
        d = Distiller(teacher, torchvision.models.get_model(a.student, num_classes=a.classes), method, ramp=None)
        d = d.to(dev).setup(lr=1e-3)
        runs[method] = (lambda d=d: d.step(x, y, 5))
        dist[method] = d
    d = dist['cakd_official']
    with torch.no_grad():
        t, (s, _, _) = d.teacher(x), d.model(x, project=False)
    feat, pooled = d.model.align(s.feat), s.pooled

    def student_step():
        s = dist['baseline'].model(x, project=False)[0]
        torch.nn.functional.cross_entropy(s.logits, y).backward()

    def projectors():
        proj = d.head(feat.detach().requires_grad_(), pooled.detach().requires_grad_())
        sum(v.float().pow(2).mean() if torch.is_tensor(v) else sum(u.pow(2).mean() for u in v)
            for v in proj.values()).backward()
    real = attention_target(*t.patch_qkv, 'logits_avg')
    fake = real.clone().requires_grad_()

    def discriminator():
        d.disc_loss((real, fake)).backward(); d.fool_loss((real, fake)).backward()
    parts = {'teacher forward (no grad)': lambda: d.teacher(x), 'student forward+backward': student_step,
             'projectors forward+backward (PCA, GL, cls)': projectors,
             'discriminator (D step + fool loss)': discriminator}
    print(f"device={dev} batch={a.batch} image={a.image_size} teacher={a.teacher} student={a.student} "
          f"threads={torch.get_num_threads()} (median of {a.reps}, methods interleaved)")
    t_runs = interleaved({f'{m} step': f for m, f in runs.items()}, a.reps, sync)
    t_parts = interleaved(parts, a.reps, sync)
    for k, v in {**t_runs, **t_parts}.items(): print(f"{k:45s} {v * 1000:9.1f} ms")
    print(f"logits/baseline = {t_runs['logits step'] / t_runs['baseline step']:.2f}")
    for m in ('cakd_official', 'cakd_paper'):
        print(f"{m}/logits = {t_runs[f'{m} step'] / t_runs['logits step']:.2f}")


if __name__ == '__main__':
    main()
