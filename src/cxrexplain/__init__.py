"""cxrexplain: explainable Pneumonia vs No Finding classification on NIH ChestX-ray14."""

__version__ = "0.1.0"
