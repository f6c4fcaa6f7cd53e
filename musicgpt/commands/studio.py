"""`musicgpt studio`: a local web app that generates and shows notes and attention arcs live (musicgpt.studio)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from musicgpt.commands._checkpoint_arg import add_checkpoint_argument, checkpoint_of


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `musicgpt studio`."""
    add_checkpoint_argument(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; another address lets "
                             "other machines generate with this one, and the command warns)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 = any free port)")
    parser.add_argument("--no-browser", action="store_true", help="do not open the page in a browser")
    parser.add_argument("--max-upload-mb", type=float, default=20.0, metavar="MB",
                        help="largest primer file accepted (default 20)")
    parser.add_argument("--examples", type=Path, metavar="DIR",
                        help="folder of primers the page offers (default: the checkout's examples/, if any)")
    parser.add_argument("--threads", type=int, default=1, metavar="N", help="CPU threads while generating (default 1)")
    parser.add_argument("--takes", type=Path, metavar="DIR",
                        help="folder that keeps the takes, listed again on the next start (default: "
                             "$XDG_DATA_HOME/musicgpt/takes, i.e. ~/.local/share/musicgpt/takes on Linux)")
    parser.add_argument("--takes-limit-mb", type=float, default=1024.0, metavar="MB",
                        help="size cap of the takes folder: past it the oldest takes are removed first, the newest "
                             "is always kept (default 1024)")


def run(args: argparse.Namespace) -> int:
    """Load the model, serve the app, open the page; runs until Ctrl-C."""
    from musicgpt.checkpoint import DEFAULT_DIR
    from musicgpt.errors import ConfigError
    from musicgpt.model import load_model
    from musicgpt.studio.app import create_app
    from musicgpt.studio.files import default_takes_dir
    from musicgpt.studio.server import StudioServer, allowed_hosts, is_loopback

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port: must lie in 0..65535, got {args.port}")
    if args.examples is not None and not args.examples.is_dir():
        raise ConfigError(f"--examples {args.examples}: no such folder")
    if not args.takes_limit_mb > 0:  # also refuses nan
        raise ConfigError(f"--takes-limit-mb: must be a positive number, got {args.takes_limit_mb}")
    takes = args.takes if args.takes is not None else default_takes_dir()
    if takes.exists() and not takes.is_dir():
        raise ConfigError(f"--takes {takes}: not a folder")
    path = checkpoint_of(args)
    name = "bundled" if path.resolve() == DEFAULT_DIR.resolve() else str(path)
    model = load_model(path)  # carrying its tokenizer, which the studio reads with
    app = create_app(model, model_name=name, upload_limit_mb=args.max_upload_mb, examples=args.examples,
                     threads=args.threads, hosts=allowed_hosts(args.host), takes=takes,
                     takes_limit_mb=args.takes_limit_mb)
    try:
        server = StudioServer(app, args.host, args.port)
    except BaseException:  # a port in use: nothing of this run stays on disk
        app.state.studio.close()
        raise
    if not is_loopback(args.host):
        print(f"warning: listening on {args.host}: anyone who can reach this machine on port {server.port} can use "
              "the studio (it has no login); use the default --host 127.0.0.1 to keep it to this machine",
              file=sys.stderr)
    print(f"musicgpt studio: {name} ({model.config.n_layer} layers x {model.config.n_head} heads) at {server.url} "
          f"(Ctrl-C stops it); takes kept in {takes}", flush=True)
    if not args.no_browser:
        import webbrowser

        webbrowser.open(server.url)
    try:
        server.run()
    finally:
        app.state.studio.close()  # the worker and the uploads, also when uvicorn did not start (takes stay)
    return 0
