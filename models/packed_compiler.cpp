// The packed runner's compiler: a graph of supported nodes and an input shape
// in, a plan (models/packed_plan.h) out. Runner: models/packed_model.cpp. Tests:
// tests/test_packed_model.cpp, tests/test_graph.cpp, tests/test_torchvision.cpp.
//
// A PackedModel keeps the quantized layers in their kernels' layouts and every
// other tensor as F32 on its device, each BatchNorm folded into a per-channel
// scale and shift. For each input shape it compiles the graph into a plan: buffers
// allocated once and a list of steps, each a kernel of kernels/packed_conv.h or
// kernels/packed_ops.h writing into a preallocated output, so that on CUDA the
// whole list can be captured into one graph. The compiler's passes, in order:
//  1. epilogue: a packed conv whose value only a BatchNorm (and then a ReLU) reads
//     takes them as its epilogue (DenseNet's conv.1 -> norm.2 -> relu.2); a conv's
//     bias is its epilogue's shift (folded into the BatchNorm's when there is one);
//  2. pool first: a 1x1 packed conv whose value only a 2x2 stride-2 average pool
//     reads pools its input first (exact: the conv is linear per pixel), 4x fewer
//     multiply-adds (DenseNet's transitions);
//  3. residual: an Add of a packed conv's value (or of a concatenation of packed
//     convs' values) and another value becomes the convs' residual epilogue
//     (SqueezeNet's residual Fires);
//  4. prologue: a BatchNorm (+ ReLU), or a lone ReLU, whose value only packed
//     convs, max pools and global average pools read is folded into each reader
//     (BN-ReLU-conv everywhere; norm0-relu0-pool0; the final norm-relu-pool);
//  5. concatenation in place: the inputs of a Concat write straight into their
//     channel slices of its buffer, and a Concat whose inputs begin another's is a
//     view of it (a dense block is one shared buffer, never copied);
//  6. everything else is one step per node; buffers of values nobody reads any
//     more are reused by later steps.
// With int8 activations (PackedModel precision Int8, docs/int8.md) pass 3 is skipped
// (the int8 conv has no residual epilogue) and, after pass 4, every packed conv gets a
// quantize step in front (shared by convs quantizing the same value the same way),
// except where its input's producer can write int8 directly (int8_edges). A plan built
// for calibration (observe) is the float plan with an observer step before each packed
// conv.
// No pass looks at an architecture's name.
#include <array>
#include <cmath>
#include <functional>
#include <map>
#include <set>
#include <tuple>

#include "engine/cuda/runtime.h"
#include "engine/io/values.h"
#include "kernels/packed_format.h"
#include "kernels/packed_ops.h"
#include "models/packed.h"
#include "models/packed_internal.h"
#include "models/packed_plan.h"

namespace ttq::models {

using namespace detail;

namespace {

// How one node is computed in a plan.
struct NodePlan {
  bool fused = false;  // computed inside another node's step (no step, no value of its own)
  int alias = -1;      // the node's value is this node's value (Dropout, an Add done as residuals)
  // A step's extras, on the node that anchors the step:
  const Affine* pre = nullptr;  // prologue (packed conv, max pool, global pool)
  bool pre_relu = false;
  const Affine* post = nullptr;  // epilogue (packed conv)
  bool post_relu = false;
  bool pool2 = false;  // packed conv: 2x2 average pool before the conv
  int residual = -1;   // packed conv: node whose value is added
  int64_t residual_offset = 0;
  int out = -1;  // the node whose value the step writes (the end of its fused chain)
  int at = -1;   // emitted when the compiler reaches this node (>= every node the step reads)
};

// The compiler of one plan (see the passes at the top of this file).
class Compiler {
 public:
  Compiler(const PackedModel::Impl& m, int64_t n, int64_t h, int64_t w, bool observe)
      : m(m),
        g(m.graph),
        nodes(g.nodes()),
        plan(g.size()),
        observe(observe),
        int8(!observe && m.precision == Precision::Int8) {
    shapes = g.infer_shapes({n, g.in_channels(), h, w});
    readers = g.consumers();
  }

