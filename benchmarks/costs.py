"""FLOPs and bytes of fused launches, for achieved TFLOP/s and GB/s in extra_info.

Bytes are the fused floor: each launch reads its input, shortcut input, residual and weights
once and writes its output once.  Every contender of a comparison is credited with the same
bytes, so GB/s compares like for like (eager really moves more: separate BN, add and ReLU
passes).
"""
from fusedres.kernels import ConvGeometry

_BYTES = {"torch.float16": 2, "torch.bfloat16": 2, "torch.float32": 4}


def launch_flops(spec: ConvGeometry) -> int:
    """2 x multiply-adds of the convolution and its fused 1x1 shortcut."""
    kh, kw = spec.kernel_size
    oh, ow = spec.output_size
    pixels = spec.batch * oh * ow
    flops = 2 * pixels * spec.c_out * kh * kw * spec.c_in // spec.groups
    if spec.shortcut is not None:
        flops += 2 * pixels * spec.c_out * spec.shortcut.channels
    return flops


def launch_bytes(spec: ConvGeometry) -> int:
    kh, kw = spec.kernel_size
    oh, ow = spec.output_size
    elements = (spec.batch * spec.height * spec.width * spec.c_in          # input
                + kh * kw * spec.c_in // spec.groups * spec.c_out          # weight
                + spec.batch * oh * ow * spec.c_out * (2 if spec.residual else 1))
    if spec.shortcut is not None:
        short = spec.shortcut
        elements += (spec.batch * short.height * short.width * short.channels
                     + short.channels * spec.c_out)
    return elements * _BYTES[str(spec.dtype)] + 4 * spec.c_out              # + fp32 bias


def throughput(items: int, seconds: float, flops: int, nbytes: int, unit: str) -> dict:
    """extra_info fields for one contender's median time."""
    return {f"{unit}_per_s": items / seconds, "tflop_per_s": flops / seconds / 1e12,
            "gb_per_s": nbytes / seconds / 1e9, "median_ms": seconds * 1e3,
            "flop": flops, "bytes": nbytes}
