#include "train/trainer.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "engine/autograd.h"
#include "engine/cuda/runtime.h"
#include "engine/io/safetensors.h"
#include "engine/nn/layers.h"
#include "engine/ops/ops.h"
#include "engine/optim/optimizer.h"
#include "engine/optim/plateau.h"
#include "models/infer.h"
#include "models/packed.h"
#include "models/ttq.h"
#include "train/checkpoint.h"
#include "train/options.h"
#include "train/run_folder.h"

namespace fs = std::filesystem;

namespace ttq::train {

namespace {

std::atomic<int> g_stop_signal{0};

extern "C" void on_stop_signal(int sig) { g_stop_signal.store(sig); }

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::string fmt_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  int64_t t = static_cast<int64_t>(s + 0.5);
  std::ostringstream os;
  if (t >= 3600) os << t / 3600 << ":" << std::setw(2) << std::setfill('0') << (t / 60) % 60;
  else os << t / 60;
  os << ":" << std::setw(2) << std::setfill('0') << t % 60;
  return os.str();
}

// Progress: a live line on a terminal, a plain line every ~10% otherwise.
class Progress {
 public:
  Progress(std::ostream& log, bool enabled, bool tty) : m_log(log), m_enabled(enabled), m_tty(tty) {}
  void update(const std::string& head, int64_t done, int64_t total, double images_per_s, double eta_s,
              const std::string& tail) {
    if (!m_enabled) return;
    std::ostringstream os;
    os << head << " [" << done << "/" << total << "] " << std::fixed << std::setprecision(1) << images_per_s
       << " img/s, ETA " << fmt_duration(eta_s) << tail;
    if (m_tty) {
      m_log << "\r\033[K" << os.str() << std::flush;
      m_dirty = true;
    } else {
      int64_t step = std::max<int64_t>(1, total / 10);
      if (done % step == 0 || done == total) m_log << os.str() << "\n" << std::flush;
    }
  }
  void finish_line() {
    if (m_dirty) m_log << "\r\033[K" << std::flush;
    m_dirty = false;
  }

 private:
  std::ostream& m_log;
  bool m_enabled, m_tty;
  bool m_dirty = false;
};


// Options of a loader over a split: training batches are shuffled and augmented,
// validation batches are neither.
data::LoaderOptions loader_options(int64_t batch, int workers, uint64_t seed, bool training) {
  data::LoaderOptions lo;
  lo.batch_size = batch;
  lo.workers = workers;
  lo.shuffle = training;
  lo.augment = training;
  lo.seed = seed;
  return lo;
}

// The seed's early stop: with more than patience + 4 epochs, stop when the last
// top-1 does not beat the mean of the 5 epochs ending `patience` epochs ago by
// `threshold`.
bool early_stop(const std::vector<double>& acc, int patience, double threshold) {
  const int64_t n = static_cast<int64_t>(acc.size());
  if (n <= patience + 4) return false;
  double avg = 0;
  for (int k = patience; k <= patience + 4; ++k) avg += acc[n - k];
  avg /= 5.0;
  return acc[n - 1] < avg + threshold;
}

io::NamedTensors read_init_weights(const std::string& path, const std::string& arch) {
  io::Header h = io::read_safetensors_header(path);
  auto fmt = h.metadata.find("format");
  if (fmt != h.metadata.end() && fmt->second == "ttq-checkpoint") {
    CheckpointContent c = read_checkpoint(path);
    TTQ_INPUT_CHECK(c.arch == arch) << path << ": holds a " << c.arch << ", not a " << arch << " (--model)";
    return c.model_tensors;
  }
  TTQ_INPUT_CHECK(fmt == h.metadata.end() || fmt->second != "ttq-packed-2bit")
      << path << ": a packed model cannot initialise training";
  auto m = h.metadata.find("model");
  TTQ_INPUT_CHECK(m == h.metadata.end() || m->second == arch)
      << path << ": holds a " << m->second << ", not a " << arch << " (--model)";
  return io::read_safetensors(path).tensors();
}

// An epoch or a validation pass that met items but could load none of them is an
// error, not an accuracy: every item of the split was unreadable.
void check_some_loaded(double loaded, const data::Loader& loader, const std::string& data,
                       const char* split) {
  TTQ_INPUT_CHECK(loaded > 0) << data << ": no readable image in the " << split << " split ("
                              << loader.skipped_in_epoch() << " unreadable skipped)";
}

}  // namespace

