// Model summaries (see models/summary.h).
#include "models/summary.h"

#include <charconv>
#include <cstdio>
#include <map>
#include <sstream>

namespace ttq::models {

namespace {

// FLOPs of one node for its input and output shapes (see summary.h).
int64_t node_flops(const Node& n, const Shape& in, const Shape& out) {
  const int64_t n_out = shape_numel(out);
  switch (n.kind) {
    case NodeKind::Conv2d: {
      const ConvAttrs& c = n.conv;
      const int64_t k = static_cast<int64_t>(c.kernel) * c.kernel;
      return n_out * (2 * (c.in_channels / c.groups) * k + (c.bias ? 1 : 0));
    }
    case NodeKind::Linear: return n_out * (2 * n.features_in + (n.bias ? 1 : 0));
    case NodeKind::BatchNorm2d: return 2 * n_out;
    case NodeKind::ReLU:
    case NodeKind::Add: return n_out;
    case NodeKind::GlobalAvgPool:
    case NodeKind::MaxPool2d:
    case NodeKind::AvgPool2d: return shape_numel(in);
    default: return 0;
  }
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
  const Graph& g = model.graph();
  const std::vector<Shape> shapes = g.infer_shapes(input);
  Summary s;
  s.arch = model.arch();
  s.input = input;
  s.output = shapes[static_cast<size_t>(g.output())];
  s.params = model.num_parameters();
  for (int i = 1; i < g.size(); ++i) {
    const Node& n = g.node(i);
    nn::Module* m = model.module(i);
    SummaryRow r;
    r.name = n.name.empty() ? node_kind_name(n.kind) : n.name;
    r.type = m ? m->name() + "(" + m->extra_repr() + ")" : std::string(node_kind_name(n.kind));
    r.output = shapes[static_cast<size_t>(i)];
    if (m)
      for (auto& [pn, p] : m->named_parameters()) r.params += p->numel();
    r.flops = node_flops(n, shapes[static_cast<size_t>(n.inputs[0])], r.output);
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
