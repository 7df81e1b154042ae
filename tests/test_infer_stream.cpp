// ttq_infer's streaming image mode (app/infer.cpp run_image_stream): batches of
// N give the results of one batch and of each image run alone; --files-from and
// standard input; a bad file stops the run after the images before it, or is
// skipped; progress lines on long runs; JSON lines parse; and the built tool's
// peak memory does not grow with the number of files (wait4's ru_maxrss of 16
// files against 320).
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "app/infer.h"
#include "data/dataset.h"
#include "data/image.h"
#include "engine/autograd.h"
#include "engine/ops/ops.h"
#include "models/model_file.h"
#include "models/packed.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace ttq {
namespace {

struct TempDir : test::TempDir {
  TempDir() : test::TempDir("ttq_stream") {}
};

data::Image random_image(int w, int h, int c, uint64_t seed) {
  data::Image img(w, h, c);
  Generator g(seed);
  for (auto& p : img.pixels) p = static_cast<uint8_t>(g.below(256));
  return img;
}

// `n` random PNG / BMP files of assorted sizes, named dir/imgK.ext.
std::vector<std::string> write_images(const TempDir& dir, int n, uint64_t seed) {
  std::vector<std::string> paths;
  Generator g(seed);
  for (int i = 0; i < n; ++i) {
    const int side = 48 + static_cast<int>(g.below(40));
    const std::string p = dir.file("img" + std::to_string(i) + (i % 3 == 2 ? ".bmp" : ".png"));
    data::save_image(p, random_image(side, side + static_cast<int>(g.below(9)), 3, seed * 1000 + i));
    paths.push_back(p);
  }
  return paths;
}

// The seed's TTQ small DenseNet packed to 2 bits, written once per test program.
std::string packed_model(const TempDir& dir) {
  const std::string out = dir.file("small_densenet.packed.safetensors");
  if (!fs::exists(out))
    models::pack_model_file(test::seed_dir() + "/small_densenet_ttq.safetensors", out, "small_densenet");
  return out;
}

app::ImageInferOptions options(const std::string& model, std::vector<std::string> images, int64_t batch) {
  app::ImageInferOptions o;
  o.model_path = model;
  o.arch = "small_densenet";
  o.device = "cpu";
  o.images = std::move(images);
  o.batch = batch;
  o.top_k = 5;
  return o;
}

// Runs a stream and records each batch's size.
std::vector<app::ImagePrediction> stream(const app::ImageInferOptions& o, std::vector<size_t>* batches,
                                         app::StreamStats* stats = nullptr, std::ostream* log = nullptr) {
  std::vector<app::ImagePrediction> out;
  std::ostringstream sink;
  app::StreamStats s = app::run_image_stream(
      o,
      [&](const std::vector<app::ImagePrediction>& b) {
        if (batches) batches->push_back(b.size());
        out.insert(out.end(), b.begin(), b.end());
      },
      log ? *log : sink);
  if (stats) *stats = s;
  return out;
}

void expect_same(const std::vector<app::ImagePrediction>& a, const std::vector<app::ImagePrediction>& b,
                 double tol) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].path, b[i].path);
    ASSERT_EQ(a[i].classes.size(), b[i].classes.size());
    for (size_t j = 0; j < a[i].classes.size(); ++j) {
      EXPECT_NEAR(a[i].probabilities[j], b[i].probabilities[j], tol) << a[i].path << " rank " << j;
      // Ranks may swap only between classes whose probabilities tie within the tolerance.
      if (a[i].classes[j] != b[i].classes[j]) {
        const auto& p = a[i].probabilities;
        const bool tie = (j + 1 < p.size() && p[j] - p[j + 1] <= tol) || (j > 0 && p[j - 1] - p[j] <= tol);
        EXPECT_TRUE(tie) << a[i].path << " rank " << j << ": class " << a[i].classes[j] << " vs "
                         << b[i].classes[j];
      }
      EXPECT_EQ(a[i].names[j], "class " + std::to_string(a[i].classes[j]));
    }
  }
}

