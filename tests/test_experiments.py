"""The experiment notebooks: one parameters cell each, and `make reproduce` run for real with tiny parameters."""
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
EXPERIMENTS = sorted((ROOT / 'nbs' / 'experiments').glob('*.ipynb'))


def make(target, out, **variables):
    "`make TARGET OUT=out VAR=value ...` in the repository, as the README shows it; the completed process."
    cmd = ['make', target, f'OUT={out}', *[f'{k}={v}' for k, v in variables.items()]]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize('nb', EXPERIMENTS, ids=lambda p: p.stem)
def test_exactly_one_parameters_cell_then_derived_values(nb):
    cells = json.loads(nb.read_text())['cells']
    tagged = [i for i, c in enumerate(cells) if 'parameters' in c.get('metadata', {}).get('tags', [])]
    assert len(tagged) == 1
    params = ''.join(cells[tagged[0]]['source'])
    assert all('=' in l and '#' in l for l in params.splitlines() if l.strip()), 'flat, commented assignments'
    assert cells[tagged[0] + 1]['cell_type'] == 'code'                        # derived values come next
    assert 'globals().update(check_parameters(globals()))' in ''.join(cells[tagged[0] + 1]['source'])
    assert not any(c.get('outputs') for c in cells)                           # committed clean
    import papermill as pm
    names = {l.split('=')[0].strip() for l in params.splitlines() if '=' in l}
    assert set(pm.inspect_notebook(str(nb))) == names                         # papermill parses every line


@pytest.fixture(scope='module')
def tiny_calibration(tmp_path_factory):
    "`make calibrate` run for real with tiny parameters, recording its choice in a file of the test's."
    out = tmp_path_factory.mktemp('calibrate') / 'calibrate'
    record = out.parent / 'calibration.json'
    args = ('-p labels_per_class 3 -p teacher_epochs 1 -p steps 2 -p batch_size 8 -p transfer_batch_size 8 '
            '-p multipliers 1,25 -p taps layer2 -y "{dev_seeds: [100, 101]}"')
    r = make('calibrate', out, ARGS=args, CALIBRATION=record)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    return out, record


def test_make_calibrate_records_its_choice_and_grid(tiny_calibration):
    out, record = tiny_calibration
    sel = json.loads(record.read_text())
    assert sel == json.loads((out / 'selection.json').read_text())
    assert [(g['multiplier'], g['tap']) for g in sel['grid']] == [(1.0, 'layer2'), (25.0, 'layer2')]
    best = max(sel['grid'], key=lambda g: (g['mean_top1'], -g['mean_kl']))
    assert sel['choice'] == {'multiplier': best['multiplier'], 'student_layer': 'layer2'}
    assert sel['dev_seeds'] == [100, 101] and all(len(g['top1']) == 2 for g in sel['grid'])
    assert 'held-out slice of the training split' in sel['criterion'] and sel['machine']['cores'] >= 1
    cfg = json.loads((out / 'cakd_x25_layer2_seed100' / 'config.json').read_text())
    assert cfg['data'].endswith('dev_3_per_class') and cfg['unlabeled'].endswith('dev/train')   # never the val folder
    assert cfg['preset']['weights']['attn'] == pytest.approx(5.0) and cfg['seed'] == 100


@pytest.fixture(scope='module')
def tiny_reproduce(tmp_path_factory, tiny_calibration):
    "`make reproduce` run for real with tiny parameters (the list parameter in the form the README shows)."
    out = tmp_path_factory.mktemp('reproduce') / 'reproduce'
    args = ('-p labels_per_class 3 -p teacher_epochs 1 -p steps 2 -p batch_size 8 -p transfer_batch_size 8 '
            '-p seeds 0,1 -p arms baseline,kd_matched,cakd_official,cakd_calibrated')
    r = make('reproduce', out, ARGS=args, CALIBRATION=tiny_calibration[1])
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    (out / 'make.log').write_text(r.stdout + r.stderr)
    return out


