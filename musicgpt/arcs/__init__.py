"""Attention arcs over notes: captured from the model (capture, torch) and stored as arcs.json (format, no torch)."""
