// JPEG decoding with libjpeg. libjpeg reports errors through error_exit, which here longjmps back
// into a small function whose only locals are plain pointers and integers (the jump skips no
// destructor); the decompressor belongs to an RAII owner in the calling C++ frame, and libjpeg's
// message becomes a cm::Error naming the file.
#include "datasets/jpeg.h"

// jpeglib.h needs size_t and FILE declared first
#include <cstdio>
// clang-format off
#include <jpeglib.h>
// clang-format on

#include <jerror.h>

#include <csetjmp>
#include <cstring>
#include <vector>

#include "autograd/ops.h"

namespace cm::data {

namespace {

struct ErrorManager {
  jpeg_error_mgr pub;  // first: libjpeg sees an ErrorManager* as a jpeg_error_mgr*
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX] = "unknown libjpeg error";
};

void on_error_exit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<ErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

// A truncated file is an error, as PIL raises "image file is truncated" for it; the other
// corrupt-data warnings (extraneous bytes before a marker, which a few of ImageNet's JPEGs have)
// are ignored, as PIL ignores them.
void on_emit_message(j_common_ptr cinfo, int msg_level) {
  if (msg_level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) on_error_exit(cinfo);
}

struct Decompressor {
  jpeg_decompress_struct cinfo{};
  ErrorManager err;
  bool created = false;
  ~Decompressor() {
    if (created) jpeg_destroy_decompress(&cinfo);
  }
};

struct Info {
  int width = 0, height = 0, components = 0;
  J_COLOR_SPACE space = JCS_UNKNOWN;
  bool adobe = false;
};

// Header, then the colour conversion libjpeg is asked for; false after a libjpeg error.
bool start(Decompressor* d, const uint8_t* data, size_t size, Info* info) {
  if (setjmp(d->err.jump)) return false;
  jpeg_create_decompress(&d->cinfo);
  d->created = true;
  jpeg_mem_src(&d->cinfo, data, static_cast<unsigned long>(size));
  jpeg_read_header(&d->cinfo, TRUE);
  const J_COLOR_SPACE in = d->cinfo.jpeg_color_space;
  if (in == JCS_GRAYSCALE) {
    d->cinfo.out_color_space = JCS_GRAYSCALE;
  } else if (in == JCS_CMYK || in == JCS_YCCK) {
    d->cinfo.out_color_space = JCS_CMYK;
  } else {
    d->cinfo.out_color_space = JCS_RGB;
  }
  d->cinfo.dct_method = JDCT_ISLOW;  // PIL's default, and libjpeg's
  d->cinfo.do_fancy_upsampling = TRUE;
  jpeg_start_decompress(&d->cinfo);
  info->width = int(d->cinfo.output_width);
  info->height = int(d->cinfo.output_height);
  info->components = d->cinfo.output_components;
  info->space = d->cinfo.out_color_space;
  info->adobe = d->cinfo.saw_Adobe_marker;
  return true;
}

// The scanlines into `out` (height rows of width·components bytes); false after a libjpeg error.
bool read_rows(Decompressor* d, uint8_t* out, size_t row_bytes) {
  if (setjmp(d->err.jump)) return false;
  while (d->cinfo.output_scanline < d->cinfo.output_height) {
    JSAMPROW row = out + size_t(d->cinfo.output_scanline) * row_bytes;
    jpeg_read_scanlines(&d->cinfo, &row, 1);
  }
  jpeg_finish_decompress(&d->cinfo);
  return true;
}

// PIL's MULDIV255: a·b/255 rounded, in integers.
inline int muldiv255(int a, int b) {
  const int t = a * b + 128;
  return (t + (t >> 8)) >> 8;
}

}  // namespace

bool is_jpeg(const uint8_t* data, size_t size) {
  return size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF;
}

Tensor decode_jpeg(const uint8_t* data, size_t size, const std::string& name) {
  CM_CHECK(is_jpeg(data, size), "decode_jpeg: '", name, "' is not a JPEG (no SOI marker)");
  Decompressor d;
  d.cinfo.err = jpeg_std_error(&d.err.pub);
  d.err.pub.error_exit = on_error_exit;
  d.err.pub.emit_message = on_emit_message;
  Info info;
  if (!start(&d, data, size, &info)) CM_FAIL("decode_jpeg: '", name, "': ", d.err.message);
  const int64_t w = info.width, h = info.height, k = info.components;
  CM_CHECK(w > 0 && h > 0 && w * h <= (int64_t(1) << 28), "decode_jpeg: '", name, "' is ", w, "×",
           h, " pixels (at most 2^28 are decoded)");
  CM_CHECK((info.space == JCS_GRAYSCALE && k == 1) || (info.space == JCS_RGB && k == 3) ||
               (info.space == JCS_CMYK && k == 4),
           "decode_jpeg: '", name, "': unexpected output of ", k, " components");
  std::vector<uint8_t> pixels(size_t(w * h * k));
  if (!read_rows(&d, pixels.data(), size_t(w * k)))
    CM_FAIL("decode_jpeg: '", name, "': ", d.err.message);
  const int64_t C = k == 1 ? 1 : 3;
  Tensor out = empty({C, h, w}, {.dtype = DType::u8});
  uint8_t* o = out.data<uint8_t>();
  const int64_t hw = h * w;
  for (int64_t p = 0; p < hw; ++p) {
    const uint8_t* s = pixels.data() + p * k;
    if (k == 1) {
      o[p] = s[0];
    } else if (k == 3) {
      o[p] = s[0];
      o[hw + p] = s[1];
      o[2 * hw + p] = s[2];
    } else {
      // PIL reads Adobe CMYK as inverted ("CMYK;I"), then converts CMYK to RGB
      int c[4];
      for (int j = 0; j < 4; ++j) c[j] = info.adobe ? 255 - s[j] : s[j];
      const int nk = 255 - c[3];
      for (int j = 0; j < 3; ++j) {
        const int v = nk - muldiv255(c[j], nk);
        o[j * hw + p] = uint8_t(v < 0 ? 0 : v > 255 ? 255 : v);
      }
    }
  }
  return out;
}

}  // namespace cm::data
