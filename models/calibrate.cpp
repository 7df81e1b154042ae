// Calibration of int8 activations for a packed model (models/packed.h, docs/int8.md
// "Calibration"): the input of every packed conv observed on the Float path over a set
// of images, a histogram per tensor, a clipping range by the chosen method, and the
// resulting scale and zero point written into the packed file. Tests:
// tests/test_int8_model.cpp.
#include <algorithm>
#include <cmath>
#include <iomanip>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <tuple>

#include "models/packed.h"

namespace ttq::models {

const char* calib_method_name(CalibMethod m) {
  switch (m) {
    case CalibMethod::Max: return "max";
    case CalibMethod::Percentile: return "percentile";
    case CalibMethod::Mse: return "mse";
  }
  return "?";
}

CalibMethod parse_calib_method(const std::string& text, const std::string& flag) {
  for (CalibMethod m : {CalibMethod::Max, CalibMethod::Percentile, CalibMethod::Mse})
    if (text == calib_method_name(m)) return m;
  TTQ_INPUT_ERROR() << flag << ": expected max, percentile or mse, got '" << text << "'";
}

kernels::Int8Quant quant_of_range(double lo, double hi) {
  TTQ_CHECK(lo <= 0 && hi >= 0 && std::isfinite(lo) && std::isfinite(hi))
      << "quant_of_range: [" << lo << ", " << hi << "] must be finite and hold 0";
  if (hi - lo <= 0) return {1.0f, 0};
  const float scale = static_cast<float>((hi - lo) / 255.0);
  const double z = std::nearbyint(-128.0 - lo / double(scale));
  return {scale, static_cast<int32_t>(std::clamp(z, -128.0, 127.0))};
}

namespace {

// The value at quantile q (0..1) of the histogram, interpolated within its bin.
double quantile(const ActHistogram& h, double q) {
  const double total = static_cast<double>(h.values);
  const double width = (h.hi - h.lo) / ActHistogram::kBins;
  double seen = 0;
  for (int b = 0; b < ActHistogram::kBins; ++b) {
    const double c = h.counts[static_cast<size_t>(b)];
    if (seen + c >= q * total && c > 0) return h.lo + width * (b + (q * total - seen) / c);
    seen += c;
  }
  return h.hi;
}

// Expected squared error of quantizing the histogram's values to 255 steps over
// [lo, hi]: the clipping error of the values outside, step^2 / 12 for those inside.
double quant_mse(const ActHistogram& h, double lo, double hi) {
  const double step = (hi - lo) / 255.0;
  const double width = (h.hi - h.lo) / ActHistogram::kBins;
  double e = 0;
  for (int b = 0; b < ActHistogram::kBins; ++b) {
    const double c = h.counts[static_cast<size_t>(b)];
    if (c == 0) continue;
    const double x = h.lo + width * (b + 0.5);
    if (x > hi) {
      e += c * (x - hi) * (x - hi);
    } else if (x < lo) {
      e += c * (lo - x) * (lo - x);
    } else {
      e += c * step * step / 12.0;
    }
  }
  return e;
}

}  // namespace

std::pair<double, double> choose_range(const ActHistogram& h, CalibMethod method) {
  const double lo = std::min(h.lo, 0.0), hi = std::max(h.hi, 0.0);
  if (h.values == 0 || hi - lo <= 0) return {lo, hi};
  switch (method) {
    case CalibMethod::Max: return {lo, hi};
    case CalibMethod::Percentile: {
      const double a = h.lo < 0 ? std::min(quantile(h, 1e-4), 0.0) : lo;
      const double b = h.hi > 0 ? std::max(quantile(h, 1 - 1e-4), 0.0) : hi;
      return {a, b};
    }
    case CalibMethod::Mse: {
      // t * [lo, hi] for t in (0, 1], 200 steps: the range keeps 0 and its shape.
      double best_t = 1, best = quant_mse(h, lo, hi);
      for (int k = 1; k < 200; ++k) {
        const double t = 1.0 - k / 200.0;
        const double e = quant_mse(h, t * lo, t * hi);
        if (e < best) best = e, best_t = t;
      }
      return {best_t * lo, best_t * hi};
    }
  }
  return {lo, hi};
}

Calibration calibrate_activations(PackedModel& model, const Tensor& images, CalibMethod method, int64_t batch,
                                  const std::function<void(int, int64_t)>& progress) {
  TTQ_CHECK(images.dim() == 4 && images.size(0) >= 1 && batch >= 1)
      << "calibrate_activations: images [N, C, H, W] and a batch >= 1 expected, got " << images.str();
  const Tensor x = images.to(Device::cpu()).to(DType::F32).contiguous();
  const int64_t n = x.size(0);
  std::vector<std::string> order;
  std::map<std::string, ActHistogram> hist;
  // Pass 0: each tensor's range; pass 1: its histogram over that range.
  for (int pass = 0; pass < 2; ++pass) {
    for (int64_t s = 0; s < n; s += batch) {
      const Tensor b = x.narrow(0, s, std::min(batch, n - s)).contiguous();
      model.observe_conv_inputs(b, [&](const std::string& layer, const Tensor& v_in) {
        const Tensor v = v_in.contiguous();
        const float* p = v.data<float>();
        const int64_t m = v.numel();
        auto [it, fresh] = hist.try_emplace(layer);
        ActHistogram& h = it->second;
        if (pass == 0) {
          if (fresh) {
            order.push_back(layer);
            h.lo = h.hi = m > 0 ? p[0] : 0.0;
          }
          for (int64_t i = 0; i < m; ++i) {
            TTQ_INPUT_CHECK(std::isfinite(p[i]))
                << "calibration: layer " << layer << " sees a non-finite activation";
            h.lo = std::min(h.lo, double(p[i]));
            h.hi = std::max(h.hi, double(p[i]));
          }
          return;
        }
        if (h.counts.empty()) h.counts.assign(ActHistogram::kBins, 0.0);
        const double width = (h.hi - h.lo) / ActHistogram::kBins;
        for (int64_t i = 0; i < m; ++i) {
          const int b = width > 0 ? static_cast<int>((double(p[i]) - h.lo) / width) : 0;
          h.counts[static_cast<size_t>(std::clamp(b, 0, ActHistogram::kBins - 1))] += 1;
        }
        h.values += m;
      });
      if (progress) progress(pass, std::min(n, s + batch));
    }
  }
  Calibration c;
  c.method = method;
  c.images = n;
  for (const std::string& layer : order) {
    const ActHistogram& h = hist.at(layer);
    LayerCalibration l;
    l.name = layer;
    l.min = h.lo;
    l.max = h.hi;
    std::tie(l.clip_lo, l.clip_hi) = choose_range(h, method);
    l.quant = quant_of_range(l.clip_lo, l.clip_hi);
    c.layers.push_back(l);
  }
  return c;
}

void add_activation_quant(PackedContent& content, const Calibration& c, const std::string& data,
                          const std::string& split) {
  std::set<std::string> layers;
  for (const PackLayerReport& l : content.report.layers) layers.insert(l.name);
  TTQ_CHECK(c.layers.size() == layers.size())
      << "add_activation_quant: " << c.layers.size() << " calibrated layers for " << layers.size()
      << " packed layers";
  for (const LayerCalibration& l : c.layers) {
    TTQ_CHECK(layers.count(l.name)) << "add_activation_quant: " << l.name << " is not a packed layer";
    content.tensors.emplace_back(l.name + ".act_scale", Tensor::scalar(l.quant.scale));
    content.tensors.emplace_back(l.name + ".act_zero_point", Tensor::scalar(l.quant.zero_point, DType::I32));
  }
  // (insert_or_assign of a std::string: GCC 12 warns falsely (-Wrestrict) on `= "8"` here.)
  content.metadata.insert_or_assign("act_bits", std::string(1, '8'));
  nlohmann::json j;
  j["method"] = calib_method_name(c.method);
  j["images"] = c.images;
  j["data"] = data;
  j["split"] = split;
  content.metadata["calibration"] = j.dump();
}

std::string format_calibration(const Calibration& c) {
  std::ostringstream os;
  size_t w = 5;
  for (const auto& l : c.layers) w = std::max(w, l.name.size());
  os << std::left << std::setw(static_cast<int>(w)) << "layer" << std::right << std::setw(11) << "min"
     << std::setw(11) << "max" << std::setw(11) << "clip lo" << std::setw(11) << "clip hi" << std::setw(13)
     << "scale" << std::setw(6) << "zp"
     << "\n";
  os << std::setprecision(4);
  for (const auto& l : c.layers)
    os << std::left << std::setw(static_cast<int>(w)) << l.name << std::right << std::setw(11) << l.min
       << std::setw(11) << l.max << std::setw(11) << l.clip_lo << std::setw(11) << l.clip_hi << std::setw(13)
       << l.quant.scale << std::setw(6) << l.quant.zero_point << "\n";
  os << "int8 activations: " << c.layers.size() << " layers calibrated on " << c.images << " images ("
     << calib_method_name(c.method) << ")\n";
  return os.str();
}

}  // namespace ttq::models
