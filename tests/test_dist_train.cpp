// Data-parallel training (runner/trainer.h): under `mpirun -np 2` (the CTest case "dist: training
// on 2 MPI ranks equals one process"), every rank trains the same tiny run twice, once as a rank
// of the job (its half of each batch, gradients averaged over the ranks) and once alone with the
// whole batch (a local communicator), and the two must agree: the losses and the weights after
// the steps within 1e-6 relative (f32; only the order of the float sums differs), for CT, CD and
// the EDM teacher, and a checkpoint of one resumes in the other, both ways. In a one-process run
// the cases say so and pass.
#include <unistd.h>

#include <filesystem>

#include "dist/communicator.h"
#include "runner/config.h"
#include "runner/trainer.h"
#include "tests/helpers.h"
#include "tests/run_helpers.h"

using namespace cm;
using namespace cm::runner;
namespace fs = std::filesystem;

namespace {

// max |a − b| over the online weights, relative to the largest |a|.
double weights_rel_diff(const Trainer& a, const Trainer& b) {
  const auto pa = a.online().named_parameters(), pb = b.online().named_parameters();
  REQUIRE(pa.size() == pb.size());
  double diff = 0, scale = 0;
  for (size_t i = 0; i < pa.size(); ++i) {
    diff = std::max(diff, max_abs_diff(pa[i].second, pb[i].second));
    scale = std::max(scale, max_abs_diff(pa[i].second, zeros_like(pa[i].second)));
  }
  return diff / scale;
}

// A directory every rank names alike: rank 0's pid, broadcast.
fs::path job_dir(dist::Communicator& w, const std::string& name) {
  Tensor pid = from_vector<int64_t>({int64_t(::getpid())}, {1}, {.dtype = DType::i64});
  w.broadcast(pid, 0);
  const fs::path p = fs::temp_directory_path() /
                     ("cm_test_dist_train_" + name + "_" + std::to_string(pid.item<int64_t>()));
  if (w.rank() == 0) {
    fs::remove_all(p);
    fs::create_directories(p);
  }
  w.barrier();
  return p;
}

RunConfig config_of(const nlohmann::json& j) {
  return typed_config(resolve_config(j, "test.json"));
}

nlohmann::json tiny(const std::string& mode) {
  nlohmann::json j = test::tiny_run_config(mode, 6);
  j["network"]["dropout"] = 0.2;  // masks drawn per rank must be the batch's rows
  // steps large enough that a wrong mask or noise row shows (EDM's loss is sensitive enough with
  // the default, and its float-order differences grow with larger steps)
  j["train"]["lr"] = mode == "edm" ? 1e-3 : 1e-2;
  j["train"]["ema"] = {0.9};
  j["train"]["layer_stats_every"] = 3;  // activation statistics of the batch, not of a shard
  return j;
}

// Six steps as a rank of w and alone: losses and weights agree.
void check_same_as_one_process(dist::Communicator& w, const RunConfig& cfg) {
  auto alone = dist::make_local_communicator();
  Trainer one(cfg, std::nullopt, nullptr, alone.get());
  Trainer job(cfg, std::nullopt, nullptr, &w);
  for (int k = 0; k < 6; ++k) {
    const StepStats a = one.train_step(), b = job.train_step();
    CHECK_MESSAGE(std::abs(a.loss - b.loss) <= 1e-6 * std::abs(a.loss), "step ", k + 1, ": loss ",
                  b.loss, " on ", w.size(), " ranks, ", a.loss, " alone");
    CHECK(a.grad_norm == doctest::Approx(b.grad_norm).epsilon(1e-5));
  }
  const double e = weights_rel_diff(one, job);
  CHECK_MESSAGE(e <= 1e-6, cfg.mode, ": weights differ by ", e, " (relative)");
  const nlohmann::json& sa = one.layer_stats()["activations"];
  const nlohmann::json& sb = job.layer_stats()["activations"];
  REQUIRE(sa.size() > 3);
  REQUIRE(sa.size() == sb.size());
  double worst = 0;
  for (const auto& [layer, v] : sa.items())
    for (const char* k : {"mean", "std"}) {
      const double a = v[k].get<double>(), b = sb.at(layer)[k].get<double>();
      worst = std::max(worst, std::abs(a - b) / std::max(1.0, std::abs(a)));
    }
  CHECK_MESSAGE(worst <= 1e-5, cfg.mode, ": activation statistics differ by ", worst);
  MESSAGE(cfg.mode, " on ", w.size(), " ranks vs one process: weights within ", e,
          " relative, activation statistics within ", worst);
}

}  // namespace

