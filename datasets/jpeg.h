// JPEG decoding through libjpeg(-turbo), as PIL decodes JPEGs (its default settings: accurate
// integer IDCT, fancy upsampling), for the reference's image folders (ImageNet's JPEGs). Every
// libjpeg failure (corrupt or truncated data, an unsupported colour space) is a cm::Error naming
// the file; nothing longjmps past C++ code or aborts.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "tensor/tensor.h"

namespace cm::data {

// Decodes a JPEG to u8 [C, H, W]: C = 1 for a grayscale JPEG, 3 (RGB) otherwise. CMYK and YCCK
// JPEGs become RGB as PIL's convert("RGB") makes them (Adobe's inverted CMYK undone, then
// r = (255 − k) − c·(255 − k)/255, rounded as PIL rounds).
Tensor decode_jpeg(const uint8_t* data, size_t size, const std::string& name);

// True when the bytes start as a JPEG (the SOI marker FF D8 FF).
bool is_jpeg(const uint8_t* data, size_t size);

}  // namespace cm::data