def test_make_reproduce_with_tiny_parameters(tiny_reproduce, tiny_calibration):
    out = tiny_reproduce
    res = json.loads((out / 'results.json').read_text())
    assert 0 <= res['teacher']['top1'] <= 100
    assert list(res['methods']) == ['baseline', 'kd_matched', 'cakd_official', 'cakd_calibrated']
    top1 = {m: v['top1'] for m, v in res['methods'].items()}
    for m, v in res['methods'].items():
        assert len(v['top1']) == 2 and all(0 <= a <= 100 for a in v['top1'] + v['agreement']) and min(v['kl']) >= 0
        against = [p['against'] for p in v['paired']]
        assert against == ([] if m == 'baseline' else ['baseline'] + (['kd_matched'] if m.startswith('cakd') else []))
        for p in v['paired']:
            expected = [a - b for a, b in zip(v['top1'], top1[p['against']])]
            assert p['n'] == 2 and p['per_seed'] == pytest.approx(expected)
            assert p['ci95'][0] <= p['mean'] <= p['ci95'][1] or p['sd'] != p['sd']       # an interval (nan: no spread)
    log = (out / 'make.log').read_text()                                    # long work is not silent: a line a run
    assert '8 runs, 2 at a time' in log and '[8/8] ' in log and 'all done in' in log
    assert re.search(r'\[1/8\] \S+_seed\d: top-1 \d+\.\d in \d+ s; 7 left, about [\d.]+ min to go', log), log[-3000:]
    sel = res['protocol']['selection']
    assert sel['file'] == str(tiny_calibration[1]) and not set(sel['dev_seeds']) & set(res['protocol']['test_seeds'])
    assert {'gshare_kd', 'gcos_attn', 'r2_attn', 'd_acc'} <= set(res['methods']['cakd_official']['diagnostics'])
    assert set(res['methods']['kd_matched']['diagnostics']) == {'gshare_kd', 'gcos_kd'}
    assert res['verdict'].startswith('cakd_official ') and 'over matched logits KD' in res['verdict']
    assert {'cpu', 'cores', 'torch', 'numpy', 'torch_threads'} <= set(res['machine'])
    p = res['protocol']
    assert (p['labels_per_class'], p['labelled_images'], p['transfer_set_size'], p['student_tap']) == (3, 30, 1438,
                                                                                                         'layer2')
    assert res['params']['seeds'] == [0, 1] and len(res['git_sha'] or '') in (0, 40)
    configs = {a: json.loads((out / f'{a}_seed0' / 'config.json').read_text()) for a in res['methods']}
    assert configs['cakd_official']['unlabeled'].endswith('digits/train') and configs['baseline']['unlabeled'] == ''
    assert configs['cakd_calibrated']['student_layer'] == sel['choice']['student_layer']
    same = {k for k in configs['baseline'] if all(c[k] == configs['baseline'][k] for c in configs.values())}
    assert {'epochs', 'lr', 'weight_decay', 'norm_weight_decay', 'batch_size', 'seed'} <= same    # one recipe
    assert configs['kd_matched']['preset']['ramp'] == configs['cakd_official']['preset']['ramp']
    for fig in ('accuracy.png', 'gain.png', 'diagnostics_cakd_official.png', 'attention.png'):
        assert (out / fig).stat().st_size > 5000
    executed = json.loads((out / 'reproduce.ipynb').read_text())
    assert executed['metadata']['papermill']['parameters']['teacher_epochs'] == 1


