"""``conv_bn_act``: checks its tensors, picks a config and launches the conv kernel.

The config: the caller's ``config=`` when given; else one large config under the
interpreter (``configs.interpreter_config``), the tuner's pick among ``configs.candidates``
and the cuDNN backend (``configs.CUDNN``, kernels/conv/cudnn.py, where
``backends.cudnn_allowed()``)
on a GPU (kernels/autotune.py), or ``configs.default_config`` with FUSEDRES_AUTOTUNE=0.
``record_launches()`` lets a caller see what each launch really ran.
"""
import contextlib
import glob
import os
import threading
from typing import NamedTuple, Tuple

import torch
import triton

from .. import autotune, runtime
from ..checks import check_activation, check_launch_input, check_packed
from ..layout import pad_channels, pad_weight_rows
from . import backends, configs, cudnn, plan
from .configs import ConvConfig, output_tiles
from .geometry import ConvGeometry, Shortcut, conv_output_size
from .kernel import conv_bn_act_kernel
from .split_k import split_k_epilogue_kernel

# The JIT functions this launcher runs: fusedres.aot compiles them ahead for a target
# (swapping their per-device JIT state) and the benchmarks' kernel report reads them back.
JIT_FUNCTIONS = (conv_bn_act_kernel, split_k_epilogue_kernel)
# The kernel's source files: an edit to any of them invalidates stored tuner choices and
# ``fusedres inspect``'s cached readings.
KERNEL_SOURCES = tuple(sorted(glob.glob(os.path.join(os.path.dirname(__file__), "*.py"))))

# The tuner the launches pick with (public: a stand-in GPU or a benchmark may force its pick).
TUNER = autotune.Tuner("conv_bn_act", KERNEL_SOURCES)


class Launch(NamedTuple):
    """One conv kernel launch as it ran: the geometry, the config after the launcher's
    fallbacks (a misaligned input runs a TMA config by pointers), the K walk that config runs
    there (``configs.walk``), the grid, and the geometry's constexprs as passed (a padded
    input's ``C_in`` included)."""
    geometry: ConvGeometry
    config: ConvConfig
    walk: str
    grid: Tuple[int, ...]
    constexprs: dict


_recording = threading.local()  # .lists: the lists record_launches collects into


@contextlib.contextmanager
def record_launches():
    """Collect a ``Launch`` for every conv kernel launch this thread makes inside the block,
    tuning runs included (split-K's second kernel is part of its launch)."""
    launches = []
    lists = _recording.__dict__.setdefault("lists", [])
    lists.append(launches)
    try:
        yield launches
    finally:
        lists.remove(launches)


def conv_bn_act(x, weight, bias, *, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                relu=True, residual=None, shortcut=None, shortcut_pool=False, out=None,
                allow_tf32=None, config=None):
    """Launch ``act(conv(x, weight) [+ shortcut] + bias [+ residual])``.

    x:        [N, C_in, H, W], any memory format (made channels_last; free if it already is).
    weight:   packed ``[KH*KW*C_in/groups, C_out]``, same dtype as ``x`` (see pack_weight).
    bias:     ``[C_out]`` float32.
    shortcut: optional ``(xs, ws, stride_s)``: a 1x1 convolution of ``xs`` ([N, C_s, HS, WS])
              with packed weight ``ws`` ([C_s, C_out]) added into the same accumulator; its
              bias must already be included in ``bias``.
    shortcut_pool: average ``xs`` over 2x2 windows at stride ``stride_s`` (which must be 2)
              before the 1x1 convolution, as ``AvgPool2d(2, 2, ceil_mode=True,
              count_include_pad=False)`` does: the output is ceil(HS/2) x ceil(WS/2) and a
              window on an odd border averages only the pixels inside.
    residual: optional tensor of the output's shape, added before the ReLU.
    out:      optional preallocated output (channels_last, output shape and dtype).
    allow_tf32: fp32 inputs only; defaults to ``cudnn_allows_tf32()`` so that the kernel
              rounds like eager cuDNN.
    config:   a ``ConvConfig`` to run instead of the one the launcher would pick.
    Returns the output as a channels_last [N, C_out, OH, OW] tensor.
    """
    return _conv_bn_act(x, weight, bias, kernel_size, stride, padding, dilation, groups, relu,
                        residual, shortcut, shortcut_pool, out, allow_tf32, config, False)[0]


