import os
import socket

os.environ.setdefault('CAKD_DEVICE', 'cpu')

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


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


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: starts a browser or a server (CI runs them too)')
