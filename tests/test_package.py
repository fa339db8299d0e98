import json
import subprocess
import sys

SNAPSHOT = r'''
import json, sys, torch, torchvision, torch.nn.functional as F
from torch import nn
def snap():
    mods = {'torch': torch, 'torch.nn': nn, 'torch.nn.functional': F, 'torchvision': torchvision,
            'torchvision.models': torchvision.models,
            'torchvision.models.vision_transformer': torchvision.models.vision_transformer,
            'torchvision.models.resnet': torchvision.models.resnet}
    out = {name: sorted(dir(m)) for name, m in mods.items()}
    for cls in (nn.MultiheadAttention, nn.Module, torchvision.models.VisionTransformer, torchvision.models.ResNet,
                torchvision.models.vision_transformer.EncoderBlock):
        out[cls.__name__] = sorted((k, repr(v)) for k, v in vars(cls).items())
    out['F.mha'] = repr(F.multi_head_attention_forward); out['F.sdpa'] = repr(F.scaled_dot_product_attention)
    return out
before = snap()
import cakd, cakd.core, cakd.taps, cakd.pca, cakd.gl, cakd.mrt, cakd.losses, cakd.distiller
vit = torchvision.models.VisionTransformer(32, 4, 2, 4, 64, 128, num_classes=10)
d = cakd.distiller.Distiller(vit, torchvision.models.resnet18(num_classes=10), 'cakd_paper', ramp=None)
d(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), 1)
after = snap()
print(json.dumps({k: before[k] == after[k] for k in before}))
'''


def test_torch_and_torchvision_carry_nothing_added_by_cakd():
    out = subprocess.run([sys.executable, '-c', SNAPSHOT], capture_output=True, text=True, check=True).stdout
    same = json.loads(out.strip().splitlines()[-1])
    assert all(same.values()), [k for k, v in same.items() if not v]


def test_no_literal_devices_or_imagenet_sizes_in_library_code():
    """Code tokens only: no device strings ('cuda', 'mps:0') outside the one place that picks a device, and no
    ImageNet/ViT-B sizes (224, 196, 768, 1000) as numbers. Prose in docstrings and comments may name them."""
    import ast
    import io
    import re
    import tokenize
    from pathlib import Path
    import cakd
    hits = []
    for f in sorted(Path(cakd.__file__).parent.glob('*.py')):
        if f.name == '_modidx.py': continue
        for tok in tokenize.generate_tokens(io.StringIO(f.read_text()).readline):
            if tok.type == tokenize.NUMBER and tok.string in ('224', '196', '768', '1000'):
                hits.append(f'{f.name}:{tok.start[0]}: {tok.line.strip()}')
            if tok.type == tokenize.STRING:
                try: value = ast.literal_eval(tok.string)
                except (ValueError, SyntaxError): continue
                if isinstance(value, str) and re.fullmatch(r'(cuda|mps)(:\d+)?', value) and f.name != 'core.py':
                    hits.append(f'{f.name}:{tok.start[0]}: {tok.line.strip()}')
    assert hits == []


def test_lines_fit_and_imports_are_used():
    "Lines of at most 120 characters and no unused imports in cakd/, tests/, bench/ and tools/ (ruff)."
    from pathlib import Path
    root = Path(__file__).parents[1]
    ruff = Path(sys.executable).parent / 'ruff'
    r = subprocess.run([str(ruff), 'check', '--no-cache', '--select', 'E501,F401,F811,F841', '--line-length', '120',
                        '--exclude', 'cakd/_modidx.py', 'cakd', 'tests', 'bench', 'tools'],
                       cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:]
    long = [f'{f}:{i}' for f in (root / 'tools').iterdir() if f.is_file()
            for i, line in enumerate(f.read_text().splitlines(), 1) if len(line) > 120]
    assert long == []


LAYERS = r'''
import ast, json, pathlib, cakd
root = pathlib.Path(cakd.__file__).parent
edges = {}
for f in sorted(root.glob('*.py')):
    if f.name == '_modidx.py': continue
    names, tree = set(), ast.parse(f.read_text())
    tree.body = [n for n in tree.body if not (isinstance(n, ast.If) and '__main__' in ast.unparse(n.test))]
    for node in ast.walk(tree):                  # imports at import time (a `python -m` entry block is not one)
        if isinstance(node, ast.ImportFrom) and node.level == 1: names.add(node.module.split('.')[0])
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('cakd.'):
            names.add(node.module.split('.')[1])
    edges[f.stem] = sorted(names - {f.stem})
print(json.dumps(edges))
'''


def test_modules_import_downwards_only():
    "No import circle: the modules' imports form a DAG, `config` never reaches `train`, and only `cli` imports it."
    edges = json.loads(subprocess.run([sys.executable, '-c', LAYERS], capture_output=True, text=True,
                                      check=True).stdout)
    reach = {}

    def below(m, seen=()):
        if m in seen: raise AssertionError(f"import circle through {' -> '.join([*seen, m])}")
        if m not in reach: reach[m] = set().union(*[{n} | below(n, (*seen, m)) for n in edges.get(m, [])])
        return reach[m]
    for m in edges: below(m)
    assert 'train' not in reach['config'] and 'cli' not in reach['config']
    assert [m for m, ns in edges.items() if 'cli' in ns] == []                  # nothing imports the command line
    assert {m for m, ns in edges.items() if 'train' in ns} <= {'cli'}
    for m in ('build', 'checkpoint', 'runs', 'export', 'launch', 'viz', 'flags'): assert 'train' not in reach[m], m
    r = subprocess.run([sys.executable, '-c', 'import sys, cakd.config; print("cakd.train" in sys.modules)'],
                       capture_output=True, text=True, check=True)
    assert r.stdout.strip() == 'False'
