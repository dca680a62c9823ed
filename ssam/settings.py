"""Declaring a setting once: its default, what it allows, and what it means.

Every method, dataset and model declares its settings with ``Setting``; the validator checks a
config against them (``check_section``), Hydra gets their defaults, and docs/settings.md lists
them, so each fact about a setting is written in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from ssam.errors import ConfigError

T = TypeVar("T")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Check:
    """A test of one value, with what it allows in words: ``allowed`` completes the error
    message "<key> must be <allowed>, got <value>", ``described`` the settings reference."""

    accepts: Callable[[Any], bool]
    allowed: str
    described: str = ""

    def __call__(self, key: str, value: Any) -> None:
        if not self.accepts(value):
            raise ConfigError(f"{key} must be {self.allowed}, got {value!r}")

    @property
    def description(self) -> str:
        return self.described or self.allowed


def one_of(*allowed: Any) -> Check:
    words = ", ".join(str(value) for value in allowed)
    return Check(lambda value: value in allowed, f"one of {words}", ", ".join(f"`{v}`" for v in allowed))


def in_range(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Check:
    def accepts(value: Any) -> bool:
        if not is_number(value):
            return False
        above = low < value if low_open else low <= value
        below = value < high if high_open else value <= high
        return above and below

    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    return Check(accepts, f"in {interval}", interval)


def at_least(low: float, *, integer: bool = False) -> Check:
    kind = is_int if integer else is_number
    words = f"an integer >= {low:g}" if integer else f">= {low:g}"
    return Check(lambda value: kind(value) and value >= low, words, words.replace(">=", "≥"))


def above(low: float) -> Check:
    return Check(lambda value: is_number(value) and value > low, f"> {low:g}")


def optional(check: Check) -> Check:
    """``check``, or null (the error message keeps the check's own words)."""
    return Check(
        lambda value: value is None or check.accepts(value), check.allowed, f"null or {check.description}"
    )


BOOLEAN = Check(lambda value: isinstance(value, bool), "true or false", "`true`, `false`")
INTEGER = Check(is_int, "an integer")
POSITIVE_INT = at_least(1, integer=True)
NON_NEGATIVE_INT = at_least(0, integer=True)
FRACTION = in_range(0.0, 1.0, high_open=True)


def is_list(value: Any) -> bool:
    """A list, as Python or OmegaConf holds one."""
    return isinstance(value, Sequence) and not isinstance(value, str)


NUMBERS = Check(lambda value: is_list(value) and all(is_number(v) for v in value), "a list of numbers")
ANY = Check(lambda value: True, "any value")
# The default of a setting that each declaration must give (a dataset's number of classes, say).
REQUIRED = object()


@dataclass(frozen=True)
class Setting:
    """One key of a group's config: its default (a value, or ``${key}`` to read a top-level
    setting), its check, and one line saying what it does. A ``variant`` setting makes a run with
    another value than the default another method, which tables show in a column of its own,
    named by this format of ``key`` and ``value`` (e.g. "{key}={value}"); "" for none. A setting
    ``alike_on_one_process`` changes nothing without data parallelism (so is no variant there).
    A setting that does not ``change_results`` (how often to checkpoint, how many loader
    workers) may differ between a run and its resumption, and does not name a sweep's run."""

    default: Any
    check: Check
    help: str
    variant: str = ""
    alike_on_one_process: bool = False
    changes_results: bool = True

    @property
    def follows(self) -> str | None:
        """The top-level setting whose value this one takes by default, if any (``${lr}``: lr)."""
        default = self.default
        if isinstance(default, str) and default.startswith("${") and default.endswith("}"):
            return default[2:-1]
        return None

    def with_default(self, default: Any) -> Setting:
        """This setting with another default: a method's own choice for a setting it inherits."""
        self.check(f"the default {default!r}", default)
        return replace(self, default=default)


def refuse_taken_names(
    owner: str, own_settings: Mapping[str, Setting], taken_by: str, taken: Sequence[str]
) -> None:
    """Refuse a declaration (``owner``, e.g. "method 'magnitude'") whose own settings reuse a
    name in ``taken``, which ``taken_by`` describes: both would be one key of the group's config."""
    clash = sorted(set(taken) & set(own_settings))
    if clash:
        raise ValueError(f"{owner} declares {', '.join(clash)}: a name {taken_by} take already")


def named(options: Mapping[str, T], name: str, *, group: str) -> T:
    """The option ``name`` of a config group, or an error listing the group's options."""
    if name not in options:
        raise ConfigError(f"{group} must be one of {', '.join(options)}, got {name!r}")
    return options[name]


def with_defaults(
    settings: Mapping[str, Setting], given: Mapping[str, Any], *, what: str, accepts_more: bool = False
) -> dict[str, Any]:
    """``given`` settings, and the declared default of each other one that has a plain default
    (not one that reads a top-level setting, such as ``${lr}``, nor a required one). An
    undeclared key is an error unless ``accepts_more``; ``what`` names the owner in it."""
    unknown = [key for key in given if key not in settings]
    if unknown and not accepts_more:
        raise TypeError(f"{what} has no setting {', '.join(unknown)}; its settings: {', '.join(settings)}")
    defaults = {
        key: setting.default
        for key, setting in settings.items()
        if setting.follows is None and setting.default is not REQUIRED
    }
    return {**defaults, **given}


def check_section(
    key: str, section: Mapping[str, Any], settings: Mapping[str, Setting], *, accepts_more: bool
) -> None:
    """Check ``section`` (the config under ``key``, e.g. optimizer) against its declared
    ``settings``: each is present and allowed; unless ``accepts_more``, nothing else is there."""
    name = section.get("name")
    for setting_key, setting in settings.items():
        if setting_key not in section:
            raise ConfigError(
                f"{key}.{setting_key} is missing from the config of {key}={name}: a preset that "
                f"replaces the group must keep every setting (default: {setting.default!r})"
            )
        setting.check(f"{key}.{setting_key}", section[setting_key])
    if not accepts_more:
        extra = [k for k in section if k != "name" and k not in settings]
        if extra:
            raise ConfigError(
                f"{key}.{extra[0]} is not a setting of {key}={name}; its settings: {', '.join(settings)}"
            )
