"""The one exception type users see: every message names the problem and the fix."""


class SnnconvError(ValueError):
    """A user-facing error: bad input, unsupported layer, malformed file.

    The CLI prints ``str(err)`` on one line and exits non-zero; Python callers can
    catch it (it is a ``ValueError``, so generic handlers still work).
    """


def check(condition: bool, message: str) -> None:
    """Raise :class:`SnnconvError` with ``message`` unless ``condition`` holds.

    Used instead of ``assert`` for user input, which ``python -O`` would strip.

    Raises:
        SnnconvError: ``condition`` is false, with ``message``.
    """
    if not condition:
        raise SnnconvError(message)