def test_ablation_on_the_tiny_reproduction(tiny_reproduce, tmp_path):
    out = tmp_path / 'ablation'
    r = make('ablation', out, ARGS=f'-p reproduce {tiny_reproduce} -p terms attn,adv -p paper_parts swap '
                                   '-y "{seeds: [1]}"')
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / 'results.json').read_text())
    assert list(res['variants']) == ['calibrated − attention', 'calibrated − adversarial',
                                     'paper − partially cross swap']                  # the README's names
    full = json.loads((tiny_reproduce / 'results.json').read_text())['methods']['cakd_calibrated']['top1'][1]
    v = res['variants']['calibrated − attention']
    assert v['paired_top1']['per_seed'] == pytest.approx([v['top1'][0] - full])
    assert v['paired_top1']['against'] == 'cakd_calibrated' and v['paired_top1']['n'] == 1
    cfg = json.loads((out / 'cakd_calibrated_no_attn_seed1' / 'config.json').read_text())
    ref = json.loads((tiny_reproduce / 'cakd_calibrated_seed1' / 'config.json').read_text())
    assert cfg['preset']['weights']['attn'] == 0 and cfg['seed'] == 1
    assert {k: v for k, v in cfg.items() if k not in ('preset', 'output')} == \
        {k: v for k, v in ref.items() if k not in ('preset', 'output')}
    assert (out / 'ablation.png').stat().st_size > 5000
    with pytest.raises(pm.PapermillExecutionError, match='run `make reproduce` first'):
        pm.execute_notebook(str(ROOT / 'nbs/experiments/ablation.ipynb'), str(tmp_path / 'x.ipynb'), cwd=str(ROOT),
                            parameters=dict(reproduce=str(tmp_path / 'nothing'), output=str(tmp_path / 'y')),
                            progress_bar=False)


# ---- imagenet: the torchrun launcher, run on CPU processes (gloo) over a JPEG tree of digits
import papermill as pm
import torch


TINY_TEACHER = dict(teacher='timm:vit_tiny_patch16_224', teacher_weights='none',
                    teacher_options={'img_size': 32, 'patch_size': 4, 'num_classes': 10})

from conftest import free_port


def imagenet(out, **params):
    out.mkdir(parents=True, exist_ok=True)
    return pm.execute_notebook(str(ROOT / 'nbs/experiments/imagenet.ipynb'), str(out / 'imagenet.ipynb'), cwd=str(ROOT),
                               parameters=dict(output=str(out), master_port=free_port(), **params), progress_bar=False)


def test_imagenet_launcher_two_cpu_processes(digits, tmp_path):
    out = tmp_path / 'run'
    imagenet(out, data=str(digits), device='cpu', nproc_per_node=2, epochs=1, batch_size=8, workers=0,
             student='resnet18',
             options={'max_steps_per_epoch': 2, 'lr': 0.01, 'preset': {'ramp': None}}, **TINY_TEACHER)
    res = json.loads((out / 'results.json').read_text())
    assert res['world_size'] == 2 and res['global_batch'] == 16 and res['epochs_run'] == 1
    (top1,) = res['methods']['cakd_official']['top1']
    assert 0 <= top1 <= 100 and res['params']['nproc_per_node'] == 2
    ev = res['methods']['cakd_official']['evaluation']                  # both resizes of METHOD.md §7.16, named
    assert set(ev) == {'official: resize = crop', 'standard: resize 37, centre crop'}
    assert ev['official: resize = crop'] == top1
    log = (out / 'torchrun.log').read_text()
    assert '[rank 0/2] epoch 1/1: loss' in log and '[rank 1/2] epoch 1/1: loss' in log
    executed = json.loads((out / 'imagenet.ipynb').read_text())
    streamed = ''.join(o.get('text', '') if isinstance(o.get('text', ''), str) else ''.join(o['text'])
                       for c in executed['cells'] for o in c.get('outputs', []))
    assert '[rank 1/2] epoch 1/1' in streamed                                 # the log reached the notebook
    assert (out / 'curves.png').stat().st_size > 5000
    ck = torch.load(out / 'checkpoint.pt', weights_only=True)
    assert len(ck['rng']) == 2 and ck['config']['method'] == 'cakd_official'


