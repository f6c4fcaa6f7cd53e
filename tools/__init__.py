"""Maintainer tools run from the repository root: `python -m tools.install_pretrained ...`, `tools/gpu_train.sh`."""
