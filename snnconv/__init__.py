"""snnconv: convert trained PyTorch ANNs into low-latency spiking neural networks.

Methods: QCFS + IF (baseline), Group Neurons (GN), temporal-misalignment permutation and
the two-phase probabilistic (TPP) neuron, CASC's consistent IF (CIF) neuron with
wake-sleep conversion. Importing the package has no side effects beyond registration.
"""
from .activations import ClipFloor, QCFS
from .convert.relu_swap import swap_relu
from .convert import convert
from .engine import simulate
from .errors import SnnconvError
from .metrics import SpikeCounter, correct_per_step, running_average
from .models import create_model, list_models, register_model
from .network import SpikingNetwork
from .neurons import create_neuron, list_neurons, register_neuron

__version__ = "0.1.0"

__all__ = [
    "ClipFloor",
    "QCFS",
    "SnnconvError",
    "SpikeCounter",
    "SpikingNetwork",
    "convert",
    "correct_per_step",
    "create_model",
    "create_neuron",
    "list_models",
    "list_neurons",
    "register_model",
    "register_neuron",
    "running_average",
    "simulate",
    "swap_relu",
]
