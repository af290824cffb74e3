// Python bindings of plateaulab's CUDA kernels. Arrays arrive as raw device pointers (CuPy's
// `.data.ptr`) with their sizes; the Python side (plateaulab/backends/cuda.py) fixes layouts and
// dtypes, and this file only checks arguments and launches once.
#include <pybind11/pybind11.h>

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda/score_cuda.h"

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
  m.def("device_count", &device_count, "Number of CUDA devices the runtime sees (0 without a driver).");
}
