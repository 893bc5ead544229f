"""kernels/conv/plan.py: a ``LaunchPlan`` calls the compiled kernel a normal launch called,
with the same arguments, and takes no launch it cannot prove the same (guards).

Checked on the stand-in GPU (fusedres/standin.py) in a fresh process without the
interpreter (tests/standin_runner.py): the JIT's launcher calls of a forward that builds the
plans against those of the forward that replays them, for every ResNet-18/50 launch and
config variant; bit-identical outputs on a real GPU are tests/test_plans.py's."""
import pytest
import torch

from fusedres.kernels.conv import plan

from ...standin_runner import run_checks


@pytest.fixture(scope="module")
def checks():
    return run_checks(["same_calls", "guards"])


def _cases(checks):
    assert "error" not in checks["same_calls"], checks["same_calls"]["error"]
    return checks["same_calls"]


def test_plans_call_the_same_kernels_with_the_same_arguments(checks):
    cases = _cases(checks)
    assert len(cases) == 8  # resnet18 (fp16 b1, fp32 b2), resnet50, timm resnet50d x 2 choices
    for case in cases:
        assert case["launches"] in (17, 49, 51), case
        assert case["calls"] >= case["launches"], case
        assert case["replay_calls"] == case["calls"], case
        assert case["normal_launches_in_replay"] == 0, case  # every launch replayed
        assert case["gate"], case  # ... unchecked, the model walking its blocks
        assert case["diffs"] == [], case


def test_plans_cover_every_variant(checks):
    options = {o for case in _cases(checks) for o in case["options"]}
    # split-K's two kernels, TMA rows and patches (swap-AB), the stem's padded strips, the
    # ResNet-D pooled shortcut.
    assert {"split-k", "tma", "patch", "swap-ab", "strip", "pad-c",
            "pooled-shortcut"} <= options
    plain = [case for case in _cases(checks) if " plain " in case["case"]]
    assert all(case["calls"] == case["launches"] for case in plain)  # no split-K there


# A launch with a plan for its input shape launches normally (one Launch record) exactly when
# a guard misses; a normal launch replaces the plan for that shape.
GUARDS = {
    "first call": 1,
    "same input": 0,
    "misaligned view": 1,          # Triton specialises on 16-byte alignment
    "batch 2": 1,
    "batch 1 again": 0,            # one plan per input shape is kept
    "nchw input": 1,               # other strides
    "nchw input again": 0,         # ... replayed, converting x
    "residual": 1,                 # a residual where the plan has none
    "residual not channels_last": 1,
    "other stream": 1,
    "other device index": 1,
    "back on the first stream and device": 1,
    "launch hook": 1,              # a profiler's Triton launch hook
    "tracing": 1,                  # the custom op's path
    "plans off": 1,                # FUSEDRES_LAUNCH_PLANS=0
}


def test_guards_fall_back_to_the_normal_launch(checks):
    assert "error" not in checks["guards"], checks["guards"]["error"]
    assert checks["guards"] == GUARDS


CPU = torch.device("cpu")


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_plan_allocator_makes_what_empty_strided_makes(mode):
    """A plan allocates its outputs directly (``plan.allocator``): the same tensors as
    torch.empty_strided, 16-byte aligned (``LaunchPlan.follows`` relies on that)."""
    empty = plan.allocator(CPU)
    for shape, stride, dtype in [((1, 64, 7, 5), (2240, 1, 320, 64), torch.float16),
                                 ((3,), (1,), torch.float16),
                                 ((2, 5, 3), (15, 3, 1), torch.float32)]:
        with mode():
            made, reference = empty(shape, stride, dtype), torch.empty_strided(
                shape, stride, dtype=dtype)
        assert (made.shape, made.stride(), made.dtype, made.device, made.is_inference(),
                made.requires_grad) == (reference.shape, reference.stride(), reference.dtype,
                                        reference.device, reference.is_inference(),
                                        reference.requires_grad)
        assert made.data_ptr() % 16 == 0


@pytest.mark.parametrize("fault", ["raises", "other device"])
def test_plan_allocator_falls_back_where_the_direct_one_fails(fault, monkeypatch):
    def direct(shape, stride, dtype):
        if fault == "raises":
            raise RuntimeError("no allocator for this device in this build")
        return torch.empty_strided(shape, stride, dtype=dtype, device="meta")

    monkeypatch.setattr(plan._guards, "_empty_strided_cpu", direct, raising=False)
    made = plan.allocator(CPU)((2, 3), (3, 1), torch.float16)
    assert (made.shape, made.stride(), made.dtype, made.device) == ((2, 3), (3, 1),
                                                                     torch.float16, CPU)
