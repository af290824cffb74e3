"""The environment of every worker process plateaulab starts: one BLAS/OpenMP/numexpr/numba thread, so
N workers use N cores (shared by the Dask engine and its worker tasks, without importing either)."""

THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "VECLIB_MAXIMUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
