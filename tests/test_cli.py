"""`cakd-train --help` without torch: the command's entry point parses before anything heavy is imported."""
import subprocess
import sys
from pathlib import Path

CHECK = '''
import sys
from cakd.cli import cli
try: cli(['--help'])
except SystemExit as e: code = e.code
heavy = sorted(m for m in ('torch', 'torchvision', 'timm', 'numpy') if m in sys.modules)
print('EXIT', code, 'HEAVY', heavy)
'''


def test_help_imports_no_torch():
    r = subprocess.run([sys.executable, '-c', CHECK], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith('EXIT 0 HEAVY []')
    help_text = r.stdout
    for group in ('method and preset', 'student and teacher', 'optimisation and schedule', 'checkpoints, logging'):
        assert group in help_text.lower()
    assert 'recipe defaults each method sets' in help_text and '--crash-at-step' not in help_text
    assert 'run_baseline.sh' not in help_text and '.sh' not in help_text


def test_console_script_points_at_the_light_entry():
    from importlib.metadata import entry_points
    (ep,) = [e for e in entry_points(group='console_scripts') if e.name == 'cakd-train']
    assert ep.value == 'cakd.cli:cli'
    r = subprocess.run([Path(sys.executable).parent / 'cakd-train', '--help'], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.startswith('usage: cakd-train')
