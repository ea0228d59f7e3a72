"""The head swap works for every torchvision classifier: `num_classes = 7` gives 7 output columns.

Every builder in torchvision.models is built and run on the meta device (shapes only, no memory,
no arithmetic: vit_h_14 and regnet_y_128gf cost nothing), and the smallest member of each family
is built and run for real on the CPU at the smallest input it accepts.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torchvision.models as tvm
from torch import nn

from tui_trainer.parts.model import build_model, find_head, replace_head
from tui_trainer.parts.layers import first_tensor
from tui_trainer.config import ModelSection

pytestmark = [pytest.mark.filterwarnings("ignore:The default weight initialization:FutureWarning"),
              pytest.mark.usefixtures("one_torch_thread")]

ALL = tvm.list_models(module=tvm)
NUM_CLASSES = 7


@contextlib.contextmanager
def tensors_on_meta():
    """Put every parameter and buffer on the meta device as it is registered.

    `with torch.device("meta")` is the plain way, but RegNet's builder computes its block widths
    with torch tensors and reads them back (`.tolist()`), which meta tensors cannot do; this
    moves only what the modules keep.
    """
    register_parameter, register_buffer = nn.Module.register_parameter, nn.Module.register_buffer

    def parameter(self, name, param):
        if param is not None:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register_parameter(self, name, param)

    def buffer(self, name, tensor, persistent=True):
        register_buffer(self, name, None if tensor is None else tensor.to("meta"), persistent)

    nn.Module.register_parameter, nn.Module.register_buffer = parameter, buffer
    try:
        yield
    finally:
        nn.Module.register_parameter, nn.Module.register_buffer = register_parameter, register_buffer


def build(arch: str) -> nn.Module:
    return build_model(ModelSection(arch=arch, weights="none", num_classes=NUM_CLASSES)).model


def input_size(arch: str) -> int:
    if arch.startswith(("vit_", "maxvit")):
        return 224  # fixed image size (position embeddings / window partition)
    if arch == "inception_v3":
        return 75  # its smallest
    return 64


def test_the_list_is_the_whole_zoo():
    families = {"resnet18", "resnext50_32x4d", "wide_resnet50_2", "alexnet", "vgg11", "squeezenet1_0", "densenet121",
                "inception_v3", "googlenet", "shufflenet_v2_x0_5", "mobilenet_v2", "mobilenet_v3_small", "mnasnet0_5",
                "efficientnet_b0", "efficientnet_v2_s", "regnet_x_400mf", "convnext_tiny", "vit_b_16", "swin_t",
                "swin_v2_t", "maxvit_t"}
    assert families <= set(ALL)


@pytest.mark.parametrize("arch", ALL)
def test_meta_build_and_forward(arch):
    ctx = tensors_on_meta() if arch.startswith("regnet") else torch.device("meta")
    with ctx:
        model = build(arch)
    name, head = find_head(model)
    assert head.weight.shape[0] == NUM_CLASSES, name
    assert head.weight.device.type == "meta"
    model.eval()
    size = 299 if arch == "inception_v3" else 224
    with torch.no_grad():
        out = first_tensor(model(torch.empty(2, 3, size, size, device="meta")))
    assert tuple(out.shape) == (2, NUM_CLASSES)


SMALLEST = ["resnet18", "resnext50_32x4d", "wide_resnet50_2", "alexnet", "vgg11", "squeezenet1_1", "densenet121",
            "inception_v3", "googlenet", "shufflenet_v2_x0_5", "mobilenet_v2", "mobilenet_v3_small", "mnasnet0_5",
            "efficientnet_b0", "regnet_x_400mf", "convnext_tiny", "vit_b_32", "swin_t", "maxvit_t"]


@pytest.mark.parametrize("arch", SMALLEST)
def test_real_cpu_forward(arch):
    torch.manual_seed(0)
    model = build(arch).eval()
    size = input_size(arch)
    with torch.no_grad():
        out = first_tensor(model(torch.randn(1, 3, size, size)))
    assert tuple(out.shape) == (1, NUM_CLASSES)
    assert torch.isfinite(out).all()
    # The old 1000-way head is gone everywhere, auxiliary classifiers included (inception, googlenet).
    widths = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)]
    widths += [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert 1000 not in widths
    if arch == "googlenet":
        assert model.aux1.fc2.out_features == NUM_CLASSES and model.aux2.fc2.out_features == NUM_CLASSES
    if arch == "inception_v3":
        assert model.AuxLogits.fc.out_features == NUM_CLASSES


def test_replace_head_keeps_dtype_and_is_a_no_op_at_the_same_width():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)).double()
    assert replace_head(model, 5) == []
    assert replace_head(model, 3) == ["3"]
    assert model[3].weight.dtype == torch.float64 and model[3].out_features == 3
