"""The version of musicgpt (read by the package, the CLI, the viewer, and pyproject.toml)."""

__version__ = "0.1.0"
