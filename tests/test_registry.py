"""One Registry class for models, datasets, detection datasets and neurons: duplicates are
errors naming the first registration, listing takes wildcards, lookups take a name or the
registered factory."""
from __future__ import annotations

import pytest
import torch

import snnconv
from snnconv import SnnconvError
from snnconv.data import registry as data_registry
from snnconv.models import registry as model_registry
from snnconv.registry import Registry


def _first(x=1):
    return ("first", x)


def _second(x=1):
    return ("second", x)


def test_duplicate_names_are_one_line_errors_naming_the_first_registration():
    reg = Registry("widget")
    reg.register("w")(_first)
    with pytest.raises(SnnconvError) as caught:
        reg.register("w")(_second)
    message = str(caught.value)
    assert message == (f"widget 'w' is already registered by {__name__}._first: pick another name for {__name__}._second")
    assert reg.get("w") is _first  # the first registration stands


@pytest.mark.parametrize("registry, existing", [
    (model_registry._MODELS, "resnet20"),
    (data_registry._DATASETS, "digits"),
    (snnconv.neurons._NEURONS, "if"),
])
def test_every_registry_refuses_a_duplicate(registry, existing):
    before = registry.get(existing)
    with pytest.raises(SnnconvError, match=rf"^{registry.kind} '{existing}' is already registered by snnconv\."):
        registry.add(existing, _second)
    assert registry.get(existing) is before


def test_the_detection_dataset_registry_refuses_a_duplicate():
    from snnconv.detection.dataset import _LOADERS, register_detection_dataset

    with pytest.raises(SnnconvError, match=r"detection dataset 'mnist_detection' is already registered by "
                                           r"snnconv\.detection\.mnist_boxes\.load_mnist_detection"):
        register_detection_dataset("mnist_detection")(_second)
    assert _LOADERS.get("mnist_detection").__name__ == "load_mnist_detection"


def test_model_registration_by_function_name_is_checked_too():
    def resnet20():
        return torch.nn.Identity()

    with pytest.raises(SnnconvError, match=r"model 'resnet20' is already registered by snnconv\.models\.resnet\.resnet20"):
        snnconv.register_model(resnet20)


def test_listing_takes_fnmatch_wildcards():
    assert snnconv.list_models("resnet*") == ["resnet18", "resnet20", "resnet34"]
    assert snnconv.list_models("vgg?") == ["vgg6"]
    assert snnconv.list_models() == sorted(snnconv.list_models())
    assert "yolo_detector" in snnconv.list_models("*detector")  # listed before its module is imported
    assert snnconv.list_neurons("?n") == ["gn"] and snnconv.list_neurons("nothing*") == []
    assert set(snnconv.list_neurons()) >= {"if", "gn", "tpp", "cif"}
    assert data_registry.list_datasets("*mnist") == ["fashion_mnist", "mnist", "nmnist"]
    from snnconv.detection import list_detection_datasets

    assert list_detection_datasets("*20??") == ["coco2017", "voc2007"]


def test_lookups_take_a_name_or_the_registered_factory():
    from snnconv.models.resnet import resnet20
    from snnconv.neurons import _NEURONS

    by_name, by_builder = snnconv.create_model("resnet20", num_classes=3), snnconv.create_model(resnet20, num_classes=3)
    by_builder.load_state_dict(by_name.state_dict())
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(by_name.eval()(x), by_builder.eval()(x))
    if_factory = _NEURONS.get("if")
    assert _NEURONS.name_of(if_factory) == "if"
    a, b = snnconv.create_neuron("if", 2.0), snnconv.create_neuron(if_factory, 2.0)
    window = torch.rand(6, 2, 3) * 3
    assert type(a) is type(b) and torch.equal(a(window), b(window))
    digits = data_registry._DATASETS.get("digits")
    assert torch.equal(data_registry.load_dataset(digits, "test").labels, data_registry.load_dataset("digits", "test").labels)


def test_a_registered_class_is_found_by_name_or_by_the_class_itself():
    class Widget:
        pass

    class Other:
        pass

    reg = Registry("widget")
    reg.register("plain")(_first)
    reg.register("box")(Widget)
    assert reg.get(Widget) is reg.get("box") is Widget and reg.name_of(Widget) == "box" and reg.name_of("plain") == "plain"
    with pytest.raises(SnnconvError, match=r"Other is not a registered widget: register it with @register_widget\(name\), "
                                           r"or pass one of box, plain$"):
        reg.get(Other)


def test_unregistered_names_and_factories_are_refused_with_the_known_names():
    with pytest.raises(SnnconvError, match=r"^unknown model 'resnet1000': choose one of resnet18, resnet20, "):
        snnconv.create_model("resnet1000")
    with pytest.raises(SnnconvError, match=rf"^{__name__}\._second is not a registered model: register it with "
                                           r"@register_model\(name\), or pass one of resnet18"):
        snnconv.create_model(_second)


def test_a_lazy_entry_imports_its_module_on_first_lookup_and_must_register():
    reg = Registry("widget", lazy={"json_widget": "json"})
    assert reg.names() == ["json_widget"] and "json_widget" in reg
    with pytest.raises(SnnconvError, match=r"module json did not register the widget 'json_widget'"):
        reg.get("json_widget")
