"""The one atomic-write helper: all or nothing, the umask's permissions, and what a killed writer leaves."""

import os
import stat

import pytest

from musicgpt._io import atomic_directory, atomic_write, atomic_write_text, remove_leftovers, umask
from musicgpt.errors import WriteError


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_umask_is_read_without_changing_it():
    old = os.umask(0o027)
    try:
        assert umask() == 0o027 and umask() == 0o027
    finally:
        os.umask(old)


def test_a_file_is_replaced_whole_with_the_umask_permissions(tmp_path):
    path = atomic_write_text(tmp_path / "a.json", "new")
    assert path.read_text() == "new" and mode_of(path) == 0o666 & ~umask()
    assert mode_of(atomic_write(tmp_path / "lib.so", lambda t: t.write_bytes(b"x"), mode=0o777)) == 0o777 & ~umask()

    def fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(WriteError, match="a.json: cannot write .disk full"):  # one line naming the file
        atomic_write(path, fail)
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "lib.so"]


def test_missing_parents_are_an_error_unless_asked_for(tmp_path):
    with pytest.raises(WriteError, match="No such file"):
        atomic_write_text(tmp_path / "no" / "x.txt", "x")
    assert atomic_write_text(tmp_path / "no" / "x.txt", "x", make_parents=True).read_text() == "x"


def test_a_directory_is_swapped_in_only_when_complete(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_directory(target, durable=True) as tmp:
        (tmp / "config.json").write_text("1")
    assert (target / "config.json").read_text() == "1" and mode_of(target) == 0o777 & ~umask()
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "config.json").write_text("2")
            raise RuntimeError("killed")
    assert (target / "config.json").read_text() == "1" and [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_leftovers_of_killed_writers_are_removed_and_nothing_else(tmp_path):
    (tmp_path / ".metrics.csv.k2j3.tmp").write_text("half")
    (tmp_path / ".step-0000003.x1.tmp").mkdir()
    keep = [tmp_path / "metrics.csv", tmp_path / ".hidden", tmp_path / "notes.tmp"]
    for p in keep:
        p.write_text("keep")
    assert len(remove_leftovers(tmp_path)) == 2
    assert sorted(tmp_path.iterdir()) == sorted(keep)


def test_a_run_directory_is_cleaned_of_what_a_kill_left(tmp_path):
    from musicgpt.training.rundir import clean_partial

    step = tmp_path / "checkpoints" / "step-0000002"
    step.mkdir(parents=True)
    leftovers = [tmp_path / ".run.json.ab12.tmp", tmp_path / ".best.cd34.tmp", step / ".trainer.json.ef56.tmp",
                 tmp_path / "checkpoints" / ".step-0000004.gh78.tmp"]
    for p in leftovers:
        p.mkdir() if p.name.startswith((".best", ".step")) else p.write_text("half")
    (step / "trainer.json").write_text("{}")
    clean_partial(tmp_path)
    assert not any(p.exists() for p in leftovers) and (step / "trainer.json").exists()
