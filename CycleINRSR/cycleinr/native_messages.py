"""What the C/C++ libraries under us (ITK, GDCM, niftilib) print straight to file descriptor 2.

Their warnings are several raw lines each (source file, line, object address, message) and
bypass Python, so a user's stderr would not be ours. Around library calls we point fd 2 at a
temporary file, then turn what was printed into one-line ``NativeWarning``s (shown by the CLI as
``warning: ...``) or, for write calls whose outcome we verify ourselves, drop it to the log.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import warnings

log = logging.getLogger(__name__)

_LOCATION = re.compile(r"^(WARNING|Warning|ERROR|Error|Debug)\s*:?\s*In\s+\S.*?,\s*line\s+\d+", re.IGNORECASE)
_OBJECT = re.compile(r"^(\w[\w:]*)\s*\(0x[0-9a-fA-F]+\)\s*:\s*")


class NativeWarning(UserWarning):
    """A warning printed by ITK, GDCM or niftilib, reduced to one line."""


def summarise(text: str) -> list[str]:
    """Raw library output -> one line per message (location lines and addresses dropped)."""
    messages, current = [], []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or _LOCATION.match(line):
            if current:
                messages.append(" ".join(current))
                current = []
            continue
        line = _OBJECT.sub(lambda match: f"{match.group(1)}: ", line)
        current.append(line.lstrip("* ").strip())
    if current:
        messages.append(" ".join(current))
    unique = []
    for message in messages:
        message = message[:300]
        if message and message not in unique:
            unique.append(message)
    return unique


@contextlib.contextmanager
def native_stderr_captured(relay: bool = False):
    """Capture fd 2 during the block; ``relay`` re-issues each message as a NativeWarning,
    otherwise it goes to the debug log. Yields the list the messages are put in."""
    messages: list[str] = []
    try:
        stderr_fd = 2
        saved = os.dup(stderr_fd)
    except OSError:  # no usable fd 2 (some embedded interpreters): nothing to capture
        yield messages
        return
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    sink = tempfile.TemporaryFile()
    try:
        os.dup2(sink.fileno(), stderr_fd)
        yield messages
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, stderr_fd)
        os.close(saved)
        sink.seek(0)
        text = sink.read().decode("utf-8", "replace")
        sink.close()
        messages.extend(summarise(text))
        for message in messages:
            if relay:
                warnings.warn(message, NativeWarning, stacklevel=3)
            else:
                log.debug("library message: %s", message)
