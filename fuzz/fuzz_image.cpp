// libFuzzer target for the image decoders' front end (data/image.h decode_image):
// the JPEG / BMP truncation checks, the header size check against the decode
// limits, stb's decoders, channel conversion, and resize_cover on what decodes.
// Any input must decode or be refused (ok = false with a reason); a crash, a
// sanitizer report, an exception or an image beyond the limits is a bug. Build:
// -DTTQ_FUZZ=ON with clang++ (see fuzz/CMakeLists.txt); run:
// fuzz_image -max_total_time=60 -dict=fuzz/image.dict CORPUS fuzz/corpus/image.
#include <cstdint>
#include <cstdlib>

#include "data/image.h"

// A lower pixel limit than the library's: a progressive JPEG of a few hundred
// bytes may rightly declare 64 M pixels, whose decode under the sanitizers would
// take longer than the fuzzer's timeout. The limit logic is the same.
constexpr int64_t kMaxPixels = int64_t(1) << 20;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  for (int channels : {1, 3}) {
    ttq::data::Image img;
    const ttq::data::DecodeResult r = ttq::data::decode_image(data, size, channels, &img, kMaxPixels);
    if (!r.ok) {
      if (r.error.empty()) std::abort();  // a refusal always says why
      continue;
    }
    if (img.width < 1 || img.height < 1 || img.width > ttq::data::kMaxImageSide ||
        img.height > ttq::data::kMaxImageSide || int64_t(img.width) * img.height > kMaxPixels ||
        img.channels != channels || img.pixels.size() != size_t(img.width) * img.height * channels)
      std::abort();
    // The size policy of image folders; small sizes keep the fuzzer fast.
    const ttq::data::Image cover = ttq::data::resize_cover(img, 8);
    if (cover.width != 8 || cover.height != 8 || cover.channels != channels) std::abort();
  }
  return 0;
}
