// Pillow's 8-bit resampling (Resample.c: precompute_coeffs, normalize_coeffs_8bpc and the
// horizontal and vertical passes), rewritten on planar u8 images; see resize.h.
#include "datasets/resize.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "autograd/ops.h"

namespace cm::data {

namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;  // Pillow's PRECISION_BITS

double box_filter(double x) {
  return x > -0.5 && x <= 0.5 ? 1.0 : 0.0;
}

double bicubic_filter(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

// One pass's fixed-point weights: output sample i sums input samples first[i] .. first[i] +
// count[i] − 1 with weights w[i·ksize + j].
struct Coefficients {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<int32_t> w;
};

Coefficients coefficients(int in_size, int out_size, ResampleFilter filter) {
  const double filter_support = filter == ResampleFilter::Box ? 0.5 : 2.0;
  double (*f)(double) = filter == ResampleFilter::Box ? box_filter : bicubic_filter;
  const double scale = double(in_size) / out_size;  // the box is the whole image: in0 = 0
  const double filterscale = std::max(scale, 1.0);
  const double support = filter_support * filterscale;
  Coefficients c;
  c.ksize = int(std::ceil(support)) * 2 + 1;
  c.first.resize(size_t(out_size));
  c.count.resize(size_t(out_size));
  c.w.assign(size_t(out_size) * size_t(c.ksize), 0);
  std::vector<double> k(size_t(c.ksize));
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = int(center - support + 0.5);  // truncation, as the C cast
    if (xmin < 0) xmin = 0;
    int xmax = int(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      k[size_t(x)] = f((x + xmin - center + 0.5) * ss);
      ww += k[size_t(x)];
    }
    for (int x = 0; x < xmax; ++x) {
      if (ww != 0.0) k[size_t(x)] /= ww;
      const double v = k[size_t(x)] * (1 << kPrecisionBits);
      c.w[size_t(xx) * size_t(c.ksize) + size_t(x)] = int32_t(v < 0 ? -0.5 + v : 0.5 + v);
    }
    c.first[size_t(xx)] = xmin;
    c.count[size_t(xx)] = xmax;
  }
  return c;
}

inline uint8_t clip8(int32_t v) {
  v >>= kPrecisionBits;  // arithmetic shift: floor
  return uint8_t(v < 0 ? 0 : v > 255 ? 255 : v);
}

}  // namespace

Tensor pil_resize(const Tensor& image, int64_t out_w, int64_t out_h, ResampleFilter filter) {
  CM_CHECK(image.dtype() == DType::u8 && image.dim() == 3,
           "pil_resize: expected u8 [C, H, W], got ", dtype_name(image.dtype()), " ",
           shape_str(image.shape()));
  CM_CHECK(out_w >= 1 && out_h >= 1 && out_w <= (1 << 20) && out_h <= (1 << 20),
           "pil_resize: output size ", out_w, "×", out_h, " out of range");
  const Tensor in = contiguous(to(image, Device::cpu()));
  const int64_t C = in.size(0), H = in.size(1), W = in.size(2);
  if (W == out_w && H == out_h) return clone(in);
  const uint8_t* src = in.data<uint8_t>();
  // horizontal pass (when the width changes) into a [C, H, out_w] buffer
  std::vector<uint8_t> mid;
  int64_t mid_w = W;
  if (W != out_w) {
    const Coefficients h = coefficients(int(W), int(out_w), filter);
    mid.resize(size_t(C * H * out_w));
    for (int64_t r = 0; r < C * H; ++r) {
      const uint8_t* row = src + r * W;
      for (int64_t xx = 0; xx < out_w; ++xx) {
        const int32_t* k = h.w.data() + xx * h.ksize;
        const uint8_t* s = row + h.first[size_t(xx)];
        int32_t sum = 1 << (kPrecisionBits - 1);
        for (int x = 0; x < h.count[size_t(xx)]; ++x) sum += int32_t(s[x]) * k[x];
        mid[size_t(r * out_w + xx)] = clip8(sum);
      }
    }
    src = mid.data();
    mid_w = out_w;
  }
  Tensor out = empty({C, out_h, out_w}, {.dtype = DType::u8});
  uint8_t* dst = out.data<uint8_t>();
  if (H == out_h) {
    std::copy(src, src + C * H * out_w, dst);
    return out;
  }
  const Coefficients v = coefficients(int(H), int(out_h), filter);
  for (int64_t c = 0; c < C; ++c) {
    const uint8_t* plane = src + c * H * mid_w;
    for (int64_t yy = 0; yy < out_h; ++yy) {
      const int32_t* k = v.w.data() + yy * v.ksize;
      const int y0 = v.first[size_t(yy)], n = v.count[size_t(yy)];
      uint8_t* o = dst + (c * out_h + yy) * out_w;
      for (int64_t xx = 0; xx < out_w; ++xx) {
        int32_t sum = 1 << (kPrecisionBits - 1);
        for (int y = 0; y < n; ++y) sum += int32_t(plane[(y0 + y) * mid_w + xx]) * k[y];
        o[xx] = clip8(sum);
      }
    }
  }
  return out;
}

