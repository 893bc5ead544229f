"""FLOPs and bytes of fused launches, for achieved TFLOP/s and GB/s in extra_info.

Bytes are the fused floor: each launch reads its input, shortcut input, residual and weights
once and writes its output once.  Every contender of a comparison is credited with the same
bytes, so GB/s compares like for like (eager really moves more: separate BN, add and ReLU
passes).
"""
from fusedres.kernels import ConvGeometry

_BYTES = {"torch.float16": 2, "torch.bfloat16": 2, "torch.float32": 4}


def launch_flops(geometry: ConvGeometry) -> int:
    """2 x multiply-adds of the convolution and its fused 1x1 shortcut."""
    kh, kw = geometry.kernel_size
    oh, ow = geometry.output_size
    pixels = geometry.batch * oh * ow
    flops = 2 * pixels * geometry.c_out * kh * kw * geometry.c_in // geometry.groups
    if geometry.shortcut is not None:
        flops += 2 * pixels * geometry.c_out * geometry.shortcut.channels
    return flops


def launch_bytes(geometry: ConvGeometry) -> int:
    kh, kw = geometry.kernel_size
    oh, ow = geometry.output_size
    elements = (geometry.batch * geometry.height * geometry.width * geometry.c_in          # input
                + kh * kw * geometry.c_in // geometry.groups * geometry.c_out          # weight
                + geometry.batch * oh * ow * geometry.c_out * (2 if geometry.residual else 1))
    if geometry.shortcut is not None:
        short = geometry.shortcut
        elements += (geometry.batch * short.height * short.width * short.channels
                     + short.channels * geometry.c_out)
    return elements * _BYTES[str(geometry.dtype)] + 4 * geometry.c_out              # + fp32 bias


def throughput(items: int, seconds: float, flops: int, nbytes: int, unit: str) -> dict:
    """extra_info fields for one contender's median time."""
    return {f"{unit}_per_s": items / seconds, "tflop_per_s": flops / seconds / 1e12,
            "gb_per_s": nbytes / seconds / 1e9, "median_ms": seconds * 1e3,
            "flop": flops, "bytes": nbytes}
