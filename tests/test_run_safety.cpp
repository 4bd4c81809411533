// What a run does when things go wrong: configuration rules checked before anything is created,
// run numbers claimed atomically, checkpoint metadata read strictly, non-finite values (NaN, Inf)
// stopped and reported instead of trained on, saved or loaded, and a resumed run that repairs what
// a kill -9 left behind (a lost config.json, missing sample grids, stale temporaries, metrics of
// steps that are run again). Each case is a fault a user met; the oracle is the documented
// behaviour (an error naming the file and field, or the state restored).
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "nn/safetensors.h"
#include "runner/config.h"
#include "runner/run_dir.h"
#include "runner/train_command.h"
#include "runner/trainer.h"
#include "tests/helpers.h"
#include "tests/run_helpers.h"

using namespace cm;
using namespace cm::runner;
namespace fs = std::filesystem;

namespace {

// Checkpoints every 2 of 4 steps, grids every 2.
json tiny(const std::string& mode = "ct") {
  json j = test::tiny_run_config(mode, 4);
  j["train"]["checkpoint_every"] = 2;
  j["train"]["sample_every"] = 2;
  return j;
}

RunConfig config(const json& j) {
  return typed_config(resolve_config(j, "test.json"));
}

struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& name)
      : path(fs::temp_directory_path() /
             ("cm_test_run_safety_" + name + "_" + std::to_string(::getpid()))) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

std::string write_config_file(const fs::path& dir, const json& j) {
  const std::string p = (dir / "config.json").string();
  std::ofstream(p) << j.dump(2);
  return p;
}

