"""`fusedres inspect`: every kernel specialisation compiles cleanly for sm_80 and sm_90.

No GPU is needed: Triton compiles to PTX and cubin on the CPU.  The first run compiles a few
hundred kernels on all cores (a few minutes on 2 cores); results are cached next to Triton's
own cache (TRITON_CACHE_DIR), so later runs take seconds.
"""
import argparse
import json

import pytest
import torch

from fusedres import aot, cli, gpu_inspect
from fusedres.kernels import ConvConfig, ConvGeometry, cudnn_allows_tf32
from fusedres.kernels.conv import configs

MODELS = ("resnet18", "resnet50")
DTYPES = ("float16", "float32")
ARCHES = ("sm_90", "sm_80")
# ResNet-50 in fp32 on sm_80 is left out to keep the cold compile time flat since the sm_90
# candidates (TMA, the stem's strip walks) arrived: its geometries share their configs with
# ResNet-50 fp32 on sm_90 and ResNet-18 fp32 on sm_80, which stay.
CASES = [(model, dtype, arch) for model in MODELS for dtype in DTYPES for arch in ARCHES
         if (model, dtype, arch) != ("resnet50", "float32", "sm_80")]

# Far too big for 4 warps: a 256x128 fp32 accumulator alone is 256 registers per thread, and
# two staged fp32 256x64 + 64x128 tiles need 192 KB of shared memory (sm_80 has 163 KB).
BAD_CONFIG = ConvConfig(256, 128, 64, num_warps=4, num_stages=3)


def _parse(*argv):
    parser = argparse.ArgumentParser()
    gpu_inspect.add_arguments(parser)
    return parser.parse_args(argv)


def _a_3x3_geometry(dtype):
    return next(geometry for geometry in gpu_inspect.specialisations("resnet18", dtype)
                if geometry.kernel_size == (3, 3))


@pytest.fixture(scope="session")
def compiled_cases():
    """Compile every case's specialisations in one parallel pass: the cases share most of
    their kernels, and the tests below then read the result cache."""
    allow_tf32 = cudnn_allows_tf32()
    jobs = [gpu_inspect.Job(geometry, config, gpu_inspect.ARCHES[arch], allow_tf32)
            for model, dtype, arch in CASES
            for geometry in gpu_inspect.specialisations(model, gpu_inspect.DTYPES[dtype])
            for config in gpu_inspect.candidate_configs(geometry, gpu_inspect.ARCHES[arch])]
    gpu_inspect.compile_jobs(jobs)


@pytest.mark.parametrize("model,dtype,arch", CASES)
def test_inspect_is_clean(compiled_cases, model, dtype, arch, capsys):
    assert gpu_inspect.run(_parse("--model", model, "--dtype", dtype, "--arch", arch)) == 0, \
        capsys.readouterr().out
    assert ", 0 failed" in capsys.readouterr().out


@pytest.mark.parametrize("model,dtype,arch", CASES)
def test_rows_carry_registers_and_tensor_cores(compiled_cases, model, dtype, arch):
    allow_tf32 = cudnn_allows_tf32()
    rows = gpu_inspect.inspect_model(model, gpu_inspect.DTYPES[dtype], gpu_inspect.ARCHES[arch],
                                     allow_tf32=allow_tf32)
    assert len({row.geometry for row in rows}) >= 5
    # Each geometry lists the tuner's cuDNN candidate once, with nothing compiled.
    cudnn_rows = [row for row in rows if row.config.cudnn]
    assert len(cudnn_rows) == len({row.geometry for row in cudnn_rows})
    assert {row.geometry for row in cudnn_rows} == {row.geometry for row in rows}
    assert all(row.result == gpu_inspect.CompileResult() for row in cudnn_rows)
    for row in rows:
        if row.config.cudnn:
            continue
        assert row.result.error is None
        assert 0 < row.result.registers <= 255
        assert row.result.stack_bytes == 0
        assert 0 < row.result.shared_bytes <= gpu_inspect.SHARED_LIMIT[row.arch]
        if gpu_inspect.uses_tensor_cores(row.geometry, allow_tf32):
            assert row.result.tensor_core in gpu_inspect.TENSOR_CORE_OPS
        assert gpu_inspect.row_problems(row, allow_tf32) == []


