"""User-facing errors: the CLI prints these as one line, without a traceback; and file names fit to show."""


class MusicGPTError(Exception):
    """Base class for errors caused by user input (files, configs, checkpoints)."""


class MidiError(MusicGPTError):
    """A MIDI file could not be read or written; the message names the file and the reason."""


class ConfigError(MusicGPTError):
    """A configuration key or value is wrong; the message names the key."""


class CheckpointError(MusicGPTError):
    """A checkpoint directory is missing, incomplete or inconsistent."""


class DatasetError(MusicGPTError):
    """A corpus folder or a prepared data directory is missing, empty or inconsistent."""


class WriteError(MusicGPTError):
    """A file or folder could not be written (disk full, no permission, read-only); the message names it."""


def printable(text: str) -> str:
    """Text safe to write anywhere (HTML, plots, JSON for people): a file name's undecodable bytes, which
    Python keeps as lone surrogates, become U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