  std::unique_ptr<Plan> compile() {
    resolve_aliases();
    for (int i = 0; i < g.size(); ++i) plan[i].out = i, plan[i].at = i;
    epilogues();
    pool_first();
    if (!int8) residuals();  // the int8 conv has no residual epilogue: the Add stays a step
    add_relus();
    prologues();
    if (int8) int8_edges();
    auto p = std::make_unique<Plan>();
    p->input = Tensor::empty(shapes[0], DType::F32, m.device);
    value[0] = p->input;
    place_concats(*p);
    emit(*p);
    p->logits = value.at(root(g.output()));
    return p;
  }

 private:
  const PackedModel::Impl& m;
  const Graph& g;
  const std::vector<Node>& nodes;
  std::vector<NodePlan> plan;
  const bool observe;  // Float path plus the calibration observer
  const bool int8;     // packed convs on int8 activations
  std::vector<Shape> shapes;
  std::vector<std::vector<int>> readers;  // after aliases are resolved
  std::map<int, Tensor> value;            // node -> its value's tensor, once placed or allocated

  const Node& node(int i) const { return nodes[static_cast<size_t>(i)]; }
  NodePlan& np(int i) { return plan[static_cast<size_t>(i)]; }
  int root(int i) const {
    while (plan[static_cast<size_t>(i)].alias >= 0) i = plan[static_cast<size_t>(i)].alias;
    return i;
  }
  bool packed(int i) const { return m.packed.count(i) != 0; }
  // The only reader of i's value, or -1 (the output counts as a reader outside).
  int only_reader(int i) const {
    const auto& r = readers[static_cast<size_t>(i)];
    return r.size() == 1 && root(g.output()) != i ? r[0] : -1;
  }

  // Dropout is the identity in eval: its readers read its input.
  void resolve_aliases() {
    for (int i = 0; i < g.size(); ++i)
      if (node(i).kind == NodeKind::Dropout) np(i).alias = node(i).inputs[0];
    recount_readers();
  }
  void recount_readers() {
    readers.assign(static_cast<size_t>(g.size()), {});
    for (int i = 0; i < g.size(); ++i) {
      if (plan[static_cast<size_t>(i)].alias >= 0) continue;
      for (int x : node(i).inputs) {
        auto& r = readers[static_cast<size_t>(root(x))];
        if (std::find(r.begin(), r.end(), i) == r.end()) r.push_back(i);
      }
    }
  }

  // 1. conv -> BN [-> ReLU] or conv -> ReLU as the conv's epilogue; the bias of
  // a conv that has one always is.
  void epilogues() {
    for (int c = 0; c < g.size(); ++c) {
      if (!packed(c)) continue;
      auto bias = m.packed_bias.find(c);
      if (bias != m.packed_bias.end()) np(c).post = &bias->second;
      int r = only_reader(c);
      if (r >= 0 && node(r).kind == NodeKind::BatchNorm2d) {
        np(c).post = bias == m.packed_bias.end() ? &m.bn.at(r) : &bias_then_bn(c, bias->second, m.bn.at(r));
        np(r).fused = true;
        np(c).out = r;
        r = only_reader(r);
      }
      if (r >= 0 && node(r).kind == NodeKind::ReLU) {
        np(c).post_relu = true;
        np(r).fused = true;
        np(c).out = r;
      }
    }
  }

  // bn(conv + bias) as one affine: scale, shift + scale * bias (computed on the host).
  std::map<int, Affine> combined;  // by conv node
  const Affine& bias_then_bn(int c, const Affine& bias, const Affine& bn) {
    const Tensor scale = bn.scale.to(Device::cpu()), shift = bn.shift.to(Device::cpu());
    const Tensor b = bias.shift.to(Device::cpu());
    Tensor out = Tensor::empty(shift.shape());
    for (int64_t k = 0; k < out.numel(); ++k)
      out.data<float>()[k] = shift.data<float>()[k] + scale.data<float>()[k] * b.data<float>()[k];
    return combined[c] = Affine{bn.scale, out.to(m.device)};
  }

