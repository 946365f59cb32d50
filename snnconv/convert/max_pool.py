"""Max pooling of spike trains: the gate of Rueckauer et al. (2017).

Max pooling of rates has no exact spiking form: the max of the inputs' running averages
is not a function of one step's spikes. Rueckauer, Lungu, Hu, Pfeiffer, Liu,
"Conversion of Continuous-Valued Deep Networks to Efficient Event-Driven Networks for
Image Classification", Frontiers in Neuroscience 2017, section 2.2.6, gate each pool
window: at step t it passes on the input of the unit that has accumulated the most so
far. Here the leader at step t is the argmax of the cumulative input up to and
including t (first index on ties), so a unit that takes the lead with a spike passes
that spike. Its running average tends to the ANN's max of the average inputs as the
leader settles; it is an approximation, measured against the ANN in
tests/test_byom.py. Max pooling on the analog input (before the first activation) stays
exact and needs none of this.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_POOLS = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


class MaxPoolGate(nn.Module):
    """Max-pool gate over a spike window.

    ``forward(x)`` on ``[batch, C, *spatial]`` is the plain max pool (one step: the
    leader is the unit with the largest input). ``window(w)`` on ``[T, batch, C,
    *spatial]``: out(t) = w(t)[leader(t)] per pool window, leader(t) = argmax of
    sum_{k<=t} w(k). Args as ``nn.MaxPoolNd`` (``dims`` = N).
    """

    def __init__(self, dims: int, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False) -> None:
        super().__init__()
        self.dims = dims
        self.kernel_size, self.stride, self.padding = kernel_size, stride or kernel_size, padding
        self.dilation, self.ceil_mode = dilation, ceil_mode

    @classmethod
    def from_module(cls, module: nn.Module) -> "MaxPoolGate":
        """The gate with ``module``'s (an ``nn.MaxPool1d/2d/3d``) pooling arguments.

        Raises:
            StopIteration: ``module`` is not a max-pool module (callers pass only those).
        """
        dims = next(d for kind, d in ((nn.MaxPool1d, 1), (nn.MaxPool2d, 2), (nn.MaxPool3d, 3)) if isinstance(module, kind))
        return cls(dims, module.kernel_size, module.stride, module.padding, module.dilation, module.ceil_mode)

    @classmethod
    def from_call(cls, dims: int, args: tuple, kwargs: dict) -> "MaxPoolGate | None":
        """The gate of ``F.max_pool{dims}d(x, *args, **kwargs)`` (``args`` without x), or
        None when it returns indices (the gate passes values only).

        Raises:
            Nothing (arguments torch would refuse are refused when the gate runs).
        """
        names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
        given = {**dict(zip(names, args)), **kwargs}
        if given.get("return_indices"):
            return None
        return cls(dims, given.get("kernel_size"), given.get("stride"), given.get("padding", 0), given.get("dilation", 1),
                   bool(given.get("ceil_mode", False)))

    def _pool(self, x: torch.Tensor, indices: bool = False):
        return _POOLS[self.dims](x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                                 return_indices=indices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._pool(x)

    def window(self, window: torch.Tensor) -> torch.Tensor:
        """Gate a window ``[T, batch, C, *spatial]`` (see the class docstring).

        Raises:
            Nothing.
        """
        steps, batch = window.shape[:2]
        folded = window.reshape(steps * batch, *window.shape[2:])
        lead = folded.reshape(steps, -1).to(torch.float64).cumsum(0).reshape(folded.shape)
        _, index = self._pool(lead, indices=True)
        out = folded.flatten(2).gather(2, index.flatten(2)).reshape(index.shape)
        return out.reshape(steps, batch, *out.shape[1:])

    def extra_repr(self) -> str:
        return f"dims={self.dims}, kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
