"""The one error type users see.

Anything the user can fix (a bad recipe, a missing file, a malformed data line, a missing asset)
raises :class:`OmnifuseError` with a message that names what is wrong and what to do. The CLI
prints it as one paragraph and exits non-zero; ``--debug`` shows the traceback.
"""


class OmnifuseError(Exception):
    """An error caused by input the user controls; its message says what to do."""
