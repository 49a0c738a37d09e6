"""The one exception type for errors a user can cause (bad params, missing or corrupt files, no network).

The CLI prints its message without a traceback and exits with status 2; anything else is a bug and keeps its
traceback.
"""


class CxrError(Exception):
    """An error the user can fix; the message names the file, key or value at fault and says what to do."""
