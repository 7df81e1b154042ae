#include "engine/device.h"

#include <charconv>
#include <ostream>

#include "engine/cuda/runtime.h"
#include "engine/error.h"

namespace ttq {

std::string Device::str() const { return is_cpu() ? std::string("cpu") : "cuda:" + std::to_string(index); }

Device Device::parse(std::string_view s) {
  if (s == "cpu") return cpu();
  if (s == "cuda") return cuda(0);
  if (s.substr(0, 5) == "cuda:") {
    int idx = -1;
    auto tail = s.substr(5);
    auto [p, ec] = std::from_chars(tail.data(), tail.data() + tail.size(), idx);
    if (ec == std::errc() && p == tail.data() + tail.size() && idx >= 0) return cuda(idx);
  }
  TTQ_INPUT_ERROR() << "unknown device '" << s << "' (expected cpu, cuda or cuda:N)";
}

Device pick_device(const std::string& flag, std::ostream& log) {
  if (flag.empty()) {
    if (cuda::available()) return Device::cuda(0);
    log << "no CUDA device available: running on the CPU\n";
    return Device::cpu();
  }
  Device d = Device::parse(flag);
  if (d.is_cuda()) {
    TTQ_INPUT_CHECK(cuda::available()) << "--device " << flag << ": no CUDA device available";
    TTQ_INPUT_CHECK(d.index < cuda::device_count())
        << "--device " << flag << ": only " << cuda::device_count() << " CUDA device(s)";
  }
  return d;
}

}  // namespace ttq
