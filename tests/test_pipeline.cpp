// The input pipeline (data/pipeline.h, train/trainer.cpp): format detection
// from image headers, defaults and flags, --mean/--std auto against a naive
// computation, the "preprocess" metadata round trip (and older files without the
// new keys), the loader fitting data to the preprocessing, and runs end to end:
// a gray folder trains at its native size, eval reads the preprocessing back, a
// run whose config.json predates the pipeline options resumes as it was.
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "app/eval.h"
#include "data/image.h"
#include "data/loader.h"
#include "data/pipeline.h"
#include "engine/io/safetensors.h"
#include "models/model_file.h"
#include "tests/test_util.h"
#include "train/evaluate.h"
#include "train/trainer.h"

namespace fs = std::filesystem;

namespace ttq {
namespace {

using data::Image;
using data::Preprocess;

// "c3": built by appending (GCC 12 warns, wrongly, on "lit" + std::string temporaries).
std::string join(std::string a, const std::string& b) {
  a += b;
  return a;
}

struct Dir {
  fs::path path;
  explicit Dir(const std::string& name)
      : path(fs::temp_directory_path() /
             join(join("ttq_pipeline_", name), join("_", std::to_string(getpid())))) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~Dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

uint64_t fresh_seed() { return std::random_device{}(); }

// A folder data set DIR/<class>/i.png: `classes` classes of `per_class` random
// images of side x side with `channels` channels; a class-specific bright square
// so that a net can learn something. Returns the images written, by class.
std::vector<Image> make_folder(const fs::path& root, int classes, int per_class, int side, int channels,
                               uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<Image> out;
  for (int k = 0; k < classes; ++k) {
    fs::create_directories(root / join("c", std::to_string(k)));
    for (int i = 0; i < per_class; ++i) {
      Image img(side, side, channels);
      for (auto& p : img.pixels) p = static_cast<uint8_t>(rng() % 100);
      for (int y = 0; y < side / 3; ++y)
        for (int x = 0; x < side / 3; ++x)
          for (int c = 0; c < channels; ++c) img.at(y + (k % 2) * side / 2, x + (k / 2) * side / 3, c) = 230;
      data::save_image((root / join("c", std::to_string(k)) / join(std::to_string(i), ".png")).string(), img);
      out.push_back(img);
    }
  }
  return out;
}

TEST(Pipeline, DetectsGraySizeAndMixedFolders) {
  Dir d("detect");
  make_folder(d.path / "gray", 2, 3, 12, 1, fresh_seed());
  data::ImageFormat f =
      data::detect_format(data::parse_data_spec(join("folder:", (d.path / "gray").string())));
  EXPECT_EQ(f.channels, 1);
  EXPECT_EQ(f.image_size, 12);
  EXPECT_TRUE(f.uniform);
  EXPECT_EQ(f.probed, 6);

  make_folder(d.path / "rgb" / "train", 2, 2, 16, 3, fresh_seed());
  f = data::detect_format(data::parse_data_spec(join("folder:", (d.path / "rgb").string())));
  EXPECT_EQ(f.channels, 3);
  EXPECT_EQ(f.image_size, 16);
  EXPECT_TRUE(f.uniform);

  // One colour image among gray ones, and one of another size: RGB, not uniform (64).
  make_folder(d.path / "mixed", 2, 2, 20, 1, fresh_seed());
  data::save_image((d.path / "mixed" / "c0" / "x.png").string(), Image(24, 24, 3));
  f = data::detect_format(data::parse_data_spec(join("folder:", (d.path / "mixed").string())));
  EXPECT_EQ(f.channels, 3);
  EXPECT_FALSE(f.uniform);
  EXPECT_EQ(f.image_size, 64);

  f = data::detect_format(data::parse_data_spec("mnist:/nowhere"));
  EXPECT_EQ(f.channels, 1);
  EXPECT_EQ(f.image_size, 28);
}

TEST(Pipeline, DefaultsFromTheDataAndFlags) {
  Dir d("defaults");
  make_folder(d.path / "gray", 2, 2, 28, 1, fresh_seed());
  make_folder(d.path / "rgb", 2, 2, 64, 3, fresh_seed());
  const data::DataSpec gray = data::parse_data_spec(join("folder:", (d.path / "gray").string()));
  const data::DataSpec rgb = data::parse_data_spec(join("folder:", (d.path / "rgb").string()));

  data::ResolvedPreprocess r = data::resolve_preprocess({}, gray, nullptr);
  EXPECT_EQ(r.pre.channels, 1);
  EXPECT_EQ(r.pre.image_size, 28);
  EXPECT_EQ(r.pre.crop, 28);
  EXPECT_EQ(r.pre.augment, data::TrainAugment::PadCropFlip);
  EXPECT_EQ(r.pre.pad, 2);
  EXPECT_TRUE(r.auto_stats);

  // 3x64 RGB: the seed project's pipeline, as before.
  r = data::resolve_preprocess({}, rgb, nullptr);
  const Preprocess seed = Preprocess::seed_rgb();
  EXPECT_EQ(r.pre.channels, 3);
  EXPECT_EQ(r.pre.image_size, 64);
  EXPECT_EQ(r.pre.crop, 56);
  EXPECT_EQ(r.pre.augment, data::TrainAugment::Seed);
  EXPECT_EQ(r.pre.mean, seed.mean);
  EXPECT_EQ(r.pre.std, seed.std);
  EXPECT_FALSE(r.auto_stats);

  // Fashion-MNIST keeps its statistics (no files are read for IDX defaults).
  r = data::resolve_preprocess({}, data::parse_data_spec("fashion-mnist:/nowhere"), nullptr);
  EXPECT_EQ(r.pre.channels, 1);
  EXPECT_EQ(r.pre.crop, 28);
  EXPECT_EQ(r.pre.mean[0], 0.2860f);
  EXPECT_EQ(r.pre.std[0], 0.3530f);

  // Flags win.
  data::PipelineOptions o;
  o.channels = 3;
  o.image_size = 32;
  o.crop = 30;
  o.augment = "none";
  o.mean = "0.5";
  o.std = "0.1,0.2,0.3";
  r = data::resolve_preprocess(o, gray, nullptr);
  EXPECT_EQ(r.pre.channels, 3);
  EXPECT_EQ(r.pre.image_size, 32);
  EXPECT_EQ(r.pre.crop, 30);
  EXPECT_EQ(r.pre.augment, data::TrainAugment::None);
  EXPECT_EQ(r.pre.mean, (std::array<float, 3>{0.5f, 0.5f, 0.5f}));
  EXPECT_EQ(r.pre.std, (std::array<float, 3>{0.1f, 0.2f, 0.3f}));
  EXPECT_FALSE(r.auto_stats);
  EXPECT_EQ(r.stats_from, "given");

  // --init's preprocessing fills what is not given (no detection).
  Preprocess init = Preprocess::gray(20, 2);
  init.mean = {0.1f, 0.1f, 0.1f};
  r = data::resolve_preprocess({}, rgb, &init);
  EXPECT_EQ(r.pre.channels, 1);
  EXPECT_EQ(r.pre.image_size, 20);
  EXPECT_EQ(r.pre.mean[0], 0.1f);
  EXPECT_TRUE(r.detected.empty());

  data::PipelineOptions bad;
  bad.image_size = 28;
  bad.crop = 29;
  EXPECT_INPUT_ERROR_MENTIONS(data::resolve_preprocess(bad, gray, nullptr), "--crop 29");
  bad = {};
  bad.mean = "0.1,0.2";
  EXPECT_INPUT_ERROR_MENTIONS(data::resolve_preprocess(bad, gray, nullptr), "--mean");
  bad = {};
  bad.std = "0";
  EXPECT_INPUT_ERROR_MENTIONS(data::resolve_preprocess(bad, gray, nullptr), "--std");
  bad = {};
  bad.augment = "rotate";
  EXPECT_INPUT_ERROR_MENTIONS(data::resolve_preprocess(bad, gray, nullptr), "--augment");
}

TEST(Pipeline, AutoStatisticsMatchANaiveComputation) {
  Dir d("stats");
  const std::vector<Image> imgs = make_folder(d.path, 3, 4, 10, 3, fresh_seed());
  auto set = data::open_image_folder(d.path.string(), 10, nullptr, 3);
  Preprocess p = Preprocess::seed_rgb(10, 8);
  const data::ChannelStats s = data::channel_stats(*set, p, 1000, 0);
  EXPECT_EQ(s.images, 12);
  for (int c = 0; c < 3; ++c) {
    double sum = 0, sq = 0, n = 0;
    for (const Image& img : imgs)
      for (int y = 0; y < 10; ++y)
        for (int x = 0; x < 10; ++x) {
          const double v = img.at(y, x, c) / 255.0;
          sum += v;
          sq += v * v;
          n += 1;
        }
    const double mean = sum / n;
    EXPECT_NEAR(s.mean[c], mean, 1e-6) << c;
    EXPECT_NEAR(s.std[c], std::sqrt(sq / n - mean * mean), 1e-5) << c;
  }
  // A subset when asked for fewer images.
  EXPECT_EQ(data::channel_stats(*set, p, 5, 3).images, 5);
}

TEST(Pipeline, MetadataRoundTripAndOlderFiles) {
  Preprocess p = Preprocess::gray(28, 2);
  p.mean = {0.25f, 0.25f, 0.25f};
  p.std = {0.5f, 0.5f, 0.5f};
  const Preprocess q = data::parse_preprocess_json(data::preprocess_json(p), "f");
  EXPECT_EQ(q.channels, 1);
  EXPECT_EQ(q.image_size, 28);
  EXPECT_EQ(q.crop, 28);
  EXPECT_EQ(q.pad, 2);
  EXPECT_EQ(q.augment, data::TrainAugment::PadCropFlip);
  EXPECT_EQ(q.mean[0], 0.25f);
  EXPECT_EQ(q.std[0], 0.5f);
  // Written before augment and pad were recorded: what training did then.
  const Preprocess old = data::parse_preprocess_json(
      R"({"channels":3,"image_size":64,"crop":56,"mean":[0.485,0.456,0.406],"std":[0.229,0.224,0.225]})",
      "f");
  EXPECT_EQ(old.augment, data::TrainAugment::Seed);
  EXPECT_EQ(old.pad, 0);
  EXPECT_INPUT_ERROR_MENTIONS(data::parse_preprocess_json(R"({"channels":2})", "m.safetensors"),
                              "m.safetensors");
  EXPECT_INPUT_ERROR_MENTIONS(
      data::parse_preprocess_json(
          R"({"channels":1,"image_size":8,"crop":8,"mean":[0],"std":[1],"augment":"spin"})", "m.safetensors"),
      "augment");
}

TEST(Pipeline, LoaderFitsImagesToThePreprocessing) {
  Dir d("fit");
  const std::vector<Image> imgs = make_folder(d.path, 2, 3, 12, 1, fresh_seed());
  auto set = data::open_image_folder(d.path.string(), 12, nullptr, 1);  // 1x12x12 as stored
  Preprocess p = Preprocess::seed_rgb(16, 16);                          // wanted: 3x16x16, no crop
  p.augment = data::TrainAugment::None;
  data::LoaderOptions lo;
  lo.batch_size = 6;
  lo.shuffle = false;
  lo.augment = false;
  data::Loader loader(set, p, lo);
  loader.start_epoch(0);
  auto b = loader.next();
  ASSERT_TRUE(b);
  ASSERT_EQ(b->images.shape(), (Shape{6, 3, 16, 16}));
  std::vector<float> want(3 * 16 * 16);
  const std::vector<float> got = b->images.to_vector<float>();
  for (int i = 0; i < 6; ++i) {
    Image img;
    ASSERT_TRUE(set->load(b->samples[static_cast<size_t>(i)], &img));
    data::normalize_chw(data::fit_image(img, 3, 16), p, want.data());
    for (size_t k = 0; k < want.size(); ++k) ASSERT_EQ(got[i * want.size() + k], want[k]) << i << " " << k;
  }
}

train::TrainOptions folder_options(const std::string& data_dir, const std::string& out) {
  train::TrainOptions o;
  o.model = "small_densenet";
  o.data = join("folder:", data_dir);
  o.out = out;
  o.device = "cpu";
  o.epochs = 1;
  o.batch = 8;
  o.lr = 0.05;
  o.seed = fresh_seed() % 1000;
  o.workers = 1;
  o.val_size = 4;
  o.progress = false;
  o.tensorboard = false;
  return o;
}

nlohmann::json read_json(const fs::path& p) {
  std::ifstream f(p);
  return nlohmann::json::parse(f);
}

TEST(Pipeline, GrayFolderTrainsAtItsOwnSizeAndEvalReadsItBack) {
  Dir d("run");
  make_folder(d.path / "data", 4, 6, 16, 1, fresh_seed());
  std::ostringstream log;
  train::TrainOptions o = folder_options((d.path / "data").string(), (d.path / "run").string());
  train::run_training(o, log);
  const nlohmann::json cj = read_json(d.path / "run" / "config.json");
  EXPECT_EQ(cj["channels"], 1);
  EXPECT_EQ(cj["image_size"], 16);
  EXPECT_EQ(cj["crop"], 16);
  EXPECT_EQ(cj["augment"], "flip-crop");
  EXPECT_EQ(cj["mean"].size(), 1u);
  EXPECT_EQ(cj["mean_std_from"].get<std::string>().rfind("auto", 0), 0u);
  const io::Header h = io::read_safetensors_header((d.path / "run" / "best.safetensors").string());
  const Preprocess meta = data::parse_preprocess_json(h.metadata.at("preprocess"), "best");
  EXPECT_EQ(meta.channels, 1);
  EXPECT_EQ(meta.crop, 16);
  EXPECT_FLOAT_EQ(meta.mean[0], cj["mean"][0].get<float>());
  EXPECT_NE(log.str().find("input: 1x16x16"), std::string::npos) << log.str();

  // ttq_eval takes channels and sizes from the file (the folder would otherwise be read as 3x64x56).
  app::EvalOptions eo;
  eo.weights = (d.path / "run" / "best.safetensors").string();
  eo.data = o.data;
  eo.split = "all";
  eo.device = "cpu";
  std::ostringstream elog;
  const app::EvalReport rep = app::run_eval(eo, elog);
  EXPECT_EQ(rep.result.count, 24);
  // Flags override the file's preprocessing: the same numbers as evaluating by hand with it.
  eo.image_size = 20;
  eo.crop = 18;
  eo.mean = "0.4";
  eo.std = "0.2";
  const app::EvalReport over = app::run_eval(eo, elog);
  Preprocess want = meta;
  want.image_size = 20;
  want.crop = 18;
  want.mean = {0.4f, 0.4f, 0.4f};
  want.std = {0.2f, 0.2f, 0.2f};
  const data::Splits splits = data::open_data(data::parse_data_spec(o.data), 20, {}, 1);
  data::LoaderOptions lo;
  lo.batch_size = 256;
  lo.shuffle = false;
  lo.augment = false;
  data::Loader loader(splits.all, want, lo);
  models::ModelPtr model = models::load_model_file(eo.weights, "", Device::cpu());
  const train::EvalResult ref = train::evaluate(*model, loader, Device::cpu());
  EXPECT_EQ(over.result.count, ref.count);
  EXPECT_NEAR(over.result.loss, ref.loss, 1e-5 * std::max(1.0, std::abs(ref.loss)));
  EXPECT_NE(over.result.loss, rep.result.loss);
  eo.crop = 21;
  EXPECT_INPUT_ERROR_MENTIONS(app::run_eval(eo, elog), "--crop 21");

  // --resume with another --channels is refused, naming the flag.
  train::TrainOptions again = o;
  again.resume = true;
  again.epochs = 2;
  again.channels = 3;
  EXPECT_INPUT_ERROR_MENTIONS(train::run_training(again, log), "--channels");
}

TEST(Pipeline, RunWithoutPipelineKeysResumesWithItsOldPreprocessing) {
  Dir d("legacy");
  make_folder(d.path / "data", 2, 5, 12, 1, fresh_seed());
  train::TrainOptions o = folder_options((d.path / "data").string(), (d.path / "run").string());
  // What every folder run was before: 3x64 images, 56 crops, the seed's augmentation, ImageNet's statistics.
  o.channels = 3;
  o.image_size = 64;
  std::ostringstream log;
  train::run_training(o, log);
  const fs::path cfg = d.path / "run" / "config.json";
  nlohmann::json cj = read_json(cfg);
  EXPECT_EQ(cj["crop"], 56);
  EXPECT_EQ(cj["augment"], "seed");
  for (const char* k :
       {"channels", "image_size", "crop", "augment", "pad", "mean", "std", "mean_std_from", "input_detected"})
    cj.erase(k);
  std::ofstream(cfg) << cj.dump(2);
  // Detection would now say 1x12x12; the old run must go on at 3x64x56.
  train::TrainOptions resume = folder_options((d.path / "data").string(), (d.path / "run").string());
  resume.seed = o.seed;
  resume.resume = true;
  resume.epochs = 2;
  const train::RunResult r = train::run_training(resume, log);
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.epochs_completed, 2);
  EXPECT_EQ(read_json(cfg)["crop"], 56);
}

}  // namespace
}  // namespace ttq
