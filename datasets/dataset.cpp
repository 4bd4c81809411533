// Data set loaders: each reads its format into u8 images [N, C, H, W] and i64 labels [N], checking
// every size, magic number and label against the format (see dataset.h).
#include "datasets/dataset.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <iterator>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <numbers>
#include <optional>
#include <thread>

#include "autograd/ops.h"
#include "datasets/jpeg.h"
#include "datasets/png.h"
#include "datasets/resize.h"
#include "datasets/zip.h"
#include "nn/file_io.h"

namespace fs = std::filesystem;

namespace cm::data {

namespace {

// Larger label values than this are taken for corrupt data (the one-hot vectors would not fit).
constexpr int64_t kMaxClasses = int64_t(1) << 20;

// Larger decompressed gzip files than this are refused (a gzip bomb); Fashion-MNIST's training
// images, the largest IDX file in use, are 47 MB.
constexpr size_t kMaxGunzipBytes = size_t(4) << 30;

// The whole file; a FIFO, a device or a directory is refused naming the path (never blocks).
std::vector<uint8_t> read_file(const std::string& path, const char* op) {
  return nn::read_file_bytes(path, op);
}

bool has_gzip_magic(const uint8_t* p, size_t n) {
  return n >= 2 && p[0] == 0x1f && p[1] == 0x8b;
}

// Decompresses a gzip file (several concatenated members, as `cat a.gz b.gz`, are one stream).
std::vector<uint8_t> gunzip(const std::vector<uint8_t>& in, const std::string& path,
                            const char* op) {
  struct Inflater {
    z_stream zs{};
    ~Inflater() { inflateEnd(&zs); }
  } z;
  CM_CHECK(inflateInit2(&z.zs, 16 + MAX_WBITS) == Z_OK, op, ": '", path,
           "': cannot initialise zlib");
  constexpr size_t kChunk = size_t(1) << 30;  // z_stream counts are 32-bit
  std::vector<uint8_t> out(std::min(std::max<size_t>(in.size() * 4, 1 << 16), kMaxGunzipBytes));
  size_t in_pos = 0, produced = 0;
  for (;;) {
    if (produced == out.size()) {
      CM_CHECK(out.size() < kMaxGunzipBytes, op, ": '", path, "' decompresses to more than ",
               kMaxGunzipBytes, " bytes (the limit; a gzip bomb?)");
      out.resize(std::min(out.size() * 2, kMaxGunzipBytes));
    }
    const size_t in_chunk = std::min(in.size() - in_pos, kChunk);
    const size_t out_chunk = std::min(out.size() - produced, kChunk);
    z.zs.next_in = const_cast<Bytef*>(in.data() + in_pos);
    z.zs.avail_in = uInt(in_chunk);
    z.zs.next_out = out.data() + produced;
    z.zs.avail_out = uInt(out_chunk);
    const int rc = inflate(&z.zs, Z_NO_FLUSH);
    in_pos += in_chunk - z.zs.avail_in;
    produced += out_chunk - z.zs.avail_out;
    if (rc == Z_STREAM_END) {
      if (in_pos == in.size()) break;
      CM_CHECK(has_gzip_magic(in.data() + in_pos, in.size() - in_pos), op, ": '", path, "' has ",
               in.size() - in_pos, " bytes of garbage after its gzip stream");
      inflateReset(&z.zs);
      continue;
    }
    CM_CHECK(rc == Z_OK || rc == Z_BUF_ERROR, op, ": '", path,
             "' is corrupt (gzip: ", z.zs.msg ? z.zs.msg : zError(rc), ")");
    CM_CHECK(!(rc == Z_BUF_ERROR && in_pos == in.size()), op, ": '", path,
             "' is truncated (the gzip stream ends early)");
  }
  out.resize(produced);
  return out;
}

// The file's bytes, gunzipped when it starts with the gzip magic.
std::vector<uint8_t> read_maybe_gzip(const std::string& path, const char* op) {
  std::vector<uint8_t> bytes = read_file(path, op);
  if (has_gzip_magic(bytes.data(), bytes.size())) return gunzip(bytes, path, op);
  return bytes;
}

uint32_t be32(const uint8_t* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0x%08x", v);
  return buf;
}

Tensor u8_tensor(const Shape& shape) {
  return empty(shape, {.dtype = DType::u8});
}

// A whole file mapped read-only (unmapped when the last holder lets go).
struct FileMapping {
  const uint8_t* data = nullptr;
  size_t size = 0;
  ~FileMapping() {
    if (data) ::munmap(const_cast<uint8_t*>(data), size);
  }
};
std::shared_ptr<FileMapping> map_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  CM_CHECK(fd >= 0, "'", path, "': cannot open: ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    CM_FAIL("'", path, "': cannot stat: ", std::strerror(err));
  }
  auto m = std::make_shared<FileMapping>();
  m->size = size_t(st.st_size);
  void* p = m->size ? ::mmap(nullptr, m->size, PROT_READ, MAP_PRIVATE, fd, 0) : MAP_FAILED;
  const int err = errno;
  ::close(fd);  // the mapping keeps the file
  CM_CHECK(p != MAP_FAILED, "'", path, "': cannot map ", m->size, " bytes: ", std::strerror(err));
  m->data = static_cast<const uint8_t*>(p);
  return m;
}

Tensor i64_tensor(const std::vector<int64_t>& v) {
  return from_vector(v, {int64_t(v.size())}, {.dtype = DType::i64});
}

// ---- EDM folders and zips ---------------------------------------------------------------------

std::string lowercase(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

enum class FileKind { Png, OtherImage, DatasetJson, Other };

FileKind classify(const std::string& rel) {
  if (rel == "dataset.json") return FileKind::DatasetJson;
  const std::string ext = lowercase(fs::path(rel).extension().string());
  if (ext == ".png") return FileKind::Png;
  for (const char* e : {".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
    if (ext == e) return FileKind::OtherImage;
  return FileKind::Other;
}

// Labels of the images `names` from dataset.json's text: empty when {"labels": null}.
std::vector<int64_t> parse_edm_labels(const std::string& text,
                                      const std::vector<std::string>& names,
                                      const std::string& json_name, const char* op) {
  // Bounded nesting: a file nested 100,000 arrays deep is an error, not a stack overflow.
  const nlohmann::json j = nn::parse_json(text, std::string(op) + ": '" + json_name + "'");
  CM_CHECK(j.is_object() && j.contains("labels"), op, ": '", json_name,
           "' must be an object with a \"labels\" key");
  const nlohmann::json& labels = j["labels"];
  if (labels.is_null()) return {};
  CM_CHECK(labels.is_array(), op, ": '", json_name,
           "': \"labels\" must be null or a list of [file name, label] pairs");
  std::map<std::string, int64_t> by_name;
  for (size_t i = 0; i < labels.size(); ++i) {
    const nlohmann::json& pair = labels[i];
    CM_CHECK(pair.is_array() && pair.size() == 2 && pair[0].is_string(), op, ": '", json_name,
             "': labels[", i, "] must be a [file name, label] pair, got ", pair.dump());
    std::string fname = pair[0].get<std::string>();
    std::replace(fname.begin(), fname.end(), '\\', '/');
    CM_CHECK(pair[1].is_number_integer(), op, ": '", json_name, "': the label of '", fname,
             "' must be an integer class, got ", pair[1].dump());
    const int64_t label = pair[1].get<int64_t>();
    CM_CHECK(label >= 0 && label < kMaxClasses, op, ": '", json_name, "': the label of '", fname,
             "' is out of range: ", label);
    CM_CHECK(by_name.emplace(fname, label).second, op, ": '", json_name, "' labels '", fname,
             "' twice");
  }
  std::vector<int64_t> out;
  out.reserve(names.size());
  for (const std::string& n : names) {
    auto it = by_name.find(n);
    CM_CHECK(it != by_name.end(), op, ": '", json_name, "' has no label for the image '", n, "'");
    out.push_back(it->second);
    by_name.erase(it);
  }
  CM_CHECK(by_name.empty(), op, ": '", json_name, "' labels '", by_name.begin()->first,
           "', which is not a PNG image of the data set");
  return out;
}

// Whether Auto keeps decoded images of this many bytes on the disk instead of in memory.
bool streams(const LoadOptions& options, uint64_t bytes) {
  return options.residency == Residency::Stream ||
         (options.residency == Residency::Auto && bytes > options.memory_limit);
}

// Gives `ds` the images of `reader` ([N, C, H, W] = nchw): streamed through it, or read whole
// into memory now (by options.threads threads).
void attach_images(ImageDataset* ds, std::shared_ptr<const ImageReader> reader, Shape nchw,
                   bool stream, const LoadOptions& options) {
  ds->reader = std::move(reader);
  ds->streamed_shape = std::move(nchw);
  if (stream) return;
  ds->images = ds->rows(0, ds->streamed_shape[0], options.threads);
  if (!ds->reader->has_originals()) ds->reader = nullptr;
  ds->streamed_shape.clear();
}

// An EDM folder's or zip's images decoded one by one when asked; each must have the first's shape.
class DecodingReader final : public ImageReader {
 public:
  DecodingReader(std::vector<std::string> names, std::function<Tensor(const std::string&)> decode,
                 Shape chw, std::string where, const char* op)
      : names_(std::move(names)),
        decode_(std::move(decode)),
        chw_(std::move(chw)),
        where_(std::move(where)),
        op_(op) {}

  void read(int64_t index, uint8_t* dst) const override {
    const std::string& name = names_[size_t(index)];
    const Tensor img = decode_(name);
    CM_CHECK(img.shape() == chw_, op_, ": '", where_, "/", name, "' is ", img.size(0), "×",
             img.size(1), "×", img.size(2), " (C×H×W) but '", where_, "/", names_[0], "' is ",
             chw_[0], "×", chw_[1], "×", chw_[2],
             ": all images must have one size and channel count");
    std::memcpy(dst, img.data<uint8_t>(), size_t(img.numel()));
  }

 private:
  std::vector<std::string> names_;
  std::function<Tensor(const std::string&)> decode_;
  Shape chw_;
  std::string where_;
  const char* op_;
};

// The decoded images (all one size and channel count), in memory or streamed as `options` say,
// with the labels of dataset.json. `decode` must be safe to call from several threads.
ImageDataset assemble_edm(const std::vector<std::string>& names,
                          std::function<Tensor(const std::string&)> decode,
                          const std::optional<std::string>& json_text, const std::string& where,
                          const char* op, const LoadOptions& options) {
  CM_CHECK(!names.empty(), op, ": '", where, "' holds no PNG images");
  const Tensor first = decode(names[0]);
  const int64_t C = first.size(0), H = first.size(1), W = first.size(2);
  const int64_t N = int64_t(names.size());
  ImageDataset ds;
  ds.source = where;
  attach_images(
      &ds, std::make_shared<DecodingReader>(names, std::move(decode), first.shape(), where, op),
      {N, C, H, W}, streams(options, uint64_t(N) * uint64_t(C * H * W)), options);
  std::vector<int64_t> labels;  // after the images: an image's error comes first, as it is read
  if (json_text) labels = parse_edm_labels(*json_text, names, where + "/dataset.json", op);
  if (labels.empty()) {
    labels.assign(size_t(N), -1);
  } else {
    ds.num_classes = *std::max_element(labels.begin(), labels.end()) + 1;
  }
  ds.labels = i64_tensor(labels);
  return ds;
}

// ---- .npy ---------------------------------------------------------------------------------------

// A strict reader of the Python-literal dict in an .npy header.
class NpyDictParser {
 public:
  NpyDictParser(const std::string& text, const std::string& name) : s_(text), name_(name) {}

  NpyHeader parse() {
    NpyHeader h;
    bool have_descr = false, have_order = false, have_shape = false;
    expect('{');
    skip_space();
    while (peek() != '}') {
      const std::string key = quoted();
      expect(':');
      if (key == "descr") {
        CM_CHECK(!have_descr, "npy: '", name_, "': header repeats 'descr'");
        h.descr = quoted();
        have_descr = true;
      } else if (key == "fortran_order") {
        CM_CHECK(!have_order, "npy: '", name_, "': header repeats 'fortran_order'");
        h.fortran_order = boolean();
        have_order = true;
      } else if (key == "shape") {
        CM_CHECK(!have_shape, "npy: '", name_, "': header repeats 'shape'");
        h.shape = tuple();
        have_shape = true;
      } else {
        fail("unexpected key '" + key + "'");
      }
      skip_space();
      if (peek() == ',') {
        ++pos_;
        skip_space();
      } else if (peek() != '}') {
        fail("expected ',' or '}'");
      }
    }
    ++pos_;
    skip_space();
    if (pos_ != s_.size()) fail("unexpected text after the dict");
    CM_CHECK(have_descr && have_order && have_shape, "npy: '", name_,
             "': header must define 'descr', 'fortran_order' and 'shape'");
    return h;
  }

 private:
  [[noreturn]] void fail(const std::string& what) {
    CM_FAIL("npy: '", name_, "': malformed header (", what, " at character ", pos_, "): ", s_);
  }
  char peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }
  void skip_space() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\n')) ++pos_;
  }
  void expect(char c) {
    skip_space();
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++pos_;
  }
  std::string quoted() {
    skip_space();
    const char q = peek();
    if (q != '\'' && q != '"') fail("expected a quoted string");
    const size_t end = s_.find(q, pos_ + 1);
    if (end == std::string::npos) fail("unterminated string");
    std::string out = s_.substr(pos_ + 1, end - pos_ - 1);
    pos_ = end + 1;
    return out;
  }
  bool boolean() {
    skip_space();
    if (s_.compare(pos_, 4, "True") == 0) {
      pos_ += 4;
      return true;
    }
    if (s_.compare(pos_, 5, "False") == 0) {
      pos_ += 5;
      return false;
    }
    fail("expected True or False");
  }
  Shape tuple() {
    expect('(');
    Shape shape;
    skip_space();
    while (peek() != ')') {
      int64_t v = 0;
      const auto [p, ec] = std::from_chars(s_.data() + pos_, s_.data() + s_.size(), v);
      if (ec != std::errc() || v < 0) fail("expected a non-negative integer");
      pos_ = size_t(p - s_.data());
      shape.push_back(v);
      skip_space();
      if (peek() == ',') {
        ++pos_;
        skip_space();
      } else if (peek() != ')') {
        fail("expected ',' or ')'");
      }
    }
    ++pos_;
    return shape;
  }

  const std::string& s_;
  const std::string& name_;
  size_t pos_ = 0;
};

size_t npy_itemsize(const std::string& descr, const std::string& name) {
  static const std::map<std::string, size_t> known = {
      {"|u1", 1}, {"|i1", 1}, {"|b1", 1}, {"<u2", 2}, {"<i2", 2}, {"<u4", 4},
      {"<i4", 4}, {"<u8", 8}, {"<i8", 8}, {"<f2", 2}, {"<f4", 4}, {"<f8", 8}};
  auto it = known.find(descr);
  CM_CHECK(it != known.end(), "npy: '", name, "': unsupported dtype '", descr,
           "' (little-endian integers, floats and bool only)");
  return it->second;
}

// The integer values of a 1-D integer array.
std::vector<int64_t> npy_integers(const std::vector<uint8_t>& bytes, const NpyHeader& h,
                                  const std::string& name) {
  const char kind = h.descr[1];
  CM_CHECK(kind == 'i' || kind == 'u', "npy: '", name, "' must hold integers, not '", h.descr, "'");
  const int64_t n = shape_numel(h.shape);
  std::vector<int64_t> out(static_cast<size_t>(n));
  const uint8_t* p = bytes.data() + h.data_offset;
  for (int64_t i = 0; i < n; ++i, p += h.itemsize) {
    uint64_t raw = 0;
    for (size_t b = 0; b < h.itemsize; ++b) raw |= uint64_t(p[b]) << (8 * b);
    int64_t v;
    if (kind == 'u') {
      CM_CHECK(raw <= uint64_t(INT64_MAX), "npy: '", name, "': value ", raw, " out of range");
      v = int64_t(raw);
    } else {  // sign-extend
      const int shift = int(64 - 8 * h.itemsize);
      v = int64_t(raw << shift) >> shift;
    }
    out[size_t(i)] = v;
  }
  return out;
}

}  // namespace

// ---- the data set's images ----------------------------------------------------------------------

void parallel_rows(int64_t n, int threads, const std::function<void(int64_t)>& fn) {
  if (threads <= 0) threads = int(std::max(1u, std::thread::hardware_concurrency()));
  const int64_t t = std::min<int64_t>(threads, n);
  if (t <= 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  // The failure of the smallest index is the one rethrown, whatever the threads' timing.
  std::mutex mu;
  int64_t failed_at = n;
  std::exception_ptr error;
  std::atomic<int64_t> stop_at{n};  // no thread starts an index past a failure
  auto work = [&](int64_t first) {
    for (int64_t i = first; i < stop_at.load(std::memory_order_relaxed); i += t) {
      try {
        fn(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu);
        if (i < failed_at) {
          failed_at = i;
          error = std::current_exception();
          stop_at.store(i, std::memory_order_relaxed);
        }
        return;
      }
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(size_t(t - 1));
  for (int64_t k = 1; k < t; ++k) pool.emplace_back(work, k);
  work(0);
  for (std::thread& th : pool) th.join();
  if (error) std::rethrow_exception(error);
}

void ImageDataset::read(int64_t i, uint8_t* dst) const {
  const Shape s = shape();
  CM_CHECK(i >= 0 && i < s[0], "'", source, "': image ", i, " asked for, of ", s[0]);
  const int64_t chw = s[1] * s[2] * s[3];
  if (images.defined()) {
    std::memcpy(dst, images.data<uint8_t>() + i * chw, size_t(chw));
  } else {
    CM_CHECK(reader, "'", source, "': a streamed data set without a reader");
    reader->read(i, dst);
  }
}

Tensor ImageReader::original(int64_t /*index*/) const {
  CM_FAIL("ImageReader: this reader keeps no original images");
}

void ImageDataset::read_random_crop(int64_t i, const std::function<int64_t(int64_t)>& randrange,
                                    uint8_t* dst) const {
  const Shape s = shape();
  CM_CHECK(i >= 0 && i < s[0], "'", source, "': image ", i, " asked for, of ", s[0]);
  Tensor image;
  if (reader && reader->has_originals()) {
    image = reader->original(i);
    CM_CHECK(image.size(0) == s[1], "'", source, "': image ", i, " has ", image.size(0),
             " channels, the data set ", s[1]);
  } else {
    CM_CHECK(s[2] == s[3], "'", source, "': a random crop is square, but the images are ", s[3],
             "×", s[2],
             " (W×H); random_crop needs square images or the reference's image "
             "folders (openai:<dir>:<size>)");
    image = u8_tensor({s[1], s[2], s[3]});
    read(i, image.data<uint8_t>());
  }
  const Tensor out = random_crop_arr(image, s[2], randrange);
  std::memcpy(dst, out.data<uint8_t>(), size_t(out.numel()));
}

Tensor ImageDataset::rows(int64_t first, int64_t count, int threads) const {
  const Shape s = shape();
  CM_CHECK(first >= 0 && count >= 0 && first + count <= s[0], "'", source, "': images ", first,
           " .. ", first + count - 1, " asked for, of ", s[0]);
  if (images.defined()) return narrow(images, 0, first, count);
  Tensor out = u8_tensor({count, s[1], s[2], s[3]});
  uint8_t* dst = out.data<uint8_t>();
  const int64_t chw = s[1] * s[2] * s[3];
  parallel_rows(count, threads, [&](int64_t k) { read(first + k, dst + k * chw); });
  return out;
}

NpyHeader parse_npy_header(const uint8_t* data, size_t size, const std::string& name) {
  static const uint8_t kMagic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  CM_CHECK(size >= 10 && std::memcmp(data, kMagic, 6) == 0, "npy: '", name,
           "' is not an .npy file (bad magic)");
  const uint8_t major = data[6], minor = data[7];
  CM_CHECK((major == 1 || major == 2 || major == 3) && minor == 0, "npy: '", name,
           "': unsupported format version ", int(major), ".", int(minor));
  size_t header_len, start;
  if (major == 1) {
    header_len = size_t(data[8]) | (size_t(data[9]) << 8);
    start = 10;
  } else {
    CM_CHECK(size >= 12, "npy: '", name, "' is truncated (no header length)");
    header_len = size_t(data[8]) | (size_t(data[9]) << 8) | (size_t(data[10]) << 16) |
                 (size_t(data[11]) << 24);
    start = 12;
  }
  CM_CHECK(header_len <= size - start, "npy: '", name, "' is truncated (header of ", header_len,
           " bytes, file of ", size, ")");
  const std::string text(reinterpret_cast<const char*>(data + start), header_len);
  CM_CHECK(!text.empty() && text.back() == '\n', "npy: '", name,
           "': malformed header (it must end with a newline)");
  NpyHeader h = NpyDictParser(text, name).parse();
  h.itemsize = npy_itemsize(h.descr, name);
  h.data_offset = start + header_len;
  // The element count, guarding the product (and the byte count) against overflow, and the
  // product with zeros taken as 1 (what a tensor's strides multiply out to: [0, 2^62, 2^62] holds
  // nothing but has no representable strides, a fuzzing finding).
  size_t count = 1, span = 1;
  for (int64_t d : h.shape) {
    const size_t nz = std::max<size_t>(size_t(d), 1);
    CM_CHECK(span <= (size_t(1) << 62) / h.itemsize / nz, "npy: '", name, "': shape ",
             shape_str(h.shape), " is too large");
    span *= nz;
    count *= size_t(d);
  }
  const size_t expected = count * h.itemsize, have = size - h.data_offset;
  CM_CHECK(have == expected, "npy: '", name, "': shape ", shape_str(h.shape), " of '", h.descr,
           "' needs ", expected, " bytes of data, the file holds ", have,
           have < expected ? " (truncated)" : " (trailing bytes)");
  return h;
}

// ---- digits -------------------------------------------------------------------------------------

std::string digits_path() {
  return std::string(CM_DATA_DIR) + "/digits.csv.gz";
}

ImageDataset load_digits_csv(const std::string& path) {
  const std::vector<uint8_t> bytes = read_maybe_gzip(path, "load_digits_csv");
  const std::string_view text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  std::vector<uint8_t> pixels;
  std::vector<int64_t> labels;
  size_t pos = 0;
  int64_t line_no = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    int values[65];
    size_t field = 0, p = 0;
    for (; p <= line.size(); ++field) {
      const size_t comma = std::min(line.find(',', p), line.size());
      CM_CHECK(field < 65, "load_digits_csv: '", path, "' line ", line_no,
               ": more than 65 values (64 pixels and a label)");
      int v = 0;
      const auto [q, ec] = std::from_chars(line.data() + p, line.data() + comma, v);
      CM_CHECK(ec == std::errc() && q == line.data() + comma, "load_digits_csv: '", path, "' line ",
               line_no, ": value ", field + 1, " is not an integer: '", line.substr(p, comma - p),
               "'");
      values[field] = v;
      p = comma + 1;
    }
    CM_CHECK(field == 65, "load_digits_csv: '", path, "' line ", line_no, ": ", field,
             " values, expected 65 (64 pixels and a label)");
    for (int i = 0; i < 64; ++i) {
      CM_CHECK(values[i] >= 0 && values[i] <= 16, "load_digits_csv: '", path, "' line ", line_no,
               ": pixel ", i, " is ", values[i], ", outside 0..16");
      pixels.push_back(uint8_t(std::lround(values[i] * 255.0 / 16.0)));
    }
    CM_CHECK(values[64] >= 0 && values[64] <= 9, "load_digits_csv: '", path, "' line ", line_no,
             ": label ", values[64], " is outside 0..9");
    labels.push_back(values[64]);
  }
  CM_CHECK(!labels.empty(), "load_digits_csv: '", path, "' holds no images");
  const int64_t n = int64_t(labels.size());
  ImageDataset ds;
  ds.images = from_vector(pixels, {n, 1, 8, 8}, {.dtype = DType::u8});
  ds.labels = i64_tensor(labels);
  ds.num_classes = 10;
  ds.source = path;
  return ds;
}

// ---- IDX ----------------------------------------------------------------------------------------

ImageDataset load_idx(const std::string& images_path, const std::string& labels_path) {
  const char* op = "load_idx";
  const std::vector<uint8_t> img = read_maybe_gzip(images_path, op);
  CM_CHECK(img.size() >= 4 && be32(img.data()) == 0x00000803u, op, ": '", images_path,
           "' has magic ", img.size() >= 4 ? hex32(be32(img.data())) : "(none)",
           ", expected 0x00000803 (IDX u8 images [N, H, W])");
  CM_CHECK(img.size() >= 16, op, ": '", images_path, "' is truncated (", img.size(),
           " bytes, shorter than the 16-byte IDX image header)");
  const uint64_t n = be32(img.data() + 4), h = be32(img.data() + 8), w = be32(img.data() + 12);
  CM_CHECK(n > 0 && h > 0 && w > 0, op, ": '", images_path, "' holds no images (", n, "×", h, "×",
           w, ")");
  // h·w < 2^64 (each factor < 2^32); refuse before n·h·w could overflow.
  CM_CHECK(n <= (uint64_t(1) << 48) / (h * w), op, ": '", images_path,
           "' has an impossible header (", n, " images of ", h, "×", w, ")");
  const uint64_t expected = 16 + n * h * w;
  CM_CHECK(img.size() == expected, op, ": '", images_path, "' holds ", img.size() - 16,
           " pixel bytes, but its header says ", n, " images of ", h, "×", w, " (", n * h * w,
           " bytes)", img.size() < expected ? ": truncated" : ": trailing bytes");

  const std::vector<uint8_t> lab = read_maybe_gzip(labels_path, op);
  CM_CHECK(lab.size() >= 4 && be32(lab.data()) == 0x00000801u, op, ": '", labels_path,
           "' has magic ", lab.size() >= 4 ? hex32(be32(lab.data())) : "(none)",
           ", expected 0x00000801 (IDX u8 labels [N])");
  CM_CHECK(lab.size() >= 8, op, ": '", labels_path, "' is truncated (", lab.size(),
           " bytes, shorter than the 8-byte IDX label header)");
  const uint64_t nl = be32(lab.data() + 4);
  CM_CHECK(lab.size() == 8 + nl, op, ": '", labels_path, "' holds ", lab.size() - 8,
           " label bytes, but its header says ", nl,
           lab.size() < 8 + nl ? ": truncated" : ": trailing bytes");
  CM_CHECK(nl == n, op, ": '", images_path, "' holds ", n, " images but '", labels_path, "' ", nl,
           " labels");

  ImageDataset ds;
  ds.images = u8_tensor({int64_t(n), 1, int64_t(h), int64_t(w)});
  std::memcpy(ds.images.data<uint8_t>(), img.data() + 16, n * h * w);
  const std::vector<int64_t> labels(lab.begin() + 8, lab.end());
  ds.labels = i64_tensor(labels);
  ds.num_classes = *std::max_element(labels.begin(), labels.end()) + 1;
  ds.source = images_path;
  return ds;
}

ImageDataset fashion_mnist(const std::string& split) {
  CM_CHECK(split == "train" || split == "test",
           "fashion_mnist: split must be \"train\" or \"test\", got \"", split, "\"");
  const std::string prefix = split == "train" ? "train" : "t10k";
  std::vector<std::string> dirs;
  if (const char* env = std::getenv("CM_FASHION_MNIST_DIR"); env && *env) dirs.push_back(env);
  dirs.push_back("/usr/share/datasets/fashion-mnist");
  // The first directory that holds the file, gzipped or raw.
  auto find = [&](const std::string& base) -> std::string {
    for (const std::string& d : dirs)
      for (const char* ext : {".gz", ""})
        if (fs::is_regular_file(d + "/" + base + ext)) return d + "/" + base + ext;
    std::string where;
    for (const std::string& d : dirs) where += (where.empty() ? "" : ", ") + d;
    CM_FAIL("fashion_mnist: cannot find '", base, ".gz' in ", where,
            ". Install Fashion-MNIST with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), "
            "or set CM_FASHION_MNIST_DIR to a directory holding the four IDX files "
            "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
            "t10k-labels-idx1-ubyte.gz)");
  };
  const std::string images = find(prefix + "-images-idx3-ubyte");
  const std::string labels = find(prefix + "-labels-idx1-ubyte");
  ImageDataset ds = load_idx(images, labels);
  CM_CHECK(ds.num_classes <= 10, "fashion_mnist: '", labels, "' has labels up to ",
           ds.num_classes - 1, ", expected 0..9");
  ds.num_classes = 10;
  ds.source = "fashion-mnist:" + split;
  return ds;
}

// ---- CIFAR-10 -----------------------------------------------------------------------------------

ImageDataset load_cifar10_bin(const std::string& directory, const std::string& split) {
  const char* op = "load_cifar10_bin";
  CM_CHECK(split == "train" || split == "test", op, ": split must be \"train\" or \"test\", got \"",
           split, "\"");
  std::vector<std::string> files;
  if (split == "train") {
    for (int i = 1; i <= 5; ++i)
      files.push_back(directory + "/data_batch_" + std::to_string(i) + ".bin");
  } else {
    files.push_back(directory + "/test_batch.bin");
  }
  constexpr size_t kRecord = 3073, kPixels = 3072;
  std::vector<std::vector<uint8_t>> contents;
  size_t n = 0;
  for (const std::string& f : files) {
    std::error_code ec;
    CM_CHECK(fs::exists(f, ec), op, ": '", f,
             "' does not exist (expected the binary version, "
             "cifar-10-batches-bin)");
    contents.push_back(read_file(f, op));
    const size_t size = contents.back().size();
    CM_CHECK(size > 0 && size % kRecord == 0, op, ": '", f, "' has ", size,
             " bytes, not a whole number of 3073-byte records (1 label + 3072 pixels)");
    n += size / kRecord;
  }
  ImageDataset ds;
  ds.images = u8_tensor({int64_t(n), 3, 32, 32});
  uint8_t* dst = ds.images.data<uint8_t>();
  std::vector<int64_t> labels;
  labels.reserve(n);
  for (size_t fi = 0; fi < files.size(); ++fi) {
    const std::vector<uint8_t>& c = contents[fi];
    for (size_t r = 0; r < c.size() / kRecord; ++r) {
      const uint8_t* rec = c.data() + r * kRecord;
      CM_CHECK(rec[0] <= 9, op, ": '", files[fi], "' record ", r, " has label ", int(rec[0]),
               ", outside 0..9");
      labels.push_back(rec[0]);
      std::memcpy(dst, rec + 1, kPixels);
      dst += kPixels;
    }
  }
  ds.labels = i64_tensor(labels);
  ds.num_classes = 10;
  ds.source = "cifar10:" + directory + ":" + split;
  return ds;
}

// ---- EDM folders and zips -----------------------------------------------------------------------

ImageDataset load_image_folder(const std::string& dir, const LoadOptions& options) {
  const char* op = "load_image_folder";
  CM_CHECK(fs::is_directory(dir), op, ": '", dir, "' is not a directory");
  std::vector<std::string> names;
  std::optional<std::string> json;
  for (const fs::directory_entry& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_directory()) continue;
    const std::string rel = e.path().lexically_relative(dir).generic_string();
    // A FIFO, socket or device named like an image or dataset.json is refused (it would block
    // or fail later); other names are skipped, as other regular files are.
    if (!e.is_regular_file()) {
      if (classify(rel) != FileKind::Other) nn::require_regular_file(e.path().string(), op);
      continue;
    }
    switch (classify(rel)) {
      case FileKind::Png:
        names.push_back(rel);
        break;
      case FileKind::DatasetJson: {
        const std::vector<uint8_t> b = read_file(e.path().string(), op);
        json = std::string(b.begin(), b.end());
        break;
      }
      case FileKind::OtherImage:
        CM_FAIL(op, ": '", e.path().string(), "': only PNG images are supported");
      case FileKind::Other:
        break;
    }
  }
  std::sort(names.begin(), names.end());
  auto decode = [dir](const std::string& n) { return read_png(dir + "/" + n); };
  return assemble_edm(names, decode, json, dir, op, options);
}

ImageDataset load_edm_zip(const std::string& path, const LoadOptions& options) {
  const char* op = "load_edm_zip";
  auto archive = std::make_shared<const ZipReader>(path);  // kept by a streamed data set's reader
  const ZipReader& zip = *archive;
  std::vector<std::string> names;
  std::optional<std::string> json;
  for (const ZipEntry& e : zip.entries()) {
    if (e.is_directory()) continue;
    switch (classify(e.name)) {
      case FileKind::Png:
        names.push_back(e.name);
        break;
      case FileKind::DatasetJson: {
        const std::vector<uint8_t> b = zip.read(e);
        json = std::string(b.begin(), b.end());
        break;
      }
      case FileKind::OtherImage:
        CM_FAIL(op, ": '", path, "': entry '", e.name, "': only PNG images are supported");
      case FileKind::Other:
        break;
    }
  }
  std::sort(names.begin(), names.end());
  CM_CHECK(std::adjacent_find(names.begin(), names.end()) == names.end(), op, ": '", path,
           "' holds two entries named '", *std::adjacent_find(names.begin(), names.end()), "'");
  auto decode = [archive, path](const std::string& n) {
    const std::vector<uint8_t> bytes = archive->read(*archive->find(n));
    return decode_png(bytes.data(), bytes.size(), path + "/" + n);
  };
  return assemble_edm(names, decode, json, path, op, options);
}

// ---- the reference's image folders
// ----------------------------------------------------------------

namespace {
// guided-diffusion's _list_image_files_recursively: each directory's entries in sorted order,
// files with a .jpg/.jpeg/.png/.gif extension (any case) taken, directories entered where they
// come in that order.
void list_reference_images(const fs::path& dir, std::vector<std::string>* out, const char* op) {
  std::vector<std::string> entries;
  for (const fs::directory_entry& e : fs::directory_iterator(dir))
    entries.push_back(e.path().filename().string());
  std::sort(entries.begin(), entries.end());
  for (const std::string& name : entries) {
    const fs::path full = dir / name;
    const size_t dot = name.rfind('.');
    const std::string ext = dot == std::string::npos ? "" : lowercase(name.substr(dot + 1));
    if (dot != std::string::npos &&
        (ext == "jpg" || ext == "jpeg" || ext == "png" || ext == "gif")) {
      CM_CHECK(ext != "gif", op, ": '", full.string(),
               "': GIF images are not supported (convert them to PNG)");
      out->push_back(full.string());
    } else if (fs::is_directory(full)) {
      list_reference_images(full, out, op);
    }
  }
}

// One of the reference's images: decoded by its content (PNG or JPEG, whatever the extension, as
// PIL opens it), made RGB as convert("RGB") makes it, then center_crop_arr'd.
class ReferenceFolderReader final : public ImageReader {
 public:
  ReferenceFolderReader(std::vector<std::string> paths, int64_t size)
      : paths_(std::move(paths)), size_(size) {}
  void read(int64_t index, uint8_t* dst) const override {
    const Tensor out = center_crop_arr(original(index), size_);
    std::memcpy(dst, out.data<uint8_t>(), size_t(out.numel()));
  }
  bool has_originals() const override { return true; }
  Tensor original(int64_t index) const override {
    const std::string& path = paths_[size_t(index)];
    const std::vector<uint8_t> bytes = nn::read_file_bytes(path, "load_reference_folder");
    Tensor img;
    if (is_jpeg(bytes.data(), bytes.size())) {
      img = decode_jpeg(bytes.data(), bytes.size(), path);
    } else {
      img = decode_png(bytes.data(), bytes.size(), path);  // names the file when not a PNG either
    }
    if (img.size(0) == 1) img = expand(img, {3, img.size(1), img.size(2)}).contiguous();  // L → RGB
    return img;
  }

 private:
  std::vector<std::string> paths_;
  int64_t size_;
};
}  // namespace

ImageDataset load_reference_folder(const std::string& dir, int64_t size,
                                   const LoadOptions& options) {
  const char* op = "load_reference_folder";
  CM_CHECK(fs::is_directory(dir), op, ": '", dir, "' is not a directory");
  CM_CHECK(size >= 1 && size <= 4096, op, ": image size ", size, " out of range 1..4096");
  std::vector<std::string> paths;
  list_reference_images(dir, &paths, op);
  CM_CHECK(!paths.empty(), op, ": '", dir, "' holds no .jpg, .jpeg or .png images");
  // classes: the file names up to their first '_', numbered in sorted order
  std::vector<std::string> names;
  names.reserve(paths.size());
  for (const std::string& p : paths) {
    const std::string base = fs::path(p).filename().string();
    names.push_back(base.substr(0, base.find('_')));
  }
  std::vector<std::string> classes = names;
  std::sort(classes.begin(), classes.end());
  classes.erase(std::unique(classes.begin(), classes.end()), classes.end());
  CM_CHECK(int64_t(classes.size()) <= kMaxClasses, op, ": '", dir, "' has ", classes.size(),
           " classes (file name prefixes before '_'), more than ", kMaxClasses);
  std::vector<int64_t> labels;
  labels.reserve(names.size());
  for (const std::string& n : names)
    labels.push_back(std::lower_bound(classes.begin(), classes.end(), n) - classes.begin());
  const int64_t N = int64_t(paths.size());
  ImageDataset ds;
  ds.labels = i64_tensor(labels);
  ds.num_classes = int64_t(classes.size());
  ds.source = dir;
  attach_images(&ds, std::make_shared<ReferenceFolderReader>(std::move(paths), size),
                {N, 3, size, size}, streams(options, uint64_t(N) * uint64_t(3 * size * size)),
                options);
  return ds;
}

// ---- downsampled ImageNet -----------------------------------------------------------------------

namespace {
// openai's layout (guided-diffusion's reference batches, image_sample.py's output, cm sample's
// samples.npz): arr_0 u8 [N, H, W, C] with C = 1 or 3, and optionally arr_1, the 0-based labels.
ImageDataset load_openai_npz(const std::string& path, const ZipReader& zip) {
  const char* op = "load_imagenet_npz";
  const std::string data_name = path + "/arr_0.npy";
  const std::vector<uint8_t> data = zip.read("arr_0.npy");
  const NpyHeader dh = parse_npy_header(data.data(), data.size(), data_name);
  CM_CHECK(dh.descr == "|u1" && !dh.fortran_order && dh.shape.size() == 4 &&
               (dh.shape[3] == 1 || dh.shape[3] == 3) && dh.shape[0] > 0,
           op, ": '", data_name, "' must be a C-order uint8 array [N, H, W, 1 or 3], got '",
           dh.descr, "' ", shape_str(dh.shape), dh.fortran_order ? " in Fortran order" : "");
  const int64_t n = dh.shape[0], h = dh.shape[1], w = dh.shape[2], c = dh.shape[3];
  ImageDataset ds;
  ds.images = u8_tensor({n, c, h, w});
  const uint8_t* src = data.data() + dh.data_offset;
  uint8_t* dst = ds.images.data<uint8_t>();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t y = 0; y < h; ++y)
      for (int64_t x = 0; x < w; ++x)
        for (int64_t k = 0; k < c; ++k)
          dst[((i * c + k) * h + y) * w + x] = src[((i * h + y) * w + x) * c + k];
  std::vector<int64_t> labels(size_t(n), -1);
  if (zip.find("arr_1.npy")) {
    const std::string labels_name = path + "/arr_1.npy";
    const std::vector<uint8_t> lab = zip.read("arr_1.npy");
    const NpyHeader lh = parse_npy_header(lab.data(), lab.size(), labels_name);
    CM_CHECK(lh.shape.size() == 1 && lh.shape[0] == n, op, ": '", labels_name, "' has shape ",
             shape_str(lh.shape), ", expected [", n, "] to match '", data_name, "'");
    labels = npy_integers(lab, lh, labels_name);
    for (size_t i = 0; i < labels.size(); ++i) {
      CM_CHECK(labels[i] >= 0 && labels[i] < (int64_t(1) << 24), op, ": '", labels_name, "' label ",
               i, " is ", labels[i], ", not a class index (labels are 0-based)");
      ds.num_classes = std::max(ds.num_classes, labels[i] + 1);
    }
  }
  ds.labels = i64_tensor(labels);
  ds.source = path;
  return ds;
}
}  // namespace

ImageDataset load_imagenet_npz(const std::string& path) {
  const char* op = "load_imagenet_npz";
  ZipReader zip(path);
  if (zip.find("arr_0.npy") && !zip.find("data.npy")) return load_openai_npz(path, zip);
  CM_CHECK(zip.find("data.npy") && zip.find("labels.npy"), op, ": '", path,
           "' must hold data.npy and labels.npy (keys 'data' and 'labels': downsampled ImageNet) "
           "or arr_0.npy [, arr_1.npy] (openai's image batches)");
  const std::string data_name = path + "/data.npy", labels_name = path + "/labels.npy";
  // A stored (uncompressed) data.npy is mapped, not read: its pages come from the disk as the
  // loader's batches touch them, so a data set larger than the memory trains (1.28 M ImageNet-64
  // images are 15.7 GB). A deflated one is read whole.
  const ZipEntry& de = *zip.find("data.npy");
  std::shared_ptr<FileMapping> mapped;
  std::vector<uint8_t> data;
  const uint8_t* bytes = nullptr;
  size_t nbytes = 0;
  if (de.method == 0 && (de.flags & 1u) == 0 && de.compressed_size == de.uncompressed_size) {
    const uint64_t at = zip.data_offset(de);
    mapped = map_file(path);
    CM_CHECK(at + de.uncompressed_size <= mapped->size, op, ": '", data_name,
             "' runs past the end of the file");
    bytes = mapped->data + at;
    nbytes = size_t(de.uncompressed_size);
  } else {
    data = zip.read("data.npy");
    bytes = data.data();
    nbytes = data.size();
  }
  const NpyHeader dh = parse_npy_header(bytes, nbytes, data_name);
  CM_CHECK(dh.descr == "|u1" && !dh.fortran_order && dh.shape.size() == 2, op, ": '", data_name,
           "' must be a C-order uint8 array [N, 3·R·R], got '", dh.descr, "' ", shape_str(dh.shape),
           dh.fortran_order ? " in Fortran order" : "");
  const int64_t n = dh.shape[0], d = dh.shape[1];
  const int64_t r = int64_t(std::llround(std::sqrt(double(d) / 3.0)));
  CM_CHECK(n > 0 && r > 0 && 3 * r * r == d, op, ": '", data_name, "' has ", d,
           " values per image, not 3·R·R for a square RGB image");

  const std::vector<uint8_t> lab = zip.read("labels.npy");
  const NpyHeader lh = parse_npy_header(lab.data(), lab.size(), labels_name);
  CM_CHECK(lh.shape.size() == 1 && lh.shape[0] == n, op, ": '", labels_name, "' has shape ",
           shape_str(lh.shape), ", expected [", n, "] to match '", data_name, "'");
  std::vector<int64_t> labels = npy_integers(lab, lh, labels_name);
  for (size_t i = 0; i < labels.size(); ++i) {
    CM_CHECK(labels[i] >= 1 && labels[i] <= 1000, op, ": '", labels_name, "' label ", i, " is ",
             labels[i], ", outside 1..1000 (labels are 1-based)");
    labels[i] -= 1;
  }

  ImageDataset ds;
  if (mapped) {
    // a view on the mapping, which the storage keeps alive
    auto storage =
        std::make_shared<Storage>(const_cast<uint8_t*>(bytes + dh.data_offset), size_t(n * d),
                                  Device::cpu(), [mapped](void*) mutable { mapped.reset(); });
    const Shape shape = {n, 3, r, r};
    ds.images =
        Tensor(std::make_shared<TensorImpl>(std::move(storage), shape, contiguous_strides(shape), 0,
                                            DType::u8, std::make_shared<VersionCounter>()));
  } else {
    ds.images = u8_tensor({n, 3, r, r});
    std::memcpy(ds.images.data<uint8_t>(), bytes + dh.data_offset, size_t(n * d));
  }
  ds.labels = i64_tensor(labels);
  ds.num_classes = 1000;
  ds.source = path;
  return ds;
}

namespace {
// Several data sets of one image shape as one: image i is image i − offsets[k] of part k.
class ConcatReader final : public ImageReader {
 public:
  explicit ConcatReader(std::vector<ImageDataset> parts) : parts_(std::move(parts)) {
    int64_t total = 0;
    for (const ImageDataset& p : parts_) {
      offsets_.push_back(total);
      total += p.size();
    }
  }
  void read(int64_t index, uint8_t* dst) const override {
    const auto it = std::upper_bound(offsets_.begin(), offsets_.end(), index);
    const size_t k = size_t(it - offsets_.begin()) - 1;
    parts_[k].read(index - offsets_[k], dst);
  }

