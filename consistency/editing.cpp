#include "consistency/editing.h"

#include <cmath>

#include "consistency/sampling.h"

namespace cm::consistency {

std::vector<double> orthogonal_with_first_row(const std::vector<double>& first) {
  const size_t n = first.size();
  CM_CHECK(n >= 1, "orthogonal_with_first_row: empty vector");
  std::vector<std::vector<double>> basis;
  auto add = [&](std::vector<double> v) {
    for (const auto& b : basis) {  // modified Gram–Schmidt, twice for accuracy
      for (int pass = 0; pass < 2; ++pass) {
        double d = 0;
        for (size_t i = 0; i < n; ++i) d += v[i] * b[i];
        for (size_t i = 0; i < n; ++i) v[i] -= d * b[i];
      }
    }
    double norm = 0;
    for (double x : v) norm += x * x;
    norm = std::sqrt(norm);
    if (norm < 1e-10) return;  // dependent on the vectors already taken
    for (double& x : v) x /= norm;
    basis.push_back(v);
  };
  add(first);
  CM_CHECK(basis.size() == 1, "orthogonal_with_first_row: the first vector is zero");
  for (size_t k = 0; k < n && basis.size() < n; ++k) {
    std::vector<double> e(n, 0.0);
    e[k] = 1.0;
    add(e);
  }
  std::vector<double> out;
  for (const auto& b : basis) out.insert(out.end(), b.begin(), b.end());
  return out;
}

std::vector<double> colorization_matrix() {
  return orthogonal_with_first_row({0.2989, 0.5870, 0.1140});
}

std::vector<double> patch_matrix(int64_t patch) {
  CM_CHECK(patch >= 1, "patch_matrix: the patch must be positive, got ", patch);
  return orthogonal_with_first_row(std::vector<double>(size_t(patch * patch), 1.0));
}

namespace {

// The matrix as a tensor of x's dtype on x's device: A, or Aᵀ with `transposed`.
Tensor matrix_like(const std::vector<double>& a, int64_t n, const Tensor& x, bool transposed) {
  Tensor m = from_vector(a, {n, n}, {.dtype = DType::f64});
  if (transposed) m = contiguous(transpose(m, 0, 1));
  return to(to(m, x.dtype()), x.device());
}

// Applies the n×n matrix (A with forward, Aᵀ otherwise) to the last dim of x: x @ Aᵀ or x @ A.
Tensor apply_last(const Tensor& x, const std::vector<double>& a, int64_t n, bool forward) {
  return matmul(x, matrix_like(a, n, x, forward));
}

}  // namespace

EditTransform identity_transform() {
  return {"identity", [](const Tensor& x) { return x; }, [](const Tensor& x) { return x; }};
}

EditTransform colorization_transform() {
  const std::vector<double> a = colorization_matrix();
  auto run = [a](const Tensor& x, bool forward) {
    CM_CHECK(x.dim() == 4 && x.size(1) == 3, "colorization: expected RGB images [N, 3, H, W], got ",
             shape_str(x.shape()), " (a grey model cannot be colorized)");
    const Tensor channels_last = permute(x, {0, 2, 3, 1});  // [N, H, W, 3]
    return contiguous(permute(apply_last(channels_last, a, 3, forward), {0, 3, 1, 2}));
  };
  return {"colorization", [run](const Tensor& x) { return run(x, true); },
          [run](const Tensor& x) { return run(x, false); }};
}

EditTransform superres_transform(int64_t patch) {
  CM_CHECK(patch >= 1, "super-resolution: the patch must be positive, got ", patch);
  const std::vector<double> a = patch_matrix(patch);
  const int64_t p = patch, pp = patch * patch;
  auto run = [a, p, pp](const Tensor& x, bool forward) {
    CM_CHECK(x.dim() == 4, "super-resolution: expected images [N, C, H, W], got ",
             shape_str(x.shape()));
    const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
    CM_CHECK(h % p == 0 && w % p == 0, "super-resolution: the patch ", p,
             " does not divide the image size ", h, "×", w);
    // [N, C, H/p, p, W/p, p] -> [N, C, H/p, W/p, p·p]: each patch's pixels in row-major order
    const Tensor patches =
        reshape(permute(reshape(x, {n, c, h / p, p, w / p, p}), {0, 1, 2, 4, 3, 5}),
                {n, c, h / p, w / p, pp});
    const Tensor y = apply_last(contiguous(patches), a, pp, forward);
    return contiguous(
        reshape(permute(reshape(y, {n, c, h / p, w / p, p, p}), {0, 1, 2, 4, 3, 5}), {n, c, h, w}));
  };
  return {"super-resolution ×" + std::to_string(p), [run](const Tensor& x) { return run(x, true); },
          [run](const Tensor& x) { return run(x, false); }};
}

Tensor colorization_mask(int64_t height, int64_t width) {
  std::vector<float> m(size_t(3 * height * width), 1.0f);
  std::fill(m.begin(), m.begin() + height * width, 0.0f);  // coefficient 0: the luma, known
  return from_vector(m, {1, 3, height, width});
}

Tensor superres_mask(int64_t channels, int64_t height, int64_t width, int64_t patch) {
  CM_CHECK(patch >= 1 && height % patch == 0 && width % patch == 0, "super-resolution: the patch ",
           patch, " does not divide the image size ", height, "×", width);
  std::vector<float> m(size_t(channels * height * width), 1.0f);
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t i = 0; i < height; i += patch)
      for (int64_t j = 0; j < width; j += patch)
        m[size_t((c * height + i) * width + j)] = 0.0f;  // coefficient 0: the patch mean, known
  return from_vector(m, {1, channels, height, width});
}

