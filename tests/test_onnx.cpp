// The ONNX front end on small models built here with the protobuf API (no torch
// needed): each supported operator against the engine's own ops (the CPU
// reference), graph descriptions through JSON, export -> import round trips, and
// every error path as one InputError line naming the node and its operator;
// hostile files (truncated, huge dims, cycles, missing initializers) and the
// tools' exit code 2. The importer: models/onnx.h; torchvision networks:
// tests/test_onnx_torchvision.cpp.
#include <gtest/gtest.h>

#include <filesystem>

#include "engine/autograd.h"
#include "engine/io/write_file.h"
#include "engine/ops/ops.h"
#include "models/graph_io.h"
#include "models/model_file.h"
#include "models/onnx.h"
#include "models/packed.h"
#include "test_util.h"

#if TTQ_HAS_ONNX
#include <onnx/onnx_pb.h>

namespace ttq {
namespace {

// A small model under construction: input [1, C, H, W], nodes appended in order.
struct Builder {
  onnx::ModelProto m;
  onnx::GraphProto* g;
  Generator gen{7};
  explicit Builder(int64_t c = 3, int64_t h = 8, int64_t w = 8, int opset = 13) {
    m.set_ir_version(7);
    auto* o = m.add_opset_import();
    o->set_version(opset);
    g = m.mutable_graph();
    auto* in = g->add_input();
    in->set_name("x");
    auto* tt = in->mutable_type()->mutable_tensor_type();
    tt->set_elem_type(onnx::TensorProto::FLOAT);
    for (int64_t d : {int64_t(1), c, h, w}) tt->mutable_shape()->add_dim()->set_dim_value(d);
  }
  Tensor init(const std::string& name, const Shape& shape, double lo = -0.5, double hi = 0.5) {
    Tensor t = Tensor::uniform(shape, gen, lo, hi);
    auto* p = g->add_initializer();
    p->set_name(name);
    p->set_data_type(onnx::TensorProto::FLOAT);
    for (int64_t d : shape) p->add_dims(d);
    p->set_raw_data(t.data<float>(), static_cast<size_t>(t.numel()) * 4);
    return t;
  }
  void init_ints(const std::string& name, const std::vector<int64_t>& v) {
    auto* p = g->add_initializer();
    p->set_name(name);
    p->set_data_type(onnx::TensorProto::INT64);
    p->add_dims(static_cast<int64_t>(v.size()));
    for (int64_t x : v) p->add_int64_data(x);
  }
  onnx::NodeProto* node(const std::string& op, std::vector<std::string> in, const std::string& out,
                        const std::string& name = "") {
    auto* n = g->add_node();
    n->set_op_type(op);
    n->set_name(name.empty() ? "/" + out + "/" + op : name);
    for (auto& s : in) n->add_input(s);
    n->add_output(out);
    return n;
  }
  static void ints(onnx::NodeProto* n, const char* k, std::vector<int64_t> v) {
    auto* a = n->add_attribute();
    a->set_name(k);
    a->set_type(onnx::AttributeProto::INTS);
    for (int64_t x : v) a->add_ints(x);
  }
  static void i(onnx::NodeProto* n, const char* k, int64_t v) {
    auto* a = n->add_attribute();
    a->set_name(k);
    a->set_type(onnx::AttributeProto::INT);
    a->set_i(v);
  }
  void output(const std::string& name) { g->add_output()->set_name(name); }
  std::string bytes() const { return m.SerializeAsString(); }
  models::OnnxImport import(const std::string& arch = "onnx:test") const {
    const std::string b = bytes();
    return models::import_onnx(b.data(), b.size(), "test.onnx", arch);
  }
};

// conv(3->8, 3x3 p1) -> BN -> Relu -> MaxPool 2 -> conv (grouped) -> Clip(0, 6)
// -> AveragePool 3/2 p1 ceil -> [branch conv 1x1] Concat, Add -> GlobalAveragePool
// -> Flatten -> Gemm.
Builder every_op_model(Tensor* conv_w, Tensor* fc_w) {
  Builder b;
  *conv_w = b.init("features.0.weight", {8, 3, 3, 3});
  b.init("features.0.bias", {8});
  auto* c = b.node("Conv", {"x", "features.0.weight", "features.0.bias"}, "c0");
  Builder::ints(c, "kernel_shape", {3, 3});
  Builder::ints(c, "pads", {1, 1, 1, 1});
  b.init("bn.weight", {8}, 0.5, 1.5);
  b.init("bn.bias", {8});
  b.init("bn.running_mean", {8});
  b.init("bn.running_var", {8}, 0.5, 1.5);
  b.node("BatchNormalization", {"c0", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"}, "b0");
  b.node("Relu", {"b0"}, "r0");
  auto* mp = b.node("MaxPool", {"r0"}, "p0");
  Builder::ints(mp, "kernel_shape", {2, 2});
  Builder::ints(mp, "strides", {2, 2});
  b.init("g.weight", {8, 2, 3, 3});
  auto* gc = b.node("Conv", {"p0", "g.weight"}, "c1");
  Builder::ints(gc, "kernel_shape", {3, 3});
  Builder::ints(gc, "pads", {1, 1, 1, 1});
  Builder::i(gc, "group", 4);
  b.init("lo", {});
  b.g->mutable_initializer(b.g->initializer_size() - 1)->set_raw_data(std::string(4, '\0'));
  auto* hi = b.node("Constant", {}, "hi");
  auto* a = hi->add_attribute();
  a->set_name("value");
  a->set_type(onnx::AttributeProto::TENSOR);
  a->mutable_t()->set_data_type(onnx::TensorProto::FLOAT);
  a->mutable_t()->add_float_data(0.25f);
  b.node("Clip", {"c1", "lo", "hi"}, "k0");
  auto* ap = b.node("AveragePool", {"k0"}, "a0");
  Builder::ints(ap, "kernel_shape", {3, 3});
  Builder::ints(ap, "strides", {2, 2});
  Builder::ints(ap, "pads", {1, 1, 1, 1});
  Builder::i(ap, "ceil_mode", 1);
  Builder::i(ap, "count_include_pad", 1);
  b.init("side.weight", {8, 8, 1, 1});
  b.node("Conv", {"a0", "side.weight"}, "s0");
  b.node("Concat", {"a0", "s0"}, "cat");
  Builder::i(b.g->mutable_node(b.g->node_size() - 1), "axis", 1);
  b.node("Add", {"cat", "cat"}, "sum");
  b.node("GlobalAveragePool", {"sum"}, "gap");
  b.node("Shape", {"gap"}, "shape");
  b.init_ints("zero", {0});
  b.node("Gather", {"shape", "zero"}, "batch");
  b.init_ints("minus1", {-1});
  b.node("Concat", {"batch", "minus1"}, "target");
  b.node("Reshape", {"gap", "target"}, "flat");
  *fc_w = b.init("fc.weight", {5, 16});
  b.init("fc.bias", {5});
  auto* fc = b.node("Gemm", {"flat", "fc.weight", "fc.bias"}, "logits");
  Builder::i(fc, "transB", 1);
  b.output("logits");
  return b;
}

// The same network from the engine's ops, for the reference.
Tensor reference_logits(const models::OnnxImport& im, const Tensor& x) {
  std::map<std::string, Tensor> p(im.tensors.begin(), im.tensors.end());
  Tensor rm = p.at("bn.running_mean"), rv = p.at("bn.running_var");
  Tensor y = ops::conv2d(x, p.at("features.0.weight"), p.at("features.0.bias"), 1, 1);
  y = ops::relu(ops::batch_norm2d(y, p.at("bn.weight"), p.at("bn.bias"), rm, rv, false, 0.1, 1e-5));
  y = ops::max_pool2d(y, 2, 2);
  y = ops::conv2d(y, p.at("g.weight"), Tensor(), 1, 1, 1, 4);
  std::vector<float> v = y.to_vector<float>();
  for (float& e : v) e = std::min(std::max(e, 0.0f), 0.25f);
  y = Tensor::from_vector(v, y.shape());
  y = ops::avg_pool2d(y, 3, 2, 1, true, true);
  Tensor cat = ops::concat({y, ops::conv2d(y, p.at("side.weight"), Tensor())}, 1);
  y = ops::global_avg_pool2d(ops::add(cat, cat));
  return ops::linear(y, p.at("fc.weight"), p.at("fc.bias"));
}

TEST(Onnx, EveryOperatorMatchesTheEnginesOps) {
  Tensor cw, fw;
  Builder b = every_op_model(&cw, &fw);
  const models::OnnxImport im = b.import();
  EXPECT_EQ(im.config.in_channels, 3);
  EXPECT_EQ(im.config.num_classes, 5);
  EXPECT_EQ(im.input_h, 8);
  // Initializer names are the parameter names; the grouped conv's module comes from the node scope.
  std::set<std::string> names;
  for (auto& [n, t] : im.tensors) names.insert(n);
  for (const char* n : {"features.0.weight", "features.0.bias", "bn.running_var", "g.weight", "side.weight",
                        "fc.weight", "fc.bias"})
    EXPECT_TRUE(names.count(n)) << n;
  Generator gen(3);
  auto model = models::create(im.graph, im.config, gen);
  model->load_state_dict(im.tensors, true, "test");
  model->eval();
  const Tensor x = test::rand({2, 3, 8, 8}, 11);
  autograd::NoGradGuard ng;
  const Tensor got = model->forward(x);
  const Tensor want = reference_logits(im, x);
  EXPECT_LT(test::max_rel_error(got, want), 1e-5);
}

TEST(Onnx, GraphJsonRoundTripsAndRebuildsForAnotherConfig) {
  Tensor cw, fw;
  const models::OnnxImport im = every_op_model(&cw, &fw).import("onnx:json");
  const std::string j = models::graph_to_json(im.graph);
  EXPECT_EQ(models::graph_to_json(models::graph_from_json(j, "j")), j);
  models::ModelConfig c;
  c.in_channels = 1;
  c.num_classes = 7;
  const models::Graph g = models::graph_from_json(j, "j", &c);
  EXPECT_EQ(g.in_channels(), 1);
  EXPECT_EQ(g.num_classes(), 7);
  // Registered: the name builds models, and file metadata carries the graph.
  const std::string arch = models::register_graph(im.graph, "test");
  EXPECT_EQ(models::register_graph(im.graph, "again"), arch);
  io::Metadata meta;
  models::describe_arch(meta, arch);
  EXPECT_EQ(meta.at("model_graph"), j);
  EXPECT_EQ(models::adopt_arch(meta, "file"), arch);
  auto m = models::create(arch, c);
  EXPECT_EQ(m->config().num_classes, 7);
  // Hostile descriptions: one InputError line each.
  for (const std::string& bad :
       {std::string("{"), std::string("{\"format\":\"ttq-graph\",\"version\":2}"),
        std::string("{\"format\":\"ttq-graph\",\"version\":1,\"arch\":\"x\",\"in_channels\":3,\"output\":1,"
                    "\"nodes\":[{\"op\":\"ReLU\",\"name\":\"\",\"in\":[5]}]}"),
        std::string("{\"format\":\"ttq-graph\",\"version\":1,\"arch\":\"x\",\"in_channels\":3,\"output\":1,"
                    "\"nodes\":[{\"op\":\"Conv2d\",\"name\":\"c\",\"in\":[0],\"out_channels\":99999999,"
                    "\"kernel\":3,\"stride\":1,\"padding\":1,\"dilation\":1,\"groups\":1,\"bias\":false}]}"),
        std::string("{\"format\":\"ttq-graph\",\"version\":1,\"arch\":\"x\",\"in_channels\":3,\"output\":1,"
                    "\"nodes\":[{\"op\":\"Softmax\",\"name\":\"\",\"in\":[0]}]}")}) {
    const std::string msg = test::input_error_message([&] { (void)models::graph_from_json(bad, "meta"); });
    EXPECT_EQ(msg.rfind("meta", 0), 0u) << bad << " -> " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
  // A graph under a built-in's name is refused.
  models::Graph clash("small_densenet", 3);
  clash.set_output(clash.flatten(clash.global_avg_pool(0)));
  EXPECT_NE(test::input_error_message([&] { (void)models::register_graph(clash, "f"); }).find("built-in"),
            std::string::npos);
}

TEST(Onnx, ExportThenImportGivesTheSameGraphAndLogits) {
  Tensor cw, fw;
  const models::OnnxImport a = every_op_model(&cw, &fw).import("onnx:rt");
  const std::string bytes = models::export_onnx(a.graph, a.tensors, 8, 8);
  const models::OnnxImport b = models::import_onnx(bytes.data(), bytes.size(), "rt.onnx", "onnx:rt");
  EXPECT_EQ(models::graph_to_json(a.graph), models::graph_to_json(b.graph));
  Generator gen(4);
  auto ma = models::create(a.graph, a.config, gen);
  auto mb = models::create(b.graph, b.config, gen);
  ma->load_state_dict(a.tensors, true, "a");
  mb->load_state_dict(b.tensors, true, "b");
  ma->eval();
  mb->eval();
  const Tensor x = test::rand({3, 3, 8, 8}, 5);
  autograd::NoGradGuard ng;
  EXPECT_EQ(test::max_abs_diff(ma->forward(x), mb->forward(x)), 0.0);
}

// Each defect: one InputError line naming the file and, for a node, its operator.
TEST(Onnx, BadModelsAreOneLineErrors) {
  auto expect_error = [](const std::string& bytes, const std::string& needle) {
    const std::string msg = test::input_error_message(
        [&] { (void)models::import_onnx(bytes.data(), bytes.size(), "bad.onnx", "onnx:bad"); });
    EXPECT_EQ(msg.rfind("bad.onnx: ", 0), 0u) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << "expected '" << needle << "' in: " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  };
  Tensor cw, fw;
  const std::string good = every_op_model(&cw, &fw).bytes();
  // Truncated: every prefix either fails to parse or fails a check, never crashes.
  for (size_t n : {size_t(0), size_t(10), good.size() / 3, good.size() / 2, good.size() - 7})
    expect_error(good.substr(0, n), "");
  expect_error("not a protobuf at all \xff\xff\xff", "");
  {  // an unsupported operator names the node and lists the supported ones
    Builder b = every_op_model(&cw, &fw);
    b.g->mutable_node(2)->set_op_type("Selu");
    expect_error(b.bytes(), "node '/r0/Relu' (Selu) is not supported (supported operators: Conv");
  }
  {  // an unsupported attribute
    Builder b = every_op_model(&cw, &fw);
    Builder::i(b.g->mutable_node(0), "frobnicate", 1);
    expect_error(b.bytes(), "(Conv): attribute 'frobnicate' is not supported");
  }
  {  // a missing initializer
    Builder b = every_op_model(&cw, &fw);
    b.g->mutable_initializer(0)->set_name("elsewhere");
    expect_error(b.bytes(), "reads 'features.0.weight', which no node, graph input or initializer defines");
  }
  {  // huge dims: checked against the data before anything is allocated
    Builder b = every_op_model(&cw, &fw);
    b.g->mutable_initializer(0)->set_dims(0, int64_t(1) << 40);
    expect_error(b.bytes(), "has a dimension of");
    b.g->mutable_initializer(0)->set_dims(0, int64_t(1) << 30);
    expect_error(b.bytes(), "more than 2^28 elements");
    b.g->mutable_initializer(0)->set_dims(0, 9);
    expect_error(b.bytes(), "holds 864 bytes for dims of 243 elements");
  }
  {  // a cycle
    Builder b = every_op_model(&cw, &fw);
    b.g->mutable_node(1)->set_input(0, "r0");
    expect_error(b.bytes(), "is on a cycle");
  }
  {  // a value written twice
    Builder b = every_op_model(&cw, &fw);
    b.g->mutable_node(2)->set_output(0, "c0");
    expect_error(b.bytes(), "which is already defined");
  }
  {  // Clip that is not ReLU6-like, a broadcasting Add, a non-square kernel, external data
    Builder b = every_op_model(&cw, &fw);
    b.g->mutable_node(6)->set_input(1, "");
    expect_error(b.bytes(), "(Clip): Clip to [-inf");
  }
  {  // a Clip max the graph description could not hold (a denormal)
    Builder b = every_op_model(&cw, &fw);
    ASSERT_EQ(b.g->node(5).op_type(), "Constant");
    b.g->mutable_node(5)->mutable_attribute(0)->mutable_t()->set_float_data(0, 1e-39f);
    expect_error(b.bytes(), "a max in [1e-6, 1e6]");
  }
  {
    Builder b = every_op_model(&cw, &fw);
    b.g->mutable_node(10)->set_input(1, "a0");
    expect_error(b.bytes(), "broadcasting is not supported");
  }
  {
    Builder b = every_op_model(&cw, &fw);
    b.g->mutable_initializer(0)->set_data_location(onnx::TensorProto::EXTERNAL);
    expect_error(b.bytes(), "external file");
  }
  {  // opset out of range; two outputs
    Builder b(3, 8, 8, 99);
    b.node("Relu", {"x"}, "y");
    b.output("y");
    expect_error(b.bytes(), "opset 99");
  }
  {  // an output that is not logits
    Builder b;
    b.init("w", {4, 3, 3, 3});
    b.node("Conv", {"x", "w"}, "y");
    b.output("y");
    expect_error(b.bytes(), "not logits [N, classes]");
  }
}

TEST(Onnx, PackedRunnerRefusesClipByName) {
  Tensor cw, fw;
  models::OnnxImport im = every_op_model(&cw, &fw).import("onnx:clip");
  const std::string arch = models::register_graph(im.graph, "clip");
  // The quantizable convs ("g", "side") made ternary.
  for (auto& [n, t] : im.tensors)
    if (n == "g.weight" || n == "side.weight") {
      std::vector<float> v = t.to_vector<float>();
      for (float& e : v) e = e > 0.1f ? 0.5f : e < -0.1f ? -0.5f : 0.0f;
      t = Tensor::from_vector(v, t.shape());
    }
  io::Metadata meta;
  models::describe_arch(meta, arch);
  auto pc = models::pack_tensors(im.tensors, meta, arch, "clip");
  auto runner = models::PackedModel::from_tensors(pc.tensors, pc.metadata, "", Device::cpu(), "clip");
  const std::string msg = test::input_error_message([&] {
    (void)runner->forward(test::rand({1, 3, 8, 8}, 1));
  });
  EXPECT_NE(msg.find("Clip (ReLU6), which the packed runner does not run"), std::string::npos) << msg;
}

TEST(Onnx, ToolsTakeOnnxFilesAndExitTwoOnBadOnes) {
  const std::string dir = testing::TempDir() + "onnx_tools";
  std::filesystem::create_directories(dir);
  Tensor cw, fw;
  io::write_file_atomic(dir + "/net.onnx", every_op_model(&cw, &fw).bytes());
  io::write_file_atomic(dir + "/bad.onnx", std::string("\x08\x07\x12\x03xyz", 7));
  auto r = test::run_tool(test::tool_path("ttq_infer") + " --summary --model " + dir + "/net.onnx", dir);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("fc"), std::string::npos) << r.out;
  r = test::run_tool(test::tool_path("ttq_pack") + " --in " + dir + "/net.onnx --out " + dir + "/back.onnx",
                     dir);
  EXPECT_EQ(r.code, 0) << r.err;
  r = test::run_tool(test::tool_path("ttq_infer") + " --summary --model " + dir + "/bad.onnx", dir);
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(test::count_lines(r.err), 1) << r.err;
  r = test::run_tool(test::tool_path("ttq_pack") + " --in " + dir + "/bad.onnx --out " + dir + "/x.onnx",
                     dir);
  EXPECT_EQ(r.code, 2);
  EXPECT_FALSE(std::filesystem::exists(dir + "/x.onnx"));
}

// The whole command-line path on a tiny data set: ttq_train (both phases) from an
// .onnx file, then ttq_eval, ttq_pack and ttq_infer on its checkpoints with no
// --model (the checkpoint holds the graph), and the ONNX export of the packed file
// evaluating like the packed file.
TEST(Onnx, ToolsTrainQuantizePackAndExportAnOnnxNetwork) {
  const std::string dir = testing::TempDir() + "onnx_path";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  test::make_tiny_idx(dir + "/data", 48, 24);
  Tensor cw, fw;
  io::write_file_atomic(dir + "/net.onnx", every_op_model(&cw, &fw).bytes());
  const std::string data = " --data mnist:" + dir + "/data --device cpu --epochs 1 --batch 16 --workers 1";
  auto ok = [&](const std::string& cmd) {
    const auto r = test::run_tool(cmd, dir);
    EXPECT_EQ(r.code, 0) << cmd << "\n" << r.err;
    return r;
  };
  ok(test::tool_path("ttq_train") + " --model " + dir + "/net.onnx --phase fp --out " + dir + "/fp" + data);
  ok(test::tool_path("ttq_train") + " --model " + dir + "/net.onnx --phase ttq --init " + dir +
     "/fp/best.safetensors --out " + dir + "/ttq" + data);
  const io::Header h = io::read_safetensors_header(dir + "/ttq/best.safetensors");
  EXPECT_EQ(h.metadata.at("model"), "onnx:net");
  EXPECT_EQ(h.metadata.count("model_graph"), 1u);
  ok(test::tool_path("ttq_pack") + " --in " + dir + "/ttq/best.safetensors --out " + dir + "/p.safetensors");
  ok(test::tool_path("ttq_pack") + " --in " + dir + "/p.safetensors --out " + dir + "/p.onnx");
  const std::string eval =
      test::tool_path("ttq_eval") + " --data mnist:" + dir + "/data --split test --weights ";
  // The packed file has a Clip: the packed runner refuses it by name; its ONNX export runs as a float model.
  const auto packed = test::run_tool(eval + dir + "/p.safetensors", dir);
  EXPECT_EQ(packed.code, 2);
  EXPECT_NE(packed.err.find("Clip"), std::string::npos) << packed.err;
  const auto a = ok(eval + dir + "/ttq/best.safetensors");
  const auto b = ok(eval + dir + "/p.onnx");
  auto top1 = [](const std::string& out) { return out.substr(out.find("top1"), 12); };
  EXPECT_EQ(top1(a.out), top1(b.out)) << a.out << b.out;
  ok(test::tool_path("ttq_infer") + " --summary --model " + dir + "/ttq/best.safetensors");
}

}  // namespace
}  // namespace ttq

#else
TEST(Onnx, Unavailable) { GTEST_SKIP() << "this build reads no ONNX (libonnx-dev not found)"; }
#endif
