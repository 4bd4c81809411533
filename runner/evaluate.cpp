#include "runner/evaluate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <sstream>

#include <sys/statvfs.h>

#include "consistency/sampling.h"
#include "datasets/dataset.h"
#include "datasets/npz.h"
#include "eval/classifier.h"
#include "eval/fid.h"
#include "eval/inception.h"
#include "eval/precision_recall.h"
#include "nn/atomic_file.h"
#include "runner/sha256.h"

#include "cm_revision.h"  // CM_GIT_REVISION, written at build time by runner/revision.cmake
#include "runner/progress.h"

namespace fs = std::filesystem;

namespace cm::runner {

// ---- shared with `cm sample` -----------------------------------------------------------------

Sampler choose_sampler(const RunConfig& c, const std::string& steps, const std::string& sigmas) {
  Sampler s;
  if (c.mode == "edm") {
    CM_CHECK(sigmas.empty(), "--sigmas: an EDM teacher run samples with its own Heun steps");
    s.name = "edm heun";
    s.heun_steps = c.sample.teacher_steps;
    s.nfe = 2 * s.heun_steps - 1;
    return s;
  }
  if (!sigmas.empty()) {
    s.taus = parse_numbers(sigmas, "--sigmas");
    consistency::validate_time_points(s.taus, c.noise);
  } else if (steps == "2") {
    s.taus = c.sample.two_step_taus;
  } else {
    CM_CHECK(steps == "1", "--steps ", steps, ": must be 1 or 2 (or give --sigmas)");
  }
  s.name = s.taus.empty() ? "consistency one-step" : "consistency multistep";
  s.nfe = int64_t(s.taus.size()) + 1;
  return s;
}

std::vector<int64_t> image_classes(const std::vector<uint64_t>& seeds, int64_t num_classes,
                                   std::optional<int64_t> fixed) {
  CM_CHECK(num_classes > 0, "image_classes: the network has no classes");
  std::vector<int64_t> out(seeds.size());
  for (size_t k = 0; k < seeds.size(); ++k) {
    if (fixed) {
      out[k] = *fixed;
      continue;
    }
    // splitmix64's finaliser of the seed: the bias of the modulo is below 2^-40 for any
    // class count below 2^24
    uint64_t z = seeds[k] + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    out[k] = int64_t(z % uint64_t(num_classes));
  }
  return out;
}

void check_class_choice(const LoadedNetwork& m, std::optional<int64_t> fixed, bool given) {
  const int64_t classes = m.config.network.label_dim();
  if (classes == 0) {
    CM_CHECK(!given, "--class: the model is unconditional (network.label_dim 0)");
    return;
  }
  CM_CHECK(!fixed || *fixed < classes, "--class ", *fixed, ": the model has ", classes,
           " classes (0 to ", classes - 1, ")");
}

namespace {
// The seeds of a batch as a message lists them: "3, 7, 9" and "..." after `limit`.
std::string seed_list(const std::vector<uint64_t>& seeds, size_t limit = 8) {
  std::string s;
  for (size_t i = 0; i < seeds.size() && i < limit; ++i)
    s += (i ? ", " : "") + std::to_string(seeds[i]);
  if (seeds.size() > limit) s += ", ...";
  return s;
}
}  // namespace

Tensor generate_images(const LoadedNetwork& m, const std::vector<uint64_t>& seeds, const Sampler& s,
                       Quantization q, Device dev, int64_t batch, bool allow_nonfinite,
                       const std::function<void(int64_t)>& on_batch) {
  CM_CHECK(batch > 0, "generate_images: the batch must be positive, got ", batch);
  NoGradGuard ng;
  const RunConfig& c = m.config;
  const Shape img = {c.network.in_channels(), c.network.img_resolution(),
                     c.network.img_resolution()};
  const int64_t n = int64_t(seeds.size());
  const int64_t per_image = img[0] * img[1] * img[2];
  Tensor out = empty({n, img[0], img[1], img[2]}, {.dtype = DType::u8});
  int64_t nonfinite = 0;           // values, over every batch
  std::vector<uint64_t> affected;  // seeds with a non-finite value (the first few)
  for (int64_t i = 0; i < n; i += batch) {
    const int64_t len = std::min(batch, n - i);
    const std::vector<uint64_t> part(seeds.begin() + i, seeds.begin() + i + len);
    Tensor images, labels;
    if (const int64_t classes = c.network.label_dim(); classes > 0)
      labels =
          consistency::one_hot_classes(image_classes(part, classes, s.fixed_class), classes, dev);
    if (c.mode == "edm") {
      consistency::Denoiser D(*m.net, c.network.preconditioning, c.network.noise_labels, c.noise);
      images = clamp(consistency::edm_heun_sample(
                         D, consistency::per_image_noise(part, img, 0, dev), labels, s.heun_steps),
                     -1.0, 1.0);
    } else {
      consistency::Denoiser f(*m.net, consistency::Parameterization::Consistency,
                              c.network.noise_labels, c.noise);
      images = consistency::consistency_sample(f, part, img, labels, {.taus = s.taus}, dev);
    }
    // Non-finite values before quantisation, which would turn them into black pixels.
    images = contiguous(to(to(images, DType::f32), Device::cpu()));
    float* x = static_cast<float*>(images.data_ptr());
    int64_t batch_bad = 0;
    std::vector<uint64_t> batch_seeds;
    for (int64_t k = 0; k < len; ++k) {
      int64_t bad = 0;
      for (int64_t j = 0; j < per_image; ++j) bad += !std::isfinite(x[k * per_image + j]);
      if (bad > 0) batch_seeds.push_back(part[size_t(k)]);
      batch_bad += bad;
    }
    if (batch_bad > 0) {
      CM_CHECK(allow_nonfinite, "the model produced non-finite values (NaN or Inf): ", batch_bad,
               " of ", len * per_image, " values in images of ", batch_seeds.size(), " of ", len,
               " seeds (first seeds affected: ", seed_list(batch_seeds),
               "); the weights may be diverged; see cm sample --allow-nonfinite");
      nonfinite += batch_bad;
      for (uint64_t sd : batch_seeds)
        if (affected.size() <= 8) affected.push_back(sd);
      // a defined quantisation (a cast of NaN to u8 is not): NaN and -Inf as -1, +Inf as 1
      for (int64_t j = 0; j < len * per_image; ++j)
        if (!std::isfinite(x[j])) x[j] = x[j] > 0 ? 1.0f : -1.0f;
    }
    Tensor dst = narrow(out, 0, i, len);
    copy_(dst, quantize(images, q));
    if (on_batch) on_batch(i + len);
  }
  if (nonfinite > 0) {
    std::fprintf(stderr,
                 "warning: the model produced %lld non-finite values (NaN or Inf) in the images of "
                 "seeds %s; with --allow-nonfinite they are quantised as -1 (NaN, -Inf: 0) or 1 "
                 "(+Inf: 255)\n",
                 (long long)nonfinite, seed_list(affected).c_str());
    std::fflush(stderr);
  }
  return out;
}

Tensor generate_images_on_ranks(const LoadedNetwork& m, const std::vector<uint64_t>& seeds,
                                const Sampler& s, Quantization q, Device device, int64_t batch,
                                bool allow_nonfinite, dist::Communicator& comm,
                                const std::function<void(int64_t)>& on_batch) {
  const int64_t k = comm.size();
  if (k == 1) return generate_images(m, seeds, s, q, device, batch, allow_nonfinite, on_batch);
  CM_CHECK(!device.is_cuda(), "sampling on ", k,
           " ranks runs on the CPU in this version (the GPU path is NCCL's, not built yet); "
           "drop --device or run one process");
  const int64_t n = int64_t(seeds.size());
  const int64_t share = (n + k - 1) / k;
  const int64_t begin = std::min(n, share * comm.rank()), end = std::min(n, begin + share);
  const std::vector<uint64_t> mine(seeds.begin() + begin, seeds.begin() + end);
  std::function<void(int64_t)> scaled;
  if (on_batch && comm.rank() == 0)
    scaled = [&](int64_t done) {
      on_batch(std::min(n, done * n / std::max<int64_t>(int64_t(mine.size()), 1)));
    };
  const Tensor local = generate_images(m, mine, s, q, device, batch, allow_nonfinite, scaled);
  const RunConfig& c = m.config;
  const Shape one = {c.network.in_channels(), c.network.img_resolution(),
                     c.network.img_resolution()};
  Tensor padded = zeros({share, one[0], one[1], one[2]}, {.dtype = DType::u8});
  if (end > begin) {
    Tensor head = narrow(padded, 0, 0, end - begin);
    copy_(head, local);
  }
  const Tensor all = comm.all_gather(padded);  // [k, share, C, H, W]
  return contiguous(narrow(all.reshape({k * share, one[0], one[1], one[2]}), 0, 0, n));
}

// ---- memory and disk ---------------------------------------------------------------------------

ImageFootprint image_footprint(int64_t n, int64_t channels, int64_t resolution, int64_t batch,
                               bool files) {
  const uint64_t N = uint64_t(std::max<int64_t>(n, 0)), C = uint64_t(channels),
                 R = uint64_t(resolution);
  const uint64_t image = C * R * R;
  ImageFootprint f;
  f.memory = N * image + 4 * std::min(uint64_t(std::max<int64_t>(batch, 1)), N) * image;
  if (files) {
    // a PNG: the rows with their filter bytes (stored uncompressed at worst) and ~100 bytes of
    // signature, chunks and zlib framing; the grid the same over (R + 2)-pixel cells; the .npz
    // the raw bytes and its headers; and a file system block per file at most in slack
    const uint64_t png = R * (C * R + 1) + 128 + 4096;
    const uint64_t cols = std::max<uint64_t>(1, uint64_t(std::ceil(std::sqrt(double(N)))));
    const uint64_t rows = (N + cols - 1) / cols;
    const uint64_t grid = (rows * (R + 2) + 2) * (C * (cols * (R + 2) + 2) + 1) + 128;
    f.disk = N * png + grid + N * image + 4096;
  }
  return f;
}

std::optional<uint64_t> available_memory() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  uint64_t kb = 0;
  std::string unit;
  while (in >> key >> kb >> unit)
    if (key == "MemAvailable:") return kb * 1024;
  return std::nullopt;
}

