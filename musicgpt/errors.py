"""User-facing errors: the CLI prints these as one line, without a traceback."""


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