  // 2. 1x1 conv -> avg pool 2/2 as pool-then-conv.
  void pool_first() {
    for (int c = 0; c < g.size(); ++c) {
      if (!packed(c) || np(c).post_relu) continue;
      const ConvAttrs& a = node(c).conv;
      if (a.kernel != 1 || a.stride != 1 || a.padding != 0 || a.dilation != 1 || a.groups != 1) continue;
      const int r = only_reader(np(c).out);
      if (r < 0 || node(r).kind != NodeKind::AvgPool2d) continue;
      const PoolAttrs& p = node(r).pool;
      if (p.kernel != 2 || p.stride != 2 || p.padding != 0 || p.ceil_mode) continue;
      np(c).pool2 = true;
      np(r).fused = true;
      np(c).out = r;
    }
  }

  // The packed conv whose step ends at value v without a residual yet, or -1.
  int conv_ending_at(int v) const {
    for (int c = 0; c < g.size(); ++c)
      if (packed(c) && plan[static_cast<size_t>(c)].out == v && plan[static_cast<size_t>(c)].residual < 0 &&
          !plan[static_cast<size_t>(c)].fused)
        return c;
    return -1;
  }

  // 3. add(conv value, y) or add(concat of conv values, y) as residual epilogues.
  void residuals() {
    for (int a = 0; a < g.size(); ++a) {
      if (node(a).kind != NodeKind::Add || np(a).alias >= 0) continue;
      for (int side = 0; side < 2; ++side) {
        const int x = root(node(a).inputs[side]), y = root(node(a).inputs[1 - side]);
        if (only_reader(x) != a || x == y) continue;
        if (const int c = conv_ending_at(x); c >= 0) {
          np(c).residual = y;
          np(c).out = a;
          np(c).at = a;
          np(a).fused = true;
          break;
        }
        if (node(x).kind != NodeKind::Concat) continue;
        std::vector<int> convs;
        for (int in : node(x).inputs) {
          const int v = root(in);
          const int c = only_reader(v) == x ? conv_ending_at(v) : -1;
          if (c < 0) break;
          convs.push_back(c);
        }
        if (convs.size() != node(x).inputs.size()) continue;
        int64_t off = 0;
        for (size_t k = 0; k < convs.size(); ++k) {
          np(convs[k]).residual = y;
          np(convs[k]).residual_offset = off;
          np(convs[k]).at = a;
          off += shapes[static_cast<size_t>(root(node(x).inputs[k]))][1];
        }
        // The concatenation now holds the sum: the Add is a name for it.
        np(a).alias = x;
        recount_readers();
        break;
      }
    }
  }

  // An Add still standing takes a ReLU that is its only reader.
  void add_relus() {
    for (int a = 0; a < g.size(); ++a) {
      if (node(a).kind != NodeKind::Add || np(a).fused || np(a).alias >= 0) continue;
      const int r = only_reader(a);
      if (r >= 0 && node(r).kind == NodeKind::ReLU) np(r).fused = true, np(a).out = r;
    }
  }

  // Whether reader r can take an affine / ReLU of its input as its prologue.
  bool takes_prologue(int r) const {
    const NodeKind k = node(r).kind;
    const NodePlan& p = plan[static_cast<size_t>(r)];
    if (p.fused || p.pre != nullptr || p.pre_relu) return false;
    if (k == NodeKind::MaxPool2d || k == NodeKind::GlobalAvgPool) return true;
    return k == NodeKind::Conv2d && packed(r);
  }

  // 4. BN [-> ReLU] or a lone ReLU folded into every reader.
  void prologues() {
    for (int b = 0; b < g.size(); ++b) {
      const NodeKind k = node(b).kind;
      if (np(b).fused || np(b).alias >= 0) continue;
      if (k != NodeKind::BatchNorm2d && k != NodeKind::ReLU) continue;
      int end = b;
      bool relu = k == NodeKind::ReLU;
      if (k == NodeKind::BatchNorm2d) {
        const int r = only_reader(b);
        if (r >= 0 && node(r).kind == NodeKind::ReLU) end = r, relu = true;
      }
      const auto& rs = readers[static_cast<size_t>(end)];
      const bool foldable = !rs.empty() && root(g.output()) != end &&
                            std::all_of(rs.begin(), rs.end(), [&](int r) { return takes_prologue(r); });
      if (!foldable) {
        // One affine step for BN + ReLU.
        if (end != b) np(end).fused = true, np(b).out = end;
        continue;
      }
      for (int r : rs) {
        np(r).pre = k == NodeKind::BatchNorm2d ? &m.bn.at(b) : nullptr;
        np(r).pre_relu = relu;
        // The reader reads the chain's input instead of its end.
        rewired[r] = root(node(b).inputs[0]);
      }
      np(b).fused = true;
      np(end).fused = true;
    }
  }
  std::map<int, int> rewired;  // reader -> the value it reads after a prologue fusion

