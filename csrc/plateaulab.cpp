// Python bindings of plateaulab's CPU core. Thin: validate, then call the kernel once.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/score_top2.h"
#include "common/small_ridge.h"
#include "cpu/score_cpu.h"

namespace py = pybind11;

namespace {

template <typename T>
void check_contiguous(const py::array_t<T>& a, const char* name, int ndim) {
  if (a.ndim() != ndim) {
    throw std::invalid_argument(std::string(name) + " must be " + std::to_string(ndim) + "-D, got " +
                                std::to_string(a.ndim()) + "-D");
  }
  if (!(a.flags() & py::array::c_style)) {
    throw std::invalid_argument(std::string(name) + " must be C-contiguous");
  }
}

// Checks the arguments of both scorers; returns the number of probes (logits width / num_classes).
int64_t check_score_args(const py::array_t<float>& logits, const py::array_t<float>& bias,
                         const py::array_t<int64_t>& labels, int64_t num_classes, const py::array_t<int64_t>& correct,
                         const py::array_t<int64_t>& ties) {
  check_contiguous(logits, "logits", 2);
  check_contiguous(bias, "bias", 1);
  check_contiguous(labels, "labels", 1);
  check_contiguous(correct, "correct", 1);
  check_contiguous(ties, "ties", 1);
  if (num_classes < 1) throw std::invalid_argument("num_classes must be >= 1");
  const int64_t rows = logits.shape(0), width = logits.shape(1);
  if (width % num_classes != 0) {
    throw std::invalid_argument("logits width " + std::to_string(width) + " is not a multiple of num_classes " +
                                std::to_string(num_classes));
  }
  const int64_t groups = width / num_classes;
  if (bias.shape(0) != width) throw std::invalid_argument("bias must have as many entries as logits has columns");
  if (labels.shape(0) != rows) throw std::invalid_argument("labels must have one entry per logits row");
  if (correct.shape(0) != groups || ties.shape(0) != groups) {
    throw std::invalid_argument("correct and ties must have one entry per probe (logits width / num_classes)");
  }
  const int64_t* lab = labels.data();
  for (int64_t r = 0; r < rows; ++r) {
    if (lab[r] < 0 || lab[r] >= num_classes) throw std::invalid_argument("label out of range [0, num_classes)");
  }
  return groups;
}

void score_argmax(py::array_t<float> logits, py::array_t<float> bias, py::array_t<int64_t> labels,
                  int64_t num_classes, double rtol, py::array_t<int64_t> correct, py::array_t<int64_t> ties) {
  const int64_t groups = check_score_args(logits, bias, labels, num_classes, correct, ties);
  const int64_t rows = logits.shape(0), width = logits.shape(1);
  const float* pl = logits.data();
  const float* pb = bias.data();
  const int64_t* lab = labels.data();
  int64_t* pc = correct.mutable_data();
  int64_t* pt = ties.mutable_data();
  {
    py::gil_scoped_release release;
    plateaulab::score_argmax_cpu(pl, rows, width, pb, lab, groups, num_classes, rtol, pc, pt);
  }
}

// The CUDA scorer's warp (csrc/cuda/score_cuda.cu) run on the host: 32 lanes stride over the
// classes, then the __shfl_down_sync tree reduction (a lane whose source lies past the warp reads
// its own value, as the hardware does), with the same merge rule (csrc/common/score_top2.h).
void score_argmax_emulated(py::array_t<float> logits, py::array_t<float> bias, py::array_t<int64_t> labels,
                           int64_t num_classes, double rtol, py::array_t<int64_t> correct,
                           py::array_t<int64_t> ties) {
  constexpr int kWarp = 32;
  const int64_t groups = check_score_args(logits, bias, labels, num_classes, correct, ties);
  const int64_t rows = logits.shape(0), width = logits.shape(1);
  int64_t* pc = correct.mutable_data();
  int64_t* pt = ties.mutable_data();
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < groups; ++g) {
      const float* z = logits.data() + r * width + g * num_classes;
      const float* b = bias.data() + g * num_classes;
      plateaulab::Top2 lane[kWarp];
      for (int l = 0; l < kWarp; ++l) {
        lane[l] = plateaulab::top2_empty();
        for (int64_t c = l; c < num_classes; c += kWarp) {
          plateaulab::top2_merge(lane[l], z[c] + b[c], static_cast<int>(c), -INFINITY);
        }
      }
      for (int offset = kWarp / 2; offset > 0; offset /= 2) {
        plateaulab::Top2 src[kWarp];
        for (int l = 0; l < kWarp; ++l) src[l] = lane[l + offset < kWarp ? l + offset : l];
        for (int l = 0; l < kWarp; ++l) plateaulab::top2_merge(lane[l], src[l].best, src[l].arg, src[l].second);
      }
      pc[g] += (plateaulab::top2_class(lane[0]) == labels.data()[r]);
      pt[g] += plateaulab::top2_tie(lane[0], num_classes, rtol);
    }
  }
}

