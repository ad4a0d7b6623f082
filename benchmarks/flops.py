"""FLOPs of an ONNX gate graph, per-op time from onnxruntime's profiler, and a Raspberry Pi 4 estimate.

Counting (one multiply-add = 2 FLOPs; only the ops that dominate a CNN are counted):

- ``Conv``: 2 * N * C_out * H_out * W_out * (C_in / groups) * k_h * k_w (+ bias ignored);
- ``Gemm``: 2 * M * N * K; ``MatMul``: 2 * (broadcast batch) * M * N * K.

Shapes come from ONNX shape inference with the batch fixed to the number of windows of the
utterance. Everything else (pooling, ReLU, softmax, the dropout masks) is reported as "other"
time, not FLOPs.

Pi 4 estimate (see :func:`pi4_estimate`), from the FLOPs and the time measured here:
``FLOPs / PI4_GFLOPS + (everything else measured here) * PI4_OTHER_SLOWDOWN``. The conv/GEMM
part is compute-bound and is re-timed at the Pi 4's assumed throughput; the rest of the decision
(the numpy featurizer, pooling and elementwise ops, runtime overhead) is scaled by an assumed
per-core slowdown. Both assumptions and their reasoning are in :data:`PI4_ASSUMPTION`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

CONV_GEMM_KERNELS = {"Conv", "FusedConv", "NhwcFusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul"}

PI4_GFLOPS = 4.0  # assumed sustained fp32 conv/GEMM GFLOP/s of one Cortex-A72 core (Pi 4, 1.5 GHz)
PI4_OTHER_SLOWDOWN = 8.0  # assumed: non-GEMM work runs this many times slower on a Pi 4 core than here
PI4_ASSUMPTION = (
    "Raspberry Pi 4 (Cortex-A72, 1.5 GHz), 1 thread. (1) Conv/GEMM: about 4 GFLOP/s sustained fp32. "
    "Basis: High-Performance Linpack (fp64, OpenBLAS) reaches about 8 GFLOP/s on the Pi 4's four "
    "cores with 64-bit Raspberry Pi OS (B. Feiereisen, 'Benchmarking the Raspberry Pi 4 with "
    "Raspberry Pi OS64', 2022, https://feiereisen.net/?page_id=924), i.e. about 2 GFLOP/s per core "
    "in fp64; 128-bit NEON holds twice as many fp32 lanes, hence about 4 GFLOP/s per core in fp32. "
    "(2) Everything else (numpy featurizer, pooling and elementwise ops, runtime and Python "
    "overhead): 8x slower than one core of this machine: about 2x from the clock (1.5 GHz against "
    "about 3 GHz), 2x from the narrower core, and 2x from 128-bit NEON against AVX2/AVX-512 in the "
    "vectorised numpy parts. Not measured on a Pi: an order-of-magnitude estimate."
)


def _dims(value_info) -> list:
    return [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]


def load_with_batch(path, batch: int):
    """The ONNX model with every graph input's first dimension fixed to ``batch``, shapes inferred."""
    import onnx

    model = onnx.load(str(path))
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_param")
            dims[0].dim_value = int(batch)
    return onnx.shape_inference.infer_shapes(model, data_prop=True)


def graph_flops(path, batch: int) -> dict:
    """Conv and GEMM FLOPs of one run of the graph on ``batch`` windows."""
    model = load_with_batch(path, batch)
    g = model.graph
    shapes = {vi.name: _dims(vi) for vi in [*g.input, *g.value_info, *g.output]}
    shapes.update({t.name: list(t.dims) for t in g.initializer})
    by_op = {"Conv": 0, "Gemm": 0, "MatMul": 0}
    unknown = []
    for node in g.node:
        if node.op_type not in by_op:
            continue
        try:
            by_op[node.op_type] += _node_flops(node, shapes)
        except (KeyError, TypeError, ValueError, IndexError):
            unknown.append(node.name or node.op_type)
    return {"total": int(sum(by_op.values())), "by_op": by_op, "batch": int(batch),
            "uncounted_nodes": unknown}