  // ---- int8 (docs/int8.md, "The whole model")
  //
  // Each packed conv quantizes its input (after its prologue and pool) with its own
  // calibrated scale, in a quantize step shared by the convs that quantize the same value
  // the same way. A value that only packed convs read, with no prologue or pool and one
  // scale among them (DenseNet's conv.1 -> norm.2 -> relu.2 -> conv.2, the BN-ReLU being
  // conv.1's epilogue), is written as int8 by its producer's epilogue: no float tensor,
  // no quantize step.
  struct QuantKey {
    int value;
    const Affine* pre;
    bool relu, pool2;
    float scale;
    int32_t zero_point;
    bool operator<(const QuantKey& o) const {
      return std::tie(value, pre, relu, pool2, scale, zero_point) <
             std::tie(o.value, o.pre, o.relu, o.pool2, o.scale, o.zero_point);
    }
  };
  QuantKey quant_key(int i) const {
    const NodePlan& q = plan[static_cast<size_t>(i)];
    const kernels::Int8Quant a = m.act.at(i);
    return {input_of(i), q.pre, q.pre_relu, q.pool2, a.scale, a.zero_point};
  }
  bool int8_conv(int i) const { return int8 && packed(i) && m.int8.count(i); }
  std::map<int, kernels::Int8Quant> direct;  // value -> the int8 quantization its producer writes
  std::map<QuantKey, int> pending;           // quantized input -> convs still to read it
  std::map<QuantKey, Tensor> quantized;      // quantized inputs computed so far
  std::multimap<std::vector<int64_t>, Tensor> free_u8;

  void int8_edges() {
    for (int c = 0; c < g.size(); ++c) {
      if (!int8_conv(c) || np(c).fused || np(c).residual >= 0) continue;
      const int v = np(c).out;
      const auto& rs = readers[static_cast<size_t>(v)];
      if (rs.empty() || root(g.output()) == v) continue;
      bool ok = true;
      for (int r : rs) {
        const NodePlan& q = plan[static_cast<size_t>(r)];
        ok = ok && int8_conv(r) && input_of(r) == v && q.pre == nullptr && !q.pre_relu && !q.pool2 &&
             m.act.at(r).scale == m.act.at(rs[0]).scale &&
             m.act.at(r).zero_point == m.act.at(rs[0]).zero_point;
      }
      if (ok) direct[v] = m.act.at(rs[0]);
    }
    for (int c = 0; c < g.size(); ++c)
      if (int8_conv(c) && !np(c).fused) ++pending[quant_key(c)];
  }
  Tensor u8_buffer(Plan& p, const Shape& s) {
    auto f = free_u8.find(s);
    if (f != free_u8.end()) {
      Tensor t = f->second;
      free_u8.erase(f);
      return t;
    }
    Tensor t = Tensor::empty(s, DType::U8, m.device);
    p.buffers.push_back(t);
    return t;
  }

