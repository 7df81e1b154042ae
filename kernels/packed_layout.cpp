// Load-time re-layouts of the packed conv weights (kernels/packed_layout.h,
// docs/packed-layout.md): the canonical codes to the CPU micro-kernels' CpuCodeLayout
// (and its code table cpu_code_lut) and to the tensor-core kernel's MmaCodeLayout, and
// back. Host code for both twins: the CPU twin (kernels/packed_conv_cpu.cpp) reads the
// CPU layout, the CUDA twin (kernels/packed_conv.cu) the fragment-order words.
// Tests: the round trips of tests/test_packed_conv.cpp.
#include "kernels/packed_layout.h"

#include <cstring>

#include "engine/error.h"
#include "kernels/packed_conv_internal.h"
#include "kernels/packed_format.h"

namespace ttq::kernels {

using detail::canonical_code;

namespace {
inline void set_canonical_code(uint8_t* canonical, int64_t i, uint8_t code) {
  canonical[packed::byte_of(i)] =
      static_cast<uint8_t>(canonical[packed::byte_of(i)] | (code << packed::shift_of(i)));
}
}  // namespace

CpuCodeLayout relayout_cpu(const uint8_t* canonical, int64_t co, int64_t k) {
  TTQ_CHECK(co >= 0 && k >= 0) << "relayout_cpu: bad shape [" << co << ", " << k << "]";
  CpuCodeLayout l;
  l.co = co;
  l.k = k;
  l.blocks = (co + 3) / 4;
  l.mask_words = (k + 63) / 64;
  l.mask.assign(static_cast<size_t>(l.blocks * l.mask_words), 0);
  l.start.assign(static_cast<size_t>(l.blocks + 1), 0);
  l.codes.reserve(static_cast<size_t>(l.blocks * k));
  for (int64_t b = 0; b < l.blocks; ++b) {
    l.start[b] = static_cast<int64_t>(l.codes.size());
    for (int64_t kk = 0; kk < k; ++kk) {
      uint8_t byte = 0;
      for (int r = 0; r < 4; ++r) {
        const int64_t row = 4 * b + r;
        if (row < co)
          byte = static_cast<uint8_t>(byte | (canonical_code(canonical, row * k + kk) << (2 * r)));
      }
      if (byte == 0) continue;
      l.mask[b * l.mask_words + kk / 64] |= uint64_t(1) << (kk % 64);
      l.codes.push_back(byte);
    }
  }
  l.start[l.blocks] = static_cast<int64_t>(l.codes.size());
  l.codes.push_back(0);  // so that every block's one-past-the-end byte is readable
  return l;
}

void relayout_cpu_to_canonical(const CpuCodeLayout& l, uint8_t* canonical) {
  std::memset(canonical, 0, static_cast<size_t>(packed::packed_bytes(l.co * l.k)));
  for (int64_t b = 0; b < l.blocks; ++b) {
    int64_t idx = l.start[b];
    for (int64_t kk = 0; kk < l.k; ++kk) {
      if (!((l.mask[b * l.mask_words + kk / 64] >> (kk % 64)) & 1)) continue;
      const uint8_t byte = l.codes[idx++];
      for (int r = 0; r < 4; ++r) {
        const int64_t row = 4 * b + r;
        if (row < l.co) set_canonical_code(canonical, row * l.k + kk, (byte >> (2 * r)) & 3u);
      }
    }
    TTQ_CHECK(idx == l.start[b + 1]) << "relayout_cpu_to_canonical: mask and codes disagree in block " << b;
  }
}

std::vector<uint8_t> canonical_rows(const uint8_t* canonical, int64_t row0, int64_t rows, int64_t k) {
  TTQ_CHECK(row0 >= 0 && rows >= 0 && k >= 0) << "canonical_rows: bad rows " << row0 << " + " << rows;
  std::vector<uint8_t> out(static_cast<size_t>(packed::packed_bytes(rows * k)), 0);
  const int64_t first = row0 * k;
  for (int64_t i = 0; i < rows * k; ++i)
    set_canonical_code(out.data(), i, canonical_code(canonical, first + i));
  return out;
}

std::vector<CpuCodeLayout> relayout_cpu_groups(const uint8_t* canonical, int64_t co, int64_t k,
                                               int64_t groups) {
  TTQ_CHECK(groups >= 1 && co % groups == 0)
      << "relayout_cpu_groups: " << groups << " groups for " << co << " rows";
  std::vector<CpuCodeLayout> out;
  out.reserve(static_cast<size_t>(groups));
  const int64_t og = co / groups;
  if (groups == 1) {
    out.push_back(relayout_cpu(canonical, co, k));
    return out;
  }
  for (int64_t g = 0; g < groups; ++g) {
    const std::vector<uint8_t> rows = canonical_rows(canonical, g * og, og, k);
    out.push_back(relayout_cpu(rows.data(), og, k));
  }
  return out;
}

MmaCodeLayout relayout_mma(const uint8_t* canonical, int64_t co, int64_t k, int64_t groups) {
  TTQ_CHECK(co >= 0 && k >= 0 && groups >= 1 && co % groups == 0)
      << "relayout_mma: bad shape [" << co << ", " << k << "] for " << groups << " groups";
  MmaCodeLayout l;
  l.co = co;
  l.k = k;
  l.groups = groups;
  const int64_t og = co / groups;
  l.mtiles = (og + 15) / 16;
  l.ksteps = (k + 15) / 16;
  l.words.assign(static_cast<size_t>(groups * l.group_words()), 0);
  for (int64_t grp = 0; grp < groups; ++grp) {
    // Rows relative to the group; rows past the group's last are padding.
    auto code = [&](int64_t row, int64_t col) -> unsigned {
      return row < og && col < k ? canonical_code(canonical, (grp * og + row) * k + col) : 0u;
    };
    uint16_t* words = l.words.data() + grp * l.group_words();
    for (int64_t mt = 0; mt < l.mtiles; ++mt) {
      for (int64_t ks = 0; ks < l.ksteps; ++ks) {
        for (int lane = 0; lane < 32; ++lane) {
          const int64_t g = lane / 4, t = lane % 4;
          const int64_t r0 = mt * 16 + g, r1 = r0 + 8, c0 = ks * 16 + 2 * t, c1 = c0 + 8;
          const unsigned w = code(r0, c0) | code(r0, c0 + 1) << 2 | code(r1, c0) << 4 |
                             code(r1, c0 + 1) << 6 | code(r0, c1) << 8 | code(r0, c1 + 1) << 10 |
                             code(r1, c1) << 12 | code(r1, c1 + 1) << 14;
          words[(mt * l.ksteps + ks) * 32 + lane] = static_cast<uint16_t>(w);
        }
      }
    }
  }
  return l;
}

void relayout_mma_to_canonical(const MmaCodeLayout& l, uint8_t* canonical) {
  std::memset(canonical, 0, static_cast<size_t>(packed::packed_bytes(l.co * l.k)));
  const int64_t og = l.co / l.groups;
  for (int64_t grp = 0; grp < l.groups; ++grp) {
    const uint16_t* words = l.words.data() + grp * l.group_words();
    for (int64_t mt = 0; mt < l.mtiles; ++mt) {
      for (int64_t ks = 0; ks < l.ksteps; ++ks) {
        for (int lane = 0; lane < 32; ++lane) {
          const unsigned w = words[(mt * l.ksteps + ks) * 32 + lane];
          const int64_t g = lane / 4, t = lane % 4;
          const int64_t rows[2] = {mt * 16 + g, mt * 16 + g + 8};
          const int64_t cols[2] = {ks * 16 + 2 * t, ks * 16 + 2 * t + 8};
          for (int half = 0; half < 2; ++half) {  // k 2t.. then 2t+8..
            for (int rr = 0; rr < 2; ++rr) {      // row g then g+8
              for (int e = 0; e < 2; ++e) {       // the two adjacent k
                const unsigned c = (w >> (8 * half + 4 * rr + 2 * e)) & 3u;
                const int64_t row = rows[rr], col = cols[half] + e;
                if (row < og && col < l.k) {
                  set_canonical_code(canonical, (grp * og + row) * l.k + col, static_cast<uint8_t>(c));
                } else {
                  TTQ_CHECK(c == 0) << "relayout_mma_to_canonical: non-zero padding code";
                }
              }
            }
          }
        }
      }
    }
  }
}

std::vector<float> cpu_code_lut(float wp, float wn) {
  std::vector<float> lut(256 * 4);
  for (int b = 0; b < 256; ++b)
    for (int r = 0; r < 4; ++r)
      lut[b * 4 + r] = packed::value_of(static_cast<uint8_t>((b >> (2 * r)) & 3), wp, wn);
  return lut;
}

}  // namespace ttq::kernels