Tensor box_mask(int64_t channels, int64_t height, int64_t width, int64_t top, int64_t left,
                int64_t h, int64_t w) {
  CM_CHECK(top >= 0 && left >= 0 && h >= 0 && w >= 0 && top + h <= height && left + w <= width,
           "box_mask: the box ", h, "×", w, " at (", top, ", ", left, ") leaves the image ", height,
           "×", width);
  std::vector<float> m(size_t(channels * height * width), 0.0f);
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t i = top; i < top + h; ++i)
      for (int64_t j = left; j < left + w; ++j) m[size_t((c * height + i) * width + j)] = 1.0f;
  return from_vector(m, {1, channels, height, width});
}

Tensor center_square_mask(int64_t channels, int64_t height, int64_t width) {
  const int64_t h = height / 2, w = width / 2;
  return box_mask(channels, height, width, (height - h) / 2, (width - w) / 2, h, w);
}

namespace {

// The 5×7 capitals: seven rows of five bits each (bit 4 the leftmost column).
constexpr uint8_t kFont[26][7] = {
    {14, 17, 17, 31, 17, 17, 17},  // A
    {30, 17, 17, 30, 17, 17, 30},  // B
    {14, 17, 16, 16, 16, 17, 14},  // C
    {30, 17, 17, 17, 17, 17, 30},  // D
    {31, 16, 16, 30, 16, 16, 31},  // E
    {31, 16, 16, 30, 16, 16, 16},  // F
    {14, 17, 16, 23, 17, 17, 15},  // G
    {17, 17, 17, 31, 17, 17, 17},  // H
    {14, 4, 4, 4, 4, 4, 14},       // I
    {7, 2, 2, 2, 2, 18, 12},       // J
    {17, 18, 20, 24, 20, 18, 17},  // K
    {16, 16, 16, 16, 16, 16, 31},  // L
    {17, 27, 21, 21, 17, 17, 17},  // M
    {17, 17, 25, 21, 19, 17, 17},  // N
    {14, 17, 17, 17, 17, 17, 14},  // O
    {30, 17, 17, 30, 16, 16, 16},  // P
    {14, 17, 17, 17, 21, 18, 13},  // Q
    {30, 17, 17, 30, 20, 18, 17},  // R
    {15, 16, 16, 14, 1, 1, 30},    // S
    {31, 4, 4, 4, 4, 4, 4},        // T
    {17, 17, 17, 17, 17, 17, 14},  // U
    {17, 17, 17, 17, 17, 10, 4},   // V
    {17, 17, 17, 21, 21, 21, 10},  // W
    {17, 17, 10, 4, 10, 17, 17},   // X
    {17, 17, 10, 4, 4, 4, 4},      // Y
    {31, 1, 2, 4, 8, 16, 31},      // Z
};

}  // namespace

Tensor letter_mask(int64_t channels, int64_t height, int64_t width, char letter) {
  CM_CHECK(letter >= 'A' && letter <= 'Z', "letter_mask: '", std::string(1, letter),
           "' is not a capital letter A-Z");
  CM_CHECK(height >= 7 && width >= 5, "letter_mask: a ", height, "×", width,
           " image is smaller than the 5×7 font");
  const int64_t scale = std::max<int64_t>(
      1, int64_t(std::floor(0.8 * std::min(double(height) / 7.0, double(width) / 5.0))));
  const int64_t top = (height - 7 * scale) / 2, left = (width - 5 * scale) / 2;
  std::vector<float> m(size_t(channels * height * width), 0.0f);
  const uint8_t* rows = kFont[letter - 'A'];
  for (int64_t i = 0; i < 7 * scale; ++i)
    for (int64_t j = 0; j < 5 * scale; ++j) {
      if (!((rows[i / scale] >> (4 - j / scale)) & 1)) continue;
      for (int64_t c = 0; c < channels; ++c)
        m[size_t((c * height + top + i) * width + left + j)] = 1.0f;
    }
  return from_vector(m, {1, channels, height, width});
}