  // The int8 conv i: its input quantized (a step, unless its producer wrote int8 or another
  // conv quantized it the same way already), then the conv with its epilogue into F32 (a
  // buffer or a concatenation's slice) or into int8 for its readers.
  void emit_int8_conv(Plan& p, int i, const std::string& what) {
    const NodePlan& q = plan[static_cast<size_t>(i)];
    const QuantKey key = quant_key(i);
    const kernels::Int8Quant xq_quant = m.act.at(i);
    Tensor xq;
    // (A value written as int8 by its producer is in `quantized` under its readers' key.)
    if (auto it = quantized.find(key); it != quantized.end()) {
      xq = it->second;
    } else {
      const Tensor x = value.at(key.value);
      const Shape s = {x.size(0), x.size(1), q.pool2 ? x.size(2) / 2 : x.size(2),
                       q.pool2 ? x.size(3) / 2 : x.size(3)};
      xq = u8_buffer(p, s);
      quantized[key] = xq;
      Tensor scale, shift;
      if (q.pre) scale = q.pre->scale, shift = q.pre->shift;
      const bool relu = q.pre_relu, pool2 = q.pool2;
      Tensor out = xq;
      p.steps.push_back([x, scale, shift, relu, pool2, xq_quant, out]() mutable {
        kernels::affine_pool_quantize_int8_out(x, scale, shift, relu, pool2, &xq_quant, out);
      });
    }
    kernels::Int8ConvOptions o;
    o.stride = node(i).conv.stride;
    o.pad = node(i).conv.padding;
    if (q.post) o.post_scale = q.post->scale, o.post_shift = q.post->shift;
    o.post_relu = q.post_relu;
    o.cpu_isa = m.options.int8_isa;
    const kernels::Int8ConvWeight* w = &m.int8.at(i);
    Tensor y;
    if (auto d = direct.find(q.out); d != direct.end()) {
      o.out = kernels::Int8Out::Int8;
      o.y_quant = d->second;
      y = u8_buffer(p, kernels::ternary_int8_conv_output_shape(xq, *w, o));
      quantized[QuantKey{q.out, nullptr, false, false, d->second.scale, d->second.zero_point}] = y;
    } else {
      o.out = kernels::Int8Out::F32;
      y = acquire(p, q.out);
      TTQ_CHECK(kernels::ternary_int8_conv_output_shape(xq, *w, o) == y.shape())
          << "packed model: " << what << " output " << shape_str(y.shape());
    }
    p.steps.push_back(
        [xq, xq_quant, w, o, y]() mutable { kernels::ternary_int8_conv2d_out(xq, xq_quant, *w, o, y); });
    // The quantized input goes back to the pool once its last reader ran.
    if (--pending[key] == 0) {
      if (auto it = quantized.find(key); it != quantized.end()) {
        free_u8.emplace(it->second.shape(), it->second);
        quantized.erase(it);
      }
    }
  }

  // Calibration: the F32 tensor conv i's int8 path would quantize, handed to the observer.
  void emit_observer(Plan& p, int i) {
    const NodePlan& q = plan[static_cast<size_t>(i)];
    const Tensor x = value.at(input_of(i));
    const Shape s = {x.size(0), x.size(1), q.pool2 ? x.size(2) / 2 : x.size(2),
                     q.pool2 ? x.size(3) / 2 : x.size(3)};
    Tensor v = Tensor::empty(s, DType::F32, m.device);
    p.buffers.push_back(v);
    Tensor scale, shift;
    if (q.pre) scale = q.pre->scale, shift = q.pre->shift;
    const bool relu = q.pre_relu, pool2 = q.pool2;
    const PackedModel::Impl* mp = &m;
    p.steps.push_back([x, scale, shift, relu, pool2, v, mp, i]() mutable {
      kernels::affine_pool_quantize_int8_out(x, scale, shift, relu, pool2, nullptr, v);
      if (mp->observer) mp->observer(i, v);
    });
  }

  // The value a step anchored at i reads as its main input.
  int input_of(int i) const {
    auto it = rewired.find(i);
    return it != rewired.end() ? it->second : root(node(i).inputs[0]);
  }

  // Whether node i is computed by a step that writes its own output (so its value
  // can be a slice of a concatenation's buffer).
  int writer_of(int v) const {
    for (int i = 0; i < g.size(); ++i) {
      const NodePlan& p = plan[static_cast<size_t>(i)];
      if (!p.fused && p.alias < 0 && p.out == v && node(i).kind != NodeKind::Concat && i != 0) return i;
    }
    return -1;
  }

