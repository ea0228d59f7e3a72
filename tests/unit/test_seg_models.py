"""torchvision segmentation models as `model.arch` (built offline, heads replaced per family) and
`model.freeze_backbone` (everything but the head frozen) for classifiers, segmentation models and
factories. Big builders run on the meta device (shapes only); lraspp and resnet18 run for real."""

from __future__ import annotations

import pytest
import torch
import torchvision.models as tvm
from torch import nn

from tui_trainer.config import ModelSection
from tui_trainer.errors import PresetError
from tui_trainer.parts import model as model_mod
from tui_trainer.parts.layers import first_tensor
from tui_trainer.parts.model import build_model, check_arch, find_head, head_names, replace_head

pytestmark = [pytest.mark.filterwarnings("ignore:The default weight initialization:FutureWarning"),
              pytest.mark.usefixtures("one_torch_thread")]

SEG = tvm.list_models(module=tvm.segmentation)
# final 1x1 convs per family, main head first (aux_classifier only when the model has one)
HEADS = {"fcn": ["classifier.4", "aux_classifier.4"], "deeplabv3": ["classifier.4", "aux_classifier.4"],
         "lraspp": ["classifier.high_classifier", "classifier.low_classifier"]}


def family(arch: str) -> str:
    return arch.split("_")[0]


