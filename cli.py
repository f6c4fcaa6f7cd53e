"""Run the musicgpt CLI from a source checkout: `python cli.py COMMAND ...`."""

import sys

from musicgpt.cli import main

if __name__ == "__main__":
    sys.exit(main())
