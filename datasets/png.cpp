// PNG decoding and encoding with libpng. libpng reports errors by longjmp; every libpng call sits
// in a small function whose only locals are plain pointers (so the jump skips no destructor and
// reads no clobbered local), the png structs belong to an RAII owner in the calling C++ frame, and
// the message libpng gave is turned into a cm::Error naming the file.
#include "datasets/png.h"

#include <png.h>

#include <cerrno>
#include <csetjmp>
#include <cstdio>
#include <cstring>

#include "autograd/ops.h"
#include "nn/atomic_file.h"
#include "nn/file_io.h"

namespace cm::data {

namespace {

// Where libpng's error message lands before the longjmp.
struct PngError {
  char message[256] = "unknown libpng error";
};

void on_png_error(png_structp png, png_const_charp msg) {
  auto* err = static_cast<PngError*>(png_get_error_ptr(png));
  std::snprintf(err->message, sizeof(err->message), "%s", msg ? msg : "unknown libpng error");
  png_longjmp(png, 1);
}

void on_png_warning(png_structp, png_const_charp) {}  // warnings (bad ancillary chunks) are ignored

struct MemoryReader {
  const uint8_t* data;
  size_t size;
  size_t pos;
};

void read_from_memory(png_structp png, png_bytep out, png_size_t n) {
  auto* r = static_cast<MemoryReader*>(png_get_io_ptr(png));
  if (n > r->size - r->pos) png_error(png, "unexpected end of data (truncated file)");
  std::memcpy(out, r->data + r->pos, n);
  r->pos += n;
}

// Owns the read structs; destroyed on every path, including after a longjmp.
struct ReadStructs {
  png_structp png = nullptr;
  png_infop info = nullptr;
  PngError err;
  ~ReadStructs() {
    if (png) png_destroy_read_struct(&png, info ? &info : nullptr, nullptr);
  }
};

struct Header {
  uint32_t width = 0, height = 0;
  int channels = 0;  // after the transformations: 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA
  int bit_depth = 0;
  size_t rowbytes = 0;
};

// Reads the header and sets the transformations that give 8-bit gray/gray+alpha/RGB/RGBA.
bool read_header(ReadStructs* s, MemoryReader* src, Header* h) {
  if (setjmp(png_jmpbuf(s->png))) return false;
  png_set_read_fn(s->png, src, read_from_memory);
  png_read_info(s->png, s->info);
  const int color = png_get_color_type(s->png, s->info);
  const int depth = png_get_bit_depth(s->png, s->info);
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(s->png);
  if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(s->png);
  if (depth == 16) png_set_scale_16(s->png);  // round(v·255/65535)
  png_set_interlace_handling(s->png);
  png_read_update_info(s->png, s->info);
  h->width = png_get_image_width(s->png, s->info);
  h->height = png_get_image_height(s->png, s->info);
  h->channels = png_get_channels(s->png, s->info);
  h->bit_depth = png_get_bit_depth(s->png, s->info);
  h->rowbytes = png_get_rowbytes(s->png, s->info);
  return true;
}

bool read_rows(ReadStructs* s, png_bytepp rows) {
  if (setjmp(png_jmpbuf(s->png))) return false;
  png_read_image(s->png, rows);
  png_read_end(s->png, nullptr);  // checks the chunks after the image data, up to IEND
  return true;
}

// Images above this many decoded bytes are refused before allocating (a corrupt header could
// otherwise ask for terabytes).
constexpr size_t kMaxDecodedBytes = size_t(1) << 32;

// zlib cannot inflate more than about 1032 bytes from one byte of IDAT: an image whose filtered
// rows (rowbytes + 1 per row) need more than that from the whole file is refused before its pixel
// buffer is allocated (a 10-byte IHDR could otherwise ask for gigabytes).
constexpr size_t kMaxInflateRatio = 1032;

// ---- writing ---------------------------------------------------------------------------------

struct WriteStructs {
  png_structp png = nullptr;
  png_infop info = nullptr;
  PngError err;
  ~WriteStructs() {
    if (png) png_destroy_write_struct(&png, info ? &info : nullptr);
  }
};

void write_to_memory(png_structp png, png_bytep data, png_size_t n) {
  auto* out = static_cast<std::vector<uint8_t>*>(png_get_io_ptr(png));
  bool ok = true;
  try {
    out->insert(out->end(), data, data + n);
  } catch (...) {
    ok = false;
  }
  if (!ok) png_error(png, "out of memory while encoding");
}

void flush_memory(png_structp) {}

bool write_image(WriteStructs* s, std::vector<uint8_t>* out, uint32_t width, uint32_t height,
                 int color_type, int compress_level, png_bytepp rows) {
  if (setjmp(png_jmpbuf(s->png))) return false;
  png_set_write_fn(s->png, out, write_to_memory, flush_memory);
  png_set_compression_level(s->png, compress_level);
  png_set_IHDR(s->png, s->info, width, height, 8, color_type, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(s->png, s->info);
  png_write_image(s->png, rows);
  png_write_end(s->png, nullptr);
  return true;
}

}  // namespace

Tensor decode_png(const uint8_t* data, size_t size, const std::string& name) {
  CM_CHECK(size >= 8 && png_sig_cmp(data, 0, 8) == 0, "read_png: '", name,
           "' is not a PNG file (bad signature)");
  ReadStructs s;
  s.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &s.err, on_png_error, on_png_warning);
  CM_CHECK(s.png != nullptr, "read_png: '", name, "': cannot create the libpng read struct");
  s.info = png_create_info_struct(s.png);
  CM_CHECK(s.info != nullptr, "read_png: '", name, "': cannot create the libpng info struct");

