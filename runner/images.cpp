#include "runner/images.h"

#include <zlib.h>

#include <cmath>
#include <cstring>

#include "autograd/ops.h"
#include "nn/atomic_file.h"

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
  CM_CHECK(image.dim() == 3 && factor >= 1, "upscale_nearest: expected [C, H, W] and a factor >= 1, got ",
           shape_str(image.shape()), " and ", factor);
  if (factor == 1) return image;
  auto repeat_index = [&](int64_t n) {
    std::vector<int64_t> idx(static_cast<size_t>(n * factor));
    for (int64_t i = 0; i < n * factor; ++i) idx[size_t(i)] = i / factor;
    return from_vector(idx, {n * factor}, {.dtype = DType::i64, .device = image.device()});
  };
  return index_select(index_select(image, 1, repeat_index(image.size(1))), 2, repeat_index(image.size(2)));
}

namespace {

// A .npy file: magic, version 1.0, header dict padded to a multiple of 64 bytes, raw data.
std::vector<uint8_t> npy_bytes(const std::string& descr, const Shape& shape, const void* data,
                               size_t nbytes) {
  std::string shape_s = "(";
  for (size_t i = 0; i < shape.size(); ++i)
    shape_s += std::to_string(shape[i]) + (shape.size() == 1 || i + 1 < shape.size() ? "," : "");
  shape_s += ")";
  std::string header =
      "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape_s + ", }";
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  const uint8_t magic[8] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
  std::vector<uint8_t> out(10 + header.size() + nbytes);
  std::memcpy(out.data(), magic, 8);
  out[8] = uint8_t(header.size() & 0xff);
  out[9] = uint8_t(header.size() >> 8);
  std::memcpy(out.data() + 10, header.data(), header.size());
  if (nbytes) std::memcpy(out.data() + 10 + header.size(), data, nbytes);
  return out;
}

void put16(std::vector<uint8_t>& b, uint32_t v) {
  b.push_back(uint8_t(v));
  b.push_back(uint8_t(v >> 8));
}
void put32(std::vector<uint8_t>& b, uint32_t v) {
  put16(b, v & 0xffff);
  put16(b, v >> 16);
}

// A ZIP archive of stored (uncompressed) entries, as numpy.savez writes.
std::vector<uint8_t> zip_stored(
    const std::vector<std::pair<std::string, std::vector<uint8_t>>>& entries) {
  std::vector<uint8_t> out, central;
  for (const auto& [name, data] : entries) {
    CM_CHECK(data.size() < 0xffffffffull, "write_npz: entry ", name,
             " is too large for a ZIP without ZIP64");
    const uint32_t crc = uint32_t(crc32(0L, data.data(), uInt(data.size())));
    const uint32_t offset = uint32_t(out.size());
    put32(out, 0x04034b50);
    put16(out, 20);
    put16(out, 0);
    put16(out, 0);  // stored
    put16(out, 0);
    put16(out, 0x21);  // 1980-01-01
    put32(out, crc);
    put32(out, uint32_t(data.size()));
    put32(out, uint32_t(data.size()));
    put16(out, uint16_t(name.size()));
    put16(out, 0);
    out.insert(out.end(), name.begin(), name.end());
    out.insert(out.end(), data.begin(), data.end());
    put32(central, 0x02014b50);
    put16(central, 20);
    put16(central, 20);
    put16(central, 0);
    put16(central, 0);
    put16(central, 0);
    put16(central, 0x21);
    put32(central, crc);
    put32(central, uint32_t(data.size()));
    put32(central, uint32_t(data.size()));
    put16(central, uint16_t(name.size()));
    put16(central, 0);
    put16(central, 0);
    put16(central, 0);
    put16(central, 0);
    put32(central, 0);
    put32(central, offset);
    central.insert(central.end(), name.begin(), name.end());
  }
  const uint32_t cd_offset = uint32_t(out.size());
  out.insert(out.end(), central.begin(), central.end());
  put32(out, 0x06054b50);
  put16(out, 0);
  put16(out, 0);
  put16(out, uint16_t(entries.size()));
  put16(out, uint16_t(entries.size()));
  put32(out, uint32_t(central.size()));
  put32(out, cd_offset);
  put16(out, 0);
  return out;
}

}  // namespace

void write_npz(const std::string& path, const Tensor& images_u8, const Tensor& labels) {
  CM_CHECK(images_u8.dim() == 4 && images_u8.dtype() == DType::u8,
           "write_npz: expected u8 [N, C, H, W]");
  const Tensor nhwc = contiguous(permute(to(images_u8, Device::cpu()), {0, 2, 3, 1}));
  std::vector<std::pair<std::string, std::vector<uint8_t>>> entries;
  entries.emplace_back("arr_0.npy", npy_bytes("|u1", nhwc.shape(), nhwc.data_ptr(), nhwc.nbytes()));
  if (labels.defined()) {
    const Tensor l = contiguous(to(to(labels, DType::i64), Device::cpu()));
    entries.emplace_back("arr_1.npy", npy_bytes("<i8", l.shape(), l.data_ptr(), l.nbytes()));
  }
  const std::vector<uint8_t> bytes = zip_stored(entries);
  nn::write_atomic(path,
                   std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
}

}  // namespace cm::runner
