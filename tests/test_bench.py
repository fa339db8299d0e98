"""The benchmarks run (tiny sizes) and print the ratios they exist for; the real figures are in the notes."""
import json
import os
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


def test_gpu_check_on_the_cpu_runs_what_needs_no_cuda_and_skips_the_rest(tmp_path):
    "The GPU check at tiny shapes: the quick groups here (CI runs every group, torchrun included, by make gpu-check)."
    import json
    r = subprocess.run([sys.executable, str(ROOT / 'bench' / 'gpu_check.py'), '--device', 'cpu', '--out', str(tmp_path),
                        '--only', 'environment,step,compile'], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, 'CUDA_VISIBLE_DEVICES': ''}, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rep = json.loads((tmp_path / 'report.json').read_text())
    checks = {c['name']: c for c in rep['checks']}
    assert set(rep) >= {'device', 'seconds', 'counts', 'checks'} and rep['device'] == 'cpu'
    assert all(set(c) == {'name', 'status', 'figure', 'seconds', 'detail'} for c in rep['checks'])
    methods = ('logits', 'baseline', 'cakd_official', 'cakd_paper', 'kd', 'dist', 'ofa')
    for m in methods:
        for fmt in ('', ' channels_last'):
            ran = checks[f'step {m} bf16{fmt}']
            assert ran['status'] == 'ok' and ran['detail']['images_s'] > 0 and 'losses finite' in ran['figure']
            assert checks[f'step {m} fp16{fmt}']['status'] == 'skipped'             # CUDA-only: skipped, not passed
            assert checks[f'step {m} fp16{fmt}']['figure'].startswith('no CUDA')
    assert 'x logits' in checks['step cakd_official none']['figure']
    assert checks['compile cakd_official bf16 channels_last']['status'] == 'skipped'
    assert rep['counts'] == {'ok': 29, 'FAILED': 0, 'skipped': 16}
    assert 'skipped:  step kd fp16' in r.stdout and r.stdout.strip().splitlines()[-1].startswith('29 ok, 0 FAILED')
    md = (tmp_path / 'report.md').read_text()
    assert md.startswith('# cakd gpu-check on cpu') and '| step ofa fp16 channels_last | skipped | no CUDA' in md


def test_loader_bench_prints_each_path_and_the_workers_needed():
    lines = run('loader.py', '--images', '4', '--reps', '1', '--crop', '64', '--batch', '4',
                '--step-images-per-s', '500')
    assert lines[-1].startswith('the loader needs ') and ' workers per GPU to keep up' in lines[-1]
    assert lines[-2].startswith('torchvision.io+v2/PIL = ')
    assert sum(l.endswith(' images/s') for l in lines) == 5                  # two decodes, two pipelines, mixup


def test_cluttered_teacher_gate_prints_each_evaluation_and_the_verdict(tmp_path):
    png = tmp_path / 'gate.png'
    lines = run('cluttered_teacher.py', '--steps', '4', '--every', '2', '--val', '24', '--batch', '8', '--depth', '2',
                '--figure', str(png))
    evals = [json.loads(l) for l in lines if l.startswith('{')]
    assert [e['step'] for e in evals] == [2, 4] and all(len(e['ratio']) == 2 for e in evals)
    assert all(e['ink_ratio'] > 3 and 0 <= e['top1'] <= 100 for e in evals)   # the ink alone localises
    assert lines[-1].startswith('gate: block ') and ('does not pass' in lines[-1]) == (not evals[-1]['passes'])
    assert png.stat().st_size > 10_000


def test_twin_teacher_gate_prints_each_evaluation_and_the_verdict(tmp_path):
    png = tmp_path / 'twins.png'
    lines = run('twin_teacher.py', '--mode', 'copy', '--steps', '4', '--every', '2', '--val', '24', '--batch', '8',
                '--depth', '2', '--figure', str(png))
    assert 'mode copy' in lines[0]
    evals = [json.loads(l) for l in lines if l.startswith('{')]
    assert [e['step'] for e in evals] == [2, 4] and all(len(e['twin_ratio']) == len(e['odd_ratio']) == 2 for e in evals)
    assert all(0.5 < r < 2 for e in evals for r in e['twin_ratio'])         # 4 steps: no relation yet (1: none)
    assert all(h >= t for e in evals for h, t in zip(e['best_head'], e['twin_ratio']))   # the best head >= the mean
    assert lines[-1].startswith('gate: block ') and ('does not pass' in lines[-1]) == (not evals[-1]['passes'])
    assert png.stat().st_size > 10_000
