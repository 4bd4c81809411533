// The training loop of `cm train`: one class that owns the networks (online, target, teacher),
// the optimizer, the eval EMAs, the data loader and the random generators of a run, takes steps of
// CT, CD or EDM-teacher training, and saves and restores all of it so that a resumed run is
// bit-identical to an uninterrupted one on the CPU.
//
// Across ranks (mpirun, srun: dist::world() of size K > 1), data-parallel: train.batch is the
// global batch, each rank takes its b = batch / K rows (the loader's shard) and draws its rows of
// every batch-leading random draw (Generator::set_shard), so the K shards of a step are the batch
// one process would see, noise and dropout masks included; the gradients are averaged by one
// all-reduce per flat gradient buffer, and every rank makes the same update. The state is the
// same on every rank and does not depend on K: a checkpoint resumes with any world size. Rank 0
// alone writes (the caller's job: see run_train).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "consistency/edm.h"
#include "consistency/training.h"
#include "datasets/loader.h"
#include "dist/communicator.h"
#include "dist/reducer.h"
#include "nn/amp.h"
#include "nn/ema.h"
#include "nn/optim.h"
#include "runner/config.h"
#include "runner/run_dir.h"

namespace cm::runner {

// What one training step measured.
struct StepStats {
  double loss = 0;
  double grad_norm = 0;
  double lr = 0;
  double mu = 0;         // target decay used after the step (CT/CD)
  int64_t n = 0;         // grid size N(k) (CT/CD)
  bool skipped = false;  // non-finite gradients: the update was skipped
};

class Trainer {
 public:
  // Builds everything for `cfg`; with `checkpoint`, restores the run's state from it. comm: the
  // job to train in (null: dist::world(); the tests pass a local one to compare with a job).
  Trainer(const RunConfig& cfg, const std::optional<std::string>& checkpoint, Logger* log,
          dist::Communicator* comm = nullptr);
  ~Trainer();

  // One optimisation step at step() (then step() advances by one). A step whose gradients are
  // not finite is skipped (logged with the tensors named); it throws when the weights themselves
  // are not finite, or after train.max_skipped_steps skipped steps in a row.
  StepStats train_step();
  int64_t step() const { return step_; }

  // Saves the whole state atomically; throws, writing nothing, when a tensor is not finite.
  void save_checkpoint(const std::string& path) const;

  // The sample grids of the current weights (eval EMA when there is one), written as PNGs
  // into `dir`: "grid-<step>-1step.png" and "grid-<step>-2step.png" (CT/CD), or
  // "grid-<step>-heun.png" (EDM). Returns the paths.
  std::vector<std::string> write_sample_grids(const std::string& dir) const;
  // The paths write_sample_grids writes at the current step.
  std::vector<std::string> sample_grid_paths(const std::string& dir) const;

  // Per-layer statistics (gradient and weight norms, update/weight ratio, activation mean and std
  // of every U-Net stage) of the last step that computed them (every train.layer_stats_every
  // steps).
  const nlohmann::json& layer_stats() const { return last_stats_; }

  const nn::Network& online() const { return *online_; }
  const RunConfig& config() const { return cfg_; }
  int64_t skipped_steps() const { return skipped_; }
  // Steps skipped in a row up to now (0 after a step that updated the weights).
  int64_t consecutive_skipped_steps() const { return consecutive_skipped_; }
  // The job this trainer is one rank of.
  const dist::Communicator& comm() const { return *comm_; }
  const data::Loader& loader() const { return *loader_; }

 private:
  void restore(const std::string& checkpoint);
  // Ends the gradients' average over the ranks (reducer_, whose buckets went out during
  // backward) and averages the loss.
  void average_over_ranks(double& loss);
  void report_skipped_step(double loss);
  // A statistic of this rank's shard (n elements, mean, std) made the batch's over the ranks.
  void pool_over_ranks(double n, double& mean, double& std) const;
  consistency::Denoiser denoiser(const nn::Network& net, consistency::Parameterization p) const;
  // The network to evaluate and sample from: the first eval EMA written into a scratch network.
  const nn::Network& eval_network() const;

  RunConfig cfg_;
  Logger* log_;
  dist::Communicator* comm_;
  int64_t step_ = 0;
  int64_t skipped_ = 0;
  int64_t consecutive_skipped_ = 0;
  Generator gen_;      // indices, noise levels and noise of the losses
  Generator dropout_;  // dropout masks (replayed for the target)

  std::unique_ptr<data::Loader> loader_;
  std::unique_ptr<nn::Network> online_;
  std::unique_ptr<nn::Network> target_;   // CT/CD with a target EMA (μ > 0 at some step)
  std::unique_ptr<nn::Network> teacher_;  // CD
  consistency::NoiseLabels teacher_noise_labels_ = consistency::NoiseLabels::EdmLog4;
  consistency::Parameterization teacher_preconditioning_ = consistency::Parameterization::Edm;
  std::unique_ptr<nn::Network> scratch_;  // eval-EMA weights for sampling
  std::unique_ptr<nn::Ema> target_ema_;
  std::vector<std::unique_ptr<nn::Ema>> emas_;
  std::unique_ptr<nn::Optimizer> opt_;
  std::unique_ptr<nn::DynamicLossScaler> scaler_;   // f16 only
  std::unique_ptr<dist::GradientReducer> reducer_;  // a job of the MPI engine

  // layer statistics of the last step that computed them
  nlohmann::json last_activations_;
  nlohmann::json last_stats_;
};

// Loads a network and its weights from a checkpoint of a run: the run's configuration comes from
// the checkpoint's metadata; `which` is "ema" (the first eval EMA), "ema:<rate>", "online" or
// "target". Used by CD (the teacher), `cm sample` and `cm eval`. Non-finite weights (NaN, Inf) in
// the tensors loaded are an error naming them, unless `allow_nonfinite` (forensics).
struct LoadedNetwork {
  std::unique_ptr<nn::Network> net;
  RunConfig config;
  int64_t step = 0;
  std::string weights;  // which weights were loaded, spelled out
};
LoadedNetwork load_network(const std::string& checkpoint_or_run_dir, const std::string& which,
                           Device device, bool allow_nonfinite = false);

}  // namespace cm::runner
