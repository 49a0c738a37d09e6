"""``python -m cxrexplain``: the same command as the ``cxrexplain`` console script."""

from cxrexplain.cli import main

main()
