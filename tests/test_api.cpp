// The public inference API (include/ttq/ttq.h, libttq): loading from a path and
// from memory give the same model; preprocess() against the transform computed
// by hand and against the engine's; run() against the engine's model and batch N
// against N batches of 1; classify() against the softmax; bad input is
// std::invalid_argument with one line naming the file or argument.
#include <ttq/ttq.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include "data/dataset.h"
#include "data/image.h"
#include "engine/autograd.h"
#include "models/model_file.h"
#include "models/packed.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace ttq {
namespace {

const std::string kFloat = "small_densenet_ttq.safetensors";

std::string temp_path(const std::string& name) {
  return (fs::temp_directory_path() / ("ttq_api_" + std::to_string(getpid()) + "_" + name)).string();
}

std::vector<uint8_t> random_pixels(int w, int h, int c, uint64_t seed) {
  std::vector<uint8_t> px(static_cast<size_t>(w) * h * c);
  Generator g(seed);
  for (auto& p : px) p = static_cast<uint8_t>(g.below(256));
  return px;
}

std::vector<char> file_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<char>(std::istreambuf_iterator<char>(f), {});
}

// The seed's TTQ small DenseNet packed to 2 bits (once per program, removed at exit).
const std::string& packed_file() {
  static const struct Packed {
    std::string path = temp_path("packed.safetensors");
    Packed() { models::pack_model_file(test::seed_dir() + "/" + kFloat, path, "small_densenet"); }
    ~Packed() { fs::remove(path); }
  } packed;
  return packed.path;
}

std::string invalid_argument_message(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("not invalid_argument: ") + e.what();
  }
  return "no error";
}

TEST(Api, LoadFromPathAndFromMemoryGiveTheSameModel) {
  for (const std::string& path : {test::seed_dir() + "/" + kFloat, packed_file()}) {
    Predictor a = Predictor::load(path);
    const std::vector<char> bytes = file_bytes(path);
    Predictor b = Predictor::load(bytes.data(), bytes.size());
    EXPECT_EQ(a.arch(), "small_densenet");
    EXPECT_EQ(a.packed(), path == packed_file());
    EXPECT_EQ(b.packed(), a.packed());
    EXPECT_EQ(a.device(), "cpu");
    EXPECT_EQ(a.input_channels(), 3);
    EXPECT_EQ(a.input_size(), 56);
    EXPECT_EQ(a.input_floats(), 3u * 56 * 56);
    ASSERT_EQ(a.num_classes(), 200);
    ASSERT_EQ(a.class_names().size(), 200u);
    EXPECT_EQ(a.class_names()[7], "class 7");  // the seed files name no classes
    EXPECT_EQ(b.class_names(), a.class_names());
    EXPECT_EQ(b.class_descriptions(), a.class_descriptions());
    const auto x = a.preprocess(random_pixels(64, 64, 3, 1).data(), 64, 64, 3);
    EXPECT_EQ(a.run({x}), b.run({x})) << path;
  }
  EXPECT_STRNE(version(), "");
}

TEST(Api, PreprocessIsTheValidationTransformComputedByHand) {
  Predictor p = Predictor::load(packed_file());
  // 64x64 RGB: no resize; the centre 56x56 crop starts at (4, 4); ImageNet mean / std.
  const std::vector<uint8_t> px = random_pixels(64, 64, 3, 2);
  const std::vector<float> x = p.preprocess(px.data(), 64, 64, 3);
  ASSERT_EQ(x.size(), p.input_floats());
  const float mean[3] = {0.485f, 0.456f, 0.406f}, stdev[3] = {0.229f, 0.224f, 0.225f};
  double worst = 0;
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < 56; ++y)
      for (int xx = 0; xx < 56; ++xx) {
        const double v = px[(static_cast<size_t>(y + 4) * 64 + (xx + 4)) * 3 + c] / 255.0;
        worst = std::max(worst, std::abs(x[(c * 56 + y) * 56 + xx] - (v - mean[c]) / stdev[c]));
      }
  EXPECT_LT(worst, 1e-5);
  // RGBA: alpha dropped.
  std::vector<uint8_t> rgba;
  for (size_t i = 0; i < px.size(); i += 3) rgba.insert(rgba.end(), {px[i], px[i + 1], px[i + 2], 77});
  EXPECT_EQ(p.preprocess(rgba.data(), 64, 64, 4), x);
  // Encoded PNG (lossless): the same floats; another size: what ttq_infer gives for the file.
  const std::string png = temp_path("a.png");
  data::Image img(64, 64, 3);
  img.pixels = px;
  const std::vector<uint8_t> encoded = data::encode_image(img, "png");
  EXPECT_EQ(p.preprocess_encoded(encoded.data(), encoded.size()), x);
  data::Image odd(90, 70, 3);
  odd.pixels = random_pixels(90, 70, 3, 3);
  data::save_image(png, odd);
  const Tensor ref = data::load_image_tensor(png, data::Preprocess::for_input(3, 56));
  EXPECT_EQ(p.preprocess(odd.pixels.data(), 90, 70, 3), ref.to_vector<float>());
  // Grey pixels into an RGB model: replicated.
  const std::vector<uint8_t> grey = random_pixels(64, 64, 1, 4);
  std::vector<uint8_t> rgb;
  for (uint8_t g : grey) rgb.insert(rgb.end(), {g, g, g});
  EXPECT_EQ(p.preprocess(grey.data(), 64, 64, 1), p.preprocess(rgb.data(), 64, 64, 3));
  fs::remove(png);
}