void install_signal_handlers() {
  // A handler runs on the stack of whichever thread the signal interrupts, and
  // oneDNN's JIT GEMM runs on a stack of its own inside a heap block: a signal
  // arriving there wrote its frame over the heap ("corrupted size vs. prev_size"
  // at the next free). So this thread, and every thread it starts from now on
  // (OpenMP, data loaders), blocks SIGINT and SIGTERM, and one thread of our own
  // takes them with sigwait(). The handler stays for threads started before this
  // call (a BLAS library's), which keep the signals unblocked.
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  TTQ_CHECK(sigaction(SIGINT, &sa, nullptr) == 0 && sigaction(SIGTERM, &sa, nullptr) == 0) << "sigaction failed";
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  TTQ_CHECK(pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr) == 0) << "pthread_sigmask failed";
  std::thread([stop_signals] {
    for (;;) {
      int sig = 0;
      if (sigwait(&stop_signals, &sig) == 0) g_stop_signal.store(sig);
    }
  }).detach();
}
void request_stop(int signal_number) { g_stop_signal.store(signal_number); }
void clear_stop_request() { g_stop_signal.store(0); }

// JSON through nlohmann::json throughout: a non-finite number becomes null, so
// every line stays valid JSON whatever the values.
std::string EpochMetrics::json() const {
  nlohmann::ordered_json j;
  j["epoch"] = epoch;
  j["train_loss"] = train_loss;
  j["train_top1"] = train_top1;
  j["val_loss"] = val_loss;
  j["val_top1"] = val_top1;
  j["val_top5"] = val_top5;
  j["lr"] = lr;
  j["seconds"] = seconds;
  j["images_per_second"] = images_per_second;
  if (ttq) {
    j["zero_fraction"] = zero_fraction;
    j["mean_wp"] = mean_wp;
    j["mean_wn"] = mean_wn;
  }
  j["skipped"] = skipped;
  return j.dump();
}

std::string TestMetrics::json() const {
  nlohmann::ordered_json j;
  j["final"] = true;
  j["best_epoch"] = best_epoch;
  j["best_val_top1"] = best_val_top1;
  if (evaluated) {
    j["test_loss"] = loss;
    j["test_top1"] = top1;
    j["test_top5"] = top5;
    j["test_images"] = count;
  } else {
    j["test_loss"] = nullptr;
    j["test_top1"] = nullptr;
    j["test_top5"] = nullptr;
    j["test_images"] = 0;
  }
  j["test_from"] = from;
  return j.dump();
}

namespace {

// One pass of `loader` through `forward` (images moved to `device` first; logits
// may come back on any device, labels follow them).
template <typename Forward>
EvalResult evaluate_pass(Forward&& forward, data::Loader& loader, Device device,
                         const std::function<bool()>& stop = {}) {
  autograd::NoGradGuard no_grad;
  auto t0 = Clock::now();
  EvalResult r;
  double loss_sum = 0, c1 = 0, c5 = 0;
  loader.start_epoch(0, 0);
  while (true) {
    if (stop && stop()) {
      r.stopped = true;
      break;
    }
    auto b = loader.next();
    if (!b) break;
    Tensor logits = forward(b->images.to(device));
    Tensor y = b->labels.to(logits.device());
    const int64_t n = b->size();
    loss_sum += ops::cross_entropy(logits, y).item() * static_cast<double>(n);
    c1 += static_cast<double>(ops::topk_correct(logits, y, 1));
    c5 += static_cast<double>(ops::topk_correct(logits, y, std::min<int64_t>(5, logits.size(1))));
    r.count += n;
  }
  if (r.count > 0) {
    r.loss = loss_sum / r.count;
    r.top1 = c1 / r.count;
    r.top5 = c5 / r.count;
  }
  r.seconds = seconds_since(t0);
  return r;
}

}  // namespace