  // 5. Concat buffers: each Concat (largest first) gets a buffer, or is a view of
  // a planned one whose inputs it begins; its inputs' writers write into slices.
  void place_concats(Plan& p) {
    std::vector<int> cats;
    for (int i = 0; i < g.size(); ++i)
      if (node(i).kind == NodeKind::Concat && np(i).alias < 0 && !np(i).fused) cats.push_back(i);
    std::vector<std::vector<int>> planned_inputs;
    std::vector<int> planned;
    for (auto it = cats.rbegin(); it != cats.rend(); ++it) {
      const int c = *it;
      std::vector<int> ins;
      for (int x : node(c).inputs) ins.push_back(root(x));
      bool viewed = false;
      for (size_t d = 0; d < planned.size() && !viewed; ++d) {
        const auto& big = planned_inputs[d];
        if (ins.size() > big.size() || !std::equal(ins.begin(), ins.end(), big.begin())) continue;
        value[c] = value.at(planned[d]).narrow(1, 0, shapes[static_cast<size_t>(c)][1]);
        viewed = true;
      }
      if (viewed) continue;
      Tensor buf = Tensor::empty(shapes[static_cast<size_t>(c)], DType::F32, m.device);
      p.buffers.push_back(buf);
      value[c] = buf;
      int64_t off = 0;
      for (int x : ins) {
        const int64_t ch = shapes[static_cast<size_t>(x)][1];
        if (!value.count(x) && writer_of(x) >= 0 && !needs_whole(x)) {
          value[x] = buf.narrow(1, off, ch);
        } else {
          copies[x].push_back(buf.narrow(1, off, ch));
        }
        off += ch;
      }
      planned.push_back(c);
      planned_inputs.push_back(ins);
    }
  }
  // value -> the concat slices it is copied into, right after it is written
  std::map<int, std::vector<Tensor>> copies;

  std::set<int> written;  // values complete so far

  // A value is complete once its step ran; a concatenation once all its inputs are.
  bool complete(int v) const {
    if (written.count(v)) return true;
    if (node(v).kind != NodeKind::Concat || plan[static_cast<size_t>(v)].alias >= 0) return false;
    for (int x : node(v).inputs)
      if (!complete(root(x))) return false;
    return true;
  }

  // After value v is written: the copies of every value that just became complete.
  void emit_copies(Plan& p, int v) {
    written.insert(v);
    for (auto it = copies.begin(); it != copies.end();) {
      if (!complete(it->first)) {
        ++it;
        continue;
      }
      const Tensor src = value.at(it->first);
      for (Tensor dst : it->second) {
        p.steps.push_back([src, dst]() mutable {
          kernels::affine_maxpool_out(src, Tensor(), Tensor(), false, kernels::MaxPoolSpec{}, dst);
        });
      }
      it = copies.erase(it);
    }
  }

  // Readers that need a whole contiguous tensor (not a channel slice).
  bool needs_whole(int v) const {
    for (int r : readers[static_cast<size_t>(v)]) {
      const NodeKind k = node(r).kind;
      if (k == NodeKind::Linear || k == NodeKind::Flatten) return true;
    }
    return root(g.output()) == v;
  }

  // ---- 6. emission, with buffer reuse

  std::map<int, int> last_read;  // value -> the last step position reading it
  std::multimap<std::vector<int64_t>, Tensor> free_buffers;
  std::vector<std::pair<int, Tensor>> owned;  // (value, buffer) allocated from the pool

  Tensor acquire(Plan& p, int v) {
    auto it = value.find(v);
    if (it != value.end()) return it->second;
    const Shape& s = shapes[static_cast<size_t>(v)];
    Tensor t;
    auto f = free_buffers.find(s);
    if (f != free_buffers.end() && v != root(g.output())) {
      t = f->second;
      free_buffers.erase(f);
    } else {
      t = Tensor::empty(s, DType::F32, m.device);
      p.buffers.push_back(t);
    }
    value[v] = t;
    if (v != root(g.output())) owned.push_back({v, t});
    return t;
  }
  // Buffers whose values no step after `pos` reads go back to the pool.
  void release_after(int pos) {
    for (auto it = owned.begin(); it != owned.end();) {
      auto lr = last_read.find(it->first);
      if (lr == last_read.end() || lr->second <= pos) {
        free_buffers.emplace(it->second.shape(), it->second);
        it = owned.erase(it);
      } else {
        ++it;
      }
    }
  }

