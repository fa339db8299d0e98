import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_readme_python_blocks_run(tmp_path):
    blocks = re.findall(r'```python\n(.*?)```', (ROOT / 'README.md').read_text(), re.S)
    assert blocks
    for code in blocks:
        r = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    assert (tmp_path / 'resnet50_cakd.pt').exists()
    import torch, torchvision
    sd = torch.load(tmp_path / 'resnet50_cakd.pt', weights_only=True)
    torchvision.models.resnet50().load_state_dict(sd, strict=True)


def test_readme_shell_commands_are_make_targets_ci_runs():
    cmds = re.findall(r'```sh\n(.*?)```', (ROOT / 'README.md').read_text(), re.S)
    lines = [l.strip() for c in cmds for l in c.splitlines() if l.strip()]
    assert lines == ['make test']
    assert 'make test' in (ROOT / '.ci' / 'run').read_text()


def test_readme_matches_index_notebook():
    nb = json.loads((ROOT / 'nbs' / 'index.ipynb').read_text())
    md = '\n\n'.join(''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'markdown')
    assert md.strip() == (ROOT / 'README.md').read_text().strip()
