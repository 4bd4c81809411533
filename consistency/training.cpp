#include "consistency/training.h"

#include <algorithm>
#include <cmath>

namespace cm::consistency {

// ---- schedules
// ------------------------------------------------------------------------------------------------
ScheduleKind parse_schedule_kind(const std::string& s) {
  if (s == "adaptive") return ScheduleKind::Adaptive;
  if (s == "adaptive_paper") return ScheduleKind::AdaptivePaper;
  if (s == "fixed") return ScheduleKind::Fixed;
  if (s == "exponential") return ScheduleKind::Exponential;
  CM_FAIL("unknown schedule \"", s, "\" (expected adaptive, adaptive_paper, fixed or exponential)");
}

void Schedule::validate() const {
  CM_CHECK(total_steps > 0, "schedule: total_steps must be positive, got ", total_steps);
  if (kind == ScheduleKind::Fixed) {
    CM_CHECK(fixed_n >= 2, "schedule: fixed N must be >= 2, got ", fixed_n);
    CM_CHECK(fixed_mu >= 0 && fixed_mu < 1, "schedule: fixed mu must be in [0, 1), got ", fixed_mu);
    return;
  }
  CM_CHECK(s0 >= 1 && s1 >= s0, "schedule: need 1 <= s0 <= s1, got s0=", s0, " s1=", s1);
  if (kind != ScheduleKind::Exponential)
    CM_CHECK(mu0 >= 0 && mu0 < 1, "schedule: mu0 must be in [0, 1), got ", mu0);
}

namespace {
// ⌈√(k/K·((s1 + 1)² − s0²) + s0²) − 1⌉, the number of steps before the +1
double adaptive_steps(const Schedule& s, int64_t k) {
  const double frac = double(std::min(k, s.total_steps)) / double(s.total_steps);
  return std::ceil(std::sqrt(frac * ((s.s1 + 1) * (s.s1 + 1) - s.s0 * s.s0) + s.s0 * s.s0) - 1);
}
}  // namespace

int64_t Schedule::n(int64_t k) const {
  switch (kind) {
    case ScheduleKind::Fixed:
      return fixed_n;
    case ScheduleKind::Adaptive:
      return int64_t(std::max(adaptive_steps(*this, k), 1.0)) + 1;
    case ScheduleKind::AdaptivePaper:
      return int64_t(adaptive_steps(*this, k)) + 1;
    case ScheduleKind::Exponential: {
      const double doublings = std::floor(std::log2(std::floor(s1 / s0))) + 1;
      const int64_t kp = std::max<int64_t>(int64_t(std::floor(double(total_steps) / doublings)), 1);
      const double steps = std::min(s0 * std::pow(2.0, double(k / kp)), s1);
      return int64_t(steps) + 1;
    }
  }
  return fixed_n;
}

double Schedule::mu(int64_t k) const {
  switch (kind) {
    case ScheduleKind::Fixed:
      return fixed_mu;
    case ScheduleKind::Exponential:
      return 0;
    case ScheduleKind::Adaptive:
      return std::exp(s0 * std::log(mu0) / double(n(k) - 1));
    case ScheduleKind::AdaptivePaper:
      return std::exp(s0 * std::log(mu0) / double(n(k)));
  }
  return 0;
}

// ---- options
// ----------------------------------------------------------------------------------------------------
Distance parse_distance(const std::string& s) {
  if (s == "l2") return Distance::L2;
  if (s == "l1") return Distance::L1;
  if (s == "pseudo_huber") return Distance::PseudoHuber;
  if (s == "lpips") return Distance::Lpips;
  CM_FAIL("unknown distance \"", s, "\" (expected l2, l1, pseudo_huber or lpips)");
}

Weighting parse_weighting(const std::string& s) {
  if (s == "uniform") return Weighting::Uniform;
  if (s == "snr") return Weighting::Snr;
  if (s == "snr+1") return Weighting::SnrPlusOne;
  if (s == "karras") return Weighting::Karras;
  if (s == "truncated_snr") return Weighting::TruncatedSnr;
  if (s == "ict") return Weighting::Ict;
  CM_FAIL("unknown weighting \"", s,
          "\" (expected uniform, snr, snr+1, karras, truncated_snr or ict)");
}

IndexSampling parse_index_sampling(const std::string& s) {
  if (s == "uniform") return IndexSampling::Uniform;
  if (s == "lognormal") return IndexSampling::Lognormal;
  CM_FAIL("unknown index sampling \"", s, "\" (expected uniform or lognormal)");
}

Solver parse_solver(const std::string& s) {
  if (s == "euler") return Solver::Euler;
  if (s == "heun") return Solver::Heun;
  CM_FAIL("unknown solver \"", s, "\" (expected euler or heun)");
}

// ---- pieces of the loss
// ------------------------------------------------------------------------------------------
Tensor distance(const Tensor& a, const Tensor& b, Distance d, std::optional<double> huber_c,
                const DistanceFn& learned) {
  if (d == Distance::Lpips) {
    CM_CHECK(learned != nullptr,
             "distance: lpips needs the LPIPS network (LossOptions::learned_distance)");
    const Tensor r = learned(a, b);
    CM_CHECK(r.dim() == 1 && r.size(0) == a.size(0), "distance: the learned distance returned ",
             shape_str(r.shape()), " for a batch of ", a.size(0), " (expected [N])");
    return r;
  }
  const Tensor diff = sub(a, b);
  const Shape per_pixel = {1, 2, 3};
  switch (d) {
    case Distance::L2:
      return mean(square(diff), per_pixel);
    case Distance::L1:
      return mean(abs(diff), per_pixel);
    case Distance::PseudoHuber: {
      const double dim = double(a.numel() / std::max<int64_t>(a.size(0), 1));
      const double c = huber_c.value_or(0.00054 * std::sqrt(dim));
      return sub(sqrt(add(sum(square(diff), per_pixel), c * c)), c);
    }
    case Distance::Lpips:
      break;  // handled above
  }
  CM_FAIL("distance: unknown kind");
}

Tensor weighting(const Tensor& sigma_hi, const Tensor& sigma_lo, Weighting w, double sigma_data) {
  const Tensor inv2 = rdiv(1.0, square(sigma_hi));
  switch (w) {
    case Weighting::Uniform:
      return ones_like(sigma_hi);
    case Weighting::Snr:
      return inv2;
    case Weighting::SnrPlusOne:
      return add(inv2, 1.0);
    case Weighting::Karras:
      return add(inv2, 1.0 / (sigma_data * sigma_data));
    case Weighting::TruncatedSnr:
      return maximum(inv2, 1.0);
    case Weighting::Ict:
      return rdiv(1.0, sub(sigma_hi, sigma_lo));
  }
  CM_FAIL("weighting: unknown kind");
}

std::vector<double> lognormal_index_probs(const std::vector<double>& sigmas, double p_mean,
                                          double p_std) {
  std::vector<double> p(sigmas.size() - 1);
  double total = 0;
  for (size_t j = 0; j + 1 < sigmas.size(); ++j) {
    const double hi = std::erf((std::log(sigmas[j]) - p_mean) / (std::sqrt(2.0) * p_std));
    const double lo = std::erf((std::log(sigmas[j + 1]) - p_mean) / (std::sqrt(2.0) * p_std));
    p[j] = std::max(hi - lo, 0.0);
    total += p[j];
  }
  CM_CHECK(total > 0, "lognormal index sampling: every pair has zero probability (p_mean=", p_mean,
           " p_std=", p_std, ")");
  for (double& v : p) v /= total;
  return p;
}

std::vector<int64_t> sample_indices(int64_t batch, const std::vector<double>& sigmas,
                                    const LossOptions& o, Generator& gen) {
  const int64_t pairs = int64_t(sigmas.size()) - 1;
  CM_CHECK(pairs >= 1, "sample_indices: the grid has fewer than two points");
  std::vector<int64_t> idx(static_cast<size_t>(batch));
  if (o.sampling == IndexSampling::Uniform) {
    const std::vector<int64_t> r =
        randint(0, pairs, {batch}, {.dtype = DType::i64}, &gen).to_vector<int64_t>();
    std::copy(r.begin(), r.end(), idx.begin());
    return idx;
  }
  const std::vector<double> p = lognormal_index_probs(sigmas, o.p_mean, o.p_std);
  std::vector<double> cdf(p.size());
  double acc = 0;
  for (size_t j = 0; j < p.size(); ++j) cdf[j] = acc += p[j];
  const std::vector<double> u = rand({batch}, {.dtype = DType::f64}, &gen).to_vector<double>();
  for (int64_t i = 0; i < batch; ++i) {
    const auto it = std::upper_bound(cdf.begin(), cdf.end(), u[size_t(i)]);
    idx[size_t(i)] = std::min<int64_t>(int64_t(it - cdf.begin()), pairs - 1);
  }
  return idx;
}

namespace {

struct Pair {
  Tensor hi, lo;  // σ_n and σ_{n+1} per sample [N]
};
Pair sigma_pair(const std::vector<int64_t>& idx, const std::vector<double>& sigmas,
                const Tensor& like) {
  std::vector<double> hi, lo;
  for (int64_t j : idx) {
    hi.push_back(sigmas[size_t(j)]);
    lo.push_back(sigmas[size_t(j + 1)]);
  }
  const TensorOptions opt{.dtype = like.dtype(), .device = like.device()};
  return {from_vector(hi, {int64_t(hi.size())}, opt), from_vector(lo, {int64_t(lo.size())}, opt)};
}

Tensor bcast(const Tensor& s) {
  return reshape(s, {-1, 1, 1, 1});
}

// λ·d between the online output at (x_hi, σ_n) and the target at (x_lo, σ_{n+1}).
StepLoss finish(const Denoiser& online, const Denoiser& target, const Tensor& x_hi,
                const Tensor& x_lo, const Pair& s, const Tensor& labels, const LossOptions& o,
                Generator& dropout, std::vector<int64_t> idx, int64_t n) {
  // The target uses the online pass's dropout masks: recorded there, applied again (as a
  // generator in the same state would draw them, without the draws).
  Generator replay = dropout;
  nn::DropoutMasks masks;
  const Tensor out = online(x_hi, s.hi, labels, {.dropout = &dropout, .masks = &masks});
  masks.replay = true;
  Tensor tgt;
  {
    NoGradGuard ng;
    tgt = detach(target(x_lo, s.lo, labels, {.dropout = &replay, .masks = &masks}));
  }
  const Tensor per = mul(weighting(s.hi, s.lo, o.weighting, online.constants().sigma_data),
                         distance(out, tgt, o.distance, o.huber_c, o.learned_distance));
  return {mean(per), detach(per), std::move(idx), n};
}

}  // namespace

StepLoss ct_loss_at(const Denoiser& online, const Denoiser& target, const Tensor& x,
                    const Tensor& labels, const std::vector<double>& sigmas,
                    std::vector<int64_t> idx, const Tensor& z, const LossOptions& o,
                    Generator& dropout) {
  const Pair s = sigma_pair(idx, sigmas, x);
  const Tensor x_hi = add(x, mul(z, bcast(s.hi)));
  const Tensor x_lo = add(x, mul(z, bcast(s.lo)));
  return finish(online, target, x_hi, x_lo, s, labels, o, dropout, std::move(idx),
                int64_t(sigmas.size()));
}

StepLoss cd_loss_at(const Denoiser& online, const Denoiser& target, const Denoiser& teacher,
                    const Tensor& x, const Tensor& labels, const std::vector<double>& sigmas,
                    std::vector<int64_t> idx, const Tensor& z, Solver solver, const LossOptions& o,
                    Generator& dropout) {
  const Pair s = sigma_pair(idx, sigmas, x);
  const Tensor x_hi = add(x, mul(z, bcast(s.hi)));
  Tensor x_lo;
  {
    // One step of dx/dσ = (x − D(x, σ))/σ from σ_n to σ_{n+1} with the frozen teacher.
    NoGradGuard ng;
    const Tensor h = bcast(sub(s.lo, s.hi));
    const Tensor d = div(sub(x_hi, teacher(x_hi, s.hi, labels)), bcast(s.hi));
    x_lo = add(x_hi, mul(h, d));
    if (solver == Solver::Heun) {
      const Tensor d2 = div(sub(x_lo, teacher(x_lo, s.lo, labels)), bcast(s.lo));
      x_lo = add(x_hi, mul(h, mul(add(d, d2), 0.5)));
    }
    x_lo = detach(x_lo);
  }
  return finish(online, target, x_hi, x_lo, s, labels, o, dropout, std::move(idx),
                int64_t(sigmas.size()));
}

StepLoss ct_loss(const Denoiser& online, const Denoiser& target, const Tensor& x,
                 const Tensor& labels, const std::vector<double>& sigmas, const LossOptions& o,
                 Generator& gen, Generator& dropout) {
  std::vector<int64_t> idx = sample_indices(x.size(0), sigmas, o, gen);
  const Tensor z = randn(x.shape(), {.dtype = x.dtype(), .device = x.device()}, &gen);
  return ct_loss_at(online, target, x, labels, sigmas, std::move(idx), z, o, dropout);
}

StepLoss cd_loss(const Denoiser& online, const Denoiser& target, const Denoiser& teacher,
                 const Tensor& x, const Tensor& labels, const std::vector<double>& sigmas,
                 Solver solver, const LossOptions& o, Generator& gen, Generator& dropout) {
  std::vector<int64_t> idx = sample_indices(x.size(0), sigmas, o, gen);
  const Tensor z = randn(x.shape(), {.dtype = x.dtype(), .device = x.device()}, &gen);
  return cd_loss_at(online, target, teacher, x, labels, sigmas, std::move(idx), z, solver, o,
                    dropout);
}

}  // namespace cm::consistency