  // The value whose buffer a view-like node's value is (Flatten), else itself.
  int base_of(int v) const {
    while (node(v).kind == NodeKind::Flatten) v = root(node(v).inputs[0]);
    return v;
  }

  // Every value each step reads, for liveness.
  std::vector<int> reads_of(int i) const {
    const NodePlan& p = plan[static_cast<size_t>(i)];
    std::vector<int> r;
    switch (node(i).kind) {
      case NodeKind::Concat:
      case NodeKind::Add:
        for (int x : node(i).inputs) r.push_back(root(x));
        break;
      case NodeKind::Input: break;
      default: r.push_back(input_of(i));
    }
    if (p.residual >= 0) r.push_back(p.residual);
    for (int& v : r) v = base_of(v);
    // Concat buffers (and the slices in them) are never pooled: nothing to add.
    return r;
  }

  void emit(Plan& p) {
    std::vector<int> order;  // anchors sorted by emission position
    for (int i = 1; i < g.size(); ++i) {
      const NodePlan& q = plan[static_cast<size_t>(i)];
      if (q.fused || q.alias >= 0) continue;
      if (node(i).kind == NodeKind::Concat) continue;  // filled in place (or by copies)
      order.push_back(i);
    }
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
      return plan[static_cast<size_t>(a)].at < plan[static_cast<size_t>(b)].at;
    });
    for (size_t pos = 0; pos < order.size(); ++pos)
      for (int v : reads_of(order[pos])) last_read[v] = static_cast<int>(pos);
    last_read[base_of(root(g.output()))] = static_cast<int>(order.size());
    emit_copies(p, 0);
    for (size_t pos = 0; pos < order.size(); ++pos) {
      emit_step(p, order[pos]);
      emit_copies(p, plan[static_cast<size_t>(order[pos])].out);
      release_after(static_cast<int>(pos));
    }
  }

  kernels::PackedConvOptions conv_options(int i) {
    const NodePlan& q = plan[static_cast<size_t>(i)];
    kernels::PackedConvOptions o;
    o.cpu_isa = m.options.cpu_isa;
    o.cuda_path = m.options.cuda_path;
    o.stride = node(i).conv.stride;
    o.pad = node(i).conv.padding;
    o.pool2 = q.pool2;
    if (q.pre) o.pre_scale = q.pre->scale, o.pre_shift = q.pre->shift;
    o.pre_relu = q.pre_relu;
    if (q.post) o.post_scale = q.post->scale, o.post_shift = q.post->shift;
    o.post_relu = q.post_relu;
    return o;
  }

