"""``act(y * gate[n, c] + residual)``: the end of a squeeze-and-excitation residual block."""
from .launcher import scale_add_act

__all__ = ["scale_add_act"]