def test_fp16_on_sm_90_uses_wgmma(compiled_cases):
    # wgmma needs a warpgroup (4 warps): the sm_90 candidates leave out 2-warp tiles, which
    # would fall back to mma.sync.
    rows = gpu_inspect.inspect_model("resnet18", torch.float16, 90)
    assert {row.result.tensor_core for row in rows if not row.config.cudnn} == {"wgmma"}


def test_a_spilling_config_is_reported(monkeypatch, capsys):
    geometry = _a_3x3_geometry(torch.float32)
    result = gpu_inspect.compile_one(geometry, BAD_CONFIG, 80, allow_tf32=True)
    problems = gpu_inspect.check(result, 80)
    assert result.stack_bytes > 0
    assert any(p.startswith("spills") for p in problems)
    assert any(p.startswith("shared memory") for p in problems)

    monkeypatch.setattr(gpu_inspect, "specialisations", lambda *args: [geometry])
    monkeypatch.setattr(gpu_inspect, "candidate_configs", lambda geometry, arch=None: [BAD_CONFIG])
    assert gpu_inspect.run(_parse("--model", "resnet18", "--dtype", "float32",
                                  "--arch", "sm_80")) == 1
    out = capsys.readouterr().out
    assert "1 failed" in out
    assert f"FAIL {geometry.describe()} [{BAD_CONFIG.describe()}]: spills" in out


@pytest.mark.parametrize("result,expected", [
    (gpu_inspect.CompileResult(error="CompilationError: boom"), "compile failed"),
    (gpu_inspect.CompileResult(registers=96, stack_bytes=0, shared_bytes=65536,
                               tensor_core=None), "no tensor-core instruction"),
    (gpu_inspect.CompileResult(registers=96, stack_bytes=0, shared_bytes=200_000,
                               tensor_core="mma.sync"), "shared memory"),
])
def test_check_names_each_failure(result, expected):
    problems = gpu_inspect.check(result, 80)
    assert len(problems) == 1 and problems[0].startswith(expected)


def test_ieee_fp32_needs_no_tensor_cores():
    # What inspect decides for a row, not what the test tells it: an fp32 row without a
    # tensor-core instruction is clean without TF32 and a failure with it.
    result = gpu_inspect.CompileResult(registers=96, stack_bytes=0, shared_bytes=65536)
    geometry = _a_3x3_geometry(torch.float32)
    row = gpu_inspect.Row(geometry, gpu_inspect.candidate_configs(geometry)[0], 90, result)
    assert gpu_inspect.row_problems(row, allow_tf32=False) == []
    assert gpu_inspect.row_problems(row, allow_tf32=True)[0].startswith("no tensor-core")


def test_scalars_match_the_launcher():
    geometry = _a_3x3_geometry(torch.bfloat16)
    ints, constexprs = geometry.scalars(allow_tf32=True, interpreted=False)
    assert ints["M"] == 256 * 56 * 56 and constexprs["C_in"] == 64
    assert constexprs["DOT_PRECISION"] == "ieee" and constexprs["UPCAST_DOT"] is False
    assert (constexprs["KH"], constexprs["GATHER_K"]) == (3, False)
    # 256 images of 224x224 keep every activation tensor below 2**31 elements.
    assert constexprs["INDEX_64"] is False


def test_warmup_cli_compiles_every_candidate(compiled_cases, capsys):
    # Same kernels as the inspect cases: Triton's cache serves them, so this takes seconds.
    assert cli.main(["warmup", "--model", "resnet18", "--dtype", "float16",
                     "--arch", "sm_90"]) == 0
    geometries = gpu_inspect.specialisations("resnet18", torch.float16)
    compiles = sum(len(gpu_inspect.candidate_configs(geometry, 90)) for geometry in geometries)
    assert (f"compiled {compiles} kernels for {len(geometries)} geometries"
            in capsys.readouterr().out)


