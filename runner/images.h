// Turning model outputs into image files: quantisation to uint8 (the recipe is explicit and
// recorded), image grids, PNGs and the .npz batches the reference evaluators read.
#pragma once

#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace cm::runner {

enum class Quantization {
  Floor,  // clamp(⌊(x + 1)·127.5⌋, 0, 255): the consistency-models code (default)
  Round,  // clamp(⌊x·127.5 + 128⌋, 0, 255): EDM's generate.py (≈ rounding)
};
Quantization parse_quantization(const std::string& s);
const char* quantization_name(Quantization q);

// f32 images [N, C, H, W] in [−1, 1] -> u8 [N, C, H, W] on the CPU.
Tensor quantize(const Tensor& images, Quantization q = Quantization::Floor);

// u8 [N, C, H, W] -> one u8 [C, H', W'] grid, `nrow` images per row (0: ⌈√N⌉), `padding` pixels of
// value `pad_value` between and around them (torchvision's make_grid layout).
Tensor make_grid(const Tensor& images, int64_t nrow = 0, int64_t padding = 2,
                 uint8_t pad_value = 0);

// Enlarges an image [C, H, W] (any dtype) by an integer factor, each pixel repeated factor×factor
// times, so that small images (8×8 digits) are visible in a grid.
Tensor upscale_nearest(const Tensor& image, int64_t factor);

// Writes u8 [N, C, H, W] as an .npz with arr_0 = uint8 [N, H, W, C] (NHWC, what openai's
// evaluator and clean-fid read) and, when labels is defined, arr_1 = i64 [N]. Written atomically.
void write_npz(const std::string& path, const Tensor& images_u8, const Tensor& labels = {});

}  // namespace cm::runner
