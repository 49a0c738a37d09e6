"""``cxrexplain ARGS`` run in the test's own process through :func:`cxrexplain.cli.main`, the console script's entry.

A CxrError is printed without a traceback and exits 2, exactly as on the command line; anything else propagates and
fails the test. In-process because a new interpreter costs 5-10 s of imports per call on a 2-core CPU (torch,
Lightning, MLflow); tests that need a separate process (to kill it, or to run two at once) start one, and
tests/test_cli.py runs ``python -m cxrexplain`` as a real process once.
"""

from __future__ import annotations

import io
import os
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from types import SimpleNamespace

from cxrexplain.cli import main


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> SimpleNamespace:
    """Run the command in ``cwd`` with ``env`` added to the environment; returns returncode, stdout, stderr."""
    out, err, argv, here = io.StringIO(), io.StringIO(), sys.argv, os.getcwd()
    saved = {name: os.environ.get(name) for name in env or {}}
    try:
        os.chdir(cwd)
        os.environ.update(env or {})
        sys.argv = ["cxrexplain", *args]
        with redirect_stdout(out), redirect_stderr(err):
            try:
                main()
                code = 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    finally:
        os.chdir(here)
        sys.argv = argv
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())