EvalResult evaluate(nn::Module& model, data::Loader& loader, Device device, const std::function<bool()>& stop) {
  const bool was_training = model.is_training();
  model.eval();
  EvalResult r = evaluate_pass([&](const Tensor& x) { return model(x); }, loader, device, stop);
  model.train(was_training);
  return r;
}

RunResult run_training(const TrainOptions& raw, std::ostream& log) {
  TrainOptions o = resolve_defaults(raw);  // every value given is in range
  // ---- run folder: checked (and locked for --resume / --overwrite) before
  // anything is read; nothing in it changes until every input is validated.
  RunFolder folder(o);
  if (o.resume) o = resolve_defaults(adopt_run_options(raw, folder.run_config(), folder.config_path()));
  if (!o.device.empty()) Device::parse(o.device);  // the spelling now; availability (and its log line) below
  const bool ttq_phase = o.phase == "ttq";
  const std::string last_path = folder.last_path();
  const std::string best_path = folder.best_path();

  // ---- resume: the checkpoint decides everything that shapes the run.
  CheckpointContent resume_ckpt;
  if (o.resume) {
    resume_ckpt = read_checkpoint(last_path);
    TTQ_INPUT_CHECK(resume_ckpt.arch == o.model)
        << last_path << ": holds a " << resume_ckpt.arch << " run, not " << o.model << " (--model)";
    TTQ_INPUT_CHECK(resume_ckpt.phase == o.phase)
        << last_path << ": holds a " << resume_ckpt.phase << " run, not " << o.phase << " (--phase)";
  }

  // ---- data
  data::DataSpec spec = data::parse_data_spec(o.data);
  data::Preprocess pre = data::preprocess_for(spec);
  data::SplitOptions split_options;
  split_options.val_size = o.val_size;
  data::Splits splits = data::open_data(spec, pre.image_size, split_options);
  TTQ_INPUT_CHECK(splits.train && splits.train->size() > 0) << o.data << ": no training images";
  TTQ_INPUT_CHECK(splits.val && splits.val->size() > 0) << o.data << ": no validation images";
  std::shared_ptr<const data::Dataset> train_set = splits.train, val_set = splits.val, test_set = splits.test;
  if (o.limit_train > 0) train_set = data::random_subset(train_set, o.limit_train, o.seed);
  if (o.limit_val > 0) val_set = data::random_subset(val_set, o.limit_val, o.seed + 1);
  if (test_set && o.limit_test > 0) test_set = data::random_subset(test_set, o.limit_test, o.seed + 2);
  if (o.resume) check_run_data(folder.run_config(), train_set->size(), val_set->size(), folder.config_path());

  data::Loader train_loader(train_set, pre, loader_options(o.batch, o.workers, o.seed, true));
  data::Loader val_loader(val_set, pre, loader_options(o.eval_batch, o.workers, o.seed, false));
  if (o.resume) {
    const RunState& rs = resume_ckpt.state;
    TTQ_INPUT_CHECK(rs.batch <= train_loader.batches_per_epoch())
        << last_path << ": the run stopped after batch " << rs.batch << " of an epoch, but " << o.data
        << " gives " << train_loader.batches_per_epoch() << " batches per epoch";
    // As many epochs as done: the run only redoes its final test.
    TTQ_INPUT_CHECK(rs.epoch <= o.epochs)
        << "--epochs " << o.epochs << ": the run in " << o.out << " has completed " << rs.epoch
        << " epochs already";
  }

  // ---- model
  models::ModelConfig mc;
  mc.in_channels = pre.channels;
  mc.input_size = pre.crop;
  mc.num_classes = train_set->num_classes();
  mc.dropout = o.dropout;
  nn::manual_seed(o.seed);
  models::ModelPtr model = models::create(o.model, mc, nn::global_generator());
  models::TtqModel ttq;
  if (o.resume) {
    if (ttq_phase) {
      models::TtqOptions topt = resume_ckpt.ttq;
      ttq = models::quantize_model(*model, topt);
      models::load_ttq_checkpoint(*model, ttq, resume_ckpt.model_tensors, last_path);
    } else {
      models::load_weights(*model, resume_ckpt.model_tensors, last_path);
    }
  } else {
    if (!o.init.empty()) models::load_weights(*model, read_init_weights(o.init, o.model), o.init);
    if (ttq_phase) {
      models::TtqOptions topt;
      topt.t = o.t;
      topt.wn_grad = o.wn_grad == "seed" ? kernels::WnGradMode::Seed : kernels::WnGradMode::Exact;
      topt.scale_init = models::parse_scale_init(o.scales_init);
      ttq = models::quantize_model(*model, topt);
    }
  }
  // Every input is valid: pick the device (a line on the log when it falls back to the CPU).
  const Device device = models::pick_device(o.device, log);
  model->to(device);
  model->train();

  // ---- optimiser and schedule (the seed's)
  std::unique_ptr<optim::Optimizer> opt;
  if (ttq_phase) {
    opt = models::make_ttq_optimizer(*model, ttq, o.lr, o.weight_decay);
  } else {
    // Nesterov SGD; weight decay on conv and classifier weights only.
    std::vector<Tensor> decay, no_decay;
    for (auto& [name, t] : model->named_parameters()) {
      if (!t->requires_grad()) continue;
      const bool is_weight = name.size() >= 7 && name.compare(name.size() - 7, 7, ".weight") == 0;
      (is_weight && t->dim() >= 2 ? decay : no_decay).push_back(*t);
    }
    optim::SGDOptions so;
    so.lr = o.lr;
    so.momentum = o.momentum;
    so.nesterov = o.momentum > 0;
    auto sgd = std::make_unique<optim::SGD>(so);
    sgd->add_param_group(decay).weight_decay = o.weight_decay;
    if (!no_decay.empty()) sgd->add_param_group(no_decay).weight_decay = 0;
    opt = std::move(sgd);
  }
  optim::PlateauOptions po;
  po.mode = optim::PlateauMode::Max;
  po.factor = 0.1;
  po.patience = o.plateau_patience;
  po.threshold = 0.01;
  po.threshold_mode = optim::ThresholdMode::Abs;
  optim::ReduceLROnPlateau sched(*opt, po);

  RunState st;
  if (o.resume) {
    opt->load_state(resume_ckpt.optimizer_tensors, resume_ckpt.optimizer_scalars, last_path);
    sched.load_state_scalars(resume_ckpt.scheduler_scalars, last_path);
    st = resume_ckpt.state;
    nn::global_generator().set_state(st.rng_seed, st.rng_offset);
  }

  // ---- run folder files: every input is valid, the folder may change now.
  folder.open_for_writing();
  io::Metadata extra;
  {
    nlohmann::json classes = train_set->class_names();
    extra["classes"] = classes.dump();
    extra["data"] = spec.str();
    nlohmann::json pj;
    pj["channels"] = pre.channels;
    pj["image_size"] = pre.image_size;
    pj["crop"] = pre.crop;
    pj["mean"] = std::vector<float>(pre.mean.begin(), pre.mean.begin() + pre.channels);
    pj["std"] = std::vector<float>(pre.std.begin(), pre.std.begin() + pre.channels);
    extra["preprocess"] = pj.dump();
    nlohmann::json sj;
    sj["val_size"] = splits.val_size;  // 0: the data set's own validation split
    sj["seed"] = split_options.seed;
    extra["split"] = sj.dump();
  }
  {
    nlohmann::json cj;
    cj["model"] = o.model;
    cj["data"] = spec.str();
    cj["phase"] = o.phase;
    cj["init"] = o.init;
    cj["device"] = device.str();
    cj["epochs"] = o.epochs;
    cj["batch"] = o.batch;
    cj["lr"] = o.lr;
    cj["weight_decay"] = o.weight_decay;
    cj["dropout"] = model->config().dropout;
    if (!ttq_phase) cj["momentum"] = o.momentum;
    if (ttq_phase) {
      cj["t"] = ttq.options.t;
      cj["scales_init"] = models::scale_init_name(ttq.options.scale_init);
      cj["wn_grad"] = o.wn_grad;
    }
    cj["seed"] = o.seed;
    cj["workers"] = o.workers;
    cj["limit_train"] = o.limit_train;
    cj["limit_val"] = o.limit_val;
    cj["limit_test"] = o.limit_test;
    cj["val_size"] = splits.val_size;
    cj["val_from"] = splits.val_from;
    cj["test_from"] = splits.test_from;
    cj["train_images"] = train_set->size();
    cj["val_images"] = val_set->size();
    cj["test_images"] = test_set ? test_set->size() : 0;
    cj["classes"] = train_set->num_classes();
    cj["parameters"] = model->num_parameters();
    cj["early_stop_patience"] = o.early_stop_patience;
    cj["plateau_patience"] = o.plateau_patience;
    cj["schedule"] = o.schedule;
    folder.write_config(cj.dump(2) + "\n");
  }
  folder.start_metrics(st.epoch);

  if (o.resume) log << "resuming " << o.out << " at epoch " << st.epoch + 1 << ", batch " << st.batch << "\n";
  const bool tty = isatty(STDERR_FILENO) != 0;
  Progress progress(log, o.progress, tty);
  const int64_t nb = train_loader.batches_per_epoch();
  log << o.model << " " << o.phase << " on " << device.str() << ": " << train_set->size() << " train / "
      << val_set->size() << " val / " << (test_set ? test_set->size() : 0) << " test images, "
      << train_set->num_classes() << " classes, " << nb << " batches of " << o.batch << " per epoch, "
      << model->num_parameters() << " parameters\n"
      << "validation: " << splits.val_from << "; test: " << splits.test_from << "\n";

  RunResult result;
  result.best_val_top1 = st.best_val_top1;
  result.epochs_completed = st.epoch;
  for (int64_t epoch = st.epoch; epoch < o.epochs; ++epoch) {
    const int64_t first = st.batch;
    if (o.schedule == "cosine") {
      const double lr = o.lr * 0.5 * (1.0 + std::cos(M_PI * static_cast<double>(epoch) / static_cast<double>(o.epochs)));
      for (size_t g = 0; g < opt->num_groups(); ++g) opt->set_lr(g, lr);
    }
    train_loader.start_epoch(epoch, first);
    double loss_sum = st.part_loss_sum, correct = st.part_correct, count = st.part_count;
    double seconds_before = st.part_seconds;
    // Unreadable training images of the batches before a mid-epoch resume.
    const int64_t skipped_before = st.part_skipped;
    auto t0 = Clock::now();
    // SIGINT / SIGTERM inside the epoch: last.safetensors records the first
    // `done` batches and their partial sums, so that --resume carries on exactly
    // (done == nb: stopped in the validation, which --resume then redoes).
    auto stop_inside_epoch = [&](int sig, int64_t done) {
      progress.finish_line();
      st.batch = done;
      st.part_loss_sum = loss_sum;
      st.part_correct = correct;
      st.part_count = count;
      st.part_skipped = skipped_before + train_loader.skipped_in_epoch();
      st.part_seconds = seconds_before + seconds_since(t0);
      auto g = nn::global_generator();
      st.rng_seed = g.seed();
      st.rng_offset = g.offset();
      save_checkpoint(last_path, *model, ttq_phase ? &ttq : nullptr, *opt, sched, st, extra);
      log << "stopped by signal " << sig << " at epoch " << epoch + 1
          << (done < nb ? ", batch " + std::to_string(done) : std::string(", in the validation")) << "; "
          << last_path << " written (resume with --resume)\n";
      result.exit_code = 128 + sig;
      result.epochs_completed = st.epoch;
      return result;
    };
    model->train();
    while (auto b = train_loader.next()) {
      Tensor x = b->images.to(device), y = b->labels.to(device);
      Tensor logits = (*model)(x);
      Tensor loss = ops::cross_entropy(logits, y);
      const double lv = loss.item();
      if (!std::isfinite(lv)) {
        progress.finish_line();
        TTQ_INPUT_ERROR() << "training diverged: loss is " << lv << " at epoch " << epoch + 1 << ", batch "
                          << b->index + 1 << " (lower --lr; " << last_path << " holds the last good state)";
      }
      opt->zero_grad();
      loss.backward();
      opt->step();
      st.global_step++;
      const double n = static_cast<double>(b->size());
      loss_sum += lv * n;
      correct += static_cast<double>(ops::topk_correct(logits, y, 1));
      count += n;
      const int64_t done = b->index + 1;
      const double el = seconds_since(t0);
      const double ips = (count - st.part_count) / std::max(el, 1e-9);
      std::ostringstream tail;
      tail << ", loss " << std::fixed << std::setprecision(4) << loss_sum / count << ", top1 "
           << std::setprecision(2) << 100.0 * correct / count << "%";
      progress.update("epoch " + std::to_string(epoch + 1) + "/" + std::to_string(o.epochs), done, nb, ips,
                      (nb - done) * el / std::max<int64_t>(1, done - first), tail.str());
      if (o.stop_after_steps > 0 && st.global_step == o.stop_after_steps) g_stop_signal.store(SIGINT);
      if (int sig = g_stop_signal.load(); sig != 0 && done < nb) return stop_inside_epoch(sig, done);
    }
    progress.finish_line();
    check_some_loaded(count, train_loader, o.data, "training");
    const double train_seconds = seconds_before + seconds_since(t0);
    EvalResult ev = evaluate(*model, val_loader, device, [] { return g_stop_signal.load() != 0; });
    if (ev.stopped) return stop_inside_epoch(g_stop_signal.load(), nb);
    if (!std::isfinite(ev.loss)) {
      TTQ_INPUT_ERROR() << "training diverged: validation loss is " << ev.loss << " after epoch " << epoch + 1
                        << " (lower --lr; " << last_path << " holds the last good state)";
    }
    check_some_loaded(static_cast<double>(ev.count), val_loader, o.data, "validation");

    EpochMetrics m;
    m.epoch = epoch + 1;
    m.train_loss = count > 0 ? loss_sum / count : 0;
    m.train_top1 = count > 0 ? correct / count : 0;
    m.val_loss = ev.loss;
    m.val_top1 = ev.top1;
    m.val_top5 = ev.top5;
    m.lr = opt->lr(0);
    m.seconds = train_seconds + ev.seconds;
    m.images_per_second = count / std::max(train_seconds, 1e-9);
    // The loaders count every skipped sample, also those of batches that had none left.
    m.skipped = skipped_before + train_loader.skipped_in_epoch() + val_loader.skipped_in_epoch();
    if (ttq_phase) {
      models::TtqStats ts = models::ttq_stats(ttq);
      m.ttq = true;
      m.zero_fraction = ts.zero_fraction;
      m.mean_wp = ts.mean_wp;
      m.mean_wn = ts.mean_wn;
    }
    st.val_top1_history.push_back(ev.top1);
    const bool best = ev.top1 > st.best_val_top1;
    if (best) st.best_val_top1 = ev.top1;
    result.early_stopped = early_stop(st.val_top1_history, o.early_stop_patience, o.early_stop_threshold);
    // The seed steps the schedule after the stop check.
    if (!result.early_stopped && o.schedule == "plateau") sched.step(ev.top1);

    st.epoch = epoch + 1;
    st.batch = 0;
    st.part_loss_sum = st.part_correct = st.part_count = st.part_seconds = 0;
    st.part_skipped = 0;
    {
      auto g = nn::global_generator();
      st.rng_seed = g.seed();
      st.rng_offset = g.offset();
    }
    // The metrics line first and last.safetensors last: a run stopped in
    // between resumes from the previous epoch, whose --resume drops the extra
    // line and writes best.safetensors again.
    folder.append_metrics(m.json());
    if (best) save_checkpoint(best_path, *model, ttq_phase ? &ttq : nullptr, *opt, sched, st, extra);
    save_checkpoint(last_path, *model, ttq_phase ? &ttq : nullptr, *opt, sched, st, extra);
    std::ostringstream line;
    line << std::fixed << "epoch " << m.epoch << "/" << o.epochs << ": train loss " << std::setprecision(4)
         << m.train_loss << " top1 " << std::setprecision(2) << 100 * m.train_top1 << "% | val loss "
         << std::setprecision(4) << m.val_loss << " top1 " << std::setprecision(2) << 100 * m.val_top1
         << "% top5 " << 100 * m.val_top5 << "% | lr " << std::defaultfloat << m.lr << " | " << std::fixed
         << std::setprecision(1) << m.images_per_second << " img/s, " << m.seconds << " s";
    if (m.ttq) line << " | zeros " << std::setprecision(1) << 100 * m.zero_fraction << "%";
    if (m.skipped) line << " | " << m.skipped << " images skipped";
    if (best) line << " (best)";
    log << line.str() << "\n" << std::flush;
    result.last = m;
    result.epochs_completed = st.epoch;
    result.best_val_top1 = st.best_val_top1;
    if (result.early_stopped) {
      log << "early stop: val top1 has not beaten its running mean of " << o.early_stop_patience
          << " epochs ago by " << o.early_stop_threshold << "\n";
      break;
    }
    if (int sig = g_stop_signal.load(); sig != 0) {
      log << "stopped by signal " << sig << " after epoch " << st.epoch << "; " << last_path << " written\n";
      result.exit_code = 128 + sig;
      return result;
    }
  }

  // ---- the test split, touched once: the best checkpoint's verdict.
  TestMetrics& tm = result.test;
  tm.from = splits.test_from;
  tm.best_val_top1 = st.best_val_top1;
  for (size_t e = 0; e < st.val_top1_history.size(); ++e) {
    if (tm.best_epoch == 0 || st.val_top1_history[e] > st.val_top1_history[tm.best_epoch - 1])
      tm.best_epoch = static_cast<int64_t>(e) + 1;
  }
  if (test_set) {
    CheckpointContent best = read_checkpoint(best_path);
    if (ttq_phase) {
      models::load_ttq_checkpoint(*model, ttq, best.model_tensors, best_path);
    } else {
      models::load_weights(*model, best.model_tensors, best_path);
    }
    model->to(device);
    data::Loader test_loader(test_set, pre, loader_options(o.eval_batch, o.workers, o.seed, false));
    log << "testing " << best_path << " (epoch " << tm.best_epoch << ") on " << test_set->size()
        << " test images\n" << std::flush;
    EvalResult te = evaluate(*model, test_loader, device, [] { return g_stop_signal.load() != 0; });
    if (te.stopped) {
      // Every epoch is in last.safetensors: --resume (with the same --epochs) redoes only this test.
      const int sig = g_stop_signal.load();
      log << "stopped by signal " << sig << " in the final test; " << last_path
          << " holds every epoch (--resume redoes the test)\n";
      result.exit_code = 128 + sig;
      return result;
    }
    check_some_loaded(static_cast<double>(te.count), test_loader, o.data, "test");
    tm.evaluated = true;
    tm.loss = te.loss;
    tm.top1 = te.top1;
    tm.top5 = te.top5;
    tm.count = te.count;
    log << std::fixed << std::setprecision(2) << "test (" << te.count << " images, best epoch " << tm.best_epoch
        << " by val top1 " << 100 * tm.best_val_top1 << "%): loss " << std::setprecision(4) << te.loss
        << " top1 " << std::setprecision(2) << 100 * te.top1 << "% top5 " << 100 * te.top5 << "%\n";
  } else {
    log << "no test split (" << splits.test_from << ")\n";
  }
  folder.append_metrics(tm.json());
  return result;
}

