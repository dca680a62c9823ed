"""Shared test set-up: the configs' OmegaConf resolvers, as train.py registers them."""

import ssam.train.resolvers  # noqa: F401
