"""`cakd-train --help` without torch: the command's entry point parses before anything heavy is imported."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cakd.flags import parse_config

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


def help_at(columns: int) -> list:
    r = subprocess.run([Path(sys.executable).parent / 'cakd-train', '--help'], capture_output=True, text=True,
                       timeout=60, env={**os.environ, 'COLUMNS': str(columns)})
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


@pytest.mark.parametrize('columns', [80, 120])
def test_help_fits_the_terminal(columns):
    lines = help_at(columns)
    over = [line for line in lines if len(line) > columns]
    assert not over, over                                          # not even the recipe table or the examples
    indent = lambda line: len(line) - len(line.lstrip())
    epilog = next(i for i, line in enumerate(lines) if line.startswith('methods (--method'))
    options = [line for line in lines[:epilog] if line.lstrip().startswith('--') and indent(line) < 32]
    assert len(options) >= 100 and all(indent(line) == 2 for line in options), options[:3]       # two spaces in
    helped = [re.match(r'  (\S+(?: \S+)*)  +(\S)', line) for line in options]   # option and help on one line
    assert {m.start(2) for m in helped if m} == {32}                                          # one help column
    assert lines[0].startswith('usage: cakd-train') and lines[1] == ''                         # a one-line usage
    text = '\n'.join(lines)
    assert '[default: None]' not in text and '[default: ]' not in text and '[default: {}]' not in text
    assert sum(line.startswith('  option ') for line in lines) == (2 if columns == 80 else 1)   # the table in blocks


def parse_error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit:
        parse_config(list(argv))
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) <= 2, err                         # one line and a pointer to --help, no usage dump
    return err


def test_misspelt_flags_name_the_nearest(capsys):
    assert 'unrecognized arguments: --epoch 3 (--epoch: did you mean --epochs?)' in parse_error(capsys, '--epoch', '3')
    err = parse_error(capsys, '--lr-warmup', '0')
    assert 'did you mean --lr-warmup-' in err and '--lr-warmup-epochs' in err and ' or ' in err
    err = parse_error(capsys, '--preset', 'official')
    assert '--method chooses the preset' in err and '--preset.FIELD VALUE' in err
    assert 'did you mean --preset.swap_p' in parse_error(capsys, '--preset.swapp', '0.2')


def test_methods_and_preset_flags_take_any_spelling():
    for spelling in ('CAKD', 'cakd-official', 'Cakd_Official', 'cakd'):
        assert parse_config(['--method', spelling]).method == 'cakd_official'
    cfg = parse_config(['--preset.swap-p', '0.25', '--preset.weights.adv=0.5', '--preset.ramp.w-max', '0.4'])
    assert (cfg.preset.swap_p, cfg.preset.weights['adv'], cfg.preset.ramp.w_max) == (0.25, 0.5, 0.4)
    with pytest.raises(ValueError, match=r"unknown method 'cakd_oficial' \(did you mean cakd_official\?\).*, cakd$"):
        parse_config(['--method', 'cakd_oficial'])


def test_only_close_names_are_suggested(capsys):
    with pytest.raises(ValueError) as err:
        parse_config(['--method', 'fitnet'])
    assert 'did you mean' not in str(err.value) and 'valid values are: baseline' in str(err.value)
    assert '--teacher' not in parse_error(capsys, '--epoch', '3')


def test_a_yaml_syntax_error_is_one_line_naming_file_line_and_column(tmp_path):
    bad = tmp_path / 'run.yaml'
    bad.write_text('method: logits\n  epochs: 7\n')
    r = subprocess.run([Path(sys.executable).parent / 'cakd-train', '--config', str(bad)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0 and r.stdout == ''
    assert r.stderr.strip().splitlines() == [f'cakd-train: error: {bad}:2:9: not valid YAML: mapping values are not '
                                             'allowed here']


def test_student_weights_start_the_student_and_bad_ones_are_one_line(digits, tmp_path):
    import torch
    import torchvision
    start = torchvision.models.resnet18(num_classes=1000)                  # ImageNet's head: 10 classes keep their own
    torch.save(start.state_dict(), tmp_path / 'r18.pt')
    base = [str(Path(sys.executable).parent / 'cakd-train'), '--data', str(digits), '--device', 'cpu', '--model',
            'resnet18', '--method', 'baseline', '--teacher', 'none', '--epochs', '1', '--max-steps-per-epoch', '1',
            '--batch-size', '8', '--workers', '0', '--lr', '0', '--no-model-ema', '--no-ra-sampler',
            '--train-crop-size', '32']
    r = subprocess.run(base + ['--student-weights', str(tmp_path / 'r18.pt'), '--output', str(tmp_path / 'run')],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"student resnet18: starts from {tmp_path / 'r18.pt'}" in r.stdout
    trained = torch.load(tmp_path / 'run' / 'student_last.pt', weights_only=True)
    assert torch.equal(trained['conv1.weight'], start.conv1.weight) and trained['fc.weight'].shape == (10, 512)
    r = subprocess.run(base + ['--student-weights', 'IMAGENET9K', '--output', str(tmp_path / 'bad')],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and not (tmp_path / 'bad').exists()
    assert r.stderr.strip().splitlines()[-1].startswith('cakd-train: error: --student-weights IMAGENET9K: neither a '
                                                        'weights file nor one of resnet18')
