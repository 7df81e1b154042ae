// ONNX import and export (see models/onnx.h). Tests: tests/test_onnx.cpp,
// tests/test_onnx_torchvision.cpp; fuzzing: fuzz/fuzz_onnx.cpp.
//
// Import: the protobuf is parsed by Debian's generated classes; then every value
// the graph needs is checked before it is trusted: initializer dims (rank <= 8,
// each below 2^31, at most 2^28 elements) against their data's size, node order
// (a topological sort that names a node on a cycle), every input defined, every
// attribute of a supported operator read and checked. The walk maps each ONNX
// value to a graph node (a feature map or features), a constant (an initializer,
// a Constant, a parameter reached through Identity) or a shape (Shape, Gather,
// Unsqueeze, Concat, Cast around a Reshape of the classifier input).
#include "models/onnx.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <set>

#include "engine/error.h"
#include "engine/io/file.h"
#include "engine/io/write_file.h"

#if TTQ_HAS_ONNX
#include <onnx/onnx_pb.h>
#endif

// GCC 12 reports a false -Wrestrict inside std::string's operator+ at -O3 (GCC bug 105329).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wrestrict"
#endif

namespace ttq::models {

std::string onnx_supported_ops() {
  return "Conv, BatchNormalization, Relu, Clip (min 0), MaxPool, AveragePool, GlobalAveragePool, Concat, "
         "Add, "
         "Gemm, MatMul (+ Add), Flatten, Reshape, Dropout, Identity, Pad (zero), Constant, Shape, Gather, "
         "Unsqueeze, Cast";
}

#if !TTQ_HAS_ONNX

bool onnx_available() { return false; }
OnnxImport import_onnx(const void*, size_t, const std::string& source, const std::string&) {
  TTQ_INPUT_ERROR() << source
                    << ": this build reads no ONNX (libonnx-dev and libprotobuf-dev were not found "
                       "when it was configured)";
}
OnnxImport import_onnx_file(const std::string& path) { return import_onnx(nullptr, 0, path, ""); }
std::string export_onnx(const Graph&, const io::NamedTensors&, int64_t, int64_t) {
  TTQ_INPUT_ERROR()
      << "this build writes no ONNX (libonnx-dev and libprotobuf-dev were not found when it was "
         "configured)";
}
void write_onnx_file(const std::string& path, const Graph& g, const io::NamedTensors& t, int64_t h,
                     int64_t w) {
  (void)path;
  (void)export_onnx(g, t, h, w);
}

#else

bool onnx_available() { return true; }

namespace {

constexpr int64_t kMaxDim = int64_t(1) << 31;
constexpr int64_t kMaxElements = int64_t(1) << 28;  // 1 GiB of floats per tensor
constexpr int kMaxNodes = 100000;
constexpr int kMaxWindow = 1 << 12;
constexpr uint64_t kMaxFileBytes = uint64_t(2) << 30;  // protobuf's own limit

// A constant: an initializer, a Constant's value, or their Identity.
struct Const {
  Shape dims;
  std::vector<float> f;    // FLOAT / DOUBLE
  std::vector<int64_t> i;  // INT64 / INT32
  bool is_int = false;
  std::string name;  // the initializer's name (for module names), "" for Constants
  int64_t numel() const { return is_int ? static_cast<int64_t>(i.size()) : static_cast<int64_t>(f.size()); }
};

// What an ONNX value is during the walk.
struct Value {
  enum Kind { None, Node, Constant, ShapeVec, Unsupported } kind = None;
  int node = -1;  // Node: the graph node
  Shape shape;    // Node: the ONNX shape for N = 1 ([1, C, H, W] or [1, F]; [1, C, 1, 1] after a global pool)
  std::shared_ptr<const Const> c;
  std::vector<int64_t> dims;  // ShapeVec: the values, -1 for the batch size
  std::string why;            // Unsupported
};

std::string op_str(const onnx::NodeProto& n, int index) {
  std::string name = n.name().empty() ? "#" + std::to_string(index) : n.name();
  if (name.size() > 120) name = name.substr(0, 117) + "...";
  return "node " + io::quoted_name(name) + " (" + n.op_type() + ")";
}

int64_t window_out(int64_t in, int kernel, int stride, int pad, int dilation, bool ceil_mode) {
  const int64_t span = in + 2 * pad - static_cast<int64_t>(dilation) * (kernel - 1) - 1;
  if (span < 0) return 0;
  int64_t out = (ceil_mode ? (span + stride - 1) / stride : span / stride) + 1;
  if (ceil_mode && (out - 1) * stride >= in + pad) --out;
  return out;
}

class Importer {
 public:
  Importer(const onnx::ModelProto& m, std::string source, std::string arch)
      : m_model(m), g(m.graph()), m_source(std::move(source)), m_graph(std::move(arch), 1) {}

  OnnxImport run() {
    check_opset();
    read_initializers();
    const std::vector<int> order = topological_order();
    read_input();
    for (int i : order) {
      if (m_done.count(i)) continue;
      node(i);
    }
    return finish();
  }

 private:
  const onnx::ModelProto& m_model;
  const onnx::GraphProto& g;
  std::string m_source;
  Graph m_graph;
  std::map<std::string, Value> m_values;
  std::map<std::string, const onnx::TensorProto*> m_inits;
  std::map<std::string, std::vector<int> > m_readers;  // value -> nodes reading it
  std::set<int> m_done;                                // nodes folded into an earlier one
  std::set<std::string> m_module_names;
  std::map<std::string, int> m_op_count;
  io::NamedTensors m_tensors;
  int64_t m_opset = 0;
  OnnxImport m_out;

  [[noreturn]] void fail(const std::string& msg) { TTQ_INPUT_ERROR() << m_source << ": " << msg; }

  void check_opset() {
    for (const auto& o : m_model.opset_import())
      if (o.domain().empty() || o.domain() == "ai.onnx") m_opset = o.version();
    if (m_opset == 0) fail("no ONNX opset (opset_import names no default domain)");
    if (m_opset < 7 || m_opset > 21)
      fail("opset " + std::to_string(m_opset) +
           " is outside the supported 7 to 21 (torch.onnx emits 9 to 17)");
    if (g.node_size() > kMaxNodes) fail(std::to_string(g.node_size()) + " nodes (at most 100000)");
    if (g.node_size() == 0) fail("the graph has no nodes");
  }

  // Checked dims of a tensor: rank <= 8, each in [0, 2^31), at most 2^28 elements.
  Shape checked_dims(const onnx::TensorProto& t, const std::string& what) {
    if (t.dims_size() > 8) fail(what + " has rank " + std::to_string(t.dims_size()) + " (at most 8)");
    Shape d;
    int64_t n = 1;
    for (int64_t x : t.dims()) {
      if (x < 0 || x >= kMaxDim) fail(what + " has a dimension of " + std::to_string(x));
      d.push_back(x);
      if (x != 0 && n > kMaxElements / x) fail(what + " has more than 2^28 elements");
      n *= x;
    }
    return d;
  }

