// libFuzzer target for the safetensors reader (engine/io/safetensors.h).
// Any input must either parse or throw ttq::InputError; anything else (a crash,
// a sanitizer report, another exception) is a bug. A file that parses must
// survive a write/read round trip unchanged. Build: -DTTQ_FUZZ=ON with clang++
// (see fuzz/CMakeLists.txt); run: fuzz_safetensors -max_total_time=60 CORPUS.
#include <cstring>

#include "engine/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  ttq::io::SafeTensors st;
  try {
    st = ttq::io::parse_safetensors(data, size, "fuzz.safetensors");
  } catch (const ttq::InputError&) {
    return 0;
  }
  std::vector<uint8_t> again = ttq::io::serialize_safetensors(st.tensors(), st.metadata());
  ttq::io::SafeTensors back = ttq::io::parse_safetensors(again.data(), again.size(), "round-trip");
  if (back.tensors().size() != st.tensors().size() || back.metadata() != st.metadata()) __builtin_trap();
  for (size_t i = 0; i < st.tensors().size(); ++i) {
    const ttq::Tensor& a = st.tensors()[i].second;
    const ttq::Tensor& b = back.tensors()[i].second;
    if (back.tensors()[i].first != st.tensors()[i].first || a.shape() != b.shape() ||
        a.dtype() != b.dtype() || std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) != 0)
      __builtin_trap();
  }
  return 0;
}
