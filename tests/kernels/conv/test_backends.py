"""kernels/conv/backends.py: which backends the tuner may choose (``FUSEDRES_BACKENDS``,
``triton_only()``).  That the tuner then leaves cuDNN out: tests/kernels/conv/test_cudnn.py."""
import pytest

from fusedres.kernels import triton_only
from fusedres.kernels.conv import backends


@pytest.mark.parametrize("value,allowed", [(None, True), ("triton,cudnn", True),
                                           ("triton", False), (" triton , cudnn ", True)])
def test_backends_switch(monkeypatch, value, allowed):
    if value is None:
        monkeypatch.delenv("FUSEDRES_BACKENDS", raising=False)
    else:
        monkeypatch.setenv("FUSEDRES_BACKENDS", value)
    assert backends.cudnn_allowed() is allowed
    with triton_only():
        assert backends.cudnn_allowed() is False
    assert backends.cudnn_allowed() is allowed


@pytest.mark.parametrize("value", ["cudnn", "triton,cuda", ""])
def test_backends_switch_rejects_what_it_cannot_do(monkeypatch, value):
    monkeypatch.setenv("FUSEDRES_BACKENDS", value)
    with pytest.raises(ValueError, match="FUSEDRES_BACKENDS"):
        backends.cudnn_allowed()
