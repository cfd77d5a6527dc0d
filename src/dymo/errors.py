"""Errors dymo raises for bad input. Each names the sample, modality or file at fault."""


class DymoError(Exception):
    """Base class of every error dymo raises on purpose."""


class DataError(DymoError, ValueError):
    """Bad data: wrong shape, dtype, NaN in an observed modality, bad labels, corrupt files."""


class ConfigError(DymoError, ValueError):
    """A config with unknown keys, wrong types or values out of range."""


class ScenarioError(DymoError, ValueError):
    """An unknown or malformed missing-modality scenario, or a mask that does not fit."""


class BundleError(DymoError, ValueError):
    """A model bundle or checkpoint that is truncated, from another version, or for other specs."""


class OutputError(DymoError, ValueError):
    """An output path dymo refuses to write: a foreign file or folder, another kind of artefact,
    one of the command's own inputs, or a folder another dymo process is writing."""
