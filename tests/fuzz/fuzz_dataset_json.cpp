// Fuzz target: the labels file of EDM data sets. The input is the dataset.json of a folder data
// set of two fixed 2×2 PNGs (00000/img00000000.png, 00000/img00000001.png), loaded with
// load_image_folder.
#include "datasets/dataset.h"
#include "datasets/png.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::filesystem::path dir = [] {
    const std::filesystem::path d = cm::fuzz::scratch_dir("dataset_json");
    std::filesystem::create_directories(d / "00000");
    for (int i = 0; i < 2; ++i) {
      cm::Tensor img = cm::full({3, 2, 2}, double(40 * i), {.dtype = cm::DType::u8});
      cm::data::write_png((d / ("00000/img0000000" + std::to_string(i) + ".png")).string(), img);
    }
    return d;
  }();
  cm::fuzz::write_file(dir / "dataset.json", data, size);
  cm::fuzz::expect_cm_error_or_success([&] { cm::data::load_image_folder(dir.string()); });
  return 0;
}
