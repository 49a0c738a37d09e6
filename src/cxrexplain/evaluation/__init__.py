"""Classification metrics (and, later, their confidence intervals and figures)."""