TEST(Api, RunMatchesTheEngineAndBatchNIsNBatchesOfOne) {
  for (const std::string& path : {test::seed_dir() + "/" + kFloat, packed_file()}) {
    Predictor p = Predictor::load(path);
    std::vector<std::vector<float>> batch;
    for (uint64_t s = 0; s < 3; ++s) {
      const int w = 60 + static_cast<int>(s) * 7;
      batch.push_back(p.preprocess(random_pixels(w, 64, 3, 10 + s).data(), w, 64, 3));
    }
    const std::vector<float> logits = p.run(batch);
    ASSERT_EQ(logits.size(), 3u * 200);
    // The engine's own model on the same inputs.
    Tensor x = Tensor::empty({3, 3, 56, 56}, DType::F32);
    for (size_t i = 0; i < 3; ++i)
      std::copy(batch[i].begin(), batch[i].end(), x.data<float>() + i * batch[i].size());
    Tensor ref;
    {
      autograd::NoGradGuard ng;
      ref = models::is_packed_file(path) ? models::PackedModel::load(path, "", Device::cpu())->forward(x)
                                         : models::load_model_file(path, "", Device::cpu())->forward(x);
    }
    const std::vector<float> r = ref.to_vector<float>();
    double worst = 0, scale = 0;
    for (size_t i = 0; i < r.size(); ++i) {
      ASSERT_TRUE(std::isfinite(logits[i]));
      worst = std::max(worst, double(std::abs(logits[i] - r[i])));
      scale = std::max(scale, double(std::abs(r[i])));
    }
    EXPECT_LT(worst / scale, 1e-5) << path;
    for (size_t i = 0; i < 3; ++i) {
      const std::vector<float> one = p.run({batch[i]});
      for (size_t c = 0; c < 200; ++c)
        EXPECT_NEAR(one[c], logits[i * 200 + c], 1e-4 * scale) << i << " " << c;
    }
    // classify: the softmax's top classes, best first, with the file's names.
    const auto top = p.classify(batch, 200);
    ASSERT_EQ(top.size(), 3u);
    for (size_t i = 0; i < 3; ++i) {
      ASSERT_EQ(top[i].size(), 200u);
      double mx = -1e30, total = 0, sum = 0;
      for (size_t c = 0; c < 200; ++c) mx = std::max(mx, double(logits[i * 200 + c]));
      for (size_t c = 0; c < 200; ++c) total += std::exp(logits[i * 200 + c] - mx);
      for (size_t j = 0; j < 200; ++j) {
        const Class& k = top[i][j];
        EXPECT_NEAR(k.probability, std::exp(logits[i * 200 + k.index] - mx) / total, 1e-6);
        EXPECT_EQ(k.name, "class " + std::to_string(k.index));
        if (j > 0) {
          EXPECT_LE(k.probability, top[i][j - 1].probability);
        }
        sum += k.probability;
      }
      EXPECT_NEAR(sum, 1.0, 1e-4);
    }
    EXPECT_EQ(p.classify(batch, 1)[2][0].index, top[2][0].index);
    EXPECT_TRUE(p.run({}).empty());
  }
}

TEST(Api, BadInputIsInvalidArgumentNamingIt) {
  const std::string missing = temp_path("missing.safetensors");
  std::string msg = invalid_argument_message([&] { Predictor::load(missing); });
  EXPECT_NE(msg.find(missing), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  const char junk[] = "not a model at all";
  msg = invalid_argument_message([&] { Predictor::load(junk, sizeof junk); });
  EXPECT_EQ(msg.rfind("model buffer: ", 0), 0u) << msg;
  msg = invalid_argument_message([&] { Predictor::load(nullptr, 0); });
  EXPECT_EQ(msg.rfind("model buffer: ", 0), 0u) << msg;
  msg = invalid_argument_message([&] { Predictor::load(packed_file(), {"cuda:7", ""}); });
  EXPECT_NE(msg.find("--device cuda:7"), std::string::npos) << msg;

  Predictor p = Predictor::load(packed_file());
  const std::vector<uint8_t> px = random_pixels(8, 8, 3, 5);
  EXPECT_NE(invalid_argument_message([&] { p.preprocess(px.data(), 8, 8, 2); }).find("channels is 2"),
            std::string::npos);
  EXPECT_NE(invalid_argument_message([&] { p.preprocess(px.data(), 0, 8, 3); }).find("image 0x8"),
            std::string::npos);
  EXPECT_NE(invalid_argument_message([&] { p.preprocess(nullptr, 8, 8, 3); }).find("null pixels"),
            std::string::npos);
  EXPECT_NE(
      invalid_argument_message([&] { p.preprocess_encoded(junk, sizeof junk); }).find("preprocess_encoded: "),
      std::string::npos);
  msg = invalid_argument_message([&] { p.run({std::vector<float>(10)}); });
  EXPECT_NE(msg.find("batch[0] holds 10 floats"), std::string::npos) << msg;
  msg = invalid_argument_message([&] { p.classify({p.preprocess(px.data(), 8, 8, 3)}, 0); });
  EXPECT_NE(msg.find("k is 0"), std::string::npos) << msg;
}

}  // namespace
}  // namespace ttq
