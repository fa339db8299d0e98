"""Does a small ViT trained on "which digit appears twice" attend from each twin to the other? The relational gate
of issue 29, before any student trains.

Trains a timm ViT from scratch on `cakd.twins.TwinDigits` (fresh layouts every step; the training loop of
`cluttered_teacher.py`) and, every `--every` steps, on a fixed validation draw (source digits never seen in training)
prints its top-1 and, at every block, the twin ratio (the mass the twins' queries put on the other twin's cell over
its uniform share; 1: none) beside the odd ratio (the same for the digits that do not match: attention that only
finds ink gives the two alike), heads averaged, and the best single head's twin ratio. The gate
(`cakd.twins.twin_gate`): at the best block, heads averaged, a twin ratio of at least 3 and above the odd ratio.

    python bench/twin_teacher.py --grid 3 --digits 4 --patch 4 --steps 3000 --figure runs/twins.png

The figures are exact for a seed on one machine; other machines differ in the last digits (float sums).
"""
from __future__ import annotations

import argparse

import torch

from cakd.taps import TeacherTap
from cakd.twins import MODES, TwinDigits, patch_attention, show_twins, twin_attention, twin_digits, twin_gate
from cluttered_teacher import build, teacher_args, train


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--grid', type=int, default=3, help='cells a side')
    p.add_argument('--digits', type=int, default=4, help='digits an image: two twins and distinct others')
    p.add_argument('--scale', type=int, default=1, help="a digit's scale (8 * scale px, the cell's side)")
    p.add_argument('--mode', default='class', choices=MODES, help='class: the class that appears twice (counting '
                   'answers it); copy: the one digit shown twice among classes that all appear twice')
    teacher_args(p)
    a = p.parse_args(argv)
    a.canvas = a.grid * 8 * a.scale
    return a


def block_attention(model, x: torch.Tensor) -> list:
    "Patch-to-patch attention at every block, per head: a list of (N, heads, T, T), and the token grid."
    out = []
    for b in range(len(model.blocks)):
        tap = TeacherTap(model, block=b)
        f = tap(x)
        out.append(patch_attention(f, reduce=None))
        tap.remove()
    return out, f.grid


def evaluate(model, val: dict, grid: int) -> dict:
    "Top-1, each block's twin and odd ratios (heads averaged), the best head's twin ratio and the gate."
    model.eval()
    with torch.no_grad():
        x = (val['images'] - 0.5) / 0.5
        top1 = (model(x).argmax(1) == val['labels']).float().mean().item() * 100
        blocks, tokens = block_attention(model, x)
        gates = [twin_gate(a.mean(1), val['cells'], grid, tokens) for a in blocks]
        heads = [max(twin_attention(a[:, h], val['cells'], grid, tokens)['twin_ratio'] for h in range(a.shape[1]))
                 for a in blocks]
    model.train()
    best = max(range(len(gates)), key=lambda b: gates[b]['twin_ratio'])
    return dict(top1=round(top1, 1), twin_ratio=[round(g['twin_ratio'], 2) for g in gates],
                odd_ratio=[round(g['odd_ratio'], 2) for g in gates], best_head=[round(h, 2) for h in heads],
                best_block=best, passes=gates[best]['passes'])


def figure(model, val: dict, grid: int, block: int, path: str):
    "Where the first twin looks at the block (heads averaged), over the first 16 validation images."
    model.eval()
    with torch.no_grad():
        blocks, tokens = block_attention(model, (val['images'][:16] - 0.5) / 0.5)
    fig = show_twins(val['images'][:16], val['labels'][:16], val['cells'][:16], grid, blocks[block].mean(1), tokens,
                     title=f"block {block}: where the first twin's tokens look (twins green, others orange)")
    fig.savefig(path, dpi=90)


def main(argv=None):
    a = parse(argv)
    torch.manual_seed(a.seed)
    model = build(a)
    shape = dict(grid=a.grid, digits=a.digits, scale=a.scale, mode=a.mode)
    val = twin_digits(a.val, 'val', seed=123, **shape)
    print(f"{a.model}: {a.depth} blocks, width {a.dim}, {a.heads} heads, patch {a.patch} on a {a.canvas}-px canvas "
          f"of {a.grid}x{a.grid} cells, {a.digits} digits, mode {a.mode}; {a.steps} steps of {a.batch}; "
          f"{torch.get_num_threads()} threads")
    data = TwinDigits('train', length=a.batch, seed=a.seed, **shape)
    last = train(a, model, data, lambda m: evaluate(m, val, a.grid))
    if a.figure: figure(model, val, a.grid, last['best_block'], a.figure)
    b = last['best_block']
    verdict = 'passes' if last['passes'] else 'does not pass'
    print(f"gate: block {b} twin ratio {last['twin_ratio'][b]:.2f} against odd {last['odd_ratio'][b]:.2f} "
          f"(needs >= 3 and above the odd): {verdict}; top-1 {last['top1']:.1f}")


if __name__ == '__main__':
    main()