std::optional<uint64_t> available_disk(const std::string& dir) {
  std::error_code ec;
  fs::path p = fs::absolute(dir.empty() ? fs::path(".") : fs::path(dir), ec);
  if (ec) return std::nullopt;
  while (!fs::exists(p, ec) && p.has_parent_path() && p.parent_path() != p) p = p.parent_path();
  struct statvfs st {};
  if (::statvfs(p.c_str(), &st) != 0) return std::nullopt;
  return uint64_t(st.f_bavail) * uint64_t(st.f_frsize);
}

namespace {
std::string bytes_str(uint64_t b) {
  char buf[32];
  if (b >= (uint64_t(1) << 30))
    std::snprintf(buf, sizeof buf, "%.1f GiB", double(b) / double(uint64_t(1) << 30));
  else if (b >= (uint64_t(1) << 20))
    std::snprintf(buf, sizeof buf, "%.1f MiB", double(b) / double(uint64_t(1) << 20));
  else
    std::snprintf(buf, sizeof buf, "%.1f KiB", double(b) / 1024.0);
  return buf;
}
}  // namespace

void check_footprint(const std::string& what, const ImageFootprint& need,
                     std::optional<uint64_t> memory, std::optional<uint64_t> disk,
                     const std::string& dir) {
  CM_CHECK(!memory || need.memory <= *memory, what, " need about ", bytes_str(need.memory), " (",
           need.memory,
           " bytes) of memory (every u8 image is held until the end, plus a float "
           "batch), but only ",
           bytes_str(*memory), " (", *memory,
           " bytes) is available (MemAvailable, /proc/meminfo); draw fewer images (--n) or split "
           "the job over --seeds ranges");
  CM_CHECK(!disk || need.disk <= *disk, what, " need up to ", bytes_str(need.disk), " (", need.disk,
           " bytes) on disk (a PNG each, grid.png and samples.npz), but only ", bytes_str(*disk),
           " (", *disk, " bytes) is free on the file system of ", dir,
           "; free some space, choose another --out, or draw fewer images");
}

