"""The one exception type for the user's mistakes; the CLI prints it as one line, no traceback."""


class KdistillError(ValueError):
    """A problem with the user's input (config, data, model path) that the user can fix.

    The message is a sentence naming the file, line or field, what was expected, what was found,
    and how to fix it.
    """
