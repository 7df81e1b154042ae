// CUDA twins of kernels/pack.cpp: one thread per packed byte (four codes), so
// every byte is written by exactly one thread and no read-modify-write races.
// Tests: tests/test_pack.cpp (against the CPU twins).
#include <cuda_runtime.h>

#include "engine/cuda/check.h"
#include "kernels/cuda_launch.cuh"
#include "kernels/pack.h"
#include "kernels/packed_format.h"

namespace ttq::kernels {

namespace {
using namespace cuda_detail;

constexpr unsigned kMaxBlocks = 4096;

__global__ void pack_codes_kernel(const uint8_t* __restrict__ codes, int64_t n, uint8_t* __restrict__ out) {
  const int64_t bytes = packed::packed_bytes(n);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < bytes; j += stride) {
    uint8_t c[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) c[k] = 4 * j + k < n ? codes[4 * j + k] : uint8_t(0);
    out[j] = packed::pack4(c[0], c[1], c[2], c[3]);
  }
}

__global__ void unpack_codes_kernel(const uint8_t* __restrict__ in, int64_t n, uint8_t* __restrict__ codes) {
  const int64_t bytes = packed::packed_bytes(n);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < bytes; j += stride) {
    const uint8_t b = in[j];
#pragma unroll
    for (int k = 0; k < 4; ++k)
      if (4 * j + k < n) codes[4 * j + k] = packed::code_at(b, k);
  }
}

__global__ void decode_packed_kernel(const uint8_t* __restrict__ in, int64_t n,
                                     const float* __restrict__ wp_ptr, const float* __restrict__ wn_ptr,
                                     float* __restrict__ values) {
  const float wp = *wp_ptr, wn = *wn_ptr;
  const int64_t bytes = packed::packed_bytes(n);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < bytes; j += stride) {
    const uint8_t b = in[j];
#pragma unroll
    for (int k = 0; k < 4; ++k)
      if (4 * j + k < n) values[4 * j + k] = packed::value_of(packed::code_at(b, k), wp, wn);
  }
}

__global__ void zero_counts_kernel(int64_t* counts) {
  if (threadIdx.x < 4) counts[threadIdx.x] = 0;
}

__global__ void count_codes_kernel(const uint8_t* __restrict__ in, int64_t n, int64_t* __restrict__ counts) {
  __shared__ unsigned long long scratch[kWarps];
  unsigned long long c[4] = {0, 0, 0, 0};
  const int64_t bytes = packed::packed_bytes(n);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < bytes; j += stride) {
    const uint8_t b = in[j];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const uint8_t code = packed::code_at(b, k);
      const bool in_range = 4 * j + k < n;
#pragma unroll
      for (int v = 0; v < 4; ++v) c[v] += in_range && code == v;
    }
  }
#pragma unroll
  for (int v = 0; v < 4; ++v) {
    const unsigned long long total = block_reduce(c[v], SumOp{}, 0ull, scratch);
    if (threadIdx.x == 0) atomicAdd(reinterpret_cast<unsigned long long*>(counts + v), total);
  }
}

unsigned blocks_for(int64_t n) { return grid_for(packed::packed_bytes(n), 1, kMaxBlocks); }

}  // namespace

void pack_codes_cuda(const uint8_t* codes, int64_t n, uint8_t* packed, cudaStream_t stream) {
  if (n == 0) return;
  pack_codes_kernel<<<blocks_for(n), kBlock, 0, stream>>>(codes, n, packed);
  TTQ_CUDA_CHECK_LAUNCH();
}

void unpack_codes_cuda(const uint8_t* packed, int64_t n, uint8_t* codes, cudaStream_t stream) {
  if (n == 0) return;
  unpack_codes_kernel<<<blocks_for(n), kBlock, 0, stream>>>(packed, n, codes);
  TTQ_CUDA_CHECK_LAUNCH();
}

void count_codes_cuda(const uint8_t* packed, int64_t n, int64_t* counts, cudaStream_t stream) {
  zero_counts_kernel<<<1, 32, 0, stream>>>(counts);
  TTQ_CUDA_CHECK_LAUNCH();
  if (n == 0) return;
  count_codes_kernel<<<blocks_for(n), kBlock, 0, stream>>>(packed, n, counts);
  TTQ_CUDA_CHECK_LAUNCH();
}

void decode_packed_cuda(const uint8_t* packed, int64_t n, const float* wp, const float* wn, float* values,
                        cudaStream_t stream) {
  if (n == 0) return;
  decode_packed_kernel<<<blocks_for(n), kBlock, 0, stream>>>(packed, n, wp, wn, values);
  TTQ_CUDA_CHECK_LAUNCH();
}

}  // namespace ttq::kernels
