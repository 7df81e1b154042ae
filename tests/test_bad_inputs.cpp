// Every tool, every file argument, fed what is not a file: a FIFO, a directory,
// a broken symbolic link, /dev/zero and /dev/urandom. Each run must end at once
// (a `timeout` around it turns a hang into a failure) with exit code 2, one line
// on stderr naming the file, and no output file left behind. Then text from
// files that holds control characters (a model name, class names, file names):
// errors stay one line and ttq_infer's output gets no extra lines; and data
// sets that hold no usable image, one class, or IDX images of the wrong size.
// Tools: tools/*.cpp; readers: engine/io/file.h, data/, models/, train/.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/idx.h"
#include "data/image.h"
#include "engine/io/safetensors.h"
#include "models/model.h"
#include "tests/test_util.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

namespace fs = std::filesystem;

namespace ttq {
namespace {

const std::string kSeed = test::seed_dir();
const std::string kTools = std::string(TTQ_BINARY_DIR) + "/tools/";

struct TempDir : test::TempDir {
  TempDir() : test::TempDir("ttq_bad") {}
};

// Runs a built tool under `timeout`: a tool that blocks on a FIFO or reads
// /dev/zero forever exits 124 instead of hanging the test.
test::ToolRun run(const std::string& tool, const std::string& args, const TempDir& dir) {
  return test::run_tool("timeout 60 " + kTools + tool + " " + args, dir.path());
}

std::string quote(const std::string& s) { return "'" + s + "'"; }

// The tool refused with exit code 2 and exactly one line naming `needle`.
void expect_one_line_error(const test::ToolRun& r, const std::string& needle, const std::string& what) {
  EXPECT_EQ(r.code, 2) << what << "\n" << r.err;
  EXPECT_EQ(test::count_lines(r.err), 1) << what << "\n" << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << what << ": expected '" << needle << "' in: " << r.err;
  EXPECT_EQ(r.err.find("internal error"), std::string::npos) << what << "\n" << r.err;
}

// A tiny MNIST-layout folder of 28x28 images (plain images, gzipped labels).
std::string make_idx(const TempDir& dir, const std::string& name, int64_t side = 28) {
  const std::string d = dir.file(name);
  fs::create_directories(d);
  for (const char* split : {"train", "t10k"}) {
    const int64_t n = 12;
    std::vector<uint8_t> px(static_cast<size_t>(n * side * side)), lab(n);
    for (size_t i = 0; i < px.size(); ++i) px[i] = static_cast<uint8_t>(i * 37);
    for (int64_t i = 0; i < n; ++i) lab[i] = static_cast<uint8_t>(i % 10);
    data::write_idx(d + "/" + split + "-images-idx3-ubyte", {n, side, side}, px, false);
    data::write_idx(d + "/" + split + "-labels-idx1-ubyte.gz", {n}, lab, true);
  }
  return d;
}

// A model file with metadata naming the architecture.
std::string write_model(const TempDir& dir, const std::string& name, int64_t channels, int64_t classes,
                        const io::Metadata& extra = {}) {
  models::ModelConfig mc;
  mc.in_channels = channels;
  mc.input_size = channels == 1 ? 28 : 56;
  mc.num_classes = classes;
  Generator g(5);
  models::ModelPtr m = models::create("small_densenet", mc, g);
  io::Metadata meta = extra;
  meta.emplace("model", "small_densenet");
  io::write_safetensors(dir.file(name), m->state_dict(), meta);
  return dir.file(name);
}

struct NotAFile {
  std::string path;
  std::string reason;
};

// The non-files of the test, created in `dir`.
std::vector<NotAFile> not_files(const TempDir& dir) {
  const std::string fifo = dir.file("pipe.safetensors"), folder = dir.file("folder.safetensors"),
                    gone = dir.file("gone.safetensors");
  EXPECT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  fs::create_directories(folder);
  fs::create_symlink(dir.file("nowhere"), gone);
  return {{fifo, "not a regular file (a FIFO)"},
          {folder, "not a regular file (a directory)"},
          {gone, "broken symbolic link"},
          {"/dev/zero", "not a regular file (a character device)"},
          {"/dev/urandom", "not a regular file (a character device)"}};
}

// A small_densenet run on the CPU over the IDX data in `idx`, batch 6, into dir/run.
train::TrainOptions small_run(const TempDir& dir, const std::string& idx, int64_t epochs) {
  train::TrainOptions o;
  o.model = "small_densenet";
  o.data = "mnist:" + idx;
  o.out = dir.file("run");
  o.device = "cpu";
  o.epochs = epochs;
  o.batch = 6;
  o.progress = false;
  return o;
}

class BadInputs : public testing::Test {
 protected:
  void SetUp() override {
    for (const char* t : {"ttq_infer", "ttq_eval", "ttq_pack", "ttq_train"})
      ASSERT_EQ(::access((kTools + t).c_str(), X_OK), 0) << t << " is not built";
  }
  TempDir dir;
};

TEST_F(BadInputs, EveryToolRefusesFifosDevicesFoldersAndBrokenLinksAtOnce) {
  const std::string good = kSeed + "/squeezenet_fp.safetensors";
  const std::string image = dir.file("x.png");
  data::save_image(image, data::Image(64, 64, 3));
  const std::string idx = make_idx(dir, "idx");
  const std::string out = dir.file("out.safetensors");
  for (const NotAFile& b : not_files(dir)) {
    const std::string p = quote(b.path);
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"ttq_infer", "--model " + p + " --arch squeezenet --device cpu " + image},
        {"ttq_infer", "--model " + good + " --arch squeezenet --device cpu " + p},
        {"ttq_infer", "--model " + good + " --arch squeezenet --device cpu " + image + " " + p},
        {"ttq_infer", "--model " + good + " --arch squeezenet --device cpu --input-tensors " + p +
                          " --input-name input --logits-out " + out},
        {"ttq_infer", "--summary --model " + p},
        {"ttq_eval", "--weights " + p + " --data mnist:" + idx + " --device cpu"},
        {"ttq_pack", "--in " + p + " --out " + out},
        {"ttq_train", "--phase ttq --init " + p + " --data mnist:" + idx + " --out " + dir.file("run") +
                          " --device cpu --epochs 1 --quiet"},
    };
    for (const auto& [tool, args] : cases) {
      const test::ToolRun r = run(tool, args, dir);
      expect_one_line_error(r, b.path + ": " + b.reason, tool + " " + args);
      EXPECT_FALSE(fs::exists(out)) << tool << " " << args << " left an output file";
    }
  }
}

