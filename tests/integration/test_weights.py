"""Pretrained weights on a machine without network: "error" stops before training with the file
name, the URL and the cache directory; "random" says so loudly and trains. The download is sent to
a closed local port (a proxy at 127.0.0.1:9), so these tests never reach the network, online or not,
and TORCH_HOME is a fresh folder (no cached weights)."""

from __future__ import annotations

import io
import urllib.request

import pytest
import torch
import torchvision.models as tvm

from tests.conftest import ONE_THREAD_ENV, run_cli
from tests.helpers.engine import run
from tui_trainer.engine.events import RunStarted, RunWarning
from tui_trainer.errors import UserError

URL = tvm.ResNet18_Weights.IMAGENET1K_V1.url
FILE = URL.rsplit("/", 1)[1]

RESNET = """\
[model]
arch = "resnet18"
weights = "IMAGENET1K_V1"
weights_fallback = "{fallback}"
num_classes = 10

[data]
image_size = 16
batch_size = 16
limit = 64

[train]
epochs = 1
max_steps = 2
log_every = 1
"""


def offline_env(torch_home) -> dict[str, str]:
    closed = "http://127.0.0.1:9"
    return {"TORCH_HOME": str(torch_home), "https_proxy": closed, "http_proxy": closed, "HTTPS_PROXY": closed,
            "HTTP_PROXY": closed, "no_proxy": "", "NO_PROXY": "", **ONE_THREAD_ENV}


def test_fallback_error_names_file_url_and_cache(tmp_path):
    preset = tmp_path / "r18.toml"
    preset.write_text(RESNET.format(fallback="error"))
    proc = run_cli(str(preset), "--no-ui", cwd=tmp_path, env_extra=offline_env(tmp_path / "th"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    cache = tmp_path / "th" / "hub" / "checkpoints"
    assert proc.stderr == (
        f"tui-trainer: error: {preset}: model.weights: resnet18 weights IMAGENET1K_V1 are not in the cache and"
        f" cannot be downloaded (offline?): put {FILE} from {URL} into {cache}/, or set"
        ' model.weights_fallback = "random"\n')
    assert not (tmp_path / "runs").exists()
    assert not list(cache.iterdir()), "no partial download left in the cache"


@pytest.mark.usefixtures("one_torch_thread")
def test_fallback_random_warns_loudly_and_trains(tmp_path, monkeypatch):
    """In-process, with the same closed proxy installed as urllib's opener."""
    closed = "http://127.0.0.1:9"
    monkeypatch.setattr(urllib.request, "_opener", None)  # restored after the test
    urllib.request.install_opener(urllib.request.build_opener(urllib.request.ProxyHandler(
        {"http": closed, "https": closed})))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    preset = tmp_path / "r18.toml"
    preset.write_text(RESNET.format(fallback="random"))
    lines = io.StringIO()
    from tui_trainer.run.headless import LineReporter

    out = run(preset, sinks=[LineReporter(lines)], run_dir=tmp_path / "run")
    assert out.final.status == "completed" and out.final.step == 2
    cache = tmp_path / "th" / "hub" / "checkpoints"
    warning = (f"weights: resnet18 IMAGENET1K_V1 unavailable offline ({FILE} not in {cache});"
               " training from RANDOM INIT")
    assert [e.message for e in out.of(RunWarning)] == [warning]
    assert out.of(RunStarted)[0].weights == "random init (offline)"
    printed = lines.getvalue().splitlines()
    assert "| weights random init (offline) |" in printed[0]
    assert printed[2].endswith(f"WARNING {warning}")


@pytest.mark.usefixtures("one_torch_thread")
def test_weights_from_a_local_file(tiny_preset, tmp_path):
    from examples.models import small_cnn

    torch.manual_seed(123)
    source = small_cnn(num_classes=10, width=4)
    path = tmp_path / "start.pth"
    torch.save(source.state_dict(), path)
    loaded = {}

    def callbacks(session):  # before the first step
        loaded.update({k: v.clone() for k, v in session.trainer.model.state_dict().items()})
        return []

    out = run(tiny_preset(), f'model.weights="{path}"', "train.max_steps=1", callbacks=callbacks)
    assert out.session.trainer.parts.weights_note == "start.pth"
    assert all(torch.equal(loaded[k], v) for k, v in source.state_dict().items())


@pytest.mark.usefixtures("one_torch_thread")
def test_a_weights_file_that_does_not_fit_is_one_line(tiny_preset, tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"0.0.weight": torch.zeros(3, 3, 3, 3)}, path)
    with pytest.raises(UserError) as info:
        run(tiny_preset(), f'model.weights="{path}"')
    message = str(info.value)
    assert message.startswith(f"--set model.weights: {path} does not fit this model: "), message
    assert "\n" not in message