  // The data of a TensorProto, its size checked against its dims before reading.
  std::shared_ptr<Const> decode(const onnx::TensorProto& t, const std::string& what) {
    auto c = std::make_shared<Const>();
    c->dims = checked_dims(t, what);
    const int64_t n = shape_numel(c->dims);
    if (t.data_location() == onnx::TensorProto::EXTERNAL || t.external_data_size() > 0)
      fail(what +
           " keeps its data in an external file, which is not read (save the model with its data inside)");
    const bool raw = t.has_raw_data();
    auto size_ok = [&](int64_t have, int64_t elem) {
      if (have != n * elem)
        fail(what + " holds " + std::to_string(have) + (raw ? " bytes" : " values") + " for dims of " +
             std::to_string(n) + " elements");
    };
    switch (t.data_type()) {
      case onnx::TensorProto::FLOAT:
        if (raw) {
          size_ok(static_cast<int64_t>(t.raw_data().size()), 4);
          c->f.resize(static_cast<size_t>(n));
          if (n) std::memcpy(c->f.data(), t.raw_data().data(), static_cast<size_t>(n) * 4);
        } else {
          size_ok(t.float_data_size(), 1);
          c->f.assign(t.float_data().begin(), t.float_data().end());
        }
        break;
      case onnx::TensorProto::DOUBLE:
        if (raw) {
          size_ok(static_cast<int64_t>(t.raw_data().size()), 8);
          c->f.resize(static_cast<size_t>(n));
          for (int64_t k = 0; k < n; ++k) {
            double v;
            std::memcpy(&v, t.raw_data().data() + 8 * k, 8);
            c->f[static_cast<size_t>(k)] = static_cast<float>(v);
          }
        } else {
          size_ok(t.double_data_size(), 1);
          for (double v : t.double_data()) c->f.push_back(static_cast<float>(v));
        }
        break;
      case onnx::TensorProto::INT64:
        c->is_int = true;
        if (raw) {
          size_ok(static_cast<int64_t>(t.raw_data().size()), 8);
          c->i.resize(static_cast<size_t>(n));
          if (n) std::memcpy(c->i.data(), t.raw_data().data(), static_cast<size_t>(n) * 8);
        } else {
          size_ok(t.int64_data_size(), 1);
          c->i.assign(t.int64_data().begin(), t.int64_data().end());
        }
        break;
      case onnx::TensorProto::INT32:
        c->is_int = true;
        if (raw) {
          size_ok(static_cast<int64_t>(t.raw_data().size()), 4);
          c->i.resize(static_cast<size_t>(n));
          for (int64_t k = 0; k < n; ++k) {
            int32_t v;
            std::memcpy(&v, t.raw_data().data() + 4 * k, 4);
            c->i[static_cast<size_t>(k)] = v;
          }
        } else {
          size_ok(t.int32_data_size(), 1);
          c->i.assign(t.int32_data().begin(), t.int32_data().end());
        }
        break;
      default:
        fail(what + " has data type " + std::to_string(t.data_type()) +
             "; float, double, int32 and int64 tensors are read");
    }
    return c;
  }

  void read_initializers() {
    if (g.initializer_size() > kMaxNodes) fail("more than 100000 initializers");
    for (const auto& t : g.initializer()) {
      const std::string what = "initializer " + io::quoted_name(t.name());
      if (t.name().empty()) fail("an initializer has no name");
      if (!m_inits.emplace(t.name(), &t).second) fail(what + " is defined twice");
      (void)checked_dims(t, what);
    }
    if (g.sparse_initializer_size() > 0) fail("sparse initializers are not read");
  }

  // Node indices in an order where every value is defined before it is read.
  std::vector<int> topological_order() {
    std::map<std::string, int> producer;
    std::set<std::string> defined;
    for (const auto& [name, t] : m_inits) defined.insert(name);
    for (const auto& in : g.input()) defined.insert(in.name());
    for (int i = 0; i < g.node_size(); ++i) {
      const auto& n = g.node(i);
      for (const auto& o : n.output()) {
        if (o.empty()) continue;
        if (defined.count(o) || !producer.emplace(o, i).second)
          fail(op_str(n, i) + " writes " + io::quoted_name(o) + ", which is already defined");
      }
    }
    std::vector<int> pending(static_cast<size_t>(g.node_size()), 0);
    std::vector<std::vector<int> > next(static_cast<size_t>(g.node_size()));
    for (int i = 0; i < g.node_size(); ++i) {
      const auto& n = g.node(i);
      for (const auto& in : n.input()) {
        if (in.empty()) continue;
        m_readers[in].push_back(i);
        if (defined.count(in)) continue;
        auto p = producer.find(in);
        if (p == producer.end())
          fail(op_str(n, i) + " reads " + io::quoted_name(in) +
               ", which no node, graph input or initializer defines (a missing initializer?)");
        next[static_cast<size_t>(p->second)].push_back(i);
        ++pending[static_cast<size_t>(i)];
      }
    }
    std::vector<int> order, ready;
    for (int i = g.node_size() - 1; i >= 0; --i)
      if (pending[static_cast<size_t>(i)] == 0) ready.push_back(i);
    while (!ready.empty()) {
      // Smallest index first: the file's order when it is already sorted.
      auto it = std::min_element(ready.begin(), ready.end());
      const int i = *it;
      ready.erase(it);
      order.push_back(i);
      for (int j : next[static_cast<size_t>(i)])
        if (--pending[static_cast<size_t>(j)] == 0) ready.push_back(j);
      if (ready.size() > 4096) std::sort(ready.begin(), ready.end());
    }
    if (order.size() != static_cast<size_t>(g.node_size())) {
      for (int i = 0; i < g.node_size(); ++i)
        if (pending[static_cast<size_t>(i)] > 0)
          fail(op_str(g.node(i), i) + " is on a cycle: the graph is not acyclic");
    }
    for (const auto& o : g.output())
      if (!producer.count(o.name()) && !defined.count(o.name()))
        fail("graph output " + io::quoted_name(o.name()) + " is not computed by any node");
    return order;
  }

  void read_input() {
    const onnx::ValueInfoProto* input = nullptr;
    for (const auto& in : g.input()) {
      if (m_inits.count(in.name())) continue;  // an initializer listed as an input
      if (input)
        fail("the graph has more than one input (" + io::quoted_name(input->name()) + ", " +
             io::quoted_name(in.name()) + "); one image batch is supported");
      input = &in;
    }
    if (!input) fail("the graph has no input");
    const std::string what = "input " + io::quoted_name(input->name());
    if (!input->type().has_tensor_type()) fail(what + " is not a tensor");
    const auto& tt = input->type().tensor_type();
    if (tt.elem_type() != onnx::TensorProto::FLOAT) fail(what + " is not float");
    if (!tt.has_shape() || tt.shape().dim_size() != 4) fail(what + " is not [N, C, H, W]");
    int64_t d[4] = {0, 0, 0, 0};
    for (int k = 0; k < 4; ++k) {
      const auto& dim = tt.shape().dim(k);
      if (dim.has_dim_value()) d[k] = dim.dim_value();
      if (dim.has_dim_value() && (d[k] < 1 || d[k] > kMaxInputSize * 64))
        fail(what + " has dimension " + std::to_string(d[k]));
    }
    if (d[1] < 1 || d[1] > kMaxInChannels)
      fail(what + " has " + (d[1] ? std::to_string(d[1]) : std::string("unknown")) +
           " channels (1 to 1024 supported)");
    if (d[2] > kMaxInputSize || d[3] > kMaxInputSize)
      fail(what + " is " + std::to_string(d[2]) + "x" + std::to_string(d[3]) + " (at most 2048x2048)");
    m_graph = Graph(m_graph.arch(), d[1]);
    m_out.input_h = d[2];
    m_out.input_w = d[3];
    // Unknown sizes: shapes are tracked for a 224x224 input (only a flatten of a
    // feature map depends on them, and it then needs the sizes in the file).
    Value v;
    v.kind = Value::Node;
    v.node = 0;
    v.shape = {1, d[1], d[2] ? d[2] : 224, d[3] ? d[3] : 224};
    m_values[input->name()] = v;
  }

