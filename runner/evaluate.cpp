#include "runner/evaluate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>

#include "consistency/sampling.h"
#include "datasets/npz.h"
#include "eval/classifier.h"
#include "eval/fid.h"
#include "eval/inception.h"
#include "runner/sha256.h"

#include "cm_revision.h"  // CM_GIT_REVISION, written at build time by runner/revision.cmake

namespace fs = std::filesystem;

namespace cm::runner {

// ---- shared with `cm sample` -----------------------------------------------------------------

namespace {
// A whole string of decimal digits as an unsigned integer; nullopt otherwise (signs, spaces,
// trailing characters, overflow).
std::optional<uint64_t> parse_u64(const std::string& s) {
  if (s.empty() || s.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
  try {
    return std::stoull(s);
  } catch (const std::logic_error&) {
    return std::nullopt;
  }
}
}  // namespace

std::vector<uint64_t> parse_seeds(const std::string& s) {
  std::vector<uint64_t> out;
  std::stringstream ss(s);
  std::string part;
  while (std::getline(ss, part, ',')) {
    const size_t dash = part.find('-');
    const auto a = parse_u64(part.substr(0, dash));
    const auto b = dash == std::string::npos ? a : parse_u64(part.substr(dash + 1));
    CM_CHECK(a && b, "--seeds ", s, ": expected numbers and ranges like 0-63,100");
    CM_CHECK(*a <= *b, "--seeds ", s, ": range ", part, " is empty");
    CM_CHECK(*b - *a < (uint64_t(1) << 31), "--seeds ", s, ": range ", part, " is too long");
    for (uint64_t x = *a;; ++x) {
      out.push_back(x);
      if (x == *b) break;
    }
  }
  CM_CHECK(!out.empty(), "--seeds ", s, ": no seeds");
  return out;
}

std::vector<double> parse_numbers(const std::string& s, const char* what) {
  std::vector<double> out;
  std::stringstream ss(s);
  std::string part;
  while (std::getline(ss, part, ',')) {
    size_t used = 0;
    try {
      out.push_back(std::stod(part, &used));
    } catch (const std::logic_error&) {
      used = 0;
    }
    CM_CHECK(used > 0 && used == part.size(), what, " ", s, ": \"", part, "\" is not a number");
  }
  return out;
}

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

Tensor generate_images(const LoadedNetwork& m, const std::vector<uint64_t>& seeds, const Sampler& s,
                       Quantization q, Device dev, int64_t batch) {
  CM_CHECK(batch > 0, "generate_images: the batch must be positive, got ", batch);
  NoGradGuard ng;
  const RunConfig& c = m.config;
  const Shape img = {c.network.in_channels, c.network.img_resolution, c.network.img_resolution};
  std::vector<Tensor> all;
  for (size_t i = 0; i < seeds.size(); i += size_t(batch)) {
    const std::vector<uint64_t> part(
        seeds.begin() + long(i), seeds.begin() + long(std::min(seeds.size(), i + size_t(batch))));
    Tensor images;
    if (c.mode == "edm") {
      consistency::Denoiser D(*m.net, consistency::Parameterization::Edm,
                              consistency::NoiseLabels::EdmLog4, c.noise);
      images = clamp(consistency::edm_heun_sample(
                         D, consistency::per_image_noise(part, img, 0, dev), {}, s.heun_steps),
                     -1.0, 1.0);
    } else {
      consistency::Denoiser f(*m.net, consistency::Parameterization::Consistency,
                              consistency::NoiseLabels::EdmLog4, c.noise);
      images = consistency::consistency_sample(f, part, img, {}, {.taus = s.taus}, dev);
    }
    all.push_back(quantize(images, q));
  }
  if (all.empty()) return empty({0, img[0], img[1], img[2]}, {.dtype = DType::u8});
  return cat(all, 0);
}

// ---- helpers ---------------------------------------------------------------------------------

namespace {

using json = nlohmann::json;

// "--key value" options and "--flag"s of one command.
struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::string> options;
  bool has(const std::string& k) const { return options.count(k) > 0; }
  std::string get(const std::string& k, const std::string& def = "") const {
    auto it = options.find(k);
    return it == options.end() ? def : it->second;
  }
};

Args parse(int argc, char** argv, int first, const char* command,
           const std::vector<std::string>& valued, const std::vector<std::string>& flags,
           const char* usage) {
  Args a;
  for (int i = first; i < argc; ++i) {
    const std::string s = argv[i];
    if (s.rfind("--", 0) == 0) {
      const std::string k = s.substr(2);
      if (std::find(flags.begin(), flags.end(), k) != flags.end()) {
        a.options[k] = "1";
      } else if (std::find(valued.begin(), valued.end(), k) != valued.end()) {
        CM_CHECK(i + 1 < argc, command, ": option --", k, " needs a value");
        a.options[k] = argv[++i];
      } else {
        CM_FAIL(command, ": unknown option ", s, "\n", usage);
      }
    } else {
      a.positional.push_back(s);
    }
  }
  return a;
}

int64_t positive_int(const Args& a, const std::string& key, int64_t def) {
  if (!a.has(key)) return def;
  const std::string v = a.get(key);
  size_t used = 0;
  int64_t x = 0;
  try {
    x = std::stoll(v, &used);
  } catch (const std::logic_error&) {
    used = 0;
  }
  CM_CHECK(used > 0 && used == v.size() && x > 0, "--", key, " ", v,
           ": expected a positive integer");
  return x;
}

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
eval::FidStats inception_stats(const eval::FidInceptionV3& net, const Tensor& images_u8,
                               int64_t batch, std::vector<Tensor>* logits) {
  NoGradGuard ng;
  eval::FeatureStats acc(net.feature_dim());
  for (int64_t i = 0; i < images_u8.size(0); i += batch) {
    const int64_t len = std::min(batch, images_u8.size(0) - i);
    const auto out = net.forward_images(narrow(images_u8, 0, i, len), logits != nullptr);
    acc.add(out.pool);
    if (logits) logits->push_back(to(out.logits, Device::cpu()));
  }
  return acc.stats();
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

const char* kEvalUsage =
    "usage:\n"
    "  cm eval RUN_DIR|CHECKPOINT [--metric domain|fid|is] [--n N | --seeds A-B] [--steps 1|2 | "
    "--sigmas s1,...]\n"
    "          [--weights ema|ema:RATE|online|target] [--quantize floor|round] [--classifier "
    "PATH]\n"
    "          [--inception PATH] [--ref STATS.npz] [--device D] [--batch B] [--out FILE]\n"
    "  cm eval --data SPEC [--n N] [--metric ...] ...   the same metric of the first N real images "
    "of SPEC\n"
    "          (the floor a model is measured against), written to --out\n"
    "  cm eval --ref-only --data SPEC --out STATS.npz [--metric fid|domain] [--inception PATH | "
    "--classifier PATH]\n"
    "          [--device D] [--batch B]\n"
    "metrics: domain (Frechet distance of a `cm classifier` network's features; reference: the "
    "classifier's test\n"
    "split, cached beside it, or --ref), fid (--inception and --ref, N >= 2048), is (--inception)";

constexpr int64_t kMinFidImages = 2048;

std::string default_metric(const Args& a) {
  if (a.has("metric")) {
    const std::string m = a.get("metric");
    CM_CHECK(m == "domain" || m == "fid" || m == "is", "--metric ", m,
             ": expected domain, fid or is");
    return m;
  }
  return a.has("classifier") || !a.has("inception") ? "domain" : "fid";
}

int eval_ref_only(const Args& a) {
  CM_CHECK(a.positional.empty(), "cm eval --ref-only takes no RUN_DIR (it reads --data)");
  CM_CHECK(a.has("data"),
           "cm eval --ref-only needs --data SPEC (digits:test, fashion-mnist:test, "
           "cifar10:DIR:train, folder:DIR, zip:PATH, ...)");
  CM_CHECK(a.has("out"), "cm eval --ref-only needs --out STATS.npz");
  const std::string metric = default_metric(a);
  CM_CHECK(metric != "is", "--metric is: the Inception Score has no reference statistics");
  const Device dev = Device::parse(a.get("device", "cpu"));
  const int64_t batch = positive_int(a, "batch", 64);
  if (metric == "fid") {
    CM_CHECK(a.has("inception"),
             "--metric fid needs --inception PATH (the FID Inception weights "
             "converted by tools/convert_fid_inception.py)");
    require_file(a.get("inception"), "--inception");
  } else {
    CM_CHECK(a.has("classifier"),
             "--metric domain needs --classifier PATH (made by `cm "
             "classifier train`)");
    require_file(a.get("classifier"), "--classifier");
  }
  const auto t0 = std::chrono::steady_clock::now();
  const data::ImageDataset d = eval::load_split(a.get("data"));
  eval::FidStats stats;
  if (metric == "fid") {
    CM_CHECK(d.size() >= kMinFidImages, "--data ", a.get("data"), ": ", d.size(),
             " images; FID reference statistics need at least ", kMinFidImages,
             " (fewer make a rank-deficient 2048×2048 covariance and a meaningless FID)");
    const auto net = eval::load_fid_inception(a.get("inception"), dev);
    stats = inception_stats(*net, d.images, batch, nullptr);
    eval::save_stats_npz(a.get("out"), stats);
  } else {
    const eval::LoadedClassifier clf = eval::load_classifier(a.get("classifier"), dev);
    check_classifier_fits(clf.net->config(), d.channels(), d.height(), a.get("classifier"),
                          "--data " + a.get("data"));
    stats = eval::classifier_stats(*clf.net, d.images, batch);
    save_domain_stats(a.get("out"), stats, sha256_file(a.get("classifier")));
  }
  std::printf("wrote %s: %s statistics (dim %lld) of %lld images of %s in %.1fs\n",
              a.get("out").c_str(), metric.c_str(), (long long)stats.dim(), (long long)d.size(),
              a.get("data").c_str(), seconds_since(t0));
  return 0;
}

}  // namespace

// ---- cm eval ---------------------------------------------------------------------------------

int cmd_eval(int argc, char** argv) {
  const Args a = parse(argc, argv, 2, "cm eval",
                       {"n", "seeds", "steps", "sigmas", "weights", "metric", "classifier",
                        "inception", "ref", "device", "batch", "quantize", "out", "data"},
                       {"ref-only", "help"}, kEvalUsage);
  if (a.has("help")) {
    std::puts(kEvalUsage);
    return 0;
  }
  if (a.has("ref-only")) return eval_ref_only(a);
  // The images to score: a model's samples (RUN_DIR or CHECKPOINT) or, with --data, real images.
  const bool real = a.has("data");
  CM_CHECK(!(real && !a.positional.empty()),
           "cm eval: give a RUN_DIR/CHECKPOINT or --data, not both");
  CM_CHECK(real || a.positional.size() == 1,
           "cm eval needs exactly one RUN_DIR or CHECKPOINT (or --data SPEC)\n", kEvalUsage);
  CM_CHECK(!(a.has("n") && a.has("seeds")), "give --n or --seeds, not both");
  if (real) {
    for (const char* k : {"seeds", "steps", "sigmas", "weights", "quantize"})
      CM_CHECK(!a.has(k), "--", k, " is for a model's samples, not for --data");
    CM_CHECK(a.has("out"), "cm eval --data needs --out FILE (there is no run directory)");
  }
  const std::string metric = default_metric(a);
  const Device dev = Device::parse(a.get("device", "cpu"));
  const int64_t batch = positive_int(a, "batch", 64);
  const Quantization q = parse_quantization(a.get("quantize", "floor"));

  // What to evaluate and with what: check every input before the slow part.
  fs::path checkpoint;
  if (!real) {
    const std::string source = a.positional[0];
    checkpoint = source;
    if (fs::is_directory(source)) checkpoint = RunDir::open(source).latest_checkpoint();
    CM_CHECK(fs::is_regular_file(checkpoint), source, ": no such checkpoint or run directory");
  }
  std::vector<uint64_t> seeds;
  if (a.has("seeds")) {
    seeds = parse_seeds(a.get("seeds"));
  } else {
    const int64_t n = positive_int(a, "n", metric == "domain" ? 10000 : 50000);
    for (int64_t i = 0; i < n; ++i) seeds.push_back(uint64_t(i));
  }
  const int64_t n = int64_t(seeds.size());
  if (metric == "domain") {
    CM_CHECK(a.has("classifier"),
             "--metric domain needs --classifier PATH (made by `cm "
             "classifier train`)");
    CM_CHECK(!a.has("inception"), "--inception is for --metric fid or is, not domain");
    require_file(a.get("classifier"), "--classifier");
    CM_CHECK(n >= 2, "--metric domain needs at least 2 images for a covariance, got ", n);
  } else {
    CM_CHECK(a.has("inception"), "--metric ", metric,
             " needs --inception PATH (the FID Inception "
             "weights converted by tools/convert_fid_inception.py)");
    CM_CHECK(!a.has("classifier"), "--classifier is for --metric domain, not ", metric);
    require_file(a.get("inception"), "--inception");
  }
  if (metric == "fid") {
    CM_CHECK(a.has("ref"),
             "--metric fid needs --ref STATS.npz (reference statistics: EDM's or "
             "clean-fid's .npz, or `cm eval --ref-only --data SPEC --inception PATH "
             "--out STATS.npz`)");
    CM_CHECK(n >= kMinFidImages, "--metric fid needs at least ", kMinFidImages,
             " images (fewer make a rank-deficient 2048×2048 covariance), got ", n);
  }
  if (metric == "is") {
    CM_CHECK(!a.has("ref"), "--ref: the Inception Score uses no reference statistics");
    CM_CHECK(n >= 10, "--metric is needs at least 10 images (10 splits), got ", n);
  }
  if (a.has("ref")) require_file(a.get("ref"), "--ref");

  const auto t0 = std::chrono::steady_clock::now();
  std::optional<LoadedNetwork> m;
  std::optional<Sampler> sampler;
  Tensor real_images;
  int64_t channels = 0, resolution = 0;
  std::string source_name;
  if (real) {
    const data::ImageDataset d = eval::load_split(a.get("data"));
    CM_CHECK(n <= d.size(), "--n ", n, ": --data ", a.get("data"), " has only ", d.size(),
             " images");
    real_images = narrow(d.images, 0, 0, n).contiguous();
    channels = d.channels();
    resolution = d.height();
    source_name = "--data " + a.get("data");
  } else {
    m = load_network(checkpoint.string(), a.get("weights", "ema"), dev);
    sampler = choose_sampler(m->config, a.get("steps", "1"), a.get("sigmas"));
    channels = m->config.network.in_channels;
    resolution = m->config.network.img_resolution;
    source_name = "the run (" + m->config.data.dataset + ")";
  }

  json rec = {{"metric", metric}};
  json values;
  const std::string checkpoint_sha = real ? std::string() : sha256_file(checkpoint.string());

  // The metric network and the reference, loaded before sampling so that a mismatch fails fast.
  std::optional<eval::LoadedClassifier> clf;
  std::shared_ptr<eval::FidInceptionV3> inception;
  eval::FidStats ref;
  json reference;
  if (metric == "domain") {
    const std::string path = a.get("classifier");
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
    if (a.has("ref")) {
      ref_path = a.get("ref");
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
        ref = eval::classifier_stats(*clf->net, d.images, batch);
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
    const std::string path = a.get("inception");
    inception = eval::load_fid_inception(path, dev);
    rec["inception"] = {{"path", fs::absolute(path).string()}, {"sha256", sha256_file(path)}};
    if (metric == "fid") {
      ref = eval::load_stats_npz(a.get("ref"));
      CM_CHECK(ref.dim() == inception->feature_dim(), "--ref ", a.get("ref"),
               ": statistics of dim ", ref.dim(), ", but FID's pool3 features have ",
               inception->feature_dim());
      reference = {{"path", fs::absolute(a.get("ref")).string()},
                   {"sha256", sha256_file(a.get("ref"))}};
    }
  }

  const auto t_sample = std::chrono::steady_clock::now();
  Tensor images = real_images;
  if (!real) {
    std::printf("sampling %lld images (%s, NFE %lld) from %s\n", (long long)n,
                sampler->name.c_str(), (long long)sampler->nfe, m->weights.c_str());
    images = generate_images(*m, seeds, *sampler, q, dev, batch);
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
    rec["data"] = a.get("data");
    rec["n"] = n;
    rec["images"] = "the first " + std::to_string(n) + " images of " + a.get("data");
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
    rec["seeds"] = a.get("seeds", "0-" + std::to_string(n - 1));
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
      a.has("out") ? fs::path(a.get("out"))
                   : run_dir_of(checkpoint) / ("eval-" + std::to_string(m->step) + "-" + metric +
                                               "-" + std::to_string(sampler->nfe) + "step.json");
  {
    std::ofstream f(out);
    CM_CHECK(f, "cm eval: cannot write ", out.string());
    f << rec.dump(2) << "\n";
  }
  if (real)
    std::printf("%s = %.6g (%lld real images of %s); wrote %s\n", metric.c_str(), value,
                (long long)n, a.get("data").c_str(), out.c_str());
  else
    std::printf("%s = %.6g (%lld images, %s, step %lld); wrote %s\n", metric.c_str(), value,
                (long long)n, sampler->name.c_str(), (long long)m->step, out.c_str());
  return 0;
}

// ---- cm classifier ---------------------------------------------------------------------------

int cmd_classifier(int argc, char** argv) {
  static const char* kUsage =
      "usage:\n"
      "  cm classifier train --data digits|fashion-mnist [--steps N] [--batch B] [--lr LR] "
      "[--seed S]\n"
      "                      [--device D] [--out PATH]\n"
      "trains the domain metric's classifier (eval/classifier.h) on the train split and records "
      "its test accuracy";
  const Args a = parse(argc, argv, 2, "cm classifier",
                       {"data", "steps", "batch", "lr", "seed", "device", "out"}, {"help"}, kUsage);
  if (a.has("help")) {
    std::puts(kUsage);
    return 0;
  }
  CM_CHECK(a.positional.size() == 1 && a.positional[0] == "train",
           "cm classifier: expected the subcommand train\n", kUsage);
  CM_CHECK(a.has("data"), "cm classifier train needs --data digits|fashion-mnist");
  const std::string data = a.get("data");
  const eval::ClassifierConfig cfg = eval::classifier_preset(data);
  eval::ClassifierTrainOptions o;
  o.steps = positive_int(a, "steps", data == "digits" ? 2000 : 3000);
  o.batch = positive_int(a, "batch", 64);
  if (a.has("lr")) o.lr = parse_numbers(a.get("lr"), "--lr").at(0);
  CM_CHECK(o.lr > 0, "--lr must be positive");
  if (a.has("seed")) {
    const auto seed = parse_u64(a.get("seed"));
    CM_CHECK(seed, "--seed ", a.get("seed"), ": expected a non-negative integer");
    o.seed = *seed;
  }
  o.device = Device::parse(a.get("device", "cpu"));
  o.log_every = std::max<int64_t>(1, o.steps / 20);
  o.log = [&](int64_t step, double loss) {
    std::printf("step %6lld/%lld  loss %.4f\n", (long long)step, (long long)o.steps, loss);
    std::fflush(stdout);
  };
  const std::string out = a.get("out", "classifier-" + data + ".safetensors");
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

}  // namespace cm::runner