std::string file_text(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// A checkpoint of `j` after `steps` steps.
std::string make_checkpoint(const fs::path& dir, const json& j, int steps,
                            const std::string& name = "ckpt.safetensors") {
  Trainer t(config(j), std::nullopt, nullptr);
  for (int i = 0; i < steps; ++i) t.train_step();
  const std::string p = (dir / name).string();
  t.save_checkpoint(p);
  return p;
}

// A copy of checkpoint `src` at `dst` with one metadata field changed (or removed when value is
// null) and, optionally, one tensor overwritten with `fill`.
void rewrite_checkpoint(const std::string& src, const std::string& dst, const std::string& key,
                        const std::optional<std::string>& value, const std::string& tensor = "",
                        double fill = 0) {
  nn::SafetensorsFile f(src);
  std::map<std::string, Tensor> t;
  for (const std::string& n : f.names()) t[n] = clone(f.get(n));
  std::map<std::string, std::string> meta = f.metadata();
  if (!key.empty()) {
    if (value)
      meta[key] = *value;
    else
      meta.erase(key);
  }
  if (!tensor.empty()) {
    Tensor x = t.at(tensor);
    NoGradGuard ng;
    fill_(x, fill);
  }
  nn::save_safetensors(dst, t, meta);
}

// The run directories under `root`.
std::vector<fs::path> runs_under(const fs::path& root) {
  std::vector<fs::path> out;
  if (!fs::exists(root)) return out;
  for (const auto& e : fs::directory_iterator(root))
    if (e.is_directory()) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

TEST_SUITE("runner") {
  TEST_CASE("cross-field rules are checked when the configuration is resolved") {
    json j = tiny();
    j["noise"] = {{"sigma_min", 100.0}, {"sigma_max", 80.0}};
    CHECK(test::error_message_of([&] {
            config(j);
          }).find("/noise/sigma_min: must be below noise.sigma_max") != std::string::npos);
    j = tiny();
    j["sample"]["two_step_sigma"] = 90.0;
    CHECK(test::error_message_of([&] { config(j); }).find("/sample/two_step_sigma: must lie in") !=
          std::string::npos);
    j = tiny();
    j["network"]["img_resolution"] = 7;  // cannot be halved for channel_mult [1, 2]
    CHECK(test::error_message_of([&] {
            resolve_config(j, "test.json");
          }).find("cannot be halved") != std::string::npos);
  }

  TEST_CASE("a configuration that cannot run creates no run directory") {
    TempDir d("norun");
    json j = tiny();
    j["noise"] = {{"sigma_min", 100.0}, {"sigma_max", 80.0}};
    TrainCommand c;
    c.config = write_config_file(d.path, j);
    c.out = (d.path / "runs").string();
    CHECK(test::error_message_of([&] { run_train(c); }).find("sigma_min") != std::string::npos);
    CHECK(runs_under(d.path / "runs").empty());
    // a data set of another size than the network's: found while loading, before the directory
    j = tiny();
    j["network"]["img_resolution"] = 16;
    c.config = write_config_file(d.path, j);
    CHECK(test::error_message_of([&] { run_train(c); }).find("/data/dataset") != std::string::npos);
    CHECK(runs_under(d.path / "runs").empty());
  }

  TEST_CASE("JSON: deep nesting, huge numbers and --set values end in cm's errors") {
    TempDir d("json");
    const std::string deep = (d.path / "deep.json").string();
    std::ofstream(deep) << std::string(300000, '[') << std::string(300000, ']');
    CHECK(test::error_message_of([&] { read_json_file(deep); }).find("nested more than") !=
          std::string::npos);
    const std::string huge = (d.path / "huge.json").string();
    std::ofstream(huge) << R"({"mode": "ct", "train": {"lr": 1e999}})";
    const std::string e = test::error_message_of([&] { read_json_file(huge); });
    CHECK(e.find(huge + ": invalid JSON") != std::string::npos);
    CHECK(e.find("[json.exception") == std::string::npos);
    json j = tiny();
    CHECK(test::error_message_of([&] {
            apply_overrides(j, {"train.lr=1e999"});
          }).find("--set train.lr=1e999: the number 1e999 is out of range") != std::string::npos);
    CHECK(test::error_message_of([&] {
            apply_overrides(j, {"train.ema=[0.9"});
          }).find("--set train.ema=[0.9") != std::string::npos);
    apply_overrides(j, {"name=1.2.3", "train.lr=2e-4"});  // a bare word stays a string
    CHECK(j["name"] == "1.2.3");
    CHECK(j["train"]["lr"] == 2e-4);
    // a FIFO where the configuration should be is refused, not waited on
    const std::string fifo = (d.path / "fifo.json").string();
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    CHECK(test::error_message_of([&] {
            read_json_file(fifo);
          }).find("is a FIFO, not a regular file") != std::string::npos);
  }

  TEST_CASE("racing run directories never share a number") {
    TempDir d("race");
    const std::string root = (d.path / "runs").string();
    constexpr int kRacers = 16;
    std::vector<std::string> made(kRacers);
    std::atomic<int> ready{0};
    std::vector<std::thread> threads;
    for (int i = 0; i < kRacers; ++i)
      threads.emplace_back([&, i] {
        ++ready;
        while (ready < kRacers) std::this_thread::yield();
        made[size_t(i)] = RunDir::create(root, "ct-same").path().filename().string();
      });
    for (auto& t : threads) t.join();
    std::set<std::string> numbers;
    for (const std::string& m : made) numbers.insert(m.substr(0, 5));
    CHECK(numbers.size() == size_t(kRacers));
    CHECK(runs_under(root).size() == size_t(kRacers));
  }

  TEST_CASE("checkpoint names and files that are not checkpoints are errors, not crashes") {
    TempDir d("names");
    const RunDir run = RunDir::create((d.path / "runs").string(), "ct");
    std::ofstream(run.checkpoint_dir() / "checkpoint-1234567890123456789012345.safetensors") << "x";
    CHECK(test::error_message_of([&] { run.latest_checkpoint(); }).find("out of range") !=
          std::string::npos);
    fs::remove(run.checkpoint_dir() / "checkpoint-1234567890123456789012345.safetensors");
    const fs::path fifo = run.checkpoint_dir() / "checkpoint-00000005.safetensors";
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    CHECK(test::error_message_of([&] {
            run.latest_checkpoint();
          }).find("is a FIFO, not a regular file") != std::string::npos);
    CHECK(test::error_message_of([&] {
            load_network(fifo.string(), "ema", Device::cpu());
          }).find("is a FIFO") != std::string::npos);
  }

  TEST_CASE("checkpoint metadata is validated field by field, naming the file and the field") {
    TempDir d("meta");
    const json j = tiny();
    const RunConfig cfg = config(j);
    const std::string good = make_checkpoint(d.path, j, 2);
    const std::string bad = (d.path / "bad.safetensors").string();
    struct Case {
      std::string key;
      std::optional<std::string> value;
      std::string expect;
    };
    const std::vector<Case> cases = {
        {"format", "x", "metadata \"format\": unknown checkpoint format \"x\""},
        {"step", "-5", "metadata \"step\": \"-5\" is not an integer"},
        {"step", "2junk", "metadata \"step\": \"2junk\" is not an integer"},
        {"step", "1234567890123456789012345", "metadata \"step\""},
        {"gen", "1,-1", "metadata \"gen\": \"1,-1\" is not a generator state"},
        {"gen", "7", "metadata \"gen\": \"7\" is not a generator state"},
        {"dropout", "x,1", "metadata \"dropout\""},
        {"loader_epoch", "-1", "metadata \"loader_epoch\": \"-1\""},
        {"loader_index", "99999999", "metadata \"loader_index\": \"99999999\" is not an integer"},
        {"target_updates", "-7", "metadata \"target_updates\": \"-7\""},
        {"target_updates", "3", "metadata \"target_updates\": \"3\" is not an integer in [0, 2]"},
        {"skipped_steps", "9", "metadata \"skipped_steps\""},
        {"emas", "[]", "the checkpoint has 0 eval EMAs, the configuration 1"},
        {"emas", "{", "metadata \"emas\": invalid JSON"},
        {"emas", R"([{"name": 0.9, "updates": 2, "images_seen": 8}])", "].name: expected a"},
        {"emas", R"([{"name": "0.5", "updates": 2, "images_seen": 8}])",
         "but the configuration's EMA 0 is \"0.9\""},
        {"emas", R"([{"name": "0.9", "updates": 5, "images_seen": 8}])", "].updates"},
        {"emas", std::string(1000, '[') + std::string(1000, ']'), "nested more than"},
        {"config", "{\"mode\": 3}", "metadata \"config\""},
        {"step", std::nullopt, "metadata \"step\" missing"},
    };
    for (const Case& c : cases) {
      CAPTURE(c.key);
      CAPTURE(c.value.value_or("(removed)"));
      rewrite_checkpoint(good, bad, c.key, c.value);
      const std::string resume = test::error_message_of([&] { Trainer t(cfg, bad, nullptr); });
      const std::string sample =
          test::error_message_of([&] { load_network(bad, "ema", Device::cpu()); });
      if (c.key == "config") {
        // a resumed run takes its configuration from config.json; sampling from the checkpoint
        CHECK(sample.find(bad) != std::string::npos);
        CHECK(sample.find(c.expect) != std::string::npos);
        CHECK(sample.find("[json.exception") == std::string::npos);
        continue;
      }
      CHECK(resume.find(bad) != std::string::npos);
      CHECK(resume.find(c.expect) != std::string::npos);
      if (c.key == "format" || c.key == "step") CHECK(sample.find(c.expect) != std::string::npos);
    }
    // sampling never falls back to the online weights when the EMA records are lost
    rewrite_checkpoint(good, bad, "emas", "[]");
    CHECK(test::error_message_of([&] {
            load_network(bad, "ema", Device::cpu());
          }).find("metadata \"emas\" lists 0 eval EMAs, but the run's configuration keeps 1") !=
          std::string::npos);
    CHECK_NOTHROW(Trainer(cfg, good, nullptr));
  }

  TEST_CASE("non-finite weights are refused on loading, named, unless asked for") {
    TempDir d("nan_load");
    const json j = tiny();
    const RunConfig cfg = config(j);
    const std::string good = make_checkpoint(d.path, j, 2);
    const std::string bad = (d.path / "nan.safetensors").string();
    nn::SafetensorsFile f(good);
    std::string ema_weight;
    for (const std::string& n : f.names())
      if (n.rfind("ema0.", 0) == 0) ema_weight = n;
    REQUIRE(!ema_weight.empty());
    rewrite_checkpoint(good, bad, "", std::nullopt, ema_weight, std::nan(""));
    const std::string e = test::error_message_of([&] { load_network(bad, "ema", Device::cpu()); });
    CHECK(e.find(ema_weight) != std::string::npos);
    CHECK(e.find("non-finite values") != std::string::npos);
    CHECK(e.find("--allow-nonfinite") != std::string::npos);
    CHECK_NOTHROW(load_network(bad, "online", Device::cpu()));  // the online weights are fine
    CHECK_NOTHROW(load_network(bad, "ema", Device::cpu(), true));
    CHECK(test::error_message_of([&] { Trainer t(cfg, bad, nullptr); }).find(ema_weight) !=
          std::string::npos);
    rewrite_checkpoint(good, bad, "", std::nullopt, ema_weight, INFINITY);
    CHECK(test::error_message_of([&] {
            Trainer t(cfg, bad, nullptr);
          }).find("a diverged state cannot be resumed") != std::string::npos);
  }

  TEST_CASE("weights that turn non-finite stop the run at once and are never checkpointed") {
    TempDir d("nan_train");
    Trainer t(config(tiny()), std::nullopt, nullptr);
    t.train_step();
    {
      NoGradGuard ng;
      Tensor w = t.online().parameters()[3];
      fill_(w, std::nan(""));
    }
    const std::string p = (d.path / "c.safetensors").string();
    const std::string save = test::error_message_of([&] { t.save_checkpoint(p); });
    CHECK(save.find("not writing the checkpoint") != std::string::npos);
    CHECK(save.find("model.") != std::string::npos);
    CHECK_FALSE(fs::exists(p));
    const std::string step = test::error_message_of([&] { t.train_step(); });
    CHECK(step.find("step 2: the network's weights are not finite") != std::string::npos);
    CHECK(step.find(t.online().named_parameters()[3].first) != std::string::npos);
  }

  TEST_CASE("a run stops after train.max_skipped_steps steps in a row with non-finite gradients") {
    // noise levels beyond f32's range make every loss and gradient non-finite, from the start
    json j = tiny();
    j["noise"] = {{"sigma_max", 1e300}};
    j["train"]["max_skipped_steps"] = 3;
    Trainer t(config(j), std::nullopt, nullptr);
    CHECK(t.train_step().skipped);
    CHECK(t.train_step().skipped);
    CHECK(t.consecutive_skipped_steps() == 2);
    const std::string e = test::error_message_of([&] { t.train_step(); });
    CHECK(e.find("3 steps in a row had non-finite gradients (train.max_skipped_steps)") !=
          std::string::npos);
    CHECK(e.find("step 3: loss") != std::string::npos);
    // 0: never stop (the loss scaler's f16 runs, forensics)
    j["train"]["max_skipped_steps"] = 0;
    Trainer u(config(j), std::nullopt, nullptr);
    for (int i = 0; i < 5; ++i) CHECK(u.train_step().skipped);
  }

  TEST_CASE("resume: fewer steps than done is an error that changes nothing") {
    TempDir d("fewer");
    TrainCommand c;
    c.config = write_config_file(d.path, tiny());
    c.out = (d.path / "runs").string();
    REQUIRE(run_train(c) == 0);
    const fs::path run = runs_under(d.path / "runs").at(0);
    const std::string before = file_text(run / "config.json");
    TrainCommand r;
    r.resume = run.string();
    r.sets = {"train.steps=1"};
    CHECK(test::error_message_of([&] {
            run_train(r);
          }).find("train.steps = 1 is below the step of the latest checkpoint (4") !=
          std::string::npos);
    CHECK(file_text(run / "config.json") == before);
  }

  TEST_CASE("resume repairs what a kill left: config.json, grids, temporaries, metrics") {
    TempDir d("repair");
    TrainCommand c;
    c.config = write_config_file(d.path, tiny());
    c.out = (d.path / "runs").string();
    REQUIRE(run_train(c) == 0);
    const fs::path run = runs_under(d.path / "runs").at(0);
    const std::string config_text = file_text(run / "config.json");
    const fs::path last = run / "checkpoints" / "checkpoint-00000004.safetensors";
    REQUIRE(fs::exists(last));
    const std::string last_bytes = file_text(last);

    // a kill while config.json was rewritten in place (the old cm truncated it first)
    std::ofstream(run / "config.json", std::ios::trunc).close();
    // a kill between the final checkpoint and the final grids
    for (const char* g : {"grid-00000004-1step.png", "grid-00000004-2step.png"})
      REQUIRE(fs::remove(run / "samples" / g));
    // temporaries of killed writers: a dead process's (a child that has exited) and a live one's
    const pid_t child = ::fork();
    if (child == 0) ::_exit(0);
    ::waitpid(child, nullptr, 0);
    const fs::path stale = run / "checkpoints" /
                           ("checkpoint-00000006.safetensors.tmp." + std::to_string(child) + ".0");
    const fs::path live =
        run / "checkpoints" /
        ("checkpoint-00000006.safetensors.tmp." + std::to_string(::getpid()) + ".7");
    std::ofstream(stale) << "partial";
    std::ofstream(live) << "partial";
    // metrics of steps after the checkpoint resumed from, and a torn last line
    std::ofstream(run / "metrics.jsonl", std::ios::app)
        << "{\"step\": 5, \"loss\": 1}\n{\"step\": 6, \"lo";

    TrainCommand r;
    r.resume = run.string();
    REQUIRE(run_train(r) == 0);
    CHECK(file_text(run / "config.json") == config_text);  // recovered from the checkpoint
    CHECK(fs::exists(run / "samples" / "grid-00000004-1step.png"));
    CHECK(fs::exists(run / "samples" / "grid-00000004-2step.png"));
    CHECK_FALSE(fs::exists(stale));
    CHECK(fs::exists(live));
    CHECK(file_text(last) == last_bytes);  // nothing trained: the run was complete
    const std::string metrics = file_text(run / "metrics.jsonl");
    CHECK(metrics.find("\"step\": 5") == std::string::npos);
    CHECK(metrics.find("\"lo\n") == std::string::npos);
    CHECK(metrics.back() == '\n');
    CHECK(file_text(run / "log.txt").find("recovered from") != std::string::npos);
    fs::remove(live);

    // and then the run goes on
    r.sets = {"train.steps=6"};
    REQUIRE(run_train(r) == 0);
    CHECK(fs::exists(run / "checkpoints" / "checkpoint-00000006.safetensors"));
  }
}
