"""`musicgpt live`: a duet with the model on the system's MIDI ports (mido with python-rtmidi; torch for the model).

    ports.py      the MIDI backend, listing ports, opening one by name (or a piece of it) or a virtual one
    runner.py     the loop: the input's messages into a DuetSession, stamped on arrival; the session polled
    scheduler.py  the model's notes sent at their times, cancelled ones dropped, all released at the end
    display.py    the console's lines and the summary (no torch)

The duet itself (turns, the cache, sampling) is `musicgpt.duet`'s; this room only drives ports. Listing
ports needs no torch: the runner is imported when first asked for.
"""

from musicgpt._lazy import lazy_getattr
from musicgpt.live.ports import MidiPortError, PortSystem, match_port, open_system

# name -> (module, attribute), imported when first asked for (torch)
_LAZY = {
    "LiveConfig": ("musicgpt.live.runner", "LiveConfig"),
    "LiveRunner": ("musicgpt.live.runner", "LiveRunner"),
}

__all__ = ["MidiPortError", "PortSystem", "match_port", "open_system", *_LAZY]

__getattr__ = lazy_getattr(__name__, _LAZY)
