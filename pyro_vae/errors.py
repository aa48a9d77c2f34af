"""The errors a user can cause, and the one lookup of a name in a registry.

A :class:`UserError` is a mistake the user can fix (a bad flag, bad data, an unusable checkpoint
or run directory); its message says what is wrong and what to do, and the scripts print it as
one line with exit code 2. Every other exception, ``ValueError`` included, is a bug or a failure
and keeps its traceback: ``UserError`` is deliberately not a ``ValueError``.
"""

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ModelError",
    "NonFiniteLossError",
    "RunError",
    "UserError",
    "lookup",
]


class UserError(Exception):
    """A mistake of the user's; the message is the whole story, no traceback is needed."""


class ConfigError(UserError, ValueError):
    """A setting no run can use: an unknown name, a number out of range. Also a ``ValueError``,
    since it is one in Python's sense (a bad argument value) and library callers catch it so."""


class DataError(UserError):
    """Data that cannot be used as asked; the message says what is wrong and what to do."""


class RunError(UserError):
    """A run directory or device that cannot be used as asked."""


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable, or does not fit what it is loaded into."""


class ModelError(UserError, ValueError):
    """A model/guide pair that an estimator (or a loop) cannot use as written: the message names
    the site or the missing piece and says what would work."""


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; Pyro only warns, so the loop raises this instead. Not a
    :class:`UserError`: the run failed, and the message says where its last good state is."""

    def __init__(self, epoch, step, value):
        self.epoch, self.step, self.value = epoch, step, value
        super().__init__(
            f"the loss became {value} at epoch {epoch}, step {step}; training stopped "
            "(try a lower --lr)"
        )


def lookup(registry, kind, name, *, error=ConfigError, alternative=None):
    """``registry[name]`` for a dict, ``name`` itself for a sequence of names; otherwise
    ``error("unknown <kind> 'name'; choose one of: a, b[, or <alternative>]")``.

    ``kind`` is how the user wrote the setting: ``"--prior"`` in a script, ``"prior"`` in the
    library.
    """
    if name not in registry:
        choices = ", ".join(registry) + (f", or {alternative}" if alternative else "")
        raise error(f"unknown {kind} {name!r}; choose one of: {choices}")
    return registry[name] if isinstance(registry, dict) else name
