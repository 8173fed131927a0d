"""The error every data reader raises: its one-line message names the file, record or value, and the fix; and
`first_line`, how every one-line error quotes the exception behind it."""


class DataError(ValueError):
    """Unusable training data; the one-line message names the file / record / value and the fix."""


def first_line(error: BaseException) -> str:
    """The first line of `error`'s message (its type's name if the message is empty): what a one-line error quotes
    of a library's exception, in every layer."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
