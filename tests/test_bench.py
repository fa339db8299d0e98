"""The benchmarks run (tiny sizes) and print the ratios they exist for; the real figures are in the notes."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def run(script, *args):
    return subprocess.run([sys.executable, str(ROOT / 'bench' / script), *args], capture_output=True, text=True,
                          check=True, cwd=ROOT).stdout.strip().splitlines()


def test_bench_gl_runs_and_prints_ratio():
    lines = run('gl.py', '--batch', '2', '--in-dim', '32', '--out-dim', '16', '--reps', '1')
    assert lines[-1].startswith('GL/floor = ') and float(lines[-1].split('=')[1]) > 0
    assert any('official' in l for l in lines) and any('floor' in l for l in lines)


def test_bench_step_runs_and_prints_ratios():
    lines = run('step.py', '--batch', '2', '--image-size', '96', '--reps', '1', '--student', 'resnet18',
                '--teacher', 'vit_b_16', '--classes', '10')
    assert lines[-1].startswith('cakd_paper/logits = ') and float(lines[-1].split('=')[1]) > 0
    assert lines[-2].startswith('cakd_official/logits = ') and lines[-3].startswith('logits/baseline = ')


def test_bench_help_runs_and_prints_ratio():
    lines = run('help.py', '--reps', '1')
    assert lines[-1].startswith('help/torch-path = ') and float(lines[-1].split('=')[1]) > 0
    assert lines[0].startswith('cakd-train --help') and lines[0].endswith(' s')
