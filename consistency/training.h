// Consistency training (CT, the paper's Algorithm 3) and consistency distillation (CD, Algorithm
// 2): the discretisation schedules N(k) and μ(k), the index sampling, the weightings λ, the
// distances d, and one loss evaluation per step (shared/spec/consistency-models.md §2.2–2.4 and
// §7). The training loop around it (optimizer, target and eval EMAs, checkpoints) is the runner's.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "consistency/edm.h"

namespace cm::consistency {

// ---- schedules
// ------------------------------------------------------------------------------------------------
enum class ScheduleKind {
  Adaptive,  // N(k), μ(k) of the released code (default): μ uses N(k) − 1 in its denominator
  AdaptivePaper,  // the paper's App. C wording: μ(k) = exp(s0·ln μ0 / N(k))
  Fixed,          // constant N and μ (the ablations; CD uses this with N = 18, μ = 0)
  Exponential,  // iCT: N(k) = min(s0·2^⌊k/K'⌋, s1) + 1, K' = ⌊K / (log2⌊s1/s0⌋ + 1)⌋; μ = 0
};

struct Schedule {
  ScheduleKind kind = ScheduleKind::Adaptive;
  double s0 = 2, s1 = 150;       // initial and final discretisation steps
  double mu0 = 0.9;              // initial target EMA decay
  int64_t total_steps = 800000;  // K
  int64_t fixed_n = 18;          // Fixed
  double fixed_mu = 0;           // Fixed

  // The number of grid points N(k) and the target decay μ(k) at training step k.
  int64_t n(int64_t k) const;
  double mu(int64_t k) const;
  void validate() const;
};
ScheduleKind parse_schedule_kind(const std::string& s);

// ---- the loss
// --------------------------------------------------------------------------------------------------
enum class Distance {
  L2,           // mean over pixels of (a − b)²
  L1,           // mean over pixels of |a − b|
  PseudoHuber,  // √(‖a − b‖² + c²) − c over all pixels (iCT)
  Lpips,        // LPIPS (eval/lpips.h), given as LossOptions::learned_distance
};
enum class Weighting {
  Uniform,       // λ ≡ 1 (all reported CM runs)
  Snr,           // 1/σ²
  SnrPlusOne,    // 1/σ² + 1
  Karras,        // 1/σ² + 1/σ_d²
  TruncatedSnr,  // max(1/σ², 1)
  Ict,           // 1/(σ_n − σ_{n+1}) (iCT: smaller noise gets more weight)
};
enum class IndexSampling {
  Uniform,    // n ~ U{0..N−2} (the paper)
  Lognormal,  // iCT's discretised lognormal over the grid (P_mean, P_std)
};
Distance parse_distance(const std::string& s);
Weighting parse_weighting(const std::string& s);
IndexSampling parse_index_sampling(const std::string& s);

// A per-sample distance computed by a network, d(a, b) [N] for images a, b [N, C, H, W],
// differentiable in a. cm_consistency does not depend on the networks' library (cm_eval): the
// caller binds one (the runner binds eval::Lpips for distance "lpips").
using DistanceFn = std::function<Tensor(const Tensor& a, const Tensor& b)>;

struct LossOptions {
  Distance distance = Distance::L2;
  Weighting weighting = Weighting::Uniform;
  IndexSampling sampling = IndexSampling::Uniform;
  std::optional<double> huber_c = std::nullopt;  // default 0.00054·√d, d = C·H·W
  double p_mean = -1.1, p_std = 2.0;             // lognormal index sampling (iCT)
  DistanceFn learned_distance = nullptr;         // Distance::Lpips: the network (required)
};

// Per-sample distance d(a, b) [N]; Distance::Lpips calls `learned` (an error when it is empty).
Tensor distance(const Tensor& a, const Tensor& b, Distance d,
                std::optional<double> huber_c = std::nullopt, const DistanceFn& learned = nullptr);
// Per-sample weights λ [N] for the pair (σ_n > σ_{n+1}).
Tensor weighting(const Tensor& sigma_hi, const Tensor& sigma_lo, Weighting w, double sigma_data);
// Grid indices j (0..N−2) for a batch, drawn from `gen` on the host.
std::vector<int64_t> sample_indices(int64_t batch, const std::vector<double>& sigmas,
                                    const LossOptions& o, Generator& gen);
// iCT's lognormal probabilities of the N−1 index pairs (descending grid), normalised to sum 1.
std::vector<double> lognormal_index_probs(const std::vector<double>& sigmas, double p_mean,
                                          double p_std);

enum class Solver { Euler, Heun };
Solver parse_solver(const std::string& s);

// What one evaluation of the CT/CD objective produced.
struct StepLoss {
  Tensor loss;                 // the scalar to backpropagate
  Tensor per_sample;           // λ·d per sample, detached
  std::vector<int64_t> index;  // the grid indices used
  int64_t n = 0;               // N(k)
};

// CT (Algorithm 3): x_hi = x + σ_n·z, x_lo = x + σ_{n+1}·z with the same z; loss λ·d(f_θ(x_hi,
// σ_n), f_θ⁻(x_lo, σ_{n+1})). The target runs under no-grad with a dropout generator in the same
// state as the online pass (the same mask). `target` may be `online` itself (μ = 0, iCT).
StepLoss ct_loss(const Denoiser& online, const Denoiser& target, const Tensor& x,
                 const Tensor& class_labels, const std::vector<double>& sigmas,
                 const LossOptions& o, Generator& gen, Generator& dropout);

// CD (Algorithm 2): as CT, but x_lo is one Euler or Heun step of the teacher's probability-flow ODE
// from x_hi at σ_n down to σ_{n+1} (the teacher under no-grad, in eval mode).
StepLoss cd_loss(const Denoiser& online, const Denoiser& target, const Denoiser& teacher,
                 const Tensor& x, const Tensor& class_labels, const std::vector<double>& sigmas,
                 Solver solver, const LossOptions& o, Generator& gen, Generator& dropout);

// The same two objectives at given grid indices and noise z (what ct_loss / cd_loss draw from
// `gen`); for tests against reference implementations and for replaying a step.
StepLoss ct_loss_at(const Denoiser& online, const Denoiser& target, const Tensor& x,
                    const Tensor& class_labels, const std::vector<double>& sigmas,
                    std::vector<int64_t> index, const Tensor& z, const LossOptions& o,
                    Generator& dropout);
StepLoss cd_loss_at(const Denoiser& online, const Denoiser& target, const Denoiser& teacher,
                    const Tensor& x, const Tensor& class_labels, const std::vector<double>& sigmas,
                    std::vector<int64_t> index, const Tensor& z, Solver solver,
                    const LossOptions& o, Generator& dropout);

}  // namespace cm::consistency
