"""The error for data files that exist but cannot be used."""


class DataError(ValueError):
    """A data file is damaged or not in the expected format; the message names the file."""
