"""The kernel-throughput benchmark behind ``plateaulab bench``: what users run on their own machine.

One module per concept, each importing only those above it in this list:

    workloads   presets (quick, reference, paper, layers, io) and a workload's shape with overrides
    synthetic   the synthetic feature stores the workloads probe
    flops       the FLOP model and the feature bytes a block needs
    ceilings    the machine's own ceilings: GEMM at the workload's shape, memory copy, pinned H2D
    baselines   the same protocol written the ways others would: big_vision's numpy loop, the CuPy port
    agreement   engine against baseline, probe by probe, counted ties apart
    machine     device, versions, BLAS and threads, TF32, load average
    runner      one benchmark run: store, engines end to end, baselines, ceilings, interleaved repeats
    output      the table on stdout and the JSON object

``import plateaulab.benchmark`` imports nothing heavy: the runner loads on first use.
"""

from __future__ import annotations

from .workloads import PRESETS, Workload, make_workload


def run_benchmark(workload: Workload, **kwargs) -> dict:
    """``runner.run_benchmark``: see there."""
    from .runner import run_benchmark as _run

    return _run(workload, **kwargs)


__all__ = ["PRESETS", "Workload", "make_workload", "run_benchmark"]