  // ---- values

  Value& value(const onnx::NodeProto& n, int i, int k) {
    if (k >= n.input_size() || n.input(k).empty()) fail(op_str(n, i) + " lacks input " + std::to_string(k));
    const std::string& name = n.input(k);
    auto it = m_values.find(name);
    if (it == m_values.end()) {
      auto init = m_inits.find(name);
      if (init == m_inits.end())
        fail(op_str(n, i) + " reads " + io::quoted_name(name) + " before it is computed");
      Value v;
      v.kind = Value::Constant;
      auto c = decode(*init->second, "initializer " + io::quoted_name(name));
      c->name = name;
      v.c = c;
      it = m_values.emplace(name, std::move(v)).first;
    }
    if (it->second.kind == Value::Unsupported) fail(op_str(n, i) + ": " + it->second.why);
    return it->second;
  }
  Value& tensor_in(const onnx::NodeProto& n, int i, int k) {
    Value& v = value(n, i, k);
    if (v.kind != Value::Node)
      fail(op_str(n, i) + ": input " + std::to_string(k) + " " + io::quoted_name(n.input(k)) +
           " must be computed from the graph input, not a constant");
    return v;
  }
  const Const& const_in(const onnx::NodeProto& n, int i, int k, const std::string& role) {
    Value& v = value(n, i, k);
    if (v.kind != Value::Constant)
      fail(op_str(n, i) + ": its " + role + " " + io::quoted_name(n.input(k)) +
           " must be an initializer or a constant");
    return *v.c;
  }
  bool has_input(const onnx::NodeProto& n, int k) const { return k < n.input_size() && !n.input(k).empty(); }

  void set(const onnx::NodeProto& n, int node, const Shape& shape) {
    Value v;
    v.kind = Value::Node;
    v.node = node;
    v.shape = shape;
    m_values[n.output(0)] = v;
    for (int k = 1; k < n.output_size(); ++k) {
      if (n.output(k).empty()) continue;
      Value u;
      u.kind = Value::Unsupported;
      u.why = "it reads output " + std::to_string(k) + " of a " + n.op_type() +
              " node, which is not supported (training outputs, indices, masks)";
      m_values[n.output(k)] = u;
    }
  }
  void alias(const onnx::NodeProto& n, const Value& v) {
    m_values[n.output(0)] = v;
    for (int k = 1; k < n.output_size(); ++k)
      if (!n.output(k).empty()) {
        Value u;
        u.kind = Value::Unsupported;
        u.why =
            "it reads output " + std::to_string(k) + " of a " + n.op_type() + " node, which is not supported";
        m_values[n.output(k)] = u;
      }
  }

  // ---- attributes

