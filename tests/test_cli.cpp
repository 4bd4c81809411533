// The command line of `cm` (runner/cli.h), run through the real binary (CM_EXE, given by
// tests/CMakeLists.txt): whole-string numbers and their ranges, choices, unknown options and
// missing values (exit code 2, the option and the value named on stderr), --help per command
// (exit 0), the bound on --n and the memory/disk estimate, non-finite samples, atomic outputs.
// One tiny run (cm train, 2 steps of a small network) is trained once for the whole file.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "helpers.h"
#include "runner/cli.h"
#include "runner/evaluate.h"

using namespace cm;
using namespace cm::runner;
using namespace cm::test;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

const fs::path& temp_root() {
  static const fs::path p = [] {
    fs::path d = fs::temp_directory_path() / ("cm_test_cli_" + std::to_string(::getpid()));
    fs::remove_all(d);
    fs::create_directories(d);
    return d;
  }();
  return p;
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string joined(const std::vector<std::string>& args) {
  std::string s = "cm";
  for (const std::string& a : args) s += " " + a;
  return s;
}

struct Run {
  int rc = -1;
  std::string out, err;
};

// Runs the cm binary with `args`, stdout and stderr to files of the temp dir.
Run cm_run(const std::vector<std::string>& args) {
  const fs::path out = temp_root() / "stdout.txt", err = temp_root() / "stderr.txt";
  std::vector<std::string> all = {CM_EXE};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& s : all) argv.push_back(s.data());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    const int fo = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int fe = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fo < 0 || fe < 0) ::_exit(126);
    ::dup2(fo, 1);
    ::dup2(fe, 2);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  // at most two minutes: a command line that starts real work by mistake (the bugs this file
  // guards against) must not hang the suite
  int status = 0;
  pid_t done = 0;
  for (int waited_ms = 0; (done = ::waitpid(pid, &status, WNOHANG)) == 0; waited_ms += 10) {
    if (waited_ms > 120'000) {
      ::kill(pid, SIGKILL);
      done = ::waitpid(pid, &status, 0);
      FAIL_CHECK(joined(args), ": still running after 120 s; killed");
      break;
    }
    ::usleep(10'000);
  }
  REQUIRE(done == pid);
  Run r;
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = read_file(out);
  r.err = read_file(err);
  return r;
}

// The command fails with exit code `rc` and every piece on stderr.
void check_fails(const std::vector<std::string>& args, const std::vector<std::string>& pieces,
                 int rc = 2) {
  const Run r = cm_run(args);
  INFO(joined(args), "\nstderr: ", r.err, "\nstdout: ", r.out);
  CHECK(r.rc == rc);
  for (const std::string& p : pieces) CHECK_MESSAGE(r.err.find(p) != std::string::npos, p);
}

// A tiny CT run of 2 steps, trained once by `cm train` (a few seconds); its run directory.
const std::string& tiny_run() {
  static const std::string dir = [] {
    const fs::path out = temp_root() / "runs";
    const Run r = cm_run({"train", std::string(CM_SOURCE_DIR) + "/configs/default.json",
                          "--set", "train.steps=2",
                          "--set", "train.batch=4",
                          "--set", "network.model_channels=8",
                          "--set", "network.channel_mult=[1,2]",
                          "--set", "network.num_blocks=1",
                          "--set", "network.attn_resolutions=[4]",
                          "--set", "consistency.total_steps=2",
                          "--set", "sample.grid=4",
                          "--out", out.string()});
    INFO("cm train: ", r.err, r.out);
    REQUIRE(r.rc == 0);
    std::string run;
    for (const auto& e : fs::directory_iterator(out))
      if (e.is_directory()) run = e.path().string();
    REQUIRE(!run.empty());
    return run;
  }();
  return dir;
}

}  // namespace

