"""A training run's metrics: RUN_DIR/metrics.csv, TensorBoard when installed, and the curves as PNG.

No torch here: `musicgpt plot` reads a run without loading the model stack.
"""

from __future__ import annotations

import csv
from pathlib import Path

from musicgpt.errors import MusicGPTError

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
        self._writer.writerow(row)
        self._file.flush()
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
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            if row["step"] <= step:
                writer.writerow({k: ("" if v is None else _fmt(v)) for k, v in row.items()})
    tmp.replace(path)


def read_metrics(path: str | Path) -> list[dict[str, float | int | None]]:
    """The rows of a metrics.csv, numbers parsed, empty cells as None."""
    path = Path(path)
    if not path.exists():
        raise MusicGPTError(f"{path}: no metrics file (is this a training run directory?)")
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for raw in csv.DictReader(f):
            row: dict[str, float | int | None] = {}
            for key in COLUMNS:
                text = (raw.get(key) or "").strip()
                row[key] = None if not text else (int(text) if key in ("step", "tokens") else float(text))
            if row["step"] is not None:
                rows.append(row)
    return rows


def plot_curves(run_dir: str | Path, out: str | Path | None = None, smooth: float = 0.9) -> Path:
    """Draw train loss (raw and smoothed) and valid NLL against steps; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.csv")
    train = [(r["step"], r["train_loss"]) for r in rows if r["train_loss"] is not None]
    valid = [(r["step"], r["valid_nll"]) for r in rows if r["valid_nll"] is not None]
    if not train and not valid:
        raise MusicGPTError(f"{run_dir / 'metrics.csv'}: no train or valid values to plot yet")
    out = Path(out) if out is not None else run_dir / "curves.png"

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    if train:
        steps, losses = zip(*train)
        ax.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=0.8)
        alpha = min(smooth, max(0.0, 1.0 - 10.0 / len(losses)))  # short runs: lighter smoothing, less lag
        ax.plot(steps, _ema(losses, alpha), color="tab:blue", linewidth=1.6, label="train loss (smoothed)")
    if valid:
        steps, nll = zip(*valid)
        ax.plot(steps, nll, color="tab:orange", marker="o", markersize=3.5, linewidth=1.6, label="valid NLL")
        best = min(range(len(nll)), key=nll.__getitem__)
        ax.annotate(f"best {nll[best]:.3f}", (steps[best], nll[best]), textcoords="offset points",
                    xytext=(0, -14), ha="center", fontsize=8, color="tab:orange")
    ax.set_xlabel("step")
    ax.set_ylabel("nats per event")
    ax.set_title(f"{run_dir.resolve().name}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _ema(values, alpha: float) -> list[float]:
    """Exponential moving average with bias correction, so the first points are not dragged to 0."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = alpha * avg + (1 - alpha) * v
        out.append(avg / (1 - alpha**i) if alpha > 0 else v)
    return out
