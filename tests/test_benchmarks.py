"""The benchmark code runs and its measurements mean what they say (tiny sizes, one round; no
speed is asserted): the chart is a PNG, CUDA samples come from do_bench, the FSDP2 benchmark counts the collectives it says, peak memory counts what a fused fwd+bwd must hold, the
kernel and training-step benchmarks write their JSON, the summary reads it."""

import json
import struct
import sys
from pathlib import Path

import pytest
import torch

import lsq_fast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_convert  # noqa: E402
import bench_cpu_groups  # noqa: E402
import bench_fsdp  # noqa: E402
import bench_lsq  # noqa: E402
import bench_qat  # noqa: E402
import peers  # noqa: E402
import run as bench_run  # noqa: E402
from peak_memory import peak_bytes  # noqa: E402
import charts  # noqa: E402
import timing  # noqa: E402


@pytest.mark.skipif(not charts.available(), reason="matplotlib is not installed (the bench extra)")
def test_chart_is_a_png(tmp_path):
    path = tmp_path / "chart.png"
    charts.size_chart({"a": [(4096, 1.0), (65536, 3.0)], "b": [(4096, 2.0), (65536, 2.5)]},
                      [(4096, 5.0), (65536, 4.0)], path, title="t", subtitle="device, commit")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (960, 600)  # 8x5 inches at 120 dpi
    assert [charts.size_label(n) for n in (512, 4096, 16 << 20)] == ["512", "4K", "16M"]


def test_cuda_samples_come_from_do_bench(monkeypatch):
    """On CUDA each interleaved sample is triton.testing.do_bench's median (in ms), over at
    least 1 ms of calls; no CUDA is touched here (do_bench is stubbed)."""
    triton_testing = pytest.importorskip("triton.testing")
    asked = []

    def fake_do_bench(fn, warmup, rep, return_mode):
        fn()
        asked.append((warmup, rep, return_mode))
        return 2.0

    monkeypatch.setattr(triton_testing, "do_bench", fake_do_bench)
    monkeypatch.setattr(timing, "_sync", lambda device: None)
    calls = []
    result = timing.interleaved_medians({"a": lambda: calls.append(1)}, torch.device("cuda"), rounds=3, warmup=1,
                                        min_sample_s=5e-3)
    assert result["a"].median_s == pytest.approx(2e-3) and result["a"].inner == 1
    assert asked == [(0, 5.0, "median")] * 3 and len(calls) == 4


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
def test_fsdp_benchmark_counts_the_collectives():
    layers = 2
    results = bench_fsdp.main(["--layers", str(layers), "--width", "32", "--batch", "8", "--steps", "2"])
    counts = {variant: total for variant, (total, _, _) in results.items()}
    # a layer: all-gathers in the forward and the backward, a reduce-scatter; the root holds nothing
    assert counts["float"] == counts["with-layers"] == 3 * layers
    assert counts["units"] == counts["float"] + 2 * layers  # its quantizers: gathered once, reduced once
    assert counts["units-resharded"] == counts["float"] + 3 * layers


def test_cpu_groups_benchmark_runs(capsys):
    bench_cpu_groups.main(["--repeat", "1", "--size", "256"])
    out = capsys.readouterr().out
    assert out.count("group 32") == 2 and out.count("copy") == 2  # float32 and bfloat16


def test_peak_memory_of_fused_and_reference_fwd_bwd():
    x = torch.randn(1 << 16, requires_grad=True)
    step = torch.tensor([0.1], requires_grad=True)
    grad_y = torch.randn_like(x)

    def fwd_bwd(fn):
        return lambda: torch.autograd.grad(fn(x, step, 4), (x, step), grad_y)

    fused = peak_bytes(fwd_bwd(lsq_fast.lsq_quantize), torch.device("cpu"))
    ref = peak_bytes(fwd_bwd(lsq_fast.reference.lsq_quantize), torch.device("cpu"))
    assert 2 * x.nbytes <= fused < 2 * x.nbytes + 4096  # y and grad_x, and the step's gradient
    assert ref >= 4 * x.nbytes  # the chain of ops keeps several full-size intermediates


