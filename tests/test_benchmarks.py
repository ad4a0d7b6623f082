"""benchmarks/: the FLOP counter against the models' own MAC count, the process measurement, and
`python benchmarks/run.py --smoke` end to end (valid JSON, every section filled; no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import flops  # noqa: E402
import run as bench  # noqa: E402

from voicegate.train.models.classifier import ModelConfig, build_model, count_macs  # noqa: E402

torch.set_num_threads(1)


def tiny_compact(seed: int):
    torch.manual_seed(seed)
    return build_model(ModelConfig(arch="compact", widths=(4, 4, 4, 4), embed_dim=8)).eval()


def test_graph_flops_match_the_models_mac_count(tmp_path):
    members = [tiny_compact(i) for i in range(3)]
    path = bench.export_ensemble(members, tmp_path / "ens.onnx", "compact")
    f = flops.graph_flops(path, batch=2)
    assert f["uncounted_nodes"] == []
    # every Conv and Linear of every member, 2 FLOPs per multiply-add, 2 windows
    assert f["total"] == 2 * 2 * sum(count_macs(m) for m in members)
    assert f["by_op"]["Conv"] > f["by_op"]["Gemm"] > 0


def test_mc_graph_counts_the_trunk_once_and_the_head_t_times(tmp_path):
    model = tiny_compact(0)
    t = 16
    f = flops.graph_flops(bench.export_mc(model, t, tmp_path / "mc.onnx", "compact"), batch=1)
    head = model.head[1]
    head_macs = head.in_features * head.out_features
    assert f["total"] == 2 * (count_macs(model) - head_macs) + 2 * t * head_macs


def test_pi4_estimate_retimes_the_flops_and_scales_the_rest():
    est = flops.pi4_estimate(flops=8e9, conv_gemm_ms=100.0, measured_ms=120.0, pi_gflops=4.0, other_slowdown=8.0)
    assert est["here_conv_gemm_gflops"] == 80.0
    assert est["conv_gemm_ms_pi4"] == 2000.0  # 8 GFLOP at 4 GFLOP/s
    assert est["rest_ms_here"] == 20.0
    assert est["estimate_ms"] == pytest.approx(2000.0 + 20.0 * 8.0)


def test_run_measured_reports_exit_code_and_peak_rss():
    r = bench.run_measured([sys.executable, "-c", "import sys; b = bytearray(60 << 20); sys.exit(3)"])
    assert r["exit_code"] == 3
    assert r["peak_rss_mb"] >= 60  # the child's own 60 MB, not this process's size
    assert r["wall_s"] > 0


def test_benchmark_smoke_writes_valid_json(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["smoke"] is True
    assert set(r["warm"]) == set(bench.VARIANTS)
    for name, w in r["warm"].items():
        assert w["decision_ms"]["n"] == 1 and w["decision_ms"]["median"] > 0
        assert r["models"][name]["size_bytes"] > 0
    assert r["models"]["compact_onnx_mc"]["method"] == "mc"
    assert r["models"]["compact_onnx_ensemble"]["method"] == "ensemble"
    assert set(r["untrained_models"]) == set(bench.VARIANTS)  # smoke never uses the shipped models
    for name in bench.VARIANTS[1:]:
        assert r["pi4"]["models"][name]["flops"]["total"] > 0
        assert r["pi4"]["models"][name]["profile"]["ms_per_run"]
    cold = r["cold"]
    assert cold["enroll_check_compact_mc"]["decision"]["decision"] in ("GRANTED", "DENIED", "UNCERTAIN")
    assert cold["seed_way_script"]["decision"]["windows"] == r["settings"]["windows_per_utterance"]
    assert set(cold["enroll_check_compact_mc"]["exit_codes"]) <= {0, 1, 3}
    assert r["rss"]["enroll_check_peak_mb"] > 0
    assert r["rss"]["listen_from_file_60s"]["decisions"] > 0
    assert "skipped" in r["device_install"]
    assert "SMOKE RUN" in proc.stdout