struct NoSync {
  void operator()() const {}
};

// The CUDA small_ridge kernel's body (csrc/common/small_ridge.h) run by one host thread: tests check
// the algorithm and its indexing against numpy on machines without a GPU.
py::tuple small_ridge_emulated(py::array_t<double> xs, py::array_t<int64_t> labels, int num_classes,
                               py::array_t<double> l2, bool want_w) {
  check_contiguous(xs, "xs", 3);
  check_contiguous(labels, "labels", 2);
  check_contiguous(l2, "l2", 1);
  const int64_t batch = xs.shape(0);
  const int n = static_cast<int>(xs.shape(1)), dp = static_cast<int>(xs.shape(2));
  const int n_l2 = static_cast<int>(l2.shape(0));
  if (labels.shape(0) != batch || labels.shape(1) != n) throw std::invalid_argument("labels must be batch x n");
  if (num_classes < 1) throw std::invalid_argument("num_classes must be >= 1");
  if (dp <= n) throw std::invalid_argument("small_ridge solves the dual system only: n must be < D + 1");
  py::array_t<double> a({batch, static_cast<int64_t>(n_l2), static_cast<int64_t>(n), static_cast<int64_t>(num_classes)});
  py::array_t<double> w({batch, static_cast<int64_t>(n_l2), static_cast<int64_t>(dp), static_cast<int64_t>(num_classes)});
  py::array_t<int> info({batch, static_cast<int64_t>(n_l2)});
  std::fill(a.mutable_data(), a.mutable_data() + a.size(), 0.0);
  std::fill(w.mutable_data(), w.mutable_data() + w.size(), 0.0);
  std::vector<double> K(static_cast<size_t>(n) * n);
  for (int64_t b = 0; b < batch; ++b) {
    for (int j = 0; j < n_l2; ++j) {
      const int64_t problem = b * n_l2 + j;
      int s_info = 0;
      double s_kmax = 0.0;
      plateaulab::small_ridge_problem(xs.data() + b * n * static_cast<int64_t>(dp), n, dp, labels.data() + b * n,
                                      num_classes, l2.data()[j], K.data(),
                                      a.mutable_data() + problem * n * num_classes,
                                      want_w ? w.mutable_data() + problem * dp * num_classes : nullptr,
                                      &s_info, &s_kmax, 0, 1,
                                      NoSync{});
      info.mutable_data()[problem] = s_info;
    }
  }
  return py::make_tuple(a, w, info);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "plateaulab's compiled CPU core";
  m.def("score_argmax", &score_argmax, py::arg("logits"), py::arg("bias"), py::arg("labels"),
        py::arg("num_classes"), py::arg("rtol"), py::arg("correct"), py::arg("ties"),
        "Add to correct/ties (one entry per probe) the arg-max hits and near-ties of a chunk of stacked logits "
        "(rows x probes*num_classes) plus bias. Logits are read, never written.");
  m.def("score_argmax_emulated", &score_argmax_emulated, py::arg("logits"), py::arg("bias"), py::arg("labels"),
        py::arg("num_classes"), py::arg("rtol"), py::arg("correct"), py::arg("ties"),
        "The CUDA scorer's warp reduction run on the host, for tests: same arguments and results as score_argmax.");
  m.def("small_ridge_max_n_for", &plateaulab::small_ridge_max_n_for, py::arg("shared_bytes"),
        "Largest n whose n x n float64 matrix fits shared_bytes (the small_ridge kernel's bound).");
  m.def("small_ridge_emulated", &small_ridge_emulated, py::arg("xs"), py::arg("labels"), py::arg("num_classes"),
        py::arg("l2"), py::arg("want_w") = true,
        "The CUDA small_ridge kernel's body run by one host thread, for tests: (A, W, info) of every "
        "(task, l2) dual ridge problem (W left zero when want_w is false).");
}
