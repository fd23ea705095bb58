"""Installed dependencies against the ranges mwork was tested with.

mwork reaches inside transformers (34 model families), lm-eval, peft and torch, so a release
outside the tested range can change what an adapter must know. The ranges are written once, in
pyproject.toml's ``dependencies``; this module reads them back from the installed package's
metadata and warns once, at ``import mwork``, about every installed version outside its range
(``scripts/setup.sh`` installs the exact tested versions from ``constraints.txt``).
"""

from __future__ import annotations

import warnings
from importlib import metadata

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

__all__ = ["UntestedVersionWarning", "untested_versions", "warn_untested_versions"]


class UntestedVersionWarning(UserWarning):
    """An installed dependency is outside the range mwork was tested with."""


_warned = False


def untested_versions(requirements: list[str] | None = None) -> list[tuple[str, str, str]]:
    """``(name, installed version, tested range)`` for each required dependency whose installed
    version is outside its range. ``requirements``: PEP 508 strings (default: mwork's own, from its
    installed metadata; none when mwork runs from a source tree that was never installed).
    Optional extras and dependencies that are not installed are left out."""
    if requirements is None:
        try:
            requirements = metadata.requires("mwork") or []
        except metadata.PackageNotFoundError:
            return []
    out = []
    for line in requirements:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.marker is not None or not req.specifier:  # extras ("; extra == ...") and unbounded names
            continue
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            continue
        try:
            ok = req.specifier.contains(Version(installed), prereleases=True)
        except InvalidVersion:
            continue
        if not ok:
            out.append((req.name, installed, str(req.specifier)))
    return out


def warn_untested_versions(requirements: list[str] | None = None) -> list[tuple[str, str, str]]:
    """Warn once per process about :func:`untested_versions` (an :class:`UntestedVersionWarning`)."""
    global _warned
    found = untested_versions(requirements)
    if found and not _warned:
        _warned = True
        listed = ", ".join(f"{name} {installed} (tested: {spec})" for name, installed, spec in found)
        warnings.warn(f"mwork was tested with other versions of: {listed}. Results may differ or fail; "
                      "`bash scripts/setup.sh` installs the tested versions (constraints.txt)",
                      UntestedVersionWarning, stacklevel=3)
    return found
