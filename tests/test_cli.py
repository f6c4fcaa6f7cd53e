"""The CLI dispatcher: every subcommand answers --help, and bad input gives one-line errors."""

import subprocess
import sys
from pathlib import Path

import pytest

from musicgpt.cli import COMMANDS, main


def test_top_level_help_lists_every_command(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_subcommand_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    assert "usage: musicgpt " + name in capsys.readouterr().out


def test_python_cli_py_runs_from_checkout():
    out = subprocess.run([sys.executable, "cli.py", "--version"], capture_output=True, text=True, check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.stdout.startswith("musicgpt ")
