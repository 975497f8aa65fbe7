// The one place the crysbench op library is defined (schemas from ops.h) and the pybind11 module
// that carries build information. Kernels register themselves per device in csrc/cpu and csrc/cuda.
#include <pybind11/pybind11.h>
#include <torch/library.h>

#include "ops.h"

#ifndef CRYSBENCH_TORCH_VERSION
#define CRYSBENCH_TORCH_VERSION "unknown"
#endif
#ifndef CRYSBENCH_TORCH_CUDA
#define CRYSBENCH_TORCH_CUDA "none"
#endif

TORCH_LIBRARY(crysbench, m) {
#define CB_DEF(schema) m.def(schema);
  CRYSBENCH_OP_SCHEMAS(CB_DEF)
#undef CB_DEF
}

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "crysbench native kernels (ops are registered under torch.ops.crysbench)";
  m.def("build_info", []() {
    py::dict d;
    d["torch"] = CRYSBENCH_TORCH_VERSION;
    d["torch_cuda"] = CRYSBENCH_TORCH_CUDA;
#ifdef CRYSBENCH_WITH_CUDA
    d["with_cuda"] = true;
#else
    d["with_cuda"] = false;
#endif
    d["compiler"] = __VERSION__;
    return d;
  });
}
