// The `cm` command: parses the command line (runner/cli.h) and runs the command.
//   cm train CONFIG [--set key=value ...] [--out DIR]   train (CT, CD or an EDM teacher)
//   cm train --resume RUN_DIR [--set train.steps=N]      continue a run exactly where it stopped
//   cm sample RUN_DIR|CHECKPOINT [options]               images (PNG, grid, .npz) from a model
//   cm eval RUN_DIR|CHECKPOINT [options]                 FID, IS or the domain metric of a model
//   cm classifier train --data digits|fashion-mnist      the domain metric's classifier
//   cm info CONFIG|--preset NAME                         network summary with parameter counts
//   cm bench [options]                                   speed of forward / CT step / sampling
// Exit codes: 0 done (and --help), 1 the command failed on its input or environment (a cm::Error,
// a file-system or system error, out of memory), 2 a usage error, 3 an internal error (any other
// exception: a bug); a signal: 128 + its number.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <new>
#include <system_error>

#include "datasets/png.h"
#include "dist/communicator.h"
#include "nn/atomic_file.h"
#include "runner/bench.h"
#include "runner/cli.h"
#include "runner/evaluate.h"
#include "runner/images.h"
#include "runner/progress.h"
#include "runner/train_command.h"
#include "runner/trainer.h"
#include "tensor/cpu/conv_onednn.h"

namespace fs = std::filesystem;
using namespace cm;
using namespace cm::runner;

namespace {

int run_sample(const SampleCommand& c) {
  // Across ranks (mpirun): each draws a share of the seeds (on its own GPU); rank 0 writes.
  dist::Communicator& comm = dist::world();
  const Device dev = dist::rank_device(Device::parse(c.device), comm, "--device");
  LoadedNetwork m = load_network(c.source, c.weights, dev, c.allow_nonfinite);
  const Quantization q = parse_quantization(c.quantize);
  Sampler sampler = choose_sampler(m.config, c.steps, c.sigmas);
  check_class_choice(m, c.class_label, c.class_given);
  sampler.fixed_class = c.class_label;
  // RUN_DIR/samples, or samples/ beside a checkpoint
  const fs::path out = c.out                        ? fs::path(*c.out)
                       : fs::is_directory(c.source) ? fs::path(c.source) / "samples"
                                                    : fs::path(c.source).parent_path() / "samples";
  // Before any work: the images fit in memory and their files on the disk.
  const int64_t ch = m.config.network.in_channels(), res = m.config.network.img_resolution();
  check_footprint(std::to_string(c.n) + " images of " + std::to_string(ch) + "×" +
                      std::to_string(res) + "×" + std::to_string(res),
                  image_footprint(c.n, ch, res, c.batch, true), available_memory(),
                  available_disk(out.string()), out.string());
  const std::vector<uint64_t> seeds = parse_seeds(c.seeds);
  Tensor u8;
  {
    TerminalProgress bar(int64_t(seeds.size()), "images",
                         comm.rank() == 0 && TerminalProgress::stdout_is_terminal());
    u8 = generate_images_on_ranks(m, seeds, sampler, q, dev, c.batch, c.allow_nonfinite, comm,
                                  [&](int64_t done) { bar.update(done); });
  }
  if (comm.rank() != 0) return 0;
  fs::create_directories(out);
  for (const std::string& p : nn::remove_stale_temporaries(out.string()))
    std::printf("removed %s (left by a cm that was killed while writing it)\n", p.c_str());
  for (size_t i = 0; i < seeds.size(); ++i) {
    char name[32];
    std::snprintf(name, sizeof name, "%06llu.png", (unsigned long long)seeds[i]);
    data::write_png((out / name).string(), select(u8, 0, int64_t(i)));
  }
  data::write_png((out / "grid.png").string(), make_grid(u8));
  // a class-conditional model's classes beside the images (arr_1, as the reference's
  // image_sample.py writes them)
  const int64_t classes = m.config.network.label_dim();
  Tensor labels;
  json class_record = nullptr;
  if (classes > 0) {
    const std::vector<int64_t> k = image_classes(seeds, classes, sampler.fixed_class);
    labels = from_vector(k, {int64_t(k.size())});
    class_record = c.class_label ? json(*c.class_label) : json("random (each seed's own)");
  }
  write_npz((out / "samples.npz").string(), u8, labels);
  const json recipe = {{"weights", m.weights},   {"class", class_record},
                       {"mode", m.config.mode},  {"n", seeds.size()},
                       {"seeds", c.seeds},       {"sampler", sampler.name},
                       {"sigmas", sampler.taus}, {"quantization", quantization_name(q)},
                       {"nfe", sampler.nfe}};
  nn::write_atomic((out / "recipe.json").string(), recipe.dump(2) + "\n");
  std::printf("wrote %zu images to %s (grid.png, samples.npz, recipe.json)\n", seeds.size(),
              out.c_str());
  return 0;
}

int run_info(const InfoCommand& c) {
  if (c.presets) {
    for (const std::string& n : nn::songunet_preset_names()) std::puts(n.c_str());
    for (const std::string& n : nn::adm_unet_preset_names()) std::puts(n.c_str());
    return 0;
  }
  NetworkConfig net;
  std::string title;
  if (c.preset) {
    net = network_from_preset(*c.preset);
    title = *c.preset;
  } else {
    net = typed_config(resolve_config(read_json_file(*c.config), *c.config)).network;
    title = *c.config;
  }
  Generator gen(0);
  const std::unique_ptr<nn::Network> model = net.make(gen);
  std::printf("%s: %s %lldx%lld, %lld -> %lld channels\n%s", title.c_str(),
              model->type_name().c_str(), (long long)net.img_resolution(),
              (long long)net.img_resolution(), (long long)net.in_channels(),
              (long long)net.out_channels(), nn::summary(*model, 2).c_str());
  std::printf("trainable parameters: %lld; buffers: %lld\n", (long long)model->num_parameters(),
              (long long)(model->num_parameters(true) - model->num_parameters()));
  return 0;
}

// The name of a command for messages ("cm <name>: ..."), before it is parsed.
std::string command_name(int argc, char** argv) {
  if (argc < 2) return "";
  const std::string cmd = argv[1];
  if (cmd == "classifier" && argc > 2 && std::string(argv[2]) == "train") return "classifier train";
  return cmd;
}

}  // namespace

