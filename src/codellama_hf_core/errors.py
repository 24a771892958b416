"""The one exception type for bad user input; the CLI prints it as one line and exits non-zero."""


class UserInputError(ValueError):
    """Bad input from the user (a folder, a file, an option). The message names the value and the fix."""
