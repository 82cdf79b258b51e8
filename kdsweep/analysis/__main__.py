"""`python -m kdsweep.analysis`: see kdsweep.analysis.report."""

from kdsweep.analysis.report import cli

cli()
