// The domain metric and `cm eval` / `cm classifier`: SHA-256 against FIPS 180-4 and hashlib
// vectors; the classifier against a PyTorch golden (tools/gen_classifier_golden.py: features,
// logits, the cross-entropy and its gradients); the seeded digits split; a classifier trained here
// on digits (test accuracy > 90%); the metric's sanity (train vs test low, noise and constant
// images far higher, blur raising it monotonically); `cm eval` end to end on a tiny CT run with the
// JSON it writes, `--ref-only`, and its argument errors.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>

#include "datasets/dataset.h"
#include "datasets/npz.h"
#include "eval/classifier.h"
#include "eval/inception.h"
#include "eval/precision_recall.h"
#include "nn/safetensors.h"
#include "runner/config.h"
#include "runner/evaluate.h"
#include "runner/sha256.h"
#include "runner/trainer.h"
#include "tests/golden_util.h"
#include "tests/run_helpers.h"

using namespace cm;
using namespace cm::test;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

fs::path temp_dir(const std::string& name) {
  fs::path p = fs::temp_directory_path() /
               ("cm_test_eval_domain_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

// Runs `cm <args...>` through the command functions, as main does.
// Statistics of f32 features computed in batches of different sizes: sgemm blocks them
// differently, and the blocking differs between OpenBLAS's kernel families (Haswell, SkylakeX,
// Zen) and thread counts, so they agree to f32 rounding of the values, not to the bit (the
// accumulation itself is f64 in a fixed order). The bound is relative to the largest value.
bool f32_stats_close(const Tensor& got, const Tensor& want) {
  const double scale = std::max(1.0, amax(abs(to(want, DType::f64))).item<double>());
  const double d = max_abs_diff(got, want);
  INFO("max |difference| ", d, " with values up to ", scale);
  return d <= 1e-6 * scale;
}

int run_cm(std::vector<std::string> args) {
  args.insert(args.begin(), "cm");
  std::vector<char*> argv;
  for (std::string& s : args) argv.push_back(s.data());
  if (args[1] == "eval") return runner::cmd_eval(int(argv.size()), argv.data());
  if (args[1] == "classifier") return runner::cmd_classifier(int(argv.size()), argv.data());
  FAIL("unknown command " << args[1]);
  return -1;
}

// The classifier every metric test uses: trained once, here, on the digits train split (a smaller
// network than `cm classifier train`'s, about a second of one core). Also saved, with the metadata
// `cm classifier train` writes, for the `cm eval` tests.
struct Trained {
  std::unique_ptr<eval::Classifier> net;
  data::ImageDataset train, test;
  std::string path;
};
const Trained& trained() {
  static Trained t = [] {
    Trained t;
    t.train = eval::load_split("digits:train");
    t.test = eval::load_split("digits:test");
    eval::ClassifierConfig c = eval::classifier_preset("digits");
    c.channels = {16, 32};
    t.net = eval::train_classifier(c, t.train, {.steps = 200, .batch = 32, .lr = 2e-3, .seed = 1});
    t.path = (temp_dir("classifier") / "digits.safetensors").string();
    eval::save_classifier(
        t.path, *t.net,
        {{"data", "digits"}, {"test_split", "digits:test"}, {"test_accuracy", "0.99"}});
    return t;
  }();
  return t;
}

double domain_distance(const Tensor& images_u8, const eval::FidStats& ref) {
  return eval::frechet_distance(eval::classifier_stats(*trained().net, images_u8, 128), ref);
}

// k passes of the 3×3 binomial blur ([1, 2, 1]/4 along each axis, edges replicated), rounded back
// to u8.
Tensor blur(const Tensor& images_u8, int k) {
  NoGradGuard ng;
  const Tensor w = from_vector<float>({1, 2, 1, 2, 4, 2, 1, 2, 1}, {1, 1, 3, 3}) / 16.0;
  Tensor x = to(images_u8, DType::f32);
  for (int i = 0; i < k; ++i) x = conv2d(pad(x, {1, 1, 1, 1}, PadMode::Replicate), w);
  return to(clamp(round(x), 0.0, 255.0), DType::u8);
}

// One sorted string per image (its bytes and label), to compare data sets as multisets.
std::multiset<std::string> rows_of(const data::ImageDataset& d) {
  std::multiset<std::string> out;
  const std::vector<uint8_t> px = d.images.to_vector<uint8_t>();
  const std::vector<int64_t> lb = d.labels.to_vector<int64_t>();
  const size_t per = px.size() / size_t(d.size());
  for (size_t i = 0; i < size_t(d.size()); ++i)
    out.insert(std::string(px.begin() + long(i * per), px.begin() + long((i + 1) * per)) +
               char('0' + lb[i]));
  return out;
}

json tiny_run_config() {
  json j = test::tiny_run_config("ct", 6);
  j["network"]["attn_resolutions"] = json::array();
  j["train"]["batch"] = 8;
  j["train"]["log_every"] = 100;
  j.erase("sample");
  return j;
}

// A run directory with one checkpoint after 6 CT steps of a tiny network on digits.
fs::path tiny_run(const fs::path& root) {
  const runner::RunConfig cfg =
      runner::typed_config(runner::resolve_config(tiny_run_config(), "test.json"));
  const runner::RunDir run = runner::RunDir::create(root.string(), "ct-tiny");
  std::ofstream(run.config_path()) << cfg.resolved.dump(2) << "\n";
  runner::Trainer t(cfg, std::nullopt, nullptr);
  while (t.step() < 6) t.train_step();
  fs::create_directories(run.checkpoint_dir());
  t.save_checkpoint(run.checkpoint_path(6).string());
  return run.path();
}

// A full-width FID Inception with random weights in `dir` (real ones cannot be downloaded here),
// its path: variance-preserving scales 1/√fan_in, so that its 90 layers stay finite.
std::string random_inception(const fs::path& dir) {
  eval::FidInceptionV3 net;
  {
    NoGradGuard ng;
    Generator gen(5);
    for (auto& [name, p] : net.named_parameters())
      if (p.dim() > 1)
        copy_(p, mul(randn_like(p, &gen), 1.0 / std::sqrt(double(p.numel() / p.shape()[0]))));
  }
  const std::string path = (dir / "inception.safetensors").string();
  nn::save_module(path, net);
  return path;
}

json read_json(const fs::path& p) {
  std::ifstream f(p);
  REQUIRE_MESSAGE(f.good(), p.string(), " was not written");
  return json::parse(f);
}

}  // namespace

TEST_SUITE("eval") {
  TEST_CASE("SHA-256 matches the FIPS 180-4 vectors and hashlib at every block boundary") {
    using runner::sha256_hex;
    CHECK(sha256_hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    CHECK(sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    CHECK(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq") ==
          "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    CHECK(
        sha256_hex("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnop"
                   "qklmnopqrlmnopqrsmnopqrstnopqrstu") ==
        "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
    // one million 'a', fed in uneven pieces
    {
      runner::Sha256 h;
      const std::string a(1000, 'a');
      size_t left = 1000000, k = 0;
      while (left > 0) {
        const size_t take = std::min(left, size_t(1 + (k++ * 37) % 1000));
        h.update(a.data(), take);
        left -= take;
      }
      CHECK(h.hex_digest() == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    }
    // bytes (7i + 3) mod 256 of lengths around the 55/56/64-byte padding boundaries (Python's
    // hashlib), one-shot and split at every position
    const std::vector<std::pair<size_t, std::string>> vectors = {
        {55, "e7313d333c272e639f790978283f9eb392e843d0f29b7016828bb1daa4aac70b"},
        {56, "4324d65f3c103567f5589c710bc08f8523f929a9272e3af36fc968e52abc6c27"},
        {63, "81c80242132f230c3bd41b3e63bbcff16107339549214a99614ff26664625055"},
        {64, "39e3d7b6b5d075d37d053ad89b24b41bef4f3c29760c84447cab3f3be1882241"},
        {65, "aacca6ff74fdbb296d165a45cecfa04e5127bc008770fbbdd48006f2d2fae95e"},
        {119, "9ce7368e4daf32341631b492e80359dc9f594b48453cd0dd5bf0b19279cc177e"},
        {120, "7836b787757e95e58b3ca5aec90b1b004e8deba1e50e9675af9cabf1a13a04b5"},
        {127, "a8d23e75d936f303d248888d9b165ee543f4cbafcad3c9dd2a79bd84faa11d07"},
        {128, "d2742f1f4ac6bb7ca2b239ee18402ba8b3f9f8e652d2a72973c2b9ba11c08cf6"},
        {1000, "1e9bc38cbf860b9ec31918b065f9b52476c549a782e0e7990bed8ce3868d2371"}};
    for (const auto& [n, hex] : vectors) {
      std::string s(n, '\0');
      for (size_t i = 0; i < n; ++i) s[i] = char((i * 7 + 3) % 256);
      CHECK_MESSAGE(sha256_hex(s) == hex, n, " bytes");
      for (size_t cut = 0; cut <= n; cut += (n > 200 ? 97 : 1)) {
        runner::Sha256 h;
        h.update(s.data(), cut);
        h.update(s.data() + cut, n - cut);
        CHECK_MESSAGE(h.hex_digest() == hex, n, " bytes split at ", cut);
      }
    }
    // files hash their contents; errors name the file
    const fs::path dir = temp_dir("sha");
    std::string content(3 * (1 << 20) + 11, '\0');
    for (size_t i = 0; i < content.size(); ++i) content[i] = char((i * 7 + 3) % 256);
    std::ofstream(dir / "f.bin", std::ios::binary) << content;
    CHECK(runner::sha256_file((dir / "f.bin").string()) == sha256_hex(content));
    check_error([&] { runner::sha256_file((dir / "missing.bin").string()); },
                {"sha256", "missing.bin"});
    runner::Sha256 h;
    h.hex_digest();
    check_error([&] { h.update("x"); }, {"Sha256", "after digest"});
    fs::remove_all(dir);
  }

  TEST_CASE("the classifier matches PyTorch: features, logits, cross-entropy and gradients") {
    const nn::SafetensorsFile f(kGoldenDir + "classifier.safetensors");
    std::stringstream cases(f.metadata().at("cases"));
    std::string name;
    int checked = 0;
    while (std::getline(cases, name, ',')) {
      CAPTURE(name);
      const eval::ClassifierConfig c =
          eval::ClassifierConfig::from_json(f.metadata().at(name + ".config"), "golden");
      Generator gen(0);
      eval::Classifier net(c, gen);
      std::map<std::string, Tensor> state;
      for (const std::string& n : f.names())
        if (n.rfind(name + ".model.", 0) == 0) state[n.substr(name.size() + 7)] = f.get(n);
      net.load_state_dict(state, true);  // every name and shape as PyTorch's state dict
      const Tensor images = f.get(name + ".input.images");
      const Tensor labels = f.get(name + ".input.labels");
      for (DType dt : {DType::f32, DType::f64}) {
        CAPTURE(dtype_name(dt));
        net.to(dt);
        net.zero_grad();
        const double tol = dt == DType::f64 ? 1e-11 : 2e-5;
        // a non-contiguous view of the images (H and W swapped twice)
        const Tensor strided = transpose(contiguous(transpose(images, 2, 3)), 2, 3);
        REQUIRE_FALSE(strided.is_contiguous());
        const auto out = net.forward_images(strided);
        CHECK(rel_err(out.features, f.get(name + ".output.features")) < tol);
        CHECK(rel_err(out.logits, f.get(name + ".output.logits")) < tol);
        // the training loss of train_classifier, on one-hot labels
        const Tensor onehot =
            to(eq(unsqueeze(labels, 1),
                  unsqueeze(arange(0.0, double(c.num_classes), 1.0, {.dtype = DType::i64}), 0)),
               dt);
        const Tensor loss = neg(mean(sum(mul(onehot, log_softmax(out.logits, 1)), {1})));
        CHECK(std::fabs(loss.item<double>() - f.get(name + ".output.loss").item<double>()) <
              tol * 10);
        loss.backward();
        for (const auto& [n, p] : net.named_parameters()) {
          CAPTURE(n);
          REQUIRE(p.grad().defined());
          CHECK(rel_err(p.grad(), f.get(name + ".grad." + n)) < tol * 10);
        }
      }
      ++checked;
    }
    CHECK(checked == 2);
  }

  TEST_CASE("classifier configurations: presets, JSON round trip and errors") {
    Generator gen(0);
    for (const char* data : {"digits", "fashion-mnist"}) {
      const eval::ClassifierConfig c = eval::classifier_preset(data);
      const eval::ClassifierConfig r = eval::ClassifierConfig::from_json(c.to_json(), "x");
      CHECK(r.to_json() == c.to_json());
      eval::Classifier net(c, gen);
      NoGradGuard ng;
      const auto out = net.forward(zeros({2, 1, c.resolution, c.resolution}));
      CHECK(out.features.shape() == Shape{2, 256});
      CHECK(out.logits.shape() == Shape{2, 10});
    }
    const eval::ClassifierConfig c = eval::classifier_preset("digits");
    eval::Classifier net(c, gen);
    std::vector<std::string> names;
    for (const auto& [n, p] : net.named_parameters()) names.push_back(n);
    // stem, the stride-2 block of stage 1, one stride-1 block per stage, then the two layers
    CHECK(names == std::vector<std::string>{"blocks.0.conv.weight", "blocks.0.conv.bias",
                                            "blocks.0.norm.weight", "blocks.0.norm.bias",
                                            "blocks.1.conv.weight", "blocks.1.conv.bias",
                                            "blocks.1.norm.weight", "blocks.1.norm.bias",
                                            "blocks.2.conv.weight", "blocks.2.conv.bias",
                                            "blocks.2.norm.weight", "blocks.2.norm.bias",
                                            "blocks.3.conv.weight", "blocks.3.conv.bias",
                                            "blocks.3.norm.weight", "blocks.3.norm.bias",
                                            "feature.weight",       "feature.bias",
                                            "head.weight",          "head.bias"});
    CHECK(net.named_parameters()[8].second.shape() == Shape{64, 32, 3, 3});  // blocks.2: stride 2
    check_error([&] { eval::classifier_preset("cifar10"); }, {"unknown data set \"cifar10\""});
    check_error([&] { eval::ClassifierConfig::from_json("{\"chanels\": [4]}", "f.safetensors"); },
                {"f.safetensors", "unknown classifier config key \"chanels\""});
    check_error([&] { eval::ClassifierConfig::from_json("{\"feature_dim\": 0}", "f"); },
                {"\"feature_dim\" must be a positive integer"});
    check_error([&] { eval::ClassifierConfig::from_json("[1", "f"); }, {"not valid JSON"});
    check_error(
        [&] {
          NoGradGuard ng;
          net.forward(zeros({1, 1, 28, 28}));
        },
        {"Classifier: expected images [N, 1, 8, 8]", "[1, 1, 28, 28]"});
    check_error([&] { net.forward_images(zeros({1, 1, 8, 8})); }, {"expected u8 images"});
  }

  TEST_CASE("the digits split is a fixed, disjoint 80/20 partition of the shipped set") {
    const data::ImageDataset all = data::load_dataset("digits");
    const data::ImageDataset train = eval::load_split("digits:train");
    const data::ImageDataset test = eval::load_split("digits:test");
    CHECK(test.size() == all.size() / 5);
    CHECK(train.size() + test.size() == all.size());
    std::multiset<std::string> both = rows_of(train);
    for (const std::string& r : rows_of(test)) both.insert(r);
    CHECK(both == rows_of(all));
    // every class is held out
    std::vector<int> per_class(10, 0);
    for (int64_t l : test.labels.to_vector<int64_t>()) ++per_class[size_t(l)];
    CHECK(*std::min_element(per_class.begin(), per_class.end()) >= 20);
    // the same split every time
    CHECK(eval::load_split("digits:test").images.to_vector<uint8_t>() ==
          test.images.to_vector<uint8_t>());
    CHECK(test.num_classes == 10);
    CHECK(test.source == "digits:test");
  }

  TEST_CASE("a classifier trained on digits classifies the held-out split (> 90%)") {
    const Trained& t = trained();
    const double acc = eval::classifier_accuracy(*t.net, t.test);
    MESSAGE("digits test accuracy ", acc);
    CHECK(acc > 0.9);
    // the checkpoint round trip: same logits, the metadata kept
    const eval::LoadedClassifier back = eval::load_classifier(t.path);
    CHECK(back.metadata.at("format") == "cm-classifier-1");
    CHECK(back.metadata.at("test_split") == "digits:test");
    NoGradGuard ng;
    const Tensor some = narrow(t.test.images, 0, 0, 17);
    CHECK(max_abs_diff(back.net->forward_images(some).logits, t.net->forward_images(some).logits) ==
          0);
    // not a classifier checkpoint
    const fs::path dir = temp_dir("notclf");
    nn::save_safetensors((dir / "x.safetensors").string(), {{"w", zeros({2})}});
    check_error([&] { eval::load_classifier((dir / "x.safetensors").string()); },
                {"x.safetensors", "not a cm classifier checkpoint", "cm classifier train"});
    fs::remove_all(dir);
  }

  TEST_CASE("classifier statistics: batch-merged f64 mean and covariance of the features") {
    const Trained& t = trained();
    const Tensor images = narrow(t.test.images, 0, 0, 100);
    const Tensor feats = eval::classifier_features(*t.net, images, 33);
    REQUIRE(feats.shape() == Shape{100, 256});
    const eval::FidStats s = eval::classifier_stats(*t.net, images, 33);
    // an f64 loop over the features
    const std::vector<double> v = feats.to_vector<double>();
    const std::vector<double> mu = s.mu.to_vector<double>(), sigma = s.sigma.to_vector<double>();
    double worst_mu = 0, worst_sigma = 0, scale = 0;
    const int64_t n = 100, d = 256;
    std::vector<double> m(size_t(d), 0.0);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < d; ++j) m[size_t(j)] += v[size_t(i * d + j)] / double(n);
    for (int64_t j = 0; j < d; ++j)
      worst_mu = std::max(worst_mu, std::fabs(m[size_t(j)] - mu[size_t(j)]));
    for (int64_t a = 0; a < d; a += 5)
      for (int64_t b = 0; b < d; b += 3) {
        double c = 0;
        for (int64_t i = 0; i < n; ++i)
          c += (v[size_t(i * d + a)] - m[size_t(a)]) * (v[size_t(i * d + b)] - m[size_t(b)]);
        c /= double(n - 1);
        scale = std::max(scale, std::fabs(c));
        worst_sigma = std::max(worst_sigma, std::fabs(c - sigma[size_t(a * d + b)]));
      }
    CHECK(worst_mu < 1e-6);
    CHECK(worst_sigma < 1e-6 * std::max(scale, 1.0));
    CHECK(scale > 0);
  }

  TEST_CASE(
      "domain metric: real vs real is low — noise, constant and blurred images score higher") {
    const Trained& t = trained();
    const eval::FidStats ref = eval::classifier_stats(*t.net, t.test.images, 128);
    const double self = domain_distance(t.test.images, ref);
    const double real = domain_distance(t.train.images, ref);
    Generator gen(5);
    const Tensor noise =
        to(randint(0, 256, {1000, 1, 8, 8}, {.dtype = DType::i64}, &gen), DType::u8);
    const double noisy = domain_distance(noise, ref);
    const double constant = domain_distance(full({500, 1, 8, 8}, 128.0, {.dtype = DType::u8}), ref);
    const double black = domain_distance(zeros({500, 1, 8, 8}, {.dtype = DType::u8}), ref);
    std::vector<double> blurred;
    for (int k : {1, 2, 4, 8}) blurred.push_back(domain_distance(blur(t.train.images, k), ref));
    MESSAGE("domain FD: test vs test ", self, ", train vs test ", real, ", noise ", noisy,
            ", constant 128 ", constant, ", black ", black, ", blur x1/x2/x4/x8 ", blurred[0], " ",
            blurred[1], " ", blurred[2], " ", blurred[3]);
    CHECK(std::fabs(self) < 1e-6 * real);  // identical sets, to round-off
    CHECK(real > 0);
    CHECK(noisy > 10 * real);
    CHECK(constant > 10 * real);
    CHECK(black > 10 * real);
    CHECK(blurred[0] > real);
    for (size_t i = 1; i < blurred.size(); ++i) CHECK_MESSAGE(blurred[i] > blurred[i - 1], i);
  }

  TEST_CASE(
      "cm eval: the domain metric of a tiny CT run, its JSON record and the cached reference") {
    const Trained& t = trained();
    const fs::path dir = temp_dir("run");
    const fs::path run = tiny_run(dir);
    const fs::path ckpt = runner::RunDir::open(run.string()).checkpoint_path(6);
    REQUIRE(fs::exists(ckpt));
    const std::string cache =
        (fs::path(t.path).parent_path() / "digits.ref-digits-test.npz").string();
    fs::remove(cache);

    REQUIRE(run_cm({"eval", run.string(), "--n", "40", "--classifier", t.path, "--batch", "16"}) ==
            0);
    const json r = read_json(run / "eval-6-domain-1step.json");
    CHECK(r.at("metric") == "domain");
    const double value = r.at("value").get<double>();
    CHECK(std::isfinite(value));
    CHECK(value > 0);
    CHECK(r.at("values").at("domain_fd").get<double>() == value);
    CHECK(r.at("checkpoint").at("path") == fs::absolute(ckpt).string());
    CHECK(r.at("checkpoint").at("sha256") == runner::sha256_file(ckpt.string()));
    CHECK(r.at("checkpoint").at("step") == 6);
    CHECK(r.at("checkpoint").at("weights").get<std::string>().find("eval EMA 0.9") == 0);
    CHECK(r.at("classifier").at("sha256") == runner::sha256_file(t.path));
    CHECK(r.at("classifier").at("test_accuracy") == "0.99");
    CHECK(r.at("classifier").at("config").at("feature_dim") == 256);
    CHECK(r.at("reference").at("path") == fs::absolute(cache).string());
    CHECK(r.at("reference").at("sha256") == runner::sha256_file(cache));
    CHECK(r.at("reference").at("data") == "digits:test");
    CHECK(r.at("reference").at("cached") == false);
    CHECK(r.at("run") == fs::absolute(run).string());
    CHECK(r.at("n") == 40);
    CHECK(r.at("seeds") == "0-39");
    CHECK(r.at("sampler") == "consistency one-step");
    CHECK(r.at("time_points") == json::array());
    CHECK(r.at("nfe") == 1);
    CHECK(r.at("quantization") == "floor");
    CHECK(r.at("mode") == "ct");
    CHECK(r.at("data") == "digits");
    CHECK(r.at("device") == "cpu");
    CHECK(r.at("batch") == 16);
    const std::string date = r.at("date");
    CHECK(date.size() == 20);
    CHECK(date.back() == 'Z');
    CHECK_FALSE(r.at("cm_revision").get<std::string>().empty());

    // The same number from the parts: the run's eval EMA, one-step samples of seeds 0..39 (whatever
    // the batch), floor quantisation, the classifier's statistics against the cached reference.
    const runner::LoadedNetwork m = runner::load_network(ckpt.string(), "ema", Device::cpu());
    const runner::Sampler one = runner::choose_sampler(m.config, "1", "");
    std::vector<uint64_t> seeds;
    for (uint64_t s = 0; s < 40; ++s) seeds.push_back(s);
    const Tensor images =
        runner::generate_images(m, seeds, one, runner::Quantization::Floor, Device::cpu(), 40);
    const eval::FidStats ref = eval::load_stats_npz(cache);
    const eval::FidStats want = eval::classifier_stats(*t.net, t.test.images, 256);
    // f32 features: BLAS may block a batch of 16 and one of 256 differently (last-bit changes).
    CHECK(max_abs_diff(ref.mu, want.mu) < 1e-6);
    const double direct = domain_distance(images, ref);
    CHECK(std::fabs(direct - value) < 1e-6 * value);

    // Two steps, a checkpoint file as the source, the cache reused, --out elsewhere.
    const fs::path out = dir / "two.json";
    REQUIRE(run_cm({"eval", ckpt.string(), "--seeds", "5-9,20-24", "--steps", "2", "--classifier",
                    t.path, "--quantize", "round", "--out", out.string()}) == 0);
    const json r2 = read_json(out);
    CHECK(r2.at("reference").at("cached") == true);
    CHECK(r2.at("nfe") == 2);
    CHECK(r2.at("sampler") == "consistency multistep");
    CHECK(r2.at("time_points") == json(m.config.sample.two_step_taus));
    CHECK(r2.at("n") == 10);
    CHECK(r2.at("seeds") == "5-9,20-24");
    CHECK(r2.at("quantization") == "round");
    CHECK(std::isfinite(r2.at("value").get<double>()));

    // A retrained classifier at the same path invalidates the cache (it is keyed by the file's
    // hash): the recorded reference is recomputed.
    {
      eval::ClassifierConfig c = t.net->config();
      Generator gen(9);
      eval::Classifier other(c, gen);
      const std::string other_path = (dir / "other.safetensors").string();
      eval::save_classifier(other_path, other, {{"test_split", "digits:test"}});
      REQUIRE(run_cm({"eval", run.string(), "--n", "8", "--classifier", other_path, "--out",
                      (dir / "o1.json").string()}) == 0);
      eval::save_classifier(other_path, *t.net, {{"test_split", "digits:test"}});
      REQUIRE(run_cm({"eval", run.string(), "--n", "8", "--classifier", other_path, "--out",
                      (dir / "o2.json").string()}) == 0);
      const json o2 = read_json(dir / "o2.json");
      CHECK(o2.at("reference").at("cached") == false);
      CHECK(f32_stats_close(eval::load_stats_npz(o2.at("reference").at("path")).mu, want.mu));
    }

    // --ref-only writes the same statistics; --ref uses them
    const std::string stats = (dir / "digits-test.npz").string();
    REQUIRE(run_cm({"eval", "--ref-only", "--data", "digits:test", "--metric", "domain",
                    "--classifier", t.path, "--out", stats}) == 0);
    CHECK(f32_stats_close(eval::load_stats_npz(stats).mu, want.mu));
    CHECK(f32_stats_close(eval::load_stats_npz(stats).sigma, want.sigma));
    REQUIRE(run_cm({"eval", run.string(), "--n", "40", "--classifier", t.path, "--ref", stats,
                    "--batch", "7", "--out", (dir / "r.json").string()}) == 0);
    const json r3 = read_json(dir / "r.json");
    CHECK(std::fabs(r3.at("value").get<double>() - value) < 1e-6 * value);
    CHECK(r3.at("reference").at("sha256") == runner::sha256_file(stats));

    // --data scores real images the same way: the first N of the split against the same reference
    // (the floor a model is measured against); well below the tiny run's samples.
    const fs::path real_out = dir / "real.json";
    REQUIRE(run_cm({"eval", "--data", "digits:train", "--n", "300", "--classifier", t.path, "--ref",
                    stats, "--out", real_out.string()}) == 0);
    const json rr = read_json(real_out);
    const data::ImageDataset train = eval::load_split("digits:train");
    const double real_direct = eval::frechet_distance(
        eval::classifier_stats(*t.net, narrow(train.images, 0, 0, 300).contiguous(), 256), ref);
    CHECK(rr.at("source") == "data");
    CHECK(rr.at("data") == "digits:train");
    CHECK(rr.at("n") == 300);
    CHECK(std::fabs(rr.at("value").get<double>() - real_direct) < 1e-6 * real_direct);
    CHECK(rr.at("value").get<double>() < 0.5 * value);
    CHECK_FALSE(rr.contains("checkpoint"));
    fs::remove_all(dir);
    fs::remove(cache);
  }

  TEST_CASE("cm eval --metric is: the Inception Score of a run's samples, as from the parts") {
    // A full-width FID Inception with random weights (real ones cannot be downloaded here): the
    // value must be the one eval::inception_score gives on the same images' logits.
    const fs::path dir = temp_dir("is");
    const fs::path run = tiny_run(dir);
    const std::string weights = random_inception(dir);
    const fs::path out = dir / "is.json";
    REQUIRE(run_cm({"eval", run.string(), "--metric", "is", "--n", "12", "--inception", weights,
                    "--batch", "5", "--out", out.string()}) == 0);
    const json r = read_json(out);
    CHECK(r.at("metric") == "is");
    CHECK(r.at("inception").at("sha256") == runner::sha256_file(weights));
    CHECK_FALSE(r.contains("reference"));

    const auto loaded = eval::load_fid_inception(weights);
    const runner::LoadedNetwork m = runner::load_network(
        runner::RunDir::open(run.string()).latest_checkpoint().string(), "ema", Device::cpu());
    std::vector<uint64_t> seeds;
    for (uint64_t s = 0; s < 12; ++s) seeds.push_back(s);
    const Tensor images =
        runner::generate_images(m, seeds, runner::choose_sampler(m.config, "1", ""),
                                runner::Quantization::Floor, Device::cpu(), 12);
    NoGradGuard ng;
    const eval::InceptionScore want = eval::inception_score(loaded->forward_images(images).logits);
    CHECK(want.mean > 1.0);  // random weights still tell the images apart
    CHECK(std::fabs(r.at("values").at("is_mean").get<double>() - want.mean) < 1e-6 * want.mean);
    CHECK(std::fabs(r.at("values").at("is_std").get<double>() - want.std) < 1e-5 * want.mean);
    fs::remove_all(dir);
  }

  TEST_CASE(
      "cm eval --metric prec-recall: a run's samples against a reference batch, as from the "
      "parts") {
    // The same full-width random-weight Inception as the IS test; the reference batch is an .npz
    // of real digits as arr_0 (u8 NHWC, openai's reference-batch layout).
    const fs::path dir = temp_dir("pr");
    const fs::path run = tiny_run(dir);
    const std::string weights = random_inception(dir);
    // the run's own images for seeds 0..7, as cm eval draws them
    const runner::LoadedNetwork m = runner::load_network(
        runner::RunDir::open(run.string()).latest_checkpoint().string(), "ema", Device::cpu());
    std::vector<uint64_t> seeds;
    for (uint64_t s = 0; s < 8; ++s) seeds.push_back(s);
    const Tensor images =
        runner::generate_images(m, seeds, runner::choose_sampler(m.config, "1", ""),
                                runner::Quantization::Floor, Device::cpu(), 8);
    // the reference: four of those images and four real digits, so that neither fraction is
    // trivially 0 or 1
    const data::ImageDataset digits = data::load_dataset("digits");
    const Tensor real =
        cat({narrow(images, 0, 0, 4), narrow(digits.images, 0, 0, 4)}, 0).contiguous();
    const std::string batch = (dir / "ref_batch.npz").string();
    data::write_npz(batch, {{"arr_0", contiguous(permute(real, {0, 2, 3, 1}))}});
    const fs::path out = dir / "pr.json";
    REQUIRE(run_cm({"eval", run.string(), "--metric", "prec-recall", "--n", "8", "--inception",
                    weights, "--ref", batch, "--batch", "4", "--out", out.string()}) == 0);
    const json r = read_json(out);
    CHECK(r.at("metric") == "prec-recall");
    CHECK(r.at("reference").at("images") == 8);
    CHECK(r.at("values").at("k") == 3);

    const auto loaded = eval::load_fid_inception(weights);
    NoGradGuard ng;
    const eval::PrecisionRecall want = eval::precision_recall(
        loaded->forward_images(real, false).pool, loaded->forward_images(images, false).pool);
    CHECK(r.at("values").at("precision").get<double>() == want.precision);
    CHECK(r.at("values").at("recall").get<double>() == want.recall);
    CHECK(r.at("value").get<double>() == want.precision);
    CHECK(want.precision >= 0.5);  // the four shared images at least
    CHECK(want.recall >= 0.5);
    CHECK(want.recall < 1.0);  // the real digits lie apart from the samples
    // a reference batch without images
    const std::string stats = (dir / "stats.npz").string();
    data::write_npz(stats, {{"mu", zeros({2}, {.dtype = DType::f64})}});
    check_error(
        [&] {
          run_cm({"eval", run.string(), "--metric", "prec-recall", "--n", "8", "--inception",
                  weights, "--ref", stats});
        },
        {"stats.npz", "arr_0"});
    fs::remove_all(dir);
  }

  TEST_CASE("cm eval and cm classifier: argument and input errors are clear") {
    const Trained& t = trained();
    const fs::path dir = temp_dir("errors");
    const fs::path run = tiny_run(dir);
    const std::string r = run.string(), fake = (dir / "fake.bin").string();
    std::ofstream(fake) << "not a network";
    auto fails = [&](std::vector<std::string> args, std::vector<std::string> pieces) {
      CAPTURE(args.size());
      check_error([&] { run_cm(args); }, pieces);
    };
    fails({"eval"}, {"needs exactly one RUN_DIR or CHECKPOINT"});
    fails({"eval", r, "--data", "digits:test", "--classifier", t.path, "--out", fake},
          {"a RUN_DIR/CHECKPOINT or --data, not both"});
    fails({"eval", "--data", "digits:test", "--classifier", t.path}, {"--data needs --out"});
    fails({"eval", "--data", "digits:test", "--steps", "2", "--classifier", t.path, "--out", fake},
          {"--steps is for a model's samples"});
    fails({"eval", "--data", "digits:test", "--n", "100000", "--classifier", t.path, "--out", fake},
          {"--n 100000", "has only 359 images"});
    fails({"eval", r, "--bogus"}, {"unknown option --bogus"});
    fails({"eval", r, "--n"}, {"option --n needs a value"});
    fails({"eval", r, "--n", "0", "--classifier", t.path}, {"--n 0: expected a positive integer"});
    fails({"eval", r, "--n", "5x", "--classifier", t.path}, {"--n 5x"});
    fails({"eval", r, "--seeds", "9-3", "--classifier", t.path}, {"range 9-3 is empty"});
    fails({"eval", r, "--seeds", "a-b", "--classifier", t.path}, {"--seeds a-b", "0-63,100"});
    fails({"eval", r, "--n", "4", "--seeds", "0-3", "--classifier", t.path},
          {"--n or --seeds, not both"});
    fails({"eval", r, "--metric", "kid"},
          {"--metric kid: expected domain, fid, is, sfid or prec-recall"});
    fails({"eval", r}, {"--metric domain needs --classifier"});
    fails({"eval", r, "--classifier", (dir / "none.safetensors").string()},
          {"--classifier", "none.safetensors: no such file"});
    fails({"eval", r, "--classifier", fake}, {"fake.bin"});
    fails({"eval", r, "--classifier", t.path, "--steps", "3"}, {"--steps 3: must be 1 or 2"});
    fails({"eval", r, "--classifier", t.path, "--sigmas", "1,x"},
          {"--sigmas", "\"x\" is not a number"});
    fails({"eval", r, "--classifier", t.path, "--sigmas", "100"}, {"100"});
    fails({"eval", r, "--classifier", t.path, "--weights", "ema:0.5"}, {"no eval EMA \"0.5\""});
    fails({"eval", r, "--classifier", t.path, "--batch", "-1"}, {"--batch -1"});
    fails({"eval", r, "--classifier", t.path, "--quantize", "ceil"}, {"unknown quantization"});
    fails({"eval", r, "--classifier", t.path, "--inception", fake}, {"--inception is for"});
    fails({"eval", (dir / "nowhere").string(), "--classifier", t.path},
          {"nowhere: no such checkpoint or run directory"});
    fails({"eval", r, "--metric", "fid"}, {"--metric fid needs --inception"});
    fails({"eval", r, "--metric", "fid", "--inception", fake},
          {"--metric fid needs --ref STATS.npz", "--ref-only"});
    fails({"eval", r, "--metric", "fid", "--inception", fake, "--ref", fake, "--n", "100"},
          {"at least 2048 images", "got 100"});
    fails({"eval", r, "--metric", "is", "--inception", fake, "--n", "5"}, {"at least 10 images"});
    fails({"eval", r, "--metric", "is", "--inception", fake, "--ref", fake},
          {"Inception Score uses no reference"});
    fails({"eval", r, "--metric", "sfid", "--inception", fake},
          {"--metric sfid needs --ref STATS.npz", "mu_s and sigma_s"});
    fails({"eval", r, "--metric", "sfid", "--inception", fake, "--ref", fake, "--n", "100"},
          {"at least 2048 images", "got 100"});
    fails({"eval", r, "--metric", "prec-recall", "--inception", fake},
          {"--metric prec-recall needs --ref BATCH.npz", "arr_0"});
    fails({"eval", "--ref-only", "--metric", "prec-recall", "--data", "digits", "--inception", fake,
           "--out", fake},
          {"no reference statistics to write"});
    // a classifier for other images than the run's
    {
      eval::ClassifierConfig c = eval::classifier_preset("fashion-mnist");
      c.channels = {4};
      Generator gen(0);
      const std::string p = (dir / "fashion.safetensors").string();
      eval::save_classifier(p, eval::Classifier(c, gen), {{"test_split", "fashion-mnist:test"}});
      fails({"eval", r, "--classifier", p, "--n", "4"},
            {"takes 1×28×28 images", "the run (digits) has 1×8×8"});
    }
    // a classifier that records no test split needs --ref
    {
      Generator gen(0);
      const std::string p = (dir / "nosplit.safetensors").string();
      eval::save_classifier(p, eval::Classifier(t.net->config(), gen));
      fails({"eval", r, "--classifier", p, "--n", "4"}, {"records no test split", "--ref"});
    }
    // --ref-only
    fails({"eval", "--ref-only", "--out", "x.npz"}, {"--ref-only needs --data SPEC"});
    fails({"eval", "--ref-only", "--data", "digits:test"}, {"needs --out STATS.npz"});
    fails({"eval", "--ref-only", "--data", "digits:test", "--out", "x.npz", "--metric", "fid"},
          {"--metric fid needs --inception"});
    fails({"eval", "--ref-only", "--data", "digits", "--out", (dir / "x.npz").string(),
           "--inception", fake},
          {"--data digits: 1797 images", "at least 2048"});
    fails({"eval", "--ref-only", "--data", "digits", "--out", "x.npz", "--metric", "is"},
          {"no reference statistics"});
    CHECK_FALSE(fs::exists(dir / "x.npz"));
    // cm classifier
    fails({"classifier"}, {"expected the subcommand train"});
    fails({"classifier", "fit", "--data", "digits"}, {"expected the subcommand train"});
    fails({"classifier", "train"}, {"needs --data digits|fashion-mnist"});
    fails({"classifier", "train", "--data", "mnist"}, {"unknown data set \"mnist\""});
    fails({"classifier", "train", "--data", "digits", "--steps", "-5"}, {"--steps -5"});
    fails({"classifier", "train", "--data", "digits", "--seed", "x"}, {"--seed x"});
    fails({"classifier", "train", "--data", "digits", "--lr", "0"}, {"--lr must be positive"});
    fs::remove_all(dir);
  }

  TEST_CASE("cm classifier train writes a checkpoint with its test accuracy") {
    const fs::path dir = temp_dir("clfcmd");
    const std::string out = (dir / "sub" / "c.safetensors").string();
    REQUIRE(run_cm({"classifier", "train", "--data", "digits", "--steps", "30", "--batch", "16",
                    "--out", out}) == 0);
    const eval::LoadedClassifier c = eval::load_classifier(out);
    const double recorded = std::stod(c.metadata.at("test_accuracy"));
    CHECK(std::fabs(recorded - eval::classifier_accuracy(*c.net, eval::load_split("digits:test"))) <
          1e-6);
    CHECK(c.metadata.at("data") == "digits");
    CHECK(c.metadata.at("test_split") == "digits:test");
    CHECK(c.metadata.at("steps") == "30");
    CHECK(c.metadata.at("test_images") == "359");
    CHECK(c.net->config().to_json() == eval::classifier_preset("digits").to_json());
    fs::remove_all(dir);
  }
}
