"""The training engine, run for real: the `cakd-train` console script and `torchrun` with gloo on the CPU,
on JPEG ImageFolder trees of real handwritten digits written by the tests."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torchvision

from dataclasses import fields

from cakd.config import TrainConfig
from cakd.flags import parse_config
from cakd.checkpoint import hold_folder, read_checkpoint

BIN = Path(sys.executable).parent
TEACHER = ['--teacher', 'timm:vit_tiny_patch16_224', '--teacher-weights', 'none',
           '--teacher-options', '{"img_size": 32, "patch_size": 4, "num_classes": 10}']
SMALL = ['--device', 'cpu', '--model', 'resnet18', '--batch-size', '8', '--lr', '0.01', '--workers', '0',
         '--print-freq', '5', *TEACHER]
ENV = {**os.environ, 'CAKD_DEVICE': 'cpu', 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}

from conftest import free_port


def cakd_train(*args, timeout=300):
    return subprocess.run([str(BIN / 'cakd-train'), *args], capture_output=True, text=True, env=ENV, timeout=timeout)


def torchrun(*args, nproc=2, timeout=300):
    cmd = [str(BIN / 'torchrun'), f'--nproc_per_node={nproc}', f'--master_port={free_port()}', '-m', 'cakd.cli',
           *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)


from cakd.runs import read_records as records


@pytest.mark.parametrize('method', ['logits', 'cakd_official', 'cakd_paper', 'dist', 'ofa'])   # baseline: the same
def test_torchrun_two_processes_gloo_one_epoch(digits, tmp_path, method):
    out = tmp_path / method
    transfer = ['--unlabeled', str(digits / 'train')] if method == 'logits' else []   # sharded (bf16: below)
    r = torchrun('--method', method, '--data', str(digits), '--output', str(out), '--epochs', '1', *SMALL, *transfer,
                 *(['--preset.ramp', 'none'] if method.startswith('cakd') else []))
    assert r.returncode == 0, r.stderr[-3000:]
    for rank in (0, 1): assert f'[rank {rank}/2] epoch 1/1: loss ' in r.stdout
    (ep,) = records(out)
    assert ep['val_n'] == 20 and 0 <= ep['val_top1'] <= 100                 # every val image counted once
    assert 0 <= ep['val_agree'] <= 100 and ep['val_kl'] >= 0                # fidelity to the teacher
    expected = {'baseline': {'train_ce'}, 'logits': {'train_ce', 'train_kd'},
                'cakd_official': {'train_ce', 'train_kd', 'train_attn', 'train_vv', 'train_feat', 'train_cls',
                                  'train_adv', 'train_d_loss'},
                'cakd_paper': {'train_ce', 'train_attn', 'train_vv', 'train_feat', 'train_adv', 'train_d_loss'},
                'dist': {'train_ce', 'train_kd'}, 'ofa': {'train_ce', 'train_kd', 'train_ofa'}}[method]
    assert expected <= {k for k in ep if k.startswith('train_')}
    ck = read_checkpoint(out / 'checkpoint.pt')
    assert ck['epoch'] == 1 and ck['config']['method'] == method and len(ck['rng']) == 2
    plain = torchvision.models.resnet18(num_classes=10)
    plain.load_state_dict(torch.load(out / 'student_last.pt', weights_only=True))   # a stock torchvision model
    assert (out / 'epochs.csv').read_text().splitlines()[0].startswith('event,epoch,step,lr')


def run_args(digits, out, *extra):
    return ['--data', str(digits), '--output', str(out), '--epochs', '2', '--deterministic', '--seed', '1',
            '--max-steps-per-epoch', '4', *SMALL, '--preset.ramp', 'none', *extra]


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(digits, tmp_path):
    a = cakd_train(*run_args(digits, tmp_path / 'a'))
    assert a.returncode == 0, a.stderr[-3000:]
    b = cakd_train(*run_args(digits, tmp_path / 'b', '--crash-at-step', '6'))    # dies in the second epoch
    assert b.returncode == -signal.SIGKILL
    assert torch.load(tmp_path / 'b' / 'checkpoint.pt', weights_only=True)['epoch'] == 1
    b = cakd_train(*run_args(digits, tmp_path / 'b'))                             # auto-resume from the run folder
    assert b.returncode == 0, b.stderr[-3000:]
    assert records(tmp_path / 'b', 'resume')[0]['epoch'] == 1
    sa = torch.load(tmp_path / 'a' / 'student_last.pt', weights_only=True)
    sb = torch.load(tmp_path / 'b' / 'student_last.pt', weights_only=True)
    assert max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa) <= 1e-6
    ca = torch.load(tmp_path / 'a' / 'checkpoint.pt', weights_only=True)
    cb = torch.load(tmp_path / 'b' / 'checkpoint.pt', weights_only=True)
    assert {k.split('.')[0] for k in ca['distiller']} == {'student', 'head', 'disc'}
    assert all(torch.allclose(v.double(), cb['distiller'][k].double(), atol=1e-6) for k, v in ca['distiller'].items())
    assert ca['step'] == cb['step'] == 8


def epoch_rows(out):
    "The epoch records of a run: (epoch, train_loss, train_ce) per epoch, in order."
    return [(r['epoch'], r['train_loss'], r['train_ce']) for r in records(out)]


def test_save_minutes_checkpoints_within_the_epoch_so_a_kill_loses_little(digits, tmp_path):
    a = cakd_train(*run_args(digits, tmp_path / 'a'))
    assert a.returncode == 0, a.stderr[-3000:]
    b = cakd_train(*run_args(digits, tmp_path / 'b', '--save-minutes', '0', '--crash-at-step', '3'))
    assert b.returncode == -signal.SIGKILL                                # killed in the first epoch's third step
    ck = torch.load(tmp_path / 'b' / 'checkpoint.pt', weights_only=True)
    assert (ck['epoch'], ck['batches_done'], ck['step']) == (0, 2, 2)     # the step before the kill is kept
    b = cakd_train(*run_args(digits, tmp_path / 'b', '--save-minutes', '0'))
    assert b.returncode == 0, b.stderr[-3000:]
    assert records(tmp_path / 'b', 'resume')[0]['step'] == 2
    assert all(abs(x - y) <= 1e-6 for u, v in zip(epoch_rows(tmp_path / 'a'), epoch_rows(tmp_path / 'b'))
               for x, y in zip(u, v))
    sa = torch.load(tmp_path / 'a' / 'student_last.pt', weights_only=True)
    sb = torch.load(tmp_path / 'b' / 'student_last.pt', weights_only=True)
    assert max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa) <= 1e-6


@pytest.mark.parametrize('stop_at', [4, 6], ids=['last-batch', 'mid-epoch'])
def test_a_stop_at_any_batch_resumes_into_the_same_epoch_records_and_weights(digits, tmp_path, stop_at):
    a = cakd_train(*run_args(digits, tmp_path / 'a'))                     # 2 epochs of 4 steps, uninterrupted
    assert a.returncode == 0, a.stderr[-3000:]
    b = cakd_train(*run_args(digits, tmp_path / 'b', '--stop-at-step', str(stop_at)))
    assert b.returncode == 128 + signal.SIGTERM, b.stderr[-3000:]
    ck = torch.load(tmp_path / 'b' / 'checkpoint.pt', weights_only=True)
    assert (ck['epoch'], ck['batches_done']) == {4: (0, 4), 6: (1, 2)}[stop_at]     # the last batch: not closed
    b = cakd_train(*run_args(digits, tmp_path / 'b'))
    assert b.returncode == 0, b.stderr[-3000:]
    assert 'lr_scheduler.step()' not in b.stderr and 'nan' not in b.stdout
    ra, rb = epoch_rows(tmp_path / 'a'), epoch_rows(tmp_path / 'b')
    assert [r[0] for r in rb] == [0, 1]                                   # each epoch closes once
    assert all(abs(x - y) <= 1e-6 for u, v in zip(ra, rb) for x, y in zip(u[1:], v[1:])), (ra, rb)
    sa = torch.load(tmp_path / 'a' / 'student_last.pt', weights_only=True)
    sb = torch.load(tmp_path / 'b' / 'student_last.pt', weights_only=True)
    assert max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa) <= 1e-6
    rows = list(csv.DictReader((tmp_path / 'b' / 'epochs.csv').open()))
    assert len(rows) == 2 and all(r['train_loss'] and r['train_ce'] for r in rows), rows


def test_sigterm_leaves_a_loadable_checkpoint_and_resumes(digits, tmp_path):
    out = tmp_path / 'run'
    args = ['--data', str(digits), '--output', str(out), '--epochs', '2', '--max-steps-per-epoch', '40', *SMALL,
            '--method', 'logits']
    p = subprocess.Popen([str(BIN / 'cakd-train'), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=ENV)
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / 'log.jsonl').exists() and '"step"' in (out / 'log.jsonl').read_text()):
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert 'stopped by signal 15' in stdout
    ck = torch.load(out / 'checkpoint.pt', weights_only=True)
    assert ck['step'] >= 5 and (ck['batches_done'] > 0 or ck['epoch'] > 0)
    assert not list(out.glob('.checkpoint.pt.tmp*'))                              # no half-written file left
    r = cakd_train(*args)                                                      # the same run, continued
    assert r.returncode == 0, r.stderr[-2000:]
    assert records(out, 'resume')[0]['step'] == ck['step'] and records(out)[-1]['epoch'] == 1


def test_a_rerun_waits_for_the_run_still_stopping_in_its_folder(digits, tmp_path):
    out = tmp_path / 'run'
    out.mkdir()
    held = hold_folder(out)                              # this process: a run still writing its stop checkpoint
    temp = out / '.checkpoint.pt.tmp99999'
    temp.write_bytes(b'half of a checkpoint')            # its save under way
    args = ['--data', str(digits), '--output', str(out), '--epochs', '1', '--max-steps-per-epoch', '2', *SMALL]
    p = subprocess.Popen([str(BIN / 'cakd-train'), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env=ENV)
    seen = []
    for line in p.stdout:                                # the rerun, started at once, says it waits
        seen.append(line)
        if f'in use by cakd-train pid {os.getpid()}' in line: break
    time.sleep(1.0)
    assert p.poll() is None and temp.exists(), ''.join(seen)   # it touches nothing while the folder is held
    held.close()                                         # the stopping run ends
    rest, _ = p.communicate(timeout=300)
    assert p.returncode == 0, rest[-3000:]
    assert not temp.exists() and records(out)[-1]['epoch'] == 0


def test_non_finite_loss_stops_with_step_and_term_and_keeps_last_checkpoint(digits, tmp_path, fail):
    out = tmp_path / 'nan'
    err = fail('--data', digits, '--output', out, '--epochs', 2, '--max-steps-per-epoch', 3, *SMALL,
               '--method', 'logits',
               '--preset-options', '{"weights": {"kd": 1e39}, "ramp": {"start": 0.9, "length": 0.01, "w_max": 1}}')
    assert 'non-finite loss' in err and 'epoch 1, step 4' in err and "'loss'" in err
    assert torch.load(out / 'checkpoint.pt', weights_only=True)['epoch'] == 1      # epoch 0's checkpoint is intact


@pytest.fixture
def main_in_process(capsys):
    "`cakd-train` run in this process (the same entry point, without the interpreter start-up)."
    from cakd.cli import main
    def run(*args):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err
    return run


@pytest.fixture
def fail(main_in_process):
    def run(*args):
        code, out, err = main_in_process(*args)
        assert code == 1, (code, err[-2000:])
        return err
    return run


def test_bad_folders_are_named(digits, tmp_path, fail):
    shutil.copytree(digits / 'train', tmp_path / 'only_train' / 'train')
    assert f"{tmp_path / 'only_train' / 'val'} is missing" in fail('--data', str(tmp_path / 'only_train'), *SMALL)
    bad = tmp_path / 'empty_class'
    shutil.copytree(digits, bad)
    (bad / 'train' / 'x').mkdir()
    err = fail('--data', str(bad), *SMALL)
    assert 'class folder(s) with no images' in err and str(bad / 'train' / 'x') in err


def test_corrupt_image_is_named_or_skipped_and_counted(digits, tmp_path, fail, main_in_process):
    data = tmp_path / 'corrupt'
    shutil.copytree(digits, data)
    broken = data / 'train' / '4' / 'zz_broken.jpg'
    broken.write_bytes(b'\xff\xd8 this is not a jpeg')
    args = ['--data', str(data), '--epochs', '1', *SMALL, '--method', 'baseline', '--batch-size', '4', '--teacher',
            'none', '--train-crop-size', '32', '--val-resize', 'official']      # no teacher: the data path alone
    assert f'cannot read image {broken}' in fail(*args, '--output', str(tmp_path / 'r1'))
    code, _, err = main_in_process(*args, '--output', str(tmp_path / 'r2'), '--skip-bad-images')
    assert code == 0, err[-2000:]
    assert records(tmp_path / 'r2')[0]['skipped_images'] == 1


def test_class_count_mismatch_and_foreign_checkpoint(digits, tmp_path, fail, main_in_process):
    t1000 = ['--teacher', 'timm:vit_tiny_patch16_224', '--teacher-weights', 'none',
             '--teacher-options', '{"img_size": 32, "patch_size": 4}']
    err = fail('--data', str(digits), '--output', str(tmp_path / 'm'), *SMALL, *t1000)
    assert f'the teacher timm:vit_tiny_patch16_224 predicts 1000 classes but {digits} has 10 classes' in err
    assert not (tmp_path / 'm').exists()                                      # refused before anything was made
    assert '--class-map [t0,t1,...]' in err and 'class_map=' not in err        # flags, not Python
    ignore = ['--data', digits, *SMALL[:-len(TEACHER)], *t1000, '--class-map', 'ignore', '--epochs', 1,
              '--max-steps-per-epoch', 2, '--preset.ramp', 'none', '--diagnostics', 0]
    err = fail(*ignore, '--output', tmp_path / 'i')
    assert 'add --preset.weights.kd 0' in err and 'weights={' not in err and not (tmp_path / 'i').exists()
    code, out, err = main_in_process(*ignore, '--output', tmp_path / 'i', '--preset.weights.kd', 0, '--check-teacher')
    assert code == 0, err[-2000:]                                              # the epoch's end: no 1000-vs-10 crash
    assert 'the teacher predicts 1000 classes and the data has 10 (--class-map ignore)' in out
    (ep,) = records(tmp_path / 'i')
    assert ep['val_n'] == 20 and 'val_agree' not in ep and 'val_kl' not in ep and ep['train_attn'] > 0
    code, out, err = main_in_process(*ignore[:-10], '--class-map', json.dumps(list(range(10))), '--epochs', 1,
                                     '--max-steps-per-epoch', 1, '--preset.ramp', 'none', '--output', tmp_path / 'j')
    assert code == 0, err[-2000:]                                              # an inline class map
    assert 0 <= records(tmp_path / 'j')[0]['val_agree'] <= 100
    out = tmp_path / 'c'
    args = ['--data', digits, '--output', out, '--epochs', 1, '--max-steps-per-epoch', 1, *SMALL,
            '--method', 'baseline']
    assert main_in_process(*args)[0] == 0
    epochs_logged = len(records(out))
    code, again, _ = main_in_process(*args)                                   # identical: the finished run is reused
    assert code == 0 and len(records(out)) == epochs_logged
    assert again.strip() == f"run already complete (1/1 epochs) in {out}; choose another --output to train again"
    err = fail('--data', str(digits), '--output', str(out), '--epochs', '2', *SMALL, '--method', 'logits')
    assert f"checkpoint {out / 'checkpoint.pt'} was written by another configuration (" in err
    assert "epochs: checkpoint 1, now 2" in err and "method: checkpoint 'baseline', now 'logits'" in err
    assert ("a resume continues a run only with every setting that shapes it unchanged: pass another --output for a "
            "new run (this one stays as it is), or --resume never to overwrite it") in err
    err = fail('--data', str(digits), '--output', str(out), *[str(a) for a in args[4:]], '--epochs', '3')
    assert "(epochs: checkpoint 1, now 3" in err and '--resume never' not in err      # longer: its weights, anew
    assert f"to train it longer, start a new run from its student: --student-weights {out / 'checkpoint.pt'}" in err
    err = fail('--data', str(digits), '--output', str(out), *[str(a) for a in args[4:]], '--lr', '0.5')
    assert 'another configuration (lr: checkpoint 0.01, now 0.5)' in err     # a finished run with another lr
    # --resume takes a run folder for its checkpoint.pt; weights or a missing folder are refused in one line,
    # and the refused run leaves no folder behind
    new = [str(a) for a in args[2:]]
    code, again, _ = main_in_process('--data', digits, '--output', tmp_path / 'c2', '--resume', out, *new[2:])
    assert code == 0 and f'run already complete (1/1 epochs) in {out};' in again        # 1/1 done: nothing to do
    weights = str(out / 'student_last.pt')
    err = fail('--data', str(digits), '--output', str(tmp_path / 'c3'), '--resume', weights, *new[2:])
    assert "student_last.pt: this file is a model's weights (a state dict), not a cakd-train checkpoint" in err
    assert '--resume never' not in err and not (tmp_path / 'c3').exists()
    err = fail('--data', str(digits), '--output', str(tmp_path / 'c4'), '--resume', str(tmp_path), *new[2:])
    assert f"--resume {tmp_path}: the folder holds no checkpoint.pt" in err and not (tmp_path / 'c4').exists()


class Evil:
    "A pickle that would run a shell command when loaded without weights_only."
    def __init__(self, mark): self.mark = mark
    def __reduce__(self): return (os.system, (f'touch {self.mark}',))


def test_checkpoint_that_would_run_code_is_refused_in_one_line(digits, tmp_path, fail):
    mark, evil = tmp_path / 'pwned', tmp_path / 'evil.pt'
    torch.save({'distiller': Evil(mark)}, evil)
    run = tmp_path / 'run'
    run.mkdir()
    shutil.copy(evil, run / 'checkpoint.pt')
    base = ['--data', str(digits), '--epochs', '1', *SMALL]
    for args, path in [(['--output', str(run)], run / 'checkpoint.pt'),
                       (['--output', str(tmp_path / 'b'), '--resume', str(evil)], evil),
                       (['--output', str(tmp_path / 'c'), '--teacher-weights', str(evil)], evil)]:
        err = fail(*base, *args)
        (line,) = [l for l in err.splitlines() if 'error' in l.lower()]              # one line
        assert line.startswith(f'cakd-train: error: {path} holds objects other than tensors and plain values')
        assert 'weights_only=False' not in err and 'Traceback' not in err and not mark.exists()


def test_restart_removes_stale_temps_logs_the_lr_trained_at_without_scheduler_warnings(digits, tmp_path):
    import warnings
    from cakd.cli import main
    out = tmp_path / 'w'
    out.mkdir()
    (out / '.checkpoint.pt.tmp4242').write_bytes(b'x' * 1000)          # left by a crash inside save_atomic
    args = ['--data', str(digits), '--output', str(out), '--epochs', '2', '--max-steps-per-epoch', '2',
            '--lr-warmup-epochs', '1', '--preset.ramp.start', '1', *SMALL]      # D idles through epoch 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        assert main(args) == 0
    assert not [w for w in caught if 'lr_scheduler.step' in str(w.message)]
    assert not (out / '.checkpoint.pt.tmp4242').exists()
    assert [r['lr'] for r in records(out)] == [0.0001, 0.01]            # warm-up epoch at 1%, then --lr


def test_missing_data_is_named_and_leaves_nothing(tmp_path, fail):
    assert 'cakd-train: error: --data is required: an ImageFolder root with train/ and val/' in fail(*SMALL)
    err = fail('--data', str(tmp_path / 'nope'), '--output', str(tmp_path / 'run'), *SMALL)
    assert f"data folder {tmp_path / 'nope'} does not exist" in err and not (tmp_path / 'run').exists()


def test_impossible_device_and_unknown_weights(digits, tmp_path, fail):
    if torch.cuda.is_available(): pytest.skip('this machine has CUDA')
    assert 'CUDA is not available here' in fail('--data', str(digits), *SMALL, '--device', 'cuda')
    err = fail('--data', str(digits), '--teacher', 'vit_b_16', '--teacher-weights', 'IMAGENET_NOPE', '--device', 'cpu')
    assert "unknown vit_b_16 weights 'IMAGENET_NOPE'; valid values are: IMAGENET1K_V1" in err
    err = fail('--data', str(digits), *SMALL, '--model', 'resnet5O', '--output', str(tmp_path / 'm'))
    assert '--model resnet5O: not a torchvision classification model (did you mean resnet50?)' in err


def test_fewer_than_five_classes_reports_top_k(digits, tmp_path, main_in_process):
    data = tmp_path / 'three'
    shutil.copytree(digits, data)
    for split in ('train', 'val'):
        for c in range(3, 10): shutil.rmtree(data / split / str(c))
    code, _, err = main_in_process('--data', data, '--output', tmp_path / 'o', '--epochs', 1, *SMALL,
                                   '--method', 'baseline', '--val-resize', 'both',
                                   '--teacher-options', '{"img_size": 32, "patch_size": 4, "num_classes": 3}')
    assert code == 0, err[-2000:]
    ep = records(tmp_path / 'o')[0]
    assert {'val_top1', 'val_top3', 'val_37_top1', 'val_37_top3'} <= set(ep) and 'val_top5' not in ep   # 32 and 37


def test_eval_and_save_every_n_epochs(digits, tmp_path, main_in_process, fail):
    out = tmp_path / 'sparse'
    code, _, err = main_in_process('--data', digits, '--output', out, '--epochs', 3, '--eval-every', 2,
                                   '--save-every', 2,
                                   '--max-steps-per-epoch', 2, *SMALL, '--method', 'baseline')
    assert code == 0, err[-2000:]
    eps = records(out)
    assert ['val_top1' in e for e in eps] == [False, True, True]          # epoch 2 of 3 and the last
    rows = (out / 'epochs.csv').read_text().splitlines()
    header = rows[0].split(',')
    assert 'val_top1' in header and len(rows) == 4
    assert rows[1].split(',')[header.index('val_top1')] == ''             # epoch 0 was not evaluated
    assert torch.load(out / 'checkpoint.pt', weights_only=True)['epoch'] == 3
    assert "--eval-every must be at least 1, got 0" in fail('--data', str(digits), '--eval-every', '0', *SMALL)


def test_load_run_gives_trained_and_initial_distiller(digits, tmp_path, main_in_process):
    from cakd.runs import load_run
    from cakd.train import Trainer
    out = tmp_path / 'run'
    args = ['--data', digits, '--output', out, '--epochs', 1, '--max-steps-per-epoch', 2, *SMALL,
            '--preset.ramp', 'none']
    code, _, err = main_in_process(*args)
    assert code == 0, err[-2000:]
    after = load_run(out)
    last = torch.load(out / 'student_last.pt', weights_only=True)
    assert all(torch.equal(v, last[k]) for k, v in after.student.state_dict().items())
    assert not after.training and after.head.pca is not None
    before = load_run(out, checkpoint=None)
    fresh_args = [str(a) for a in args] + ['--resume', 'never', '--output', str(tmp_path / 'fresh')]
    fresh = Trainer(parse_config(fresh_args)).distiller
    for (k, v), w in zip(before.student.state_dict().items(), fresh.student.state_dict().values()):
        assert torch.equal(v, w), k                                           # the run's own initial weights
    assert any(not torch.equal(v, last[k]) for k, v in before.student.state_dict().items() if v.is_floating_point())
    with pytest.raises(FileNotFoundError, match='is .* a cakd-train run folder'): load_run(tmp_path)


def test_help_documents_every_option():
    r = cakd_train('--help')
    assert r.returncode == 0
    text = ' '.join(r.stdout.split())
    for f in fields(TrainConfig):
        if f.name == 'preset': continue
        hidden = f.metadata['help'] == '==SUPPRESS=='
        assert (('--' + f.name.replace('_', '-')) in text) != hidden, f.name          # test-only options are hidden
    for group in ('method and preset:', 'student and teacher:', 'data:', 'augmentation:', 'optimisation and schedule:',
                  'speed:', 'checkpoints, logging and processes:', 'preset fields:'):
        assert group in text, group
    assert '--preset.swap_p' in text and '--preset.weights.adv' in text and '--preset.ramp.start' in text
    assert 'recipe defaults each method sets' in text and 'assume 8 processes' in text   # the methods' recipes
    assert 'lr_warmup_epochs 0 0 5 5' in text and 'cakd_paper' in text
    assert 'torchrun --nproc_per_node=8' in text and '--nnodes=2' in text


@pytest.mark.parametrize('amp', ['bf16', 'fp16'])
def test_mixed_precision_and_channels_last(digits, tmp_path, main_in_process, amp):
    out = tmp_path / amp
    code, _, err = main_in_process('--data', digits, '--output', out, '--epochs', 1, '--max-steps-per-epoch', 2, *SMALL,
                                   '--amp', amp, '--channels-last', '--preset.ramp', 'none', '--check-teacher',
                                   '--val-resize', 'official')
    assert code == 0, err[-2000:]
    ck = torch.load(out / 'checkpoint.pt', weights_only=True)
    assert (ck['scaler'] is not None) == (amp == 'fp16')
    assert 0 <= records(out, 'teacher')[0]['teacher_top1'] <= 100
    ep = records(out)[0]
    assert all(v == v and abs(v) < float('inf') for k, v in ep.items() if k.startswith('train_'))


def test_short_cakd_run_distils_in_every_epoch(digits, tmp_path, main_in_process):
    "The official ramp is stretched to the run: two epochs distil (METHOD.md §6), and the start says when."
    out = tmp_path / 'two'
    code, stdout, err = main_in_process('--method', 'cakd', '--data', digits, '--output', out, '--epochs', 2,
                                        '--max-steps-per-epoch', 4, *SMALL)
    assert code == 0, err[-2000:]
    assert ('distillation weight: 0 until epoch 0.42 (step 2), rising to 0.2 at epoch 0.58 (step 2), of 2 epochs of 4 '
            'steps') in stdout
    for ep in records(out):
        assert {'train_attn', 'train_vv', 'train_feat', 'train_cls', 'train_kd', 'train_adv'} <= set(ep), ep['epoch']


def test_config_from_python_trains_one_epoch(digits, tmp_path):
    "The Python API: a TrainConfig with a changed Ramp object, no strings of JSON, through train(cfg)."
    from cakd.presets import Ramp
    from cakd.train import train
    cfg = TrainConfig.for_method('cakd_paper', data=str(digits), output=str(tmp_path / 'py'), device='cpu',
                                 model='resnet18', epochs=1, batch_size=8, workers=0, lr=0.01, max_steps_per_epoch=3,
                                 teacher='timm:vit_tiny_patch16_224', teacher_weights='none',
                                 teacher_options={'img_size': 32, 'patch_size': 4, 'num_classes': 10},
                                 preset={'ramp': Ramp(start=0.0, length=0.5, w_max=0.2, epochs=1)})
    record = train(cfg)
    assert record['epoch'] == 0 and {'train_attn', 'train_adv', 'val_top1'} <= set(record)
    saved = json.loads((tmp_path / 'py' / 'config.json').read_text())
    assert saved['preset']['ramp'] == {'start': 0.0, 'length': 0.5, 'w_max': 0.2, 'epochs': 1}
    assert TrainConfig.from_dict(saved) == cfg
    with pytest.raises(TypeError, match='train takes a TrainConfig, got list'):
        train(['--data', str(digits)])


def test_transfer_set_kill_and_resume_matches_uninterrupted(digits, tmp_path):
    "--unlabeled with mixup and the RA sampler: a run killed mid-epoch and resumed equals the uninterrupted one."
    extra = ['--unlabeled', str(digits / 'train'), '--unlabeled-batch-size', '4', '--mixup-alpha', '0.2',
             '--ra-sampler', '--ra-reps', '2']
    a = cakd_train(*run_args(digits, tmp_path / 'a', *extra))
    assert a.returncode == 0, a.stderr[-3000:]
    b = cakd_train(*run_args(digits, tmp_path / 'b', *extra, '--crash-at-step', '6'))
    assert b.returncode == -signal.SIGKILL
    b = cakd_train(*run_args(digits, tmp_path / 'b', *extra))
    assert b.returncode == 0, b.stderr[-3000:]
    ca = torch.load(tmp_path / 'a' / 'checkpoint.pt', weights_only=True)
    cb = torch.load(tmp_path / 'b' / 'checkpoint.pt', weights_only=True)
    gap = max((v.double() - cb['distiller'][k].double()).abs().max().item() for k, v in ca['distiller'].items())
    assert gap <= 1e-6
    ep = records(tmp_path / 'a')[-1]
    assert {'train_kd', 'train_attn', 'val_agree', 'val_kl'} <= set(ep) and 0 <= ep['val_agree'] <= 100


def test_transfer_set_bad_input_is_named(digits, tmp_path, fail, main_in_process):
    args = ['--data', str(digits), '--output', str(tmp_path / 'r'), '--epochs', '1', '--max-steps-per-epoch', '2',
            *SMALL]
    err = fail(*args, '--unlabeled', str(tmp_path / 'nowhere'))
    assert f"--unlabeled {tmp_path / 'nowhere'}: no such folder" in err
    a_file = next((digits / 'train').rglob('*.jpg'))
    assert f"--unlabeled {a_file}: a file; expected a folder of images" in fail(*args, '--unlabeled', str(a_file))
    (tmp_path / 'empty').mkdir()
    assert 'no images' in fail(*args, '--unlabeled', str(tmp_path / 'empty'))
    flat = tmp_path / 'flat'
    flat.mkdir()
    for i, p in enumerate(sorted((digits / 'train').rglob('*.jpg'))[:20]): shutil.copy(p, flat / f'{i}.jpg')
    (flat / 'zz_broken.jpg').write_bytes(b'\xff\xd8 not a jpeg')
    transfer = ['--unlabeled', str(flat), '--preset.ramp', 'none', '--unlabeled-batch-size', '21']
    assert f"cannot read image {flat / 'zz_broken.jpg'}" in fail(*args, *transfer)
    code, _, err = main_in_process(*args, *transfer, '--skip-bad-images', '--output', str(tmp_path / 's'))
    assert code == 0, err[-2000:]
    assert records(tmp_path / 's')[0]['skipped_images'] >= 1
    err = fail('--method', 'baseline', *args, '--unlabeled', str(flat))
    assert f'--unlabeled {flat}: --method baseline learns from labels only' in err


def test_tensorboard_event_file_holds_every_logged_scalar(digits, tmp_path, main_in_process):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = tmp_path / 'tb'
    code, _, err = main_in_process('--data', digits, '--output', out, '--epochs', '1', '--max-steps-per-epoch', '4',
                                   *SMALL, '--print-freq', '2', '--tensorboard', '--preset.ramp', 'none',
                                   '--lr-warmup-epochs', '0', '--no-ra-sampler', '--model-ema-steps', '2')
    assert code == 0, err
    tb = EventAccumulator(str(out / 'tensorboard')).Reload()        # tensorboard's own reader
    tags = set(tb.Tags()['scalars'])
    assert {'train/ce', 'train/kd', 'train/attn', 'train/adv', 'train/loss', 'val/top1', 'val/agree', 'val/kl',
            'ema/top1', 'epoch/lr', 'step/loss', 'step/ce', 'step/rho', 'step/d_loss'} <= tags, sorted(tags)
    assert [e.step for e in tb.Scalars('step/loss')] == [2, 4]                # at the optimisation step
    assert [e.step for e in tb.Scalars('val/top1')] == [0]                    # at the epoch
    (epoch,) = records(out)
    assert tb.Scalars('val/top1')[0].value == pytest.approx(epoch['val_top1'], rel=1e-5)
    assert tb.Scalars('train/ce')[0].value == pytest.approx(epoch['train_ce'], rel=1e-5)


def test_teacher_weights_file_is_read_once_per_run_start(digits, tmp_path, monkeypatch, main_in_process):
    import timm
    import cakd.build
    src = timm.create_model('vit_tiny_patch16_224', img_size=32, patch_size=4, num_classes=10)
    torch.save({'model': src.state_dict()}, tmp_path / 'teacher.pth')
    reads, real = [], cakd.build.read_checkpoint
    monkeypatch.setattr(cakd.build, 'read_checkpoint', lambda p: reads.append(Path(p).name) or real(p))
    code, _, err = main_in_process('--data', digits, '--output', tmp_path / 'r', '--epochs', '1',
                                   '--max-steps-per-epoch', '1', '--method', 'logits', *SMALL,
                                   '--teacher-weights', tmp_path / 'teacher.pth')
    assert code == 0, err
    assert reads == ['teacher.pth']          # its architecture, class count and weights: one read
    from cakd.runs import load_run
    assert torch.equal(load_run(tmp_path / 'r').teacher.model.pos_embed, src.pos_embed)


def _arm(digits, out, term, weight):
    "An in-process cakd_official run (its recipe's augmentation and mixup) with `term` at `weight`: its batches."
    from cakd.train import Trainer
    cfg = TrainConfig.for_method(
        'cakd_official', data=str(digits), output=str(out), device='cpu', model='resnet18', epochs=2, batch_size=8,
        workers=0, lr=0.01, max_steps_per_epoch=3, print_freq=100, lr_warmup_epochs=0, unlabeled=str(digits / 'train'),
        unlabeled_batch_size=4, teacher='timm:vit_tiny_patch16_224', teacher_weights='none',
        teacher_options={'img_size': 32, 'patch_size': 4, 'num_classes': 10},
        preset={'ramp': None, 'weights': {term: weight}})
    trainer, seen = Trainer(cfg), []
    step = trainer.distiller.step

    def spy(x, y, progress, unlabeled=None):             # what the distiller is fed, step by step
        seen.append([v.clone() for v in (x, y, unlabeled)])
        return step(x, y, progress, unlabeled)
    trainer.distiller.step = spy
    trainer.fit()
    return trainer.distiller, seen


@pytest.mark.parametrize('term', ['adv', 'feat', 'cls'])
def test_arms_that_build_other_modules_see_the_same_batches(digits, tmp_path, term):
    "A term at 1e-12 builds its module (D, GL, cls projector); at 0 it does not. Nothing random may move with that."
    (on, a), (off, b) = [_arm(digits, tmp_path / str(w), term, w) for w in (1e-12, 0.0)]
    built = {'adv': lambda d: d.disc, 'feat': lambda d: d.head.gl, 'cls': lambda d: d.head.cls}[term]
    assert built(on) is not None and built(off) is None
    assert len(a) == len(b) == 6
    for (xa, ya, ua), (xb, yb, ub) in zip(a, b):             # bit-identical inputs, mixup and transfer batches
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ua, ub)
    for (k, v), w in zip(on.student.state_dict().items(), off.student.state_dict().values()):
        if v.is_floating_point(): assert torch.allclose(v, w, atol=1e-5, rtol=0), k


@pytest.mark.parametrize('method', ['dist', 'ofa'])
def test_dist_and_ofa_log_their_terms_and_export_a_stock_student(digits, tmp_path, method, main_in_process):
    out = tmp_path / method
    code, stdout, err = main_in_process('--method', method, '--data', digits, '--output', out, '--epochs', 1,
                                        '--max-steps-per-epoch', 3, *SMALL)
    assert code == 0, err[-2000:]
    (ep,) = records(out)
    assert ep['train_kd'] > 0 and ('train_ofa' in ep) == (method == 'ofa')
    assert not {'train_attn', 'train_adv', 'train_cls'} & set(ep)                # no CAKD term, no discriminator
    if method == 'ofa': assert ep['train_ofa'] > ep['train_kd']                   # four branches, summed
    plain = torchvision.models.resnet18(num_classes=10)
    plain.load_state_dict(torch.load(out / 'student_last.pt', weights_only=True))   # the branches are not in it
    err = main_in_process('--method', 'ofa', '--data', digits, '--output', tmp_path / 'u', *SMALL,
                          '--unlabeled', digits / 'train')[2]
    assert 'OFA (--method ofa) needs the label of every image' in err


def test_cakd_with_a_small_timm_swin_teacher_logs_attention(digits, tmp_path, main_in_process):
    swin = ['--teacher', 'timm:swin_tiny_patch4_window7_224', '--teacher-weights', 'none', '--teacher-options',
            json.dumps({'img_size': 32, 'patch_size': 4, 'window_size': 4, 'embed_dim': 48, 'depths': [2, 2],
                        'num_heads': [3, 6], 'num_classes': 10})]
    out = tmp_path / 'swin'
    code, stdout, err = main_in_process('--method', 'cakd', '--data', digits, '--output', out, '--epochs', 1,
                                        '--max-steps-per-epoch', 3, '--preset.ramp', 'none', '--preset.disc', 'token',
                                        *SMALL[:-len(TEACHER)], *swin)          # 16 tokens: too few for the PatchGAN
    assert code == 0, err[-2000:]
    assert 'tap layer2' in stdout and 'the teacher has no class token (Swin): the cls term is off' in stdout
    (ep,) = records(out)
    assert ep['train_attn'] > 0 and ep['train_vv'] > 0 and ep['train_adv'] > 0 and 'train_cls' not in ep


def test_terminal_bar_shows_the_loss_and_closes_before_the_epoch_line(digits, tmp_path):
    "In a terminal (a pseudo-terminal here) the bar counts this epoch's steps, shows the running loss, and goes."
    import fcntl
    import pty
    import re
    import struct
    import termios
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack('HHHH', 24, 120, 0, 0))      # a 120-column terminal
    proc = subprocess.Popen([str(BIN / 'cakd-train'), '--data', str(digits), '--output', str(tmp_path / 'tty'),
                             '--epochs', '1', '--max-steps-per-epoch', '3', *SMALL], stdout=slave, stderr=slave,
                            env={**ENV, 'COLUMNS': '120'})
    os.close(slave)
    out = b''
    while True:
        try: chunk = os.read(master, 4096)
        except OSError: break                                                      # the child closed the terminal
        if not chunk: break
        out += chunk
    assert proc.wait(timeout=300) == 0, out.decode(errors='replace')[-2000:]
    text = out.decode(errors='replace')
    assert re.search(r'epoch 1/1: 100%.*3/3 .*loss \d+\.\d{4}', text), text[-2000:]     # not 24/25, and the loss
    lines = text.replace('\r', '\n').splitlines()
    assert any(line.startswith('[rank 0/1] epoch 1/1: loss ') for line in lines), lines[-5:]   # on a line of its own


def test_a_write_the_disk_refuses_names_the_file_keeps_the_last_and_leaves_no_temp(tmp_path):
    "A real refused write: RLIMIT_FSIZE makes the kernel fail the save (EFBIG), as a full disk fails it (ENOSPC)."
    code = f"""
