"""fusedres/plans.py: when a fused model replays its launch plans unchecked, and that no plan
outlives a change to the model.

The stand-in GPU checks (tests/standin_runner.py, a fresh process without the interpreter)
run the CUDA path on CPU tensors; under the interpreter no plan is ever made; on a GPU,
replayed plans give bit-identical outputs."""
import pytest
import torch

import fusedres
from fusedres import kernels, ops

from .builders import eager_and_fused, tiny_fused_model
from .conftest import DEVICE
from .standin_runner import run_checks


@pytest.fixture(scope="module")
def checks():
    return run_checks(["model_gate", "staleness"])


def _result(checks, name):
    assert "error" not in checks[name], checks[name]["error"]
    return checks[name]


# Per forward of a fused ResNet-18 (17 launches): normal launches, and whether the gate let it
# replay plans unchecked.
GATE = {
    "first": dict(launches=17, replays=True),      # builds the plans
    "second": dict(launches=0, replays=True),
    # A hook on a block: the blocks are called (the hook fires once) and each launch checks
    # its folds before replaying its plan.
    "block hook": dict(launches=0, replays=False, hook_calls=1),
    "hook removed": dict(launches=0, replays=True),
    "autograd": dict(launches=0, replays=False),   # eager modules, for the gradients
    "no parameter needs grad": dict(launches=0, replays=True),
    "autocast": dict(launches=17, replays=False),  # bf16 launches, checked per launch
    # The blocks are called, that one running eager (its 2 launches); the other 15 launch
    # normally because autocast's bf16 plans replaced theirs (one plan per input shape).
    "one block in train mode": dict(launches=15, replays=False),
    "train mode": dict(launches=0, replays=False),  # eager, updating the running stats
    "eval again": dict(launches=17, replays=True),  # ... which changed: plans made anew
    # layer2[1]'s plans remade on another stream: both of its launches miss their guards
    # (the replays before cannot vouch for them) and launch normally, the rest replay.
    "a block's plans made on another stream": dict(launches=2, replays=True),
    # ... its first plan remade for an NCHW input: that launch misses, its second replays.
    "a block's first plan made for an nchw input": dict(launches=1, replays=True),
    "after both": dict(launches=0, replays=True),
    # Building a module elsewhere keeps the plans; replacing a part of the model, even one
    # without tensors (a block's ReLU), makes them anew.
    "unrelated registration": dict(launches=0, replays=True),
    "part without tensors replaced": dict(launches=17, replays=True),
}


def test_gate(checks):
    assert _result(checks, "model_gate") == GATE


CHANGES = ["in_place_weight", "in_place_running_var", "load_state_dict",
           "float_half_round_trip", "replaced_parameter", "replaced_submodule", "replaced_block",
           "eps", "data_assigned", "stem", "train_mode_step", "overwritten_on_conversion",
           "buffer_converted"]


@pytest.mark.parametrize("change", CHANGES)
def test_no_plan_survives_a_change(checks, change):
    result = _result(checks, "staleness")[change]
    assert result["launches_after_change"] > 0  # the forward after the change built plans
    assert result["stale"] == []                # none holds weights other than a fresh fold
    assert result["launches_next"] == 0         # and the next forward replays them


def test_forget_folds_drops_plans(checks):
    assert _result(checks, "staleness")["forget_folds"] == {"plans": 0}


def test_interpreter_never_plans():
    if not kernels.INTERPRETED:
        pytest.skip("runs under the Triton interpreter (the CPU test suite)")
    model = tiny_fused_model()
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        model(x)
    assert not any(fold.plans for fold in fusedres.folding.fold_caches(model.modules()))
    resnet = fusedres.resnet18().eval()
    with torch.inference_mode():
        assert resnet._plan_gate.steps(resnet, x) is None


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_gpu_replayed_plans_are_bit_identical(name, monkeypatch):
    _, fused = eager_and_fused(name)
    fused = fused.half()
    x = torch.randn(1, 3, 224, 224, device=DEVICE).half()
    with torch.inference_mode():
        monkeypatch.setattr(ops, "LAUNCH_PLANS", False)
        normal = fused(x)
        monkeypatch.setattr(ops, "LAUNCH_PLANS", True)
        fused(x)  # builds the plans
        with kernels.record_launches() as launches:
            replayed = fused(x)
    assert launches == []  # every launch replayed
    assert torch.equal(normal, replayed)
    assert not torch.isnan(replayed).any()