def test_kernel_benchmark_writes_its_results(tmp_path):
    out = tmp_path / "k.json"
    bench_lsq.main(["--device", "cpu", "--suite", "main", "--cases", "weight", "--rounds", "1", "--modes", "fwd+bwd",
                    "--providers", "lsq_fast", "reference", "--json", str(out), "--markdown", str(tmp_path / "k.md")])
    result = json.loads(out.read_text())
    assert result["environment"]["torch"] == torch.__version__
    rows = {r["provider"]: r for r in result["results"]}
    assert rows["lsq_fast"]["ms"] > 0 and rows["reference"]["speedup"] > 0
    assert rows["lsq_fast"]["peak_mb"] == pytest.approx(2 * 512 * 256 * 9 * 4 / 2**20, rel=0.01)
    assert rows["lsq_fast"]["quantizer"] == "lsq"  # the default
    assert "| lsq | weight |" in (tmp_path / "k.md").read_text()


def test_llm_suite_times_per_group_steps(tmp_path, monkeypatch):
    """The llm suite's code path on a small grouped weight (its Llama shapes are too large for
    a test): lsq and lsq+ run with per-group steps and agree with their references, QIL and
    PyTorch's learnable op (per tensor or channel only) have no rows."""
    import cases

    small = cases._group_weight("small", (64, 256), group=32)
    monkeypatch.setitem(cases.SUITES, "llm", [small])
    out = tmp_path / "g.json"
    bench_lsq.main(["--device", "cpu", "--suite", "llm", "--quantizer", "lsq", "lsq+", "qil", "--rounds", "1",
                    "--modes", "fwd+bwd", "--providers", "lsq_fast", "reference", "torch_learnable",
                    "--json", str(out)])
    results = [r for r in json.loads(out.read_text())["results"] if r["ms"] is not None]  # torch_learnable: n/a
    assert {(r["quantizer"], r["provider"]) for r in results} == {
        (q, p) for q in ("lsq", "lsq+") for p in ("lsq_fast", "reference")}
    assert all(r["mismatch"] == 0 for r in results if r["provider"] == "lsq_fast")


def test_kernel_benchmark_times_lsqs_relatives(tmp_path):
    """lsq-arctan, lsq+ and qil through the benchmark's code path on two tiny tensors (an
    activation and a per-channel weight), every mode: the fused op agrees with its reference,
    torch_learnable is a peer of lsq+ only, the results name the quantizer."""
    out, md = tmp_path / "f.json", tmp_path / "f.md"
    bench_lsq.main(["--device", "cpu", "--suite", "resnet18", "--batch", "1", "--cases", "fc.in", "layer2.down.w",
                    "--quantizer", "lsq-arctan", "lsq+", "qil", "--rounds", "1",
                    "--providers", "lsq_fast", "lsq_fast:cuda", "reference", "torch_learnable",
                    "--json", str(out), "--markdown", str(md)])
    results = json.loads(out.read_text())["results"]
    providers = {}
    for r in results:
        providers.setdefault(r["quantizer"], set()).add(r["provider"])
        assert r["ms"] > 0, r
        if r["provider"] == "lsq_fast":
            assert r["mismatch"] == 0, r
        else:
            assert r["speedup"] > 0, r
    # No CUDA C++ kernels for lsq+ and qil, no CUDA here: lsq_fast:cuda is left out, not n/a.
    assert providers == {"lsq-arctan": {"lsq_fast", "reference"}, "lsq+": {"lsq_fast", "reference", "torch_learnable"},
                         "qil": {"lsq_fast", "reference"}}
    assert {(r["quantizer"], r["case"], r["mode"]) for r in results} == {
        (q, c, m) for q in providers for c in ("fc.in", "layer2.down.w") for m in bench_lsq.MODES
    }
    fused = {(r["quantizer"], r["case"]): r for r in results if r["mode"] == "fwd+bwd" and r["provider"] == "lsq_fast"}
    assert fused[("qil", "layer2.down.w")]["peak_mb"] >= 2 * 128 * 64 * 4 / 2**20  # y and grad_w at least
    text = md.read_text()
    for q in providers:
        assert f"## resnet18, float32, {q}" in text and f"| {q} | layer2.down.w |" in text
    lines = bench_run.family_lines(results)
    assert [line.split(",")[0] for line in lines] == ["- lsq-arctan", "- lsq+", "- qil"]
    assert "torch_learnable" in lines[1] and "reference" in lines[2]


