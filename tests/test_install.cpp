// The installed package: `cmake --install` into a fresh prefix, then
// examples/consumer configured with find_package(ttq) against that prefix alone,
// built and run on a packed and a float model (loaded from the path and from
// memory); its top class must be ttq_infer's. Also: the prefix holds the public
// header only, and libttq exports the API only.
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "data/image.h"
#include "models/packed.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace ttq {
namespace {

std::string quote(const std::string& s) { return "'" + s + "'"; }

class Install : public testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = testing::TempDir() + "ttq_install_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    m_dir = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(m_dir, ec);
  }
  std::string file(const std::string& name) const { return m_dir + "/" + name; }
  // Runs a shell command line; fails the test (with its output) when it does not exit 0.
  test::ToolRun sh(const std::string& command) {
    test::ToolRun r = test::run_tool(command, m_dir);
    EXPECT_EQ(r.code, 0) << command << "\n" << r.out << r.err;
    return r;
  }
  std::string m_dir;
};

TEST_F(Install, ConsumerBuiltAgainstThePrefixAgreesWithTtqInfer) {
  const std::string prefix = file("prefix"), build = file("consumer-build");
  const std::string cmake = quote(TTQ_CMAKE_COMMAND);
  sh(cmake + " --install " + quote(TTQ_BINARY_DIR) + " --prefix " + quote(prefix));
  ASSERT_FALSE(HasFailure());
  // Only the public header is installed; the package files are there.
  std::vector<std::string> headers;
  for (const auto& e : fs::recursive_directory_iterator(prefix + "/include"))
    if (e.is_regular_file()) headers.push_back(fs::relative(e.path(), prefix).string());
  EXPECT_EQ(headers, std::vector<std::string>{"include/ttq/ttq.h"});
  EXPECT_TRUE(fs::exists(prefix + "/lib/cmake/ttq/ttqConfig.cmake"));
  EXPECT_TRUE(fs::exists(prefix + "/lib/cmake/ttq/ttqTargets.cmake"));
  EXPECT_TRUE(fs::exists(prefix + "/bin/ttq_infer"));
  // libttq's dynamic symbols: the API's alone (the engine stays internal).
  const test::ToolRun syms = sh("nm -D --defined-only -C " + quote(prefix + "/lib/libttq.so"));
  std::istringstream lines(syms.out);
  int api = 0;
  for (std::string l; std::getline(lines, l);) {
    if (l.find(" ttq::Predictor::") != std::string::npos || l.find(" ttq::version()") != std::string::npos)
      ++api;
    else
      ADD_FAILURE() << "libttq exports " << l;
  }
  EXPECT_GT(api, 10);

  // The consumer project sees the prefix only (no build tree, no source tree includes).
  sh(cmake + " -S " + quote(std::string(TTQ_SOURCE_DIR) + "/examples/consumer") + " -B " + quote(build) +
     " -G " + quote(TTQ_CMAKE_GENERATOR) + " -DCMAKE_MAKE_PROGRAM=" + quote(TTQ_MAKE_PROGRAM) +
     " -DCMAKE_CXX_COMPILER=" + quote(TTQ_CXX_COMPILER) +
     " -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=" + quote(prefix));
  sh(cmake + " --build " + quote(build));
  ASSERT_FALSE(HasFailure());
  const std::string consumer = build + "/ttq_consumer";

  const std::string packed = file("model.packed.safetensors");
  models::pack_model_file(test::seed_dir() + "/small_densenet_ttq.safetensors", packed, "small_densenet");
  data::Image img(72, 64, 3);
  Generator g(21);
  for (auto& p : img.pixels) p = static_cast<uint8_t>(g.below(256));
  const std::string image = file("x.png");
  data::save_image(image, img);
  for (const std::string& model : {packed, test::seed_dir() + "/small_densenet_ttq.safetensors"}) {
    const test::ToolRun ref = test::run_argv(
        {test::tool_path("ttq_infer"), "--model", model, "--device", "cpu", "--json", "--top-k", "1", image});
    ASSERT_EQ(ref.code, 0) << ref.err;
    const auto top = nlohmann::json::parse(ref.out).at("top").at(0);
    for (const char* how : {"", "--memory"}) {
      std::vector<std::string> argv = {consumer};
      if (*how) argv.push_back(how);
      argv.insert(argv.end(), {model, image});
      const test::ToolRun r = test::run_argv(argv);
      ASSERT_EQ(r.code, 0) << model << " " << how << "\n" << r.err;
      std::istringstream in(r.out);
      int64_t index = -1;
      double prob = -1;
      std::string name;
      in >> index >> prob;
      std::getline(in >> std::ws, name);
      EXPECT_EQ(index, top.at("class").get<int64_t>()) << r.out;
      EXPECT_NEAR(prob, top.at("probability").get<double>(), 1e-6) << r.out;
      EXPECT_EQ(name, top.at("name").get<std::string>()) << r.out;
    }
  }
  // A missing model: one line, exit 2.
  const test::ToolRun bad = test::run_argv({consumer, file("missing.safetensors"), image});
  EXPECT_EQ(bad.code, 2);
  EXPECT_EQ(test::count_lines(bad.err), 1) << bad.err;
  EXPECT_NE(bad.err.find(file("missing.safetensors")), std::string::npos) << bad.err;
}

}  // namespace
}  // namespace ttq
