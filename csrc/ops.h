// crysbench native op schemas: one line per op. The pure-torch definition of each op
// (the specification) is crysbench/ops/reference.py; CPU kernels live in csrc/cpu/<op>_cpu.cpp and
// CUDA kernels in csrc/cuda/<op>_cuda.cu, each registering itself with TORCH_LIBRARY_IMPL.
#pragma once

#define CRYSBENCH_OP_SCHEMAS(X)                                                                     \
  X("neighbor_list(Tensor positions, Tensor cells, Tensor pbc, Tensor ptr, float cutoff, "          \
    "bool return_vectors) -> (Tensor edge_i, Tensor edge_j, Tensor shifts, Tensor distances, "      \
    "Tensor vectors)")                                                                              \
  X("knn_cap(Tensor edge_i, Tensor distances, int num_atoms, int k, float tol) -> "                \
    "(Tensor keep, Tensor counts)")                                                                 \
  X("triplets(Tensor edge_i, Tensor vectors, int num_atoms) -> (Tensor edge_a, Tensor edge_b, "    \
    "Tensor cos)")                                                                                  \
  X("segment_csr(Tensor src, Tensor ptr, str reduce) -> (Tensor out, Tensor arg)")                  \
  X("scatter(Tensor src, Tensor index, int dim_size, str reduce) -> (Tensor out, Tensor arg)")      \
  X("gather_mul_scatter(Tensor x, Tensor w, Tensor src_index, Tensor dst_index, int dim_size) -> " \
    "Tensor")
