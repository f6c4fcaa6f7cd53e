"""Corpora (no torch): dataset recipes, parallel preparation into token shards, and reading them back."""