  const onnx::AttributeProto* attr(const onnx::NodeProto& n, const char* name) const {
    for (const auto& a : n.attribute())
      if (a.name() == name) return &a;
    return nullptr;
  }
  void only_attrs(const onnx::NodeProto& n, int i, std::initializer_list<const char*> known) {
    for (const auto& a : n.attribute()) {
      bool ok = false;
      for (const char* k : known) ok = ok || a.name() == k;
      if (!ok) {
        std::string list;
        for (const char* k : known) list += (list.empty() ? "" : ", ") + std::string(k);
        fail(op_str(n, i) + ": attribute '" + a.name() +
             "' is not supported (supported: " + (list.empty() ? "none" : list) + ")");
      }
    }
  }
  int64_t int_attr(const onnx::NodeProto& n, int i, const char* name, int64_t dflt, int64_t lo, int64_t hi) {
    const auto* a = attr(n, name);
    if (!a) return dflt;
    if (a->type() != onnx::AttributeProto::INT)
      fail(op_str(n, i) + ": attribute '" + name + "' is not an int");
    if (a->i() < lo || a->i() > hi)
      fail(op_str(n, i) + ": attribute '" + name + "' = " + std::to_string(a->i()) + " outside [" +
           std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return a->i();
  }
  float float_attr(const onnx::NodeProto& n, int i, const char* name, float dflt) {
    const auto* a = attr(n, name);
    if (!a) return dflt;
    if (a->type() != onnx::AttributeProto::FLOAT || !std::isfinite(a->f()))
      fail(op_str(n, i) + ": attribute '" + name + "' is not a finite float");
    return a->f();
  }
  std::vector<int64_t> ints_attr(const onnx::NodeProto& n, int i, const char* name) {
    const auto* a = attr(n, name);
    if (!a) return {};
    if (a->type() != onnx::AttributeProto::INTS || a->ints_size() > 16)
      fail(op_str(n, i) + ": attribute '" + name + "' is not a short list of ints");
    return {a->ints().begin(), a->ints().end()};
  }
  // A 2-D window attribute with equal entries (PyTorch's square kernels, strides,
  // dilations; pads all four equal).
  int square(const onnx::NodeProto& n, int i, const char* name, int count, int dflt, int lo) {
    const std::vector<int64_t> v = ints_attr(n, i, name);
    if (v.empty()) return dflt;
    if (static_cast<int>(v.size()) != count)
      fail(op_str(n, i) + ": attribute '" + name + "' has " + std::to_string(v.size()) +
           " values, expected " + std::to_string(count) + " (2-D only)");
    for (int64_t x : v) {
      if (x != v[0])
        fail(op_str(n, i) + ": attribute '" + name +
             "' differs between axes or sides; only square, symmetric windows are supported");
      if (x < lo || x > kMaxWindow)
        fail(op_str(n, i) + ": attribute '" + name + "' = " + std::to_string(x) + " outside [" +
             std::to_string(lo) + ", " + std::to_string(kMaxWindow) + "]");
    }
    return static_cast<int>(v[0]);
  }
  void no_auto_pad(const onnx::NodeProto& n, int i) {
    const auto* a = attr(n, "auto_pad");
    if (!a) return;
    if (a->s() != "NOTSET" && a->s() != "VALID")
      fail(op_str(n, i) + ": auto_pad " + a->s() + " is not supported (NOTSET or VALID with explicit pads)");
  }

  // ---- names

  std::string module_name(const onnx::NodeProto& n, int i, const std::string& weight_input) {
    auto fresh = [&](const std::string& s) { return !s.empty() && !m_module_names.count(s); };
    std::string name;
    if (weight_input.size() > 7 && weight_input.compare(weight_input.size() - 7, 7, ".weight") == 0)
      name = weight_input.substr(0, weight_input.size() - 7);
    if (!fresh(name) || name.size() > 300) name = scope_name(n.name());
    if (!fresh(name) || name.size() > 300) {
      std::string op = n.op_type();
      std::transform(op.begin(), op.end(), op.begin(), [](unsigned char ch) { return std::tolower(ch); });
      do {
        name = op + "_" + std::to_string(m_op_count[op]++);
      } while (!fresh(name));
    }
    m_module_names.insert(name);
    return name;
  }
  // "/layer1/layer1.0/conv1/Conv" -> "layer1.0.conv1"; "" when the name has no scope.
  static std::string scope_name(const std::string& node_name) {
    if (node_name.empty() || node_name[0] != '/') return "";
    std::vector<std::string> parts;
    size_t start = 1;
    for (;;) {
      const size_t slash = node_name.find('/', start);
      if (slash == std::string::npos) break;
      parts.push_back(node_name.substr(start, slash - start));
      start = slash + 1;
    }
    std::string cur;
    for (const std::string& p : parts) {
      if (p.empty()) return "";
      for (char ch : p)
        if (!(std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '.')) return "";
      if (!cur.empty() && p.rfind(cur + ".", 0) == 0)
        cur = p;
      else
        cur = cur.empty() ? p : cur + "." + p;
    }
    return cur;
  }

  void param(const std::string& name, const Shape& shape, const std::vector<float>& data) {
    TTQ_CHECK(shape_numel(shape) == static_cast<int64_t>(data.size())) << name;
    m_tensors.emplace_back(name, Tensor::from_vector(data, shape));
  }
  void check_shape(const onnx::NodeProto& n, int i, const Const& c, const Shape& want,
                   const std::string& role) {
    if (c.is_int || c.dims != want)
      fail(op_str(n, i) + ": its " + role + " " + io::quoted_name(c.name) + " is " + shape_str(c.dims) +
           (c.is_int ? " (integer)" : "") + ", expected float " + shape_str(want));
  }
  bool all_finite(const Const& c) const {
    return std::all_of(c.f.begin(), c.f.end(), [](float v) { return std::isfinite(v); });
  }

  // ---- operators

  void node(int i) {
    const onnx::NodeProto& n = g.node(i);
    if (!n.domain().empty() && n.domain() != "ai.onnx")
      fail(op_str(n, i) + ": operator domain '" + n.domain() +
           "' is not supported (supported operators: " + onnx_supported_ops() + ")");
    if (n.output_size() < 1 || n.output(0).empty()) fail(op_str(n, i) + " has no output");
    const std::string& op = n.op_type();
    if (op == "Conv") return conv(n, i);
    if (op == "BatchNormalization") return batch_norm(n, i);
    if (op == "Relu") {
      only_attrs(n, i, {});
      Value& x = tensor_in(n, i, 0);
      return set(n, m_graph.relu(x.node), x.shape);
    }
    if (op == "Clip") return clip(n, i);
    if (op == "MaxPool" || op == "AveragePool") return pool(n, i);
    if (op == "GlobalAveragePool") {
      only_attrs(n, i, {});
      Value& x = tensor_in(n, i, 0);
      if (x.shape.size() != 4 || m_graph.node(x.node).rank != 4)
        fail(op_str(n, i) + " reads a value that is not [N, C, H, W]");
      return set(n, m_graph.global_avg_pool(x.node), {1, x.shape[1], 1, 1});
    }
    if (op == "Concat") return concat(n, i);
    if (op == "Add") return add(n, i);
    if (op == "Gemm") return gemm(n, i);
    if (op == "MatMul") return matmul(n, i);
    if (op == "Flatten") {
      only_attrs(n, i, {"axis"});
      if (int_attr(n, i, "axis", 1, -8, 8) != 1) fail(op_str(n, i) + ": only axis 1 is supported");
      return flatten(n, i, tensor_in(n, i, 0));
    }
    if (op == "Reshape") return reshape(n, i);
    if (op == "Identity") return alias(n, value(n, i, 0));
    if (op == "Dropout") return dropout(n, i);
    if (op == "Pad") return pad(n, i);
    if (op == "Constant") return constant(n, i);
    if (op == "Shape") {
      only_attrs(n, i, {});
      Value& x = tensor_in(n, i, 0);
      Value v;
      v.kind = Value::ShapeVec;
      v.dims = x.shape;
      v.dims[0] = -1;
      return alias(n, v);
    }
    if (op == "Gather" || op == "Unsqueeze" || op == "Cast" || op == "Squeeze") return shape_op(n, i);
    fail(op_str(n, i) + " is not supported (supported operators: " + onnx_supported_ops() + ")");
  }

  void conv(const onnx::NodeProto& n, int i) {
    only_attrs(n, i, {"kernel_shape", "strides", "pads", "dilations", "group", "auto_pad"});
    no_auto_pad(n, i);
    Value& x = tensor_in(n, i, 0);
    const Const& w = const_in(n, i, 1, "weight");
    if (x.shape.size() != 4) fail(op_str(n, i) + " reads a value that is not [N, C, H, W]");
    if (w.is_int || w.dims.size() != 4)
      fail(op_str(n, i) + ": only 2-D convolutions with a float weight [O, I, k, k] are supported");
    const int kernel = square(n, i, "kernel_shape", 2, static_cast<int>(w.dims[2]), 1);
    const int stride = square(n, i, "strides", 2, 1, 1);
    const int padding = square(n, i, "pads", 4, 0, 0);
    const int dilation = square(n, i, "dilations", 2, 1, 1);
    const int64_t groups = int_attr(n, i, "group", 1, 1, 1 << 16);
    const int64_t cin = x.shape[1], cout = w.dims[0];
    if (w.dims[2] != w.dims[3] || w.dims[2] != kernel)
      fail(op_str(n, i) + ": weight " + shape_str(w.dims) + " is not a square kernel of " +
           std::to_string(kernel));
    if (cin % groups != 0 || cout % groups != 0 || cout < 1 || w.dims[1] * groups != cin)
      fail(op_str(n, i) + ": weight " + shape_str(w.dims) + " does not fit " + std::to_string(cin) +
           " input channels in " + std::to_string(groups) + " groups");
    const int64_t ho = window_out(x.shape[2], kernel, stride, padding, dilation, false);
    const int64_t wo = window_out(x.shape[3], kernel, stride, padding, dilation, false);
    if (ho < 1 || wo < 1)
      fail(op_str(n, i) + ": its window does not fit its " + shape_str(x.shape) + " input");
    const bool bias = has_input(n, 2);
    const Const* b = bias ? &const_in(n, i, 2, "bias") : nullptr;
    if (b) check_shape(n, i, *b, {cout}, "bias");
    if (!all_finite(w) || (b && !all_finite(*b))) fail(op_str(n, i) + ": its weights are not all finite");
    const std::string name = module_name(n, i, n.input(1));
    const int id =
        m_graph.conv(x.node, name, cout, kernel, stride, padding, bias, static_cast<int>(groups), dilation);
    param(name + ".weight", w.dims, w.f);
    if (b) param(name + ".bias", b->dims, b->f);
    set(n, id, {1, cout, ho, wo});
  }

  // A training-mode export (torch.onnx TrainingMode.TRAINING: extra outputs, or
  // training_mode = 1) reads the same: the graph's BatchNorm2d trains with batch
  // statistics and infers with the running ones.
  void batch_norm(const onnx::NodeProto& n, int i) {
    only_attrs(n, i, {"epsilon", "momentum", "training_mode", "spatial"});
    (void)int_attr(n, i, "training_mode", 0, 0, 1);
    if (int_attr(n, i, "spatial", 1, 0, 1) != 1) fail(op_str(n, i) + ": spatial = 0 is not supported");
    Value& x = tensor_in(n, i, 0);
    if (x.shape.size() != 4) fail(op_str(n, i) + " reads a value that is not [N, C, H, W]");
    const int64_t c = x.shape[1];
    const char* roles[4] = {"scale", "bias", "mean", "var"};
    const Const* p[4];
    for (int k = 0; k < 4; ++k) {
      p[k] = &const_in(n, i, k + 1, roles[k]);
      check_shape(n, i, *p[k], {c}, roles[k]);
      if (!all_finite(*p[k])) fail(op_str(n, i) + ": its " + roles[k] + " is not finite");
    }
    if (std::any_of(p[3]->f.begin(), p[3]->f.end(), [](float v) { return v < 0; }))
      fail(op_str(n, i) + ": its running variance has negative entries");
    const float eps = float_attr(n, i, "epsilon", 1e-5f);
    const float momentum = float_attr(n, i, "momentum", 0.9f);
    if (!(eps > 0 && eps <= 1) || !(momentum >= 0 && momentum <= 1))
      fail(op_str(n, i) + ": epsilon or momentum out of range");
    const std::string name = module_name(n, i, n.input(1));
    // ONNX's momentum weighs the running value; PyTorch's the new batch statistic.
    const int id = m_graph.batch_norm(x.node, name, eps, 1.0 - static_cast<double>(momentum));
    param(name + ".weight", {c}, p[0]->f);
    param(name + ".bias", {c}, p[1]->f);
    param(name + ".running_mean", {c}, p[2]->f);
    param(name + ".running_var", {c}, p[3]->f);
    set(n, id, x.shape);
  }

  void clip(const onnx::NodeProto& n, int i) {
    only_attrs(n, i, {"min", "max"});
    Value& x = tensor_in(n, i, 0);
    float lo = -INFINITY, hi = INFINITY;
    if (m_opset < 11) {
      lo = float_attr(n, i, "min", -INFINITY);
      hi = float_attr(n, i, "max", INFINITY);
    } else {
      auto scalar = [&](int k, const char* role) {
        const Const& c = const_in(n, i, k, role);
        if (c.numel() != 1 || c.is_int) fail(op_str(n, i) + ": its " + role + " is not a float scalar");
        return c.f[0];
      };
      if (has_input(n, 1)) lo = scalar(1, "min");
      if (has_input(n, 2)) hi = scalar(2, "max");
    }
    // The graph's range for a Clip's max (models/graph_io.cpp reads it back the same way).
    if (lo != 0 || !(hi >= 1e-6 && hi <= 1e6))
      fail(op_str(n, i) + ": Clip to [" + std::to_string(lo) + ", " + std::to_string(hi) +
           "] is not supported (min 0 and a max in [1e-6, 1e6], as ReLU6)");
    set(n, m_graph.clip(x.node, hi), x.shape);
  }

  void pool(const onnx::NodeProto& n, int i) {
    const bool max = n.op_type() == "MaxPool";
    if (max)
      only_attrs(n, i,
                 {"kernel_shape", "strides", "pads", "ceil_mode", "dilations", "storage_order", "auto_pad"});
    else
      only_attrs(n, i, {"kernel_shape", "strides", "pads", "ceil_mode", "count_include_pad", "auto_pad"});
    no_auto_pad(n, i);
    Value& x = tensor_in(n, i, 0);
    if (x.shape.size() != 4 || m_graph.node(x.node).rank != 4)
      fail(op_str(n, i) + " reads a value that is not [N, C, H, W]");
    if (!attr(n, "kernel_shape")) fail(op_str(n, i) + " has no kernel_shape");
    const int kernel = square(n, i, "kernel_shape", 2, 1, 1);
    const int stride = square(n, i, "strides", 2, 1, 1);
    const int padding = square(n, i, "pads", 4, 0, 0);
    if (max && square(n, i, "dilations", 2, 1, 1) != 1)
      fail(op_str(n, i) + ": dilated pooling is not supported");
    if (max && int_attr(n, i, "storage_order", 0, 0, 1) != 0)
      fail(op_str(n, i) + ": storage_order 1 is not supported");
    const bool ceil = int_attr(n, i, "ceil_mode", 0, 0, 1) != 0;
    const bool include_pad = !max && int_attr(n, i, "count_include_pad", 0, 0, 1) != 0;
    if (2 * padding > kernel)
      fail(op_str(n, i) + ": padding " + std::to_string(padding) + " is over half the kernel " +
           std::to_string(kernel));
    const int64_t ho = window_out(x.shape[2], kernel, stride, padding, 1, ceil);
    const int64_t wo = window_out(x.shape[3], kernel, stride, padding, 1, ceil);
    if (ho < 1 || wo < 1)
      fail(op_str(n, i) + ": its window does not fit its " + shape_str(x.shape) + " input");
    // ONNX pools over padding that PyTorch's ceil_mode window would not see the
    // same way only when the last window starts in the right padding; torch's
    // rule (window_out) is what the graph runs.
    const int id = max ? m_graph.max_pool(x.node, kernel, stride, padding, ceil)
                       : m_graph.avg_pool(x.node, kernel, stride, padding, ceil, include_pad);
    set(n, id, {1, x.shape[1], ho, wo});
  }

  void concat(const onnx::NodeProto& n, int i) {
    only_attrs(n, i, {"axis"});
    const int64_t axis = int_attr(n, i, "axis", 1, -8, 8);
    if (n.input_size() < 1) fail(op_str(n, i) + " has no inputs");
    const Value& first = value(n, i, 0);
    if (first.kind == Value::ShapeVec || first.kind == Value::Constant) return shape_op(n, i);
    if (axis != 1 && axis != -3)
      fail(op_str(n, i) + ": only concatenation along channels (axis 1) is supported");
    std::vector<int> xs;
    Shape s = first.shape;
    if (s.size() != 4) fail(op_str(n, i) + " reads a value that is not [N, C, H, W]");
    s[1] = 0;
    for (int k = 0; k < n.input_size(); ++k) {
      Value& x = tensor_in(n, i, k);
      if (x.shape.size() != 4 || x.shape[2] != s[2] || x.shape[3] != s[3] || m_graph.node(x.node).rank != 4)
        fail(op_str(n, i) + ": input " + std::to_string(k) + " is " + shape_str(x.shape) + ", not [N, C, " +
             std::to_string(s[2]) + ", " + std::to_string(s[3]) + "]");
      xs.push_back(x.node);
      s[1] += x.shape[1];
    }
    set(n, m_graph.concat(xs), s);
  }

  void add(const onnx::NodeProto& n, int i) {
    only_attrs(n, i, {});
    Value& a = value(n, i, 0);
    Value& b = value(n, i, 1);
    if (a.kind != Value::Node || b.kind != Value::Node)
      fail(op_str(n, i) +
           ": only the sum of two computed values of one shape is supported (a bias add "
           "follows a MatMul)");
    if (a.shape != b.shape || m_graph.node(a.node).rank != m_graph.node(b.node).rank)
      fail(op_str(n, i) + ": adds " + shape_str(a.shape) + " and " + shape_str(b.shape) +
           "; broadcasting is not supported");
    set(n, m_graph.add(a.node, b.node), a.shape);
  }

  // x as [N, F] features: a global pool's output as it is, a feature map flattened.
  void flatten(const onnx::NodeProto& n, int i, const Value& x) {
    if (m_graph.node(x.node).rank == 2) return set(n, x.node, {1, shape_numel(x.shape)});
    const int64_t f = shape_numel(x.shape);
    if (m_out.input_h == 0 || m_out.input_w == 0)
      fail(op_str(n, i) + " flattens a feature map, which needs the input's height and width in the file");
    set(n, m_graph.flatten(x.node, f), {1, f});
  }

  void reshape(const onnx::NodeProto& n, int i) {
    only_attrs(n, i, {"allowzero"});
    Value& x = tensor_in(n, i, 0);
    const Value& s = value(n, i, 1);
    std::vector<int64_t> dims;
    if (s.kind == Value::ShapeVec) {
      dims = s.dims;
    } else if (s.kind == Value::Constant && s.c->is_int) {
      dims = s.c->i;
    } else {
      fail(op_str(n, i) + ": its shape must be a constant or computed from Shape");
    }
    const int64_t f = shape_numel(x.shape);
    // [batch, -1] or [batch, F], batch spelled -1 (from Shape), 0 or 1 (a batch of 1 exported).
    const bool ok = dims.size() == 2 && (dims[0] == -1 || dims[0] == 0 || dims[0] == 1) &&
                    (dims[1] == -1 || dims[1] == f) &&
                    !(dims[0] == -1 && dims[1] == -1 && s.kind == Value::Constant);
    if (!ok) fail(op_str(n, i) + ": only a reshape of the classifier input to [N, features] is supported");
    flatten(n, i, x);
  }

  // Eval mode (no training_mode, or false): the identity. A training-mode export
  // keeps its ratio as the graph's Dropout probability.
  void dropout(const onnx::NodeProto& n, int i) {
    only_attrs(n, i, {"ratio", "seed", "is_test"});
    Value& x = value(n, i, 0);
    bool training = false;
    if (has_input(n, 2)) {
      const Const& t = const_in(n, i, 2, "training_mode");
      if (t.numel() != 1) fail(op_str(n, i) + ": training_mode is not a scalar");
      training = t.is_int ? t.i[0] != 0 : t.f[0] != 0;
    }
    if (!training) return alias(n, x);
    if (x.kind != Value::Node) fail(op_str(n, i) + " reads a constant");
    float ratio = float_attr(n, i, "ratio", 0.5f);
    if (has_input(n, 1)) {
      const Const& r = const_in(n, i, 1, "ratio");
      if (r.numel() != 1 || r.is_int) fail(op_str(n, i) + ": ratio is not a float scalar");
      ratio = r.f[0];
    }
    if (!(ratio >= 0 && ratio < 1))
      fail(op_str(n, i) + ": ratio " + std::to_string(ratio) + " outside [0, 1)");
    set(n, m_graph.dropout(x.node, ratio), x.shape);
  }

  void pad(const onnx::NodeProto& n, int i) {
    only_attrs(n, i, {"mode", "pads", "value"});
    Value& x = tensor_in(n, i, 0);
    std::vector<int64_t> pads = ints_attr(n, i, "pads");
    if (has_input(n, 1)) {
      const Const& p = const_in(n, i, 1, "pads");
      if (!p.is_int) fail(op_str(n, i) + ": its pads are not integers");
      pads = p.i;
    }
    if (std::any_of(pads.begin(), pads.end(), [](int64_t v) { return v != 0; }))
      fail(op_str(n, i) + ": only a Pad of zero padding is supported (padding belongs in the Conv or pool)");
    alias(n, x);
  }

  void constant(const onnx::NodeProto& n, int i) {
    only_attrs(n, i, {"value", "value_float", "value_floats", "value_int", "value_ints"});
    if (n.attribute_size() != 1) fail(op_str(n, i) + " needs exactly one value attribute");
    const auto& a = n.attribute(0);
    auto c = std::make_shared<Const>();
    if (a.name() == "value") {
      if (a.type() != onnx::AttributeProto::TENSOR) fail(op_str(n, i) + ": value is not a tensor");
      c = decode(a.t(), op_str(n, i) + "'s value");
    } else if (a.name() == "value_float") {
      c->f = {a.f()};
    } else if (a.name() == "value_floats") {
      c->f.assign(a.floats().begin(), a.floats().end());
      c->dims = {static_cast<int64_t>(c->f.size())};
    } else if (a.name() == "value_int") {
      c->is_int = true;
      c->i = {a.i()};
    } else {
      c->is_int = true;
      c->i.assign(a.ints().begin(), a.ints().end());
      c->dims = {static_cast<int64_t>(c->i.size())};
    }
    Value v;
    v.kind = Value::Constant;
    v.c = c;
    alias(n, v);
  }

  // Gather / Unsqueeze / Squeeze / Cast / Concat on shapes and integer constants
  // (torch's x.view(x.size(0), -1)).
  void shape_op(const onnx::NodeProto& n, int i) {
    const std::string& op = n.op_type();
    auto ints_of = [&](int k) -> std::vector<int64_t> {
      const Value& v = value(n, i, k);
      if (v.kind == Value::ShapeVec) return v.dims;
      if (v.kind == Value::Constant && v.c->is_int && v.c->numel() <= 16) return v.c->i;
      fail(op_str(n, i) + ": only shapes and small integer constants are supported here");
    };
    Value out;
    out.kind = Value::ShapeVec;
    if (op == "Cast" || op == "Unsqueeze" || op == "Squeeze") {
      out.dims = ints_of(0);  // rank changes of a scalar or 1-D list keep its values
    } else if (op == "Gather") {
      if (int_attr(n, i, "axis", 0, -1, 0) > 0) fail(op_str(n, i) + ": only axis 0 is supported");
      const std::vector<int64_t> data = ints_of(0), idx = ints_of(1);
      for (int64_t k : idx) {
        const int64_t j = k < 0 ? k + static_cast<int64_t>(data.size()) : k;
        if (j < 0 || j >= static_cast<int64_t>(data.size())) fail(op_str(n, i) + ": index out of range");
        out.dims.push_back(data[static_cast<size_t>(j)]);
      }
    } else {  // Concat of shapes
      for (int k = 0; k < n.input_size(); ++k)
        for (int64_t v : ints_of(k)) out.dims.push_back(v);
      if (out.dims.size() > 16) fail(op_str(n, i) + ": shape too long");
    }
    alias(n, out);
  }

  // Linear from A [N, in] and a weight in PyTorch's [out, in] layout.
  void linear(const onnx::NodeProto& n, int i, const Value& a, std::vector<float> w, int64_t out, int64_t in,
              const std::vector<float>* bias, const std::string& weight_name,
              const onnx::NodeProto* bias_node) {
    if (m_graph.node(a.node).rank != 2 || a.shape.size() != 2)
      fail(op_str(n, i) + " reads a value that is not [N, features] (flatten it first)");
    if (a.shape[1] != in)
      fail(op_str(n, i) + ": its weight takes " + std::to_string(in) + " features, its input has " +
           std::to_string(a.shape[1]));
    if (!std::all_of(w.begin(), w.end(), [](float v) { return std::isfinite(v); }) ||
        (bias && !std::all_of(bias->begin(), bias->end(), [](float v) { return std::isfinite(v); })))
      fail(op_str(n, i) + ": its weights are not all finite");
    const std::string name = module_name(n, i, weight_name);
    const int id = m_graph.linear(a.node, name, out, bias != nullptr);
    param(name + ".weight", {out, in}, w);
    if (bias) param(name + ".bias", {out}, *bias);
    set(n, id, {1, out});
    if (bias_node) set(*bias_node, id, {1, out});
  }

  void gemm(const onnx::NodeProto& n, int i) {
    only_attrs(n, i, {"alpha", "beta", "transA", "transB"});
    if (int_attr(n, i, "transA", 0, 0, 1) != 0) fail(op_str(n, i) + ": transA = 1 is not supported");
    const bool tb = int_attr(n, i, "transB", 0, 0, 1) != 0;
    const float alpha = float_attr(n, i, "alpha", 1), beta = float_attr(n, i, "beta", 1);
    Value& a = tensor_in(n, i, 0);
    const Const& b = const_in(n, i, 1, "weight");
    if (b.is_int || b.dims.size() != 2) fail(op_str(n, i) + ": its weight is not a float matrix");
    const int64_t out = tb ? b.dims[0] : b.dims[1], in = tb ? b.dims[1] : b.dims[0];
    if (out < 1 || in < 1) fail(op_str(n, i) + ": empty weight");
    std::vector<float> w(static_cast<size_t>(out * in));
    for (int64_t o = 0; o < out; ++o)
      for (int64_t k = 0; k < in; ++k)
        w[static_cast<size_t>(o * in + k)] = alpha * b.f[static_cast<size_t>(tb ? o * in + k : k * out + o)];
    std::vector<float> bias;
    if (has_input(n, 2)) {
      const Const& c = const_in(n, i, 2, "bias");
      if (c.is_int || c.numel() != out || !(c.dims == Shape{out} || c.dims == Shape{1, out}))
        fail(op_str(n, i) + ": its bias " + shape_str(c.dims) + " is not [" + std::to_string(out) + "]");
      for (float v : c.f) bias.push_back(beta * v);
    }
    linear(n, i, a, std::move(w), out, in, has_input(n, 2) ? &bias : nullptr, n.input(1), nullptr);
  }

  void matmul(const onnx::NodeProto& n, int i) {
    only_attrs(n, i, {});
    Value& a = tensor_in(n, i, 0);
    const Const& b = const_in(n, i, 1, "weight");
    if (b.is_int || b.dims.size() != 2) fail(op_str(n, i) + ": its weight is not a float matrix");
    const int64_t in = b.dims[0], out = b.dims[1];
    if (out < 1 || in < 1) fail(op_str(n, i) + ": empty weight");
    std::vector<float> w(static_cast<size_t>(out * in));
    for (int64_t o = 0; o < out; ++o)
      for (int64_t k = 0; k < in; ++k)
        w[static_cast<size_t>(o * in + k)] = b.f[static_cast<size_t>(k * out + o)];
    // A bias Add that is the product's only reader joins the Linear.
    const auto& rd = m_readers[n.output(0)];
    if (rd.size() == 1 && g.node(rd[0]).op_type() == "Add") {
      const int j = rd[0];
      const auto& add_node = g.node(j);
      const int other = add_node.input_size() == 2 && add_node.input(0) == n.output(0) ? 1 : 0;
      if (add_node.input_size() == 2 && m_inits.count(add_node.input(other)) &&
          add_node.input(1 - other) == n.output(0)) {
        const Const& c = const_in(add_node, j, other, "bias");
        if (!c.is_int && c.numel() == out && (c.dims == Shape{out} || c.dims == Shape{1, out})) {
          m_done.insert(j);
          return linear(n, i, a, std::move(w), out, in, &c.f, n.input(1), &add_node);
        }
      }
    }
    linear(n, i, a, std::move(w), out, in, nullptr, n.input(1), nullptr);
  }

  OnnxImport finish() {
    if (g.output_size() != 1)
      fail("the graph has " + std::to_string(g.output_size()) + " outputs; one (the logits) is supported");
    auto it = m_values.find(g.output(0).name());
    if (it == m_values.end() || it->second.kind != Value::Node)
      fail("the graph output " + io::quoted_name(g.output(0).name()) + " is not computed from the input");
    const Value& v = it->second;
    if (m_graph.node(v.node).rank != 2 || v.shape.size() != 2)
      fail("the graph output " + io::quoted_name(g.output(0).name()) + " is " + shape_str(v.shape) +
           ", not logits [N, classes]");
    if (v.shape[1] < 1 || v.shape[1] > kMaxClasses)
      fail("the graph has " + std::to_string(v.shape[1]) + " classes");
    m_graph.set_output(v.node);
    if (m_graph.first_layers().empty()) fail("the graph has no convolution reading the input");
    const int64_t h = m_out.input_h ? m_out.input_h : 224, w = m_out.input_w ? m_out.input_w : 224;
    if (!m_graph.accepts(h, w)) {
      try {
        (void)m_graph.infer_shapes({1, m_graph.in_channels(), h, w});
      } catch (const InputError& e) {
        fail(std::string("the graph does not run on its own input size: ") + e.what());
      }
    }
    // In Graph::state_shapes() order (node order), as the model registers them.
    std::map<std::string, Tensor> by_name(m_tensors.begin(), m_tensors.end());
    io::NamedTensors ordered;
    for (const auto& [name, shape] : m_graph.state_shapes()) {
      auto t = by_name.find(name);
      TTQ_CHECK(t != by_name.end() && t->second.shape() == shape) << m_source << ": " << name;
      ordered.emplace_back(name, t->second);
    }
    m_out.graph = m_graph;
    m_out.tensors = std::move(ordered);
    m_out.config.in_channels = m_graph.in_channels();
    m_out.config.num_classes = m_graph.num_classes();
    m_out.config.input_size = std::min<int64_t>(h, kMaxInputSize);
    check_config(m_out.config, m_source);
    return std::move(m_out);
  }
};

}  // namespace

OnnxImport import_onnx(const void* data, size_t size, const std::string& source, const std::string& arch) {
  if (size > kMaxFileBytes) TTQ_INPUT_ERROR() << source << ": larger than 2 GiB (protobuf's limit)";
  onnx::ModelProto model;
  if (!model.ParseFromArray(data, static_cast<int>(size)))
    TTQ_INPUT_ERROR() << source
                      << ": not an ONNX model (the protobuf does not parse: truncated or another format)";
  if (!model.has_graph()) TTQ_INPUT_ERROR() << source << ": the ONNX model has no graph";
  try {
    return Importer(model, source, arch.empty() ? "onnx" : arch).run();
  } catch (const InputError&) {
    throw;
  } catch (const Error& e) {
    TTQ_INPUT_ERROR() << source << ": the ONNX graph does not fit: " << e.what();
  }
}

OnnxImport import_onnx_file(const std::string& path) {
  std::vector<uint8_t> bytes;
  std::string why;
  TTQ_INPUT_CHECK(io::read_regular_file(path, kMaxFileBytes, &bytes, &why)) << path << ": " << why;
  std::string stem = std::filesystem::path(path).stem().string();
  if (stem.empty()) stem = "model";
  return import_onnx(bytes.data(), bytes.size(), path, "onnx:" + stem);
}

namespace {

void add_ints(onnx::NodeProto* n, const char* name, std::initializer_list<int64_t> v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INTS);
  for (int64_t x : v) a->add_ints(x);
}
void add_int(onnx::NodeProto* n, const char* name, int64_t v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(v);
}
void add_float(onnx::NodeProto* n, const char* name, float v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::FLOAT);
  a->set_f(v);
}
void add_initializer(onnx::GraphProto* g, const std::string& name, const Tensor& t) {
  const Tensor c = t.to(Device::cpu()).to(DType::F32).contiguous();
  auto* init = g->add_initializer();
  init->set_name(name);
  init->set_data_type(onnx::TensorProto::FLOAT);
  for (int64_t d : c.shape()) init->add_dims(d);
  init->set_raw_data(c.data<float>(), static_cast<size_t>(c.numel()) * sizeof(float));
}
void set_value_info(onnx::ValueInfoProto* v, const std::string& name, std::initializer_list<int64_t> dims) {
  v->set_name(name);
  auto* tt = v->mutable_type()->mutable_tensor_type();
  tt->set_elem_type(onnx::TensorProto::FLOAT);
  bool first = true;
  for (int64_t d : dims) {
    auto* dim = tt->mutable_shape()->add_dim();
    if (first)
      dim->set_dim_param("N");
    else
      dim->set_dim_value(d);
    first = false;
  }
}

}  // namespace

