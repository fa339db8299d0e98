"""Does a small ViT trained on cluttered digits localise the digit? The gate of issue 29, before any student trains.

Trains a timm ViT from scratch on `cakd.cluttered.ClutteredDigits` (fresh placements every step, AdamW, warm-up then
cosine) and, every `--every` steps, on a fixed validation draw (source digits never seen in training) prints its
top-1, the localisation ratio of its class-token attention at every block (mass in the box over the box's area
share; 1: none), the ink baseline (the same ratio for the image's own ink pooled on the same grid) and whether the
best block passes `cakd.cluttered.localisation_gate` (ratio >= 3 and above the ink). With `--figure` it draws the
maps of the best block over validation images.

    python bench/cluttered_teacher.py --canvas 32 --scale 1 --clutter 4 --steps 3000 --figure runs/gate.png

The figures are exact for a seed on one machine; other machines differ in the last digits (float sums).
"""
from __future__ import annotations

import argparse

import timm
import torch

from cakd.cluttered import ClutteredDigits, cluttered_digits, localisation_gate, show_cluttered, teacher_map
from cakd.taps import TeacherTap
from cakd.twins import train_fresh


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    add = p.add_argument
    add('--canvas', type=int, default=32, help='image side in pixels')
    add('--scale', type=int, default=1, help="the digit's scale (8 * scale px)")
    add('--clutter', type=int, default=4, help='fragments of other digits per image')
    teacher_args(p)
    return p.parse_args(argv)


def teacher_args(p: argparse.ArgumentParser):
    "The teacher's architecture and training options, shared with `twin_teacher.py`."
    add = p.add_argument
    add('--model', default='vit_tiny_patch16_224', help='timm ViT architecture (its sizes from the options below)')
    add('--patch', type=int, default=4, help='patch size')
    add('--dim', type=int, default=96, help='embedding width')
    add('--depth', type=int, default=4, help='blocks')
    add('--heads', type=int, default=3, help='attention heads')
    add('--steps', type=int, default=3000, help='optimisation steps')
    add('--batch', type=int, default=64, help='images per step')
    add('--lr', type=float, default=1e-3, help='AdamW peak learning rate')
    add('--warmup', type=int, default=200, help='warm-up steps')
    add('--seed', type=int, default=0, help='seed of the weights and the training draws')
    add('--val', type=int, default=500, help='validation images (a fixed draw, seed 123)')
    add('--every', type=int, default=500, help='steps between evaluations')
    add('--figure', default=None, help="PNG of the best block's maps over 16 validation images")


def build(a) -> torch.nn.Module:
    "The teacher: one grey channel, ten classes, the sizes asked for."
    return timm.create_model(a.model, pretrained=False, img_size=a.canvas, patch_size=a.patch, in_chans=1,
                             embed_dim=a.dim, depth=a.depth, num_heads=a.heads, num_classes=10)


def block_maps(model, x: torch.Tensor) -> list:
    "The class token's attention over the patches at every block: a list of (N, h, w)."
    maps = []
    for b in range(len(model.blocks)):
        tap = TeacherTap(model, block=b)
        maps.append(teacher_map(tap(x)))
        tap.remove()
    return maps


def evaluate(model, val: dict) -> dict:
    "Top-1, each block's localisation ratio, the ink baseline and the best block's gate."
    model.eval()
    with torch.no_grad():
        x = (val['images'] - 0.5) / 0.5
        top1 = (model(x).argmax(1) == val['labels']).float().mean().item() * 100
        gates = [localisation_gate(m, val['images'], val['boxes']) for m in block_maps(model, x)]
    model.train()
    best = max(range(len(gates)), key=lambda b: gates[b]['ratio'])
    return dict(top1=round(top1, 1), ratio=[round(g['ratio'], 2) for g in gates],
                ink_ratio=round(gates[0]['ink_ratio'], 2), best_block=best, passes=gates[best]['passes'])


def grey(x: torch.Tensor) -> torch.Tensor:
    "The benchmarks' input: one grey channel in [-1, 1]."
    return (x - 0.5) / 0.5


def train(a, model, data, check) -> dict:
    "`cakd.twins.train_fresh` with the options of `teacher_args`, on grey inputs."
    return train_fresh(model, data, a.steps, a.batch, a.lr, a.warmup, seed=a.seed, inputs=grey, check=check,
                       every=a.every)


def figure(model, val: dict, block: int, path: str):
    "The block's maps over the first 16 validation images, boxes drawn."
    model.eval()
    with torch.no_grad(): maps = block_maps(model, (val['images'][:16] - 0.5) / 0.5)[block]
    fig = show_cluttered(val['images'][:16], val['labels'][:16], val['boxes'][:16], maps,
                         title=f"class-token attention of block {block} over validation images")
    fig.savefig(path, dpi=90)


def main(argv=None):
    a = parse(argv)
    torch.manual_seed(a.seed)
    model = build(a)
    val = cluttered_digits(a.val, 'val', seed=123, canvas=a.canvas, scale=a.scale, clutter=a.clutter)
    print(f"{a.model}: {a.depth} blocks, width {a.dim}, {a.heads} heads, patch {a.patch} on a {a.canvas}-px canvas, "
          f"digit {8 * a.scale} px, {a.clutter} fragments; {a.steps} steps of {a.batch}; {torch.get_num_threads()} "
          "threads")
    data = ClutteredDigits('train', length=a.batch, seed=a.seed, canvas=a.canvas, scale=a.scale, clutter=a.clutter)
    last = train(a, model, data, lambda m: evaluate(m, val))
    if a.figure: figure(model, val, last['best_block'], a.figure)
    verdict = 'passes' if last['passes'] else 'does not pass'
    print(f"gate: block {last['best_block']} ratio {max(last['ratio']):.2f} against ink {last['ink_ratio']:.2f} "
          f"(needs >= 3 and above the ink): {verdict}; top-1 {last['top1']:.1f}")


if __name__ == '__main__':
    main()