 private:
  std::vector<ImageDataset> parts_;
  std::vector<int64_t> offsets_;
};

// a < b in natural order: runs of digits compare as numbers, the rest character by character.
bool natural_less(const std::string& a, const std::string& b) {
  size_t i = 0, j = 0;
  auto digit = [](char c) { return c >= '0' && c <= '9'; };
  while (i < a.size() && j < b.size()) {
    if (digit(a[i]) && digit(b[j])) {
      size_t i2 = i, j2 = j;
      while (i2 < a.size() && digit(a[i2])) ++i2;
      while (j2 < b.size() && digit(b[j2])) ++j2;
      // compare the runs without their leading zeros: longer is larger, then digit by digit
      size_t ia = i, jb = j;
      while (ia + 1 < i2 && a[ia] == '0') ++ia;
      while (jb + 1 < j2 && b[jb] == '0') ++jb;
      if (i2 - ia != j2 - jb) return i2 - ia < j2 - jb;
      const int c = a.compare(ia, i2 - ia, b, jb, j2 - jb);
      if (c != 0) return c < 0;
      i = i2;
      j = j2;
    } else {
      if (a[i] != b[j]) return a[i] < b[j];
      ++i;
      ++j;
    }
  }
  if ((a.size() - i) != (b.size() - j)) return a.size() - i < b.size() - j;
  return a < b;  // equal up to leading zeros: a total order still
}
}  // namespace

std::vector<std::string> npz_files_in(const std::string& dir) {
  CM_CHECK(fs::is_directory(dir), "npz_files_in: '", dir, "' is not a directory");
  std::vector<std::string> names;
  for (const fs::directory_entry& e : fs::directory_iterator(dir)) {
    if (lowercase(e.path().extension().string()) == ".npz" && !e.is_directory())
      names.push_back(e.path().filename().string());
  }
  CM_CHECK(!names.empty(), "npz_files_in: '", dir, "' holds no .npz files");
  std::sort(names.begin(), names.end(), natural_less);
  for (std::string& n : names) n = (fs::path(dir) / n).string();
  return names;
}

ImageDataset load_npz_files(const std::vector<std::string>& paths, const LoadOptions& options) {
  const char* op = "load_npz_files";
  CM_CHECK(!paths.empty(), op, ": no files given");
  if (paths.size() == 1) return load_imagenet_npz(paths[0]);  // in memory or mapped already
  std::vector<ImageDataset> parts;
  std::vector<int64_t> labels;
  int64_t n = 0, num_classes = 0;
  for (const std::string& p : paths) {
    ImageDataset part = load_imagenet_npz(p);
    if (!parts.empty()) {
      const ImageDataset& first = parts.front();
      CM_CHECK(part.channels() == first.channels() && part.height() == first.height() &&
                   part.width() == first.width(),
               op, ": '", p, "' has images of ", part.channels(), "×", part.height(), "×",
               part.width(), " (C×H×W) but '", paths[0], "' of ", first.channels(), "×",
               first.height(), "×", first.width(), ": all files must have one image shape");
      CM_CHECK((part.num_classes > 0) == (first.num_classes > 0), op, ": '",
               part.num_classes > 0 ? p : paths[0], "' has labels but '",
               part.num_classes > 0 ? paths[0] : p, "' has none");
    }
    const std::vector<int64_t> l = part.labels.to_vector<int64_t>();
    labels.insert(labels.end(), l.begin(), l.end());
    num_classes = std::max(num_classes, part.num_classes);
    n += part.size();
    parts.push_back(std::move(part));
  }
  ImageDataset ds;
  ds.labels = i64_tensor(labels);
  ds.num_classes = num_classes;
  const int64_t C = parts[0].channels(), H = parts[0].height(), W = parts[0].width();
  for (const std::string& p : paths) ds.source += (ds.source.empty() ? "" : ",") + p;
  // Auto too reads through the parts: a mapped part stays on the disk until a batch touches it
  attach_images(&ds, std::make_shared<ConcatReader>(std::move(parts)), {n, C, H, W},
                options.residency != Residency::Memory, options);
  return ds;
}

// ---- class tint ---------------------------------------------------------------------------------

const std::array<std::array<uint8_t, 3>, 10>& tint_palette() {
  // Ten saturated colours of distinct hue and a usable luma (none gray), class k → colour k mod 10.
  static const std::array<std::array<uint8_t, 3>, 10> palette = {{{230, 25, 75},
                                                                  {60, 180, 75},
                                                                  {255, 225, 25},
                                                                  {0, 130, 200},
                                                                  {245, 130, 48},
                                                                  {145, 30, 180},
                                                                  {70, 240, 240},
                                                                  {240, 50, 230},
                                                                  {210, 245, 60},
                                                                  {0, 128, 128}}};
  return palette;
}

ImageDataset tint_by_class(const ImageDataset& gray) {
  const char* op = "tint_by_class";
  CM_CHECK(gray.channels() == 1, op, ": '", gray.source, "' has ", gray.channels(),
           " channels; only a gray data set (1 channel) can be tinted");
  CM_CHECK(gray.num_classes > 0, op, ": '", gray.source,
           "' has no labels; the tint is the class's colour");
  const int64_t n = gray.size(), hw = gray.height() * gray.width();
  const Tensor src = gray.rows(0, n).contiguous();
  const uint8_t* in = src.data<uint8_t>();
  const std::vector<int64_t> labels = gray.labels.to_vector<int64_t>();
  ImageDataset ds;
  ds.images = u8_tensor({n, 3, gray.height(), gray.width()});
  uint8_t* out = ds.images.data<uint8_t>();
  for (int64_t i = 0; i < n; ++i) {
    CM_CHECK(labels[size_t(i)] >= 0, op, ": '", gray.source, "' image ", i,
             " has no label; the tint is the class's colour");
    const auto& colour = tint_palette()[size_t(labels[size_t(i)] % 10)];
    for (int64_t c = 0; c < 3; ++c)
      for (int64_t p = 0; p < hw; ++p)
        out[(i * 3 + c) * hw + p] =
            uint8_t((unsigned(in[i * hw + p]) * colour[size_t(c)] + 127) / 255);
  }
  ds.labels = gray.labels;
  ds.num_classes = gray.num_classes;
  ds.source = "tint:" + gray.source;
  return ds;
}

// ---- by name ------------------------------------------------------------------------------------

ImageDataset load_dataset(const std::string& spec, const LoadOptions& options) {
  const size_t colon = spec.find(':');
  const std::string kind = spec.substr(0, colon);
  const std::string rest = colon == std::string::npos ? "" : spec.substr(colon + 1);
  const bool has_arg = colon != std::string::npos;
  // Splits a trailing ":train" / ":test" off `s`.
  auto split_off = [](std::string s, std::string* split) {
    for (const char* sp : {"train", "test"}) {
      const std::string suffix = std::string(":") + sp;
      if (s.size() > suffix.size() &&
          s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0) {
        *split = sp;
        return s.substr(0, s.size() - suffix.size());
      }
    }
    return s;
  };
  auto need_arg = [&](const char* what) {
    CM_CHECK(has_arg && !rest.empty(), "load_dataset: \"", spec, "\" needs ", what, " after '",
             kind, ":'");
  };
  ImageDataset ds;
  if (kind == "tint") {
    need_arg("a gray, labelled data set");
    return tint_by_class(load_dataset(rest, options));
  }
  if (kind == "digits" && !has_arg) {
    ds = load_digits_csv(digits_path());
    ds.source = "digits";
    return ds;
  }
  if (kind == "fashion-mnist") {
    CM_CHECK(!has_arg || rest == "train" || rest == "test", "load_dataset: \"", spec,
             "\": the Fashion-MNIST split must be train or test");
    return fashion_mnist(has_arg ? rest : "train");
  }
  if (kind == "idx") {
    need_arg("<images>,<labels>");
    const size_t comma = rest.find(',');
    CM_CHECK(comma != std::string::npos && comma > 0 && comma + 1 < rest.size() &&
                 rest.find(',', comma + 1) == std::string::npos,
             "load_dataset: \"", spec, "\" must be idx:<images>,<labels>");
    ds = load_idx(rest.substr(0, comma), rest.substr(comma + 1));
  } else if (kind == "cifar10") {
    need_arg("a directory");
    std::string split = "train";
    const std::string dir = split_off(rest, &split);
    ds = load_cifar10_bin(dir, split);
  } else if (kind == "folder") {
    need_arg("a directory");
    ds = load_image_folder(rest, options);
  } else if (kind == "zip") {
    need_arg("a path");
    ds = load_edm_zip(rest, options);
  } else if (kind == "openai") {
    need_arg("<dir>:<size>");
    const size_t c = rest.rfind(':');
    const std::string number = c == std::string::npos ? "" : rest.substr(c + 1);
    int64_t size = 0;
    const auto [end, ec] = std::from_chars(number.data(), number.data() + number.size(), size);
    CM_CHECK(c != std::string::npos && c > 0 && !number.empty() && ec == std::errc() &&
                 end == number.data() + number.size(),
             "load_dataset: \"", spec,
             "\" must be openai:<dir>:<size>, the images' side after the reference's center crop");
    ds = load_reference_folder(rest.substr(0, c), size, options);
  } else if (kind == "npz") {
    need_arg("a path, several (comma-separated) or a directory of .npz files");
    std::vector<std::string> paths;
    if (fs::is_directory(rest)) {
      paths = npz_files_in(rest);
    } else {
      for (size_t at = 0;;) {
        const size_t comma = rest.find(',', at);
        const std::string p = rest.substr(at, comma == std::string::npos ? comma : comma - at);
        CM_CHECK(!p.empty(), "load_dataset: \"", spec, "\": an empty path in the list");
        paths.push_back(p);
        if (comma == std::string::npos) break;
        at = comma + 1;
      }
    }
    ds = load_npz_files(paths, options);
  } else {
    CM_FAIL("load_dataset: unknown data set \"", spec,
            "\"; expected digits, fashion-mnist[:train|:test], idx:<images>,<labels>, "
            "tint:<spec>, "
            "cifar10:<dir>[:train|:test], folder:<dir>, zip:<path>, openai:<dir>:<size> or "
            "npz:<path>[,<path>...]");
  }
  ds.source = spec;
  return ds;
}

// ---- toy 2-D distributions ----------------------------------------------------------------------

Tensor toy_2d(const std::string& name, int64_t n, uint64_t seed) {
  CM_CHECK(n > 0, "toy_2d: n must be positive, got ", n);
  CM_CHECK(name == "moons" || name == "swiss_roll" || name == "eight_gaussians" ||
               name == "checkerboard",
           "toy_2d: unknown distribution \"", name,
           "\"; expected moons, swiss_roll, eight_gaussians or checkerboard");
  Generator gen(seed);
  const std::vector<double> u = rand({n, 3}, {.dtype = DType::f64}, &gen).to_vector<double>();
  const std::vector<double> e = randn({n, 2}, {.dtype = DType::f64}, &gen).to_vector<double>();
  constexpr double pi = std::numbers::pi;
  std::vector<float> out(size_t(2 * n));
  for (int64_t i = 0; i < n; ++i) {
    const double u0 = u[size_t(3 * i)], u1 = u[size_t(3 * i + 1)], u2 = u[size_t(3 * i + 2)];
    const double e0 = e[size_t(2 * i)], e1 = e[size_t(2 * i + 1)];
    double x = 0, y = 0;
    if (name == "moons") {
      const double t = pi * u0;
      x = u2 < 0.5 ? std::cos(t) : 1 - std::cos(t);
      y = u2 < 0.5 ? std::sin(t) : 0.5 - std::sin(t);
      x = 2 * (x + 0.05 * e0 - 0.5);
      y = 2 * (y + 0.05 * e1 - 0.25);
    } else if (name == "swiss_roll") {
      const double t = 1.5 * pi * (1 + 2 * u0);
      x = t * std::cos(t) / 5 + 0.1 * e0;
      y = t * std::sin(t) / 5 + 0.1 * e1;
    } else if (name == "eight_gaussians") {
      const double k = std::floor(8 * u0);
      x = 2 * std::cos(k * pi / 4) + 0.1 * e0;
      y = 2 * std::sin(k * pi / 4) + 0.1 * e1;
    } else {  // checkerboard
      const double cx = 4 * u0 - 2;
      const double parity = std::fmod(std::floor(cx) + 2, 2.0);  // ⌊cx⌋ mod 2, with ⌊cx⌋ ≥ −2
      const double cy = u1 - 2 * std::floor(2 * u2) + parity;
      x = 2 * cx;
      y = 2 * cy;
    }
    out[size_t(2 * i)] = float(x);
    out[size_t(2 * i + 1)] = float(y);
  }
  return from_vector(out, {n, 2}, {.dtype = DType::f32});
}

}  // namespace cm::data