// IDX files that are FIFOs or devices (through a symbolic link) are refused, not read.
TEST_F(BadInputs, IdxFilesThatAreNotFilesAreRefused) {
  const std::string model = write_model(dir, "gray.safetensors", 1, 10);
  const std::string idx = make_idx(dir, "idx");
  const std::string images = idx + "/t10k-images-idx3-ubyte";
  fs::remove(images);
  fs::create_symlink("/dev/zero", images + ".gz");
  test::ToolRun r = run("ttq_eval", "--weights " + model + " --data mnist:" + idx + " --device cpu", dir);
  expect_one_line_error(r, "t10k-images-idx3-ubyte", "IDX symlink to /dev/zero");
  fs::remove(images + ".gz");
  ASSERT_EQ(::mkfifo(images.c_str(), 0600), 0);
  r = run("ttq_eval", "--weights " + model + " --data mnist:" + idx + " --device cpu", dir);
  expect_one_line_error(r, "t10k-images-idx3-ubyte", "IDX FIFO");
}

TEST_F(BadInputs, ControlCharactersInMetadataAndFileNamesStayOnOneLine) {
  // A model name holding a newline and an escape sequence: one error line, escaped.
  io::SafeTensors st = io::read_safetensors(kSeed + "/squeezenet_fp.safetensors");
  const std::string evil = dir.file("evil.safetensors");
  io::write_safetensors(evil, st.tensors(), {{"model", "squeeze\nnet\x1b[2J"}});
  const std::string image = dir.file("x.png");
  data::save_image(image, data::Image(64, 64, 3));
  test::ToolRun r = run("ttq_infer", "--model " + evil + " --device cpu " + image, dir);
  expect_one_line_error(r, "unknown model 'squeeze\\x0anet\\x1b[2J'", "model name");
  EXPECT_EQ(r.err.find('\x1b'), std::string::npos);
  r = run("ttq_pack", "--in " + evil + " --out " + dir.file("p.safetensors"), dir);
  expect_one_line_error(r, "squeeze\\x0anet", "ttq_pack model name");

  // Class names holding newlines, a carriage return and a C1 control: exactly one
  // line per class, nothing raw reaches the terminal.
  std::vector<std::string> classes;
  for (int k = 0; k < 10; ++k) classes.push_back("class" + std::to_string(k));
  classes[0] = "line\ninjected";
  classes[1] = "back\rspace";
  classes[2] =
      "csi\xc2\x9b"
      "31m";
  const std::string named =
      write_model(dir, "named.safetensors", 1, 10, {{"classes", nlohmann::json(classes).dump()}});
  // An image whose file name holds a newline too.
  const std::string odd = dir.file("odd\nname.png");
  data::save_image(odd, data::Image(28, 28, 1));
  r = run("ttq_infer", "--model " + named + " --device cpu --top-k 10 " + quote(odd), dir);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(test::count_lines(r.out), 1 + 10) << r.out;
  EXPECT_NE(r.out.find("odd\\x0aname.png\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("line\\x0ainjected"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("back\\x0dspace"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("csi\\xc2\\x9b31m"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find('\r'), std::string::npos);

  // A missing image whose name holds a newline: one error line.
  r = run("ttq_infer", "--model " + named + " --device cpu " + quote(dir.file("no\nsuch.png")), dir);
  expect_one_line_error(r, "no\\x0asuch.png", "missing image with a newline");
}

TEST_F(BadInputs, PreprocessMetadataThatMakesNoSenseIsAnInputError) {
  const std::string image = dir.file("g.png");
  data::save_image(image, data::Image(28, 28, 1));
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"channels":1,"image_size":28,"crop":1,"mean":[0.5],"std":[0.25]})", "preprocess crop 1"},
      {R"({"channels":1,"image_size":28,"crop":28,"mean":[0.5],"std":[0]})", "std[0] is 0"},
      {R"({"channels":1,"image_size":28,"crop":28,"mean":[1e39],"std":[0.25]})", "mean[0] is not finite"},
      {R"({"channels":1,"image_size":28,"crop":28,"mean":[0.5],"std":[-1e39]})", "std[0]"},
      {R"({"channels":1,"image_size":28,"crop":29,"mean":[0.5],"std":[0.25]})", "crop is 29"},
      {R"({"channels":1,"image_size":1000000000,"crop":28,"mean":[0.5],"std":[0.25]})", "image_size"},
      {R"({"channels":2,"image_size":28,"crop":28,"mean":[0.5,0.5],"std":[0.25,0.25]})", "channels is 2"},
      {R"({"channels":3,"image_size":28,"crop":28,"mean":[0.5,0.5,0.5],"std":[0.25,0.25,0.25]})",
       "3 channels"},
      {R"({"channels":1,"image_size":28.5,"crop":28,"mean":[0.5],"std":[0.25]})", "image_size is 28.5"},
      {R"({"channels":1,"image_size":28,"crop":28,"mean":[0.5,0.1],"std":[0.25]})", "mean and std"},
  };
  int k = 0;
  for (const auto& [json, needle] : cases) {
    const std::string f =
        write_model(dir, "p" + std::to_string(k++) + ".safetensors", 1, 10, {{"preprocess", json}});
    expect_one_line_error(run("ttq_infer", "--model " + f + " --device cpu " + image, dir), needle, json);
  }
  // A model whose first conv takes 2 channels cannot read images.
  const std::string two = write_model(dir, "two.safetensors", 2, 10);
  expect_one_line_error(run("ttq_infer", "--model " + two + " --device cpu " + image, dir),
                        "2 input channels", "2-channel model");
}