def _node_flops(node, shapes: dict) -> int:
    out = shapes[node.output[0]]
    if node.op_type == "Conv":
        w = shapes[node.input[1]]  # (C_out, C_in/groups, kh, kw)
        return 2 * int(np.prod(out)) * int(np.prod(w[1:]))
    a, b = shapes[node.input[0]], shapes[node.input[1]]
    if node.op_type == "Gemm":
        trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
        k = a[0] if trans_a else a[1]
        return 2 * int(np.prod(out)) * int(k)
    # MatMul: out (..., M, N), contraction over a's last dim
    return 2 * int(np.prod(out)) * int(a[-1])


def profile_ops(path, images: np.ndarray, runs: int = 10, threads: int = 1) -> dict:
    """Per-op-type kernel time (ms per run) from onnxruntime's profiler, with the runtime's options.

    The session is made like :func:`voicegate.device.runtime.make_session` (default graph
    optimisation, ``threads`` intra-op threads, sequential) plus profiling, so op types are the
    optimised graph's (e.g. ``FusedConv``).
    """
    import onnxruntime as ort

    from voicegate.device.runtime import as_model_input
    from voicegate.device.contract import INPUT_NAME, OUTPUT_NAME

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    so.enable_profiling = True
    with tempfile.TemporaryDirectory(prefix="vg-prof-") as tmp:
        so.profile_file_prefix = os.path.join(tmp, "ort")
        sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        x = as_model_input(images)
        for _ in range(2):  # warm-up runs are profiled too; they are dropped below by run count
            sess.run([OUTPUT_NAME], {INPUT_NAME: x})
        for _ in range(runs):
            sess.run([OUTPUT_NAME], {INPUT_NAME: x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    runs_seen = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    keep_after = sorted(e["ts"] for e in runs_seen)[2] if len(runs_seen) > 2 else -1
    per_op: dict = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        if e["ts"] < keep_after:
            continue
        op = e.get("args", {}).get("op_name", "?")
        per_op[op] = per_op.get(op, 0.0) + e["dur"] / 1000.0
    n = max(1, len(runs_seen) - 2) if keep_after >= 0 else max(1, len(runs_seen))
    per_op = {k: round(v / n, 4) for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])}
    conv_gemm = sum(v for k, v in per_op.items() if k in CONV_GEMM_KERNELS)
    return {"ms_per_run": per_op, "conv_gemm_ms": round(conv_gemm, 4),
            "other_ms": round(sum(per_op.values()) - conv_gemm, 4), "runs": n, "threads": threads}


def pi4_estimate(
    flops: int,
    conv_gemm_ms: float,
    measured_ms: float,
    pi_gflops: float = PI4_GFLOPS,
    other_slowdown: float = PI4_OTHER_SLOWDOWN,
) -> dict:
    """Scale a decision measured here (``measured_ms``, 1 thread) to a Pi 4 core.

    ``conv_gemm_ms`` is the part of it spent in conv/GEMM kernels (profiled). Estimate =
    ``flops / pi_gflops`` (those FLOPs at the Pi's assumed throughput) + ``(measured_ms -
    conv_gemm_ms) * other_slowdown`` (the rest, slowed down by the assumed factor).
    ``here_conv_gemm_gflops`` = the conv/GEMM throughput reached here, for reference.
    """
    rest = max(0.0, measured_ms - conv_gemm_ms)
    floor = flops / (pi_gflops * 1e6)
    return {
        "pi4_gflops_assumed": pi_gflops,
        "other_slowdown_assumed": other_slowdown,
        "here_conv_gemm_gflops": round(flops / (conv_gemm_ms * 1e6), 2) if conv_gemm_ms > 0 else None,
        "conv_gemm_ms_pi4": round(floor, 2),
        "rest_ms_here": round(rest, 3),
        "estimate_ms": round(floor + rest * other_slowdown, 1),
    }
