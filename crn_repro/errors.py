"""User-facing errors: one line that names the file or key and says what to do."""


class CrnError(Exception):
    """An error caused by the user's input (files, params, arguments), not by a bug.

    The CLI prints ``str(error)`` on one line and exits non-zero; ``--debug`` shows the traceback.
    """
