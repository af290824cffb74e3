"""The benchmark baselines, for the bench scripts (bench_probe.py, bench_cuda.py, gpu_check.py): they
live in the package, ``plateaulab.benchmark.baselines``, where ``plateaulab bench`` uses them too.

    bigvision_loop_block   big_vision's ``fewshot_lsr`` loop transcribed to numpy, one probe at a time
    naive_port_block       the straightforward port to an array module (CuPy on a GPU)
    bigvision_jax_block    big_vision's ``fewshot_lsr`` in JAX as published
    available_baselines    which of them can run here
"""

from plateaulab.benchmark.baselines import (  # noqa: F401
    BIAS_CONSTANT, STD_EPS, available_baselines, bigvision_jax_block, bigvision_loop_block, naive_port_block,
)

__all__ = ["bigvision_loop_block", "naive_port_block", "bigvision_jax_block", "available_baselines"]
