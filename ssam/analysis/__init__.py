"""Sharpness and landscape tools: the Hessian's top eigenvalues and trace, sharpness at radius ρ,
loss landscapes (a line between two models, a filter-normalised plane) and Sparse SAM mask maps.

Plain torch functions of a model, a loss function and a list of batches; ``ssam.analyze`` is the
command-line entry point that rebuilds these from a run's checkpoint and config.
"""
