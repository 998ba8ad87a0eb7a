"""Analysis: run records -> aggregates over seeds, statistics, tables, plots, probes."""
