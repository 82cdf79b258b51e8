"""The errors kdsweep reports to a user: each message names the value, the key and what is allowed."""


class KDSweepError(Exception):
    """A problem the user can fix; reported as one paragraph, without a traceback."""


class ConfigError(KDSweepError, ValueError):
    """A config value outside what kdsweep allows."""


class DataError(KDSweepError):
    """Data files that are missing or malformed."""


class CheckpointError(KDSweepError):
    """A teacher checkpoint that cannot be used."""


class DivergenceError(KDSweepError, ArithmeticError):
    """Training produced a NaN or infinite loss."""
