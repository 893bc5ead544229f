"""The packed weight layout that conv_bn_act's K walks read, and the stem's channel padding."""
import torch
import torch.nn.functional as F


def pack_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[C_out, C_in/groups, KH, KW] -> contiguous [KH*KW*C_in/groups, C_out] in ``dtype``.

    Row (kh*KW + kw)*Cin_g + ci holds tap (kh, kw), input channel ci of every output
    channel, so one BLOCK_K x BLOCK_N weight tile is a contiguous strip of rows.  Grouped
    convolutions keep all groups side by side in the columns: group g owns columns
    [g*C_out/groups, (g+1)*C_out/groups).
    """
    if weight.dim() != 4:
        raise ValueError(f"conv weight must be 4-D [C_out, C_in/groups, KH, KW], "
                         f"got shape {tuple(weight.shape)}")
    c_out = weight.shape[0]
    return weight.permute(2, 3, 1, 0).reshape(-1, c_out).to(dtype).contiguous()


def pad_channels(x: torch.Tensor, pad_c: int) -> torch.Tensor:
    """``x`` ([N, C, H, W], any memory format) as a channels_last [N, pad_c, H, W] tensor with
    zero channels after the first C, in one copy.  (The stem's strip walk loads a 4-channel
    pixel as one 8-byte vector.)"""
    return F.pad(x.permute(0, 2, 3, 1), (0, pad_c - x.shape[1])).permute(0, 3, 1, 2)


def pad_weight_rows(weight: torch.Tensor, c: int, pad_c: int, taps: int) -> torch.Tensor:
    """The packed weight [taps*c, C_out] of a ``c``-channel input as [taps*pad_c, C_out], with
    zero rows for the channels ``pad_channels`` adds."""
    return F.pad(weight.view(taps, c, -1), (0, 0, 0, pad_c - c)).view(taps * pad_c, -1)
