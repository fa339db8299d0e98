"""Rewrap the `__all__` lists that nbdev_export writes into cakd/*.py so that no line passes 120 characters.

nbdev wraps the list itself at 120 characters and then puts `__all__ = ` in front of the first line; this
counts the prefix too. Run after nbdev_export (`make export` and tools/check-sync do).
"""
import ast
import re
import sys
from pathlib import Path
from textwrap import TextWrapper

ALL = re.compile(r"^__all__ = \[.*?\]$", re.S | re.M)
WRAP = TextWrapper(width=120, initial_indent='__all__ = ', subsequent_indent=' ' * 11, break_long_words=False)


def rewrap(text: str) -> str:
    "`text` with its `__all__ = [...]` assignment rewrapped."
    m = ALL.search(text)
    if m is None: return text
    names = ast.literal_eval(m.group(0)[len('__all__ = '):])
    return text[:m.start()] + '\n'.join(WRAP.wrap(str(names))) + text[m.end():]


def main(folder: str = 'cakd') -> int:
    for f in sorted(Path(folder).glob('*.py')):
        if f.name == '_modidx.py': continue
        old = f.read_text()
        new = rewrap(old)
        if new != old: f.write_text(new)
    return 0


if __name__ == '__main__':
    sys.exit(main(*sys.argv[1:]))
