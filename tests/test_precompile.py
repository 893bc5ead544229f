"""``fusedres.warmup`` / ``fusedres warmup`` (fusedres/precompile.py): what it needs, and on
a GPU that a forward afterwards compiles nothing."""
import pytest
import torch

import fusedres


def test_warmup_needs_a_gpu_input():
    model = fusedres.resnet18()
    with pytest.raises(ValueError, match="GPU kernels"):
        fusedres.warmup(model, torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="4-D"):
        fusedres.warmup(model, torch.randn(3, 32, 32))


def test_warmup_cli_without_a_gpu_asks_for_a_target(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from fusedres import cli
    assert cli.main(["warmup", "--model", "resnet18", "--dtype", "float16"]) == 2
    assert "--arch" in capsys.readouterr().err


@pytest.mark.gpu
def test_warmup_on_the_gpu_leaves_nothing_to_compile(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("FUSEDRES_AUTOTUNE", "0")  # one config per geometry: a short test
    model = fusedres.resnet18().cuda().half().eval()
    x = torch.randn(2, 3, 64, 64, device="cuda", dtype=torch.half)
    report = fusedres.warmup(model, x)
    assert report.failures == [] and report.compiles == report.geometries >= 15
    cubins = len(list(tmp_path.rglob("*.cubin")))
    with torch.inference_mode():
        model(x)
    assert len(list(tmp_path.rglob("*.cubin"))) == cubins, "the forward compiled something"
