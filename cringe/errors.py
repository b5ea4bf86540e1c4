"""The one error type that means "the user's input is wrong", not "the code is wrong".

`cringe <verb>` turns a `UserError` into one line on stderr and exit status 2 (`--debug` or `CRINGE_DEBUG=1`
shows the traceback); anything else is a bug and raises as usual. It subclasses ValueError so callers that
already catch ValueError keep working.
"""


class UserError(ValueError):
    """Bad input from the user: a missing file, a bad data row, an unknown option or config key."""