// ---- helpers ---------------------------------------------------------------------------------

namespace {

using json = nlohmann::json;

void require_file(const std::string& path, const std::string& option) {
  CM_CHECK(fs::is_regular_file(path), option, " ", path, ": no such file");
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// ---- feature statistics of the metric networks -------------------------------------------------

// Pool3 statistics (and, with `logits`, the logits) of u8 images through the FID Inception.
// The statistics of the pool3 features (FID) or, with `spatial`, of sFID's spatial features, of
// n images taken a batch at a time from rows(first, count).
eval::FidStats inception_stats(const eval::FidInceptionV3& net, int64_t n,
                               const std::function<Tensor(int64_t, int64_t)>& rows, int64_t batch,
                               std::vector<Tensor>* logits, bool spatial) {
  NoGradGuard ng;
  std::optional<eval::FeatureStats> acc;
  for (int64_t i = 0; i < n; i += batch) {
    const auto out =
        net.forward_images(rows(i, std::min(batch, n - i)), logits != nullptr, spatial);
    const Tensor& f = spatial ? out.spatial : out.pool;
    if (!acc) acc.emplace(f.size(1));
    acc->add(f);
    if (logits) logits->push_back(to(out.logits, Device::cpu()));
  }
  CM_CHECK(acc, "inception_stats: no images");
  return acc->stats();
}

eval::FidStats inception_stats(const eval::FidInceptionV3& net, const Tensor& images_u8,
                               int64_t batch, std::vector<Tensor>* logits, bool spatial = false) {
  return inception_stats(
      net, images_u8.size(0), [&](int64_t i, int64_t len) { return narrow(images_u8, 0, i, len); },
      batch, logits, spatial);
}

// Over a data set's images, read a batch at a time (a streamed data set is never whole in memory).
eval::FidStats inception_stats(const eval::FidInceptionV3& net, const data::ImageDataset& d,
                               int64_t batch, bool spatial) {
  return inception_stats(
      net, d.size(), [&](int64_t i, int64_t len) { return d.rows(i, len); }, batch, nullptr,
      spatial);
}

// The pool3 features [N, 2048] of u8 images, f32 on the CPU.
Tensor inception_features(const eval::FidInceptionV3& net, const Tensor& images_u8, int64_t batch) {
  NoGradGuard ng;
  std::vector<Tensor> parts;
  for (int64_t i = 0; i < images_u8.size(0); i += batch) {
    const int64_t len = std::min(batch, images_u8.size(0) - i);
    parts.push_back(to(to(net.forward_images(narrow(images_u8, 0, i, len), false).pool, DType::f32),
                       Device::cpu()));
  }
  return cat(parts, 0);
}

// Domain statistics files carry the classifier's SHA-256 beside mu and sigma (load_stats_npz
// reads only mu and sigma, so they are ordinary reference statistics too).
void save_domain_stats(const std::string& path, const eval::FidStats& s,
                       const std::string& classifier_sha) {
  const std::vector<uint8_t> sha(classifier_sha.begin(), classifier_sha.end());
  data::write_npz(path, {{"mu", s.mu},
                         {"sigma", s.sigma},
                         {"classifier_sha256", from_vector(sha, {int64_t(sha.size())})}});
}

std::string stats_classifier_sha(const std::string& path) {
  const auto arrays = data::read_npz(path, {"classifier_sha256"});
  if (!arrays.count("classifier_sha256")) return "";
  const std::vector<uint8_t> v = arrays.at("classifier_sha256").to_vector<uint8_t>();
  return std::string(v.begin(), v.end());
}

std::string domain_test_split(const eval::LoadedClassifier& clf, const std::string& path) {
  auto it = clf.metadata.find("test_split");
  CM_CHECK(it != clf.metadata.end(), "--classifier ", path,
           ": the classifier records no test split; give reference statistics with --ref");
  return it->second;
}

std::string cache_path_for(const std::string& classifier_path, const std::string& split) {
  fs::path p(classifier_path);
  std::string tag = split;
  std::replace(tag.begin(), tag.end(), ':', '-');
  std::replace(tag.begin(), tag.end(), '/', '-');
  return (p.parent_path() / (p.stem().string() + ".ref-" + tag + ".npz")).string();
}

void check_classifier_fits(const eval::ClassifierConfig& c, int64_t channels, int64_t resolution,
                           const std::string& path, const std::string& what) {
  CM_CHECK(c.in_channels == channels && c.resolution == resolution, "--classifier ", path,
           ": the classifier takes ", c.in_channels, "×", c.resolution, "×", c.resolution,
           " images; ", what, " has ", channels, "×", resolution, "×", resolution);
}

// The run directory a checkpoint belongs to (<run>/checkpoints/checkpoint-K.safetensors), or the
// checkpoint's folder.
fs::path run_dir_of(const fs::path& checkpoint) {
  const fs::path parent = checkpoint.parent_path();
  if (parent.filename() == "checkpoints" && fs::exists(parent.parent_path() / "config.json"))
    return parent.parent_path();
  return parent.empty() ? fs::path(".") : parent;
}

constexpr int64_t kMinFidImages = 2048;
constexpr int64_t kPrecisionRecallK = 3;  // openai's evaluator: nhood_sizes (3,)

// The argument checks of cm eval --ref-only are in runner/cli.cpp (check_eval).
int eval_ref_only(const EvalCommand& a) {
  const std::string& metric = a.metric;
  const Device dev = Device::parse(a.device);
  const int64_t batch = a.batch;
  const std::string data = *a.data, out = *a.out;
  if (metric == "fid" || metric == "sfid")
    require_file(*a.inception, "--inception");
  else
    require_file(*a.classifier, "--classifier");
  const auto t0 = std::chrono::steady_clock::now();
  const data::ImageDataset d = eval::load_split(data);
  eval::FidStats stats;
  if (metric == "fid" || metric == "sfid") {
    CM_CHECK(d.size() >= kMinFidImages, "--data ", data, ": ", d.size(), " images; ", metric,
             " reference statistics need at least ", kMinFidImages,
             " (fewer make a rank-deficient covariance and a meaningless distance)");
    const auto net = eval::load_fid_inception(*a.inception, dev);
    const bool spatial = metric == "sfid";
    stats = inception_stats(*net, d, batch, spatial);
    if (spatial)
      eval::save_stats_npz(out, stats, "mu_s", "sigma_s");  // openai's reference-batch keys
    else
      eval::save_stats_npz(out, stats);
  } else {
    const eval::LoadedClassifier clf = eval::load_classifier(*a.classifier, dev);
    check_classifier_fits(clf.net->config(), d.channels(), d.height(), *a.classifier,
                          "--data " + data);
    stats = eval::classifier_stats(*clf.net, d.rows(0, d.size()), batch);
    save_domain_stats(out, stats, sha256_file(*a.classifier));
  }
  std::printf("wrote %s: %s statistics (dim %lld) of %lld images of %s in %.1fs\n", out.c_str(),
              metric.c_str(), (long long)stats.dim(), (long long)d.size(), data.c_str(),
              seconds_since(t0));
  return 0;
}

}  // namespace

// ---- cm eval ---------------------------------------------------------------------------------

// The argument checks (combinations of options, the number of images each metric needs) are in
// runner/cli.cpp (check_eval); here, what needs the files.
int run_eval(const EvalCommand& a) {
  // Across ranks (mpirun): the samples are drawn by every rank, a share each; the statistics,
  // the metric and the record are rank 0's, on all the images, as one process computes them.
  // Statistics of real images (--data, --ref-only) draw nothing: rank 0 alone computes them.
  dist::Communicator& comm = dist::world();
  if (comm.size() > 1 && (a.ref_only || a.data) && comm.rank() != 0) return 0;
  if (a.ref_only) return eval_ref_only(a);
  // The images to score: a model's samples (RUN_DIR or CHECKPOINT) or, with --data, real images.
  const bool real = a.data.has_value();
  const std::string& metric = a.metric;
  const Device dev = dist::rank_device(Device::parse(a.device), comm, "--device");
  const int64_t batch = a.batch;
  const Quantization q = parse_quantization(a.quantize);
  const int64_t n = a.n;

  // What to evaluate and with what: check every input before the slow part.
  fs::path checkpoint;
  if (!real) {
    const std::string& source = *a.source;
    checkpoint = source;
    if (fs::is_directory(source)) checkpoint = RunDir::open(source).latest_checkpoint();
    CM_CHECK(fs::is_regular_file(checkpoint), source, ": no such checkpoint or run directory");
  }
  if (a.classifier) require_file(*a.classifier, "--classifier");
  if (a.inception) require_file(*a.inception, "--inception");
  if (a.ref) require_file(*a.ref, "--ref");

  const auto t0 = std::chrono::steady_clock::now();
  std::optional<LoadedNetwork> m;
  std::optional<Sampler> sampler;
  Tensor real_images;
  int64_t channels = 0, resolution = 0;
  std::string source_name;
  if (real) {
    const data::ImageDataset d = eval::load_split(*a.data);
    CM_CHECK(n <= d.size(), "--n ", n, ": --data ", *a.data, " has only ", d.size(), " images");
    real_images = d.rows(0, n).contiguous();
    channels = d.channels();
    resolution = d.height();
    source_name = "--data " + *a.data;
  } else {
    m = load_network(checkpoint.string(), a.weights, dev, a.allow_nonfinite);
    sampler = choose_sampler(m->config, a.steps, a.sigmas);
    check_class_choice(*m, a.class_label, a.class_given);
    sampler->fixed_class = a.class_label;
    channels = m->config.network.in_channels();
    resolution = m->config.network.img_resolution();
    source_name = "the run (" + m->config.data.dataset + ")";
    check_footprint(std::to_string(n) + " images of " + std::to_string(channels) + "×" +
                        std::to_string(resolution) + "×" + std::to_string(resolution),
                    image_footprint(n, channels, resolution, batch, false), available_memory(),
                    std::nullopt, "");
  }

  json rec = {{"metric", metric}};
  json values;
  const std::string checkpoint_sha = real ? std::string() : sha256_file(checkpoint.string());

  // The metric network and the reference, loaded before sampling so that a mismatch fails fast.
  std::optional<eval::LoadedClassifier> clf;
  std::shared_ptr<eval::FidInceptionV3> inception;
  eval::FidStats ref;
  Tensor ref_images;  // prec-recall
  json reference;
  if (metric == "domain") {
    const std::string path = *a.classifier;
    clf = eval::load_classifier(path, dev);
    check_classifier_fits(clf->net->config(), channels, resolution, path, source_name);
    const std::string clf_sha = sha256_file(path);
    json net = {{"path", fs::absolute(path).string()},
                {"sha256", clf_sha},
                {"config", json::parse(clf->net->config().to_json())}};
    for (const char* k : {"data", "test_split", "test_accuracy", "steps"})
      if (clf->metadata.count(k)) net[k] = clf->metadata.at(k);
    rec["classifier"] = net;
    std::string ref_path;
    if (a.ref) {
      ref_path = *a.ref;
      ref = eval::load_stats_npz(ref_path);
      reference["cached"] = false;
    } else {
      const std::string split = domain_test_split(*clf, path);
      ref_path = cache_path_for(path, split);
      const bool fresh = fs::exists(ref_path) && stats_classifier_sha(ref_path) == clf_sha;
      if (fresh) {
        ref = eval::load_stats_npz(ref_path);
      } else {
        const data::ImageDataset d = eval::load_split(split);
        check_classifier_fits(clf->net->config(), d.channels(), d.height(), path,
                              "its test split " + split);
        ref = eval::classifier_stats(*clf->net, d.rows(0, d.size()), batch);
        save_domain_stats(ref_path, ref, clf_sha);
        std::printf("reference statistics of %s (%lld images) cached in %s\n", split.c_str(),
                    (long long)d.size(), ref_path.c_str());
      }
      reference["data"] = split;
      reference["cached"] = fresh;
    }
    CM_CHECK(ref.dim() == clf->net->config().feature_dim, "--ref ", ref_path,
             ": statistics of dim ", ref.dim(), ", but the classifier has ",
             clf->net->config().feature_dim, " features");
    reference["path"] = fs::absolute(ref_path).string();
    reference["sha256"] = sha256_file(ref_path);
  } else {
    const std::string path = *a.inception;
    inception = eval::load_fid_inception(path, dev);
    rec["inception"] = {{"path", fs::absolute(path).string()}, {"sha256", sha256_file(path)}};
    if (metric == "fid") {
      ref = eval::load_stats_npz(*a.ref);
      CM_CHECK(ref.dim() == inception->feature_dim(), "--ref ", *a.ref, ": statistics of dim ",
               ref.dim(), ", but FID's pool3 features have ", inception->feature_dim());
      reference = {{"path", fs::absolute(*a.ref).string()}, {"sha256", sha256_file(*a.ref)}};
    } else if (metric == "sfid") {
      ref = eval::load_stats_npz(*a.ref, "mu_s", "sigma_s");
      reference = {{"path", fs::absolute(*a.ref).string()}, {"sha256", sha256_file(*a.ref)}};
    } else if (metric == "prec-recall") {
      // openai's reference batches (arr_0 u8 NHWC), read as a data set is
      const data::ImageDataset r = data::load_imagenet_npz(*a.ref);
      ref_images = r.rows(0, r.size());
      CM_CHECK(ref_images.size(0) > kPrecisionRecallK, "--ref ", *a.ref, ": ", ref_images.size(0),
               " reference images; the k-th neighbour (k = ", kPrecisionRecallK, ") needs more");
      reference = {{"path", fs::absolute(*a.ref).string()},
                   {"sha256", sha256_file(*a.ref)},
                   {"images", ref_images.size(0)}};
    }
  }

  const auto t_sample = std::chrono::steady_clock::now();
  Tensor images = real_images;
  if (!real) {
    if (comm.rank() == 0)
      std::printf("sampling %lld images (%s, NFE %lld) from %s%s\n", (long long)n,
                  sampler->name.c_str(), (long long)sampler->nfe, m->weights.c_str(),
                  comm.size() > 1 ? (" on " + std::to_string(comm.size()) + " ranks").c_str() : "");
    TerminalProgress bar(n, "images", comm.rank() == 0 && TerminalProgress::stdout_is_terminal());
    images =
        generate_images_on_ranks(*m, parse_seeds(a.seeds), *sampler, q, dev, batch,
                                 a.allow_nonfinite, comm, [&](int64_t done) { bar.update(done); });
    if (comm.rank() != 0) return 0;
  }
  const double sample_s = seconds_since(t_sample);
  const auto t_metric = std::chrono::steady_clock::now();
  double value = 0;
  if (metric == "domain") {
    value = eval::frechet_distance(eval::classifier_stats(*clf->net, images, batch), ref);
    values["domain_fd"] = value;
  } else if (metric == "fid") {
    value = eval::frechet_distance(inception_stats(*inception, images, batch, nullptr), ref);
    values["fid"] = value;
  } else if (metric == "sfid") {
    const eval::FidStats st = inception_stats(*inception, images, batch, nullptr, true);
    CM_CHECK(st.dim() == ref.dim(), "--ref ", *a.ref, ": spatial statistics of dim ", ref.dim(),
             ", but the images' spatial features have ", st.dim());
    value = eval::frechet_distance(st, ref);
    values["sfid"] = value;
  } else if (metric == "prec-recall") {
    CM_CHECK(images.size(1) == ref_images.size(1), "--ref ", *a.ref, ": reference images of ",
             ref_images.size(1), " channels, the model's have ", images.size(1));
    const eval::PrecisionRecall pr =
        eval::precision_recall(inception_features(*inception, ref_images, batch),
                               inception_features(*inception, images, batch), kPrecisionRecallK);
    value = pr.precision;  // the record's value; both are in its values
    values["precision"] = pr.precision;
    values["recall"] = pr.recall;
    values["k"] = kPrecisionRecallK;
  } else {
    std::vector<Tensor> logits;
    NoGradGuard ng;
    for (int64_t i = 0; i < n; i += batch)
      logits.push_back(
          to(inception->forward_images(narrow(images, 0, i, std::min(batch, n - i))).logits,
             Device::cpu()));
    const eval::InceptionScore is = eval::inception_score(cat(logits, 0));
    value = is.mean;
    values["is_mean"] = is.mean;
    values["is_std"] = is.std;
  }
  CM_CHECK(std::isfinite(value), "cm eval: the ", metric, " came out non-finite (", value, ")");

  rec["value"] = value;
  rec["values"] = values;
  if (!reference.is_null()) rec["reference"] = reference;
  if (real) {
    rec["source"] = "data";
    rec["data"] = *a.data;
    rec["n"] = n;
    rec["images"] = "the first " + std::to_string(n) + " images of " + *a.data;
  } else {
    const RunConfig& c = m->config;
    rec["source"] = "model";
    rec["run"] = fs::absolute(run_dir_of(checkpoint)).string();
    rec["checkpoint"] = {{"path", fs::absolute(checkpoint).string()},
                         {"sha256", checkpoint_sha},
                         {"step", m->step},
                         {"weights", m->weights}};
    rec["mode"] = c.mode;
    rec["data"] = c.data.dataset;
    rec["n"] = n;
    rec["seeds"] = a.seeds;
    rec["sampler"] = sampler->name;
    rec["time_points"] = sampler->taus;
    if (c.mode == "edm") rec["heun_steps"] = sampler->heun_steps;
    rec["nfe"] = sampler->nfe;
    rec["quantization"] = quantization_name(q);
  }
  rec["device"] = dev.str();
  rec["batch"] = batch;
  rec["date"] = utc_now();
  rec["cm_revision"] = CM_GIT_REVISION;
  rec["seconds"] = {
      {"sampling", sample_s}, {"metric", seconds_since(t_metric)}, {"total", seconds_since(t0)}};

  const fs::path out =
      a.out ? fs::path(*a.out)
            : run_dir_of(checkpoint) / ("eval-" + std::to_string(m->step) + "-" + metric + "-" +
                                        std::to_string(sampler->nfe) + "step.json");
  nn::write_atomic(out.string(), rec.dump(2) + "\n");
  if (real)
    std::printf("%s = %.6g (%lld real images of %s); wrote %s\n", metric.c_str(), value,
                (long long)n, a.data->c_str(), out.c_str());
  else
    std::printf("%s = %.6g (%lld images, %s, step %lld); wrote %s\n", metric.c_str(), value,
                (long long)n, sampler->name.c_str(), (long long)m->step, out.c_str());
  return 0;
}

// ---- cm classifier ---------------------------------------------------------------------------

int run_classifier(const ClassifierCommand& a) {
  const std::string& data = a.data;
  const eval::ClassifierConfig cfg = eval::classifier_preset(data);
  eval::ClassifierTrainOptions o;
  o.steps = a.steps > 0 ? a.steps : data == "digits" ? 2000 : 3000;
  o.batch = a.batch;
  o.lr = a.lr;
  o.seed = a.seed;
  o.device = Device::parse(a.device);
  o.log_every = std::max<int64_t>(1, o.steps / 20);
  o.log = [&](int64_t step, double loss) {
    std::printf("step %6lld/%lld  loss %.4f\n", (long long)step, (long long)o.steps, loss);
    std::fflush(stdout);
  };
  const std::string out = a.out.value_or("classifier-" + data + ".safetensors");
  const std::string train_split = data + ":train", test_split = data + ":test";
  const data::ImageDataset train = eval::load_split(train_split);
  const data::ImageDataset test = eval::load_split(test_split);
  std::printf("classifier for %s: %lld train and %lld test images; config %s\n", data.c_str(),
              (long long)train.size(), (long long)test.size(), cfg.to_json().c_str());
  const auto t0 = std::chrono::steady_clock::now();
  const auto net = eval::train_classifier(cfg, train, o);
  const double train_s = seconds_since(t0);
  const double acc = eval::classifier_accuracy(*net, test);
  char acc_s[32];
  std::snprintf(acc_s, sizeof acc_s, "%.6f", acc);
  if (fs::path(out).has_parent_path()) fs::create_directories(fs::path(out).parent_path());
  eval::save_classifier(out, *net,
                        {{"data", data},
                         {"train_split", train_split},
                         {"test_split", test_split},
                         {"train_images", std::to_string(train.size())},
                         {"test_images", std::to_string(test.size())},
                         {"test_accuracy", acc_s},
                         {"steps", std::to_string(o.steps)},
                         {"batch", std::to_string(o.batch)},
                         {"lr", json(o.lr).dump()},
                         {"seed", std::to_string(o.seed)},
                         {"date", utc_now()},
                         {"cm_revision", CM_GIT_REVISION}});
  std::printf("test accuracy %.2f%% (%lld images of %s) after %lld steps in %.0fs; wrote %s\n",
              100 * acc, (long long)test.size(), test_split.c_str(), (long long)o.steps, train_s,
              out.c_str());
  return 0;
}

// ---- from argv -------------------------------------------------------------------------------

namespace {
template <class C>
int parse_and_run(int argc, char** argv, int (*run)(const C&), const char* name) {
  const Command c = parse_command_line(argc, argv);
  if (const Help* h = std::get_if<Help>(&c)) {
    std::puts(h->text.c_str());
    return 0;
  }
  const C* command = std::get_if<C>(&c);
  CM_CHECK(command, "cmd_", name, ": argv[1] is not \"", name, "\"");
  return run(*command);
}
}  // namespace

int cmd_eval(int argc, char** argv) {
  return parse_and_run<EvalCommand>(argc, argv, run_eval, "eval");
}

int cmd_classifier(int argc, char** argv) {
  return parse_and_run<ClassifierCommand>(argc, argv, run_classifier, "classifier");
}

}  // namespace cm::runner
