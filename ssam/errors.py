"""The error for a bad setting, in a module of its own so that the declarations of methods,
datasets and models, and any part of the trainer, can raise it without importing the validation
(which imports the loop)."""


class ConfigError(ValueError):
    """A setting has a value the trainer cannot use."""
