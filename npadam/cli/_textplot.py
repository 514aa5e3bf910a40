"""The terminal line plot (``--plot terminal``, ``npadam demo``): moved down to ``npadam._textplot``
so that the library (``npadam.lr_finder``) can draw it too without importing the CLI; re-exported
here under its old name."""

from .._textplot import MARKERS, _bins, _label, _legend, render

__all__ = ["MARKERS", "render", "_bins", "_label", "_legend"]
