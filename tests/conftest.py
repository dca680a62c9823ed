"""Shared test set-up: the configs' OmegaConf resolvers, as train.py registers them, and an order
that keeps both pytest-xdist workers busy to the end."""

from collections import Counter

import pytest

import ssam.train.resolvers  # noqa: F401


def _group(item) -> str | None:
    mark = item.get_closest_marker("xdist_group")
    return mark.args[0] if mark else None


def pytest_collection_modifyitems(items) -> None:
    """The modules whose tests must share one worker (xdist_group: they share trained runs) go
    first, the largest first. Collected last, as their names would have it, one of them keeps a
    worker busy for minutes after the other has run out of tests."""
    sizes = Counter(_group(item) for item in items)
    items.sort(key=lambda item: (0, -sizes[_group(item)], _group(item)) if _group(item) else (1, 0, ""))


def pytest_runtest_setup(item) -> None:
    """Under --dist loadgroup, pytest-xdist marks each grouped test's node ID with its group
    ("...@group"), by which it schedules the group on one worker. If a release of pytest or xdist
    stops that, the groups spread over the workers, each training the group's shared runs: fail."""
    group = _group(item)
    if getattr(item.config.option, "loadgroup", False) and group and not item.nodeid.endswith(f"@{group}"):
        pytest.fail(
            f"--dist loadgroup did not mark this test with its group ({group}) as pytest-xdist 3.8 does: "
            "install the pytest and pytest-xdist versions pyproject.toml allows",
            pytrace=False,
        )
