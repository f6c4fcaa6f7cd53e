"""A training run's metrics log: RUN_DIR/metrics.csv (and TensorBoard scalars when installed), written and read.

No torch at import: `musicgpt plot` (musicgpt.viz.curves) reads a run without loading the model stack.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

from musicgpt._io import atomic_write
from musicgpt.errors import MusicGPTError, WriteError

COLUMNS = ["step", "tokens", "time_s", "lr", "train_loss", "grad_norm", "tokens_per_s", "valid_nll", "valid_ppl"]


class MetricsLog:
    """Appends rows to metrics.csv (flushed at once) and mirrors them to TensorBoard if available."""

    def __init__(self, run_dir: str | Path, resume_step: int | None = None, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / "metrics.csv"
        if resume_step is not None and self.path.exists():
            truncate_after(self.path, resume_step)  # rows past the checkpoint will be logged again
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._file = open(self.path, "a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, fieldnames=COLUMNS)
        if new:
            self._writer.writeheader()
            self._file.flush()
        self._tb = _tensorboard_writer(Path(run_dir) / "tensorboard") if tensorboard else None

    def log(self, step: int, **values: float) -> None:
        """One row: `step` plus any of COLUMNS; missing ones stay empty."""
        unknown = set(values) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown metric columns: {sorted(unknown)}")
        row = {"step": step, **{k: _fmt(v) for k, v in values.items() if v is not None}}
        try:
            self._writer.writerow(row)
            self._file.flush()
        except OSError as exc:  # a full disk: one line naming the file (the checkpoints stay as they were)
            raise WriteError(f"{self.path}: cannot write ({exc.strerror or exc})") from None
        if self._tb is not None:
            for key, value in values.items():
                if value is not None and key not in ("tokens", "time_s"):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _fmt(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(float(value))  # full precision: resumed runs are compared bit for bit


def _tensorboard_writer(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed (or torch absent): CSV only
        return None
    return SummaryWriter(str(log_dir))


def truncate_after(path: Path, step: int) -> None:
    """Drop the rows logged after `step` (they belong to steps a resumed run repeats)."""
    rows = read_metrics(path)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            for row in rows:
                if row["step"] <= step:
                    writer.writerow({k: ("" if v is None else _fmt(v)) for k, v in row.items()})

    atomic_write(path, write)


def read_metrics(path: str | Path) -> list[dict[str, float | int | None]]:
    """The rows of a metrics.csv, numbers parsed, empty cells as None.

    A line that is not a row of numbers (a disk that filled up mid-write, a stray edit) is skipped
    with a warning naming it, so that a run still resumes and plots.
    """
    path = Path(path)
    if not path.exists():
        raise MusicGPTError(f"{path}: no metrics file (is this a training run directory?)")
    try:
        lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise MusicGPTError(f"{path}: cannot read ({exc.strerror or exc})") from None
    rows, header, bad = [], None, []
    for number, line in enumerate(lines, start=1):
        try:
            cells = next(csv.reader([line])) if line.strip() else []
        except csv.Error:
            bad.append(number)
            continue
        if header is None:
            header = cells
            continue
        if not cells:
            continue
        try:
            if len(cells) != len(header):
                raise ValueError("wrong number of cells")
            raw = dict(zip(header, cells))
            row: dict[str, float | int | None] = {}
            for key in COLUMNS:
                text = (raw.get(key) or "").strip()
                row[key] = None if not text else (int(text) if key in ("step", "tokens") else float(text))
        except ValueError:
            bad.append(number)
            continue
        if row["step"] is not None:
            rows.append(row)
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        warnings.warn(f"{path}: line(s) {shown} are not metrics rows and were skipped", RuntimeWarning, stacklevel=2)
    return rows
