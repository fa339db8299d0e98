"""Every CUDA path of cakd in one command, with a report a GPU owner can trust: `make gpu-check`.

python bench/gpu_check.py [--device cuda] [--tiny] [--out runs/gpu_check] [--only step,torchrun,...] [--batch 64]

Checks, one line each (ok / FAILED / skipped: why, and the figure), written to OUT/report.json and OUT/report.md:
  environment   torch, CUDA, cuDNN and NCCL versions, GPUs and their memory, bf16 support, the driver
  step          `bench/step.py`'s step of baseline, logits, cakd_official, cakd_paper, kd, dist and ofa at ViT-B/16 ->
                ResNet-50, 224 px, in fp32, bf16 and fp16 (with the gradient scaler), contiguous and channels_last:
                images/s, peak memory, the ratio to logits KD at the same precision and format, the losses finite
  compile       the same step with the student and the projector head under torch.compile (bf16, channels_last)
  swin          a Swin-T teacher's step in bf16 (the CIFAR-100 protocol's other teacher)
  torchrun      `cakd-train` on the digits for two epochs under `torchrun --nproc_per_node 1`: accuracy above chance,
                a kill and resume ending equal to the uninterrupted run, the checkpoint loading on the CPU; then on
                every GPU with NCCL when there are two or more
  notebooks     the cifar100 and imagenet experiment notebooks through papermill on tiny generated data
  loader        images/s per loader worker of JPEG decode and the official augmentation (`bench/loader.py`), and so
                how many workers per GPU the measured step needs
On the CPU (`--device cpu --tiny`, what CI runs) the checks that need CUDA say "skipped: no CUDA" and the others run
at tiny shapes. Exit status: 1 if any check FAILED, else 0.
"""
import argparse
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).parent))
import step   # noqa: E402  (bench/step.py: the step code itself, not a copy)
from report import Report, Skip   # noqa: E402
from timing import interleaved   # noqa: E402

from cakd.core import DeviceError, resolve_device   # noqa: E402

METHODS = ('logits', 'baseline', 'cakd_official', 'cakd_paper', 'kd', 'dist', 'ofa')   # logits first: the ratios
AMPS = ('none', 'bf16', 'fp16')
GROUPS = ('environment', 'step', 'compile', 'swin', 'torchrun', 'notebooks', 'loader')


@dataclass
class Shapes:
    "What the checks run at: the ImageNet shapes on a GPU, tiny ones on the CPU (`--tiny`)."
    image: int = 224
    classes: int = 1000
    batch: int = 64
    reps: int = 5
    student: str = 'resnet50'
    tiny: bool = False

    def teacher(self) -> torch.nn.Module:
        "ViT-B/16 at the image size, or a two-block ViT of patch 4 when tiny (random weights: nothing downloaded)."
        if not self.tiny: return torchvision.models.vit_b_16(image_size=self.image, num_classes=self.classes)
        return torchvision.models.VisionTransformer(image_size=self.image, patch_size=4, num_layers=2, num_heads=2,
                                                    hidden_dim=32, mlp_dim=64, num_classes=self.classes)

    def swin(self) -> torch.nn.Module:
        "timm's Swin-T at the image size, or a two-stage Swin of window 4 when tiny."
        import timm
        opts = dict(img_size=self.image, num_classes=self.classes)
        if self.tiny: opts.update(patch_size=4, window_size=4, embed_dim=48, depths=[2, 2], num_heads=[3, 6])
        return timm.create_model('swin_tiny_patch4_window7_224', **opts)


def tiny_shapes() -> Shapes: return Shapes(image=32, classes=10, batch=4, reps=1, student='resnet18', tiny=True)


def needs_cuda(dev: torch.device, what: str = ''):
    if dev.type != 'cuda': raise Skip('no CUDA' + (f' ({what})' if what else ''))


def environment(dev: torch.device):
    "Versions, devices and the driver, as a figure and a detail."
    info = dict(python=platform.python_version(), torch=torch.__version__, torchvision=torchvision.__version__,
                cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
                else None, device=str(dev), cpus=os.cpu_count(), threads=torch.get_num_threads())
    if dev.type == 'cuda':
        props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
        info.update(gpus=[f'{p.name} {p.total_memory / 2**30:.0f} GiB' for p in props],
                    bf16=torch.cuda.is_bf16_supported(), nccl='.'.join(map(str, torch.cuda.nccl.version())),
                    driver=driver())
        return f"{len(props)} x {info['gpus'][0]}, CUDA {info['cuda']}, cuDNN {info['cudnn']}, " \
               f"NCCL {info['nccl']}, driver {info['driver']}, bf16 {info['bf16']}", info
    return f"torch {info['torch']}, no CUDA on this machine ({info['cpus']} CPUs, {info['threads']} threads)", info


