"""User-facing errors: one line that names the file or key and says what to do."""


class CrnError(Exception):
    """An error caused by the user's input (files, params, arguments), not by a bug.

    The CLI prints ``str(error)`` on one line and exits non-zero; ``--debug`` shows the traceback.
    """


def check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise CrnError unless ``value`` is one of ``choices`` (listed in the message)."""
    if value not in choices:
        raise CrnError(f"unknown {what} {value!r}; valid: {', '.join(choices)}")


def one_line(error: Exception, max_chars: int = 100) -> str:
    """An exception's first line, shortened, so a CrnError wrapping it stays one readable line."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else ""
    if len(text) > max_chars:
        text = text[: max_chars - 3] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