std::string export_onnx(const Graph& gr, const io::NamedTensors& tensors, int64_t h, int64_t w) {
  std::map<std::string, Tensor> by_name(tensors.begin(), tensors.end());
  onnx::ModelProto m;
  m.set_ir_version(7);
  m.set_producer_name("ttq");
  auto* opset = m.add_opset_import();
  opset->set_domain("");
  opset->set_version(13);
  onnx::GraphProto* g = m.mutable_graph();
  g->set_name(gr.arch());
  for (const auto& [name, shape] : gr.state_shapes()) {
    auto it = by_name.find(name);
    TTQ_INPUT_CHECK(it != by_name.end())
        << gr.arch() << ": no tensor " << io::quoted_name(name) << " to export";
    TTQ_INPUT_CHECK(it->second.shape() == shape)
        << gr.arch() << ": tensor " << io::quoted_name(name) << " is " << shape_str(it->second.shape())
        << ", expected " << shape_str(shape);
    add_initializer(g, name, it->second);
  }
  set_value_info(g->add_input(), "input", {1, gr.in_channels(), h, w});
  auto val = [](int i) { return i == 0 ? std::string("input") : "v" + std::to_string(i); };
  for (int i = 1; i < gr.size(); ++i) {
    const Node& nd = gr.node(i);
    auto* n = g->add_node();
    n->set_name(nd.name.empty() ? std::string(node_kind_name(nd.kind)) + "_" + std::to_string(i) : nd.name);
    for (int x : nd.inputs) n->add_input(val(x));
    n->add_output(val(i));
    switch (nd.kind) {
      case NodeKind::Input: break;
      case NodeKind::Conv2d: {
        const ConvAttrs& c = nd.conv;
        n->set_op_type("Conv");
        n->add_input(nd.name + ".weight");
        if (c.bias) n->add_input(nd.name + ".bias");
        add_ints(n, "kernel_shape", {c.kernel, c.kernel});
        add_ints(n, "strides", {c.stride, c.stride});
        add_ints(n, "pads", {c.padding, c.padding, c.padding, c.padding});
        add_ints(n, "dilations", {c.dilation, c.dilation});
        add_int(n, "group", c.groups);
        break;
      }
      case NodeKind::BatchNorm2d:
        n->set_op_type("BatchNormalization");
        for (const char* s : {".weight", ".bias", ".running_mean", ".running_var"}) n->add_input(nd.name + s);
        add_float(n, "epsilon", static_cast<float>(nd.eps));
        add_float(n, "momentum", static_cast<float>(1.0 - nd.momentum));
        break;
      case NodeKind::ReLU: n->set_op_type("Relu"); break;
      case NodeKind::Clip: {
        n->set_op_type("Clip");
        const std::string lo = "clip_" + std::to_string(i) + "_min",
                          hi = "clip_" + std::to_string(i) + "_max";
        add_initializer(g, lo, Tensor::scalar(0.0));
        add_initializer(g, hi, Tensor::scalar(nd.clip_max));
        n->add_input(lo);
        n->add_input(hi);
        break;
      }
      case NodeKind::MaxPool2d:
      case NodeKind::AvgPool2d: {
        const PoolAttrs& p = nd.pool;
        n->set_op_type(nd.kind == NodeKind::MaxPool2d ? "MaxPool" : "AveragePool");
        add_ints(n, "kernel_shape", {p.kernel, p.kernel});
        add_ints(n, "strides", {p.stride, p.stride});
        add_ints(n, "pads", {p.padding, p.padding, p.padding, p.padding});
        add_int(n, "ceil_mode", p.ceil_mode ? 1 : 0);
        if (nd.kind == NodeKind::AvgPool2d) add_int(n, "count_include_pad", p.count_include_pad ? 1 : 0);
        break;
      }
      case NodeKind::GlobalAvgPool: {
        // ONNX pools to [N, C, 1, 1]; the graph's value is [N, C].
        n->set_op_type("GlobalAveragePool");
        n->set_output(0, val(i) + "_4d");
        auto* f = g->add_node();
        f->set_name(n->name() + "_flatten");
        f->set_op_type("Flatten");
        f->add_input(val(i) + "_4d");
        f->add_output(val(i));
        add_int(f, "axis", 1);
        break;
      }
      case NodeKind::Concat:
        n->set_op_type("Concat");
        add_int(n, "axis", 1);
        break;
      case NodeKind::Add: n->set_op_type("Add"); break;
      case NodeKind::Linear:
        n->set_op_type("Gemm");
        n->add_input(nd.name + ".weight");
        if (nd.bias) n->add_input(nd.name + ".bias");
        add_int(n, "transB", 1);
        break;
      case NodeKind::Flatten:
        if (gr.node(nd.inputs[0]).rank == 4) {
          n->set_op_type("Flatten");
          add_int(n, "axis", 1);
        } else {
          n->set_op_type("Identity");
        }
        break;
      case NodeKind::Dropout: n->set_op_type("Identity"); break;
    }
  }
  auto* out = g->add_node();
  out->set_name("logits");
  out->set_op_type("Identity");
  out->add_input(val(gr.output()));
  out->add_output("logits");
  set_value_info(g->add_output(), "logits", {1, gr.num_classes()});
  std::string bytes;
  TTQ_CHECK(m.SerializeToString(&bytes)) << gr.arch() << ": ONNX serialization failed";
  return bytes;
}

void write_onnx_file(const std::string& path, const Graph& g, const io::NamedTensors& tensors, int64_t h,
                     int64_t w) {
  io::write_file_atomic(path, export_onnx(g, tensors, h, w));
}

#endif  // TTQ_HAS_ONNX

}  // namespace ttq::models
