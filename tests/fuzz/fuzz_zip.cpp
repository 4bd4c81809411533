// Fuzz target: the ZIP reader (datasets/zip.h) and the EDM dataset-zip loader on the input as an
// archive: open it (central directory), read every entry, then load it as an EDM data set.
#include "datasets/dataset.h"
#include "datasets/zip.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const cm::fuzz::MemFile file(data, size);
  cm::fuzz::expect_cm_error_or_success([&] {
    const cm::data::ZipReader zip(file.path());
    for (const cm::data::ZipEntry& e : zip.entries()) {
      cm::fuzz::expect_cm_error_or_success([&] { zip.read(e); });
      (void)zip.find(e.name);
    }
  });
  cm::fuzz::expect_cm_error_or_success([&] { cm::data::load_edm_zip(file.path()); });
  return 0;
}
