// PNG reading and writing through libpng. Images are u8 tensors in the planar layout [C, H, W] used
// everywhere in cm (C = 1 for gray, 3 for RGB), so a decoded image drops straight into a batch.
// Every libpng failure (corrupt or truncated data, bad CRC, unsupported input) is a cm::Error
// naming the file; nothing longjmps past C++ code or aborts.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace cm::data {

// Decodes a PNG to u8 [C, H, W] with C = 1 (gray) or 3 (RGB):
//   - 1, 2 and 4-bit gray are expanded to 8 bits; 16-bit samples are scaled to 8 bits as
//     round(v·255/65535);
//   - palette images are expanded to RGB;
//   - an alpha channel (gray+alpha, RGBA, or palette transparency) is dropped, not composited;
//   - interlaced images are de-interlaced.
Tensor read_png(const std::string& path);
// The same from bytes in memory (an image inside a zip); `name` is used in error messages.
Tensor decode_png(const uint8_t* data, size_t size, const std::string& name);

// Encodes u8 [C, H, W] (C = 1 or 3, any strides) as an 8-bit gray or RGB PNG. compress_level is
// zlib's 0..9 (0 = stored, what EDM's dataset_tool writes).
std::vector<uint8_t> encode_png(const Tensor& image, int compress_level = 6);
// Writes encode_png(image) to `path` atomically (a temporary file beside it, then a rename): a
// reader never sees a half-written image.
void write_png(const std::string& path, const Tensor& image, int compress_level = 6);

}  // namespace cm::data
