#pragma once
// PL_HD marks a function compiled for both the host and, under nvcc, the device: the kernels'
// bodies in csrc/common/ run on the GPU and, for tests without one, on the host.
#if defined(__CUDACC__)
#define PL_HD __host__ __device__
#else
#define PL_HD
#endif
