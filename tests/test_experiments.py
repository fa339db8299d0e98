"""The experiment notebooks: one parameters cell each, and `make reproduce` run for real with tiny parameters."""
import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
EXPERIMENTS = sorted((ROOT / 'nbs' / 'experiments').glob('*.ipynb'))


@pytest.mark.parametrize('nb', EXPERIMENTS, ids=lambda p: p.stem)
def test_exactly_one_parameters_cell_then_derived_values(nb):
    cells = json.loads(nb.read_text())['cells']
    tagged = [i for i, c in enumerate(cells) if 'parameters' in c.get('metadata', {}).get('tags', [])]
    assert len(tagged) == 1
    params = ''.join(cells[tagged[0]]['source'])
    assert all('=' in l and '#' in l for l in params.splitlines() if l.strip()), 'flat, commented assignments'
    assert cells[tagged[0] + 1]['cell_type'] == 'code'                        # derived values come next
    assert not any(c.get('outputs') for c in cells)                           # committed clean


def test_make_reproduce_with_tiny_parameters(tmp_path):
    out = tmp_path / 'reproduce'
    args = '-p student_train_per_class 3 -p teacher_epochs 1 -p student_epochs 1 -y "seeds: [0, 1]"'
    r = subprocess.run(['make', 'reproduce', f'REPRODUCE_OUT={out}', f'REPRODUCE_ARGS={args}'], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    res = json.loads((out / 'results.json').read_text())
    assert 0 <= res['teacher']['top1'] <= 100
    assert set(res['methods']) == {'baseline', 'logits', 'cakd_official', 'cakd_paper'}
    assert all(len(v['top1']) == 2 and all(0 <= a <= 100 for a in v['top1']) for v in res['methods'].values())
    assert res['params']['student_epochs'] == 1 and res['params']['seeds'] == [0, 1] and len(res['git_sha'] or '') in (0, 40)
    for fig in ('accuracy.png', 'curves.png', 'attention.png'):
        assert (out / fig).stat().st_size > 5000
    executed = json.loads((out / 'reproduce.ipynb').read_text())
    assert executed['metadata']['papermill']['parameters']['teacher_epochs'] == 1
