"""A studio server on a tiny model for the studio tests, and a reader of its event streams."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

from musicgpt.studio import StudioServer, create_app
from musicgpt.tokens.performance import PerformanceTokenizer
from tiny_models import FIXTURES, PRIMER, steering_model, tiny_model

__all__ = ["FIXTURES", "PRIMER", "serve_tiny", "read_events", "wait_until", "steering_model"]


@contextmanager
def serve_tiny(examples: Path | None = None, steer: bool = False, **kwargs):
    """(server, app) of the studio on the tiny model (`steer`: with controls and infilling), on a free port of
    127.0.0.1."""
    model, tokenizer = steering_model() if steer else (tiny_model(), PerformanceTokenizer())
    app = create_app(model, tokenizer, model_name="tiny", examples=examples or FIXTURES, **kwargs)
    server = StudioServer(app, port=0).start()
    try:
        yield server, app
    finally:
        server.stop()


def read_events(response, until=None, times: list | None = None):
    """Yield (name, data) of an httpx streaming response's events; `times` gets each event's arrival time."""
    name, data = None, ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data += line[6:]
        elif line == "" and name is not None:
            if times is not None:
                times.append(time.perf_counter())
            yield name, json.loads(data)
            name, data = None, ""


def wait_until(condition, timeout: float = 10.0, step: float = 0.05) -> bool:
    """Poll `condition()` until it is true or `timeout` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return bool(condition())

