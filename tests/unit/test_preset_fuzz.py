"""Fuzzing: whatever a preset or a --set holds, loading it ends in a valid preset or
one clean UserError (one line) - never another exception. Three generators: random TOML-ish
values dropped into a valid preset at random paths, random edits of valid preset text, random
--set strings; then the cheap checks (`parts.check`) and, for a slice, the full `parts.build`.

Profiles: the default is derandomized (the same examples every run, so CI is stable);
HYPOTHESIS_PROFILE=deep explores fresh random examples, many more of them.
"""

from __future__ import annotations

import copy
import math
import os
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from tests.helpers.runs import BASE
from tui_trainer import config
from tui_trainer.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
settings.register_profile("ci", derandomize=True, deadline=None, max_examples=150,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("deep", deadline=None, max_examples=3000,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

VALID = [copy.deepcopy(BASE)] + [tomllib.loads(p.read_text()) for p in sorted((ROOT / "presets").glob("*.toml"))]
VALID_TEXT = [p.read_text() for p in sorted((ROOT / "presets").glob("*.toml"))]
KNOWN_KEYS = sorted({k for d in VALID for k in d} | {f"{s}.{k}" for d in VALID for s, v in d.items()
                                                      if isinstance(v, dict) for k in v})

scalars = st.one_of(
    st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["", "none", "auto", "resnet18", "SGD", "Adam", "StepLR", "cuda", "cpu",
                                           "val_acc", "min", "max", "fp16", "skip", "examples.models:small_cnn",
                                           "os:system", "builtins:eval", "../x", "layer1", "0", "6.weight"]),
)
toml_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(min_size=1, max_size=8), inner, max_size=3)), max_leaves=6)
paths = st.one_of(st.sampled_from(KNOWN_KEYS), st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=3)
                  .map(".".join))


def _clean(fn, *args, **kwargs):
    """Run fn; a UserError is fine if it is one line. Anything else fails the test."""
    try:
        return fn(*args, **kwargs)
    except UserError as err:
        text = str(err)
        assert len(text.splitlines()) == 1 and text.strip(), repr(text)
        return None


def _set(raw: dict, path: str, value) -> None:
    node = raw
    parts = path.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    if value is _DELETE:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value


_DELETE = object()


def _check_preset(preset) -> None:
    from tui_trainer import parts

    if preset is not None:
        assert isinstance(preset, config.Preset)
        _clean(parts.check, preset)


@given(base=st.sampled_from(VALID), edits=st.lists(st.tuples(paths, st.one_of(toml_values, st.just(_DELETE))),
                                                   min_size=1, max_size=3))
def test_mutated_preset_dict(base, edits):
    raw = copy.deepcopy(base)
    for path, value in edits:
        _set(raw, path, value)
    _check_preset(_clean(config.from_dict, raw, source="fuzz.toml"))


@given(data=st.dictionaries(st.text(max_size=10), toml_values, max_size=5))
def test_random_dict(data):
    _check_preset(_clean(config.from_dict, data, source="fuzz.toml"))


@given(text=st.sampled_from(VALID_TEXT), cut=st.integers(0, 10_000), length=st.integers(0, 40),
       insert=st.text(max_size=20))
def test_edited_preset_text(tmp_path_factory, text, cut, length, insert):
    cut %= max(1, len(text))
    edited = text[:cut] + insert + text[cut + length:]
    path = tmp_path_factory.getbasetemp() / "fuzz.toml"
    path.write_text(edited, encoding="utf-8")
    _check_preset(_clean(config.load, path))


@given(item=st.one_of(st.text(max_size=30), st.builds(lambda k, v: f"{k}={v}", paths, st.text(max_size=12)),
                      st.builds(lambda k, v: f"{k}={v!r}", st.sampled_from(KNOWN_KEYS), toml_values)))
def test_random_set(item):
    _check_preset(_clean(config.from_dict, copy.deepcopy(BASE), source="fuzz.toml", overrides=[item]))