// A checkpoint whose metadata claims a config its weights do not have, or an
// absurd one: refused before any model is built (no bad_alloc).
TEST_F(BadInputs, ForgedModelConfigInACheckpointIsRefused) {
  const std::string idx = make_idx(dir, "idx");
  train::TrainOptions o = small_run(dir, idx, 1);
  std::ostringstream log;
  train::run_training(o, log);
  const std::string last = dir.file("run/last.safetensors");
  io::SafeTensors st = io::read_safetensors(last);
  for (const auto& [key, value] :
       std::vector<std::pair<std::string, std::string>>{{"num_classes", "1000000000000"},
                                                        {"num_classes", "11"},
                                                        {"in_channels", "-3"},
                                                        {"input_size", "1000000000"}}) {
    nlohmann::json cfg = nlohmann::json::parse(st.meta("model_config"));
    cfg[key] = std::stoll(value);
    io::Metadata meta = st.metadata();
    meta["model_config"] = cfg.dump();
    const std::string forged = dir.file("forged.safetensors");
    io::write_safetensors(forged, st.tensors(), meta);
    EXPECT_THROW(train::read_checkpoint(forged), InputError) << key << " " << value;
    expect_one_line_error(
        run("ttq_eval", "--weights " + forged + " --data mnist:" + idx + " --device cpu", dir), forged + ": ",
        key + " = " + value);
  }
}

