// Python bindings of plateaulab's CUDA kernels. Arrays arrive as raw device pointers (CuPy's
// `.data.ptr`) with their sizes; the Python side (plateaulab/backends/cuda.py) fixes layouts and
// dtypes, and this file only checks arguments and launches once.
#include <pybind11/pybind11.h>

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda/score_cuda.h"
#include "cuda/small_ridge_cuda.h"

namespace py = pybind11;

namespace {

void check_cuda(int err, const char* what) {
  if (err != 0) {
    throw std::runtime_error(std::string(what) + " failed: " +
                             cudaGetErrorString(static_cast<cudaError_t>(err)));
  }
}

void score_argmax(std::uintptr_t logits, int64_t rows, int64_t ld, std::uintptr_t bias, std::uintptr_t labels,
                  int64_t groups, int64_t num_classes, double rtol, std::uintptr_t correct, std::uintptr_t ties,
                  std::uintptr_t stream) {
  if (rows < 0 || groups < 0) throw std::invalid_argument("rows and groups must be non-negative");
  if (num_classes < 1) throw std::invalid_argument("num_classes must be >= 1");
  if (ld < groups * num_classes) throw std::invalid_argument("ld must be >= groups * num_classes");
  if (rows > 0 && (!logits || !bias || !labels || !correct || !ties)) {
    throw std::invalid_argument("null device pointer");
  }
  int err;
  {
    py::gil_scoped_release release;
    err = plateaulab::score_argmax_cuda(
        reinterpret_cast<const float*>(logits), rows, ld, reinterpret_cast<const float*>(bias),
        reinterpret_cast<const int64_t*>(labels), groups, num_classes, rtol,
        reinterpret_cast<unsigned long long*>(correct), reinterpret_cast<unsigned long long*>(ties),
        reinterpret_cast<void*>(stream));
  }
  check_cuda(err, "score_argmax kernel launch");
}

void small_ridge(std::uintptr_t xs, int64_t batch, int n, int dp, std::uintptr_t labels, int num_classes,
                 std::uintptr_t l2, int n_l2, std::uintptr_t a_out, std::uintptr_t w_out, std::uintptr_t info,
                 std::uintptr_t stream) {
  if (batch < 0 || n < 0 || n_l2 < 0) throw std::invalid_argument("batch, n and n_l2 must be non-negative");
  if (num_classes < 1) throw std::invalid_argument("num_classes must be >= 1");
  if (dp <= n) {
    throw std::invalid_argument("small_ridge solves the dual system only: n (" + std::to_string(n) +
                                ") must be smaller than D + 1 (" + std::to_string(dp) + ")");
  }
  const int max_n = plateaulab::small_ridge_max_n();
  if (n > max_n) {
    throw std::invalid_argument("small_ridge: n = " + std::to_string(n) + " does not fit shared memory (at most " +
                                std::to_string(max_n) + " on this device); use the batched library path");
  }
  if (batch * n_l2 > 0 && (!xs || !labels || !l2 || !a_out || !info)) {  // w_out may be null
    throw std::invalid_argument("null device pointer");
  }
  int err;
  {
    py::gil_scoped_release release;
    err = plateaulab::small_ridge_cuda(reinterpret_cast<const double*>(xs), batch, n, dp,
                                       reinterpret_cast<const int64_t*>(labels), num_classes,
                                       reinterpret_cast<const double*>(l2), n_l2, reinterpret_cast<double*>(a_out),
                                       reinterpret_cast<double*>(w_out), reinterpret_cast<int*>(info),
                                       reinterpret_cast<void*>(stream));
  }
  check_cuda(err, "small_ridge kernel launch");
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
  return n;
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "plateaulab's CUDA kernels (device pointers in, counts out)";
  m.def("score_argmax", &score_argmax, py::arg("logits"), py::arg("rows"), py::arg("ld"), py::arg("bias"),
        py::arg("labels"), py::arg("groups"), py::arg("num_classes"), py::arg("rtol"), py::arg("correct"),
        py::arg("ties"), py::arg("stream") = 0);
  m.def("small_ridge", &small_ridge, py::arg("xs"), py::arg("batch"), py::arg("n"), py::arg("dp"),
        py::arg("labels"), py::arg("num_classes"), py::arg("l2"), py::arg("n_l2"), py::arg("a_out"),
        py::arg("w_out"), py::arg("info"), py::arg("stream") = 0,
        "Batched small dual ridge solves in shared memory (csrc/cuda/small_ridge_cuda.h).");
  m.def("small_ridge_max_n", &plateaulab::small_ridge_max_n,
        "Largest training-set size n the small_ridge kernel can take on the current device.");
  m.def("device_count", &device_count, "Number of CUDA devices the runtime sees (0 without a driver).");
}