TEST_SUITE("dist") {
  TEST_CASE("data-parallel CT, CD and EDM training on K ranks equal one process (same batch)") {
    dist::Communicator& w = dist::world();
    if (w.size() == 1) {
      MESSAGE("a job of one process: the cases run under mpirun (ctest -L dist)");
      return;
    }
    check_same_as_one_process(w, config_of(tiny("ct")));
    check_same_as_one_process(w, config_of(tiny("edm")));
    // CD from a teacher checkpoint that rank 0 writes
    const fs::path dir = job_dir(w, "cd");
    const std::string teacher = (dir / "teacher.safetensors").string();
    if (w.rank() == 0) {
      auto alone = dist::make_local_communicator();
      Trainer t(config_of(tiny("edm")), std::nullopt, nullptr, alone.get());
      t.train_step();
      t.save_checkpoint(teacher);
    }
    w.barrier();
    nlohmann::json cd = tiny("cd");
    cd["consistency"] = {{"teacher", teacher}, {"schedule", "fixed"}, {"n", 18}, {"mu", 0.9}};
    check_same_as_one_process(w, config_of(cd));
    w.barrier();
    if (w.rank() == 0) fs::remove_all(dir);
  }

  TEST_CASE("gradient buckets sent during backward train exactly as one all-reduce after it") {
    dist::Communicator& w = dist::world();
    if (w.size() == 1) {
      MESSAGE("a job of one process: the cases run under mpirun (ctest -L dist)");
      return;
    }
    nlohmann::json one_call = tiny("ct"), buckets = tiny("ct");
    one_call["train"]["allreduce_bucket_mb"] = 0;
    buckets["train"]["allreduce_bucket_mb"] = 0.002;  // about 2 KB: dozens of buckets
    Trainer a(config_of(one_call), std::nullopt, nullptr, &w);
    Trainer b(config_of(buckets), std::nullopt, nullptr, &w);
    for (int k = 0; k < 4; ++k) {
      const StepStats sa = a.train_step(), sb = b.train_step();
      CHECK(sa.loss == sb.loss);
      CHECK(sa.grad_norm == sb.grad_norm);
    }
    CHECK(weights_rel_diff(a, b) == 0);
  }

  TEST_CASE("a checkpoint of K ranks resumes alone, and one of a single process on K ranks") {
    dist::Communicator& w = dist::world();
    if (w.size() == 1) {
      MESSAGE("a job of one process: the cases run under mpirun (ctest -L dist)");
      return;
    }
    const RunConfig cfg = config_of(tiny("ct"));
    const fs::path dir = job_dir(w, "resume");
    const std::string from_job = (dir / "job.safetensors").string(),
                      from_one = (dir / "one.safetensors").string();
    auto alone = dist::make_local_communicator();
    Trainer job(cfg, std::nullopt, nullptr, &w);
    Trainer one(cfg, std::nullopt, nullptr, alone.get());
    for (int k = 0; k < 2; ++k) {
      job.train_step();
      one.train_step();
    }
    if (w.rank() == 0) {
      job.save_checkpoint(from_job);
      one.save_checkpoint(from_one);
    }
    w.barrier();
    // the job's checkpoint continued alone, the single process's continued by the job
    Trainer job_then_one(cfg, from_job, nullptr, alone.get());
    Trainer one_then_job(cfg, from_one, nullptr, &w);
    CHECK(job_then_one.step() == 2);
    CHECK(one_then_job.step() == 2);
    for (int k = 0; k < 2; ++k) {
      job.train_step();
      one.train_step();
      job_then_one.train_step();
      one_then_job.train_step();
    }
    // every path through the four steps, within float summation order of the others
    for (const Trainer* t : {&job, &job_then_one, &one_then_job}) {
      const double e = weights_rel_diff(one, *t);
      CHECK_MESSAGE(e <= 1e-6, "weights differ by ", e, " (relative)");
    }
    CHECK(job_then_one.loader().state() == one.loader().state());
    CHECK(one_then_job.loader().state() == job.loader().state());
    w.barrier();
    if (w.rank() == 0) fs::remove_all(dir);
  }
}