  void emit_step(Plan& p, int i) {
    const Node& nd = node(i);
    const NodePlan& q = plan[static_cast<size_t>(i)];
    const std::string what = nd.name.empty() ? std::string(node_kind_name(nd.kind)) : nd.name;
    switch (nd.kind) {
      case NodeKind::Conv2d: {
        if (int8_conv(i)) {
          emit_int8_conv(p, i, what);
          return;
        }
        const Tensor x = value.at(input_of(i));
        Tensor y = acquire(p, q.out);
        if (packed(i) && observe) emit_observer(p, i);
        if (packed(i)) {
          kernels::PackedConvOptions o = conv_options(i);
          if (q.residual >= 0) {
            const Tensor r = value.at(q.residual);
            o.residual = q.residual_offset > 0 || r.size(1) != y.size(1)
                             ? r.narrow(1, q.residual_offset, y.size(1))
                             : r;
          }
          const kernels::PackedConvWeight* w = &m.packed.at(i);
          TTQ_CHECK(kernels::packed_conv_output_shape(x, *w, o) == y.shape())
              << "packed model: " << what << " output " << shape_str(y.shape());
          p.steps.push_back([w, x, y, o]() mutable { kernels::packed_conv2d_out(x, *w, o, y); });
        } else {
          const Tensor wt = m.weight.at(i);
          const Tensor b = m.bias.count(i) ? m.bias.at(i) : Tensor();
          const ConvAttrs& c = nd.conv;
          const Conv2dParams cp{c.stride, c.stride, c.padding, c.padding, c.dilation, c.dilation, c.groups};
          p.steps.push_back([x, wt, b, cp, y]() mutable { kernels::dense_conv2d_out(x, wt, b, cp, y); });
        }
        return;
      }
      case NodeKind::BatchNorm2d:
      case NodeKind::ReLU:
      case NodeKind::MaxPool2d: {
        // BN [+ ReLU], a ReLU, or a max pool with its prologue: one affine-max-pool step.
        const Tensor x = value.at(input_of(i));
        Tensor y = acquire(p, q.out);
        Tensor scale, shift;
        bool relu = q.pre_relu;
        kernels::MaxPoolSpec pool;
        if (nd.kind == NodeKind::MaxPool2d) {
          if (q.pre) scale = q.pre->scale, shift = q.pre->shift;
          pool = {nd.pool.kernel, nd.pool.stride, nd.pool.padding, nd.pool.ceil_mode};
        } else if (nd.kind == NodeKind::BatchNorm2d) {
          scale = m.bn.at(i).scale, shift = m.bn.at(i).shift;
          relu = q.out != i;  // BN + ReLU
        } else {
          relu = true;
        }
        p.steps.push_back([x, scale, shift, relu, pool, y]() mutable {
          kernels::affine_maxpool_out(x, scale, shift, relu, pool, y);
        });
        return;
      }
      case NodeKind::GlobalAvgPool: {
        const Tensor x = value.at(input_of(i));
        Tensor y = acquire(p, q.out);
        Tensor scale, shift;
        if (q.pre) scale = q.pre->scale, shift = q.pre->shift;
        const bool relu = q.pre_relu;
        p.steps.push_back([x, scale, shift, relu, y]() mutable {
          kernels::affine_global_avgpool_out(x, scale, shift, relu, y);
        });
        return;
      }
      case NodeKind::Linear: {
        const Tensor x = contiguous(p, value.at(input_of(i)));
        Tensor y = acquire(p, q.out);
        const Tensor wt = m.weight.at(i);
        const Tensor b = m.bias.count(i) ? m.bias.at(i) : Tensor();
        p.steps.push_back([x, wt, b, y]() mutable { kernels::linear_out(x, wt, b, y); });
        return;
      }
      case NodeKind::Flatten: {
        const Tensor x = contiguous(p, value.at(input_of(i)));
        value[i] = x.reshape(shapes[static_cast<size_t>(i)]);
        return;
      }
      case NodeKind::Concat: return;
      case NodeKind::AvgPool2d: {
        const Tensor x = value.at(input_of(i));
        Tensor y = acquire(p, q.out);
        const PoolAttrs& a = nd.pool;
        const kernels::AvgPoolSpec spec{a.kernel, a.stride, a.padding, a.ceil_mode, a.count_include_pad};
        p.steps.push_back([x, spec, y]() mutable { kernels::avg_pool_out(x, spec, y); });
        return;
      }
      case NodeKind::Add: {
        // The sum, with a ReLU that is its only reader (a residual block's output).
        const Tensor a = value.at(root(nd.inputs[0])), b = value.at(root(nd.inputs[1]));
        Tensor y = acquire(p, q.out);
        const bool relu = q.out != i;
        p.steps.push_back([a, b, relu, y]() mutable { kernels::add_out(a, b, relu, y); });
        return;
      }
      case NodeKind::Dropout:
      case NodeKind::Input: return;
    }
  }

  // x itself when contiguous, else a copy made by a step.
  Tensor contiguous(Plan& p, const Tensor& x) {
    if (x.is_contiguous()) return x;
    Tensor c = Tensor::empty(x.shape(), DType::F32, m.device);
    p.buffers.push_back(c);
    p.steps.push_back([x, c]() mutable {
      kernels::affine_maxpool_out(x, Tensor(), Tensor(), false, kernels::MaxPoolSpec{}, c);
    });
    return c;
  }
};

}  // namespace

std::unique_ptr<Plan> PackedModel::Impl::build(int64_t n, int64_t h, int64_t w, bool observe) const {
  return Compiler(*this, n, h, w, observe).compile();
}

}  // namespace ttq::models
