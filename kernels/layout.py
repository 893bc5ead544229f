"""The packed weight layout that conv_bn_act's K loop reads."""
import torch


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