// A run state that points past the end of an epoch: refused before the run folder
// is touched (it was an internal error in the loader).
TEST_F(BadInputs, ResumeFromABatchPastTheEpochIsRefusedBeforeTouchingTheRun) {
  const std::string idx = make_idx(dir, "idx");
  train::TrainOptions o = small_run(dir, idx, 2);
  o.stop_after_steps = 1;  // stops mid-epoch: last.safetensors holds batch 1
  std::ostringstream log;
  ASSERT_EQ(train::run_training(o, log).exit_code, 130) << log.str();
  train::clear_stop_request();
  const std::string last = dir.file("run/last.safetensors");
  io::SafeTensors st = io::read_safetensors(last);
  nlohmann::json state = nlohmann::json::parse(st.meta("run_state"));
  state["batch"] = 1000;
  io::Metadata meta = st.metadata();
  meta["run_state"] = state.dump();
  io::write_safetensors(last, st.tensors(), meta);
  auto slurp = [](const std::string& p) {
    std::ifstream f(p);
    return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  };
  const std::string config = slurp(dir.file("run/config.json")),
                    metrics = slurp(dir.file("run/metrics.jsonl"));
  test::ToolRun r = run("ttq_train",
                        "--data mnist:" + idx + " --out " + dir.file("run") +
                            " --device cpu --epochs 2 --batch 6 --resume --quiet",
                        dir);
  expect_one_line_error(r, last + ": the run stopped after batch 1000 of an epoch", "resume past the epoch");
  EXPECT_EQ(slurp(dir.file("run/config.json")), config);
  EXPECT_EQ(slurp(dir.file("run/metrics.jsonl")), metrics);
}

// ---- data sets ----------------------------------------------------------------------

// A folder data set of 64x64 PNGs: `good` per class in class folders a and b.
void make_folder(const std::string& root, int good) {
  for (const char* c : {"a", "b"})
    for (int k = 0; k < good; ++k) {
      fs::create_directories(fs::path(root) / c);
      data::save_image(root + "/" + c + "/" + std::to_string(k) + ".png", data::Image(64, 64, 3));
    }
}

TEST_F(BadInputs, DataWithNoReadableImageOrOneClassIsAnErrorNotAnAccuracy) {
  const std::string model = write_model(dir, "rgb2.safetensors", 3, 2);
  // Validation images that all fail to decode: exit 2 naming the data, never "100%".
  const std::string root = dir.file("data");
  make_folder(root + "/train", 2);
  for (const char* c : {"a", "b"}) {
    fs::create_directories(root + "/val/" + c);
    std::ofstream(root + "/val/" + c + "/broken.png") << "not a png";
  }
  test::ToolRun r = run("ttq_eval", "--weights " + model + " --data folder:" + root + " --device cpu", dir);
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("ttq_eval: folder:" + root + ": no readable image in the val split"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(r.out, "");
  // Training on it: the same error after the first epoch's training pass.
  r = run("ttq_train",
          "--data folder:" + root + " --out " + dir.file("run") + " --device cpu --epochs 1 --quiet", dir);
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("no readable image in the validation split"), std::string::npos) << r.err;

  // One class only.
  const std::string one = dir.file("one");
  fs::create_directories(one + "/only");
  data::save_image(one + "/only/0.png", data::Image(64, 64, 3));
  expect_one_line_error(
      run("ttq_eval", "--weights " + model + " --data folder:" + one + " --device cpu", dir),
      one + ": only one class ('only')", "one class");
}