def test_imagenet_dry_run_checks_and_stops(digits, tmp_path):
    nb = imagenet(tmp_path / 'dry', data=str(digits), device='cpu', nproc_per_node=2, dry_run=True, **TINY_TEACHER)
    assert not (tmp_path / 'dry' / 'log.jsonl').exists() and not (tmp_path / 'dry' / 'results.json').exists()
    printed = ''.join(''.join(o.get('text', '')) for c in nb['cells'] for o in c.get('outputs', []))
    assert '--nproc_per_node=2' in printed and '"world_size": 2' in printed
    assert 'dry run: nothing launched; this would run:\ntorchrun ' in printed
    line = printed.split('this would run:\n')[1].splitlines()[0]
    args = shlex.split(line)                                                  # the printed line pastes into a shell
    assert args[0] == 'torchrun' and '--nproc_per_node=2' in args
    assert json.loads(args[args.index('--teacher-options') + 1])['patch_size'] == 4


@pytest.mark.parametrize('case', ['folder', 'classes'])   # no CUDA: test_make_imagenet_as_the_readme_prints_it
def test_imagenet_impossible_requests_fail_with_the_reason(digits, tmp_path, case):
    params = dict(data=str(digits), device='cpu', nproc_per_node=2, **TINY_TEACHER)
    if case == 'gpus':
        n = torch.cuda.device_count() + 1 if torch.cuda.is_available() else 8
        params.update(device='' if case == 'gpus' else 'cuda', nproc_per_node=n)
        expected = 'are visible' if torch.cuda.is_available() else 'CUDA is not available'
    elif case == 'folder':
        params.update(data=str(tmp_path / 'no_such_folder'))
        expected = f"data: data folder {tmp_path / 'no_such_folder'} does not exist"
    else:
        params.update(teacher_options={'img_size': 32, 'patch_size': 4, 'num_classes': 1000})
        expected = 'predicts 1000 classes but'
    with pytest.raises(pm.PapermillExecutionError) as err:
        imagenet(tmp_path / case, **params)
    assert err.value.ename == 'LaunchError' and expected in err.value.evalue
    assert not (tmp_path / case / 'log.jsonl').exists()


# ---- attention_maps and results, on a CAKD run trained here
from cakd.config import TrainConfig
from cakd.train import train


@pytest.fixture(scope='module')
def cakd_run(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp('runs') / 'cakd_official_seed0'
    train(TrainConfig(data=str(digits), output=str(out), epochs=1, max_steps_per_epoch=3, device='cpu',
                      model='resnet18',
                      batch_size=8, lr=0.01, workers=0, tensorboard=False, preset={'ramp': None}, model_ema=False,
                      val_resize='official', **TINY_TEACHER))
    return out


def test_attention_maps_on_photos_before_and_after(cakd_run, tmp_path):
    out = tmp_path / 'maps'
    r = make('attention', out, RUN=cakd_run, ARGS='-p images astronaut,camera')
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / 'results.json').read_text())
    assert set(res['agreement']) == {'astronaut', 'camera'}
    for photo in res['agreement'].values():
        assert set(photo) == {'before', 'after'}
        assert all(v['kl'] >= 0 and v['mse'] >= 0 and -1 <= v['correlation'] <= 1 for v in photo.values())
        assert photo['before'] != photo['after']                               # the trained projector changed the map
    for photo in ('astronaut', 'camera'):
        assert (out / f'attention_{photo}.png').stat().st_size > 5000


