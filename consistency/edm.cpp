#include "consistency/edm.h"

#include <cmath>

namespace cm::consistency {

std::vector<double> karras_sigmas(int64_t n, const NoiseConstants& c) {
  CM_CHECK(n >= 2, "karras_sigmas: need at least 2 points, got ", n);
  CM_CHECK(c.sigma_min > 0 && c.sigma_max > c.sigma_min && c.rho > 0,
           "karras_sigmas: invalid constants sigma_min=", c.sigma_min, " sigma_max=", c.sigma_max,
           " rho=", c.rho);
  std::vector<double> s(static_cast<size_t>(n));
  const double hi = std::pow(c.sigma_max, 1 / c.rho), lo = std::pow(c.sigma_min, 1 / c.rho);
  for (int64_t j = 0; j < n; ++j)
    s[size_t(j)] = std::pow(hi + double(j) / double(n - 1) * (lo - hi), c.rho);
  s.front() = c.sigma_max;  // exact ends
  s.back() = c.sigma_min;
  return s;
}

double VpSchedule::sigma(double t) {
  return std::sqrt(std::exp(0.5 * beta_d * t * t + beta_min * t) - 1);
}
double VpSchedule::time(double sigma) {
  return (std::sqrt(beta_min * beta_min + 2 * beta_d * std::log1p(sigma * sigma)) - beta_min) /
         beta_d;
}

Parameterization parse_parameterization(const std::string& s) {
  if (s == "edm") return Parameterization::Edm;
  if (s == "consistency") return Parameterization::Consistency;
  if (s == "vp") return Parameterization::Vp;
  if (s == "ve") return Parameterization::Ve;
  CM_FAIL("unknown parameterization \"", s,
          "\" (expected \"edm\", \"consistency\", \"vp\" or \"ve\")");
}
std::string parameterization_name(Parameterization p) {
  switch (p) {
    case Parameterization::Edm:
      return "edm";
    case Parameterization::Consistency:
      return "consistency";
    case Parameterization::Vp:
      return "vp";
    case Parameterization::Ve:
      return "ve";
  }
  return "?";
}

NoiseLabels parse_noise_labels(const std::string& s) {
  if (s == "edm") return NoiseLabels::EdmLog4;
  if (s == "adm") return NoiseLabels::Adm250;
  if (s == "vp") return NoiseLabels::VpTime;
  if (s == "ve") return NoiseLabels::VeLog;
  CM_FAIL(
      "unknown noise-label convention \"", s,
      "\" (expected \"edm\" for ln(sigma)/4, \"adm\" for 250 ln(sigma), \"vp\" for 999 t(sigma) ",
      "or \"ve\" for ln(sigma/2))");
}
std::string noise_labels_name(NoiseLabels labels) {
  switch (labels) {
    case NoiseLabels::EdmLog4:
      return "edm";
    case NoiseLabels::Adm250:
      return "adm";
    case NoiseLabels::VpTime:
      return "vp";
    case NoiseLabels::VeLog:
      return "ve";
  }
  return "?";
}

Scalings scalings(double sigma, Parameterization p, NoiseLabels labels, const NoiseConstants& c) {
  const double sd2 = c.sigma_data * c.sigma_data;
  Scalings s{};
  s.c_in = 1 / std::sqrt(sigma * sigma + sd2);
  switch (p) {
    case Parameterization::Edm:
      s.c_skip = sd2 / (sigma * sigma + sd2);
      s.c_out = sigma * c.sigma_data / std::sqrt(sigma * sigma + sd2);
      break;
    case Parameterization::Consistency: {
      const double d = sigma - c.sigma_min;
      s.c_skip = sd2 / (d * d + sd2);
      s.c_out = c.sigma_data * d / std::sqrt(sigma * sigma + sd2);
      break;
    }
    case Parameterization::Vp:
      s.c_skip = 1;
      s.c_out = -sigma;
      s.c_in = 1 / std::sqrt(sigma * sigma + 1);
      break;
    case Parameterization::Ve:
      s.c_skip = 1;
      s.c_out = sigma;
      s.c_in = 1;
      break;
  }
  switch (labels) {
    case NoiseLabels::EdmLog4:
      s.c_noise = std::log(sigma) / 4;
      break;
    case NoiseLabels::Adm250:
      s.c_noise = 250 * std::log(sigma);
      break;
    case NoiseLabels::VpTime:
      s.c_noise = (VpSchedule::M - 1) * VpSchedule::time(sigma);
      break;
    case NoiseLabels::VeLog:
      s.c_noise = std::log(0.5 * sigma);
      break;
  }
  return s;
}

Denoiser::Denoiser(const nn::Network& net, Parameterization p, NoiseLabels labels,
                   const NoiseConstants& c, std::optional<DType> compute_dtype)
    : net_(net), p_(p), labels_(labels), c_(c), compute_(compute_dtype) {
  CM_CHECK(!compute_dtype || is_floating(*compute_dtype),
           "Denoiser: the compute dtype must be floating, got ", dtype_name(*compute_dtype));
}

Tensor Denoiser::operator()(const Tensor& x, const Tensor& sigma, const Tensor& class_labels,
                            const nn::ForwardContext& ctx) const {
  CM_CHECK(sigma.dim() == 1 && sigma.size(0) == x.size(0), "Denoiser: sigma of shape ",
           shape_str(sigma.shape()), " for a batch of ", x.size(0));
  const Tensor s = reshape(sigma, {-1, 1, 1, 1});
  const double sd2 = c_.sigma_data * c_.sigma_data;
  const Tensor s2 = square(s);
  const DType dt = compute_.value_or(x.dtype());
  Tensor c_noise;
  switch (labels_) {
    case NoiseLabels::EdmLog4:
      c_noise = div(log(sigma), 4.0);
      break;
    case NoiseLabels::Adm250:
      c_noise = mul(log(sigma), 250.0);
      break;
    case NoiseLabels::VpTime: {
      // (M − 1)·(√(β_min² + 2·β_d·ln(1 + σ²)) − β_min)/β_d, with ln(1 + σ²) rounded as EDM
      // rounds it (not log1p: in f32 the two differ by up to 1 % at σ = 0.002)
      const double bmin = VpSchedule::beta_min, bd = VpSchedule::beta_d;
      const Tensor t =
          div(sub(sqrt(add(mul(log(add(square(sigma), 1.0)), 2 * bd), bmin * bmin)), bmin), bd);
      c_noise = mul(t, VpSchedule::M - 1);
      break;
    }
    case NoiseLabels::VeLog:
      c_noise = log(mul(sigma, 0.5));
      break;
  }
  if (p_ == Parameterization::Vp || p_ == Parameterization::Ve) {
    // c_skip = 1; c_out = ∓σ; c_in = 1/√(σ² + 1) (VP) or 1 (VE)
    const Tensor in = p_ == Parameterization::Vp ? mul(rsqrt(add(s2, 1.0)), x) : x;
    const Tensor f =
        to(net_.forward(to(in, dt), to(c_noise, dt), class_labels, {}, ctx), x.dtype());
    return p_ == Parameterization::Vp ? sub(x, mul(s, f)) : add(x, mul(s, f));
  }
  Tensor c_skip, c_out;
  if (p_ == Parameterization::Edm) {
    c_skip = rdiv(sd2, add(s2, sd2));
    c_out = div(mul(s, c_.sigma_data), sqrt(add(s2, sd2)));
  } else {
    const Tensor d = sub(s, c_.sigma_min);
    c_skip = rdiv(sd2, add(square(d), sd2));
    c_out = div(mul(d, c_.sigma_data), sqrt(add(s2, sd2)));
  }
  const Tensor c_in = rsqrt(add(s2, sd2));
  const Tensor f = net_.forward(to(mul(c_in, x), dt), to(c_noise, dt), class_labels, {}, ctx);
  return add(mul(c_skip, x), mul(c_out, to(f, x.dtype())));
}

Tensor edm_loss_at(const Denoiser& D, const Tensor& x, const Tensor& class_labels,
                   const EdmLossOptions& o, const Tensor& rnd_normal, const Tensor& noise,
                   const nn::ForwardContext& ctx) {
  const double sd = D.constants().sigma_data;
  const Tensor sigma = exp(add(mul(rnd_normal, o.p_std), o.p_mean));
  const Tensor s = reshape(sigma, {-1, 1, 1, 1});
  const Tensor weight = div(add(square(s), sd * sd), square(mul(s, sd)));
  const Tensor denoised = D(add(x, mul(noise, s)), sigma, class_labels, ctx);
  return div(sum(mul(weight, square(sub(denoised, x)))), double(x.size(0)));
}

Tensor edm_loss(const Denoiser& D, const Tensor& x, const Tensor& class_labels,
                const EdmLossOptions& o, Generator& gen, const nn::ForwardContext& ctx) {
  const TensorOptions opt{.dtype = x.dtype(), .device = x.device()};
  const Tensor rnd_normal = randn({x.size(0)}, opt, &gen);
  const Tensor noise = randn(x.shape(), opt, &gen);
  return edm_loss_at(D, x, class_labels, o, rnd_normal, noise, ctx);
}

Tensor edm_heun_sample(const Denoiser& D, const Tensor& latents, const Tensor& class_labels,
                       int64_t steps) {
  NoGradGuard ng;
  std::vector<double> t = karras_sigmas(steps, D.constants());
  t.push_back(0.0);
  return edm_heun_solve(D, mul(latents, t[0]), t, class_labels);
}

Tensor edm_heun_solve(const Denoiser& D, const Tensor& x0, const std::vector<double>& t,
                      const Tensor& class_labels) {
  CM_CHECK(t.size() >= 2 && t.back() == 0.0, "edm_heun_solve: the time points must end at 0");
  NoGradGuard ng;
  const int64_t n = x0.size(0);
  auto sig = [&](double v) { return full({n}, v, {.dtype = x0.dtype(), .device = x0.device()}); };
  const size_t steps = t.size() - 1;
  Tensor x = x0;
  for (size_t i = 0; i < steps; ++i) {
    const double tc = t[i], tn = t[i + 1];
    const Tensor d = div(sub(x, D(x, sig(tc), class_labels)), tc);
    Tensor xn = add(x, mul(d, tn - tc));
    if (i + 1 < steps) {
      const Tensor d2 = div(sub(xn, D(xn, sig(tn), class_labels)), tn);
      xn = add(x, mul(add(mul(d, 0.5), mul(d2, 0.5)), tn - tc));
    }
    x = xn;
  }
  return x;
}

}  // namespace cm::consistency
