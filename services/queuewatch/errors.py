"""The root of every error queuewatch raises on purpose.

Code catches the types; people read the message, which says what happened and what to
do next. Each package adds its own subclasses next to its code.
"""

from __future__ import annotations


class QueuewatchError(Exception):
    """Base class: an expected failure with a message meant for a person."""


class ConfigurationError(QueuewatchError):
    """A setting or the environment is wrong (missing tool, unwritable folder, bad URL)."""