def test_results_notebook_collects_runs(tmp_path):
    runs = tmp_path / 'runs'
    for name, accs in [('reproduce', {'baseline': [60.0, 62.0], 'cakd_official': [70.0, 71.0]}),
                       ('imagenet', {'cakd_official': [75.5]})]:
        (runs / name).mkdir(parents=True)
        res = {'params': {'seeds': [0, 1]}, 'teacher': {'top1': 90.0},
               'methods': {m: {'top1': a} for m, a in accs.items()}}
        (runs / name / 'results.json').write_text(json.dumps(res))
    out = tmp_path / 'summary'
    r = make('results', out, ARGS=f'-p folder {runs}')
    assert r.returncode == 0, r.stderr[-3000:]
    shown = [''.join(o['data']['text/plain']) for c in json.loads((out / 'results.ipynb').read_text())['cells']
             for o in c.get('outputs', []) if o.get('output_type') == 'execute_result']
    assert not [t for t in shown if t.strip().isdigit()]                     # no stray character count
    summary = {(r['run'], r['method']): r for r in json.loads((out / 'results-summary.json').read_text())['summary']}
    assert summary[('reproduce', 'baseline')]['mean'] == 61.0 and summary[('reproduce', 'baseline')]['n'] == 2
    assert summary[('imagenet', 'cakd_official')]['n'] == 1 and summary[('imagenet', 'teacher')]['mean'] == 90.0
    published = json.loads((out / 'results-summary.json').read_text())['published']
    assert {p['source'] for p in published} == {'official README', 'torchvision docs', 'paper'}
    assert (out / 'results.png').stat().st_size > 10000 and len((out / 'summary.csv').read_text().splitlines()) == 1 + 5
    with pytest.raises(pm.PapermillExecutionError, match='no results.json'):
        pm.execute_notebook(str(ROOT / 'nbs/experiments/results.ipynb'), str(tmp_path / 'x.ipynb'), cwd=str(ROOT),
                            parameters=dict(folder=str(tmp_path / 'empty'), output=str(tmp_path / 'e')),
                            progress_bar=False)


def test_make_imagenet_as_the_readme_prints_it(tmp_path):
    "The README's line, into a temporary folder: the folder is made, and the run stops before any work with the reason."
    r = make('imagenet', tmp_path / 'imagenet', DATA='/data/imagenet')
    assert r.returncode != 0 and 'LaunchError' in r.stderr + r.stdout
    reason = 'CUDA is not available' if not torch.cuda.is_available() else 'data folder /data/imagenet does not exist'
    assert reason in r.stderr + r.stdout
    assert (tmp_path / 'imagenet' / 'imagenet.ipynb').exists()                # papermill wrote the failed notebook
    r = subprocess.run(['make', 'imagenet'], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and 'make imagenet: pass DATA=<ImageFolder root with train/ and val/>' in r.stderr


@pytest.mark.parametrize('name', ['reproduce', 'imagenet'])   # every notebook calls check_parameters: see above
def test_bad_parameters_fail_before_any_work(name, tmp_path):
    "A typo and a wrong type, as papermill users type them: one message naming each, before anything is made."
    out = tmp_path / 'o'
    bad = {'reproduce': '-p steps ten', 'ablation': '-p jobs two', 'imagenet': '-p epochs ten',
           'attention_maps': '-p keep lots', 'results': '-p show_published maybe'}[name]
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(ROOT / f'nbs/experiments/{name}.ipynb'), str(tmp_path / 'x.ipynb'), cwd=str(ROOT),
                            parameters={'output': str(out), 'outptu': 'typo', bad.split()[1]: bad.split()[2]},
                            progress_bar=False)
    assert err.value.ename == 'ParameterError'
    expected = {'reproduce': "steps = 'ten': expected an integer, like its default 138",
                'ablation': "jobs = 'two': expected an integer, like its default 2",
                'imagenet': "epochs = 'ten': expected an integer, like its default 0",
                'attention_maps': "keep = 'lots': expected a number, like its default 0.6",
                'results': "show_published = 'maybe': expected True or False, like its default True"}[name]
    assert 'outptu is not a parameter of this notebook (did you mean output?)' in err.value.evalue
    assert expected in err.value.evalue and not out.exists()


