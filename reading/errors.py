"""The errors raised for bad input; str(error) is one sentence.
"""


class PredictError(Exception):
    """Base class of the errors raised for bad input; str(error) is one sentence."""


class ImageNotFoundError(PredictError, FileNotFoundError):
    """The image path does not exist."""


class NotAnImageError(PredictError, ValueError):
    """The path exists but is not an image Pillow can read."""


class NoDigitError(PredictError, ValueError):
    """The image has no ink to speak of (blank, uniform, or too small), so no digit to read."""


class WeightsNotFoundError(PredictError, FileNotFoundError):
    """The weights file does not exist (the model has not been trained yet)."""


class BadWeightsError(PredictError, ValueError):
    """The file is not a PyTorch weights file, holds weights of another architecture, or holds
    values that are not numbers (NaN or infinity)."""


class DeviceNameError(PredictError, ValueError):
    """The device asked for is not a device name at all (as opposed to one not available here)."""


class NotADigitError(NoDigitError):
    """The picture holds marks, but none of them is a digit (a letter, a scribble, an object)."""
