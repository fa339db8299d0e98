import os
import socket

os.environ.setdefault('CAKD_DEVICE', 'cpu')

import pytest
import torch
import torchvision


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_vit(image_size=32, patch_size=4, num_classes=10, layers=2, heads=4, dim=64):
    "A small torchvision ViT: 32 px, 4 px patches (an 8x8 grid), 4 heads of 16."
    return torchvision.models.VisionTransformer(image_size=image_size, patch_size=patch_size, num_layers=layers,
                                                num_heads=heads, hidden_dim=dim, mlp_dim=2 * dim, num_classes=num_classes)


@pytest.fixture
def vit():
    return tiny_vit()


@pytest.fixture(scope='session')
def vit_b16():
    "The real ViT-B/16 architecture (random weights: nothing is downloaded)."
    return torchvision.models.vit_b_16()


def free_port() -> int:
    "A TCP port nobody listens on now (for torchrun rendezvous and servers started by tests)."
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='session')
def digits(tmp_path_factory):
    "A JPEG ImageFolder of real handwritten digits (scikit-learn), 12 per class: 10 train and 2 val each."
    from cakd.data import write_digits
    return write_digits(tmp_path_factory.mktemp('data') / 'digits', per_class=12)