def driver() -> str:
    try: r = subprocess.run(['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'], capture_output=True,
                            text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e: return f'unknown ({e})'
    return r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else 'unknown'


def peak_reset(dev):
    if dev.type == 'cuda': torch.cuda.reset_peak_memory_stats(dev)


def peak_gib(dev) -> float | None:
    return round(torch.cuda.max_memory_allocated(dev) / 2**30, 2) if dev.type == 'cuda' else None


def time_step(teacher, method: str, shapes: Shapes, dev, amp: str, channels_last: bool, compile: bool = False,
              **overrides) -> dict:
    "Images/s, peak memory and the logs of `method`'s full step (bench/step.py's build and step)."
    if amp == 'fp16': needs_cuda(dev, 'fp16 autocast with the gradient scaler is timed on CUDA')
    if amp == 'bf16' and dev.type == 'cuda' and not torch.cuda.is_bf16_supported(): raise Skip('no bf16 on this GPU')
    d = step.build_distiller(teacher, shapes.student, shapes.classes, method, dev, amp, channels_last, compile,
                             **overrides)
    x, y = step.make_batch(shapes.batch, shapes.image, shapes.classes, dev, channels_last)
    logs = {}
    run = step.step_of(d, x, y)
    peak_reset(dev)
    seconds = interleaved({'step': lambda: logs.update(run())}, shapes.reps, step.synchronizer(dev))['step']
    if not step.finite(logs): raise FloatingPointError(f'a loss is not finite: {logs}')
    return dict(images_s=round(shapes.batch / seconds, 1), peak_gib=peak_gib(dev), losses=logs)


def figure_of(r: dict, logits: dict | None) -> str:
    fig = f"{r['images_s']:.0f} images/s"
    if r['peak_gib'] is not None: fig += f", peak {r['peak_gib']:.1f} GiB"
    if logits: fig += f", {r['images_s'] / logits['images_s']:.2f}x logits"
    return fig + ', losses finite'


def step_checks(rep: Report, dev, shapes: Shapes) -> dict:
    "The step matrix: every method x precision x memory format; returns the results by name."
    torch.manual_seed(0)
    teacher, results = shapes.teacher(), {}
    for amp in AMPS:
        for cl in (False, True):
            for m in METHODS:
                fmt = ' channels_last' if cl else ''

                def check(m=m, amp=amp, cl=cl, logits=results.get(f'step logits {amp}{fmt}')):
                    r = time_step(teacher, m, shapes, dev, amp, cl)
                    return figure_of(r, logits), r
                r = rep.run(f'step {m} {amp}{fmt}', check)
                if r: results[f'step {m} {amp}{fmt}'] = r
    return results


def compile_checks(rep: Report, dev, shapes: Shapes, results: dict):
    "logits and cakd_official with the student and head compiled (bf16, channels_last), beside the eager figure."
    teacher = shapes.teacher()
    for m in ('logits', 'cakd_official'):
        eager = results.get(f'step {m} bf16 channels_last')

        def check(m=m, eager=eager):
            needs_cuda(dev, 'torch.compile is timed on CUDA')
            r = time_step(teacher, m, shapes, dev, 'bf16', True, compile=True)
            fig = figure_of(r, None)
            return (fig + (f", {r['images_s'] / eager['images_s']:.2f}x eager" if eager else '')), r
        rep.run(f'compile {m} bf16 channels_last', check)


def swin_check(rep: Report, dev, shapes: Shapes):
    "cakd_official with a Swin-T teacher in bf16 (token discriminator, as METHOD.md §7.15 resolves)."
    def check():
        r = time_step(shapes.swin(), 'cakd_official', shapes, dev, 'bf16', dev.type == 'cuda', disc='token')
        return figure_of(r, None), r
    rep.run('swin-T teacher step cakd_official bf16', check)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default=None, help='default: $CAKD_DEVICE, else the accelerator, else cpu')
    p.add_argument('--tiny', action='store_true', help='tiny shapes (the default on the CPU)')
    p.add_argument('--out', default='runs/gpu_check', help='folder of report.json and report.md')
    p.add_argument('--only', default=','.join(GROUPS), help=f"comma-separated groups of: {', '.join(GROUPS)}")
    p.add_argument('--batch', type=int, default=None, help='images per step (default 64; tiny: 4)')
    a = p.parse_args(argv)
    unknown = set(a.only.split(',')) - set(GROUPS)
    if unknown: p.error(f"--only: unknown group(s) {', '.join(sorted(unknown))}; valid: {', '.join(GROUPS)}")
    return a


def main(argv=None) -> int:
    import runs   # bench/runs.py: torchrun, notebooks, loader
    argv = sys.argv[1:] if argv is None else argv
    a = parse(argv)
    try: dev = resolve_device(a.device)
    except (DeviceError, RuntimeError) as e: sys.exit(f'gpu_check.py: error: --device {a.device}: {e}')
    shapes = tiny_shapes() if a.tiny or dev.type == 'cpu' else Shapes()
    if a.batch: shapes.batch = a.batch
    groups, rep = a.only.split(','), Report(Path(a.out), dev, argv)
    print(f"cakd gpu-check on {dev}: {', '.join(groups)}; shapes {shapes}", flush=True)
    if 'environment' in groups: rep.run('environment', lambda: environment(dev))
    results = step_checks(rep, dev, shapes) if 'step' in groups else {}
    if 'compile' in groups: compile_checks(rep, dev, shapes, results)
    if 'swin' in groups: swin_check(rep, dev, shapes)
    if 'torchrun' in groups: runs.torchrun_checks(rep, dev, Path(a.out))
    if 'notebooks' in groups: runs.notebook_checks(rep, dev, Path(a.out))
    if 'loader' in groups: runs.loader_check(rep, dev, shapes, results)
    c = rep.counts()
    seconds = sum(k['seconds'] for k in rep.checks)
    print(f"{c['ok']} ok, {c['FAILED']} FAILED, {c['skipped']} skipped in {seconds:.0f} s: {rep.out / 'report.md'}")
    return 1 if c['FAILED'] else 0


if __name__ == '__main__':
    sys.exit(main())
