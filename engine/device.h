// Where a tensor lives: the CPU or one CUDA device.
#pragma once

#include <iosfwd>
#include <string>
#include <string_view>

namespace ttq {

enum class DeviceType : uint8_t { CPU, CUDA };

struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;

  static Device cpu() { return {DeviceType::CPU, 0}; }
  static Device cuda(int i = 0) { return {DeviceType::CUDA, i}; }
  bool is_cpu() const { return type == DeviceType::CPU; }
  bool is_cuda() const { return type == DeviceType::CUDA; }
  bool operator==(const Device& o) const {
    return type == o.type && (type == DeviceType::CPU || index == o.index);
  }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string str() const;
  // "cpu", "cuda", "cuda:1". Throws ttq::InputError on anything else.
  static Device parse(std::string_view s);
};

// The device a tool runs on, from its --device flag: "" picks cuda:0 when a CUDA
// device is present, else the CPU, and then writes one line to `log` saying so;
// "cuda" or "cuda:N" without that device is a ttq::InputError naming the flag
// (never a silent fallback). Tests: tests/test_infer_images.cpp, the tools' tests.
Device pick_device(const std::string& flag, std::ostream& log);

}  // namespace ttq
