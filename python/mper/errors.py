"""The errors that mean "what was asked for cannot be done as given".

Every mistake a user can make and fix (a setting, a data file, a checkpoint, the run
folder) raises a :class:`UserError`. Its message names the file or setting and says what
to do; the command-line tools print it as one line and exit with status 2. Any other
exception is a fault of the program and keeps its traceback.

Each subclass also derives from the built-in exception that fits it, so code that
catches ``ValueError`` or ``FileNotFoundError`` keeps working.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; the message says how."""


class ConfigError(UserError, ValueError):
    """A setting, preset or command-line option is invalid or inconsistent."""


class DataFormatError(UserError, ValueError):
    """A data file exists but its content is not what the layout requires."""


class MissingFileError(UserError, FileNotFoundError):
    """A file that was named, or that the data layout requires, does not exist."""


class CheckpointError(UserError, ValueError):
    """A checkpoint cannot be read, or does not fit what it is used for."""


class RunFolderError(UserError):
    """The run or output folder cannot be used: in use, already holding a run, or not writable."""


class TrainingDiverged(UserError):
    """A loss or a weight became NaN or infinite; the run stopped before saving it."""