TEST(InferStream, BatchesGiveTheResultsOfOneBatchAndOfEachImageAlone) {
  TempDir dir;
  const std::vector<std::string> images = write_images(dir, 7, 11);
  for (const std::string& model : {packed_model(dir), test::seed_dir() + "/small_densenet_ttq.safetensors"}) {
    std::vector<size_t> batches;
    app::StreamStats stats;
    const auto streamed = stream(options(model, images, 3), &batches, &stats);
    EXPECT_EQ(batches, (std::vector<size_t>{3, 3, 1})) << model;
    EXPECT_EQ(stats.images, 7);
    EXPECT_EQ(stats.batches, 3);
    EXPECT_EQ(stats.largest_batch, 3);
    EXPECT_EQ(stats.skipped, 0);
    // One batch of all seven.
    batches.clear();
    const auto whole = stream(options(model, images, 64), &batches);
    EXPECT_EQ(batches, (std::vector<size_t>{7}));
    expect_same(streamed, whole, 1e-5);
    // Each image alone through the model, independently of the app layer.
    std::vector<app::ImagePrediction> alone;
    auto packed =
        models::is_packed_file(model) ? models::PackedModel::load(model, "", Device::cpu()) : nullptr;
    auto fp = packed ? nullptr : models::load_model_file(model, "", Device::cpu());
    const data::Preprocess pre = data::Preprocess::for_input(3, 56);
    for (const std::string& p : images) {
      autograd::NoGradGuard ng;
      const Tensor x = data::load_image_tensor(p, pre);
      const Tensor logits = packed ? packed->forward(x) : fp->forward(x);
      const std::vector<float> v = ops::softmax(logits).to_vector<float>();
      std::vector<int64_t> order(v.size());
      for (size_t c = 0; c < v.size(); ++c) order[c] = static_cast<int64_t>(c);
      std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return v[a] > v[b]; });
      app::ImagePrediction pr;
      pr.path = p;
      for (int j = 0; j < 5; ++j) {
        pr.classes.push_back(order[j]);
        pr.probabilities.push_back(v[order[j]]);
        pr.names.push_back("class " + std::to_string(order[j]));
      }
      alone.push_back(pr);
    }
    expect_same(streamed, alone, 1e-5);
  }
}

TEST(InferStream, FilesFromFollowsTheArgumentsLineByLine) {
  TempDir dir;
  const std::vector<std::string> images = write_images(dir, 5, 12);
  const std::string list = dir.file("list.txt");
  {
    std::ofstream f(list, std::ios::binary);
    f << images[1] << "\n\n" << images[2] << "\r\n" << images[3] << "\n" << images[4];  // no final newline
  }
  app::ImageInferOptions o = options(packed_model(dir), {images[0]}, 2);
  o.files_from = list;
  const auto listed = stream(o, nullptr);
  const auto direct = stream(options(packed_model(dir), images, 2), nullptr);
  expect_same(listed, direct, 0);
  // A missing list, a folder and an empty list are one-line errors naming the flag.
  std::ostringstream log;
  for (const auto& [bad, needle] : std::vector<std::pair<std::string, std::string>>{
           {dir.file("missing.txt"), "no such file"}, {dir.file(""), "not a regular file"}}) {
    o.files_from = bad;
    EXPECT_INPUT_ERROR_MENTIONS(stream(o, nullptr), "--files-from " + bad + ": " + needle);
  }
  { std::ofstream(dir.file("empty.txt")) << "\n\n"; }
  o.images.clear();
  o.files_from = dir.file("empty.txt");
  EXPECT_INPUT_ERROR_MENTIONS(stream(o, nullptr), "no image paths");
}

