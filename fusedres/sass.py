"""Reading what ptxas made of a kernel, from its cubin, with the cuobjdump bundled with Triton:
registers and stack (``resource_usage``) and the main K loop in the SASS (``read_k_loop``),
the static cost model of ``fusedres inspect`` (docs/inspect.md, "The K-loop cost model")."""
import os
import re
import shutil
import subprocess
import tempfile
from typing import NamedTuple, Optional

import triton


class KLoop(NamedTuple):
    """One kernel's main K loop: instructions per K step, matrix instructions per K step,
    whether consecutive wgmma groups are serialised, whether tiles arrive by TMA."""
    loop_instructions: Optional[float]
    mma_per_step: Optional[float]
    serialised_mma: Optional[bool]
    tma: bool


# cuobjdump's SASS lines: /*address*/ instruction ; /* encoding */
_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_BRANCH = re.compile(r"\bBRA\b.*?0x([0-9a-f]+)")
_MMA = ("HGMMA", "HMMA")
# Wait until no wgmma group is in flight.
_WAIT_ALL = re.compile(r"WARPGROUP\.DEPBAR\.LE\s+gsb0,\s*0x0\b")
# A store to global memory, predicated or not: by TMA (UTMASTG) or by threads (STG, generic
# ST; not STS/STSM, shared memory, nor STL, a spill).  The output tile's store: a loop that
# holds one is a tile loop.
_STORE = re.compile(r"(?:@!?U?P[T0-9]+\s+)?(?:UTMASTG|STG|ST)\b")


def read_k_loop(sass: str) -> KLoop:
    """The main K loop of one kernel's SASS, per K step.

    The loop: the first loop closed (a branch back to a lower address) that holds a matrix
    instruction (the main loop comes before the fused shortcut's; an inner loop closes before
    its outer one).  ``serialised_mma``: a ``WARPGROUP.DEPBAR.LE gsb0, 0x0`` (wait until no
    wgmma group is in flight) on the step's path, so consecutive groups cannot overlap.

    Persistent loops.  When that loop also holds a store to global memory it is a tile loop,
    not a K loop: a persistent kernel whose tile loop and K loop are one (``tl.range(...,
    flatten=True)``), or whose K loop ptxas unrolled inside the tile loop.  Its steady step is
    the path a K step takes that neither ends nor begins a tile: every span of the body that
    a forward branch to a later address inside the body jumps over and that holds no matrix
    instruction is left out (the tile's epilogue and store behind "if last K step", the next
    tile's coordinates behind "if first K step": once per tile, not per step); a branch out
    of the body (a barrier wait's retry) is not followed.  Instructions and serialisation are
    read on that path, so the full wait that drains the pipeline before each tile's epilogue
    is not serialisation.  If the path still holds the store, the K loop is unrolled inside
    the tile loop (one iteration is one tile) and the path is read as an unrolled span
    (below).  Caveat: in such a loop, any other block some K steps skip (a per-tap offset
    update, say) is left out too.

    A loop that ptxas unrolled completely (constant trip counts) has no branch back; then
    the span from the first to the last matrix instruction covers one step fewer than there
    are wgmma groups (``gsb0`` closes one) or, on the Ampere path, HMMA runs; it counts as
    serialised when a full wait follows more than half of the groups (one wait where the main
    K walk hands over to the fused shortcut's, a pipeline drained once per tile, is not
    serialisation, except in a span of just two groups, where it is all there is)."""
    code = [(int(addr, 16), text) for addr, text in _SASS_LINE.findall(sass)]
    tma = "UTMALDG" in sass
    body = _mma_loop(code)
    if body is None:
        return _unrolled([text for _, text in code], tma)
    path = _steady_path(body) if any(_STORE.match(t) for _, t in body) else [t for _, t in body]
    if any(_STORE.match(t) for t in path):
        return _unrolled(path, tma)
    return KLoop(float(len(path)), float(sum(1 for t in path if t.startswith(_MMA))),
                 any(_WAIT_ALL.search(t) for t in path), tma)


def _branch_target(text):
    target = _BRANCH.search(text)
    return None if target is None else int(target.group(1), 16)


def _mma_loop(code):
    """The (address, instruction) pairs from the head of the first loop closed that holds a
    matrix instruction to its closing branch; None if there is none."""
    at = {addr: i for i, (addr, _) in enumerate(code)}
    for i, (addr, text) in enumerate(code):
        target = _branch_target(text)
        if target is not None and target < addr and target in at:
            body = code[at[target]:i + 1]
            if any(t.startswith(_MMA) for _, t in body):
                return body
    return None


def _steady_path(body):
    """The instructions of ``body`` (a loop, head to closing branch) on the path that jumps
    every forward branch inside the body over a span without a matrix instruction."""
    at = {addr: i for i, (addr, _) in enumerate(body)}
    path, i = [], 0
    while i < len(body):
        addr, text = body[i]
        path.append(text)
        target = _branch_target(text)
        if (target is not None and target > addr and target in at
                and not any(t.startswith(_MMA) for _, t in body[i + 1:at[target]])):
            i = at[target]
        else:
            i += 1
    return path


def _unrolled(code, tma):
    """The K steps of ``code`` (instructions in order) read as an unrolled span from its first
    to its last matrix instruction (``read_k_loop``)."""
    positions = [i for i, t in enumerate(code) if t.startswith(_MMA)]
    if not positions:
        return KLoop(None, None, None, tma)
    span = code[positions[0]:positions[-1] + 1]
    steps = (sum(1 for t in span if t.startswith("HGMMA") and "gsb0" in t)
             or sum(1 for a, b in zip(positions, positions[1:]) if b - a > 8) + 1)
    waits = sum(1 for t in span if _WAIT_ALL.search(t))
    per_step = (len(span) - 1) / (steps - 1) if steps > 1 else len(span)
    return KLoop(per_step, len(positions) / steps, waits > (steps - 1) / 2, tma)


def dump(option, cubin):
    """``cuobjdump OPTION`` on a cubin (bytes): its text."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        return subprocess.run([_cuobjdump(), option, file.name],
                              check=True, capture_output=True, text=True).stdout


def resource_usage(cubin):
    """(registers, stack bytes) of the cubin's kernel, from ``cuobjdump --dump-resource-usage``.
    Stack bytes are local memory the kernel needs per thread: register spills."""
    out = dump("--dump-resource-usage", cubin)
    usage = re.search(r"REG:(\d+)\s+STACK:(\d+)", out)
    if usage is None:
        raise RuntimeError(f"no resource usage in cuobjdump output:\n{out}")
    return int(usage.group(1)), int(usage.group(2))


def _cuobjdump():
    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                           "cuobjdump")
    path = bundled if os.path.isfile(bundled) else shutil.which("cuobjdump")
    if path is None:
        raise FileNotFoundError("cuobjdump: not bundled with this Triton and not on PATH")
    return path
