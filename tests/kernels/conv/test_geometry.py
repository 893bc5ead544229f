"""``ConvGeometry``: the kernel scalars a geometry derives, the one copy of the output-size
formula, and its description."""
import pytest
import torch
import torch.nn.functional as F

from fusedres.kernels import ConvGeometry, Shortcut, conv_output_size


@pytest.mark.parametrize("tensor", ["input", "shortcut input", "output"])
def test_int64_offsets_from_2_to_the_31_elements(tensor):
    """Offsets switch to int64 exactly when one activation tensor reaches 2**31 elements (the
    residual has the output's shape)."""
    def index_64(elements):
        # A 1x1 convolution of 1x1 images in which only `tensor` has `elements` elements.
        c_in = elements if tensor == "input" else 1
        c_out = elements if tensor == "output" else 1
        shortcut = Shortcut(elements, 1, 1, 1) if tensor == "shortcut input" else None
        geometry = ConvGeometry(1, c_in, 1, 1, c_out, (1, 1), 1, 0, 1, 1, True, False, shortcut,
                                torch.float16)
        return geometry.scalars(allow_tf32=False, interpreted=False)[1]["INDEX_64"]

    assert not index_64(2 ** 31 - 1)
    assert index_64(2 ** 31)


@pytest.mark.parametrize("size,kernel,stride,padding,dilation", [
    (224, 7, 2, 3, 1), (56, 3, 1, 1, 1), (9, 3, 2, 1, 1), (13, 3, 1, 2, 2), (7, 1, 2, 0, 1)])
def test_output_size_is_pytorchs(size, kernel, stride, padding, dilation):
    x = torch.empty(1, 1, size, size, device="meta")
    w = torch.empty(1, 1, kernel, kernel, device="meta")
    expected = F.conv2d(x, w, stride=stride, padding=padding, dilation=dilation).shape[-1]
    assert conv_output_size(size, kernel, stride, padding, dilation) == expected


def test_scalars_and_description():
    geometry = ConvGeometry(2, 64, 9, 11, 128, (3, 3), 2, 1, 1, 1, True, False,
                            Shortcut(32, 17, 21, 2, pool=True), torch.bfloat16)
    ints, consts = geometry.scalars(allow_tf32=True, interpreted=True)
    assert ints == {"M": 2 * 5 * 6} and geometry.output_shape == (2, 128, 5, 6)
    assert (consts["HS"], consts["WS"], consts["C_short"], consts["STRIDE_SHORT"]) \
        == (17, 21, 32, 2)
    assert consts["SHORTCUT_POOL"] and consts["HAS_SHORTCUT"] and not consts["HAS_RESIDUAL"]
    # bf16 under the interpreter widens the dot's operands; TF32 is for fp32 only.
    assert consts["UPCAST_DOT"] and consts["DOT_PRECISION"] == "ieee"
    assert not geometry.scalars(allow_tf32=True, interpreted=False)[1]["UPCAST_DOT"]
    assert geometry.describe() == "2x64x9x11 -> 128 3x3/s2 +shortcut(avg2x2 32/s2) +relu"
