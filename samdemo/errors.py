"""The exceptions samdemo raises for things a user can fix or should know about, in one place.

Each message is written for the user (what is wrong, what to do) and is shown as is by the app
and by the CLI (one ``error: ...`` line, non-zero exit). Callers catch them by type.
"""

from __future__ import annotations


class UserError(ValueError):
    """Something the user can fix (an input outside the limits, unreadable, out of range); the message
    says what, and is shown as is."""


class TimeLimitExceeded(UserError):
    """An attack (or the app's training run) ran past its time limit and was stopped."""


class PromptError(ValueError):
    """A prompt that cannot be used; the message says what is wrong in the user's terms."""


class DatasetError(ValueError):
    """A data source that cannot be read; the message names the file and what is wrong."""


class AdapterError(ValueError):
    """An adapter that cannot be used here; the message says what does not fit and what to do."""


class ModelUnavailableError(RuntimeError):
    """The weights of a model cannot be found locally nor downloaded. The message says how to get them."""


class HubUnreachableError(ModelUnavailableError):
    """The Hugging Face Hub did not answer in time (see :func:`samdemo.build.hub_file_size`)."""


class AttackCancelled(RuntimeError):
    """Raised by :meth:`samdemo.attacks.base.Attack.forward` (and by ``samdemo.train_adapter.train_adapter``
    between steps) when its ``cancel`` event is set; nothing is returned."""
