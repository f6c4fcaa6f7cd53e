"""The system's MIDI ports through mido: finding a backend, listing ports, opening one by name or a virtual one.

The backend is mido's python-rtmidi one (ALSA on Linux, CoreMIDI on macOS, Windows MultiMedia), or the one
`MIDO_BACKEND` names. Every way this can fail (python-rtmidi not installed, no MIDI system on the machine, no
port of that name, a name that fits several ports, no virtual ports on this system) is a `MidiPortError`
whose one line names the thing and lists what exists.

A port is named by its exact name or by a piece of it that fits one port only, case aside: ALSA appends
client and port numbers ("Keystation 49:Keystation 49 MIDI 1 20:0") that change when a cable is replugged,
so "keystation" is the name a musician types.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Callable

import mido

from musicgpt.errors import MusicGPTError

__all__ = ["MidiPortError", "PortSystem", "open_system", "match_port", "listing", "INSTALL_HINT", "RTMIDI"]

RTMIDI = "mido.backends.rtmidi"
INSTALL_HINT = "pip install 'musicgpt[live]'"
ALSA_SEQUENCER = "/dev/snd/seq"


class MidiPortError(MusicGPTError):
    """No MIDI backend, no such port, or a port that cannot be opened; the message lists what exists."""


def listing(names: list[str]) -> str:
    """Port names for a one-line message: quoted, comma-separated, or '(none)'."""
    return ", ".join(repr(n) for n in names) if names else "(none)"


def match_port(wanted: str, names: list[str], what: str) -> str:
    """The one port of `names` that `wanted` names: exactly, else the only one containing it (case aside)."""
    if wanted in names:
        return wanted
    fits = [n for n in names if wanted.casefold() in n.casefold()]
    if len(fits) == 1:
        return fits[0]
    if not fits:
        raise MidiPortError(f"no MIDI {what} port matches {wanted!r}; {what}s: {listing(names)}")
    raise MidiPortError(f"MIDI {what} {wanted!r} fits {len(fits)} ports, name one: {listing(fits)}")


@dataclass
class PortSystem:
    """One MIDI backend (a `mido.Backend`): its ports listed and opened."""

    backend: mido.Backend

    @property
    def name(self) -> str:
        """The backend's module and API, e.g. 'mido.backends.rtmidi/LINUX_ALSA'."""
        return self.backend.name + (f"/{self.backend.api}" if self.backend.api else "")

    def inputs(self) -> list[str]:
        """The input port names (keyboards, other programs' outputs)."""
        return list(self.backend.get_input_names())

    def outputs(self) -> list[str]:
        """The output port names (synths, other programs' inputs)."""
        return list(self.backend.get_output_names())

    def describe(self) -> str:
        """The ports as a few lines for --list-ports."""
        lines = [f"MIDI backend: {self.name}", "inputs (--in):"]
        lines += [f"  {n}" for n in self.inputs()] or ["  (none)"]
        lines.append("outputs (--out):")
        lines += [f"  {n}" for n in self.outputs()] or ["  (none)"]
        return "\n".join(lines)

    def open_input(self, wanted: str, callback: Callable[[mido.Message], None]) -> mido.ports.BaseInput:
        """The input port `wanted` names, calling `callback` with each message as it arrives (the backend's thread)."""
        name = match_port(wanted, self.inputs(), "input")
        return self._open(lambda: self.backend.open_input(name, callback=callback), f"input {name!r}")

    def open_output(self, wanted: str) -> mido.ports.BaseOutput:
        """The output port `wanted` names."""
        name = match_port(wanted, self.outputs(), "output")
        return self._open(lambda: self.backend.open_output(name), f"output {name!r}")

    def open_virtual_input(self, name: str, callback: Callable[[mido.Message], None]) -> mido.ports.BaseInput:
        """A new input port called `name` that other programs (a DAW) send to."""
        return self._open(lambda: self.backend.open_input(name, virtual=True, callback=callback),
                          f"virtual input {name!r}", virtual=True)

    def open_virtual_output(self, name: str) -> mido.ports.BaseOutput:
        """A new output port called `name` that other programs (a DAW, a synth) listen to."""
        return self._open(lambda: self.backend.open_output(name, virtual=True), f"virtual output {name!r}",
                          virtual=True)

    def _open(self, opener, what: str, virtual: bool = False):
        try:
            return opener()
        except NotImplementedError as exc:
            raise MidiPortError(f"MIDI {what}: {self.name} cannot make virtual ports here ({exc or 'not supported'}); "
                                f"use a loopback port (Windows: loopMIDI) with --in/--out") from None
        except (OSError, RuntimeError, ValueError, TypeError) as exc:
            hint = "; this MIDI system may not make virtual ports: use --in/--out" if virtual else ""
            raise MidiPortError(f"MIDI {what}: cannot open it ({_reason(exc)}){hint}") from None


def open_system(backend: str | None = None) -> PortSystem:
    """The MIDI backend `backend` (a mido backend module; default MIDO_BACKEND, else python-rtmidi), checked to
    reach a MIDI system, or a `MidiPortError` saying why there is none."""
    name = backend or os.environ.get("MIDO_BACKEND") or RTMIDI
    system = PortSystem(mido.Backend(name))
    if system.backend.name == RTMIDI:
        try:
            import rtmidi  # noqa: F401  (mido's rtmidi backend needs it; say how to get it)
        except ImportError:
            raise MidiPortError(f"no MIDI backend: python-rtmidi is not installed ({INSTALL_HINT})") from None
        if sys.platform.startswith("linux") and system.backend.api in (None, "LINUX_ALSA") \
                and not os.path.exists(ALSA_SEQUENCER):  # asked anyway, ALSA prints its failure on stderr first
            raise MidiPortError(f"no MIDI backend: the ALSA sequencer {ALSA_SEQUENCER} is missing (no sound "
                                "support here: load it with `sudo modprobe snd-seq`, or give a container "
                                "--device /dev/snd)")
    try:
        system.backend.load()
        system.inputs()
    except ImportError as exc:
        raise MidiPortError(f"no MIDI backend: {name} does not import ({_reason(exc)})") from None
    except (OSError, RuntimeError, ValueError) as exc:  # rtmidi's SystemError (an OSError): no MIDI system
        raise MidiPortError(f"no MIDI backend: {system.name} finds no MIDI system ({_reason(exc)})") from None
    return system


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
