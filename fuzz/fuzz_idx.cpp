// libFuzzer target for the IDX reader (data/idx.h parse_idx): the header check,
// the size limits and the gzip inflation of exactly the promised bytes. Any input
// must parse or throw ttq::InputError; a crash, a sanitizer report, another
// exception, an allocation past -rss_limit_mb or an array that disagrees with its
// dims is a bug. Build: -DTTQ_FUZZ=ON with clang++ (see fuzz/CMakeLists.txt); run:
// fuzz_idx -max_total_time=60 -dict=fuzz/idx.dict CORPUS fuzz/corpus/idx.
#include <cstdint>
#include <cstdlib>

#include "data/idx.h"
#include "engine/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ttq::data::IdxArray a;
  try {
    a = ttq::data::parse_idx(data, size, "fuzz.idx");
  } catch (const ttq::InputError&) {
    return 0;
  }
  uint64_t total = 1;
  for (int64_t d : a.dims) {
    if (d <= 0) std::abort();
    total *= static_cast<uint64_t>(d);
  }
  if (a.dims.empty() || total != a.data.size() || total > ttq::data::kMaxIdxBytes) std::abort();
  return 0;
}