// oneDNN's OpenMP threads (the CPU convolutions) must sleep when idle instead of spinning: a
// spinning thread holds a core that cm's own pool (tensor/cpu/loops.h) needs for the next op, which
// cost 10 % of a CPU training step. libgomp reads OMP_WAIT_POLICY when it is loaded, before main,
// so cm sets it and starts itself again, once. A policy the user set is kept (active opts out).
static void reexec_with_passive_openmp(char** argv) {
  if (!cpu::onednn::available() || std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  if (setenv("OMP_WAIT_POLICY", "passive", 1) != 0) return;
  execv("/proc/self/exe", argv);  // returns only on failure: then run as we are
}

int main(int argc, char** argv) {
  reexec_with_passive_openmp(argv);
  Command command;
  try {
    command = parse_command_line(argc, argv);
  } catch (const UsageError& e) {
    const std::string& cmd = e.command();
    std::fprintf(stderr, "cm%s%s: %s\n", cmd.empty() ? "" : " ", cmd.c_str(), e.what());
    return 2;
  } catch (const std::exception& e) {  // not expected: the parser throws only UsageError
    std::fprintf(stderr, "cm: %s\n", e.what());
    return 2;
  }
  const std::string cmd = command_name(argc, argv);
  const dist::LaunchInfo job = dist::launch_info();
  try {
    // One process of a job of several (mpirun, srun): the communicator is set up, or a build
    // without MPI says so. train is data-parallel, sample and eval split their seeds across the
    // ranks; classifier and edit do not split their work yet, so K ranks would each do the whole
    // job (K runs): refused until they do.
    if (job.size > 1) {
      dist::Communicator& comm = dist::world();
      CM_CHECK(
          !std::holds_alternative<ClassifierCommand>(command) &&
              !std::holds_alternative<EditCommand>(command) &&
              !std::holds_alternative<ReportCommand>(command),
          "started as rank ", comm.rank(), " of ", comm.size(), " (", comm.engine(),
          "): this version of cm edits, reports and trains classifiers as a single process only "
          "(train, sample and eval run across ranks); start it without mpirun/srun");
    }
    return std::visit(
        [](const auto& c) -> int {
          using T = std::decay_t<decltype(c)>;
          if constexpr (std::is_same_v<T, Help>) {
            std::fputs(c.text.c_str(), stdout);
            if (c.text.empty() || c.text.back() != '\n') std::fputc('\n', stdout);
            return 0;
          } else if constexpr (std::is_same_v<T, TrainCommand>) {
            return run_train(c);
          } else if constexpr (std::is_same_v<T, SampleCommand>) {
            return run_sample(c);
          } else if constexpr (std::is_same_v<T, EvalCommand>) {
            return run_eval(c);
          } else if constexpr (std::is_same_v<T, ClassifierCommand>) {
            return run_classifier(c);
          } else if constexpr (std::is_same_v<T, EditCommand>) {
            return run_edit(c);
          } else if constexpr (std::is_same_v<T, InfoCommand>) {
            return run_info(c);
          } else if constexpr (std::is_same_v<T, ReportCommand>) {
            return run_report(c);
          } else {
            static_assert(std::is_same_v<T, BenchCommand>);
            return run_bench(c);
          }
        },
        command);
  } catch (const std::exception& e) {
    // bad input or the environment (1), or a bug (3)
    const bool expected = dynamic_cast<const Error*>(&e) != nullptr ||
                          dynamic_cast<const std::system_error*>(&e) != nullptr ||
                          dynamic_cast<const std::bad_alloc*>(&e) != nullptr;
    const int rc = expected ? 1 : 3;
    const std::string what =
        expected ? e.what() : std::string("internal error (please report it): ") + e.what();
    if (job.size > 1) {
      std::fprintf(stderr, "cm %s (rank %d of %d): %s\n", cmd.c_str(), job.rank, job.size,
                   what.c_str());
      // a failed rank ends the whole job, never leaving the others waiting in a collective
      if (dist::has_mpi()) dist::world().abort_job(rc);
      return rc;
    }
    std::fprintf(stderr, "cm %s: %s\n", cmd.c_str(), what.c_str());
    return rc;
  }
}
