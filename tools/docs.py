"""Build the docs site into _docs/ (or --out).

With Quarto on PATH this is `nbdev_docs`. Without it (Quarto cannot be installed on every machine), the
notebooks are processed by `nbdev_proc_nbs` exactly as for Quarto (show_doc cells, hidden cells, front
matter) and each processed notebook is rendered to HTML by nbconvert, in the sidebar's order, with a
sidebar linking the pages. The site has the same pages and file names as the Quarto one."""
import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbdev.doclinks
import nbformat
import yaml
from nbconvert import HTMLExporter
from nbconvert.preprocessors import TagRemovePreprocessor
from nbdev.config import get_config
from nbdev.quarto import nbdev_sidebar, refresh_quarto_yml
from nbdev.serve import proc_nbs

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def sidebar() -> list:
    "[(section or None, notebook path relative to nbs/)] in the sidebar's order."
    items = []
    def walk(entries, section):
        for e in entries:
            if isinstance(e, str): items.append((section, e))
            else: walk(e.get('contents', []), e.get('section', section))
    walk(yaml.safe_load((ROOT / 'nbs' / 'sidebar.yml').read_text())['website']['sidebar']['contents'], None)
    return items


def front_matter(nb) -> tuple:
    "(front matter dict, notebook without its front-matter cell) of a processed notebook."
    first = nb.cells[0] if nb.cells else None
    if first is not None and first.cell_type == 'raw' and first.source.startswith('---'):
        fm = yaml.safe_load(first.source.strip().strip('-')) or {}
        nb.cells = nb.cells[1:]
        return fm, nb
    return {}, nb


def process():
    """`nbdev_proc_nbs` without its first step: with no Quarto on PATH, that step downloads Quarto with `sudo` and
    runs `pip install -e` with whatever `pip` comes first on PATH (the machine's, under make). The rest is nbdev's own:
    the `_quarto.yml` refresh, the module index, and the processing of every notebook into `_proc/`."""
    os.chdir(ROOT)
    refresh_quarto_yml()
    nbdev.doclinks._build_modidx()
    nbdev_sidebar.__wrapped__(path=get_config().nbs_path)
    proc_nbs(get_config().nbs_path)


DIRECTIVE = re.compile(r'^#\|\s*([\w-]+):\s*(.*)$')
PANDOC_ATTRIBUTES = re.compile(r'(\]\([^)\s]*\))\{[^}]*\}')       # [text](url){target="_blank" style="..."}
DISPLAY_MATH = re.compile(r'\$\$(.+?)\$\$', re.S)
CODE = re.compile(r'(```.*?```|`[^`\n]*`)', re.S)


def directives(src: str) -> tuple:
    "Quarto's cell options (the `#| key: value` lines a cell starts with) and the source without them."
    opts, lines = {}, src.splitlines()
    while lines and DIRECTIVE.match(lines[0]):
        key, value = DIRECTIVE.match(lines.pop(0)).groups()
        opts[key] = yaml.safe_load(value)
    return opts, '\n'.join(lines)


def asis(outputs) -> str:
    "The outputs of a cell as the Markdown Quarto would render for `output: asis`."
    parts = []
    for o in outputs:
        data = o.get('data', {})
        text = data.get('text/markdown') or data.get('text/plain') or o.get('text', '')
        parts.append(''.join(text))
    return '\n\n'.join(parts)


def markdown(text: str) -> str:
    "Pandoc's link attributes dropped and display maths written as MathML, outside code."
    from latex2mathml.converter import convert          # only the fallback needs it: Quarto renders maths itself
    def prose(piece): return DISPLAY_MATH.sub(lambda m: '\n\n' + convert(m[1].strip(), display='block') + '\n\n',
                                              PANDOC_ATTRIBUTES.sub(r'\1', piece))
    return ''.join(p if CODE.fullmatch(p) else prose(p) for p in CODE.split(text))


def as_quarto_shows(nb):
    """The cells of a processed notebook as Quarto shows them: `include: false` cells dropped, `echo: false` inputs
    hidden, `output: asis` outputs rendered as Markdown, `fig-cap` under its figure, options not shown."""
    cells = []
    for c in nb.cells:
        if c.cell_type == 'code':
            opts, c.source = directives(c.source)
            if opts.get('include') is False: continue
            if opts.get('output') == 'asis':
                if opts.get('echo') is not False: cells.append(nbformat.v4.new_code_cell(c.source))
                c = nbformat.v4.new_markdown_cell(asis(c.outputs))
            elif opts.get('echo') is False: c.metadata.setdefault('tags', []).append('echo-false')
            if 'fig-cap' in opts: cells += [c, nbformat.v4.new_markdown_cell(f"*{opts['fig-cap']}*")]; continue
        if c.cell_type == 'markdown': c.source = markdown(c.source)
        cells.append(c)
    nb.cells = cells
    return nb


