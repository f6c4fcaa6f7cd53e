"""Tokens (no torch): notes <-> token ids, the grammar of valid sequences, and augmentation on ids."""
