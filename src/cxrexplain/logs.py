"""Logging set-up shared by the CLI and the stages."""

from __future__ import annotations

import logging

LIBRARIES = ("lightning", "lightning.pytorch", "lightning.fabric", "mlflow")


def route_library_logs() -> None:
    """Send Lightning's and MLflow's records through the root handler only.

    Both attach a stream handler of their own when imported, so with the CLI's rich handler every line would print
    twice. Call it after importing them.
    """
    for name in LIBRARIES:
        library = logging.getLogger(name)
        for handler in list(library.handlers):
            if isinstance(handler, logging.StreamHandler):
                library.removeHandler(handler)
        library.propagate = True
