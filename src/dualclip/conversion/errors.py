"""The error every conversion problem is reported with."""


class ConversionError(ValueError):
    """A checkpoint that cannot be converted: unreadable, corrupt, unsafe, or an architecture dualclip cannot express.

    A `ValueError`, so the `dualclip` command prints it as a clean error (exit status 2).
    """