def conv_bn_act_with_plan(x, weight, bias, *, kernel_size, stride=1, padding=0, dilation=1,
                          groups=1, relu=True, residual=None, shortcut=None,
                          shortcut_pool=False, allow_tf32=None, folded=None):
    """``conv_bn_act`` (same arguments, no ``out`` or ``config``), returning ``(out, plan)``:
    a ``LaunchPlan`` that replays this launch for activations shaped, strided and aligned
    like these (kernels/conv/plan.py), or None where there can be none: under the
    interpreter, on a Triton outside ``plan.SUPPORTED_TRITON``, with Triton launch hooks set,
    an empty batch, activations that are not 16-byte aligned, a residual or shortcut input
    that is not channels_last, or the cuDNN backend chosen.  ``folded`` is stored in the
    plan as its ``folded`` (see LaunchPlan)."""
    return _conv_bn_act(x, weight, bias, kernel_size, stride, padding, dilation, groups, relu,
                        residual, shortcut, shortcut_pool, None, allow_tf32, None, True, folded)


def _conv_bn_act(x, weight, bias, kernel_size, stride, padding, dilation, groups, relu,
                 residual, shortcut, shortcut_pool, out, allow_tf32, config, with_plan,
                 folded=None):
    check_launch_input("input", x)
    device, dtype = x.device, x.dtype
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    for name, value in (("stride", stride), ("padding", padding), ("dilation", dilation)):
        if not isinstance(value, int):
            raise TypeError(f"{name} must be an int (square), got {value!r}")
    n, c_in, h, w = x.shape
    if groups < 1 or c_in % groups:
        raise ValueError(f"input has {c_in} channels, not divisible by groups={groups}")
    cin_g = c_in // groups
    c_out = weight.shape[1] if weight.dim() == 2 else -1
    if weight.dim() != 2 or c_out % groups:
        raise ValueError(f"weight must be packed [KH*KW*C_in/groups, C_out] with C_out "
                         f"divisible by groups={groups}, got shape {tuple(weight.shape)}")
    if weight.shape[0] != kh * kw * cin_g:
        raise ValueError(f"channel mismatch: input has {c_in} channels ({cin_g} per group), so "
                         f"the packed {kh}x{kw} weight needs {kh * kw * cin_g} rows, "
                         f"got {weight.shape[0]}")
    check_packed("weight", weight, kh * kw * cin_g, c_out, device, dtype)
    if bias.shape != (c_out,) or bias.dtype != torch.float32 or bias.device != device:
        raise ValueError(f"bias must be a float32 [{c_out}] tensor on {device}, got "
                         f"{bias.dtype} {tuple(bias.shape)} on {bias.device}")
    oh = conv_output_size(h, kh, stride, padding, dilation)
    ow = conv_output_size(w, kw, stride, padding, dilation)
    if oh < 1 or ow < 1:
        raise ValueError(f"input of size {h}x{w} is too small for a {kh}x{kw} kernel with "
                         f"stride {stride}, padding {padding}, dilation {dilation}")
    out_shape = (n, c_out, oh, ow)
    out_given = out

    x_given = x  # what PAD_C copies from (one copy instead of two)
    x = x.contiguous(memory_format=torch.channels_last)
    short = None
    if shortcut is not None:
        xs, ws, stride_s = shortcut
        check_activation("shortcut input", xs, device, dtype)
        check_packed("shortcut weight", ws, xs.shape[1], c_out, device, dtype)
        short = Shortcut(xs.shape[1], xs.shape[2], xs.shape[3], stride_s, shortcut_pool)
        if shortcut_pool:
            if stride_s != 2:
                raise ValueError(f"a pooled shortcut averages 2x2 windows at stride 2, got "
                                 f"stride {stride_s}")
            # ceil_mode: a last window that starts inside the input counts.
            shortcut_size = (-(-short.height // 2), -(-short.width // 2))
        else:
            shortcut_size = (conv_output_size(short.height, 1, stride_s),
                             conv_output_size(short.width, 1, stride_s))
        if xs.shape[0] != n or shortcut_size != (oh, ow):
            raise ValueError(f"shortcut input of shape {tuple(xs.shape)} with stride {stride_s}"
                             f"{' (2x2 average pool)' if shortcut_pool else ''} does not produce "
                             f"the output's shape {out_shape}")
        xs = xs.contiguous(memory_format=torch.channels_last)
    else:
        xs, ws = weight, weight  # never read (HAS_SHORTCUT off): valid pointers that a
        # plan can pass again unchanged
    if residual is not None:
        check_activation("residual", residual, device, dtype)
        if tuple(residual.shape) != out_shape:
            raise ValueError(f"residual has shape {tuple(residual.shape)} but the convolution "
                             f"produces {out_shape}")
        residual = residual.contiguous(memory_format=torch.channels_last)
    if out is None:
        out = torch.empty(out_shape, device=device, dtype=dtype, memory_format=torch.channels_last)
    else:
        check_activation("out", out, device, dtype)
        if (tuple(out.shape) != out_shape
                or not out.is_contiguous(memory_format=torch.channels_last)):
            raise ValueError(f"out must be a channels_last tensor of shape {out_shape}")
        # Programs read inputs other programs overwrite, and the autotuner re-runs the launch.
        sources = [t for t in (x, residual, xs if shortcut is not None else None) if t is not None]
        if any(t.untyped_storage().data_ptr() == out.untyped_storage().data_ptr() for t in sources):
            raise ValueError("out must not share memory with the input, residual or shortcut "
                             "input (the kernel does not compute in place)")
    if config is not None and not isinstance(config, ConvConfig):
        raise TypeError(f"config must be a ConvConfig, got {type(config).__name__}")
    geometry = ConvGeometry(n, c_in, h, w, c_out, (kh, kw), stride, padding, dilation, groups,
                            relu, residual is not None, short, dtype)
    if allow_tf32 is None:
        allow_tf32 = runtime.cudnn_allows_tf32()
    ints, consts = geometry.scalars(allow_tf32, runtime.INTERPRETED)
    if config is not None:
        configs.check_config(config, consts, dtype.itemsize)
    if n == 0:
        return out, None
    m = ints["M"]
    args = (x, weight, bias, xs, ws, residual if residual is not None else out, out, m)
    last = {}  # what the last launch ran, for a plan: the real launch comes after any tuning

    def launch(config):
        """Runs ``config``; returns the output (the cuDNN backend's own tensor unless the
        caller gave ``out``)."""
        if config.cudnn:
            for launches in getattr(_recording, "lists", ()):
                launches.append(Launch(geometry, config, "cudnn", (), consts))
            last.update(config=config, runs=[])
            y = cudnn.conv_bn_act_cudnn(
                x, weight, bias, kh, kw, stride, padding, dilation, groups, relu, residual,
                None if shortcut is None else (xs, ws, shortcut[2]), shortcut_pool)
            return y if out_given is None else out.copy_(y)
        kernel_args, kernel_consts = args, consts
        if config.pad_c:
            padded = geometry._replace(c_in=config.pad_c)
            kernel_args = (pad_channels(x_given, config.pad_c),
                           pad_weight_rows(weight, c_in, config.pad_c, kh * kw), *args[2:])
            kernel_consts = padded.scalars(allow_tf32, runtime.INTERPRETED)[1]
        if config.tma and not _tma_ready(x, weight):
            config = config._replace(tma=False, persistent=False)
        grid = (output_tiles(m, consts, config), groups)
        if config.persistent:
            grid = (min(grid[0], persistent_programs(device)), 1)
        for launches in getattr(_recording, "lists", ()):
            launches.append(Launch(geometry, config, configs.walk(config, kernel_consts), grid,
                                   kernel_consts))
        options = config.launch_options()
        tail = (m, *_in_order(conv_bn_act_kernel, 8, {**kernel_consts, **options}))
        last.update(config=config, weight=kernel_args[1])
        if config.split_k == 1:
            compiled = conv_bn_act_kernel[grid](*kernel_args, **kernel_consts, **options)
            last["runs"] = [(compiled, grid, tail)]
            return out
        # Split-K: partial sums into an fp32 workspace, then one small reduce + epilogue.
        part = torch.empty((config.split_k, m, c_out), device=device, dtype=torch.float32)
        grid += (config.split_k,)
        compiled = conv_bn_act_kernel[grid](
            *kernel_args[:6], part, *kernel_args[7:], **kernel_consts, **options)
        last["runs"] = [(compiled, grid, tail),
                        _split_k_epilogue(part, bias, residual, out, m, consts)]
        return out

    if runtime.INTERPRETED:
        with runtime.INTERPRETER_LOCK:
            return launch(config or configs.interpreter_config(m, consts)), None
    out = launch(config or choose_config(ints, consts, dtype, launch, device))
    if not with_plan or last["config"].cudnn:
        return out, None
    return out, _plan(last, x_given, residual, shortcut, device, weight, bias, ws, out, folded)


def _in_order(jit, start, named):
    """The values of ``jit``'s parameters from the ``start``-th on, in its order, from
    ``named`` (what the JIT binds the launch's keywords to; options such as num_warps are
    not parameters)."""
    return [named[name] for name in jit.arg_names[start:]]


def _plan(last, x, residual, shortcut, device, weight, bias, ws, out, folded):
    """A LaunchPlan of the launch that ``last`` describes, or None (see
    ``conv_bn_act_with_plan``)."""
    xs = None if shortcut is None else shortcut[0]
    config = last["config"]
    # The plan passes residual and xs as they come, and x too unless it pads or converts it.
    as_given = [t for t in (residual, xs) if t is not None]
    convert = not (config.pad_c or x.is_contiguous(memory_format=torch.channels_last))
    if (not plan.supported_triton() or plan.launch_hooks_set()
            or any(t.data_ptr() % 16 for t in (x, *as_given))
            or not all(t.is_contiguous(memory_format=torch.channels_last) for t in as_given)
            or any(getattr(compiled, "function", None) is None
                   for compiled, _, _ in last["runs"])):  # not compiled (a jit_cache_hook)
        return None
    stream = triton.runtime.driver.active.get_current_stream(
        triton.runtime.driver.active.get_current_device())
    return plan.LaunchPlan(
        x=x, residual=residual, xs=xs, device=device, stream=stream, weight=last["weight"],
        bias=bias, ws=ws, out_shape=out.shape,
        out_stride=out.stride(), pad=config.pad_c, convert=convert,
        runs=[plan.Run(*run) for run in last["runs"]],
        split=None if config.split_k == 1 else (config.split_k, out.numel() // out.shape[1],
                                                out.shape[1]),
        tma=config.tma, folded=folded)


# Under the interpreter a persistent grid has this many programs, so that each walks
# several tiles of a test's small tensors.
INTERPRETER_PROGRAMS = 3


def persistent_programs(device):
    """The programs of a persistent grid on ``device`` (at most one per tile): one per SM;
    with no CUDA device (the interpreter, a stand-in GPU) ``INTERPRETER_PROGRAMS``."""
    return runtime.sm_count(device) or INTERPRETER_PROGRAMS


def _tma_ready(x, weight):
    """TMA descriptors need 16-byte aligned bases (a view into a larger tensor may not be);
    on a GPU, Triton also needs an allocator for the descriptors' scratch."""
    if x.data_ptr() % 16 or weight.data_ptr() % 16:
        return False
    if not runtime.INTERPRETED:
        runtime.ensure_allocator()
    return True


def _split_k_epilogue_blocks(m, c_out):
    """(BLOCK_M, BLOCK_N) of the split-K epilogue: small row blocks on a GPU, where M is small
    and the reduction wants many programs; the whole tensor in few programs when interpreted."""
    block_n = min(128, max(16, _next_power_of_2(c_out)))
    block_m = min(128, max(16, _next_power_of_2(m))) if runtime.INTERPRETED else 16
    return block_m, block_n


def _next_power_of_2(n):
    return 1 << (n - 1).bit_length()


def _split_k_epilogue(part, bias, residual, out, m, consts):
    """Launches split-K's reduce + epilogue kernel; returns (compiled kernel, grid, the
    arguments after the four tensors) for a plan."""
    c_out = consts["C_out"]
    block_m, block_n = _split_k_epilogue_blocks(m, c_out)
    grid = (-(-m // block_m), -(-c_out // block_n))
    named = dict(C_out=c_out, SPLIT_K=part.shape[0], HAS_RESIDUAL=consts["HAS_RESIDUAL"],
                 RELU=consts["RELU"], BLOCK_M=block_m, BLOCK_N=block_n)
    compiled = split_k_epilogue_kernel[grid](
        part, bias, residual if residual is not None else out, out, m, **named, num_warps=4)
    return compiled, grid, (m, *_in_order(split_k_epilogue_kernel, 5, named))


def choose_config(ints, consts, dtype, launch, device):
    """The GPU config for one launch: the tuner's pick among ``configs.candidates`` for this
    device and, where ``backends.cudnn_allowed()``, the cuDNN backend (it calls ``launch(config)`` to
    time them the first time a geometry is seen on this machine), or
    ``configs.default_config`` when autotuning is off."""
    element_size = dtype.itemsize
    if not autotune.enabled():
        return configs.default_config(ints["M"], consts, element_size)
    key = tuning_key(ints, consts, dtype)
    # The candidate list per key, device and backends, built once: this runs on every launch.
    with_cudnn = device.type == "cuda" and backends.cudnn_allowed()
    listed = _CANDIDATES.get((device, key, with_cudnn))
    if listed is None:
        listed = configs.candidates(consts, element_size, ints["M"], runtime.arch(device),
                                    runtime.sm_count(device))
        listed = _CANDIDATES.setdefault((device, key, with_cudnn),
                                        listed + [configs.CUDNN] * with_cudnn)
    return TUNER.pick(key, listed, launch, device)


_CANDIDATES = {}


def tuning_key(ints, consts, dtype):
    """What the tuner's choice depends on: the dtype, every integer argument and constexpr."""
    return (str(dtype), *ints.items(), *sorted(consts.items()))


def chosen_config(geometry, allow_tf32):
    """The config the tuner picked in this process for a launch of ``geometry``, or None."""
    ints, consts = geometry.scalars(allow_tf32, interpreted=False)
    return TUNER.chosen().get(tuning_key(ints, consts, geometry.dtype))


def forget_choices():
    """Drop the tuner's in-memory choices (the stored ones stay)."""
    TUNER.forget()


def compile_ahead(geometry, config, allow_tf32):
    """Compile, without launching or allocating, the kernel that ``conv_bn_act`` launches for
    ``geometry`` with ``config``: Triton's own JIT warm-up, so the cache key is the launch's
    (mock pointers of the right dtypes stand in for the tensors; PyTorch's allocations are
    16-byte aligned, as the mocks claim).  A split-K config writes an fp32 workspace and also
    warms its epilogue kernel.  Returns Triton's compiled convolution kernel (None when a
    ``jit_cache_hook`` skipped the compile, or for the cuDNN backend: nothing to compile)."""
    if config.cudnn:
        return None  # nothing to compile
    ints, consts = geometry.scalars(allow_tf32, interpreted=False)
    if config.pad_c:
        consts = geometry._replace(c_in=config.pad_c).scalars(allow_tf32, interpreted=False)[1]
    dtype = geometry.dtype
    out = torch.float32 if config.split_k > 1 else dtype
    pointers = (dtype, dtype, torch.float32, dtype, dtype, dtype, out)
    compiled = conv_bn_act_kernel.warmup(*pointers, *ints.values(), **consts,
                                         **config.launch_options(), grid=(1,))
    if config.split_k > 1:
        block_m, block_n = _split_k_epilogue_blocks(ints["M"], consts["C_out"])
        split_k_epilogue_kernel.warmup(
            torch.float32, torch.float32, dtype, dtype, ints["M"], C_out=consts["C_out"],
            SPLIT_K=config.split_k, HAS_RESIDUAL=consts["HAS_RESIDUAL"], RELU=consts["RELU"],
            BLOCK_M=block_m, BLOCK_N=block_n, num_warps=4, grid=(1,))
    return compiled
