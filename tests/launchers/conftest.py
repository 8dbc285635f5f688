"""Tests marked `slurm` start a real one-host Slurm cluster (scripts/slurm_local.sh: root,
apt-get, ~1 min on a fresh machine), so they run only when asked: `pytest -m slurm tests/launchers`
(.ci/run does this after the main suite). Any other `pytest` deselects them."""

from __future__ import annotations


def pytest_collection_modifyitems(config, items):
    if "slurm" in (config.getoption("markexpr") or ""):
        return  # asked for by -m (e.g. `-m slurm`): the expression decides
    chosen = [item for item in items if item.get_closest_marker("slurm") is None]
    if len(chosen) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item.get_closest_marker("slurm") is not None])
        items[:] = chosen