TEST(InferStream, ABadFileStopsAfterTheImagesBeforeItOrIsSkipped) {
  TempDir dir;
  std::vector<std::string> images = write_images(dir, 6, 13);
  const std::string bad = dir.file("bad.png");
  { std::ofstream(bad) << "not an image"; }
  images.insert(images.begin() + 3, bad);  // the 4th of 7, in the second batch of 2
  std::vector<size_t> batches;
  std::vector<app::ImagePrediction> got;
  app::ImageInferOptions o = options(packed_model(dir), images, 2);
  const std::string msg = test::input_error_message([&] {
    std::ostringstream log;
    app::run_image_stream(
        o,
        [&](const std::vector<app::ImagePrediction>& b) {
          batches.push_back(b.size());
          got.insert(got.end(), b.begin(), b.end());
        },
        log);
  });
  EXPECT_NE(msg.find(bad + ": "), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos);
  EXPECT_EQ(batches, (std::vector<size_t>{2, 1}));  // the images before the bad one, and no more
  ASSERT_EQ(got.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(got[i].path, images[i]);

  o.skip_bad = true;
  std::ostringstream log;
  app::StreamStats stats;
  const auto skipped = stream(o, &batches, &stats, &log);
  EXPECT_EQ(stats.skipped, 1);
  EXPECT_EQ(stats.images, 6);
  EXPECT_NE(log.str().find("skipping " + bad + ": "), std::string::npos) << log.str();
  EXPECT_NE(log.str().find("skipped 1"), std::string::npos) << log.str();
  std::vector<std::string> good = images;
  good.erase(good.begin() + 3);
  expect_same(skipped, stream(options(packed_model(dir), good, 6), nullptr), 1e-5);
}

TEST(InferStream, ProgressLinesWhenTheRunIsLongAndNoneWhenShort) {
  TempDir dir;
  const std::vector<std::string> images = write_images(dir, 5, 16);
  app::ImageInferOptions o = options(packed_model(dir), images, 2);
  std::ostringstream quiet;
  stream(o, nullptr, nullptr, &quiet);
  EXPECT_EQ(quiet.str(), "");  // a short run says nothing
  o.progress_seconds = 0;      // every batch counts as long
  std::ostringstream log;
  stream(o, nullptr, nullptr, &log);
  std::istringstream lines(log.str());
  std::vector<std::string> got;
  for (std::string l; std::getline(lines, l);) got.push_back(l.substr(0, l.find(" (")));
  ASSERT_EQ(got.size(), 4u) << log.str();
  EXPECT_EQ(got[0], "classified 2 images");
  EXPECT_EQ(got[1], "classified 4 images");
  EXPECT_EQ(got[2], "classified 5 images");
  EXPECT_EQ(got[3].rfind("classified 5 images in ", 0), 0u) << got[3];
}

TEST(InferStream, JsonLinesParseAndCarryEveryPrediction) {
  TempDir dir;
  const std::vector<std::string> images = write_images(dir, 3, 14);
  app::ImageInferOptions o = options(packed_model(dir), images, 2);
  o.top_k = 3;
  auto preds = stream(o, nullptr);
  preds[1].path = "bad\xff utf-8\n";  // invalid UTF-8 and a newline stay inside one line
  const std::string text = app::format_predictions_json(preds);
  std::istringstream in(text);
  std::string line;
  size_t n = 0;
  while (std::getline(in, line)) {
    ASSERT_LT(n, preds.size());
    const auto j = nlohmann::json::parse(line);
    if (n != 1) {
      EXPECT_EQ(j.at("path").get<std::string>(), preds[n].path);
    }
    ASSERT_EQ(j.at("top").size(), 3u);
    for (size_t k = 0; k < 3; ++k) {
      const auto& t = j.at("top")[k];
      EXPECT_EQ(t.at("class").get<int64_t>(), preds[n].classes[k]);
      EXPECT_EQ(t.at("name").get<std::string>(), preds[n].names[k]);
      EXPECT_EQ(t.at("description").get<std::string>(), preds[n].descriptions[k]);
      EXPECT_DOUBLE_EQ(t.at("probability").get<double>(), preds[n].probabilities[k]);
    }
    ++n;
  }
  EXPECT_EQ(n, preds.size());
}

// Runs argv with stdin from `in` and stdout / stderr to files; returns the exit
// status and the child's peak resident set (wait4).
struct Measured {
  int code = -1;
  long max_rss_kb = 0;
  std::string out, err;
};
Measured run_measured(const std::vector<std::string>& argv, const std::string& in, const TempDir& dir) {
  const std::string out = dir.file("stdout.txt"), err = dir.file("stderr.txt");
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int i = ::open(in.c_str(), O_RDONLY), o = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600),
              e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (i < 0 || o < 0 || e < 0) ::_exit(127);
    ::dup2(i, 0);
    ::dup2(o, 1);
    ::dup2(e, 2);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  Measured m;
  int status = 0;
  struct rusage ru {};
  if (pid > 0 && ::wait4(pid, &status, 0, &ru) == pid && WIFEXITED(status)) m.code = WEXITSTATUS(status);
  m.max_rss_kb = ru.ru_maxrss;
  auto slurp = [](const std::string& p) {
    std::ifstream f(p);
    return std::string(std::istreambuf_iterator<char>(f), {});
  };
  m.out = slurp(out);
  m.err = slurp(err);
  return m;
}

TEST(InferStream, ToolMemoryDoesNotGrowWithTheNumberOfFiles) {
  TempDir dir;
  const std::string model = packed_model(dir);
  // 320 files: the list names a few distinct 64x64 images many times over (decoding
  // and the forward pass run per listed path all the same).
  std::vector<std::string> distinct = write_images(dir, 8, 15);
  auto write_list = [&](const std::string& name, int n) {
    std::ofstream f(dir.file(name));
    for (int i = 0; i < n; ++i) f << distinct[i % distinct.size()] << "\n";
    return dir.file(name);
  };
  const std::string few = write_list("few.txt", 16), many = write_list("many.txt", 320);
  const std::string infer = test::tool_path("ttq_infer");
  auto run = [&](const std::string& list) {
    return run_measured(
        {infer, "--model", model, "--device", "cpu", "--batch", "8", "--json", "--files-from", "-"}, list,
        dir);
  };
  const Measured a = run(few), b = run(many);
  ASSERT_EQ(a.code, 0) << a.err;
  ASSERT_EQ(b.code, 0) << b.err;
  EXPECT_EQ(test::count_lines(a.out), 16);
  EXPECT_EQ(test::count_lines(b.out), 320);
  // Every line parses and the many-file run repeats the few-file run's lines.
  std::istringstream sa(a.out), sb(b.out);
  std::vector<std::string> la, lb;
  for (std::string l; std::getline(sa, l);) la.push_back(l);
  for (std::string l; std::getline(sb, l);) lb.push_back(l);
  for (size_t i = 0; i < lb.size(); ++i) {
    EXPECT_NO_THROW(nlohmann::json::parse(lb[i]));
    if (i < la.size()) {
      EXPECT_EQ(lb[i], la[i]) << i;
    }
  }
  // Everything held for all images at once would add ~1.7 MB per image (~500 MB here).
  EXPECT_LT(b.max_rss_kb, a.max_rss_kb + 32 * 1024)
      << "peak RSS " << a.max_rss_kb << " kB for 16 files, " << b.max_rss_kb << " kB for 320";
}

}  // namespace
}  // namespace ttq