TEST_SUITE("cli") {
  TEST_CASE("numbers are parsed whole: --n 1e3, --n 2x, --batch abc are usage errors") {
    const std::string run = tiny_run();
    const std::string out = (temp_root() / "never").string();
    check_fails({"sample", run, "--n", "1e3", "--out", out},
                {"cm sample", "--n 1e3", "positive integer"});
    check_fails({"sample", run, "--n", "2x", "--out", out}, {"--n 2x", "positive integer"});
    check_fails({"sample", run, "--n", "+5", "--out", out}, {"--n +5"});
    check_fails({"sample", run, "--n", "0x10", "--out", out}, {"--n 0x10"});
    check_fails({"sample", run, "--n", "", "--out", out}, {"--n \"\""});
    check_fails({"sample", run, "--n", "0", "--out", out}, {"--n 0: expected a positive integer"});
    check_fails({"sample", run, "--batch", "abc", "--out", out}, {"--batch abc"});
    check_fails({"bench", "--batch", "abc"}, {"cm bench", "--batch abc", "positive integer"});
    check_fails({"eval", run, "--batch", "abc", "--classifier", "c"}, {"--batch abc"});
    check_fails({"classifier", "train", "--data", "digits", "--steps", "1e3"}, {"--steps 1e3"});
    CHECK(!fs::exists(out));  // nothing was written
  }

  TEST_CASE("negative and out-of-range numbers: --batch -1, --repeats -1, --n 10000000000") {
    const std::string run = tiny_run();
    check_fails({"bench", "--batch", "-1"}, {"--batch -1", "positive integer"});
    check_fails({"bench", "--batch=-1"}, {"--batch -1"});
    check_fails({"bench", "--batch", "0"}, {"--batch 0"});
    check_fails({"bench", "--batch", "99999999999999999999999"},
                {"--batch 99999999999999999999999", "at most"});
    check_fails({"bench", "--network", "ddpmpp-digits-8", "--repeats", "-1", "--case", "forward"},
                {"--repeats -1", "positive integer"});
    check_fails({"bench", "--network", "ddpmpp-digits-8", "--repeats", "0", "--case", "forward"},
                {"--repeats 0"});
    check_fails({"sample", run, "--n", "10000000000"},
                {"--n 10000000000", "at most 10000000", "memory"});
    check_fails({"eval", run, "--n", "10000000001", "--classifier", "c"}, {"--n 10000000001"});
    check_fails({"sample", run, "--seeds", "0-99999999"}, {"--seeds 0-99999999", "10000000"});
    check_fails({"sample", run, "--seeds", "0-18446744073709551615"}, {"--seeds"});
    check_fails({"classifier", "train", "--data", "digits", "--seed", "-3"},
                {"--seed -3", "non-negative integer"});
    check_fails({"classifier", "train", "--data", "digits", "--lr", "-1"},
                {"--lr -1", "must be positive"});
    check_fails({"classifier", "train", "--data", "digits", "--lr", "abc"}, {"--lr abc"});
    check_fails({"classifier", "train", "--data", "digits", "--lr", "nan"}, {"--lr nan"});
  }

  TEST_CASE("choices name the option, the value and what is allowed") {
    const std::string run = tiny_run();
    check_fails({"sample", run, "--quantize", "ceil"}, {"--quantize ceil", "floor or round"});
    check_fails({"sample", run, "--weights", "best"}, {"--weights best", "ema:RATE"});
    check_fails({"sample", run, "--weights", "ema:x"}, {"--weights ema:x"});
    check_fails({"sample", run, "--steps", "3"}, {"--steps 3: must be 1 or 2"});
    check_fails({"sample", run, "--class", "cat"}, {"--class cat", "class index", "or random"});
    check_fails({"sample", run, "--class", "-1"}, {"--class -1", "class index"});
    check_fails({"sample", run, "--class", "2"}, {"--class", "unconditional"}, 1);  // bad input
    check_fails({"sample", run, "--sigmas", "1,x"}, {"--sigmas 1,x", "\"x\" is not a number"});
    check_fails({"sample", run, "--device", "gpu"}, {"--device gpu", "invalid device"});
    check_fails({"eval", run, "--metric", "kid"},
                {"--metric kid: expected domain, fid, is, sfid or prec-recall"});
    check_fails({"bench", "--precision", "f64"}, {"--precision f64", "f32, tf32, bf16 or f16"});
    check_fails({"bench", "--precision", "bf16"}, {"--precision bf16 needs a GPU"});
    check_fails({"bench", "--case", "back"}, {"--case back", "forward, ct, sample or allreduce"});
    check_fails({"bench", "--network", "nope"}, {"--network nope", "unknown network"});
    check_fails({"info", "--preset", "nope"}, {"--preset nope", "unknown network"});
    check_fails({"classifier", "train", "--data", "cifar10"},
                {"--data cifar10", "digits or fashion-mnist"});
  }

  TEST_CASE("unknown options, surplus arguments and missing values") {
    const std::string run = tiny_run();
    check_fails({"sample", run, "--bogus"}, {"cm sample", "unknown option --bogus", "--help"});
    check_fails({"sample", run, "--bogus=3"}, {"unknown option --bogus"});
    check_fails({"sample", run, "other"}, {"unexpected argument other"});
    check_fails({"sample"}, {"cm sample: needs a RUN_DIR or a CHECKPOINT"});
    check_fails({"sample", run, "--n"}, {"option --n needs a value"});
    check_fails({"sample", run, "--n", "--seeds", "0-3"}, {"option --n needs a value"});
    check_fails({"sample", run, "--out", "--n", "3"}, {"option --out needs a value"});
    check_fails({"sample", run, "--n", "4", "--seeds", "0-3"}, {"--n or --seeds, not both"});
    check_fails({"bench", "--batch"}, {"cm bench", "option --batch needs a value"});
    check_fails({"bench", "--frob", "1"}, {"unknown option --frob"});
    check_fails({"train"}, {"cm train", "CONFIG"});
    check_fails({"train", "a.json", "--resume", "r"}, {"--resume takes no CONFIG"});
    check_fails({"train", "a.json", "--set", "foo"}, {"--set foo", "key=value"});
    check_fails({"train", "a.json", "b.json"}, {"unexpected argument b.json"});
    check_fails({"info"}, {"cm info", "CONFIG, --preset NAME or --presets"});
    check_fails({"info", "--preset"}, {"option --preset needs a value"});
    check_fails({"eval"}, {"needs exactly one RUN_DIR or CHECKPOINT"});
    check_fails({"eval", "--ref-only", "--data", "digits:test", "--out", "x.npz", "--n", "5",
                 "--classifier", "c"},
                {"--n is not for --ref-only"});
    check_fails({"classifier"}, {"cm classifier", "expected the subcommand train"});
    check_fails({"classifier", "test"}, {"expected the subcommand train, got test"});
    check_fails({"classifier", "train"}, {"needs --data"});
    check_fails({"frobnicate"}, {"unknown command frobnicate", "usage:"});
    check_fails({"report"}, {"cm report", "needs at least one RUN_DIR"});
    check_fails({"report", "x", "--watch", "-3"}, {"--watch"});
    check_fails({"report", "x", "--bogus"}, {"unknown option --bogus"});
    check_fails({"report", "/no/such/run"}, {"cm report", "/no/such/run", "not a run directory"},
                1);
    check_fails({}, {"expected a command", "usage:"});
  }

  TEST_CASE("--help of cm and of every command: exit 0, its options with types and defaults") {
    const std::vector<std::pair<std::vector<std::string>, std::vector<std::string>>> cases = {
        {{"--help"}, {"usage:", "cm sample", "cm bench"}},
        {{"train", "--help"}, {"--resume", "--set", "KEY=VALUE", "--out", "runs"}},
        {{"sample", "--help"},
         {"--n", "INT>0", "64", "--seeds", "--steps", "--sigmas", "--weights", "--quantize",
          "{floor,round}", "--device", "--batch", "256", "--out", "--allow-nonfinite", "--class",
          "K|random"}},
        {{"eval", "--help"},
         {"--metric", "{domain,fid,is,sfid,prec-recall}", "--n", "--classifier", "--inception",
          "--ref", "--data", "--ref-only", "--batch", "--allow-nonfinite"}},
        {{"classifier", "train", "--help"},
         {"--data", "{digits,fashion-mnist}", "--steps", "--batch", "--lr", "FLOAT>0", "--seed",
          "INT>=0", "--device", "--out"}},
        {{"classifier", "--help"}, {"train"}},
        {{"info", "--help"}, {"CONFIG", "--preset", "--presets"}},
        {{"bench", "--help"},
         {"--network", "ddpmpp-small-28", "--batch", "--precision", "{f32,tf32,bf16,f16}", "--case",
          "--repeats"}},
        {{"sample", "x", "--n", "3", "-h"}, {"--n"}},
        {{"bench", "--help"}, {"--bucket-mb"}},
        {{"edit", "--help"}, {"--teacher-steps", "builtin:center|left|top|letter[:X]|boxes[:K]"}},
        {{"report", "--help"}, {"RUN_DIR", "--out", "--watch", "self-contained HTML"}},
        // every command's help ends with examples of it
        {{"train", "--help"}, {"Examples:", "  cm train configs/default.json", "mpirun -np 4"}},
        {{"sample", "--help"}, {"Examples:", "  cm sample runs/"}},
        {{"eval", "--help"}, {"Examples:", "  cm eval --ref-only"}},
        {{"classifier", "train", "--help"}, {"Examples:", "  cm classifier train --data digits"}},
        {{"edit", "--help"}, {"Examples:", "  cm edit RUN --task colorize"}},
        {{"info", "--help"}, {"Examples:", "  cm info --presets"}},
        {{"bench", "--help"}, {"Examples:", "  cm bench --network"}},
        {{"report", "--help"}, {"Examples:", "  cm report runs/"}},
        {{"--help"},
         {"cm report RUN_DIR", "exit codes: 0 done", "2 a usage error", "3 an internal"}},
        // the build: revision, build type, CUDA, MPI, NCCL, the CPU's kernels
        {{"--version"}, {"cm ", " build)", "CUDA: ", "MPI: ", "NCCL: ", "CPU: convolutions"}},
    };
    for (const auto& [args, pieces] : cases) {
      const Run r = cm_run(args);
      INFO(joined(args), "\n", r.out, r.err);
      CHECK(r.rc == 0);
      CHECK(r.err.empty());
      for (const std::string& p : pieces) CHECK_MESSAGE(r.out.find(p) != std::string::npos, p);
    }
  }

  TEST_CASE("cm sample writes its files, recipe.json among them, atomically") {
    const std::string run = tiny_run();
    const fs::path out = temp_root() / "samples3";
    const Run r = cm_run({"sample", run, "--seeds", "4-5,9", "--out", out.string(), "--batch", "2",
                          "--allow-nonfinite"});
    INFO(r.err, r.out);
    REQUIRE(r.rc == 0);
    for (const char* f :
         {"000004.png", "000005.png", "000009.png", "grid.png", "samples.npz", "recipe.json"})
      CHECK_MESSAGE(fs::is_regular_file(out / f), f);
    const json recipe = json::parse(read_file(out / "recipe.json"));
    CHECK(recipe.at("n") == 3);
    CHECK(recipe.at("seeds") == "4-5,9");
    CHECK(recipe.at("quantization") == "floor");
    for (const auto& e : fs::directory_iterator(out))
      CHECK_MESSAGE(e.path().filename().string().find(".tmp") == std::string::npos, e.path());
    // the default output directory of a run: RUN_DIR/samples
    REQUIRE(cm_run({"sample", run, "--n", "2"}).rc == 0);
    CHECK(fs::is_regular_file(fs::path(run) / "samples" / "recipe.json"));
  }

  TEST_CASE("valid cm bench and cm info command lines run") {
    const Run b = cm_run({"bench", "--network", "ddpmpp-digits-8", "--case", "forward", "--repeats",
                          "1", "--batch", "2"});
    INFO(b.err);
    CHECK(b.rc == 0);
    CHECK(b.out.find("\"case\":\"forward\"") != std::string::npos);
    CHECK(b.out.find("\"repeats\":1") != std::string::npos);
    const Run i = cm_run({"info", "--preset", "ddpmpp-digits-8"});
    CHECK(i.rc == 0);
    CHECK(i.out.find("trainable parameters") != std::string::npos);
    CHECK(cm_run({"info", "--presets"}).out.find("ddpmpp-small-28") != std::string::npos);
  }

  TEST_CASE("parse_command_line fills the commands' structs") {
    auto parse = [](std::vector<std::string> args) {
      args.insert(args.begin(), "cm");
      std::vector<const char*> argv;
      for (const std::string& s : args) argv.push_back(s.c_str());
      return parse_command_line(int(argv.size()), argv.data());
    };
    const Command s = parse({"sample", "r", "--n", "5", "--steps", "2", "--quantize", "round"});
    const SampleCommand& sc = std::get<SampleCommand>(s);
    CHECK(sc.source == "r");
    CHECK(sc.n == 5);
    CHECK(sc.seeds == "0-4");
    CHECK(sc.steps == "2");
    CHECK(sc.quantize == "round");
    CHECK(!sc.allow_nonfinite);
    CHECK(!sc.class_label);  // random: each seed's own class
    CHECK(!sc.class_given);
    CHECK(parse_seeds(sc.seeds).size() == 5);
    const SampleCommand k = std::get<SampleCommand>(parse({"sample", "r", "--class", "7"}));
    CHECK(k.class_label == 7);
    CHECK(k.class_given);
    CHECK(std::get<SampleCommand>(parse({"sample", "r", "--n", "3", "--n", "7"})).n == 7);

    const EvalCommand e = std::get<EvalCommand>(parse({"eval", "r", "--classifier", "c"}));
    CHECK(e.metric == "domain");
    CHECK(e.n == 10000);
    CHECK(e.seeds == "0-9999");
    CHECK(e.batch == 64);
    const EvalCommand f = std::get<EvalCommand>(
        parse({"eval", "r", "--inception", "i", "--ref", "x.npz", "--allow-nonfinite"}));
    CHECK(f.metric == "fid");
    CHECK(f.n == 50000);
    CHECK(f.allow_nonfinite);

    const TrainCommand t =
        std::get<TrainCommand>(parse({"train", "c.json", "--set", "a=1", "--set", "b.c=x"}));
    CHECK(t.config == "c.json");
    CHECK(t.sets == std::vector<std::string>{"a=1", "b.c=x"});
    CHECK(t.out == "runs");
    CHECK(std::get<TrainCommand>(parse({"train", "--resume", "r", "--set", "train.steps=9"}))
              .resume == "r");

    const BenchCommand b = std::get<BenchCommand>(
        parse({"bench", "--case", "ct", "--case", "forward", "--repeats", "3"}));
    CHECK(b.cases == std::vector<std::string>{"ct", "forward"});
    CHECK(b.repeats == 3);
    CHECK(b.batch == 0);
    const ClassifierCommand c = std::get<ClassifierCommand>(
        parse({"classifier", "train", "--data", "fashion-mnist", "--lr", "2e-3", "--seed", "7"}));
    CHECK(c.steps == 3000);
    CHECK(c.lr == 2e-3);
    CHECK(c.seed == 7);
    CHECK(std::holds_alternative<Help>(parse({"info", "--help"})));
    check_error([&] { parse({"sample", "r", "--n", "2x"}); }, {"--n 2x"});
    try {
      parse({"bench", "--batch", "-1"});
      FAIL("no error");
    } catch (const UsageError& u) {
      CHECK(u.command() == "bench");
    }
  }

  TEST_CASE("the memory and disk estimate refuses, giving both figures") {
    const ImageFootprint f = image_footprint(10, 1, 8, 4, false);
    CHECK(f.memory == 10 * 64 + 4 * 4 * 64);
    CHECK(f.disk == 0);
    const ImageFootprint g = image_footprint(10, 1, 8, 4, true);
    CHECK(g.disk > 2 * 10 * 64);
    check_footprint("x", f, f.memory, std::nullopt, "");  // exactly enough
    check_footprint("x", f, std::nullopt, std::nullopt, "");
    check_error([&] { check_footprint("cm sample: 10 images", g, 1000, std::nullopt, "d"); },
                {"cm sample: 10 images", std::to_string(g.memory) + " bytes", "1000 bytes",
                 "MemAvailable"});
    check_error([&] { check_footprint("cm sample: 10 images", g, g.memory, 500, "/some/dir"); },
                {std::to_string(g.disk) + " bytes", "500 bytes", "/some/dir"});
    CHECK(available_memory().value_or(0) > 0);
    CHECK(available_disk((temp_root() / "not" / "yet").string()).value_or(0) > 0);
    // 10 million CIFAR-sized images: 30 GB of memory, which this test machine is assumed to lack
    const ImageFootprint big = image_footprint(10'000'000, 3, 32, 256, true);
    CHECK(big.memory > uint64_t(30e9));
  }

  TEST_CASE("non-finite samples are an error naming the seeds, unless --allow-nonfinite") {
    LoadedNetwork m = load_network(tiny_run(), "online", Device::cpu());
    {
      NoGradGuard ng;
      for (Tensor p : m.net->parameters()) fill_(p, std::nan(""));
    }
    const Sampler one = choose_sampler(m.config, "1", "");
    const std::vector<uint64_t> seeds = {3, 4, 5, 6, 7};
    check_error(
        [&] { generate_images(m, seeds, one, Quantization::Floor, Device::cpu(), 2); },
        {"non-finite values", "first seeds affected: 3, 4", "diverged", "--allow-nonfinite"});
    const Tensor u8 = generate_images(m, seeds, one, Quantization::Floor, Device::cpu(), 2, true);
    REQUIRE(u8.shape() == Shape{5, 1, 8, 8});
    for (uint8_t v : u8.to_vector<uint8_t>()) CHECK(v == 0);
  }
}
