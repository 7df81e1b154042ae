// Counter-based random numbers shared by the CPU and CUDA backends, so that a
// stream of draws depends only on (seed, counter): dropout masks, initialisers
// and augmentation are reproducible across devices and thread counts.
// The mixer is SplitMix64 applied to seed ^ golden-ratio-scrambled counter.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define TTQ_HD __host__ __device__ __forceinline__
#else
#define TTQ_HD inline
#endif

namespace ttq::rng {

TTQ_HD uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The counter-th 64-bit draw of stream `seed`.
TTQ_HD uint64_t draw64(uint64_t seed, uint64_t counter) {
  return mix64(mix64(seed) ^ (counter * 0xD1B54A32D192ED03ull));
}

// Uniform in [0, 1) with 24 bits (float) or 53 bits (double).
TTQ_HD float uniform_f32(uint64_t seed, uint64_t counter) {
  return static_cast<float>(draw64(seed, counter) >> 40) * (1.0f / 16777216.0f);
}
TTQ_HD double uniform_f64(uint64_t seed, uint64_t counter) {
  return static_cast<double>(draw64(seed, counter) >> 11) * (1.0 / 9007199254740992.0);
}

// Standard normal by Box-Muller from two draws (counters 2k and 2k+1).
TTQ_HD double normal_f64(uint64_t seed, uint64_t counter) {
  double u1 = uniform_f64(seed, 2 * counter);
  double u2 = uniform_f64(seed, 2 * counter + 1);
  if (u1 < 1e-300) u1 = 1e-300;
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

}  // namespace ttq::rng

namespace ttq {

// A random stream: a seed and the position of the next draw. Ops that consume
// randomness take `n` counters and advance the offset by n, so the state is two
// integers and serialises exactly (checkpoints store both).
class Generator {
 public:
  explicit Generator(uint64_t seed = 0x5eed) : m_seed(seed) {}
  uint64_t seed() const { return m_seed; }
  uint64_t offset() const { return m_offset; }
  void set_state(uint64_t seed, uint64_t offset) {
    m_seed = seed;
    m_offset = offset;
  }
  // Reserves n consecutive counters and returns the first.
  uint64_t take(uint64_t n) {
    uint64_t o = m_offset;
    m_offset += n;
    return o;
  }
  uint64_t next_u64() { return rng::draw64(m_seed, take(1)); }
  double uniform() { return rng::uniform_f64(m_seed, take(1)); }
  double normal() { return rng::normal_f64(m_seed, take(1)); }
  // Uniform integer in [0, n).
  uint64_t below(uint64_t n) { return n == 0 ? 0 : next_u64() % n; }

 private:
  uint64_t m_seed;
  uint64_t m_offset = 0;
};

}  // namespace ttq
