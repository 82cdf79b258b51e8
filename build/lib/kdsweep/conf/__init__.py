"""kdsweep's Hydra configs: a package so that Hydra finds them through it (pkg://kdsweep.conf) wherever kdsweep is installed."""
