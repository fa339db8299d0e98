"""Write README.md from nbs/index.ipynb (`make readme`); `--check` fails when README.md is out of date.

The index notebook is converted by nbconvert's Markdown exporter (its cells, in order) and links into
`nbs/` (images) are rewritten to work from the repository root. This does not need Quarto (which
`nbdev_readme` does), so README.md comes out the same on every machine and a test can hold it to the notebook."""
import argparse
import os
import re
import sys
from pathlib import Path

import nbformat
from nbconvert import MarkdownExporter

ROOT = Path(__file__).resolve().parents[1]
NOTE = '<!-- generated from nbs/index.ipynb by `make readme`: edit the notebook, not this file -->'


def relink(m) -> str:
    "A link relative to nbs/ made relative to the repository root (when it names a file that exists)."
    target = m.group(1)
    return f"]({os.path.normpath('nbs/' + target)})" if (ROOT / 'nbs' / target).exists() else m.group(0)


def generate() -> str:
    nb = nbformat.read(ROOT / 'nbs' / 'index.ipynb', as_version=4)
    body, _ = MarkdownExporter().from_notebook_node(nb)
    body = re.sub(r'\]\((?!https?://|#|/)([^)]+)\)', relink, body)
    body = re.sub(r'\n{3,}', '\n\n', body).strip() + '\n'
    title, _, rest = body.partition('\n')
    return f"{title}\n\n{NOTE}\n{rest}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--check', action='store_true', help='fail if README.md differs from what would be written')
    a = ap.parse_args()
    text = generate()
    if a.check:
        if (ROOT / 'README.md').read_text() != text:
            sys.exit("README.md is out of date with nbs/index.ipynb: run `make readme` and commit it")
        print('README.md matches nbs/index.ipynb')
    else:
        (ROOT / 'README.md').write_text(text)
        print('wrote README.md')


if __name__ == '__main__':
    main()