def trainable(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def test_every_segmentation_builder_is_an_arch():
    assert {"fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101",
            "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"} <= set(SEG)
    for arch in [*SEG, "resnet18"]:
        check_arch(ModelSection(arch=arch))


@pytest.mark.parametrize("typo, suggestion", [("deeplabv3_resnet5", "deeplabv3_resnet50"),
                                              ("lraspp_mobilenet_v3", "lraspp_mobilenet_v3_large"),
                                              ("resnet19", "resnet18")])
def test_did_you_mean_covers_classifiers_and_segmentation(typo, suggestion):
    with pytest.raises(PresetError) as info:
        check_arch(ModelSection(arch=typo))
    assert f'did you mean "{suggestion}"?' in str(info.value) and info.value.key == "model.arch"


@pytest.mark.parametrize("arch", SEG)
def test_meta_build_gives_num_classes_maps(arch, monkeypatch):
    """weights "none": num_classes goes to the builder, and no backbone weights are fetched."""
    calls = []
    real = tvm.get_model
    monkeypatch.setattr(tvm, "get_model", lambda name, **kw: calls.append(kw) or real(name, **kw))
    with torch.device("meta"):
        model = build_model(ModelSection(arch=arch, num_classes=3)).model
    assert calls == [{"weights": None, "weights_backbone": None, "num_classes": 3}]
    assert find_head(model)[0] == HEADS[family(arch)][0]
    assert all(model.get_submodule(n).out_channels == 3 for n in head_names(model))
    with torch.no_grad():
        out = model.eval()(torch.empty(2, 3, 64, 64, device="meta"))
    assert tuple(first_tensor(out).shape) == (2, 3, 64, 64)


@pytest.mark.parametrize("arch", ["fcn_resnet50", "deeplabv3_resnet50", "deeplabv3_mobilenet_v3_large",
                                  "lraspp_mobilenet_v3_large"])
def test_coco_weights_build_21_classes_then_swap_every_final_conv(arch, monkeypatch):
    """With COCO weights the builder gets no num_classes (it would refuse 2 != 21); the final convs
    of classifier and aux_classifier (lraspp: low_ and high_classifier) are swapped after. The
    weights are not fetched here: the builder runs without them but as they would (aux head on)."""
    calls = []
    real = tvm.get_model

    def as_if_coco(name, *, weights, **kw):
        calls.append(dict(kw, weights=str(weights)))
        return real(name, weights=None, num_classes=21, **({} if name.startswith("lraspp") else {"aux_loss": True}),
                    **kw)

    monkeypatch.setattr(tvm, "get_model", as_if_coco)
    monkeypatch.setattr(model_mod, "_fetch_weights", lambda weights: True)
    weights = [*tvm.get_model_weights(arch).__members__][0]
    with torch.device("meta"):
        model = build_model(ModelSection(arch=arch, weights=weights, num_classes=2, freeze_backbone=True)).model
    assert calls == [{"weights_backbone": None, "weights": f"{tvm.get_model_weights(arch).__name__}.{weights}"}]
    heads = HEADS[family(arch)]
    assert {n: model.get_submodule(n).out_channels for n in heads} == dict.fromkeys(heads, 2)
    assert 21 not in [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert sorted(trainable(model)) == sorted(f"{h}.{p}" for h in heads for p in ("weight", "bias"))


def test_replace_head_by_family_leaves_same_width_convs_alone():
    """An ASPP/LRASPP 1x1 conv as wide as the classes is not a head: the swap goes by name."""
    with torch.device("meta"):
        deeplab = tvm.get_model("deeplabv3_mobilenet_v3_large", weights=None, weights_backbone=None,
                                num_classes=256, aux_loss=True)
        assert replace_head(deeplab, 5) == ["classifier.4", "aux_classifier.4"]
        assert deeplab.classifier[0].project[0].out_channels == 256  # ASPP's 1x1 projection: kept
        lraspp = tvm.get_model("lraspp_mobilenet_v3_large", weights=None, weights_backbone=None, num_classes=128)
        assert replace_head(lraspp, 5) == ["classifier.high_classifier", "classifier.low_classifier"]
        assert lraspp.classifier.cbr[0].out_channels == 128
        assert replace_head(lraspp, 5) == []


def test_lraspp_builds_offline_and_trains_only_its_head():
    torch.manual_seed(0)
    model = build_model(ModelSection(arch="lraspp_mobilenet_v3_large", num_classes=2, freeze_backbone=True)).model
    with torch.no_grad():
        out = model.eval()(torch.randn(2, 3, 64, 64))
    assert tuple(out["out"].shape) == (2, 2, 64, 64) and torch.isfinite(out["out"]).all()
    assert trainable(model) == ["classifier.low_classifier.weight", "classifier.low_classifier.bias",
                                "classifier.high_classifier.weight", "classifier.high_classifier.bias"]


def test_resnet18_freeze_backbone_trains_only_the_new_fc():
    built = build_model(ModelSection(arch="resnet18", num_classes=10, freeze_backbone=True))
    assert trainable(built.model) == ["fc.weight", "fc.bias"]
    assert built.model.fc.out_features == 10
    # without num_classes nothing is replaced: the head find_head finds stays trainable
    assert trainable(build_model(ModelSection(arch="resnet18", freeze_backbone=True)).model) == ["fc.weight",
                                                                                                 "fc.bias"]


def test_freeze_runs_first_and_freeze_backbone_only_freezes():
    """fastai's freeze(): `freeze = [""]` froze the new head as well, and it stays frozen."""
    model = build_model(ModelSection(arch="examples.models:small_cnn", kwargs={"width": 4}, num_classes=3,
                                     freeze=[""], freeze_backbone=True)).model
    assert trainable(model) == []
    model = build_model(ModelSection(arch="examples.models:small_cnn", kwargs={"width": 4},
                                     freeze=["0"], freeze_backbone=False)).model
    assert trainable(model)[0] == "1.0.weight", "without freeze_backbone only model.freeze applies"


@pytest.mark.parametrize("num_classes", [None, 3])
def test_factory_model_keeps_only_its_last_linear(num_classes):
    model = build_model(ModelSection(arch="examples.models:small_cnn", kwargs={"width": 4},
                                     num_classes=num_classes, freeze_backbone=True)).model
    assert trainable(model) == ["6.weight", "6.bias"]  # blocks 0-2, pool, flatten, dropout, Linear
    assert isinstance(model[6], nn.Linear) and model[6].out_features == (num_classes or 10)


def test_freeze_backbone_without_a_head_says_so():
    with pytest.raises(PresetError) as info:
        build_model(ModelSection(arch="torch.nn:Identity", freeze_backbone=True))
    assert info.value.key == "model.freeze_backbone"
    assert str(info.value) == ("model.freeze_backbone: model has no Linear or 1x1 Conv2d head to leave trainable;"
                               " use model.freeze to name what to freeze instead")


def test_a_backbone_that_cannot_be_downloaded_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    import urllib.error

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))  # an empty cache: the download is attempted
    try:
        cfg = ModelSection(arch="lraspp_mobilenet_v3_large", num_classes=2,
                           kwargs={"weights_backbone": "IMAGENET1K_V1"})
        with pytest.raises(PresetError) as info:
            build_model(cfg)
    finally:
        torch.hub.set_dir(old)
    message = str(info.value)
    assert info.value.key == "model.kwargs" and "\n" not in message
    assert "weights_backbone IMAGENET1K_V1 cannot be downloaded" in message
    assert "mobilenet_v3_large" in message and str(tmp_path) in message  # the file and where to put it
    assert "Downloading" not in capsys.readouterr().out  # torch.hub's line does not leak to the terminal
