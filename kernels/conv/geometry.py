"""``ConvGeometry``: everything about one fused convolution launch except its tensors.

One type for the one computation: the launcher builds it from the tensors it is given, the
model trace records it (``fusedres.trace``), warm-up and ``fusedres inspect`` compile from it,
the custom operator's fake implementation takes its output shape from it, and the tuner keys
on the kernel scalars derived from it.  Each geometry is its own kernel specialisation.
"""
from typing import NamedTuple, Optional, Tuple

import torch

# Below this many input channels per group the flattened (gathered) K walk wastes less of
# each tile than the tap-major walk (tl.dot needs K tiles of at least 16).
GATHER_K_BELOW = 16

# Activation offsets are computed in int32 while every activation tensor the kernel indexes
# has fewer elements than this, in int64 otherwise (the INDEX_64 constexpr).
INDEX_32_LIMIT = 2 ** 31


def conv_output_size(size, kernel, stride=1, padding=0, dilation=1):
    """One spatial output size of a convolution (PyTorch's formula); the one copy of it."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


class Shortcut(NamedTuple):
    """The 1x1 shortcut convolution accumulated into the same tile: its input's channels and
    spatial size, the stride its windows step at and, with ``pool``, 2x2 windows averaged
    first (ResNet-D's ``AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)``)."""
    channels: int
    height: int
    width: int
    stride: int
    pool: bool = False


# The shortcut fields' values when there is none (the kernel never reads them then).
_NO_SHORTCUT = Shortcut(0, 0, 0, 1)


class ConvGeometry(NamedTuple):
    """Shapes, options and dtype of one ``act(conv(x) [+ shortcut] + bias [+ residual])``."""
    batch: int
    c_in: int
    height: int
    width: int
    c_out: int
    kernel_size: Tuple[int, int]
    stride: int
    padding: int
    dilation: int
    groups: int
    relu: bool
    residual: bool
    shortcut: Optional[Shortcut]
    dtype: torch.dtype

    @property
    def output_size(self) -> Tuple[int, int]:
        kh, kw = self.kernel_size
        return (conv_output_size(self.height, kh, self.stride, self.padding, self.dilation),
                conv_output_size(self.width, kw, self.stride, self.padding, self.dilation))

    @property
    def output_shape(self) -> Tuple[int, int, int, int]:
        return (self.batch, self.c_out, *self.output_size)

    def describe(self) -> str:
        kh, kw = self.kernel_size
        text = (f"{self.batch}x{self.c_in}x{self.height}x{self.width} -> {self.c_out} "
                f"{kh}x{kw}/s{self.stride}")
        if self.groups > 1:
            text += f" g{self.groups}"
        if self.dilation > 1:
            text += f" d{self.dilation}"
        if self.shortcut is not None:
            pool = "avg2x2 " if self.shortcut.pool else ""
            text += f" +shortcut({pool}{self.shortcut.channels}/s{self.shortcut.stride})"
        if self.residual:
            text += " +residual"
        return text + (" +relu" if self.relu else "")

    def scalars(self, allow_tf32: bool, interpreted: bool):
        """``(ints, consts)``: the kernel's integer arguments (in parameter order) and the
        constexprs of this geometry, exactly as the launcher passes them.  ``interpreted``:
        for Triton's interpreter (``fusedres inspect`` compiles for a GPU and passes False)."""
        # Runs on every launch: the fields as locals, one pass.
        (batch, c_in, height, width, c_out, (kh, kw), stride, padding, dilation, groups, relu,
         residual, shortcut, dtype) = self
        oh = conv_output_size(height, kh, stride, padding, dilation)
        ow = conv_output_size(width, kw, stride, padding, dilation)
        short = shortcut or _NO_SHORTCUT
        # x, the shortcut input and the output (whose shape the residual shares); the packed
        # weights are indexed in int32 always (KH*KW*C_in/groups*C_out is far below 2**31).
        largest = max(batch * c_in * height * width,
                      batch * short.channels * short.height * short.width,
                      batch * c_out * oh * ow)
        ints = dict(M=batch * oh * ow)
        consts = dict(
            H=height, W=width, C_in=c_in, OH=oh, OW=ow, C_out=c_out,
            HS=short.height, WS=short.width, C_short=short.channels,
            KH=kh, KW=kw, STRIDE=stride, PAD=padding, DIL=dilation,
            GROUPS=groups, STRIDE_SHORT=short.stride, SHORTCUT_POOL=short.pool,
            GATHER_K=c_in // groups < GATHER_K_BELOW,
            HAS_SHORTCUT=shortcut is not None, HAS_RESIDUAL=residual, RELU=relu,
            DOT_PRECISION="tf32" if dtype == torch.float32 and allow_tf32 else "ieee",
            # The interpreter's tl.dot runs on NumPy, which has no bfloat16.
            UPCAST_DOT=interpreted and dtype == torch.bfloat16,
            INDEX_64=largest >= INDEX_32_LIMIT,
        )
        return ints, consts
