// ttq_consumer: classifies one image with ttq's inference API, as a program
// outside the repository would (built against an install prefix; tests/test_install.cpp).
//   ttq_consumer [--memory] MODEL IMAGE
// loads MODEL (from its path, or with --memory from its bytes read into a
// buffer), decodes IMAGE and prints its top class:
//   <index> <probability> <name>
// Exit codes: 0 done, 2 bad input (one line on stderr).
#include <ttq/ttq.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

std::vector<char> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::invalid_argument(path + ": cannot be read");
  return std::vector<char>(std::istreambuf_iterator<char>(f), {});
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  bool memory = false;
  if (!args.empty() && args[0] == "--memory") {
    memory = true;
    args.erase(args.begin());
  }
  if (args.size() != 2) {
    std::cerr << "usage: ttq_consumer [--memory] MODEL IMAGE\n";
    return 2;
  }
  try {
    ttq::Predictor model = [&] {
      if (!memory) return ttq::Predictor::load(args[0]);
      const std::vector<char> bytes = read_file(args[0]);
      return ttq::Predictor::load(bytes.data(), bytes.size());
    }();
    const std::vector<char> image = read_file(args[1]);
    const std::vector<float> input = model.preprocess_encoded(image.data(), image.size());
    const ttq::Class top = model.classify({input}, 1).at(0).at(0);
    std::printf("%lld %.6f %s\n", static_cast<long long>(top.index), top.probability, top.name.c_str());
    return 0;
  } catch (const std::invalid_argument& e) {
    std::cerr << "ttq_consumer: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "ttq_consumer: internal error: " << e.what() << "\n";
    return 1;
  }
}
