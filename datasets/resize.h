// Image resampling as PIL (Pillow) does it for 8-bit images, byte for byte, and the reference's
// center_crop_arr built on it (openai/guided-diffusion and openai/consistency_models
// image_datasets.py), so that a folder of ImageNet JPEGs gives cm the pixels it gives the
// reference.
//
// pil_resize is Pillow's Resample.c for 8 bits per channel: a separable convolution, horizontal
// pass first (then vertical), each output sample a sum over the input samples in the filter's
// support scaled by max(1, in/out) around the centre (x + ½)·in/out, weights normalised to sum 1,
// then rounded to fixed point with 22 fraction bits; a pass rounds its sums and clamps to 0..255.
// A pass whose size is unchanged is skipped, and equal sizes return a copy, as Image.resize does.
#pragma once

#include <cstdint>

#include "tensor/tensor.h"

namespace cm::data {

enum class ResampleFilter {
  Box,      // PIL's Image.BOX: support ½, weight 1 on (−½, ½]
  Bicubic,  // PIL's Image.BICUBIC: support 2, Keys' cubic with a = −½
};

// u8 [C, H, W] resized to [C, out_h, out_w] (both ≥ 1).
Tensor pil_resize(const Tensor& image, int64_t out_w, int64_t out_h, ResampleFilter filter);

// The reference's center_crop_arr(pil_image, size): halve with BOX while the short side is at
// least 2·size, resize with BICUBIC so that the short side is `size` (the long side
// round(long·size/short), Python's round, half to even), then crop the centre size×size
// ((H − size) // 2 rows and (W − size) // 2 columns off the top and left).
Tensor center_crop_arr(const Tensor& image, int64_t size);

}  // namespace cm::data
