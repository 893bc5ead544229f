"""Per-layer benchmarks: every distinct fused launch geometry of ResNet-18 and ResNet-50 --
conv+BN+ReLU, conv+BN+identity+ReLU, conv+BN+shortcut+ReLU -- as the fused kernel vs eager's
conv -> bn -> (shortcut conv -> bn, add) -> relu sequence, timed interleaved; on CUDA also
the main convolution alone (cuDNN) and, for 1x1 layers, its GEMM (cuBLAS) as references."""
import pytest
import torch
from torch import nn

import fusedres
from benchmarks import costs
from fusedres import ops
from fusedres.folding import FoldCache
from fusedres.kernels import cudnn_allows_tf32
from fusedres.kernels.conv import launcher
from fusedres.kernels.gemm import persistent_matmul
from fusedres.trace import trace_launches, unique

# (batch, size, dtype) the models are traced at.  GPU: the headline configuration.  CPU:
# batch 1 keeps all 34 geometries inside the CPU time budget.
TRACE = (256, 224, torch.float16) if torch.cuda.is_available() else (1, 224, torch.float32)


def layer_id(geometry) -> str:
    kh, kw = geometry.kernel_size
    text = (f"{geometry.c_in}x{geometry.height}x{geometry.width}-{geometry.c_out}"
            f"-k{kh}s{geometry.stride}")
    if geometry.shortcut is not None:
        text += f"-sc{geometry.shortcut.channels}s{geometry.shortcut.stride}"
    return text + ("-res" if geometry.residual else "")


def _layer_specs():
    batch, size, dtype = TRACE
    geometries = []
    for model in (fusedres.resnet18(), fusedres.resnet50()):
        geometries += trace_launches(model, batch, (size, size), dtype)
    return {layer_id(geometry): geometry for geometry in unique(geometries)}


LAYERS = _layer_specs()


def _conv_bn(c_in, c_out, kernel_size, stride, padding, dilation, groups, device, dtype):
    conv = nn.Conv2d(c_in, c_out, kernel_size, stride, padding, dilation, groups, bias=False)
    bn = nn.BatchNorm2d(c_out)
    with torch.no_grad():
        bn.running_mean.normal_(0, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_(0, 0.1)
    return (conv.to(device, dtype, memory_format=torch.channels_last).eval(),
            bn.to(device, dtype).eval())


def layer_contenders(geometry, device):
    """``{"eager": ..., "fused": ...}`` for one launch geometry, on random inputs."""
    dtype, cl = geometry.dtype, torch.channels_last
    torch.manual_seed(0)
    conv, bn = _conv_bn(geometry.c_in, geometry.c_out, geometry.kernel_size, geometry.stride,
                        geometry.padding, geometry.dilation, geometry.groups, device, dtype)
    x = torch.randn(geometry.batch, geometry.c_in, geometry.height, geometry.width, device=device,
                    dtype=dtype).contiguous(memory_format=cl)
    oh, ow = geometry.output_size
    residual = shortcut = None
    if geometry.residual:
        residual = torch.randn(geometry.batch, geometry.c_out, oh, ow, device=device,
                               dtype=dtype).contiguous(memory_format=cl)
    if geometry.shortcut is not None:
        c_s, hs, ws, stride_s, _ = geometry.shortcut
        conv_s, bn_s = _conv_bn(c_s, geometry.c_out, 1, stride_s, 0, 1, 1, device, dtype)
        xs = torch.randn(geometry.batch, c_s, hs, ws, device=device,
                         dtype=dtype).contiguous(memory_format=cl)
        shortcut = (conv_s, bn_s, xs)
    act = torch.relu if geometry.relu else (lambda y: y)
    cache = FoldCache()

    def eager():
        with torch.inference_mode():
            y = bn(conv(x))
            if residual is not None:
                y = y + residual
            if shortcut is not None:
                y = y + shortcut[1](shortcut[0](shortcut[2]))
            return act(y)

    def fused():
        with torch.inference_mode():
            return ops.conv_bn_act(x, conv, bn, cache, relu=geometry.relu, residual=residual,
                                   shortcut=shortcut)

    contenders = {"eager": eager, "fused": fused}
    if device.type == "cuda":
        contenders.update(references(geometry, conv, x))
    return contenders


def references(geometry, conv, x):
    """What the layer's main convolution costs alone, without BatchNorm or epilogue:
    ``conv_alone`` (cuDNN's ``F.conv2d``) and, for a 1x1 stride-1 ungrouped layer, its
    [M, C_in] x [C_in, C_out] GEMM (channels_last activations being that matrix already) by
    cuBLAS (``mm``) and by a plain persistent TMA Triton GEMM (``triton_mm``, kernels/gemm/:
    what Triton reaches on the card).  Informational contenders (benchmarks/gate.py)."""
    def conv_alone():
        with torch.inference_mode():
            return conv(x)

    refs = {"conv_alone": conv_alone}
    if geometry.kernel_size == (1, 1) and geometry.stride == 1 and geometry.groups == 1:
        a = x.permute(0, 2, 3, 1).reshape(-1, geometry.c_in)  # a view: x is channels_last
        b = conv.weight.detach().reshape(geometry.c_out, geometry.c_in).t().contiguous()

        def mm():
            with torch.inference_mode():
                return torch.mm(a, b)

        def triton_mm():
            with torch.inference_mode():
                return persistent_matmul(a, b)

        refs.update(mm=mm, triton_mm=triton_mm)
    return refs


def chosen_config(geometry):
    """The config the GPU launch of ``geometry`` ran with in this process ("-" on CPU)."""
    config = launcher.chosen_config(geometry, cudnn_allows_tf32())
    return config.describe() if config is not None else "-"


@pytest.mark.parametrize("layer", list(LAYERS))
def test_layer(measure_pair, device, layer):
    geometry = LAYERS[layer]
    flops, nbytes = costs.launch_flops(geometry), costs.launch_bytes(geometry)
    oh, ow = geometry.output_size
    outputs = geometry.batch * oh * ow * geometry.c_out
    measure_pair(layer_contenders(geometry, device),
                 lambda median: {**costs.throughput(outputs, median, flops, nbytes, "outputs"),
                                 "config": chosen_config(geometry)},
                 split_times=True)
