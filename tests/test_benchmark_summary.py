"""benchmarks/summary.py: the markdown summary of a GPU check's JSON files, on synthetic
entries: the layer table's wall, GPU and reference ratios, the compile contenders, and the
gate's verdict in the time it judges by."""
from benchmarks import summary


def _entry(test, contender, median_s, **extra):
    return {"name": f"{test}[x]", "params": {"layer" if test == "test_layer" else "model": "a",
                                              "contender": contender},
            "stats": {"median": median_s}, "extra_info": extra}


def test_layer_rows_show_gpu_time_and_references():
    entries = [_entry("test_layer", "eager", 0.004, gpu_ms=3.0, tflop_per_s=1, gb_per_s=1),
               _entry("test_layer", "fused", 0.005, gpu_ms=1.5, host_ms=0.2, tflop_per_s=2,
                      gb_per_s=2, config="cudnn"),
               _entry("test_layer", "conv_alone", 0.003, gpu_ms=1.2),
               _entry("test_layer", "mm", 0.003, gpu_ms=0.9),
               _entry("test_layer", "triton_mm", 0.003, gpu_ms=1.8)]
    text, verdict = summary.render({}, entries, 1.0)
    row = next(line for line in text.splitlines() if line.startswith("| test_layer[layer=a]"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    # wall 0.80x, GPU 2.00x, conv alone / mm / triton mm over fused, host, ..., backend
    assert cells[3] == "0.80" and cells[6] == "2.00"
    assert cells[7:10] == ["0.80", "0.60", "1.20"]
    assert cells[10] == "0.200" and cells[-1] == "cudnn"
    assert verdict.passed  # judged in GPU time, where fused wins


def test_model_rows_show_both_compiles_and_their_first_call():
    entries = [_entry("test_model", "eager", 2.0, images_per_s=1, first_call_s=0.1),
               _entry("test_model", "fused", 1.0, images_per_s=2, tflop_per_s=3,
                      first_call_s=5.0),
               _entry("test_model", "compile", 1.25, images_per_s=1.6, first_call_s=40.0),
               _entry("test_model", "compile_max", 0.8, images_per_s=2.5, first_call_s=300.0)]
    text, _ = summary.render({}, entries, 1.0)
    row = next(line for line in text.splitlines() if line.startswith("| test_model[model=a]"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    # fused/eager 2.00, fused/compile 1.25, fused/compile_max 0.80, TFLOP/s, first calls
    assert cells[-6:] == ["2.00", "1.25", "0.80", "3.0", "40.0", "300.0"]
