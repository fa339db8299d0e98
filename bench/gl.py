"""GL projector speed against the official loop and the one-Linear floor, measured side by side.

python bench/gl.py [--batch 64] [--grid 14] [--in-dim 1024] [--out-dim 768] [--reps 5]

Each line is forward + backward of the same tokens; the last line is the ratio GL / floor.
"""
import argparse

import torch
from torch import nn

from cakd.core import default_device
from cakd.gl import GLProjector, gl_reference

from timing import interleaved  # bench/timing.py, beside this script


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--batch', type=int, default=64)
    p.add_argument('--grid', type=int, default=14, help='token grid side (14 for ViT-B/16 at 224 px)')
    p.add_argument('--in-dim', type=int, default=1024, help='student channels (ResNet-50 layer3)')
    p.add_argument('--out-dim', type=int, default=768, help='teacher width (ViT-B)')
    p.add_argument('--k', type=int, default=4, help='neighbourhood size')
    p.add_argument('--reps', type=int, default=7)
    a = p.parse_args(argv)
    dev = default_device()
    sync = (lambda: torch.cuda.synchronize()) if dev.type == 'cuda' else (lambda: None)
    torch.manual_seed(0)
    n = a.grid * a.grid
    x = torch.randn(a.batch, n, a.in_dim, device=dev, requires_grad=True)
    gl = GLProjector(a.in_dim, a.out_dim, (a.grid, a.grid), a.k).to(dev)
    floor = nn.Linear(a.in_dim, a.out_dim).to(dev)
    w, b = (t.detach().clone().requires_grad_() for t in gl.group_params())  # the loop's own leaf weights

    def step(f):
        def run():
            x.grad = None
            for prm in (gl.weight, gl.bias, floor.weight, floor.bias, w, b): prm.grad = None
            f().sum().backward()
        return run

    rows = {'GL projector (cakd, vectorised)': step(lambda: gl(x)),
            'per-group loop + index assignment (official)': step(lambda: gl_reference(x, w, b, gl.groups)),
            'one shared nn.Linear (floor)': step(lambda: floor(x))}
    print(f"device={dev} batch={a.batch} grid={a.grid}x{a.grid} {a.in_dim}->{a.out_dim} k={a.k} "
          f"groups={gl.weight.shape[0]} threads={torch.get_num_threads()} "
          f"(forward+backward, median of {a.reps}, methods interleaved)")
    t = interleaved(rows, a.reps, sync)
    for name, s in t.items(): print(f"{name:48s} {s * 1000:9.1f} ms")
    fl = t['one shared nn.Linear (floor)']
    print(f"loop/floor = {t['per-group loop + index assignment (official)'] / fl:.2f}")
    print(f"GL/floor = {t['GL projector (cakd, vectorised)'] / fl:.2f}")


if __name__ == '__main__':
    main()
