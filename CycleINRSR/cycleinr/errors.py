"""The engine's exceptions: each carries a one-line message fit to show a user as is."""


class CycleINRError(Exception):
    """Base of every error the engine raises on purpose."""


class InputError(CycleINRError):
    """The input volume or a parameter cannot be used (checked before any work starts)."""


class ModelError(CycleINRError):
    """A weights file is missing, unreadable, truncated or does not match its configuration."""


class OutputError(CycleINRError):
    """The output cannot be written (exists, no space, unsupported format)."""


class ResourceError(CycleINRError):
    """Not enough memory (host or GPU) for the job as asked."""


class Cancelled(CycleINRError):
    """The caller asked the engine to stop."""
