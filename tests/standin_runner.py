"""Checks that need Triton's JIT, run in a fresh process without TRITON_INTERPRET (the test
process interprets its kernels): the stand-in GPU's (fusedres/standin.py) and compiles for a
GPU target.  ``run_checks(names)`` runs them there and returns ``{name: result}``; each check
returns plain data for the tests to assert on (tests/kernels/conv/test_plan.py,
tests/test_plans.py, tests/kernels/test_gemm.py).  Imports nothing from the test suite's
conftest, which would switch the interpreter on."""
import copy
import json
import os
import subprocess
import sys
import traceback
from unittest import mock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_checks(names, timeout=600):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "tests.standin_runner", *names], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise AssertionError(f"stand-in checks failed to run:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


# ---------------------------------------------------------------- in the fresh process

def _models():
    import timm
    import torchvision

    import fusedres

    from .numerics import randomize_bn
    for name in ("resnet18", "resnet50"):
        yield name, fusedres.fuse(randomize_bn(getattr(torchvision.models, name)()).eval())
    # timm's ResNet-D: the 2x2-average-pooled shortcut.
    yield "timm:resnet50d", fusedres.fuse(randomize_bn(timm.create_model("resnet50d")).eval())


def _same_call(jit, plan):
    """Differences between the JIT's launcher call and the plan's (empty: the same)."""
    import torch

    from fusedres.kernels.conv import plan as plan_module
    (kernel_a, a), (kernel_b, b) = jit, plan
    if kernel_a is not kernel_b:
        return [f"kernel {kernel_a.name} vs {kernel_b.name}"]
    diffs = [f"launch argument {i}: {a[i]!r} vs {b[i]!r}" for i in range(6) if a[i] != b[i]]
    if b[6:9] != (None, None, None) or plan_module.launch_hooks_set():
        diffs.append("launch hooks or their metadata passed")
    # Weights and biases are the same values; activations the same shape and layout.
    constant = (1, 2, 4) if kernel_a.name == "conv_bn_act_kernel" else (1,)
    a, b = a[9:], b[9:]
    if len(a) != len(b):
        return diffs + [f"{len(a)} vs {len(b)} kernel arguments"]
    for i, (u, v) in enumerate(zip(a, b)):
        if isinstance(u, torch.Tensor) != isinstance(v, torch.Tensor):
            diffs.append(f"argument {i}: {type(u).__name__} vs {type(v).__name__}")
        elif isinstance(u, torch.Tensor):
            if (u.shape, u.stride(), u.dtype, u.data_ptr() % 16) != (
                    v.shape, v.stride(), v.dtype, v.data_ptr() % 16):
                diffs.append(f"argument {i}: {u.shape} {u.stride()} {u.dtype} vs "
                             f"{v.shape} {v.stride()} {v.dtype}")
            elif i in constant and not torch.equal(u, v):
                diffs.append(f"argument {i}: other values")
        elif u != v or type(u) is not type(v):
            diffs.append(f"argument {i}: {u!r} vs {v!r}")
    return diffs


def check_same_calls():
    """Per model, config choice and input: the launcher calls of a forward on the normal
    path (which builds the plans) and of the next one (replaying them)."""
    import torch

    from fusedres import kernels, standin
    results = []
    inputs = [("float16", 1), ("float32", 2)]
    for name, model in _models():
        for choice in ("plain", "variants"):  # variants: split-K, TMA, padded stem
            for dtype_name, batch in inputs if name == "resnet18" else inputs[:1]:
                dtype = getattr(torch, dtype_name)
                model = copy.deepcopy(model).to(dtype)  # no folds, no plans
                x = torch.randn(batch, 3, 224, 224, dtype=dtype)
                with standin.standin_gpu(choice, record=True) as gpu, torch.inference_mode():
                    with kernels.record_launches() as normal:
                        model(x)
                    jit_calls = list(gpu.calls)
                    gpu.calls.clear()
                    with kernels.record_launches() as replayed:
                        model(x)
                    gate = model._plan_gate.steps(model, x) is not None
                    diffs = [d for pair in zip(jit_calls, gpu.calls) for d in _same_call(*pair)]
                results.append(dict(
                    case=f"{name} {choice} {dtype_name} batch {batch}", diffs=diffs[:5],
                    launches=len(normal), calls=len(jit_calls), replay_calls=len(gpu.calls),
                    normal_launches_in_replay=len(replayed), gate=gate,
                    options=sorted({w for launch in normal for w in (
                        launch.config.options().split() + (
                            ["pooled-shortcut"] if launch.geometry.shortcut is not None
                            and launch.geometry.shortcut.pool else []))
                        if not w.isdigit()})))
    return results


def check_guards():
    """Launches that take the normal path (a ``Launch`` record) when a guard misses."""
    import torch
    import triton
    from torch import nn

    import fusedres
    from fusedres import kernels, ops, standin

    from .numerics import randomize_bn
    conv = nn.Conv2d(64, 64, 3, padding=1, bias=False)
    step = fusedres.FusedConvBN(conv, randomize_bn(nn.BatchNorm2d(64)), relu=True).eval().half()
    cl = torch.channels_last
    x = torch.randn(1, 64, 28, 28).half().contiguous(memory_format=cl)
    residual = torch.randn(1, 64, 28, 28).half().contiguous(memory_format=cl)
    counts = {}

    def launches(name, *args):
        with kernels.record_launches() as records:
            step(*args)
        counts[name] = len(records)

    with standin.standin_gpu("plain") as gpu, torch.inference_mode():
        launches("first call", x)
        launches("same input", x)
        storage = torch.empty(x.numel() + 1, dtype=x.dtype)
        misaligned = storage[1:].view(1, 28, 28, 64).permute(0, 3, 1, 2)
        launches("misaligned view", misaligned)
        launches("batch 2", torch.cat([x, x]).contiguous(memory_format=cl))
        launches("batch 1 again", x)
        launches("nchw input", x.contiguous())
        launches("nchw input again", x.contiguous())
        launches("residual", x, residual)
        launches("residual not channels_last", x, residual.contiguous())
        gpu.driver.stream = 7
        launches("other stream", x)
        gpu.driver.stream = 0
        gpu.driver.device = 1
        launches("other device index", x)
        gpu.driver.device = 0
        launches("back on the first stream and device", x)
        hooks = triton.knobs.runtime.launch_enter_hook
        hook = (lambda metadata: None)
        hooks.add(hook)
        try:
            launches("launch hook", x)
        finally:
            hooks.remove(hook)
        with mock.patch.object(ops, "tracing", lambda: True):
            launches("tracing", x)
        with mock.patch.object(ops, "LAUNCH_PLANS", False):
            launches("plans off", x)
    return counts


def check_model_gate():
    """When a whole fused model replays unchecked (``PlanGate.steps``) and what still runs."""
    import torch
    import torchvision

    import fusedres
    from fusedres import kernels, standin

    from .numerics import randomize_bn
    model = fusedres.fuse(randomize_bn(torchvision.models.resnet18()).eval()).half()
    x = torch.randn(1, 3, 224, 224).half()
    out = {}

    def forward(name, grad=False):
        with torch.inference_mode(not grad), kernels.record_launches() as records:
            model(x)
            replays = model._plan_gate.steps(model, x) is not None
        out[name] = dict(launches=len(records), replays=replays)

    with standin.standin_gpu("plain") as gpu:
        forward("first")
        forward("second")
        fired = []
        handle = model.layer2[0].register_forward_hook(lambda *args: fired.append(1))
        forward("block hook")
        out["block hook"]["hook_calls"] = len(fired)
        handle.remove()
        forward("hook removed")
        model.requires_grad_(True)
        forward("autograd", grad=True)
        model.requires_grad_(False)
        forward("no parameter needs grad", grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            forward("autocast")
        model.layer3[0].train()
        forward("one block in train mode")
        model.train()
        forward("train mode")
        model.eval()
        forward("eval again")
        # One block's plans remade (a call of that block alone) for inputs its walk never
        # passes it: the replays before it cannot vouch for them (LaunchPlan.follows).
        block_input = torch.randn(1, 128, 28, 28).half().contiguous(
            memory_format=torch.channels_last)
        with torch.inference_mode():
            gpu.driver.stream = 7
            model.layer2[1](block_input)
            gpu.driver.stream = 0
        forward("a block's plans made on another stream")
        with torch.inference_mode():
            model.layer2[1](block_input.contiguous())
        forward("a block's first plan made for an nchw input")
        forward("after both")
        torch.nn.Linear(4, 4)  # a registration elsewhere: nothing of this model changed
        forward("unrelated registration")
        model.layer1[0].relu = torch.nn.ReLU()  # a part without tensors replaced
        forward("part without tensors replaced")
    return out


def _changes():
    import torch
    import torchvision
    from torch import nn

    import fusedres

    from .numerics import randomize_bn

    def in_place_weight(m):
        m.layer3[1].conv2.weight.neg_()

    def in_place_running_var(m):
        m.layer2[0].downsample[1].running_var.mul_(3.0)

    def load_state_dict(m):
        m.load_state_dict(randomize_bn(torchvision.models.resnet18()).half().state_dict())

    def float_half_round_trip(m):
        m.float().half()

    def replaced_parameter(m):
        m.layer1[0].bn1.weight = nn.Parameter(torch.randn(64).half())

    def replaced_submodule(m):
        m.layer2[1].bn2 = randomize_bn(nn.BatchNorm2d(128)).eval().half()

    def replaced_block(m):
        m.layer4[1] = fusedres.fuse(randomize_bn(
            torchvision.models.resnet18())).layer4[1].eval().half()

    def eps(m):
        m.layer1[0].bn1.eps = 0.5

    def data_assigned(m):
        # New values in a new storage, the tensor object and its version unchanged.
        weight = m.layer3[1].conv2.weight
        weight.data = torch.randn_like(weight)

    def stem(m):
        m.bn1.running_mean.add_(1.0)

    def train_mode_step(m):
        # Updates every running statistic, bumping only num_batches_tracked's version.
        m.train()
        m(torch.randn(2, 3, 64, 64).half())
        m.eval()

    # Module._apply writes new tensors into a module's tables without a registration: the
    # forward after it must see them as other tensors, so that the edit after is seen too.
    def overwritten_on_conversion(m):
        torch.__future__.set_overwrite_module_params_on_conversion(True)
        try:
            m.to(memory_format=torch.channels_last)
        finally:
            torch.__future__.set_overwrite_module_params_on_conversion(False)
        with torch.inference_mode():
            m(torch.randn(1, 3, 224, 224).half())
        m.layer1[0].conv1.weight.neg_()

    def buffer_converted(m):
        bn = m.layer1[0].bn1
        bn.running_var = bn.running_var.float()  # a registration
        with torch.inference_mode():
            m(torch.randn(1, 3, 224, 224).half())
        m.half()  # replaces that buffer only
        with torch.inference_mode():
            m(torch.randn(1, 3, 224, 224).half())
        bn.running_var.mul_(3.0)

    return [in_place_weight, in_place_running_var, load_state_dict, float_half_round_trip,
            replaced_parameter, replaced_submodule, replaced_block, eps, data_assigned, stem,
            train_mode_step, overwritten_on_conversion, buffer_converted]


def _stale_plans(model):
    """Launch sites of ``model`` (a FusedResNet) whose plans hold other weights than a fold
    of their modules now."""
    import torch

    from fusedres.folding import build_folded
    sites = [("stem", model._stem_fold, [(model.conv1, model.bn1)])]
    for li in range(1, 5):
        for bi, block in enumerate(getattr(model, f"layer{li}")):
            for i, (conv, bn) in enumerate(block._PAIRS):
                pairs = [(getattr(block, conv), getattr(block, bn))]
                if i == len(block._PAIRS) - 1 and block.downsample is not None:
                    pairs.append((block.downsample[0], block.downsample[1]))
                sites.append((f"layer{li}.{bi}.{conv}", block._folds[i], pairs))
    stale = []
    for name, fold, pairs in sites:
        for plan in fold.plans.values():
            fresh = build_folded(pairs, plan.dtype, plan.device, packed=True)
            if not (torch.equal(plan.bias, fresh.bias) and torch.equal(
                    plan.ws if len(pairs) > 1 else plan.weight,
                    fresh.shortcut_weight if len(pairs) > 1 else fresh.weight)):
                stale.append(name)
    return stale


def check_staleness():
    """After each change to a model whose plans exist: what the next forward launched
    normally, whether any plan is stale after it, and whether the one after replays."""
    import torch
    import torchvision

    import fusedres
    from fusedres import kernels, standin

    from .numerics import randomize_bn
    x = torch.randn(1, 3, 224, 224).half()
    results = {}
    with standin.standin_gpu("plain"):
        for change in _changes():
            model = fusedres.fuse(randomize_bn(torchvision.models.resnet18()).eval()).half()
            with torch.inference_mode():
                model(x)
                model(x)
            with torch.no_grad():
                change(model)
            with torch.inference_mode():
                with kernels.record_launches() as after_change:
                    model(x)
                stale = _stale_plans(model)
                with kernels.record_launches() as next_forward:
                    model(x)
            results[change.__name__] = dict(launches_after_change=len(after_change),
                                            stale=stale, launches_next=len(next_forward))
        model = fusedres.fuse(randomize_bn(torchvision.models.resnet18()).eval()).half()
        with torch.inference_mode():
            model(x)
            fusedres.forget_folds(model)
            results["forget_folds"] = dict(plans=sum(
                len(block._folds[0].plans) for block in model.layer1))
    return results


def check_gemm_compile():
    """The reference GEMM (kernels/gemm/) compiled by Triton for sm_90, no GPU needed: its
    tensor-core instruction, registers and spill (stack) bytes."""
    import triton
    from triton.backends.compiler import GPUTarget

    from fusedres import sass
    from fusedres.kernels.gemm import launcher
    from fusedres.kernels.gemm.kernel import persistent_matmul_kernel
    tile = {k: v for k, v in launcher.TILE.items() if k not in ("num_warps", "num_stages")}
    constexprs = {"N": 256, "K": 1024, **tile, "PROGRAMS": 132, "FLATTEN": False,
                  "UPCAST_DOT": False}
    source = triton.compiler.ASTSource(
        persistent_matmul_kernel,
        signature={"a_ptr": "*fp16", "b_ptr": "*fp16", "c_ptr": "*fp16", "M": "i32",
                   **dict.fromkeys(constexprs, "constexpr")},
        constexprs=constexprs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": launcher.TILE["num_warps"],
                                       "num_stages": launcher.TILE["num_stages"]})
    registers, stack = sass.resource_usage(compiled.asm["cubin"])
    return dict(wgmma="wgmma" in compiled.asm["ptx"], registers=registers, stack=stack)


def check_gemm_sass():
    """The SASS reader (fusedres/sass.py) on GEMMs compiled for sm_90 with one tile
    (128x128x64, 8 warps, 3 stages; fp16; N 256, K 1024, so 16 K steps per tile): the
    reference persistent GEMM (its K loop inside the tile loop), the same with K = 64 (one K
    step: ptxas unrolls the K loop into the tile loop), the tile loop flattened into the K
    loop, and one tile per program (no persistent loop).  Each compiles through the JIT's
    warm-up, as ``fusedres inspect`` compiles the reference (aot.GemmJob)."""
    import dataclasses

    import torch

    from fusedres import aot, sass

    from .gemm_variants import one_tile_matmul_kernel
    tile = dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64)
    options = dict(num_warps=8, num_stages=3, grid=(1,))
    pointers = (torch.float16,) * 3
    m, n, k = 50176, 256, 1024  # ResNet-50's 1024 -> 256 1x1 at 14x14, batch 256

    def read(compiled):
        return sass.read_k_loop(sass.dump("--dump-sass", compiled.asm["cubin"]))._asdict()

    def reference(k, flatten=False):
        return dataclasses.asdict(aot.compile_and_measure(
            aot.GemmJob(*tile.values(), 8, 3, m, n, k, torch.float16, 90, flatten)))

    with aot.target_driver(90):
        one_tile = one_tile_matmul_kernel.warmup(*pointers, m, N=n, K=k, **tile, **options)
    return dict(persistent=reference(k), single_step=reference(64),
                flattened=reference(k, flatten=True), one_tile=read(one_tile))


CHECKS = {"same_calls": check_same_calls, "guards": check_guards,
          "model_gate": check_model_gate, "staleness": check_staleness,
          "gemm_compile": check_gemm_compile, "gemm_sass": check_gemm_sass}


def main(names):
    results = {}
    for name in names:
        try:
            results[name] = CHECKS[name]()
        except Exception:  # reported to the test, which fails with the traceback
            results[name] = {"error": traceback.format_exc()}
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])