def exporter() -> HTMLExporter:
    "nbconvert's lab template without prompts, with `echo-false` inputs removed."
    e = HTMLExporter(template_name='lab', exclude_input_prompt=True, exclude_output_prompt=True)
    e.register_preprocessor(TagRemovePreprocessor(remove_input_tags={'echo-false'}, enabled=True), enabled=True)
    return e


def offline(page: str) -> str:
    """The page without the MathJax loader and the remote scripts nbconvert adds (maths is MathML already, and no
    widget needs require.js): the page fetches nothing."""
    page = re.sub(r'<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->', '', page, flags=re.S)
    return re.sub(r'<script[^>]*\ssrc="https?://[^"]*"[^>]*>\s*</script>', '', page)


def render(out: Path):
    proc = ROOT / '_proc'
    process()
    pages = []
    for section, rel in sidebar():
        nb = nbformat.read(proc / rel, as_version=4)
        fm, nb = front_matter(nb)
        title = str(fm.get('title', Path(rel).stem)).lstrip('# ').strip()
        target = Path(rel).parent / fm.get('output-file', Path(rel).stem + '.html')
        head = f"# {title}\n\n" + (f"> {fm['description']}\n" if fm.get('description') else '')
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(head))
        pages.append((section, title, target, as_quarto_shows(nb)))
    out.mkdir(parents=True, exist_ok=True)
    html_exporter = exporter()
    for section, title, target, nb in pages:
        depth = len(target.parts) - 1
        up = '../' * depth
        nav, last = ['<nav class="cakd-sidebar"><a class="cakd-home" href="%sindex.html">cakd</a>' % up], None
        for s, t, tg, _ in pages:
            if s != last and s: nav.append(f'<div class="cakd-section">{html.escape(s)}</div>')
            last = s
            cls = ' class="active"' if tg == target else ''
            nav.append(f'<a{cls} href="{up}{tg.as_posix()}">{html.escape(t)}</a>')
        nav.append('</nav>')
        body, _ = html_exporter.from_notebook_node(nb, resources={'metadata': {'name': title}})
        body = offline(body)
        style = f'<link rel="stylesheet" href="{up}styles.css"><link rel="stylesheet" href="{up}site.css">'
        body = body.replace('</head>', style + '</head>', 1)
        body = re.sub(r'(<body[^>]*>)', lambda m: m.group(1) + ''.join(nav) + '<main class="cakd-main">', body, count=1)
        body = body.replace('</body>', '</main></body>', 1)
        (out / target).parent.mkdir(parents=True, exist_ok=True)
        (out / target).write_text(body)
    for extra in ('styles.css',):
        shutil.copy(ROOT / 'nbs' / extra, out / extra)
    (out / 'site.css').write_text(SITE_CSS)
    if (ROOT / 'nbs' / 'images').exists():
        shutil.copytree(ROOT / 'nbs' / 'images', out / 'images', dirs_exist_ok=True)
    listing = [{'section': s, 'title': t, 'file': tg.as_posix()} for s, t, tg, _ in pages]
    (out / 'pages.json').write_text(json.dumps(listing, indent=1))
    print(f"{len(pages)} pages in {out}")


SITE_CSS = """
body { margin: 0; }
.cakd-sidebar { position: fixed; top: 0; left: 0; bottom: 0; width: 230px; overflow-y: auto; padding: 16px 12px;
  background: #f7f7f9; border-right: 1px solid #ddd; font: 14px/1.5 system-ui, sans-serif; }
.cakd-sidebar a { display: block; color: #2c3e50; text-decoration: none; padding: 2px 6px; border-radius: 4px; }
.cakd-sidebar a.active { background: #2780e3; color: #fff; }
.cakd-home { font-weight: bold; font-size: 18px; margin-bottom: 8px; }
.cakd-section { margin-top: 12px; font-weight: 600; color: #666; text-transform: uppercase; font-size: 12px; }
.cakd-main { margin-left: 260px; max-width: 1000px; padding: 8px 24px; }
.cakd-main pre { white-space: pre-wrap; overflow-wrap: anywhere; }
math[display="block"] { margin: 0.8em 0; font-size: 1.1em; }
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--out', default=str(ROOT / '_docs'), help='output folder (default: _docs)')
    ap.add_argument('--no-quarto', action='store_true', help='render with nbconvert even when Quarto is installed')
    a = ap.parse_args()
    if shutil.which('quarto') and not a.no_quarto:
        subprocess.run([str(BIN / 'nbdev_docs')], cwd=ROOT, check=True)
        if Path(a.out).resolve() != (ROOT / '_docs').resolve():
            shutil.copytree(ROOT / '_docs', a.out, dirs_exist_ok=True)
    else:
        render(Path(a.out))


if __name__ == '__main__':
    main()
