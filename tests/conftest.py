"""Fixtures several test files share: a long piece and a tiny checkpoint, made once per module that asks."""

from pathlib import Path

import pytest

from tiny_models import long_midi, tiny_checkpoint


@pytest.fixture(scope="module")
def long_file(tmp_path_factory) -> Path:
    """A minute of two-hand piano in a MIDI file (`tiny_models.long_midi`): longer than a tiny model's context."""
    return long_midi(tmp_path_factory.mktemp("long") / "long.mid")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny checkpoint directory with a plain tokenizer (a file that defines its own `checkpoint` overrides it)."""
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")
