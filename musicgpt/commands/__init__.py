"""One module per CLI subcommand; each defines `configure(parser)` and `run(args) -> int`."""
