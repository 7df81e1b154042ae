// ttq_infer's image mode (app/infer.cpp run_image_inference): top-k against
// the model run directly on the validation transform of the same file, class
// names from a checkpoint's metadata, and one-line errors for bad images.
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "app/infer.h"
#include "data/dataset.h"
#include "data/image.h"
#include "engine/autograd.h"
#include "engine/io/safetensors.h"
#include "engine/ops/ops.h"
#include "models/model_file.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace ttq {
namespace {

std::string temp_path(const std::string& name) {
  return (fs::temp_directory_path() / ("ttq_infer_img_" + std::to_string(getpid()) + "_" + name)).string();
}

data::Image random_image(int w, int h, int c, uint64_t seed) {
  data::Image img;
  img.width = w;
  img.height = h;
  img.channels = c;
  img.pixels.resize(static_cast<size_t>(w) * h * c);
  Generator g(seed);
  for (auto& p : img.pixels) p = static_cast<uint8_t>(g.below(256));
  return img;
}

TEST(InferImages, TopKMatchesTheModelOnTheValidationTransform) {
  const std::string model = test::seed_dir() + "/small_densenet_ttq.safetensors";
  const std::string png = temp_path("a.png"), bmp = temp_path("b.bmp");
  data::save_image(png, random_image(64, 64, 3, 1));
  data::save_image(bmp, random_image(80, 72, 3, 2));  // another size: resized as validation does
  std::ostringstream log;
  app::ImageInferOptions o;
  o.model_path = model;
  o.arch = "small_densenet";
  o.device = "cpu";
  o.images = {png, bmp};
  auto preds = app::run_image_inference(o, log);
  ASSERT_EQ(preds.size(), 2u);

  // Independent path: build the model, transform each file, softmax the logits.
  models::ModelPtr m = models::load_model_file(model, "small_densenet", Device::cpu());
  data::Preprocess pre = data::Preprocess::for_input(3, 56);
  for (size_t i = 0; i < preds.size(); ++i) {
    autograd::NoGradGuard ng;
    Tensor p = ops::softmax(m->forward(data::load_image_tensor(o.images[i], pre)));
    auto v = p.to_vector<float>();
    std::vector<int64_t> order(v.size());
    for (size_t c = 0; c < v.size(); ++c) order[c] = static_cast<int64_t>(c);
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return v[a] > v[b]; });
    ASSERT_EQ(preds[i].classes.size(), 5u);
    for (int j = 0; j < 5; ++j) {
      EXPECT_EQ(preds[i].classes[j], order[j]) << "image " << i << " rank " << j;
      EXPECT_NEAR(preds[i].probabilities[j], v[order[j]], 1e-6);
      EXPECT_EQ(preds[i].names[j], "class " + std::to_string(order[j]));  // the seed files name no classes
    }
    EXPECT_GE(preds[i].probabilities[0], preds[i].probabilities[4]);
  }
  fs::remove(png);
  fs::remove(bmp);
}

TEST(InferImages, NamesAndTransformFromMetadata) {
  // A 1-channel, 10-class model saved with the metadata ttq_train writes.
  models::ModelConfig mc;
  mc.in_channels = 1;
  mc.input_size = 28;
  mc.num_classes = 10;
  Generator g(3);
  models::ModelPtr m = models::create("small_densenet", mc, g);
  m->eval();
  const std::string ckpt = temp_path("fm.safetensors"), png = temp_path("fm.png");
  nlohmann::json classes = data::fashion_mnist_classes();
  io::write_safetensors(
      ckpt, m->state_dict(),
      {{"model", "small_densenet"},
       {"classes", classes.dump()},
       {"preprocess", R"({"channels":1,"image_size":28,"crop":28,"mean":[0.5],"std":[0.25]})"}});
  data::save_image(png, random_image(28, 28, 1, 4));
  app::ImageInferOptions o;
  o.model_path = ckpt;
  o.device = "cpu";
  o.images = {png};
  o.top_k = 10;
  std::ostringstream log;
  auto preds = app::run_image_inference(o, log);
  ASSERT_EQ(preds.size(), 1u);
  ASSERT_EQ(preds[0].classes.size(), 10u);
  double total = 0;
  for (size_t j = 0; j < 10; ++j) {
    EXPECT_EQ(preds[0].names[j], data::fashion_mnist_classes()[preds[0].classes[j]]);
    total += preds[0].probabilities[j];
  }
  EXPECT_NEAR(total, 1.0, 1e-5);
  // The metadata's mean / std are the ones used: compare with the model on that transform.
  data::Preprocess pre = data::Preprocess::gray(28, 0);
  pre.mean[0] = 0.5f;
  pre.std[0] = 0.25f;
  autograd::NoGradGuard ng;
  auto v = ops::softmax(m->forward(data::load_image_tensor(png, pre))).to_vector<float>();
  EXPECT_NEAR(preds[0].probabilities[0], *std::max_element(v.begin(), v.end()), 1e-6);
  EXPECT_NE(app::format_predictions(preds).find(data::fashion_mnist_classes()[preds[0].classes[0]]),
            std::string::npos);
  fs::remove(ckpt);
  fs::remove(png);
}

TEST(InferImages, BadImageIsOneLineNamingTheFile) {
  const std::string bad = temp_path("bad.jpg");
  { std::ofstream(bad) << "not an image"; }
  app::ImageInferOptions o;
  o.model_path = test::seed_dir() + "/squeezenet_fp.safetensors";
  o.arch = "squeezenet";
  o.device = "cpu";
  o.images = {bad};
  std::ostringstream log;
  try {
    app::run_image_inference(o, log);
    FAIL() << "expected an InputError";
  } catch (const InputError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(bad), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
  o.images = {temp_path("missing.png")};
  EXPECT_THROW(app::run_image_inference(o, log), InputError);
  fs::remove(bad);
}

}  // namespace
}  // namespace ttq
