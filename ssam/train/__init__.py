"""The trainer: the loop, checkpoints, metrics and logging sinks."""
