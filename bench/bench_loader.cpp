// Data loader throughput: images/s of a whole epoch over generated 64x64 JPEGs
// (Tiny ImageNet's size and format) with the seed's full augmentation, for 1 and
// 2 worker threads, plus the single-thread cost of each stage (decode, augment,
// validation transform). Results and machine: bench/RESULTS.md, "Data loader
// throughput". Correctness of the same code: tests/test_data.cpp, test_augment.cpp.
#include <benchmark/benchmark.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>

#include "data/dataset.h"
#include "data/image.h"
#include "data/loader.h"
#include "engine/rng.h"

namespace fs = std::filesystem;
using namespace ttq;
using namespace ttq::data;

namespace {

constexpr int kImages = 2048;
constexpr int kClasses = 16;

// Photo-like content: a few smooth waves plus pixel noise, so that the JPEGs
// have the size and decoding cost of real 64x64 photos (about 2-3 KB).
Image photo_like(int seed) {
  Generator g(static_cast<uint64_t>(seed) + 1);
  double f[6];
  for (double& v : f) v = 0.05 + 0.4 * g.uniform();
  Image img(64, 64, 3);
  for (int y = 0; y < 64; ++y)
    for (int x = 0; x < 64; ++x)
      for (int c = 0; c < 3; ++c) {
        double v = 128 + 60 * std::sin(f[c] * x + f[c + 3] * y + c) + 40 * std::sin(f[5 - c] * x * y * 0.05) +
                   (static_cast<double>(g.below(41)) - 20);
        img.at(y, x, c) = static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
      }
  return img;
}

// The generated image folder, made once per process and removed at exit.
struct Corpus {
  fs::path root;
  std::shared_ptr<const Dataset> dataset;
  std::vector<uint8_t> one_jpeg;
  Corpus() {
    std::string tmpl = (fs::temp_directory_path() / "ttq_bench_loader_XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) std::abort();
    root = tmpl;
    for (int k = 0; k < kImages; ++k) {
      char name[64];
      std::snprintf(name, sizeof name, "c%02d/img_%05d.JPEG", k % kClasses, k);
      fs::create_directories((root / name).parent_path());
      save_image((root / name).string(), photo_like(k), 90);
    }
    one_jpeg = encode_image(photo_like(7), "jpg", 90);
    dataset = open_image_folder(root.string(), 64);
  }
  ~Corpus() {
    std::error_code ec;
    fs::remove_all(root, ec);
  }
};

Corpus& corpus() {
  static Corpus c;
  return c;
}

// CPU seconds used by the whole process (all threads) so far.
double process_cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         1e-6 * double(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

void BM_LoaderEpoch(benchmark::State& state) {
  Corpus& c = corpus();
  LoaderOptions o;
  o.batch_size = 128;
  o.workers = static_cast<int>(state.range(0));
  o.prefetch = 4;
  o.seed = 1;
  o.augment = true;
  Loader loader(c.dataset, Preprocess::seed_rgb(), o);
  int64_t epoch = 0, images = 0;
  double cpu0 = process_cpu_seconds();
  for (auto _ : state) {
    loader.start_epoch(epoch++);
    while (auto b = loader.next()) {
      images += b->size();
      benchmark::DoNotOptimize(b->images.raw_data());
    }
  }
  state.SetItemsProcessed(images);
  state.counters["workers"] = static_cast<double>(o.workers);
  // All threads' CPU time per image: the cost independent of what else the machine runs.
  state.counters["cpu_us_per_image"] =
      1e6 * (process_cpu_seconds() - cpu0) / double(std::max<int64_t>(images, 1));
}
BENCHMARK(BM_LoaderEpoch)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);

void BM_DecodeJpeg64(benchmark::State& state) {
  const std::vector<uint8_t>& bytes = corpus().one_jpeg;
  Image img;
  for (auto _ : state) {
    DecodeResult r = decode_image(bytes.data(), bytes.size(), 3, &img);
    benchmark::DoNotOptimize(r.ok);
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["jpeg_bytes"] = static_cast<double>(bytes.size());
}
BENCHMARK(BM_DecodeJpeg64);

void BM_SeedAugment(benchmark::State& state) {
  Image img = photo_like(3);
  Preprocess p = Preprocess::seed_rgb();
  std::vector<float> out(3 * 56 * 56);
  uint64_t i = 0;
  for (auto _ : state) {
    preprocess(img, p, true, sample_key(1, 0, i++), out.data());
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_SeedAugment);

void BM_ValidationTransform(benchmark::State& state) {
  Image img = photo_like(4);
  Preprocess p = Preprocess::seed_rgb();
  std::vector<float> out(3 * 56 * 56);
  for (auto _ : state) {
    preprocess(img, p, false, 0, out.data());
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ValidationTransform);

}  // namespace

BENCHMARK_MAIN();
