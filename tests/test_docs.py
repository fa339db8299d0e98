"""The docs site and the notebook tooling, for real: `make docs` (nbconvert here, Quarto where installed),
headless Chromium screenshots of its pages, a JupyterLab server started by `make lab`, and the README
generated from nbs/index.ipynb."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import free_port

ROOT = Path(__file__).parents[1]


def test_readme_is_generated_from_index_notebook():
    r = subprocess.run([sys.executable, 'tools/readme.py', '--check'], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    readme = (ROOT / 'README.md').read_text()
    assert readme.startswith('# cakd\n') and 'generated from nbs/index.ipynb' in readme
    assert '](nbs/images/framework.svg)' in readme and (ROOT / 'nbs/images/framework.svg').exists()


def test_markdown_cells_are_markdown_not_commented_text():
    for nb in sorted((ROOT / 'nbs').rglob('*.ipynb')):
        for cell in json.loads(nb.read_text())['cells']:
            lines = [l for l in ''.join(cell['source']).splitlines() if l.strip()]
            if cell['cell_type'] == 'markdown' and len(lines) > 1:
                assert not all(l == '#' or l.startswith('# ') for l in lines), (nb.name, lines[:2])


def sidebar_notebooks():
    found = []
    def walk(entries):
        for e in entries:
            if isinstance(e, str): found.append(e)
            else: walk(e.get('contents', []))
    walk(yaml.safe_load((ROOT / 'nbs/sidebar.yml').read_text())['website']['sidebar']['contents'])
    return found


def test_sidebar_lists_every_notebook_in_its_sections():
    listed = sidebar_notebooks()
    on_disk = sorted(str(p.relative_to(ROOT / 'nbs')) for p in (ROOT / 'nbs').rglob('*.ipynb')
                     if '.ipynb_checkpoints' not in str(p))
    assert sorted(listed) == on_disk
    contents = yaml.safe_load((ROOT / 'nbs/sidebar.yml').read_text())['website']['sidebar']['contents']
    sections = [e['section'] for e in contents]
    assert sections == ['Tutorial', 'Components', 'Training', 'Experiments']


def chromium():
    for name in ('chromium', 'chromium-browser', 'google-chrome'):
        if shutil.which(name): return shutil.which(name)
    if os.environ.get('CAKD_REQUIRE_BROWSER'): pytest.fail('CAKD_REQUIRE_BROWSER is set but no Chromium is installed')
    pytest.skip('headless Chromium is not installed (apt-get install chromium)')


def screenshot(page: Path, png: Path):
    cmd = [chromium(), '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
           '--no-first-run',
           f'--user-data-dir={tempfile.mkdtemp()}', f'--screenshot={png}', '--window-size=1280,900', page.as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=120)
    assert png.exists(), f'no screenshot of {page}'


def ink(png: Path) -> float:
    "Share of pixels that differ clearly from the page's most common colour."
    from PIL import Image
    im = Image.open(png).convert('L')
    hist = im.histogram()
    bg = max(range(256), key=hist.__getitem__)
    return sum(n for v, n in enumerate(hist) if abs(v - bg) > 40) / (im.width * im.height)


def global_python() -> str:
    "The first python3 on PATH outside this repository's .venv: the machine's, which make must not touch."
    path = os.pathsep.join(d for d in os.environ['PATH'].split(os.pathsep) if not d.startswith(str(ROOT)))
    return shutil.which('python3', path=path)


def spies(folder: Path) -> dict:
    "PATH entries named sudo, pip and pip3 that record any call in `folder/calls` and fail."
    folder.mkdir()
    for name in ('sudo', 'pip', 'pip3'):
        (folder / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {folder}/calls\nexit 1\n')
        (folder / name).chmod(0o755)
    return {**os.environ, 'PATH': f"{folder}{os.pathsep}{os.environ['PATH']}"}


def paragraphs(text: str) -> list:
    "Markdown paragraphs, whitespace collapsed and heading/quote markers dropped."
    out = []
    for p in text.split('\n\n'):
        p = ' '.join(p.split()).lstrip('#> ').strip()
        if p: out.append(p)
    return out


def assert_nothing_dropped(proc: Path):
    "Every paragraph of every notebook's markdown is in its processed copy (front matter included)."
    for nb in sorted((ROOT / 'nbs').rglob('*.ipynb')):
        done = json.loads((proc / nb.relative_to(ROOT / 'nbs')).read_text())
        texts = [''.join(c['source']) for c in done['cells']]
        for t in texts[:1]:                                                     # the front matter, as YAML
            if t.startswith('---'): texts += [str(v) for v in yaml.safe_load(t.strip().strip('-')).values()]
        kept = ' '.join(' '.join(t.split()) for t in texts)
        kept = re.sub(r'\[(`[^`]+`)\]\([^)]*\)', r'\1', kept)               # nbdev links `names` to their docs
        for cell in json.loads(nb.read_text())['cells']:
            if cell['cell_type'] != 'markdown': continue
            for para in paragraphs(''.join(cell['source'])):
                assert para in kept, (nb.name, para[:80])


@pytest.mark.slow
def test_make_docs_builds_every_page_and_chromium_renders_them(tmp_path):
    out = tmp_path / 'site'
    freeze = lambda: subprocess.run([global_python(), '-m', 'pip', 'freeze'], capture_output=True, text=True).stdout
    before = freeze()
    env = spies(tmp_path / 'spies')
    r = subprocess.run(['make', 'docs', f'DOCS_OUT={out}'], cwd=ROOT, capture_output=True, text=True, timeout=900,
                       env=env)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    assert not (tmp_path / 'spies' / 'calls').exists(), (tmp_path / 'spies' / 'calls').read_text()
    assert freeze() == before and 'Quarto is not installed' not in r.stdout   # the machine's Python untouched
    assert_nothing_dropped(ROOT / '_proc')
    pages = json.loads((out / 'pages.json').read_text()) if (out / 'pages.json').exists() else None
    if pages is not None:                                        # the nbconvert site; Quarto writes its own layout
        assert len(pages) == len(sidebar_notebooks())
        assert [p['section'] for p in pages][:1] == ['Tutorial']
        for p in pages: assert (out / p['file']).stat().st_size > 2000, p
    index, pca = out / 'index.html', out / 'pca.html'
    assert 'Cross-Architecture Knowledge Distillation' in index.read_text()
    assert 'Partially cross attention projector' in pca.read_text() and 'PCAProjector' in pca.read_text()
    assert (out / 'images/framework.svg').exists()
    for page in (index, pca):
        png = tmp_path / f'{page.stem}.png'
        screenshot(page, png)
        from PIL import Image
        assert Image.open(png).size == (1280, 900)
        assert ink(png) > 0.02, f'{png} looks blank'


def get(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.read()


@pytest.mark.slow
def test_make_lab_serves_jupyterlab_with_the_project_kernel():
    port, token = free_port(), 'cakd-test-token'
    args = f'LAB_ARGS=--IdentityProvider.token={token} --ServerApp.ip=127.0.0.1'
    proc = subprocess.Popen(['make', 'lab', f'LAB_PORT={port}', args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline, status = time.time() + 120, None
        while time.time() < deadline and proc.poll() is None:
            try:
                status, body = get(f'http://127.0.0.1:{port}/api/status?token={token}')
                break
            except OSError:
                time.sleep(1)
        assert status == 200, proc.stdout.read() if proc.poll() is not None else 'no answer in 120 s'
        assert 'started' in json.loads(body)
        _, specs = get(f'http://127.0.0.1:{port}/api/kernelspecs?token={token}')
        assert 'cakd' in json.loads(specs)['kernelspecs']
        code, page = get(f'http://127.0.0.1:{port}/lab?token={token}')
        assert code == 200 and b'JupyterLab' in page
        with pytest.raises(urllib.error.HTTPError):                 # the API needs the token
            get(f'http://127.0.0.1:{port}/api/kernelspecs')
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode is not None
    with pytest.raises(OSError):                                      # stopped: nothing answers any more
        get(f'http://127.0.0.1:{port}/api/status?token={token}')
