"""Images/s per loader worker of the official training data path at ImageNet size, each decode path side by side.

python bench/loader.py [--images 48] [--crop 224] [--reps 3] [--batch 64] [--step-images-per-s N]

Writes an ImageFolder of real-size JPEGs (scikit-image's photographs, resized to ImageNet's typical 500x375 and
varied by crop and flip; nothing is downloaded) into a temporary folder, then times, on one thread as one loader
worker has it:
  - decode alone: PIL (what `cakd.data.ImageFolder` uses) and `torchvision.io.decode_jpeg` on the CPU;
  - decode + the official augmentation (`cakd.data.train_transform`: RandomResizedCrop, flip, TrivialAugment-wide,
    normalise, random erasing 0.25) through PIL, and the same ops in `torchvision.transforms.v2` on decoded tensors
    (cakd-train's `--decode pil` and `--decode tensor`);
  - mixup (`cakd.data.batch_mix`), which runs on whole batches in the main process, per image.
With `--step-images-per-s` (a measured training step, e.g. from `bench/step.py` or `bench/gpu_check.py`) it prints
how many workers per GPU the loader needs to keep up. `bench/gpu_check.py` imports the pieces below.
"""
import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cakd.data import ImageFolder, batch_mix, decode_tensor, train_transform

PHOTOS = ('astronaut', 'coffee', 'chelsea', 'rocket', 'hubble_deep_field', 'retina', 'colorwheel',
          'immunohistochemistry')
SIZE = (500, 375)   # ImageNet's most common training image size (width, height)


def write_jpegs(root: Path, images: int, size: tuple = SIZE, quality: int = 90) -> Path:
    "An ImageFolder `root/train/<photo>/*.jpg` of `images` real-size JPEGs cut from scikit-image's photographs."
    import skimage.data
    g = np.random.default_rng(0)
    for i in range(images):
        name = PHOTOS[i % len(PHOTOS)]
        photo = Image.fromarray(getattr(skimage.data, name)()).convert('RGB')
        w, h = photo.size
        left, top = g.integers(0, w // 4 + 1), g.integers(0, h // 4 + 1)
        img = photo.crop((left, top, left + 3 * w // 4, top + 3 * h // 4)).resize(size, Image.BILINEAR)
        if i % 2: img = img.transpose(Image.FLIP_LEFT_RIGHT)
        folder = root / 'train' / name
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f'{i:04d}.jpg', quality=quality)
    return root / 'train'


PIL_PATH = 'decode + official augmentation: PIL (--decode pil)'
TENSOR_PATH = 'decode + official augmentation: torchvision.io + v2 (--decode tensor)'


def pil_decode(path): return Image.open(path).convert('RGB')


def paths_of(train: Path) -> list: return sorted(train.rglob('*.jpg'))


def per_second(fn, items: list, reps: int) -> float:
    "Items per second of `fn` over `items` (the best of `reps` passes: a worker's steady state)."
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        for it in items: fn(it)
        best = min(best, time.perf_counter() - t0)
    return len(items) / best


def paths(train: Path, crop: int) -> dict:
    "Each data path a worker can take, as a function of an image's file path."
    official = dict(auto_augment='ta_wide', random_erase=0.25)
    folder = ImageFolder(train, train_transform(crop, **official))
    tensors = ImageFolder(train, train_transform(crop, **official, tensors=True), decode='tensor')
    index = {Path(p): i for i, (p, _) in enumerate(folder.samples)}
    return {'decode: PIL': pil_decode, 'decode: torchvision.io': decode_tensor,
            PIL_PATH: lambda p: folder[index[p]], TENSOR_PATH: lambda p: tensors[index[p]]}


def mixup_per_second(batch: int, crop: int, reps: int, classes: int = 1000) -> float:
    "Images per second of `batch_mix` (mixup 0.2) on a batch on the CPU (training mixes on the run's device)."
    mix, g = batch_mix(classes, mixup_alpha=0.2), torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, 3, crop, crop, generator=g), torch.randint(0, classes, (batch,), generator=g)
    return batch * per_second(lambda _: mix(x, y), [0], reps)


def workers_needed(step_ips: float, worker_ips: float) -> int:
    "Loader workers per GPU for a step of `step_ips` images/s when one worker makes `worker_ips`."
    return max(1, math.ceil(step_ips / worker_ips))


def workers_line(step_ips: float, ips: dict, step: str = 'the step') -> str:
    "How many loader workers per GPU keep up with a step of `step_ips` images/s, on each decode path."
    pil, tens = ips[PIL_PATH], ips[TENSOR_PATH]
    return (f"the loader needs {workers_needed(step_ips, pil)} workers per GPU to keep up ({step}: {step_ips:.0f} "
            f"images/s / {pil:.0f}), {workers_needed(step_ips, tens)} with --decode tensor")


def measure(images: int, crop: int, reps: int, batch: int) -> dict:
    "Images/s of every path on one thread, on a freshly written folder of JPEGs (removed afterwards)."
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            train = write_jpegs(Path(tmp), images)
            files = paths_of(train)
            out = {k: per_second(f, files, reps) for k, f in paths(train, crop).items()}
        out['mixup 0.2 (per image, on the CPU)'] = mixup_per_second(batch, crop, reps)
    finally:
        torch.set_num_threads(threads)
    return out


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--images', type=int, default=48)
    p.add_argument('--crop', type=int, default=224)
    p.add_argument('--reps', type=int, default=3)
    p.add_argument('--batch', type=int, default=64)
    p.add_argument('--step-images-per-s', type=float, default=None, help='a measured step, images/s per GPU')
    return p.parse_args(argv)


def main(argv=None):
    a = parse(argv)
    print(f"{a.images} JPEGs of {SIZE[0]}x{SIZE[1]}, crop {a.crop}, one thread (one loader worker), best of {a.reps}")
    ips = measure(a.images, a.crop, a.reps, a.batch)
    for k, v in ips.items():
        print(f"{k:70s} {v:8.1f} images/s")
    print(f"torchvision.io+v2/PIL = {ips[TENSOR_PATH] / ips[PIL_PATH]:.2f}")
    if a.step_images_per_s: print(workers_line(a.step_images_per_s, ips))


if __name__ == '__main__':
    main()