EvalReport run_eval(const EvalOptions& o, std::ostream& log) {
  TTQ_INPUT_CHECK(!o.weights.empty()) << "--weights: a checkpoint file is required";
  check_flag_range("--batch", o.batch, limits::kEvalBatch);
  if (o.limit != 0) check_flag_range("--limit", o.limit, limits::kLimit);
  if (o.val_size != kUnset) check_flag_range("--val-size", o.val_size, limits::kValSize);
  check_flag_range("--workers", static_cast<int64_t>(o.workers), limits::kWorkers);
  TTQ_INPUT_CHECK(o.split == "val" || o.split == "test" || o.split == "all")
      << "--split: expected val, test or all, got '" << o.split << "'";
  const io::Header h = io::read_safetensors_header(o.weights);
  // The CPU fallback line goes to the log once the inputs are known good, so
  // that a bad input is one line.
  std::ostringstream device_note;
  const Device device = models::pick_device(o.device, device_note);
  data::DataSpec spec = data::parse_data_spec(o.data);
  data::Preprocess pre = data::preprocess_for(spec);
  // The validation split as training formed it: its held-out size is in the
  // weights' metadata (checkpoints and packed files carry it), unless --val-size says.
  data::SplitOptions split_options;
  split_options.val_size = o.val_size;
  if (auto it = h.metadata.find("split"); it != h.metadata.end() && o.val_size < 0) {
    try {
      const auto j = nlohmann::json::parse(it->second);
      const int64_t v = j.at("val_size").get<int64_t>();
      if (v > 0) split_options.val_size = v;
      split_options.seed = j.at("seed").get<uint64_t>();
    } catch (const nlohmann::json::exception& e) {
      TTQ_INPUT_ERROR() << o.weights << ": metadata 'split' is not {\"val_size\": N, \"seed\": S}";
    }
  }
  data::Splits splits = data::open_data(spec, pre.image_size, split_options);
  std::shared_ptr<const data::Dataset> eval_set;
  EvalReport report;
  if (o.split == "val") {
    eval_set = splits.val;
    report.split = "val: " + splits.val_from;
  } else if (o.split == "test") {
    TTQ_INPUT_CHECK(splits.test) << "--split test: " << o.data << " has no test split (" << splits.test_from
                                 << ")";
    eval_set = splits.test;
    report.split = "test: " + splits.test_from;
  } else {
    eval_set = splits.all;
    report.split = "all: every image of " + spec.str();
  }
  TTQ_INPUT_CHECK(eval_set && eval_set->size() > 0) << o.data << ": no images in the " << o.split << " split";
  if (o.limit > 0) eval_set = data::random_subset(eval_set, o.limit, o.seed + 1);

  auto check_fits = [&](const models::ModelConfig& config) {
    TTQ_INPUT_CHECK(config.in_channels == pre.channels)
        << o.weights << ": the model takes " << config.in_channels << " input channels, " << o.data << " has "
        << pre.channels;
    TTQ_INPUT_CHECK(config.num_classes == eval_set->num_classes())
        << o.weights << ": the model has " << config.num_classes << " classes, " << o.data << " has "
        << eval_set->num_classes();
  };
  // Checked here so that the message names ttq_eval's flag (the loaders' name --arch).
  auto named = h.metadata.find("model");
  TTQ_INPUT_CHECK(o.model.empty() || named == h.metadata.end() || named->second == o.model)
      << o.weights << ": holds a " << named->second << ", not a " << o.model << " (--model)";
  data::Loader loader(eval_set, pre, loader_options(o.batch, o.workers, o.seed, false));
  EvalResult r;
  if (models::is_packed_file(o.weights)) {
    // The deployed artefact itself: the packed 2-bit kernels, not the float layers.
    auto packed = models::PackedModel::load(o.weights, o.model, device);
    check_fits(packed->config());
    packed->check_input(Shape{1, pre.channels, pre.crop, pre.crop}, o.data);
    log << device_note.str();
    r = evaluate_pass([&](const Tensor& x) { return packed->forward(x); }, loader, device);
  } else {
    models::ModelPtr model;
    auto fmt = h.metadata.find("format");
    if (fmt != h.metadata.end() && fmt->second == "ttq-checkpoint") {
      CheckpointContent c = read_checkpoint(o.weights);
      model = models::create(c.arch, c.config);
      models::LoadOptions lo;
      lo.ignore_ttq_state = true;
      models::load_weights(*model, c.model_tensors, o.weights, lo);
      model->to(device);
    } else {
      model = models::load_model_file(o.weights, o.model, device);
    }
    check_fits(model->config());
    log << device_note.str();
    r = evaluate(*model, loader, device);
  }
  check_some_loaded(static_cast<double>(r.count), loader, o.data, o.split.c_str());
  if (loader.skipped_in_epoch() > 0) log << loader.skipped_in_epoch() << " unreadable images skipped\n";
  report.result = r;
  return report;
}

}  // namespace ttq::train
