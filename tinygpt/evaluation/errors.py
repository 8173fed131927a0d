"""The one error `tinygpt eval` adds to the package's (DataError, HubError, ModelLoadError)."""


class EvalError(Exception):
    """`tinygpt eval` cannot go on; str() is one line naming the problem and the fix."""


__all__ = ["EvalError"]
