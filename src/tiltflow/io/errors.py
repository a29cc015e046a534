"""Errors raised for bad input files."""


class InputError(ValueError):
    """An input file is missing, malformed or inconsistent.

    The message names the file, the line, view or marker concerned, what was
    expected and what was found.
    """
