"""The distributed evaluation recipe (examples/distributed_eval.py, docs/serving.md) under
torchrun with 2 processes (gloo, CPU): the gathered logits are one process's (issue 15)."""
import os
import pathlib
import subprocess
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "distributed_eval.py"
# 7 samples over 2 ranks: the sampler pads rank 1 with a repeat, which must not show.
ARGS = ["--samples", "7", "--size", "16", "--num-classes", "10", "--batch-size", "2"]


def _run(launcher, out, cwd):
    # The CPU torch path (no interpreter, no GPU: gloo, and this test must not depend on
    # having two GPUs) and one thread per process, as torchrun would set.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, *launcher, str(SCRIPT), *ARGS, "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=cwd, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout, torch.load(out)


def test_two_processes_gather_what_one_computes(tmp_path):
    one_log, one = _run([], tmp_path / "one.pt", tmp_path)
    two_log, two = _run(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"],
                        tmp_path / "two.pt", tmp_path)
    assert "from 1 process(es)" in one_log and "from 2 process(es)" in two_log
    assert one.shape == two.shape == (7, 10)
    # Batches are composed differently per rank, so the convolutions may round differently.
    torch.testing.assert_close(two, one, rtol=1e-5, atol=1e-5)
    assert torch.equal(two.argmax(1), one.argmax(1))
