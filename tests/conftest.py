"""Fixtures several test files share: a long piece, a tiny checkpoint and a tiny model on one thread, made once per
module that asks."""

from pathlib import Path

import pytest

from tiny_models import long_midi, tiny_checkpoint, tiny_model


@pytest.fixture(scope="module")
def long_file(tmp_path_factory) -> Path:
    """A minute of two-hand piano in a MIDI file (`tiny_models.long_midi`): longer than a tiny model's context."""
    return long_midi(tmp_path_factory.mktemp("long") / "long.mid")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny checkpoint directory with a plain tokenizer (a file that defines its own `checkpoint` overrides it)."""
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def one_thread_model():
    """The tiny model with torch on one thread while the module runs (a duet decodes one sequence: a second thread
    only waits on a busy machine); the thread count is restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tiny_model()
    torch.set_num_threads(threads)
