"""How long `cakd-train --help` takes, against `python -m cakd.cli --help` (which imports torch), side by side.

python bench/help.py [--reps 5]

Each line is the median wall time of one command in a fresh process; the last line is the ratio of the two.
"""
import argparse
import subprocess
import sys
from pathlib import Path

from timing import interleaved  # bench/timing.py, beside this script


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--reps', type=int, default=5)
    a = p.parse_args(argv)
    commands = {'cakd-train --help': [str(Path(sys.executable).parent / 'cakd-train'), '--help'],
                'python -m cakd.cli --help': [sys.executable, '-m', 'cakd.cli', '--help']}
    run = lambda cmd: subprocess.run(cmd, check=True, capture_output=True)
    t = interleaved({name: (lambda c=cmd: run(c)) for name, cmd in commands.items()}, a.reps, lambda: None)
    for name, s in t.items(): print(f'{name:30s} {s:.3f} s')
    print(f"help/torch-path = {t['cakd-train --help'] / t['python -m cakd.cli --help']:.3f}")


if __name__ == '__main__':
    main()
