// The EDM parameterisation shared by the teacher and the consistency model (paper App. C;
// shared/spec/consistency-models.md §1): the Karras noise grid, the skip/out/in scalings with and
// without the σ_min boundary offset, the noise-label conventions, and the denoiser
// D(x, σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x, c_noise(σ)) around a network (SongUNet or ADM
// U-Net).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "nn/songunet.h"

namespace cm::consistency {

// σ_data, σ_min = ε, σ_max = T, ρ (spec §1.1).
struct NoiseConstants {
  double sigma_data = 0.5;
  double sigma_min = 0.002;
  double sigma_max = 80;
  double rho = 7;
};

// The Karras grid in the code's order (descending): σ_j = (T^(1/ρ) + j/(N−1)·(ε^(1/ρ) −
// T^(1/ρ)))^ρ, j = 0..N−1, σ_0 = T, σ_{N−1} = ε. The paper's ascending t_1..t_N is its reverse.
std::vector<double> karras_sigmas(int64_t n, const NoiseConstants& c);

enum class Parameterization {
  Edm,  // the teacher: c_skip = σ_d²/(σ² + σ_d²), c_out = σ·σ_d/√(σ² + σ_d²),
        // c_in = 1/√(σ² + σ_d²)
  Consistency,  // the boundary condition f(x, ε) = x: c_skip = σ_d²/((σ − ε)² + σ_d²),
                // c_out = σ_d·(σ − ε)/√(σ² + σ_d²), c_in as Edm
  // EDM's baselines (NVlabs/edm VPPrecond, VEPrecond: the score-SDE models converted from
  // tools/convert_edm_pkl.py): teachers only.
  Vp,  // c_skip = 1, c_out = −σ, c_in = 1/√(σ² + 1)
  Ve,  // c_skip = 1, c_out = σ, c_in = 1
};

enum class NoiseLabels {
  EdmLog4,  // c_noise = ln(σ)/4 (EDM, the CIFAR-10 JAX code)
  Adm250,   // c_noise = 250·ln(σ) (the ImageNet/LSUN PyTorch code with ADM's embedding)
  VpTime,   // c_noise = (M − 1)·t(σ), the VP SDE's time of σ (EDM's VPPrecond)
  VeLog,    // c_noise = ln(σ/2) (EDM's VEPrecond)
};

// The VP SDE's noise schedule of EDM's VPPrecond (its defaults, those of every released model):
// σ(t) = √(exp(β_d·t²/2 + β_min·t) − 1), t(σ) = (√(β_min² + 2·β_d·ln(1 + σ²)) − β_min)/β_d.
struct VpSchedule {
  static constexpr double beta_d = 19.9, beta_min = 0.1, M = 1000, epsilon_t = 1e-5;
  static double sigma(double t);
  static double time(double sigma);
};

// "edm", "consistency", "vp", "ve"; and the name of one.
Parameterization parse_parameterization(const std::string& s);
std::string parameterization_name(Parameterization p);
// "edm", "adm", "vp", "ve"; and the name of one.
NoiseLabels parse_noise_labels(const std::string& s);
std::string noise_labels_name(NoiseLabels labels);

// The scalar scalings (for tests and documentation).
struct Scalings {
  double c_skip, c_out, c_in, c_noise;
};
Scalings scalings(double sigma, Parameterization p, NoiseLabels labels, const NoiseConstants& c);

// D(x, σ) around a network. x [N, C, H, W] and sigma [N] share a floating dtype (f32 in training,
// f64 in tests); the scalings are computed in it and so is the result. The network runs in
// `compute_dtype` (default: x's dtype; bf16/f16 for mixed precision with f32 master weights).
class Denoiser {
 public:
  Denoiser(const nn::Network& net, Parameterization p, NoiseLabels labels, const NoiseConstants& c,
           std::optional<DType> compute_dtype = std::nullopt);
  Tensor operator()(const Tensor& x, const Tensor& sigma, const Tensor& class_labels = {},
                    const nn::ForwardContext& ctx = {}) const;
  const nn::Network& net() const { return net_; }
  Parameterization parameterization() const { return p_; }
  const NoiseConstants& constants() const { return c_; }

 private:
  const nn::Network& net_;
  Parameterization p_;
  NoiseLabels labels_;
  NoiseConstants c_;
  std::optional<DType> compute_;
};

// ---- EDM teacher (spec §3.4)
// ------------------------------------------------------------------------------
struct EdmLossOptions {
  double p_mean = -1.2;  // ln σ ~ N(P_mean, P_std²)
  double p_std = 1.2;
};
// EDM's loss: σ = exp(P_mean + P_std·n), y = x + σ·z, weight (σ² + σ_d²)/(σ·σ_d)², per-sample sum
// of weight·(D(y, σ) − x)² over the pixels, averaged over the batch (EDM's loss.sum() / batch).
Tensor edm_loss(const Denoiser& D, const Tensor& x, const Tensor& class_labels,
                const EdmLossOptions& o, Generator& gen, const nn::ForwardContext& ctx = {});
// The same at given standard-normal draws: rnd_normal [N] (σ = exp(P_mean + P_std·rnd_normal)) and
// noise [N, C, H, W] (scaled by σ).
Tensor edm_loss_at(const Denoiser& D, const Tensor& x, const Tensor& class_labels,
                   const EdmLossOptions& o, const Tensor& rnd_normal, const Tensor& noise,
                   const nn::ForwardContext& ctx = {});

// EDM's deterministic Heun sampler (Algorithm 2 of EDM with S_churn = 0): `steps` Karras points
// down to σ = 0, Heun except the last step (NFE = 2·steps − 1; 35 for 18 steps). latents are N(0,
// I) [N, C, H, W].
Tensor edm_heun_sample(const Denoiser& D, const Tensor& latents, const Tensor& class_labels,
                       int64_t steps = 18);
// The same solver from x at σ = t[0] along the decreasing points t (the last 0): Heun steps, the
// last one Euler.
Tensor edm_heun_solve(const Denoiser& D, const Tensor& x, const std::vector<double>& t,
                      const Tensor& class_labels);

}  // namespace cm::consistency