@pytest.mark.parametrize("width", [1, 2, 4])
def test_patch_tiles_of_narrow_images_compile_to_wgmma(width):
    # Patches narrower than a TMA swizzle row (PATCH_W 1-4 pixels): still wgmma, TMA, no
    # spills, on both patch tiles.
    geometry = ConvGeometry(batch=2, c_in=128, height=5, width=width, c_out=128,
                            kernel_size=(3, 3), stride=1, padding=1, dilation=1, groups=1,
                            relu=True, residual=True, shortcut=None, dtype=torch.float16)
    patches = [c for c in aot.candidate_configs(geometry, autotuning=True, arch=90) if c.patch_w]
    assert [c.patch_w for c in patches] == [width, width]
    for config in patches:
        result = gpu_inspect.compile_one(geometry, config, 90, allow_tf32=False)
        assert gpu_inspect.check(result, 90) == [] and result.tma, (config, result)


def test_a_config_that_cannot_compile_is_reported():
    # tl.dot needs K tiles of at least 16.
    result = gpu_inspect.compile_one(_a_3x3_geometry(torch.float16), ConvConfig(
        64, 64, 8, num_warps=4, num_stages=2), 90, allow_tf32=True)
    assert result.error is not None
    assert gpu_inspect.check(result, 90)[0].startswith("compile failed")


def test_the_best_candidate_prefers_overlapping_mma_groups():
    geometry = _a_3x3_geometry(torch.float16)

    def row(block_k, loop, serialised):
        result = aot.CompileResult(registers=96, stack_bytes=0, shared_bytes=0,
                                   tensor_core="wgmma", loop_instructions=loop, mma_per_step=4,
                                   serialised_mma=serialised, tma=False)
        return gpu_inspect.Row(geometry, ConvConfig(128, 128, block_k, 8, 3), 90, result)

    lowest_but_serialised, overlapping, worse = row(64, 50, True), row(32, 60, False), row(32, 90, False)
    best = gpu_inspect.best_per_geometry([lowest_but_serialised, overlapping, worse], True)
    assert best == {geometry: overlapping}
    assert gpu_inspect.best_per_geometry([lowest_but_serialised], True) == {geometry: lowest_but_serialised}


def test_json_rows_carry_the_cost_model(compiled_cases, tmp_path, capsys):
    path = tmp_path / "rows.json"
    assert gpu_inspect.run(_parse("--model", "resnet18", "--dtype", "float16", "--arch", "sm_90",
                                  "--json", str(path))) == 0
    rows = json.loads(path.read_text())
    fields = {"geometry", "config", "walk", "variant", "registers", "spill_bytes",
              "shared_bytes", "mma", "loop_instructions", "reference_loop_instructions",
              "issue_per_kfma", "tma", "serialised_mma", "programs"}
    assert all(fields <= set(row) for row in rows)
    # ResNet-18 runs no 1x1 convolution of its own (its downsampling 1x1s are fused
    # shortcuts of 3x3 rows): no reference GEMM on any row.
    assert all(" 1x1/" not in row["geometry"] for row in rows)
    assert all(row["reference_loop_instructions"] is None for row in rows)
    wgmma = [row for row in rows if row["mma"] == "wgmma"]
    assert wgmma and all(row["issue_per_kfma"] > 0 for row in wgmma)
    # Outside the stem's gathered K walk, every wgmma candidate issues under 5 per kFMA.
    assert all(row["issue_per_kfma"] < 5 for row in wgmma if "7x7" not in row["geometry"])
    # Per padded geometry, the hoisted tap walk's best candidate issues fewer instructions per
    # step than the recomputed walk's best.
    best = {}
    for row in wgmma:
        key = (row["geometry"], row["walk"])
        best[key] = min(best.get(key, float("inf")), row["issue_per_kfma"])
    padded = [g for g, walk in best if walk == "taps-recomputed"]
    assert padded and all(best[g, "taps"] < best[g, "taps-recomputed"] for g in padded)
    assert "best candidate per geometry" in capsys.readouterr().out
    cudnn_rows = [row for row in rows if row["variant"] == "cudnn"]
    assert {row["geometry"] for row in cudnn_rows} == {row["geometry"] for row in rows}
    assert all(row["walk"] == "cudnn" and row["registers"] is None and row["problems"] == []
               for row in cudnn_rows)


