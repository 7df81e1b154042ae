// Threshold ternarization of a latent weight tensor (docs/ttq.md, "Forward"):
//   delta = float(t) * max|W| (in float), P = {W > delta}, N = {W < -delta},
//   Wq = +Wp on P, -Wn on N, 0 elsewhere; optional codes (one U8 per element)
//   or canonical 2-bit packed codes (kernels/packed_format.h), and |P|, |N|, |Z|.
// Layers: ternarize_ref (naive, for clarity) -> ternarize_cpu (OpenMP, vector
// loops) and ternarize_cuda (kernels/ternarize.cu) -> the tensor entry
// ternarize(). Tests: tests/test_ternarize.cpp; bench: bench/bench_ttq_kernels.cpp.
#pragma once

#include <cstdint>

#include "engine/tensor.h"

#ifdef TTQ_HAS_CUDA
#include <cuda_runtime.h>
#endif

namespace ttq::kernels {

struct TernaryCounts {
  int64_t pos = 0;   // |P|
  int64_t neg = 0;   // |N|
  int64_t zero = 0;  // |Z|
  int64_t total() const { return pos + neg + zero; }
  double zero_fraction() const { return total() == 0 ? 0.0 : static_cast<double>(zero) / total(); }
};

// ---- raw CPU functions (w, wq, codes, packed: n / n / n / ceil(n/4) elements) ----

// requires n >= 0, t >= 0, W finite. ensures returns float(t) * max|W| (0 for n == 0).
float ternarize_delta_ref(const float* w, int64_t n, float t);

// The reference: one element at a time, no tricks. Any of wq, codes, packed,
// counts may be null. Returns delta.
float ternarize_ref(const float* w, int64_t n, float t, float wp, float wn, float* wq, uint8_t* codes,
                    uint8_t* packed, TernaryCounts* counts);

// Fast CPU twin (OpenMP; vectorisable inner loops). Same contract and the same
// bits as ternarize_ref.
float max_abs_cpu(const float* w, int64_t n);
float ternarize_cpu(const float* w, int64_t n, float t, float wp, float wn, float* wq, uint8_t* codes,
                    uint8_t* packed, TernaryCounts* counts);

#ifdef TTQ_HAS_CUDA
// Device workspace (bytes) that ternarize_cuda needs for n elements.
size_t ternarize_cuda_workspace(int64_t n);
// CUDA twin, all pointers on the device, asynchronous on `stream`, no host
// round trip: a deterministic max-abs reduction into `workspace`, then one fused
// pass that computes delta on the device, writes it to `delta` (1 float) and
// writes wq / codes / packed / counts (any may be null; counts = 3 int64: P, N, Z).
// wp and wn are device scalars (1 float each).
void ternarize_cuda(const float* w, int64_t n, float t, const float* wp, const float* wn, float* wq,
                    uint8_t* codes, uint8_t* packed, float* delta, int64_t* counts, void* workspace,
                    cudaStream_t stream);
#endif

// ---- tensor entry ----

struct TernarizeResult {
  Tensor wq;      // latent's shape, F32 (undefined unless requested)
  Tensor codes;   // latent's shape, U8 (undefined unless requested)
  Tensor packed;  // [ceil(numel/4)], U8 (undefined unless requested)
  Tensor delta;   // [1], F32, on the latent's device
  Tensor counts;  // [3] I64 (P, N, Z), on the latent's device (undefined unless requested)
};

struct TernarizeOutputs {
  bool wq = true;
  bool codes = false;
  bool packed = false;
  bool counts = false;
};

// requires latent F32 (any shape, any strides, numel >= 0); wp, wn F32 with one
// element each on the latent's device; 0 <= t <= 1.
// ensures the requested outputs as above, on the latent's device; no autograd.
TernarizeResult ternarize(const Tensor& latent, double t, const Tensor& wp, const Tensor& wn,
                          TernarizeOutputs outputs = {});

// Convenience: counts as host integers (synchronises on CUDA).
TernaryCounts counts_of(const TernarizeResult& r);

// Keeps the learned scales positive (docs/ttq.md, "Initial scales and the
// clamp"): x = max(x, lo) in place, elementwise (NaN becomes lo). requires x F32
// contiguous, any device.
void clamp_min_(Tensor& x, float lo);
#ifdef TTQ_HAS_CUDA
void clamp_min_cuda(float* x, int64_t n, float lo, cudaStream_t stream);
#endif

}  // namespace ttq::kernels
