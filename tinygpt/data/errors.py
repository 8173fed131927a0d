"""The error every data reader raises: its one-line message names the file, record or value, and the fix."""


class DataError(ValueError):
    """Unusable training data; the one-line message names the file / record / value and the fix."""


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