@pytest.mark.skipif(not peers.available("torchao"), reason="torchao is not installed (the peers extra)")
def test_llm_suite_times_torchao_per_group(tmp_path, monkeypatch):
    """torchao's per-group fake quantizer is a peer of per-group LSQ, eager and compiled, with
    the reference's forward (its scale is the case's step), and the summary's llm verdicts
    read its rows."""
    import cases

    small = cases._group_weight("small", (32, 256), group=128)
    monkeypatch.setitem(cases.SUITES, "llm", [small])
    out = tmp_path / "ao.json"
    bench_lsq.main(["--device", "cpu", "--suite", "llm", "--dtype", "bfloat16", "--rounds", "1", "--modes", "fwd+bwd",
                    "--providers", "lsq_fast", "torchao", "torchao+compile", "--json", str(out)])
    results = json.loads(out.read_text())["results"]
    assert {r["provider"] for r in results} == {"lsq_fast", "torchao", "torchao+compile"}
    assert all(r["mismatch"] == 0 and r["ms"] > 0 for r in results)
    lines = bench_run.llm_verdicts(results, "cpu")
    assert len(lines) == 1 and lines[0].startswith("- bfloat16, fwd+bwd vs torchao+compile: target 1.5x")


def test_llama_training_step_benchmark():
    """The weight-only transformer step: tokens/s for float, lsq_fast and the reference."""
    rows = bench_qat.run(torch.device("cpu"), batch=1, size=16, amp_dtype=None, rounds=1,
                         variants=list(bench_qat.VARIANTS), model="llama")
    assert [r.variant for r in rows] == ["float", "lsq_fast", "reference"]
    assert all(r.samples_per_s > 0 and r.unit == "tokens" and r.model == "llama" for r in rows)
    assert bench_run.qat_verdict([r.__dict__ for r in rows], "cpu", targets=False)[0].startswith("- QAT overhead")


def test_training_step_benchmark_and_summary(tmp_path):
    rows = bench_qat.run(torch.device("cpu"), batch=2, size=32, amp_dtype=None, rounds=1,
                         variants=list(bench_qat.VARIANTS))
    assert [r.variant for r in rows] == ["float", "lsq_fast", "reference"]
    assert rows[0].overhead_pct is None and rows[1].overhead_pct is not None
    assert all(r.peak_mb > 0 and r.samples_per_s > 0 and r.unit == "images" for r in rows)
    lines = bench_run.qat_verdict([r.__dict__ for r in rows], "cpu")
    assert lines[0].startswith("- QAT overhead over float: lsq_fast")


def test_convert_benchmark_measures_sizes():
    def tiny():
        model = bench_convert.Llama()
        tokens, _ = bench_convert.token_task()
        options = dict(weight_bits=4, act_bits=None, first_last_bits=None, weight_group_size=32,
                       quantize_embeddings=True)
        return model, options, (tokens,), "tiny"

    row = bench_convert.measure(tiny)
    assert row["bit_exact"] and row["converted"] < 0.3 * row["float"] < 0.3 * row["quantized"]
    assert "| tiny |" in bench_convert.table([row])


def test_verdicts_say_inconclusive_on_a_busy_machine_or_within_the_spread():
    quiet, busy = dict(other_cpu=0.02, iqr_pct=2.0), dict(other_cpu=0.4, iqr_pct=2.0)
    assert bench_run.verdict(1.8, 1.5, [quiet, quiet], "cmd") == ""
    assert bench_run.verdict(1.2, 1.5, [quiet, quiet], "cmd") == " - NOT MET"
    assert bench_run.verdict(0.3, 0.5, [quiet], "cmd", at_most=True) == ""
    contended = bench_run.verdict(1.2, 1.5, [quiet, busy], "cmd")
    assert contended.startswith(" - inconclusive: other processes used up to 40% of the CPU") and "cmd" in contended
    close = bench_run.verdict(1.47, 1.5, [quiet, quiet], "cmd")
    assert close.startswith(" - inconclusive: within the timings' spread (IQR 4%)")

    def qat_row(variant, ms, overhead, other_cpu=0.0):
        return dict(variant=variant, batch=8, dtype="float32", ms=ms, iqr_pct=1.0, samples_per_s=1.0, peak_mb=1.0,
                    overhead_pct=overhead, other_cpu=other_cpu)

    # the run that printed -66.5% and "NOT MET": a quantized step faster than float's is noise
    lines = bench_run.qat_verdict([qat_row("float", 100, None), qat_row("lsq_fast", 33.5, -66.5),
                                   qat_row("reference", 43.3, -56.7)], "cpu")
    assert lines[-1].startswith("- inconclusive: lsq_fast and reference timed faster than float training")
    assert not any("NOT MET" in line for line in lines)
    lines = bench_run.qat_verdict([qat_row("float", 100, None), qat_row("lsq_fast", 110, 10.0),
                                   qat_row("reference", 150, 50.0, other_cpu=0.3)], "cpu")
    assert "inconclusive: other processes" in lines[-1]
