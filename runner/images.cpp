#include "runner/images.h"

#include <cmath>

#include "autograd/ops.h"
#include "datasets/npz.h"

namespace cm::runner {

Quantization parse_quantization(const std::string& s) {
  if (s == "floor") return Quantization::Floor;
  if (s == "round") return Quantization::Round;
  CM_FAIL("unknown quantization \"", s, "\" (expected floor or round)");
}

const char* quantization_name(Quantization q) {
  return q == Quantization::Floor ? "floor" : "round";
}

Tensor quantize(const Tensor& images, Quantization q) {
  NoGradGuard ng;
  Tensor x = to(to(detach(images), DType::f32), Device::cpu());
  x = q == Quantization::Floor ? floor(mul(add(x, 1.0), 127.5)) : floor(add(mul(x, 127.5), 128.0));
  return to(clamp(x, 0.0, 255.0), DType::u8);
}

Tensor make_grid(const Tensor& images, int64_t nrow, int64_t padding, uint8_t pad_value) {
  CM_CHECK(images.dim() == 4 && images.dtype() == DType::u8,
           "make_grid: expected u8 [N, C, H, W], got ", dtype_name(images.dtype()), " ",
           shape_str(images.shape()));
  const int64_t n = images.size(0), c = images.size(1), h = images.size(2), w = images.size(3);
  if (nrow <= 0) nrow = std::max<int64_t>(1, int64_t(std::ceil(std::sqrt(double(n)))));
  const int64_t cols = std::min(nrow, std::max<int64_t>(n, 1));
  const int64_t rows = (n + cols - 1) / cols;
  const int64_t gh = rows * (h + padding) + padding, gw = cols * (w + padding) + padding;
  Tensor grid = full({c, gh, gw}, double(pad_value), {.dtype = DType::u8});
  const Tensor src = contiguous(to(images, Device::cpu()));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = i / cols, q = i % cols;
    Tensor dst =
        narrow(narrow(grid, 1, padding + r * (h + padding), h), 2, padding + q * (w + padding), w);
    copy_(dst, select(src, 0, i));
  }
  return grid;
}

Tensor upscale_nearest(const Tensor& image, int64_t factor) {
  CM_CHECK(image.dim() == 3 && factor >= 1,
           "upscale_nearest: expected [C, H, W] and a factor >= 1, got ", shape_str(image.shape()),
           " and ", factor);
  if (factor == 1) return image;
  auto repeat_index = [&](int64_t n) {
    std::vector<int64_t> idx(static_cast<size_t>(n * factor));
    for (int64_t i = 0; i < n * factor; ++i) idx[size_t(i)] = i / factor;
    return from_vector(idx, {n * factor}, {.dtype = DType::i64, .device = image.device()});
  };
  return index_select(index_select(image, 1, repeat_index(image.size(1))), 2,
                      repeat_index(image.size(2)));
}

void write_npz(const std::string& path, const Tensor& images_u8, const Tensor& labels) {
  CM_CHECK(images_u8.dim() == 4 && images_u8.dtype() == DType::u8,
           "write_npz: expected u8 [N, C, H, W]");
  std::vector<std::pair<std::string, Tensor>> arrays;
  arrays.emplace_back("arr_0", permute(images_u8, {0, 2, 3, 1}));
  if (labels.defined()) arrays.emplace_back("arr_1", to(labels, DType::i64));
  data::write_npz(path, arrays);
}

}  // namespace cm::runner
