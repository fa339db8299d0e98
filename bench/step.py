"""Time per training step of baseline, logits KD and CAKD at the ImageNet shapes, measured side by side.

python bench/step.py [--batch 8] [--image-size 224] [--reps 3] [--teacher vit_b_16] [--student resnet50]

Prints, for each method, the full step (`cakd.distiller.train_step`: teacher forward, student forward and
backward, projectors, discriminator step, optimiser steps), then the parts measured on their own, and last
the ratio cakd/logits. Random weights: nothing is downloaded.
"""
import argparse

import torch
import torchvision

from cakd.core import default_device
from cakd.distiller import Distiller, train_step
from cakd.losses import Ramp
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
    runs, parts, dist = {}, {}, {}
    for method in ('baseline', 'logits', 'cakd'):
        d = Distiller(teacher, torchvision.models.get_model(a.student, num_classes=a.classes),
                      'official' if method == 'cakd' else method, ramp=Ramp(0, 1, 0.2)).to(dev)
        opt = torch.optim.SGD(d.student_parameters(), lr=1e-3, momentum=0.9)
        d_opt = torch.optim.SGD(d.disc.parameters(), lr=1e-5, momentum=0.9) if d.disc is not None else None
        runs[method] = (lambda d=d, opt=opt, d_opt=d_opt: train_step(d, x, y, 5, opt, d_opt))
        dist[method] = d
    d = dist['cakd']
    with torch.no_grad():
        t = d.teacher(x); feat = d.tap(x).feat
    def student_step():
        s = dist['baseline'].tap(x); torch.nn.functional.cross_entropy(s.logits, y).backward()
    def projectors():
        proj = d.head(feat.detach().requires_grad_(), torch.randn(a.batch, d.head.cls.in_features, device=dev))
        sum(v.float().pow(2).mean() if torch.is_tensor(v) else sum(u.pow(2).mean() for u in v) for v in proj.values()).backward()
    real = attention_target(*t.patch_qkv, 'logits_avg')
    fake = real.clone().requires_grad_()
    def discriminator():
        d.disc_loss((real, fake)).backward(); d.fool_loss((real, fake)).backward()
    parts = {'teacher forward (no grad)': lambda: d.teacher(x), 'student forward+backward': student_step,
             'projectors forward+backward (PCA, GL, cls)': projectors, 'discriminator (D step + fool loss)': discriminator}
    print(f"device={dev} batch={a.batch} image={a.image_size} teacher={a.teacher} student={a.student} threads={torch.get_num_threads()} "
          f"(median of {a.reps}, methods interleaved)")
    t_runs = interleaved({f'{m} step': f for m, f in runs.items()}, a.reps, sync)
    t_parts = interleaved(parts, a.reps, sync)
    for k, v in {**t_runs, **t_parts}.items(): print(f"{k:45s} {v * 1000:9.1f} ms")
    print(f"logits/baseline = {t_runs['logits step'] / t_runs['baseline step']:.2f}")
    print(f"cakd/logits = {t_runs['cakd step'] / t_runs['logits step']:.2f}")


if __name__ == '__main__':
    main()
