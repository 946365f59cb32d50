"""Layer names a user can read: each spiking layer's module path in the source model.

Counters, layer-error tables and plots key spiking layers by the converted graph's
site name (``site_0``, ...). Where the conversion records the user's module path of a
site (``layer3.1.relu``, ``3.body.0.2`` in a Sequential) on the spiking layer (its
``path``; :func:`snnconv.insight.layer_paths`), reports print that path instead.
"""
from __future__ import annotations

from ..network import SpikingNetwork


def layer_paths(snn: SpikingNetwork) -> dict[str, str]:
    """``{graph name: module path}`` for the spiking layers whose path differs from their
    graph name, in layer order (empty when no path is recorded): the entries of
    :func:`snnconv.insight.layer_paths` a report has to translate."""
    from ..insight import layer_paths as all_paths  # insight imports the evaluation plan

    return {name: path for name, path in all_paths(snn).items() if path != name}


def display_name(run: dict, name: str) -> str:
    """How a results-JSON run names its layer ``name`` in tables and plots: the module
    path from the run's ``layer_paths`` when it has one, else ``name``."""
    return (run.get("layer_paths") or {}).get(name, name)
