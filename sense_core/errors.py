"""Exceptions whose message is meant for the user (the CLI shows it without a traceback)."""


class SenseError(Exception):
    """An error SENSE explains to the user: bad input, a missing file, an unusable device."""


class EnsembleError(SenseError, ValueError):
    """Ensemble data that cannot be used as given; the message names the file or member."""