// Every unreadable image is counted once in each epoch's "skipped" (also with
// batches of one, where a bad image leaves an empty batch that the loader passes
// over) and reported once in the whole run (also through --limit-train's subset).
TEST_F(BadInputs, TrainingCountsEachSkippedImageOncePerEpochAndReportsItOnce) {
  const std::string root = dir.file("data");
  make_folder(root + "/train", 3);
  make_folder(root + "/val", 1);
  const std::vector<std::string> bad = {root + "/train/a/x.png", root + "/train/a/y.png",
                                        root + "/train/a/z.png", root + "/train/b/w.png",
                                        root + "/val/a/v.png"};
  ASSERT_EQ(::mkfifo(bad[0].c_str(), 0600), 0);
  fs::create_directories(bad[1]);
  std::ofstream(bad[2]) << "corrupt";
  std::ofstream(bad[3]) << "corrupt";
  std::ofstream(bad[4]) << "corrupt";
  train::TrainOptions o;
  o.model = "small_densenet";
  o.data = "folder:" + root;
  o.out = dir.file("run");
  o.device = "cpu";
  o.epochs = 2;
  o.batch = 1;
  o.eval_batch = 1;
  o.limit_train = 1000;
  o.limit_val = 1000;
  o.progress = false;
  o.early_stop_patience = 100;
  std::ostringstream log;
  testing::internal::CaptureStderr();
  train::RunResult r = train::run_training(o, log);
  const std::string err = testing::internal::GetCapturedStderr();
  ASSERT_EQ(r.epochs_completed, 2) << log.str();
  std::ifstream metrics(dir.file("run/metrics.jsonl"));
  std::string line;
  int epochs = 0;
  while (std::getline(metrics, line)) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (j.contains("final")) continue;  // the test split's line (there is none here)
    EXPECT_EQ(j.at("skipped").get<int64_t>(), 5) << line;
    ++epochs;
  }
  EXPECT_EQ(epochs, 2);
  EXPECT_EQ(test::count_lines(err), 5) << err;
  for (const std::string& b : bad) {
    const size_t at = err.find("skipping " + b + ": ");
    ASSERT_NE(at, std::string::npos) << b << "\n" << err;
    EXPECT_EQ(err.find("skipping " + b + ": ", at + 1), std::string::npos) << "reported twice: " << b;
  }
}

TEST_F(BadInputs, IdxImagesOfTheWrongSizeAndGzipBombsAreInputErrors) {
  const std::string model = write_model(dir, "gray.safetensors", 1, 10);
  const std::string small = make_idx(dir, "small", 10);
  expect_one_line_error(
      run("ttq_eval", "--weights " + model + " --data mnist:" + small + " --device cpu", dir),
      "images are 10x10, expected 28x28", "10x10 IDX");
  // 4 GB of declared data behind a few bytes.
  const std::string bomb = make_idx(dir, "bomb");
  const std::vector<uint8_t> header = {0, 0, 8, 3, 0, 0, 0x10, 0, 0, 0, 0x10, 0, 0, 0, 0x10, 0};
  std::ofstream(bomb + "/t10k-images-idx3-ubyte", std::ios::binary)
      .write(reinterpret_cast<const char*>(header.data()), static_cast<std::streamsize>(header.size()));
  expect_one_line_error(
      run("ttq_eval", "--weights " + model + " --data mnist:" + bomb + " --device cpu", dir), "the limit",
      "IDX bomb");
}

}  // namespace
}  // namespace ttq
