import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cakd.gl import GLProjector, GroupedLinear, gl_reference, group_ids

# The index lists hard-coded in the official code (resnet.py, idx_196 and idx_49): test data only.
OFFICIAL_196 = [
    [0, 1, 2, 3, 14, 15, 16, 17, 28, 29, 30, 31, 42, 43, 44, 45],
    [4, 5, 6, 7, 18, 19, 20, 21, 32, 33, 34, 35, 46, 47, 48, 49],
    [8, 9, 10, 11, 22, 23, 24, 25, 36, 37, 38, 39, 50, 51, 52, 53],
    [12, 13, 26, 27, 40, 41, 54, 55],
    [56, 57, 58, 59, 70, 71, 72, 73, 84, 85, 86, 87, 98, 99, 100, 101],
    [60, 61, 62, 63, 74, 75, 76, 77, 88, 89, 90, 91, 102, 103, 104, 105],
    [64, 65, 66, 67, 78, 79, 80, 81, 92, 93, 94, 95, 106, 107, 108, 109],
    [68, 69, 82, 83, 96, 97, 110, 111],
    [112, 113, 114, 115, 126, 127, 128, 129, 140, 141, 142, 143, 154, 155, 156, 157],
    [116, 117, 118, 119, 130, 131, 132, 133, 144, 145, 146, 147, 158, 159, 160, 161],
    [120, 121, 122, 123, 134, 135, 136, 137, 148, 149, 150, 151, 162, 163, 164, 165],
    [124, 125, 138, 139, 152, 153, 166, 167],
    [168, 169, 170, 171, 182, 183, 184, 185],
    [172, 173, 174, 175, 186, 187, 188, 189],
    [176, 177, 178, 179, 190, 191, 192, 193],
    [180, 181, 194, 195],
]
OFFICIAL_49 = [
    [0, 1, 2, 3, 7, 8, 9, 10, 14, 15, 16, 17, 21, 22, 23, 24],
    [4, 5, 6, 11, 12, 13, 18, 19, 20, 25, 26, 27],
    [28, 29, 30, 31, 35, 36, 37, 38, 42, 43, 44, 45],
    [32, 33, 34, 39, 40, 41, 46, 47, 48],
]


@pytest.mark.parametrize('grid,table', [((14, 14), OFFICIAL_196), ((7, 7), OFFICIAL_49)])
def test_formula_reproduces_official_tables(grid, table):
    g = group_ids(grid, 4)
    assert [sorted((g == i).nonzero().squeeze(1).tolist()) for i in range(len(table))] == table
    assert int(g.max()) + 1 == len(table)


@pytest.mark.parametrize('grid,k', [((14, 14), 4), ((7, 7), 4), ((5, 9), 2), ((1, 1), 4), ((12, 12), 3)])
def test_groups_partition_the_grid(grid, k):
    g = group_ids(grid, k)
    assert g.numel() == grid[0] * grid[1] and g.min() == 0
    counts = torch.bincount(g)
    assert counts.sum() == g.numel() and (counts > 0).all() and counts.max() <= k * k
    # each group is a contiguous k x k (or edge-clipped) block
    rc = torch.stack(torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing='ij'), -1).view(-1, 2)
    for i in range(int(g.max()) + 1):
        cells = rc[g == i]
        assert (cells[:, 0] // k).unique().numel() == 1 and (cells[:, 1] // k).unique().numel() == 1


@pytest.mark.parametrize('grid,k', [((14, 14), 4), ((7, 7), 4), ((3, 10), 4), ((6, 6), 3)])
def test_vectorised_equals_naive_loop(grid, k):
    gl = GLProjector(16, 12, grid, k)
    x = torch.randn(3, grid[0] * grid[1], 16, requires_grad=True)
    y = gl(x)
    ref = gl_reference(x, *gl.group_params(), gl.groups)
    assert torch.allclose(y, ref, atol=1e-5)
    gy = torch.randn_like(y)
    a = torch.autograd.grad(y, [x, gl.weight, gl.bias], gy)
    b = torch.autograd.grad(gl_reference(x, *gl.group_params(), gl.groups), [x, gl.weight, gl.bias], gy)
    for u, v in zip(a, b): assert torch.allclose(u, v, atol=1e-4)


def test_official_sizes_have_sixteen_1024_to_768_layers():
    gl = GLProjector(1024, 768, (14, 14))
    assert gl.weight.shape == (16, 1024, 768) and gl.bias.shape == (16, 768)
    assert sum(p.numel() for p in gl.parameters()) == 16 * (1024 * 768 + 768)     # 12.6 M, as METHOD.md §3.3


def test_gradcheck_double():
    gl = GLProjector(3, 2, (5, 3), k=2).double()
    x = torch.randn(2, 15, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: GroupedLinear.apply(x, w, b, gl.token_order, gl.token_restore, gl.buckets),
                                    (x, gl.weight, gl.bias))


def test_dtype_follows_module_and_autocast():
    gl = GLProjector(8, 4, (4, 4)).to(torch.bfloat16)
    assert gl(torch.randn(2, 16, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16
    gl32 = GLProjector(8, 4, (4, 4))
    x = torch.randn(2, 16, 8, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = gl32(x)
    y.float().sum().backward()
    assert gl32.weight.grad.dtype == torch.float32 and x.grad.dtype == torch.bfloat16


def test_wrong_token_count_is_an_error():
    with pytest.raises(ValueError, match=r'built for grid \(14, 14\) \(196 tokens\) got tokens \(1, 49, 8\)'):
        GLProjector(8, 4, (14, 14))(torch.randn(1, 49, 8))


def test_bench_gl_runs_and_prints_ratio():
    root = Path(__file__).parents[1]
    out = subprocess.run([sys.executable, str(root / 'bench' / 'gl.py'), '--batch', '2', '--in-dim', '32', '--out-dim', '16', '--reps', '1'],
                         capture_output=True, text=True, check=True, cwd=root).stdout
    lines = out.strip().splitlines()
    assert lines[-1].startswith('GL/floor = ') and float(lines[-1].split('=')[1]) > 0
    assert any('official' in l for l in lines) and any('floor' in l for l in lines)