Tensor random_boxes_mask(const std::vector<uint64_t>& seeds, int64_t channels, int64_t height,
                         int64_t width, int64_t count) {
  CM_CHECK(count >= 1, "random_boxes_mask: ", count, " boxes");
  std::vector<Tensor> masks;
  for (uint64_t seed : seeds) {
    Generator g(seed, uint64_t(1) << 62);
    const std::vector<double> u = rand({4 * count}, {.dtype = DType::f64}, &g).to_vector<double>();
    Tensor m = zeros({1, channels, height, width});
    for (int64_t b = 0; b < count; ++b) {
      auto side = [](double v, int64_t size) {
        const int64_t lo = std::max<int64_t>(1, (size + 7) / 8), hi = std::max(lo, size / 3);
        return std::min(hi, lo + int64_t(v * double(hi - lo + 1)));
      };
      const int64_t h = side(u[size_t(4 * b)], height), w = side(u[size_t(4 * b + 1)], width);
      const int64_t top =
          std::min(height - h, int64_t(u[size_t(4 * b + 2)] * double(height - h + 1)));
      const int64_t left =
          std::min(width - w, int64_t(u[size_t(4 * b + 3)] * double(width - w + 1)));
      m = maximum(m, box_mask(channels, height, width, top, left, h, w));
    }
    masks.push_back(m);
  }
  return cat(masks, 0);
}

EditFunction consistency_function(const Denoiser& f, const Tensor& class_labels) {
  return [&f, class_labels](const Tensor& x, double t) {
    return f(x, full({x.size(0)}, t, {.dtype = x.dtype(), .device = x.device()}), class_labels);
  };
}

EditFunction teacher_ode_function(const Denoiser& d, int64_t steps, const Tensor& class_labels) {
  CM_CHECK(steps >= 1, "teacher_ode_function: ", steps, " Heun steps");
  return [&d, steps, class_labels](const Tensor& x, double t) {
    NoiseConstants from_t = d.constants();
    from_t.sigma_max = t;
    // from σ_min (or with one step) the path to 0 is one Euler step: D(x, τ)
    std::vector<double> grid =
        steps == 1 || t <= from_t.sigma_min ? std::vector<double>{t} : karras_sigmas(steps, from_t);
    grid.push_back(0.0);
    return edm_heun_solve(d, x, grid, class_labels);
  };
}

EditResult edit(const Denoiser& f, const Tensor& y, const EditTransform& a, const Tensor& omega,
                const std::vector<uint64_t>& seeds, const EditOptions& o,
                const Tensor& class_labels) {
  return edit(consistency_function(f, class_labels), f.constants(), y, a, omega, seeds, o);
}

EditResult edit(const EditFunction& f, const NoiseConstants& c, const Tensor& y,
                const EditTransform& a, const Tensor& omega, const std::vector<uint64_t>& seeds,
                const EditOptions& o) {
  CM_CHECK(y.dim() == 4, "edit: expected reference images [N, C, H, W], got ",
           shape_str(y.shape()));
  const int64_t n = y.size(0);
  CM_CHECK(int64_t(seeds.size()) == n, "edit: ", n, " reference images but ", seeds.size(),
           " seeds");
  CM_CHECK(!o.taus.empty(), "edit: no time points");
  for (size_t i = 0; i < o.taus.size(); ++i) {
    const double t = o.taus[i];
    CM_CHECK(std::isfinite(t) && t >= c.sigma_min && t <= c.sigma_max, "edit: time point ", i,
             " = ", t, " is outside [sigma_min, sigma_max] = [", c.sigma_min, ", ", c.sigma_max,
             "]");
    CM_CHECK(i == 0 || t < o.taus[i - 1], "edit: time points must be strictly decreasing, but ",
             "point ", i, " = ", t, " follows ", o.taus[i - 1]);
  }
  NoGradGuard ng;
  const Device dev = y.device();
  const Shape image(y.shape().begin() + 1, y.shape().end());
  const Tensor ay = a.forward(y);  // first: the map checks the images (a colour map, a patch)
  const Tensor mask = to(to(omega, y.dtype()), dev);
  CM_CHECK(mask.dim() == 4 && (mask.size(0) == 1 || mask.size(0) == n) &&
               Shape(mask.shape().begin() + 1, mask.shape().end()) == image,
           "edit: the mask has shape ", shape_str(omega.shape()), ", the images ",
           shape_str(y.shape()));
  // (A y) ⊙ (1 − Ω): what the reference fixes
  const Tensor known = mul(ay, rsub(1.0, mask));
  EditResult r;
  r.degraded = o.fill ? a.inverse(add(known, mul(mask, *o.fill))) : y;
  auto constrain = [&](const Tensor& x) { return a.inverse(add(known, mul(a.forward(x), mask))); };
  auto denoise = [&](const Tensor& x, double t) {
    const Tensor out = f(x, t);
    return o.clip ? clamp(out, -1.0, 1.0) : out;
  };
  auto noise = [&](int64_t draw) {
    return to(per_image_noise(seeds, image, draw, dev), y.dtype());
  };
  Tensor x = add(r.degraded, mul(noise(0), o.taus[0]));
  x = constrain(denoise(x, o.taus[0]));
  if (o.on_point) o.on_point(1);
  for (size_t m = 1; m < o.taus.size(); ++m) {
    const double t = o.taus[m];
    x = add(x, mul(noise(int64_t(m)), std::sqrt(t * t - c.sigma_min * c.sigma_min)));
    x = constrain(denoise(x, t));
    if (o.on_point) o.on_point(m + 1);
  }
  r.result = x;
  return r;
}

}  // namespace cm::consistency