namespace {

// Halves `image` with BOX while its short side is at least 2·short_side, then resizes it with
// BICUBIC so that its short side is short_side: the common first half of both crops.
Tensor resize_short_side(const Tensor& image, int64_t short_side, const char* op) {
  CM_CHECK(image.dtype() == DType::u8 && image.dim() == 3, op, ": expected u8 [C, H, W], got ",
           dtype_name(image.dtype()), " ", shape_str(image.shape()));
  CM_CHECK(image.size(1) >= 1 && image.size(2) >= 1, op, ": an empty image ",
           shape_str(image.shape()));
  Tensor im = image;
  while (std::min(im.size(1), im.size(2)) >= 2 * short_side)
    im = pil_resize(im, im.size(2) / 2, im.size(1) / 2, ResampleFilter::Box);
  const double scale = double(short_side) / double(std::min(im.size(1), im.size(2)));
  // Python's round: to nearest, ties to even (the default rounding mode)
  const auto w = int64_t(std::nearbyint(double(im.size(2)) * scale));
  const auto h = int64_t(std::nearbyint(double(im.size(1)) * scale));
  return pil_resize(im, w, h, ResampleFilter::Bicubic);
}

Tensor crop(const Tensor& im, int64_t y, int64_t x, int64_t size) {
  return narrow(narrow(im, 1, y, size), 2, x, size).contiguous();
}

}  // namespace

Tensor center_crop_arr(const Tensor& image, int64_t size) {
  CM_CHECK(size >= 1, "center_crop_arr: size must be positive, got ", size);
  const Tensor im = resize_short_side(image, size, "center_crop_arr");
  const int64_t h = im.size(1), w = im.size(2);
  CM_CHECK(h >= size && w >= size, "center_crop_arr: an image of ", image.size(2), "×",
           image.size(1), " resized to ", w, "×", h, " is smaller than ", size, "×", size);
  return crop(im, (h - size) / 2, (w - size) / 2, size);
}

Tensor random_crop_arr(const Tensor& image, int64_t size,
                       const std::function<int64_t(int64_t)>& randrange) {
  const char* op = "random_crop_arr";
  CM_CHECK(size >= 1, op, ": size must be positive, got ", size);
  // as Python computes them: math.ceil of the f64 quotients
  const auto min_short = int64_t(std::ceil(double(size) / 1.0));
  const auto max_short = int64_t(std::ceil(double(size) / 0.8));
  auto draw = [&](int64_t n) {
    const int64_t v = randrange(n);
    CM_CHECK(v >= 0 && v < n, op, ": randrange(", n, ") returned ", v);
    return v;
  };
  const int64_t short_side = min_short + draw(max_short - min_short + 1);
  const Tensor im = resize_short_side(image, short_side, op);
  const int64_t h = im.size(1), w = im.size(2);
  CM_CHECK(h >= size && w >= size, op, ": an image of ", image.size(2), "×", image.size(1),
           " resized to ", w, "×", h, " is smaller than ", size, "×", size);
  const int64_t y = draw(h - size + 1);
  const int64_t x = draw(w - size + 1);
  return crop(im, y, x, size);
}

}  // namespace cm::data
