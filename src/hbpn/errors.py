"""Exceptions with messages meant for people: the CLI prints them as one line."""


class HBPNError(Exception):
    """Base class: an expected failure with a message that names the file or key."""


class WeightsError(HBPNError, ValueError):
    """A weights file is missing, corrupt, foreign, or does not fit the model."""


class CaffeFormatError(HBPNError, ValueError):
    """A .caffemodel file cannot be read or does not match the HBPN graph."""


class ImageReadError(HBPNError, OSError):
    """An input image cannot be read. ``reason``: ``"input_limit"`` where a pixel limit refused it
    (front-ends name the setting), else empty."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason
