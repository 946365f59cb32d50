"""Pass: replace every activation site by a spiking neuron with theta = lambda."""
from __future__ import annotations

from torch import fx

from ..errors import SnnconvError
from ..neurons import SourceInfo, create_neuron
from .activation_sites import ActivationSite


def swap_to_neurons(graph_module: fx.GraphModule, neuron: str, **options) -> fx.GraphModule:
    """Swap each :class:`ActivationSite` for ``create_neuron(neuron, theta, **options)``, in place.

    The neuron keeps the site's graph name (``site_3``) and gets its ``path``: the user's
    module path of the activation it replaced (``neuron.path == "layer3.1.relu"``).

    Raises:
        SnnconvError: a plain-ReLU site has no threshold (no calibration data was given);
            unknown neuron name or options (from :func:`snnconv.create_neuron`).
    """
    for name, site in list(graph_module.named_children()):
        if not isinstance(site, ActivationSite):
            continue
        if site.threshold is None:
            raise SnnconvError(
                f"activation {site.path or name!r} is a plain ReLU with no threshold: pass calibration data "
                "(convert(model, neuron, calibration=x) / --calibrate 99.9) or train the source with QCFS"
            )
        source = SourceInfo(levels=site.levels, shift=site.shift)
        spiking = create_neuron(neuron, site.threshold, source=source, **options)
        spiking.path = site.path
        setattr(graph_module, name, spiking)
    graph_module.recompile()
    return graph_module