def test_1x1_rows_carry_the_reference_gemms_loop(tmp_path):
    # ResNet-50's 1024 -> 256 1x1 at 14x14, the 128x128x64 tile: its pointer and TMA
    # candidates (cached once the cases above ran) share one compile of the reference GEMM.
    path = tmp_path / "rows.json"
    assert gpu_inspect.run(_parse("--model", "resnet50", "--dtype", "float16", "--arch", "sm_90",
                                  "--geometry", "1024x14x14 -> 256 1x1",
                                  "--config", "128x128x64 w8 s3", "--json", str(path))) == 0
    rows = json.loads(path.read_text())
    assert sorted(row["variant"] for row in rows) == ["", "tma", "tma persistent",
                                                      "tma persistent flattened"]
    # The reference's K loop, 16 steps of 64: one pipelined loop of 4 wgmma per step; the
    # flattened row's is the flattened reference's steady step.
    references = {"flattened" in row["variant"]: row["reference_loop_instructions"]
                  for row in rows}
    assert all(40 < reference < 120 for reference in references.values())
    assert len({row["reference_loop_instructions"] for row in rows}) == 2
    # Issue 23's target for the persistent candidates: their steady K step within 1.1x the
    # reference GEMM's, MMA groups overlapping; the grid one program per SM of an H200.
    for row in rows:
        if "persistent" in row["variant"]:
            assert row["loop_instructions"] <= 1.1 * row["reference_loop_instructions"], row
            assert not row["serialised_mma"] and row["programs"] == 132


def test_only_1x1_fp16_and_bf16_triton_rows_have_a_reference_gemm():
    geometry = next(g for g in gpu_inspect.specialisations("resnet50", torch.bfloat16)
                    if g.kernel_size == (1, 1) and g.c_in == 1024)
    config = ConvConfig(128, 64, 32, num_warps=4, num_stages=4)
    job = gpu_inspect.reference_job(geometry, config, 90)
    assert job == gpu_inspect.GemmJob(128, 64, 32, 4, 4, 256 * 14 * 14, geometry.c_out, 1024,
                                      torch.bfloat16, 90)
    assert gpu_inspect.reference_job(geometry, configs.CUDNN, 90) is None
    assert gpu_inspect.reference_job(geometry._replace(dtype=torch.float32), config, 90) is None
    assert gpu_inspect.reference_job(_a_3x3_geometry(torch.float16), config, 90) is None


def test_triton_only_lists_no_cudnn(monkeypatch):
    monkeypatch.setenv("FUSEDRES_BACKENDS", "triton")
    # The stem's padded strip candidate alone (cached once the cases above ran).
    rows = gpu_inspect.inspect_model("resnet50", torch.float16, 90, geometry_text="7x7/s2",
                                     config_text="w8 s4 strip pad-c 4")
    assert len(rows) == 1 and not rows[0].config.cudnn
    monkeypatch.setenv("FUSEDRES_BACKENDS", "triton,cudnn")
    rows = gpu_inspect.inspect_model("resnet50", torch.float16, 90, geometry_text="7x7/s2",
                                     config_text="cudnn")
    assert [row.config for row in rows] == [configs.CUDNN]


def test_filters_select_rows(capsys):
    # The stem's padded strip candidate on 8 warps alone: one compile (cached once the cases
    # above ran).
    assert gpu_inspect.run(_parse("--model", "resnet50", "--dtype", "float16", "--arch", "sm_90",
                                  "--geometry", "7x7/s2", "--config", "w8 s4 strip pad-c 4")) == 0
    out = capsys.readouterr().out
    assert "1 specialisations x configs (1 geometries), 0 failed" in out
    assert gpu_inspect.run(_parse("--model", "resnet50", "--dtype", "float16", "--arch", "sm_90",
                                  "--geometry", "no such layer")) == 2


@pytest.mark.parametrize("version,ok", [("3.6.0", True), ("3.8.0", True), ("3.5.1", False),
                                        ("3.9.0", False)])
def test_inspect_names_the_tested_triton_range(version, ok):
    from fusedres.gpu_inspect import check_triton_version
    if ok:
        check_triton_version(version)
    else:
        with pytest.raises(RuntimeError, match="tested with Triton 3.6 to 3.8"):
            check_triton_version(version)
