"""The project's benchmarks: `python -m bench` runs them all and renders docs/benchmarks.md.

Each script also runs on its own (`python bench/<name>.py`) and writes JSON to bench/results/;
bench/report.py renders the report from those files. See bench/suite.py for the list and sizes.
"""