  MemoryReader src{data, size, 0};
  Header h;
  CM_CHECK(read_header(&s, &src, &h), "read_png: '", name, "' is corrupt: ", s.err.message);
  CM_CHECK(h.bit_depth == 8 && h.channels >= 1 && h.channels <= 4, "read_png: '", name,
           "': unexpected decoded format (", h.channels, " channels of ", h.bit_depth, " bits)");
  CM_CHECK(h.width > 0 && h.height > 0 && h.rowbytes == size_t(h.width) * size_t(h.channels),
           "read_png: '", name, "': inconsistent header (", h.width, "x", h.height, ", row of ",
           h.rowbytes, " bytes)");
  CM_CHECK(h.rowbytes * h.height <= kMaxDecodedBytes, "read_png: '", name, "': image of ", h.width,
           "x", h.height, " is too large");
  CM_CHECK((h.rowbytes + 1) * h.height <= size * kMaxInflateRatio, "read_png: '", name,
           "' is corrupt or truncated: its ", size, " bytes cannot hold an image of ", h.width, "x",
           h.height, " (", h.channels, " channels)");

  std::vector<uint8_t> pixels(h.rowbytes * h.height);  // interleaved, as libpng writes it
  std::vector<png_bytep> rows(h.height);
  for (uint32_t y = 0; y < h.height; ++y) rows[y] = pixels.data() + size_t(y) * h.rowbytes;
  CM_CHECK(read_rows(&s, rows.data()), "read_png: '", name, "' is corrupt: ", s.err.message);

  // Interleaved [H, W, channels] -> planar [C, H, W], dropping alpha.
  const int64_t C = h.channels <= 2 ? 1 : 3, H = h.height, W = h.width;
  Tensor img = empty({C, H, W}, {.dtype = DType::u8});
  uint8_t* dst = img.data<uint8_t>();
  for (int64_t c = 0; c < C; ++c)
    for (int64_t i = 0; i < H * W; ++i) dst[c * H * W + i] = pixels[size_t(i * h.channels + c)];
  return img;
}

Tensor read_png(const std::string& path) {
  const std::vector<uint8_t> bytes = nn::read_file_bytes(path, "read_png");
  return decode_png(bytes.data(), bytes.size(), path);
}

std::vector<uint8_t> encode_png(const Tensor& image, int compress_level) {
  CM_CHECK(image.dtype() == DType::u8 && image.dim() == 3 &&
               (image.size(0) == 1 || image.size(0) == 3) && image.size(1) > 0 && image.size(2) > 0,
           "write_png: expected a u8 image [C, H, W] with C = 1 or 3, got ",
           dtype_name(image.dtype()), " ", shape_str(image.shape()));
  CM_CHECK(compress_level >= 0 && compress_level <= 9,
           "write_png: compress_level must be 0..9, got ", compress_level);
  CM_CHECK(image.size(1) <= 0x7fffffff && image.size(2) <= 0x7fffffff,
           "write_png: image too large: ", shape_str(image.shape()));
  const int64_t C = image.size(0), H = image.size(1), W = image.size(2);
  // Planar [C, H, W] (any strides, any device) -> interleaved rows.
  Tensor hwc = contiguous(permute(to(image, Device::cpu()), {1, 2, 0}));
  std::vector<uint8_t> pixels(hwc.data<uint8_t>(), hwc.data<uint8_t>() + H * W * C);
  std::vector<png_bytep> rows(static_cast<size_t>(H));
  for (int64_t y = 0; y < H; ++y) rows[size_t(y)] = pixels.data() + y * W * C;

  WriteStructs s;
  s.png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &s.err, on_png_error, on_png_warning);
  CM_CHECK(s.png != nullptr, "write_png: cannot create the libpng write struct");
  s.info = png_create_info_struct(s.png);
  CM_CHECK(s.info != nullptr, "write_png: cannot create the libpng info struct");
  std::vector<uint8_t> out;
  const int color = C == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB;
  CM_CHECK(write_image(&s, &out, uint32_t(W), uint32_t(H), color, compress_level, rows.data()),
           "write_png: libpng failed: ", s.err.message);
  return out;
}

void write_png(const std::string& path, const Tensor& image, int compress_level) {
  std::vector<uint8_t> bytes;
  try {
    bytes = encode_png(image, compress_level);
  } catch (const Error& e) {
    throw Error(std::string(e.what()) + " (writing '" + path + "')");
  }
  nn::write_atomic(path,
                   std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
}

}  // namespace cm::data
