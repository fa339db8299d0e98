import re
import subprocess
import sys
from pathlib import Path

from cakd.runs import read_records as records

ROOT = Path(__file__).parents[1]


def test_readme_python_blocks_run(tmp_path):
    blocks = re.findall(r'```python\n(.*?)```', (ROOT / 'README.md').read_text(), re.S)
    assert blocks
    for code in blocks:
        r = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    assert (tmp_path / 'resnet50_cakd.pt').exists()
    import torch, torchvision
    sd = torch.load(tmp_path / 'resnet50_cakd.pt', weights_only=True)
    torchvision.models.resnet50().load_state_dict(sd, strict=True)


def sh_blocks(lang):
    return re.findall(rf'```{lang}\n(.*?)```', (ROOT / 'README.md').read_text(), re.S)


def test_readme_quick_start_is_two_make_targets():
    assert sh_blocks('sh')[0].split() == ['make', 'reproduce', 'make', 'test']
    assert 'make test' in (ROOT / '.ci' / 'run').read_text()                       # CI runs make test
    assert 'def test_make_reproduce' in (ROOT / 'tests' / 'test_experiments.py').read_text()   # a test runs it


def test_readme_training_smoke_commands_run(tmp_path):
    import os
    (block,) = [b for b in sh_blocks('sh') if 'runs/smoke' in b]
    env = {**os.environ, 'PATH': f"{Path(sys.executable).parent}:{os.environ['PATH']}", 'CAKD_DEVICE': 'cpu'}
    r = subprocess.run(['bash', '-euc', block], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    import torch, torchvision
    sd = torch.load(tmp_path / 'runs/smoke/student_last.pt', weights_only=True)
    torchvision.models.resnet18(num_classes=10).load_state_dict(sd)
    assert (tmp_path / 'runs/smoke/epochs.csv').exists()
    (epoch,) = records(tmp_path / 'runs/smoke')
    assert {'train_attn', 'train_vv', 'train_feat', 'train_cls', 'train_kd', 'train_adv'} <= set(epoch)
    assert epoch['train_attn'] > 0 and epoch['lr'] == 0.01                   # distils, and trains at --lr
    assert re.search(r'distillation weight: 0 until epoch 0\.21 \(step \d+\), rising to 0\.2 at epoch 0\.29 '
                     r'\(step \d+\), of 1 epoch of \d+ steps', r.stdout), r.stdout
    assert 'warning' not in r.stdout + r.stderr


def test_readme_gpu_commands_parse():
    import shlex
    from torch.distributed.run import get_args_parser
    from cakd.flags import parse_config
    (block,) = sh_blocks('bash')
    lines = [l for l in block.splitlines() if l.strip()]
    assert lines[0] == 'make imagenet DATA=/data/imagenet' and len(lines) == 3   # run by test_make_imagenet_as_...
    for line in lines[1:]:
        argv = shlex.split(line)
        assert argv[0] == 'torchrun'
        run = get_args_parser().parse_args(argv[1:])
        assert run.module and run.training_script == 'cakd.cli' and run.nproc_per_node == '8'
        cfg = parse_config(run.training_script_args)
        assert (cfg.method, cfg.preset.name, cfg.epochs, cfg.batch_size, cfg.data) == (
            'cakd_official', 'cakd_official', 120, 32, '/data/imagenet')


def test_every_make_line_of_the_readme_is_run_by_a_test():
    "Each `make <target>` the README shows is a Makefile target that a test runs (or CI: make test)."
    made = {l.split()[1] for b in sh_blocks('sh') + sh_blocks('bash') for l in b.splitlines() if l.startswith('make ')}
    assert {'reproduce', 'test', 'imagenet', 'attention', 'results', 'ablation', 'lab', 'docs'} <= made
    tests = ''.join(p.read_text() for p in (ROOT / 'tests').glob('test_*.py'))
    makefile = (ROOT / 'Makefile').read_text()
    for target in made - {'test'}:
        assert f'\n{target}:' in makefile, target
        assert f"make('{target}'" in tests or f"'make', '{target}'" in tests, target


def test_readme_cifar100_commands_parse():
    "The CIFAR-100 lines: `make cifar100` runs in tests/test_cifar.py; the others parse into the runs they describe."
    import shlex
    from cakd.flags import parse_config
    from cakd.export import build_parser
    (block,) = [b for b in sh_blocks('sh') if 'make cifar100' in b]
    lines = [shlex.split(l) for l in block.splitlines() if l.strip()]
    assert lines[0] == ['make', 'cifar100', 'DATA=data/cifar'] and [l[0] for l in lines[1:]] == [
        'cakd-train', 'cakd-train', 'cakd-export']
    ft, dkd = parse_config(lines[1][1:]), parse_config(lines[2][1:])
    assert (ft.method, ft.dataset, ft.download, ft.epochs, ft.lr, ft.weight_decay, ft.clip_grad_norm) == (
        'finetune', 'cifar100', True, 10, 0.003, 0.0, 1.0)
    assert (dkd.method, dkd.epochs, dkd.batch_size, dkd.lr, dkd.lr_milestones, dkd.weight_decay, dkd.model) == (
        'dkd', 200, 64, 0.1, [100, 150], 1e-4, 'resnet18')
    assert dkd.teacher_weights == f'{ft.output}/teacher.pt'                 # the fine-tune's file, nothing else
    export = build_parser().parse_args(lines[3][1:])
    assert (export.run, export.format) == (dkd.output, 'onnx')


def test_readme_gpu_check_is_the_command_ci_runs():
    (block,) = sh_blocks('console')
    assert block.split() == ['make', 'gpu-check']
    assert 'make gpu-check' in (ROOT / '.ci' / 'run').read_text()              # CI runs it on the CPU