import resource, signal, torch
from pathlib import Path
from cakd.checkpoint import save_atomic
path = Path({str(tmp_path)!r}) / 'student_last.pt'
save_atomic({{'w': torch.zeros(10)}}, path)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, resource.RLIM_INFINITY))
save_atomic({{'w': torch.zeros(1 << 20)}}, path)
"""
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith('cakd.checkpoint.WriteError: cannot write ') and 'student_last.pt: File too large' in last
    assert last.endswith('the previous student_last.pt is intact') and 'about 4 MiB to write, ' in last
    assert 'inline_container' not in r.stderr and 'During handling' not in r.stderr        # one error, not two
    assert [p.name for p in tmp_path.iterdir()] == ['student_last.pt']                         # no temporary left
    assert torch.load(tmp_path / 'student_last.pt', weights_only=True)['w'].shape == (10,)


def test_cakd_train_on_a_full_disk_says_which_file_in_one_line_and_leaves_no_temp(digits, tmp_path):
    "The run's first large write (a student, the checkpoint) is refused by the kernel, as a full disk refuses it."
    import resource
    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
    out = tmp_path / 'run'
    args = ['--data', str(digits), '--output', str(out), '--epochs', '1', '--max-steps-per-epoch', '2', *SMALL]
    r = subprocess.run([str(BIN / 'cakd-train'), *args], capture_output=True, text=True, env=ENV, timeout=300,
                       preexec_fn=small_files)
    assert r.returncode == 1, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()
    assert len(last) == 1 and last[0].startswith(f'cakd-train: error: cannot write {out}/'), r.stderr[-3000:]
    assert 'File too large (about ' in last[0] and ' MiB to write, ' in last[0] and 'free there' in last[0]
    assert 'Traceback' not in r.stderr
    assert not [p.name for p in out.iterdir() if '.tmp' in p.name]              # no temporary file left
    assert json.loads((out / 'config.json').read_text())['epochs'] == 1          # what fitted was written whole


def test_decode_tensor_trains_from_image_files_and_is_refused_for_in_memory_data(digits, tmp_path, main_in_process):
    out = tmp_path / 'tensor'
    code, stdout, err = main_in_process('--data', digits, '--output', out, '--epochs', '1', '--max-steps-per-epoch', 2,
                                        *SMALL, '--decode', 'tensor', '--unlabeled', digits / 'train')
    assert code == 0, err[-2000:]
    assert json.loads((out / 'config.json').read_text())['decode'] == 'tensor' and 'val_top1' in records(out)[-1]
    code, _, err = main_in_process('--dataset', 'cifar10', '--data', tmp_path, '--decode', 'tensor', *SMALL)
    assert code == 1 and '--decode tensor reads image files; --dataset cifar10 is decoded in memory' in err


def test_a_run_refused_while_it_builds_leaves_no_folder(digits, tmp_path, fail):
    out = tmp_path / 'refused'
    assert "ResNet has no submodule 'layer9'" in fail('--data', digits, '--output', out, *SMALL,
                                                      '--student-layer', 'layer9')
    assert not out.exists()                                        # nothing was written, so nothing is left
    out.mkdir()
    (out / 'notes.txt').write_text('mine')                          # a folder the user made is never removed
    fail('--data', digits, '--output', out, *SMALL, '--student-layer', 'layer9')
    assert sorted(p.name for p in out.iterdir()) == ['.lock', 'notes.txt']


def test_an_ema_that_never_updated_is_neither_reported_nor_kept(digits, tmp_path, main_in_process, capsys):
    out = tmp_path / 'ema'
    code, stdout, err = main_in_process(*run_args(digits, out, '--model-ema-steps', '32'))   # 8 steps: no update
    assert code == 0, err[-2000:]
    assert 'EMA not updated yet (--model-ema-steps > the steps so far)' in stdout and 'EMA top-1' not in stdout
    last = records(out)[-1]
    assert last['ema_updates'] == 0 and 'ema_top1' not in last
    assert not (out / 'student_ema_last.pt').exists()
    from cakd.export import cli as export
    assert export([str(out), '--weights', 'ema']) == 1
    assert 'its EMA never updated' in capsys.readouterr().err
