"""Install a checkpoint as the bundled model: copy its config, weights and tokenizer into musicgpt/pretrained/.

    python -m tools.install_pretrained runs/small-cpu            # the run's best/ checkpoint
    python -m tools.install_pretrained runs/small-cpu/checkpoints/step-0006000
    python -m tools.install_pretrained CKPT --dest /tmp/pretrained   # somewhere else (a dry run)

The weights are re-saved from the loaded model (float32, or float16 when float32 would exceed the
size limit, 25 MB by default; bfloat16 only for weights outside float16's range), with the source checkpoint's meta (step, tokens, valid NLL) plus
where they came from, their dtype and their sha256 in config.json. The installed directory is then
loaded back and checked: same config and tokenizer, and the same logits as the source on a
stretch of tokens (exactly when stored as the source stores them, closely otherwise). Other files in the destination
(MODEL_CARD.md, LICENSE) are left alone; the weights are written before config.json, so a
half-finished install is never taken for a model.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from musicgpt import checkpoint, load_checkpoint, save_model
from musicgpt._io import atomic_write
from musicgpt.errors import CheckpointError

ROOT = Path(__file__).resolve().parents[1]

MAX_BYTES = 25_000_000  # issue 6: the bundled weights may take at most 25 MB
FILES = (checkpoint.WEIGHTS, checkpoint.TOKENIZER, checkpoint.CONFIG)  # config.json last: it marks a model


def source_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a training run directory's best/ checkpoint."""
    path = Path(path)
    if not (path / checkpoint.CONFIG).is_file() and (path / "best" / checkpoint.CONFIG).is_file():
        return path / "best"
    return checkpoint.resolve(path)


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _shown(path: Path) -> str:
    """The path relative to the repository when it lies inside (no local absolute paths in shipped files)."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def install(source: str | Path, dest: str | Path = checkpoint.DEFAULT_DIR, *, max_bytes: int = MAX_BYTES) -> dict:
    """Copy checkpoint `source` into `dest` (float32, or float16 above max_bytes) and verify it; returns a summary."""
    source, dest = source_checkpoint(source), Path(dest)
    model, tokenizer = load_checkpoint(source)
    if tokenizer is None:
        raise CheckpointError(f"checkpoint {source}: has no {checkpoint.TOKENIZER}; the bundled model needs one")
    raw = checkpoint.read_config(source)
    meta = dict(raw.get("meta") or {})
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.install-", dir=dest.parent) as tmp:
        staged = Path(tmp) / "ckpt"
        dtype = None
        save_model(model, staged, tokenizer, meta=meta)
        fp32_bytes = (staged / checkpoint.WEIGHTS).stat().st_size
        if fp32_bytes > max_bytes:  # float16 keeps 3 more mantissa bits than bfloat16; weights fit its range
            fits = all(float(t.abs().max()) < 60000.0 for t in model.state_dict().values() if t.is_floating_point())
            dtype = torch.float16 if fits else torch.bfloat16
            save_model(model, staged, tokenizer, dtype=dtype, meta=meta)
        size = (staged / checkpoint.WEIGHTS).stat().st_size
        if size > max_bytes:
            raise CheckpointError(f"checkpoint {source}: {size:,} bytes even as {dtype}, over the {max_bytes:,} limit")
        meta.update({"source": _shown(source), "stored_dtype": str(dtype or torch.float32).removeprefix("torch."),
                     "weights_sha256": sha256(staged / checkpoint.WEIGHTS),
                     "installed": datetime.datetime.now().isoformat(timespec="seconds")})
        save_model(model, staged, tokenizer, dtype=dtype, meta=meta)
        if sha256(staged / checkpoint.WEIGHTS) != meta["weights_sha256"]:  # same tensors, so the same bytes
            raise CheckpointError(f"checkpoint {source}: re-saving the weights did not reproduce them byte for byte")
        for name in FILES:  # one at a time, config.json last
            atomic_write(dest / name, lambda tmp, name=name: shutil.copyfile(staged / name, tmp))
    check = verify(source, dest)
    return {"source": str(source), "dest": str(dest), "bytes": size, "float32_bytes": fp32_bytes,
            "stored_dtype": meta["stored_dtype"], "sha256": meta["weights_sha256"], "step": meta.get("step"),
            "tokens": meta.get("tokens"), "valid_nll": meta.get("valid_nll"), **check}


@torch.no_grad()
def verify(source: str | Path, dest: str | Path, n_tokens: int = 256) -> dict:
    """Load `dest` back and compare it with `source`: config, tokenizer, and logits on real-looking tokens."""
    ref_model, ref_tok = load_checkpoint(source_checkpoint(source))
    model, tok = load_checkpoint(dest)
    if model.config != ref_model.config:
        raise CheckpointError(f"installed model {dest}: config differs from {source}")
    if tok is None or tok.to_dict() != ref_tok.to_dict():
        raise CheckpointError(f"installed model {dest}: tokenizer differs from {source}")
    if tok.vocab_size > model.config.vocab_size:
        raise CheckpointError(f"installed model {dest}: tokenizer has {tok.vocab_size} tokens, "
                              f"model {model.config.vocab_size}")
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, tok.vocab_size, (1, min(n_tokens, model.config.n_ctx)), generator=generator)  # (1, L)
    ids[0, 0] = tok.bos_id
    ref = ref_model(ids).logits.float()  # (1, L, V)
    got = model.float()(ids).logits.float()  # (1, L, V)
    diff = float((ref - got).abs().max())
    stored = {t.dtype for t in load_file(str(Path(dest) / checkpoint.WEIGHTS)).values()}
    source_stored = {t.dtype for t in load_file(str(source_checkpoint(source) / checkpoint.WEIGHTS)).values()}
    exact = stored == {torch.float32} or stored == source_stored
    if (exact and diff != 0.0) or diff > 0.5:
        raise CheckpointError(f"installed model {dest}: logits differ from {source} by up to {diff:.3g}")
    return {"verified": True, "max_logit_diff": diff, "parameters": model.num_parameters()}


def main(argv: list[str] | None = None) -> int:
    """Install and print what was installed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="checkpoint directory, or a training run directory (its best/)")
    parser.add_argument("--dest", default=str(checkpoint.DEFAULT_DIR), help="where to install (default: %(default)s)")
    parser.add_argument("--max-bytes", type=int, default=MAX_BYTES,
                        help="size limit of model.safetensors (default 25 MB)")
    args = parser.parse_args(argv)
    try:
        done = install(args.source, args.dest, max_bytes=args.max_bytes)
    except CheckpointError as exc:
        print(f"install_pretrained: {exc}", file=sys.stderr)
        return 1
    print(f"installed {done['source']} (step {done['step']}, {done['tokens']} tokens) into {done['dest']}: "
          f"{done['bytes']:,} bytes {done['stored_dtype']}, {done['parameters']:,} parameters, "
          f"sha256 {done['sha256'][:16]}…, loads back with max logit difference {done['max_logit_diff']:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