def test_results_notebook_reads_plain_cakd_train_runs(tmp_path):
    "A runs/ folder that holds only cakd-train runs (no experiment's results.json) is read, not a traceback."
    run = tmp_path / 'runs' / 'my_run'
    run.mkdir(parents=True)
    (run / 'config.json').write_text(json.dumps({'method': 'kd', 'seed': 2, 'dataset': 'cifar100', 'data': '/x/cifar'}))
    (run / 'log.jsonl').write_text('{"event": "epoch", "val_top1": 51.25}\n')
    out = tmp_path / 'summary'
    out.mkdir()
    pm.execute_notebook(str(ROOT / 'nbs/experiments/results.ipynb'), str(out / 'results.ipynb'), cwd=str(ROOT),
                        parameters=dict(folder=str(tmp_path / 'runs'), output=str(out)), progress_bar=False)
    (row,) = json.loads((out / 'results-summary.json').read_text())['summary']
    assert (row['run'], row['dataset'], row['method'], row['mean'], row['n']) == ('my_run', 'cifar100', 'kd', 51.25, 1)

TWINS_TINY = ('-p teacher_steps 6 -p teacher_batch 8 -p gate_images 16 -p labelled 32 -p transfer_size 32 '
              '-p val_size 32 -p steps 2 -p batch_size 8 -p transfer_batch_size 8 -p seeds 0,1 '
              '-p arms baseline,kd_matched,cakd_official,relations,relations_permuted')


def test_make_cluttered_runs_the_relational_protocol_with_tiny_parameters(tmp_path):
    out = tmp_path / 'twins'
    r = make('cluttered', out, ARGS=TWINS_TINY)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    res = json.loads((out / 'results.json').read_text())
    assert res['protocol']['selection']['dev_seed'] not in res['protocol']['test_seeds'] == [0, 1]
    gate = res['gate']
    assert set(gate['teachers']) == {'0', '1'} and gate['block'] == res['protocol']['selection']['teacher_block']
    for g in gate['teachers'].values():                       # every block measured; 6 steps: no relation, no pass
        assert len(g['twin_ratio']) == len(g['odd_ratio']) == 4 and 0 <= g['top1'] <= 100
    assert gate['passed'] is False and res['verdict'].startswith('the relational gate at block ')
    assert 'no teacher passes' in res['verdict']
    top1 = {m: v['top1'] for m, v in res['methods'].items()}
    assert [p['against'] for p in res['methods']['relations']['paired']] == ['baseline', 'relations_permuted']
    assert [p['against'] for p in res['methods']['cakd_official']['paired']] == ['baseline', 'kd_matched']
    for v in res['methods'].values():
        for p in v['paired']:
            expected = [a - b for a, b in zip(v['top1'], top1[p['against']])]
            assert p['n'] == 2 and p['per_seed'] == pytest.approx(expected)
            assert p['ci95'][0] <= p['mean'] <= p['ci95'][1] or p['sd'] != p['sd']
    read = lambda a, s: json.loads((out / f'{a}_seed{s}' / 'config.json').read_text())
    cfg = {(a, s): read(a, s) for a in res['methods'] for s in (0, 1)}
    assert cfg['relations', 0]['preset']['weights']['kd'] == 0 and cfg['relations', 0]['preset']['weights']['attn'] > 0
    assert cfg['relations_permuted', 0]['preset']['permute_relations'] and not cfg['relations', 0]['preset'][
        'permute_relations']
    assert {c['preset']['teacher_block'] for c in cfg.values()} == {gate['block']}
    assert [cfg['baseline', s]['teacher_weights'] for s in (0, 1)] == [str(out / f'teacher_seed{s}.pt') for s in (0, 1)]
    for fig in ('teacher_attention.png', 'accuracy.png', 'gain.png', 'diagnostics_cakd_official.png'):
        assert (out / fig).stat().st_size > 5000
    bad = make('cluttered', tmp_path / 'bad', ARGS=TWINS_TINY + ' -p dev_seed 1')
    assert bad.returncode != 0 and 'dev_seed=1 chooses the teacher block: it cannot be a test seed' in bad.stderr
