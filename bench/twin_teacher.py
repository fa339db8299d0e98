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

from cakd.twins import MODES, TwinDigits, block_attention, show_twins, teacher_gate, twin_digits
from cluttered_teacher import build, grey, teacher_args, train


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


def evaluate(model, val: dict, grid: int) -> dict:
    "Top-1, each block's twin and odd ratios (heads averaged), the best head's twin ratio and the gate."
    r = teacher_gate(model, val, grid, inputs=grey)
    return dict(r, top1=round(r['top1'], 1), best_block=r.pop('block'))


def figure(model, val: dict, grid: int, block: int, path: str):
    "Where the first twin looks at the block (heads averaged), over the first 16 validation images."
    model.eval()
    with torch.no_grad():
        blocks, tokens = block_attention(model, grey(val['images'][:16]))
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
