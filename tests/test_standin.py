"""fusedres/standin.py: the stand-in GPU.  What it makes of a forward (the same launcher
calls as the plans replay, every guard) is checked through it in tests/kernels/conv/
test_plan.py and tests/test_plans.py; here, what it refuses and how its tuner picks."""
import pytest

from fusedres import kernels, standin
from fusedres.kernels import ConvConfig


def test_refuses_the_interpreter():
    if not kernels.INTERPRETED:
        pytest.skip("runs under the Triton interpreter (the CPU test suite)")
    with pytest.raises(RuntimeError, match="unset TRITON_INTERPRET"):
        with standin.standin_gpu():
            pass


def test_picks_by_choice():
    plain = ConvConfig(128, 128, 32, 8, 4)
    split = plain._replace(split_k=4)
    padded = plain._replace(strip=True, pad_c=4)
    tma = plain._replace(tma=True)
    assert standin.pick("plain")(None, [split, plain, padded], None, None) is plain
    assert standin.pick("variants")(None, [plain, padded, split], None, None) is padded
    assert standin.pick("variants")(None, [plain, tma], None, None) is tma
    assert standin.pick("variants")(None, [plain], None, None) is plain
    assert standin.pick("split-k-tma")(None, [plain, padded, split], None, None) is split
    assert standin.pick("split-k-tma")(None, [padded, plain], None, None) is plain
    assert standin.pick("plain")(None, [split], None, None) is split
