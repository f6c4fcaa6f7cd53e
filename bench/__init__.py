"""The project's benchmarks: `python -m bench` runs them all and renders docs/benchmarks.md.

Each benchmark also runs on its own from the repository root (`python -m bench.<name>`) and writes JSON to
bench/results/; `python -m bench.report` renders the report from those files. See bench/suite.py for the list
and sizes.
"""
