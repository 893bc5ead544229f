"""kernels/layout.py: the packed weight layout and the stem's channel padding."""
import torch
import torch.nn.functional as F

from fusedres.kernels import pack_weight
from fusedres.kernels.layout import pad_channels, pad_weight_rows


def test_packed_rows_are_tap_major():
    weight = torch.randn(8, 6, 3, 2)  # C_out, C_in, KH, KW
    packed = pack_weight(weight, torch.float64)
    assert packed.shape == (3 * 2 * 6, 8) and packed.is_contiguous()
    # Row (kh*KW + kw)*C_in + ci holds tap (kh, kw), channel ci of every output channel.
    assert torch.equal(packed[(2 * 2 + 1) * 6 + 4], weight[:, 4, 2, 1].double())


def test_pad_channels_appends_zero_channels():
    x = torch.randn(2, 3, 5, 4)
    weight = pack_weight(torch.randn(8, 3, 7, 7), torch.float32)
    xp, wp = pad_channels(x, 4), pad_weight_rows(weight, 3, 4, 49)
    assert xp.shape == (2, 4, 5, 4) and xp.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(xp[:, :3], x) and not xp[:, 3].any()
    assert wp.shape == (49 * 4, 8)
    assert torch.equal(wp.view(49, 4, 8)[:, :3], weight.view(49, 3, 8))
    assert not wp.view(49, 4, 8)[:, 3].any()
    # The padded convolution is the same convolution.
    unpacked = wp.view(7, 7, 4, 8).permute(3, 2, 0, 1)
    assert torch.allclose(F.conv2d(xp, unpacked, padding=3),
                          F.conv2d(x, weight.view(7, 7, 3, 8).permute(3, 2, 0, 1), padding=3),
                          atol=1e-5)