# ------------------------------------------------------------------ into parts.build, the expensive part

NAMES = {
    "optimizer": ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "LBFGS", "Rprop", "NAdam", "RAdam", "Adadelta",
                  "Adamax", "ASGD", "SparseAdam"],
    "scheduler": ["none", "StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "OneCycleLR",
                  "ReduceLROnPlateau", "LinearLR", "ConstantLR", "CyclicLR", "PolynomialLR", "LambdaLR",
                  "CosineAnnealingWarmRestarts", "MultiplicativeLR"],
    "loss": ["CrossEntropyLoss", "NLLLoss", "MSELoss", "BCEWithLogitsLoss", "HuberLoss", "MultiMarginLoss",
             "KLDivLoss", "SmoothL1Loss", "L1Loss", "MultiLabelSoftMarginLoss", "PoissonNLLLoss"],
}
kwarg_values = st.one_of(st.integers(-3, 200), st.floats(-2, 2, allow_nan=False), st.booleans(),
                         st.sampled_from(["mean", "sum", "none", "x", "examples.models:small_cnn", "0", "6",
                                          "triangular", "cos", "min", "max", "rel", "abs"]),
                         st.lists(st.one_of(st.integers(-1, 20), st.floats(0, 1)), max_size=3))


def _params_of(section: str, name: str) -> list[str]:
    """The keyword parameters the named torch class takes (what a preset may set)."""
    import inspect

    import torch

    if name == "none":
        return []
    module = {"optimizer": torch.optim, "scheduler": torch.optim.lr_scheduler, "loss": torch.nn}[section]
    skip = {"self", "params", "optimizer", "size_average", "reduce"}
    return [n for n in inspect.signature(getattr(module, name)).parameters if n not in skip]


@pytest.fixture(scope="module")
def digits_cached():
    """Load the digits once so each example costs a model build, not a CSV parse."""
    from tui_trainer.parts import data

    real = data.Digits.__init__
    cache = {}

    def init(self, size, augment=False):
        if size not in cache:
            real(self, size, False)
            cache[size] = (self.images, self.targets, self.classes)
        self.images, self.targets, self.classes = cache[size]
        self.size, self.augment = size, augment
        self.mean = __import__("torch").tensor(data.IMAGENET_MEAN).view(3, 1, 1)
        self.std = __import__("torch").tensor(data.IMAGENET_STD).view(3, 1, 1)

    data.Digits.__init__ = init
    yield
    data.Digits.__init__ = real


@settings(max_examples=int(os.environ.get("FUZZ_BUILD_EXAMPLES", "60")))
@given(draw=st.data())
def test_build_with_random_kwargs(digits_cached, draw):
    """Real class names and their real parameter names, random values: what a user gets wrong."""
    from tui_trainer.parts import build

    raw = copy.deepcopy(BASE)
    raw["data"].update(limit=24, image_size=8, batch_size=8)
    raw["train"].update(epochs=2)
    for section in ("optimizer", "scheduler", "loss"):
        name = draw.draw(st.sampled_from(NAMES[section]), label=section)
        keys = draw.draw(st.lists(st.sampled_from(_params_of(section, name) or ["x"]), max_size=3, unique=True))
        kwargs = {k: draw.draw(kwarg_values, label=f"{section}.{k}") for k in keys if name != "none"}
        raw[section] = {"name": name, **kwargs}
    raw["optimizer"].setdefault("lr", 0.01)
    if draw.draw(st.booleans()):
        raw["scheduler"]["interval"] = draw.draw(st.sampled_from(["epoch", "step"]))
        raw["scheduler"]["warmup_steps"] = draw.draw(st.integers(0, 5))
    preset = _clean(config.from_dict, raw, source="fuzz.toml")
    assume(preset is not None)
    parts = _clean(build, preset)
    event("built" if parts is not None else "refused with a UserError")
    if parts is not None:
        assert parts.total_steps > 0 and all(math.isfinite(v) for g in parts.plan.lrs for v in g)
