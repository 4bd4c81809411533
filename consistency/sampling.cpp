#include "consistency/sampling.h"

#include <cmath>

namespace cm::consistency {

void validate_time_points(const std::vector<double>& taus, const NoiseConstants& c) {
  for (size_t i = 0; i < taus.size(); ++i) {
    const double t = taus[i];
    CM_CHECK(std::isfinite(t) && t >= c.sigma_min && t < c.sigma_max, "sampling: time point ", i,
             " = ", t, " is outside [sigma_min, sigma_max) = [", c.sigma_min, ", ", c.sigma_max,
             ")");
    CM_CHECK(i == 0 || t < taus[i - 1],
             "sampling: time points must be strictly decreasing, but point ", i, " = ", t,
             " follows ", taus[i - 1]);
  }
}

std::vector<double> time_points_from_indices(const std::vector<int64_t>& ts, int64_t n,
                                             const NoiseConstants& c) {
  CM_CHECK(ts.size() >= 2, "sampling: ts needs at least two indices (0 and ", n - 1, "), got ",
           ts.size());
  CM_CHECK(ts.front() == 0, "sampling: ts must start at index 0 (sigma_max), got ", ts.front());
  CM_CHECK(ts.back() == n - 1, "sampling: ts must end at index ", n - 1,
           " (sigma_min, which ends the loop), got ", ts.back());
  const std::vector<double> grid = karras_sigmas(n, c);
  std::vector<double> taus;
  for (size_t i = 1; i + 1 < ts.size(); ++i) {
    CM_CHECK(ts[i] > ts[i - 1] && ts[i] < n - 1, "sampling: ts must increase strictly within [0, ",
             n - 1, "], entry ", i, " = ", ts[i]);
    taus.push_back(grid[size_t(ts[i])]);
  }
  return taus;
}

Tensor one_hot_classes(const std::vector<int64_t>& classes, int64_t num_classes, Device device) {
  std::vector<float> v(classes.size() * size_t(num_classes), 0.0f);
  for (size_t i = 0; i < classes.size(); ++i) {
    CM_CHECK(classes[i] >= 0 && classes[i] < num_classes, "one_hot_classes: class ", classes[i],
             " outside 0 .. ", num_classes - 1);
    v[i * size_t(num_classes) + size_t(classes[i])] = 1.0f;
  }
  return from_vector(v, {int64_t(classes.size()), num_classes}, {.device = device});
}

Tensor per_image_noise(const std::vector<uint64_t>& seeds, const Shape& image_shape, int64_t draw,
                       Device device) {
  std::vector<Tensor> rows;
  for (uint64_t s : seeds) {
    Generator g(s);
    for (int64_t i = 0; i < draw; ++i) g.reserve(shape_numel(image_shape), DType::f32);
    rows.push_back(randn(image_shape, {.dtype = DType::f32, .device = device}, &g));
  }
  return stack(rows, 0);
}

Tensor consistency_sample(const Denoiser& f, const std::vector<uint64_t>& seeds,
                          const Shape& image_shape, const Tensor& class_labels,
                          const SampleOptions& o, Device device) {
  CM_CHECK(!seeds.empty(), "sampling: no seeds given");
  const NoiseConstants& c = f.constants();
  validate_time_points(o.taus, c);
  NoGradGuard ng;
  const int64_t n = int64_t(seeds.size());
  auto sigma = [&](double v) { return full({n}, v, {.dtype = DType::f32, .device = device}); };
  auto denoise = [&](const Tensor& x, double s) {
    Tensor y = f(x, sigma(s), class_labels);
    return o.clip ? clamp(y, -1.0, 1.0) : y;
  };
  Tensor x = denoise(mul(per_image_noise(seeds, image_shape, 0, device), c.sigma_max), c.sigma_max);
  for (size_t i = 0; i < o.taus.size(); ++i) {
    const double t = o.taus[i];
    const Tensor z = per_image_noise(seeds, image_shape, int64_t(i) + 1, device);
    x = denoise(add(x, mul(z, std::sqrt(t * t - c.sigma_min * c.sigma_min))), t);
  }
  return x;
}

}  // namespace cm::consistency
