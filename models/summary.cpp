// Model summaries (see models/summary.h).
#include "models/summary.h"

#include <charconv>
#include <cstdio>
#include <map>
#include <sstream>

#include "engine/autograd.h"
#include "models/trace.h"

namespace ttq::models {

namespace {

int64_t layer_flops(const nn::Module* m, const Shape& in, const Shape& out) {
  const int64_t n_out = shape_numel(out);
  if (auto* conv = dynamic_cast<const nn::Conv2d*>(m)) {
    const int64_t k = static_cast<int64_t>(conv->kernel_size()) * conv->kernel_size();
    return n_out * (2 * conv->in_channels() * k + (conv->has_bias() ? 1 : 0));
  }
  if (auto* lin = dynamic_cast<const nn::Linear*>(m))
    return n_out * (2 * lin->in_features() + (lin->has_bias() ? 1 : 0));
  if (dynamic_cast<const nn::BatchNorm2d*>(m)) return 2 * n_out;
  if (dynamic_cast<const nn::ReLU*>(m)) return n_out;
  if (dynamic_cast<const nn::GlobalAvgPool*>(m) || dynamic_cast<const nn::MaxPool2d*>(m) ||
      dynamic_cast<const nn::AvgPool2d*>(m))
    return shape_numel(in);
  return 0;
}

std::string human(double v) {
  char buf[32];
  if (v >= 1e9)
    std::snprintf(buf, sizeof buf, "%.3f G", v / 1e9);
  else if (v >= 1e6)
    std::snprintf(buf, sizeof buf, "%.3f M", v / 1e6);
  else if (v >= 1e3)
    std::snprintf(buf, sizeof buf, "%.3f k", v / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%.0f", v);
  return buf;
}

}  // namespace

Summary summarize(Model& model, const Shape& input) {
  model.check_input(input, "summary input");
  std::map<const nn::Module*, std::string> names;
  for (auto& [n, m] : model.named_modules()) names.emplace(m, n);
  Summary s;
  s.arch = model.arch();
  s.input = input;
  s.params = model.num_parameters();
  const bool was_training = model.is_training();
  model.eval();
  Tensor x = Tensor::zeros(input);
  std::vector<LayerTrace> layers;
  {
    autograd::NoGradGuard no_grad;
    TraceScope scope;
    Tensor y = model.forward(x);
    s.output = y.shape();
    layers = scope.layers();
  }
  model.train(was_training);
  for (const LayerTrace& t : layers) {
    if (!t.module->named_children().empty()) continue;  // containers: their layers have rows
    SummaryRow r;
    auto it = names.find(t.module);
    r.name = it == names.end() ? "?" : it->second;
    const std::string extra = t.module->extra_repr();
    r.type = t.module->name() + "(" + extra + ")";
    r.output = t.output;
    for (auto& [pn, p] : const_cast<nn::Module*>(t.module)->named_parameters()) r.params += p->numel();
    r.flops = layer_flops(t.module, t.input, t.output);
    s.flops += r.flops;
    s.rows.push_back(std::move(r));
  }
  return s;
}

std::string Summary::text() const {
  std::ostringstream os;
  os << arch << ": input " << shape_str(input) << " -> output " << shape_str(output) << "\n";
  char line[512];
  std::snprintf(line, sizeof line, "%-44s %-60s %-20s %10s %12s\n", "layer", "type", "output", "params",
                "FLOPs");
  os << line;
  for (const SummaryRow& r : rows) {
    std::string type = r.type.size() > 60 ? r.type.substr(0, 57) + "..." : r.type;
    std::snprintf(line, sizeof line, "%-44s %-60s %-20s %10lld %12s\n", r.name.c_str(), type.c_str(),
                  shape_str(r.output).c_str(), static_cast<long long>(r.params),
                  human(static_cast<double>(r.flops)).c_str());
    os << line;
  }
  os << "parameters: " << params << "\n";
  os << "FLOPs (forward, batch " << (input.empty() ? 0 : input[0]) << ", multiply-add = 2): " << flops << " ("
     << human(static_cast<double>(flops)) << ")\n";
  return os.str();
}

Shape parse_chw(const std::string& text, const std::string& flag) {
  Shape out;
  size_t start = 0;
  while (start <= text.size()) {
    size_t x = text.find('x', start);
    std::string part = text.substr(start, x == std::string::npos ? std::string::npos : x - start);
    int64_t v = 0;
    auto [p, ec] = std::from_chars(part.data(), part.data() + part.size(), v);
    TTQ_INPUT_CHECK(!part.empty() && ec == std::errc() && p == part.data() + part.size() && v >= 1 &&
                    v <= 1 << 20)
        << flag << ": expected CxHxW with positive integers (e.g. 3x56x56), got '" << text << "'";
    out.push_back(v);
    if (x == std::string::npos) break;
    start = x + 1;
  }
  TTQ_INPUT_CHECK(out.size() == 3) << flag << ": expected CxHxW (e.g. 3x56x56), got '" << text << "'";
  return out;
}

}  // namespace ttq::models
