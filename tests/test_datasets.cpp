// Data sets: PNG decoding of every color type (against PNGs assembled here byte by byte) and
// writing, the ZIP reader, every loader (digits, IDX, CIFAR-10, EDM folder/zip, ImageNet .npz) on
// files the test writes, with each malformed case, real Fashion-MNIST when installed, toy 2-D
// distributions, and the batch Loader (scaling, one-hot labels, seeded order, flips, resume,
// prefetch thread).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <map>
#include <numbers>
#include <set>
#include <sstream>
#include <thread>
#include <tuple>

#include "datasets/dataset.h"
#include "datasets/jpeg.h"
#include "datasets/loader.h"
#include "datasets/npz.h"
#include "datasets/png.h"
#include "datasets/resize.h"
#include "datasets/zip.h"
#include "runner/sha256.h"
#include "tensor/random.h"
#include "tests/helpers.h"

using namespace cm;
using namespace cm::data;
namespace fs = std::filesystem;
using Bytes = std::vector<uint8_t>;

namespace {

// ---- files ------------------------------------------------------------------------------------

// A fresh directory under the system temp dir, removed with everything in it at scope exit.
struct TempDir {
  fs::path path;
  TempDir() {
    static std::atomic<int> counter{0};
    path = fs::temp_directory_path() /
           ("cm_test_datasets_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

void write_file(const std::string& path, const Bytes& b) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
  REQUIRE(f.good());
}

void write_text(const std::string& path, const std::string& s) {
  write_file(path, Bytes(s.begin(), s.end()));
}

Bytes read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return Bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

// A gzip file written by zlib's own gz* interface.
void write_gz(const std::string& path, const Bytes& b) {
  gzFile f = gzopen(path.c_str(), "wb");
  REQUIRE(f != nullptr);
  REQUIRE(gzwrite(f, b.data(), unsigned(b.size())) == int(b.size()));
  REQUIRE(gzclose(f) == Z_OK);
}

Bytes gz_read_all(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  REQUIRE(f != nullptr);
  Bytes out;
  uint8_t buf[65536];
  int n;
  while ((n = gzread(f, buf, sizeof(buf))) > 0) out.insert(out.end(), buf, buf + n);
  gzclose(f);
  return out;
}

void put_be32(Bytes& b, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) b.push_back(uint8_t(v >> s));
}
void set_be32(Bytes& b, size_t at, uint32_t v) {
  for (int i = 0; i < 4; ++i) b[at + size_t(i)] = uint8_t(v >> (24 - 8 * i));
}
void put_le16(Bytes& b, uint16_t v) {
  b.push_back(uint8_t(v));
  b.push_back(uint8_t(v >> 8));
}
void put_le32(Bytes& b, uint32_t v) {
  for (int s = 0; s < 32; s += 8) b.push_back(uint8_t(v >> s));
}
void put_le64(Bytes& b, uint64_t v) {
  for (int s = 0; s < 64; s += 8) b.push_back(uint8_t(v >> s));
}
void set_le16(Bytes& b, size_t at, uint16_t v) {
  b[at] = uint8_t(v);
  b[at + 1] = uint8_t(v >> 8);
}
void set_le32(Bytes& b, size_t at, uint32_t v) {
  for (int i = 0; i < 4; ++i) b[at + size_t(i)] = uint8_t(v >> (8 * i));
}

uint32_t crc_of(const Bytes& b) {
  return uint32_t(crc32(0L, b.data(), uInt(b.size())));
}

Bytes raw_deflate(const Bytes& in) {
  z_stream zs{};
  REQUIRE(deflateInit2(&zs, 9, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) == Z_OK);
  Bytes out(deflateBound(&zs, uLong(in.size())));
  zs.next_in = const_cast<Bytef*>(in.data());
  zs.avail_in = uInt(in.size());
  zs.next_out = out.data();
  zs.avail_out = uInt(out.size());
  REQUIRE(deflate(&zs, Z_FINISH) == Z_STREAM_END);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

// The message of the cm::Error that f throws ("<no exception>" or "<other exception>" otherwise).
template <class F>
std::string error_message(F&& f) {
  try {
    f();
  } catch (const cm::Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("<other exception: ") + e.what() + ">";
  }
  return "<no exception>";
}

}  // namespace

// Checks that expr throws a cm::Error whose message contains every one of the given strings.
#define CHECK_ERROR_MENTIONS(expr, ...)                                                           \
  do {                                                                                            \
    const std::string _msg = error_message([&] { (void)(expr); });                                \
    for (const std::string& _part : std::vector<std::string>{__VA_ARGS__})                        \
      CHECK_MESSAGE(_msg.find(_part) != std::string::npos, #expr " gave '", _msg, "', lacking '", \
                    _part, "'");                                                                  \
  } while (0)

namespace {

// ---- PNG files assembled by hand ---------------------------------------------------------------

void put_chunk(Bytes& png, const char* type, const Bytes& data) {
  put_be32(png, uint32_t(data.size()));
  Bytes body(type, type + 4);
  body.insert(body.end(), data.begin(), data.end());
  png.insert(png.end(), body.begin(), body.end());
  put_be32(png, crc_of(body));
}

// A PNG from packed scanlines (each without its filter byte; filter 0 is added). `extra` chunks
// (PLTE, tRNS) go before IDAT. interlace = 1 means `rows` are already the Adam7 pass scanlines.
Bytes make_png(uint32_t w, uint32_t h, uint8_t depth, uint8_t color, const std::vector<Bytes>& rows,
               const std::vector<std::pair<const char*, Bytes>>& extra = {},
               uint8_t interlace = 0) {
  Bytes png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  Bytes ihdr;
  put_be32(ihdr, w);
  put_be32(ihdr, h);
  ihdr.insert(ihdr.end(), {depth, color, 0, 0, interlace});
  put_chunk(png, "IHDR", ihdr);
  for (const auto& [type, data] : extra) put_chunk(png, type, data);
  Bytes raw;
  for (const Bytes& r : rows) {
    raw.push_back(0);
    raw.insert(raw.end(), r.begin(), r.end());
  }
  uLongf n = compressBound(uLong(raw.size()));
  Bytes z(n);
  REQUIRE(compress(z.data(), &n, raw.data(), uLong(raw.size())) == Z_OK);
  z.resize(n);
  put_chunk(png, "IDAT", z);
  put_chunk(png, "IEND", {});
  return png;
}

// Packs sample values of `bits` bits each, MSB first (one scanline).
Bytes pack(const std::vector<int>& v, int bits) {
  Bytes out;
  if (bits == 16) {
    for (int x : v) out.insert(out.end(), {uint8_t(x >> 8), uint8_t(x)});
    return out;
  }
  int acc = 0, used = 0;
  for (int x : v) {
    acc = (acc << bits) | x;
    used += bits;
    if (used == 8) {
      out.push_back(uint8_t(acc));
      acc = used = 0;
    }
  }
  if (used) out.push_back(uint8_t(acc << (8 - used)));
  return out;
}

// u8 [C, H, W] from planar values.
Tensor u8_image(int64_t c, int64_t h, int64_t w, const std::vector<int>& planar) {
  std::vector<uint8_t> v(planar.begin(), planar.end());
  return from_vector(v, {c, h, w}, {.dtype = DType::u8});
}

std::vector<int> values_of(const Tensor& t) {
  std::vector<int> out;
  for (double v : t.to_vector<double>()) out.push_back(int(v));
  return out;
}

int round_16_to_8(int v) {
  return int(std::lround(v / 257.0));
}  // = round(v·255/65535)

// A deterministic test image, u8 [C, H, W], different for each `seed` and not mirror-symmetric.
Tensor pattern(int64_t c, int64_t h, int64_t w, int seed) {
  std::vector<int> v;
  for (int64_t i = 0; i < c * h * w; ++i) v.push_back(int((i * 37 + seed * 101 + i * i * 3) % 256));
  return u8_image(c, h, w, v);
}

}  // namespace

TEST_SUITE("datasets") {
  // ---- PNG
  // ---------------------------------------------------------------------------------------

  TEST_CASE(
      "png: write_png/read_png round trip of gray and RGB images in any layout (atomic writes)") {
    TempDir dir;
    for (int64_t c : {1, 3}) {
      for (int level : {0, 9}) {
        // A [C, H, W] view of an [H, W, C] buffer: non-contiguous input.
        Tensor hwc = permute(pattern(c, 5, 7, int(c) + level), {1, 2, 0}).contiguous();
        Tensor img = permute(hwc, {2, 0, 1});
        if (c == 3) REQUIRE_FALSE(img.is_contiguous());
        const std::string path =
            dir / ("img" + std::to_string(c) + "_" + std::to_string(level) + ".png");
        write_png(path, img, level);
        Tensor back = read_png(path);
        CHECK(back.shape() == Shape{c, 5, 7});
        CHECK(back.dtype() == DType::u8);
        CHECK(values_of(back) == values_of(img));
        // In memory too.
        const Bytes enc = encode_png(img, level);
        CHECK(values_of(decode_png(enc.data(), enc.size(), "mem")) == values_of(img));
      }
    }
    // Overwriting replaces the file; no temporary is left behind.
    const std::string path = dir / "over.png";
    write_png(path, pattern(1, 2, 2, 1));
    write_png(path, pattern(3, 4, 3, 2));
    CHECK(read_png(path).shape() == Shape{3, 4, 3});
    int files = 0;
    for (const auto& e : fs::directory_iterator(dir.path)) files += e.path().extension() == ".png";
    CHECK(files == int(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator())));
    // The level-0 file holds the pixels uncompressed (stored deflate blocks), as EDM writes.
    CHECK(fs::file_size(dir / "img3_0.png") > 3 * 5 * 7);
  }

  TEST_CASE("png: decodes every color type and bit depth to planar u8") {
    struct Case {
      std::string what;
      Bytes png;
      Shape shape;                // [C, H, W]
      std::vector<int> expected;  // planar
    };
    std::vector<Case> cases;
    auto scaled16 = [](std::vector<int> v) {
      for (int& x : v) x = round_16_to_8(x);
      return v;
    };
    // 8-bit gray, 16-bit gray (scaled to round(v·255/65535)).
    cases.push_back({"gray8",
                     make_png(3, 2, 8, 0, {pack({0, 1, 2}, 8), pack({127, 128, 255}, 8)}),
                     {1, 2, 3},
                     {0, 1, 2, 127, 128, 255}});
    cases.push_back({"gray16",
                     make_png(3, 1, 16, 0, {pack({0, 65535, 25700}, 16)}),
                     {1, 1, 3},
                     scaled16({0, 65535, 25700})});
    // 1-, 2- and 4-bit gray, widths that leave padding bits: v·255 / v·85 / v·17.
    cases.push_back({"gray1",
                     make_png(10, 1, 1, 0, {pack({1, 0, 1, 1, 0, 0, 1, 0, 1, 1}, 1)}),
                     {1, 1, 10},
                     {255, 0, 255, 255, 0, 0, 255, 0, 255, 255}});
    cases.push_back({"gray2",
                     make_png(5, 1, 2, 0, {pack({0, 1, 2, 3, 3}, 2)}),
                     {1, 1, 5},
                     {0, 85, 170, 255, 255}});
    cases.push_back({"gray4",
                     make_png(5, 1, 4, 0, {pack({0, 15, 7, 8, 1}, 4)}),
                     {1, 1, 5},
                     {0, 255, 119, 136, 17}});
    // Gray + alpha, 8 and 16 bits: alpha dropped.
    cases.push_back(
        {"gray_alpha8", make_png(2, 1, 8, 4, {pack({10, 255, 200, 0}, 8)}), {1, 1, 2}, {10, 200}});
    cases.push_back({"gray_alpha16",
                     make_png(2, 1, 16, 4, {pack({1000, 65535, 60000, 0}, 16)}),
                     {1, 1, 2},
                     scaled16({1000, 60000})});
    // RGB 8 and 16 bits, RGBA 8 bits: interleaved in the file, planar out.
    cases.push_back({"rgb8",
                     make_png(2, 1, 8, 2, {pack({1, 2, 3, 4, 5, 6}, 8)}),
                     {3, 1, 2},
                     {1, 4, 2, 5, 3, 6}});
    cases.push_back({"rgb16",
                     make_png(2, 1, 16, 2, {pack({0, 300, 65535, 1234, 50000, 257}, 16)}),
                     {3, 1, 2},
                     scaled16({0, 1234, 300, 50000, 65535, 257})});
    cases.push_back({"rgba8",
                     make_png(2, 1, 8, 6, {pack({1, 2, 3, 0, 4, 5, 6, 128}, 8)}),
                     {3, 1, 2},
                     {1, 4, 2, 5, 3, 6}});
    // Palettes: 8-bit with transparency (dropped), and 2-bit.
    const Bytes plte = {10, 20, 30, 40, 50, 60, 70, 80, 90, 200, 210, 220};
    cases.push_back(
        {"palette8_trns",
         make_png(4, 1, 8, 3, {pack({3, 0, 2, 1}, 8)}, {{"PLTE", plte}, {"tRNS", {0, 128}}}),
         {3, 1, 4},
         {200, 10, 70, 40, 210, 20, 80, 50, 220, 30, 90, 60}});
    cases.push_back({"palette2",
                     make_png(3, 1, 2, 3, {pack({1, 3, 0}, 2)}, {{"PLTE", plte}}),
                     {3, 1, 3},
                     {40, 200, 10, 50, 210, 20, 60, 220, 30}});
    // 8-bit gray with a tRNS chunk: still gray.
    cases.push_back({"gray8_trns",
                     make_png(2, 1, 8, 0, {pack({5, 9}, 8)}, {{"tRNS", {0, 5}}}),
                     {1, 1, 2},
                     {5, 9}});
    {  // Adam7-interlaced 8-bit gray, 5×6: the passes' scanlines assembled here
      const int W = 5, H = 6;
      std::vector<int> px(W * H);
      for (int i = 0; i < W * H; ++i) px[size_t(i)] = (i * 41 + 7) % 256;
      const int x0[7] = {0, 4, 0, 2, 0, 1, 0}, y0[7] = {0, 0, 4, 0, 2, 0, 1};
      const int dx[7] = {8, 8, 4, 4, 2, 2, 1}, dy[7] = {8, 8, 8, 4, 4, 2, 2};
      std::vector<Bytes> rows;
      for (int p = 0; p < 7; ++p) {
        if (x0[p] >= W || y0[p] >= H) continue;  // empty passes have no scanlines
        for (int y = y0[p]; y < H; y += dy[p]) {
          Bytes r;
          for (int x = x0[p]; x < W; x += dx[p]) r.push_back(uint8_t(px[size_t(y * W + x)]));
          rows.push_back(r);
        }
      }
      cases.push_back({"gray8_adam7", make_png(W, H, 8, 0, rows, {}, 1), {1, H, W}, px});
    }
    TempDir dir;
    for (const Case& c : cases) {
      CAPTURE(c.what);
      const std::string path = dir / (c.what + ".png");
      write_file(path, c.png);
      Tensor img = read_png(path);
      CHECK(img.dtype() == DType::u8);
      CHECK(img.shape() == c.shape);
      CHECK(values_of(img) == c.expected);
      CHECK(values_of(decode_png(c.png.data(), c.png.size(), c.what)) == c.expected);
    }
  }

  TEST_CASE("png: corrupt or unwritable files are cm::Errors naming the file") {
    TempDir dir;
    const Bytes good = make_png(
        3, 2, 8, 2, {pack({1, 2, 3, 4, 5, 6, 7, 8, 9}, 8), pack({1, 2, 3, 4, 5, 6, 7, 8, 9}, 8)});
    const std::string text = dir / "text.png", trunc = dir / "trunc.png", crc = dir / "crc.png",
                      empty_f = dir / "empty.png", noend = dir / "noend.png",
                      badz = dir / "badz.png";
    write_text(text, "this is not a png");
    write_file(trunc, Bytes(good.begin(), good.begin() + long(good.size() / 2)));
    Bytes bad_crc = good;
    bad_crc[bad_crc.size() - 20] ^= 0x5a;  // inside IDAT: its CRC no longer matches
    write_file(crc, bad_crc);
    write_file(empty_f, {});
    write_file(noend, Bytes(good.begin(), good.end() - 12));  // IEND missing
    // IDAT with a valid CRC over garbage zlib data.
    Bytes garbage = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    Bytes ihdr;
    put_be32(ihdr, 3);
    put_be32(ihdr, 2);
    ihdr.insert(ihdr.end(), {8, 0, 0, 0, 0});
    put_chunk(garbage, "IHDR", ihdr);
    put_chunk(garbage, "IDAT", {0x78, 0x9c, 0xff, 0xff, 0xff, 0xff, 0x00, 0x12});
    put_chunk(garbage, "IEND", {});
    write_file(badz, garbage);
    CHECK_ERROR_MENTIONS(read_png(text), text, "not a PNG");
    CHECK_ERROR_MENTIONS(read_png(trunc), trunc);
    CHECK_ERROR_MENTIONS(read_png(crc), crc);
    CHECK_ERROR_MENTIONS(read_png(empty_f), empty_f);
    CHECK_ERROR_MENTIONS(read_png(noend), noend);
    CHECK_ERROR_MENTIONS(read_png(badz), badz);
    CHECK_ERROR_MENTIONS(read_png(dir / "missing.png"), dir / "missing.png");
    CHECK_ERROR_MENTIONS(decode_png(garbage.data(), garbage.size(), "archive.zip/x.png"),
                         "archive.zip/x.png");
    // Writing: wrong dtype or channel count, and an unwritable path.
    CHECK_ERROR_MENTIONS(write_png(dir / "f.png", zeros({3, 2, 2})), "write_png", "f32",
                         dir / "f.png");
    CHECK_ERROR_MENTIONS(write_png(dir / "c.png", zeros({2, 2, 2}, {.dtype = DType::u8})),
                         "C = 1 or 3");
    CHECK_ERROR_MENTIONS(write_png(dir / "no/such/dir/x.png", pattern(1, 2, 2, 0)),
                         dir / "no/such/dir/x.png");
    CHECK_FALSE(fs::exists(dir / "f.png"));
  }

  // ---- ZIP
  // ---------------------------------------------------------------------------------------

  namespace {
  struct ZipItem {
    std::string name;
    Bytes data;
    bool deflate = false;
    bool zip64_local =
        false;  // as NumPy writes .npz: 0xFFFFFFFF sizes + ZIP64 extra in the local header
  };
  struct BuiltZip {
    Bytes bytes;
    std::vector<size_t> local, central, data;  // offsets per item
    size_t eocd = 0;
  };
  BuiltZip build_zip(const std::vector<ZipItem>& items) {
    BuiltZip z;
    std::vector<Bytes> payloads;
    for (const ZipItem& it : items) {
      const Bytes payload = it.deflate ? raw_deflate(it.data) : it.data;
      z.local.push_back(z.bytes.size());
      Bytes& b = z.bytes;
      put_le32(b, 0x04034b50);
      put_le16(b, it.zip64_local ? 45 : 20);
      put_le16(b, 0);
      put_le16(b, it.deflate ? 8 : 0);
      put_le16(b, 0);
      put_le16(b, 0x21);
      put_le32(b, crc_of(it.data));
      put_le32(b, it.zip64_local ? 0xffffffffu : uint32_t(payload.size()));
      put_le32(b, it.zip64_local ? 0xffffffffu : uint32_t(it.data.size()));
      put_le16(b, uint16_t(it.name.size()));
      put_le16(b, it.zip64_local ? 20 : 0);
      b.insert(b.end(), it.name.begin(), it.name.end());
      if (it.zip64_local) {
        put_le16(b, 1);
        put_le16(b, 16);
        put_le64(b, it.data.size());
        put_le64(b, payload.size());
      }
      z.data.push_back(b.size());
      b.insert(b.end(), payload.begin(), payload.end());
      payloads.push_back(payload);
    }
    const size_t cd_start = z.bytes.size();
    for (size_t i = 0; i < items.size(); ++i) {
      const ZipItem& it = items[i];
      Bytes& b = z.bytes;
      z.central.push_back(b.size());
      put_le32(b, 0x02014b50);
      put_le16(b, 20);
      put_le16(b, 20);
      put_le16(b, 0);
      put_le16(b, it.deflate ? 8 : 0);
      put_le16(b, 0);
      put_le16(b, 0x21);
      put_le32(b, crc_of(it.data));
      put_le32(b, uint32_t(payloads[i].size()));
      put_le32(b, uint32_t(it.data.size()));
      put_le16(b, uint16_t(it.name.size()));
      put_le16(b, 0);
      put_le16(b, 0);
      put_le16(b, 0);
      put_le16(b, 0);
      put_le32(b, 0);
      put_le32(b, uint32_t(z.local[i]));
      b.insert(b.end(), it.name.begin(), it.name.end());
    }
    z.eocd = z.bytes.size();
    Bytes& b = z.bytes;
    put_le32(b, 0x06054b50);
    put_le16(b, 0);
    put_le16(b, 0);
    put_le16(b, uint16_t(items.size()));
    put_le16(b, uint16_t(items.size()));
    put_le32(b, uint32_t(z.eocd - cd_start));
    put_le32(b, uint32_t(cd_start));
    put_le16(b, 0);
    return z;
  }
  Bytes text_bytes(const std::string& s) {
    return Bytes(s.begin(), s.end());
  }
  }  // namespace

  TEST_CASE("zip: lists entries and reads stored and deflated ones") {
    TempDir dir;
    Bytes big;
    for (int i = 0; i < 5000; ++i) big.push_back(uint8_t((i % 97) * (i % 13)));
    const BuiltZip z = build_zip({{"a/", {}},
                                  {"a/stored.bin", {1, 2, 3, 4, 5}},
                                  {"deflated.bin", big, true},
                                  {"empty.txt", {}, true},
                                  {"zip64local.bin", {9, 8, 7}, false, true}});
    const std::string path = dir / "t.zip";
    write_file(path, z.bytes);
    ZipReader zip(path);
    REQUIRE(zip.entries().size() == 5);
    CHECK(zip.entries()[0].is_directory());
    CHECK(zip.entries()[1].name == "a/stored.bin");
    CHECK(zip.entries()[1].method == 0);
    CHECK(zip.entries()[2].method == 8);
    CHECK(zip.entries()[2].uncompressed_size == big.size());
    CHECK(zip.entries()[2].compressed_size < big.size());
    CHECK(zip.read("a/stored.bin") == Bytes{1, 2, 3, 4, 5});
    CHECK(zip.read("deflated.bin") == big);
    CHECK(zip.read("empty.txt").empty());
    CHECK(zip.read("zip64local.bin") == Bytes{9, 8, 7});
    CHECK(zip.find("nope") == nullptr);
    CHECK_ERROR_MENTIONS(zip.read("nope"), path, "'nope'");
  }

  TEST_CASE("zip: malformed archives are cm::Errors naming the archive and the entry") {
    TempDir dir;
    Bytes big;
    for (int i = 0; i < 3000; ++i) big.push_back(uint8_t(i * 7 % 251));
    const BuiltZip z = build_zip({{"s.bin", {1, 2, 3, 4, 5, 6}}, {"d.bin", big, true}});
    int k = 0;
    auto variant = [&](auto mutate) {
      Bytes b = z.bytes;
      mutate(b);
      const std::string p = dir / (std::to_string(k++) + "_variant.zip");
      write_file(p, b);
      return p;
    };
    // Archive-level damage: the constructor fails.
    {
      const std::string p = dir / "text.zip";
      write_text(p, "hello, this is not a zip archive at all........");
      CHECK_ERROR_MENTIONS(ZipReader{p}, p, "not a zip archive");
      const std::string e = dir / "empty.zip";
      write_file(e, {});
      CHECK_ERROR_MENTIONS(ZipReader{e}, e);
      CHECK_ERROR_MENTIONS(ZipReader{dir / "missing.zip"}, dir / "missing.zip");
      const std::string t = variant([&](Bytes& b) { b.resize(b.size() - 7); });
      CHECK_ERROR_MENTIONS(ZipReader{t}, t, "truncated");
      const std::string cd =
          variant([&](Bytes& b) { set_le32(b, z.eocd + 16, uint32_t(z.eocd + 100)); });
      CHECK_ERROR_MENTIONS(ZipReader{cd}, cd, "central directory");
      const std::string count = variant([&](Bytes& b) {
        set_le16(b, z.eocd + 8, 3);
        set_le16(b, z.eocd + 10, 3);
      });
      CHECK_ERROR_MENTIONS(ZipReader{count}, count, "central directory entry 2");
      const std::string z64 = variant([&](Bytes& b) {
        set_le16(b, z.eocd + 8, 0xffff);
        set_le16(b, z.eocd + 10, 0xffff);
      });
      CHECK_ERROR_MENTIONS(ZipReader{z64}, z64, "ZIP64");
      const std::string z64e =
          variant([&](Bytes& b) { set_le32(b, z.central[1] + 20, 0xffffffffu); });
      CHECK_ERROR_MENTIONS(ZipReader{z64e}, z64e, "ZIP64", "'d.bin'");
      const std::string multi = variant([&](Bytes& b) { set_le16(b, z.eocd + 4, 1); });
      CHECK_ERROR_MENTIONS(ZipReader{multi}, multi, "multi-disk");
    }
    // Entry-level damage: read() fails naming the entry.
    auto entry_error = [&](const std::string& p, const std::string& entry) {
      ZipReader zip(p);
      return error_message([&] { zip.read(entry); });
    };
    struct Damage {
      const char* what;
      std::string entry;
      std::function<void(Bytes&)> mutate;
      std::string says;
    };
    const std::vector<Damage> damages = {
        {"bad local signature", "s.bin", [&](Bytes& b) { b[z.local[0]] = 'X'; },
         "local header signature"},
        {"stored CRC", "s.bin", [&](Bytes& b) { b[z.data[0] + 2] ^= 1; }, "CRC-32"},
        {"deflate garbage", "d.bin",
         [&](Bytes& b) {
           for (size_t i = 0; i < 16; ++i) b[z.data[1] + i] = 0xff;
         },
         "d.bin"},
        {"unsupported method", "s.bin", [&](Bytes& b) { set_le16(b, z.central[0] + 10, 12); },
         "compression method 12"},
        {"encrypted", "d.bin", [&](Bytes& b) { set_le16(b, z.central[1] + 8, 1); }, "encrypted"},
        {"data past the entries", "s.bin",
         [&](Bytes& b) {
           set_le32(b, z.central[0] + 20, 100000);
           set_le32(b, z.central[0] + 24, 100000);
         },
         "truncated"},
        {"stored size mismatch", "s.bin", [&](Bytes& b) { set_le32(b, z.central[0] + 24, 5); },
         "different compressed"},
        {"declared size too small", "d.bin", [&](Bytes& b) { set_le32(b, z.central[1] + 24, 100); },
         "more than its declared"},
        {"declared size too large", "d.bin",
         [&](Bytes& b) { set_le32(b, z.central[1] + 24, 3001); }, "inflates to 3000 bytes"},
        {"deflate bomb", "d.bin", [&](Bytes& b) { set_le32(b, z.central[1] + 24, 0x7fffffff); },
         "more than deflate can produce"},
        {"local header offset", "d.bin",
         [&](Bytes& b) { set_le32(b, z.central[1] + 42, uint32_t(z.central[0])); }, "local header"},
        {"local name differs", "s.bin", [&](Bytes& b) { b[z.local[0] + 30] = 'X'; },
         "different name"},
    };
    for (const Damage& d : damages) {
      INFO(d.what);
      const std::string p = variant(d.mutate);
      const std::string msg = entry_error(p, d.entry);
      CHECK_MESSAGE(msg.find(p) != std::string::npos, msg);
      CHECK_MESSAGE(msg.find("'" + d.entry + "'") != std::string::npos, msg);
      CHECK_MESSAGE(msg.find(d.says) != std::string::npos, msg);
    }
  }

  // ---- digits
  // ------------------------------------------------------------------------------------

  TEST_CASE("digits: the shipped 8x8 digits") {
    REQUIRE(fs::is_regular_file(digits_path()));
    const ImageDataset ds = load_digits_csv(digits_path());
    CHECK(ds.images.shape() == Shape{1797, 1, 8, 8});
    CHECK(ds.images.dtype() == DType::u8);
    CHECK(ds.labels.shape() == Shape{1797});
    CHECK(ds.num_classes == 10);
    // First line of the CSV: 0,0,5,13,9,1,0,0, ... label 0; round(v·255/16) by hand.
    const std::vector<int> row0 = values_of(ds.images.select(0, 0).select(0, 0).select(0, 0));
    CHECK(row0 == std::vector<int>{0, 0, 80, 207, 143, 16, 0, 0});
    const std::vector<int64_t> labels = ds.labels.to_vector<int64_t>();
    CHECK(labels[0] == 0);
    CHECK(labels[1] == 1);
    CHECK(labels[2] == 2);
    // Every pixel and label against an independent parse of the raw CSV (zlib's gzread).
    const Bytes raw = gz_read_all(digits_path());
    std::istringstream in(std::string(raw.begin(), raw.end()));
    std::string line;
    std::vector<double> expected;
    std::vector<int64_t> expected_labels;
    std::map<int64_t, int> counts;
    while (std::getline(in, line)) {
      std::istringstream ls(line);
      std::string cell;
      std::vector<int> v;
      while (std::getline(ls, cell, ',')) v.push_back(std::stoi(cell));
      REQUIRE(v.size() == 65);
      for (int i = 0; i < 64; ++i) expected.push_back(std::round(v[size_t(i)] * 255.0 / 16.0));
      expected_labels.push_back(v[64]);
      ++counts[v[64]];
    }
    CHECK(ds.images.to_vector<double>() == expected);
    CHECK(labels == expected_labels);
    CHECK(counts.size() == 10);
    const std::vector<double> px = ds.images.to_vector<double>();
    CHECK(*std::min_element(px.begin(), px.end()) == 0);
    CHECK(*std::max_element(px.begin(), px.end()) == 255);
    // load_dataset("digits") is the same data.
    CHECK(values_of(load_dataset("digits").images) == values_of(ds.images));
  }

  TEST_CASE("tint: each gray image in its class's colour, labels kept") {
    const ImageDataset gray = load_digits_csv(digits_path());
    const ImageDataset ds = load_dataset("tint:digits");
    REQUIRE(ds.images.shape() == Shape{1797, 3, 8, 8});
    CHECK(ds.images.dtype() == DType::u8);
    CHECK(ds.num_classes == 10);
    CHECK(ds.labels.to_vector<int64_t>() == gray.labels.to_vector<int64_t>());
    CHECK(ds.source == "tint:digits");
    // Every pixel: round(v·c/255) in integers, from the palette by the label.
    const std::vector<double> g = gray.images.to_vector<double>();
    const std::vector<double> t = ds.images.to_vector<double>();
    const std::vector<int64_t> labels = gray.labels.to_vector<int64_t>();
    size_t wrong = 0;
    for (size_t i = 0; i < 1797; ++i)
      for (size_t c = 0; c < 3; ++c)
        for (size_t p = 0; p < 64; ++p) {
          const double v = g[i * 64 + p];
          const double colour = tint_palette()[size_t(labels[i])][c];
          wrong += t[(i * 3 + c) * 64 + p] != std::round(v * colour / 255.0);
        }
    CHECK(wrong == 0);
    // Ten distinct colours, none gray: colorization has something to recover.
    for (size_t a = 0; a < 10; ++a) {
      const auto& ca = tint_palette()[a];
      CHECK_FALSE((ca[0] == ca[1] && ca[1] == ca[2]));
      for (size_t b = a + 1; b < 10; ++b) CHECK(ca != tint_palette()[b]);
    }
    // An RGB or an unlabelled set cannot be tinted.
    CHECK_ERROR_MENTIONS(tint_by_class(ds), "tint_by_class", "tint:digits", "3 channels");
    ImageDataset unlabelled = gray;
    unlabelled.num_classes = 0;
    CHECK_ERROR_MENTIONS(tint_by_class(unlabelled), "no labels");
    CHECK_ERROR_MENTIONS(load_dataset("tint:"), "needs a gray, labelled data set");
  }

  TEST_CASE("digits: malformed CSV files are cm::Errors naming the file and line") {
    TempDir dir;
    std::string ok_line;
    for (int i = 0; i < 64; ++i) ok_line += std::to_string(i % 17) + ",";
    auto csv = [&](const std::string& name, const std::string& text) {
      const std::string p = dir / name;
      write_gz(p, text_bytes(text));
      return p;
    };
    const std::string good = csv("good.csv.gz", ok_line + "3\n" + ok_line + "7\n");
    const ImageDataset ds = load_digits_csv(good);
    CHECK(ds.size() == 2);
    CHECK(ds.labels.to_vector<int64_t>() == std::vector<int64_t>{3, 7});
    CHECK(ds.images.to_vector<double>()[16] == 255);  // v = 16
    // The same file uncompressed loads the same.
    write_text(dir / "plain.csv", ok_line + "3\n" + ok_line + "7\n");
    CHECK(values_of(load_digits_csv(dir / "plain.csv").images) == values_of(ds.images));

    const std::string short_line = csv("short.csv.gz", ok_line + "3\n" + ok_line + "\n");
    CHECK_ERROR_MENTIONS(load_digits_csv(short_line), short_line, "line 2");
    const std::string long_line = csv("long.csv.gz", ok_line + "3,4\n");
    CHECK_ERROR_MENTIONS(load_digits_csv(long_line), long_line, "line 1");
    const std::string pix = csv("pix.csv.gz", "17," + ok_line.substr(2) + "3\n");
    CHECK_ERROR_MENTIONS(load_digits_csv(pix), pix, "outside 0..16");
    const std::string lab = csv("lab.csv.gz", ok_line + "10\n");
    CHECK_ERROR_MENTIONS(load_digits_csv(lab), lab, "label 10");
    const std::string word = csv("word.csv.gz", ok_line + "x\n");
    CHECK_ERROR_MENTIONS(load_digits_csv(word), word, "not an integer");
    const std::string none = csv("none.csv.gz", "");
    CHECK_ERROR_MENTIONS(load_digits_csv(none), none, "no images");
    // A truncated gzip stream.
    Bytes gz = read_bytes(good);
    gz.resize(gz.size() - 12);
    write_file(dir / "trunc.csv.gz", gz);
    CHECK_ERROR_MENTIONS(load_digits_csv(dir / "trunc.csv.gz"), dir / "trunc.csv.gz", "truncated");
  }

  // ---- IDX
  // ---------------------------------------------------------------------------------------

  namespace {
  Bytes idx_images(uint32_t n, uint32_t h, uint32_t w, uint32_t magic = 0x803) {
    Bytes b;
    put_be32(b, magic);
    put_be32(b, n);
    put_be32(b, h);
    put_be32(b, w);
    for (uint32_t i = 0; i < n * h * w; ++i) b.push_back(uint8_t((i * 13 + 5) % 256));
    return b;
  }
  Bytes idx_labels(const std::vector<uint8_t>& labels, uint32_t magic = 0x801) {
    Bytes b;
    put_be32(b, magic);
    put_be32(b, uint32_t(labels.size()));
    b.insert(b.end(), labels.begin(), labels.end());
    return b;
  }
  }  // namespace

  TEST_CASE("idx: gzip-compressed and raw files") {
    TempDir dir;
    const Bytes imgs = idx_images(5, 3, 4);
    const Bytes labs = idx_labels({0, 3, 1, 2, 3});
    write_gz(dir / "img.gz", imgs);
    write_gz(dir / "lab.gz", labs);
    write_file(dir / "img.raw", imgs);
    write_file(dir / "lab.raw", labs);
    for (const auto& [ip, lp] :
         {std::pair{dir / "img.gz", dir / "lab.gz"}, std::pair{dir / "img.raw", dir / "lab.raw"},
          std::pair{dir / "img.gz", dir / "lab.raw"}}) {
      CAPTURE(ip);
      const ImageDataset ds = load_idx(ip, lp);
      CHECK(ds.images.shape() == Shape{5, 1, 3, 4});
      CHECK(ds.labels.to_vector<int64_t>() == std::vector<int64_t>{0, 3, 1, 2, 3});
      CHECK(ds.num_classes == 4);
      const std::vector<double> px = ds.images.to_vector<double>();
      bool same = true;
      for (size_t i = 0; i < px.size(); ++i) same = same && px[i] == double((i * 13 + 5) % 256);
      CHECK(same);
    }
    const ImageDataset via_spec = load_dataset("idx:" + dir / "img.gz" + "," + dir / "lab.gz");
    CHECK(via_spec.size() == 5);
    CHECK(via_spec.source == "idx:" + dir / "img.gz" + "," + dir / "lab.gz");
  }

  TEST_CASE("idx: malformed files are cm::Errors naming the file") {
    TempDir dir;
    const Bytes imgs = idx_images(4, 2, 3), labs = idx_labels({1, 2, 3, 4});
    write_gz(dir / "img.gz", imgs);
    write_gz(dir / "lab.gz", labs);
    const std::string img = dir / "img.gz", lab = dir / "lab.gz";
    auto file = [&](const std::string& name, const Bytes& b, bool gz = true) {
      const std::string p = dir / name;
      gz ? write_gz(p, b) : write_file(p, b);
      return p;
    };
    // Swapped files: wrong magic on each side.
    CHECK_ERROR_MENTIONS(load_idx(lab, img), lab, "0x00000801", "expected 0x00000803");
    const std::string bad_lab = file("badlab.gz", idx_labels({1, 2, 3, 4}, 0x802));
    CHECK_ERROR_MENTIONS(load_idx(img, bad_lab), bad_lab, "expected 0x00000801");
    Bytes t = imgs;
    t.pop_back();
    const std::string trunc = file("trunc.gz", t);
    CHECK_ERROR_MENTIONS(load_idx(trunc, lab), trunc, "truncated");
    t = imgs;
    t.push_back(0);
    const std::string extra = file("extra.gz", t);
    CHECK_ERROR_MENTIONS(load_idx(extra, lab), extra, "trailing");
    const std::string lab3 = file("lab3.gz", idx_labels({1, 2, 3}));
    CHECK_ERROR_MENTIONS(load_idx(img, lab3), img, lab3, "4 images", "3 labels");
    t = labs;
    t.pop_back();
    const std::string labtrunc = file("labtrunc.raw", t, false);
    CHECK_ERROR_MENTIONS(load_idx(img, labtrunc), labtrunc, "truncated");
    const std::string hdr = file("hdr.raw", {0, 0, 8, 3, 0, 0}, false);
    CHECK_ERROR_MENTIONS(load_idx(hdr, lab), hdr, "header");
    Bytes gz = read_bytes(img);
    gz.resize(gz.size() / 2);
    const std::string gztrunc = file("gztrunc.gz", gz, false);
    CHECK_ERROR_MENTIONS(load_idx(gztrunc, lab), gztrunc, "truncated");
    gz = read_bytes(img);
    gz[gz.size() / 2] ^= 0xff;
    gz[gz.size() / 2 + 1] ^= 0xff;
    const std::string gzbad = file("gzbad.gz", gz, false);
    CHECK_ERROR_MENTIONS(load_idx(gzbad, lab), gzbad);
    CHECK_ERROR_MENTIONS(load_idx(dir / "none.gz", lab), dir / "none.gz", "cannot open");
    const std::string zero = file("zero.gz", idx_images(0, 2, 3));
    CHECK_ERROR_MENTIONS(load_idx(zero, lab), zero, "no images");
  }

  TEST_CASE("fashion-mnist: the real data set when installed") {
    const char* env = std::getenv("CM_FASHION_MNIST_DIR");
    const bool installed =
        fs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz") ||
        (env && fs::exists(std::string(env) + "/train-images-idx3-ubyte.gz"));
    if (!installed) {
      MESSAGE("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist): skipped");
      return;
    }
    for (const auto& [split, n] :
         {std::pair{std::string("train"), 60000}, std::pair{std::string("test"), 10000}}) {
      CAPTURE(split);
      const ImageDataset ds =
          split == "test" ? load_dataset("fashion-mnist:test") : fashion_mnist(split);
      CHECK(ds.images.shape() == Shape{n, 1, 28, 28});
      CHECK(ds.num_classes == 10);
      // Fashion-MNIST is balanced: n/10 images of each class 0..9.
      std::map<int64_t, int> counts;
      for (int64_t l : ds.labels.to_vector<int64_t>()) ++counts[l];
      CHECK(counts.size() == 10);
      for (const auto& [label, count] : counts) {
        CHECK(label >= 0);
        CHECK(label <= 9);
        CHECK(count == n / 10);
      }
    }
    CHECK_ERROR_MENTIONS(fashion_mnist("valid"), "train", "test");
    CHECK_ERROR_MENTIONS(load_dataset("fashion-mnist:val"), "fashion-mnist:val");
  }

  TEST_CASE("fashion-mnist: CM_FASHION_MNIST_DIR is searched first") {
    TempDir dir;
    write_gz(dir / "t10k-images-idx3-ubyte.gz", idx_images(3, 28, 28));
    write_file(dir / "t10k-labels-idx1-ubyte", idx_labels({9, 0, 4}));  // raw works too
    const char* old = std::getenv("CM_FASHION_MNIST_DIR");
    const std::string saved = old ? old : "";
    ::setenv("CM_FASHION_MNIST_DIR", dir.path.c_str(), 1);
    const std::string msg = error_message([] { fashion_mnist("test"); });
    const ImageDataset ds = fashion_mnist("test");
    old ? (void)::setenv("CM_FASHION_MNIST_DIR", saved.c_str(), 1)
        : (void)::unsetenv("CM_FASHION_MNIST_DIR");
    CHECK(msg == "<no exception>");
    CHECK(ds.size() == 3);
    CHECK(ds.num_classes == 10);
    CHECK(ds.labels.to_vector<int64_t>() == std::vector<int64_t>{9, 0, 4});
  }

  // ---- CIFAR-10
  // ----------------------------------------------------------------------------------

  namespace {
  Bytes cifar_records(int n, int seed, int label0) {
    Bytes b;
    for (int r = 0; r < n; ++r) {
      b.push_back(uint8_t((label0 + r) % 10));
      for (int i = 0; i < 3072; ++i) b.push_back(uint8_t((i * 7 + r * 31 + seed * 3) % 256));
    }
    return b;
  }
  }  // namespace

  TEST_CASE("cifar10: binary batches of the train and test splits") {
    TempDir dir;
    const std::string d = dir / "cifar:10";  // a ':' in the path, for load_dataset's grammar
    for (int i = 1; i <= 5; ++i)
      write_file(d + "/data_batch_" + std::to_string(i) + ".bin", cifar_records(2, i, i));
    write_file(d + "/test_batch.bin", cifar_records(3, 9, 7));
    const ImageDataset train = load_cifar10_bin(d, "train");
    CHECK(train.images.shape() == Shape{10, 3, 32, 32});
    CHECK(train.num_classes == 10);
    CHECK(train.labels.to_vector<int64_t>() == std::vector<int64_t>{1, 2, 2, 3, 3, 4, 4, 5, 5, 6});
    // Image 3 is record 1 of batch 2: pixel i of the record is plane i/1024, row (i%1024)/32, col
    // i%32.
    const std::vector<double> img3 = train.images.select(0, 3).to_vector<double>();
    bool same = true;
    for (int i = 0; i < 3072; ++i)
      same = same && img3[size_t(i)] == double((i * 7 + 1 * 31 + 2 * 3) % 256);
    CHECK(same);
    CHECK(train.images.select(0, 3).select(0, 1).select(0, 2).select(0, 5).item<int64_t>() ==
          ((1024 + 2 * 32 + 5) * 7 + 31 + 6) % 256);
    const ImageDataset test = load_dataset("cifar10:" + d + ":test");
    CHECK(test.size() == 3);
    CHECK(test.labels.to_vector<int64_t>() == std::vector<int64_t>{7, 8, 9});
    CHECK(load_dataset("cifar10:" + d).size() == 10);
  }

  TEST_CASE("cifar10: malformed batches are cm::Errors naming the file") {
    TempDir dir;
    const std::string d = dir / "c";
    for (int i = 1; i <= 5; ++i)
      write_file(d + "/data_batch_" + std::to_string(i) + ".bin", cifar_records(1, i, 0));
    Bytes odd = cifar_records(2, 0, 0);
    odd.pop_back();
    write_file(d + "/test_batch.bin", odd);
    CHECK_ERROR_MENTIONS(load_cifar10_bin(d, "test"), d + "/test_batch.bin", "3073");
    Bytes badlabel = cifar_records(2, 0, 0);
    badlabel[3073] = 10;
    write_file(d + "/test_batch.bin", badlabel);
    CHECK_ERROR_MENTIONS(load_cifar10_bin(d, "test"), d + "/test_batch.bin", "record 1",
                         "label 10");
    write_file(d + "/test_batch.bin", {});
    CHECK_ERROR_MENTIONS(load_cifar10_bin(d, "test"), d + "/test_batch.bin");
    fs::remove(d + "/data_batch_3.bin");
    CHECK_ERROR_MENTIONS(load_cifar10_bin(d, "train"), d + "/data_batch_3.bin", "does not exist");
    CHECK_ERROR_MENTIONS(load_cifar10_bin(d, "val"), "split");
  }

  // ---- EDM folders and zips
  // ----------------------------------------------------------------------

  namespace {
  // An EDM-layout folder of four RGB 4×4 images, written in unsorted order, with dataset.json.
  struct EdmFixture {
    std::vector<std::string> names = {"00000/img00000002.png", "00000/img00000000.png",
                                      "00001/img00000003.png", "00000/img00000001.png"};
    std::map<std::string, Tensor> images;
    std::map<std::string, int> labels = {{"00000/img00000000.png", 6},
                                         {"00000/img00000001.png", 2},
                                         {"00000/img00000002.png", 0},
                                         {"00001/img00000003.png", 6}};
    std::string json() const {
      std::string s = "{\"labels\": [";
      for (const std::string& n : names)
        s += "[\"" + n + "\", " + std::to_string(labels.at(n)) + "],";
      s.back() = ']';
      return s + "}";
    }
    EdmFixture() {
      int seed = 0;
      for (const std::string& n : names) images[n] = pattern(3, 4, 4, seed++);
    }
    void write_folder(const std::string& dir, bool with_json = true) const {
      for (const std::string& n : names) {
        fs::create_directories(fs::path(dir + "/" + n).parent_path());
        write_file(dir + "/" + n, encode_png(images.at(n), 0));
      }
      if (with_json) write_text(dir + "/dataset.json", json());
      write_text(dir + "/README.txt", "not an image");
    }
    std::vector<ZipItem> zip_items(bool deflate) const {
      std::vector<ZipItem> items = {{"00000/", {}}, {"00001/", {}}};
      for (const std::string& n : names) items.push_back({n, encode_png(images.at(n), 0), deflate});
      items.push_back({"dataset.json", text_bytes(json()), true});
      return items;
    }
    // Checks a loaded data set against the fixture: sorted names, labels, pixels.
    void check(const ImageDataset& ds, bool labelled = true) const {
      std::vector<std::string> sorted = names;
      std::sort(sorted.begin(), sorted.end());
      REQUIRE(ds.shape() == Shape{4, 3, 4, 4});
      const Tensor all = ds.rows(0, 4);
      const std::vector<int64_t> lab = ds.labels.to_vector<int64_t>();
      for (size_t i = 0; i < sorted.size(); ++i) {
        CAPTURE(sorted[i]);
        CHECK(values_of(all.select(0, int64_t(i))) == values_of(images.at(sorted[i])));
        CHECK(lab[i] == (labelled ? labels.at(sorted[i]) : -1));
      }
      CHECK(ds.num_classes == (labelled ? 7 : 0));
    }
  };
  }  // namespace

  TEST_CASE("edm: image folder with and without dataset.json") {
    TempDir dir;
    const EdmFixture fx;
    fx.write_folder(dir / "ds");
    fx.check(load_image_folder(dir / "ds"));
    fx.check(load_dataset("folder:" + dir / "ds"));
    fx.write_folder(dir / "nolabels", false);
    fx.check(load_image_folder(dir / "nolabels"), false);
    write_text(dir / "nolabels/dataset.json", "{\"labels\": null}");
    fx.check(load_image_folder(dir / "nolabels"), false);
    // Gray images load with one channel.
    write_file(dir / "gray/a.png", encode_png(pattern(1, 2, 3, 0)));
    write_file(dir / "gray/b.png", encode_png(pattern(1, 2, 3, 1)));
    const ImageDataset g = load_image_folder(dir / "gray");
    CHECK(g.images.shape() == Shape{2, 1, 2, 3});
    CHECK(values_of(g.images.select(0, 1)) == values_of(pattern(1, 2, 3, 1)));
  }

  TEST_CASE("edm: stored and deflated dataset zips") {
    TempDir dir;
    const EdmFixture fx;
    for (bool deflate : {false, true}) {
      CAPTURE(deflate);
      const std::string p = dir / (deflate ? "d.zip" : "s.zip");
      write_file(p, build_zip(fx.zip_items(deflate)).bytes);
      fx.check(load_edm_zip(p));
      fx.check(load_dataset("zip:" + p));
    }
  }

  namespace {
  // Every batch of `epochs` epochs from two loaders over a and b (flips, shuffles, shards).
  void check_same_batches(const ImageDataset& a, const ImageDataset& b, int64_t batch, int steps,
                          int64_t shard_count = 1) {
    for (int64_t shard = 0; shard < shard_count; ++shard) {
      CAPTURE(shard);
      const LoaderOptions o = {.batch_size = batch,
                               .seed = 7,
                               .random_flip = true,
                               .read_threads = 3,
                               .shard_index = shard,
                               .shard_count = shard_count};
      Loader la(a, o), lb(b, o);
      for (int k = 0; k < steps; ++k) {
        CAPTURE(k);
        const Batch x = la.next(), y = lb.next();
        CHECK(test::values(x.images) == test::values(y.images));
        CHECK(x.indices.to_vector<int64_t>() == y.indices.to_vector<int64_t>());
        CHECK(x.labels.defined() == y.labels.defined());
        if (x.labels.defined()) CHECK(test::values(x.labels) == test::values(y.labels));
      }
    }
  }
  }  // namespace

  TEST_CASE("edm: streamed folders and zips give the in-memory images and batches") {
    TempDir dir;
    const EdmFixture fx;
    fx.write_folder(dir / "ds");
    const std::string stored = dir / "s.zip", deflated = dir / "d.zip";
    write_file(stored, build_zip(fx.zip_items(false)).bytes);
    write_file(deflated, build_zip(fx.zip_items(true)).bytes);
    const LoadOptions stream = {.residency = Residency::Stream},
                      memory = {.residency = Residency::Memory};
    for (const std::string& spec : {"folder:" + dir / "ds", "zip:" + stored, "zip:" + deflated}) {
      CAPTURE(spec);
      const ImageDataset s = load_dataset(spec, stream), m = load_dataset(spec, memory);
      CHECK(s.streamed());
      CHECK(!m.streamed());
      fx.check(s);
      fx.check(m);
      CHECK(values_of(s.rows(1, 2, 2)) == values_of(m.rows(1, 2)));
      std::vector<uint8_t> one(48);
      s.read(3, one.data());
      CHECK(std::vector<int>(one.begin(), one.end()) == values_of(m.images.select(0, 3)));
      check_same_batches(s, m, 2, 5, 1);  // 2½ epochs
      check_same_batches(s, m, 2, 4, 2);  // shards of one image
      // Auto: in memory up to the limit (4 images of 48 bytes), streamed past it.
      CHECK(!load_dataset(spec, {.memory_limit = 192}).streamed());
      CHECK(load_dataset(spec, {.memory_limit = 191}).streamed());
    }
    CHECK_ERROR_MENTIONS(load_dataset("zip:" + stored, stream).rows(3, 2), "images 3 .. 4", "of 4");
  }

  TEST_CASE("edm: a streamed image of another size is an error naming it when it is read") {
    TempDir dir;
    const EdmFixture fx;
    fx.write_folder(dir / "ds");
    write_file(dir / "ds/00001/img00000003.png", encode_png(pattern(3, 4, 5, 9), 0));
    const ImageDataset s = load_dataset("folder:" + dir / "ds", {.residency = Residency::Stream});
    CHECK(values_of(s.rows(0, 3)).size() == 3 * 48);  // the others read
    CHECK_ERROR_MENTIONS(s.rows(0, 4), dir / "ds/00001/img00000003.png", "3×4×5", "one size");
    // through the loader: the batch that holds it fails, with or without prefetch
    for (bool prefetch : {true, false}) {
      CAPTURE(prefetch);
      Loader l(s, {.batch_size = 4, .shuffle = false, .prefetch = prefetch});
      CHECK_ERROR_MENTIONS(l.next(), dir / "ds/00001/img00000003.png");
    }
    // loaded into memory, the same error at load
    CHECK_ERROR_MENTIONS(load_dataset("folder:" + dir / "ds", {.residency = Residency::Memory}),
                         dir / "ds/00001/img00000003.png", "one size");
  }

  TEST_CASE("datasets: parallel_rows visits every index once and rethrows the first failure") {
    for (int threads : {0, 1, 3, 8}) {
      CAPTURE(threads);
      std::vector<std::atomic<int>> seen(101);
      parallel_rows(101, threads, [&](int64_t i) { seen[size_t(i)]++; });
      for (const auto& v : seen) CHECK(v.load() == 1);
      // failures at 40, 41 and 90: the one at 40 is rethrown, whatever the threads' timing
      for (int rep = 0; rep < 5; ++rep)
        CHECK_ERROR_MENTIONS(parallel_rows(101, threads,
                                           [&](int64_t i) {
                                             if (i == 40 || i == 41 || i == 90)
                                               CM_FAIL("row ", i, " failed");
                                           }),
                             "row 40 failed");
    }
    parallel_rows(0, 4, [&](int64_t) { CM_FAIL("called"); });
  }

  TEST_CASE("edm: malformed folders and zips are cm::Errors naming the file") {
    TempDir dir;
    const EdmFixture fx;
    auto folder = [&](const std::string& name) {
      const std::string d = dir / name;
      fx.write_folder(d);
      return d;
    };
    {
      const std::string d = folder("size");
      write_file(d + "/00001/img00000009.png", encode_png(pattern(3, 4, 5, 0)));
      CHECK_ERROR_MENTIONS(load_image_folder(d), d + "/00001/img00000009.png", "one size");
    }
    {
      const std::string d = folder("channels");
      write_file(d + "/00001/img00000009.png", encode_png(pattern(1, 4, 4, 0)));
      CHECK_ERROR_MENTIONS(load_image_folder(d), d + "/00001/img00000009.png", "channel");
    }
    {
      const std::string d = folder("corrupt");
      write_text(d + "/00000/img00000005.png", "garbage");
      CHECK_ERROR_MENTIONS(load_image_folder(d), d + "/00000/img00000005.png");
    }
    {
      const std::string d = folder("jpg");
      write_text(d + "/00000/x.jpg", "jpeg");
      CHECK_ERROR_MENTIONS(load_image_folder(d), d + "/00000/x.jpg", "only PNG");
    }
    auto with_json = [&](const std::string& name, const std::string& json) {
      const std::string d = folder(name);
      write_text(d + "/dataset.json", json);
      return d;
    };
    std::string j = fx.json();
    {
      std::string neg = j;
      neg.replace(neg.find(", 6]"), 4, ", -1]");
      const std::string d = with_json("neg", neg);
      CHECK_ERROR_MENTIONS(load_image_folder(d), d + "/dataset.json", "out of range");
    }
    {
      std::string flt = j;
      flt.replace(flt.find(", 2]"), 4, ", 2.5]");
      const std::string d = with_json("float", flt);
      CHECK_ERROR_MENTIONS(load_image_folder(d), d + "/dataset.json", "integer");
    }
    {
      const std::string d = with_json("missing", "{\"labels\": [[\"00000/img00000000.png\", 1]]}");
      CHECK_ERROR_MENTIONS(load_image_folder(d), d + "/dataset.json", "no label");
    }
    {
      std::string extra = j;
      extra.insert(extra.size() - 2, ",[\"ghost.png\", 1]");
      const std::string d = with_json("extra", extra);
      CHECK_ERROR_MENTIONS(load_image_folder(d), d + "/dataset.json", "ghost.png");
    }
    {
      const std::string d = with_json("badjson", "{\"labels\": [");
      CHECK_ERROR_MENTIONS(load_image_folder(d), d + "/dataset.json", "JSON");
    }
    {
      const std::string d = with_json("nokey", "{\"classes\": null}");
      CHECK_ERROR_MENTIONS(load_image_folder(d), d + "/dataset.json", "labels");
    }
    fs::create_directories(dir / "empty");
    CHECK_ERROR_MENTIONS(load_image_folder(dir / "empty"), dir / "empty", "no PNG");
    CHECK_ERROR_MENTIONS(load_image_folder(dir / "nothere"), dir / "nothere", "not a directory");
    // Zips: the error names the archive and the entry.
    {
      std::vector<ZipItem> items = fx.zip_items(false);
      items.push_back({"00001/img00000009.png", encode_png(pattern(3, 2, 4, 0)), false});
      const std::string p = dir / "size.zip";
      write_file(p, build_zip(items).bytes);
      CHECK_ERROR_MENTIONS(load_edm_zip(p), p + "/00001/img00000009.png", "one size");
    }
    {
      std::vector<ZipItem> items = fx.zip_items(true);
      items.push_back({"00001/img00000009.png", text_bytes("not a png"), true});
      const std::string p = dir / "corrupt.zip";
      write_file(p, build_zip(items).bytes);
      CHECK_ERROR_MENTIONS(load_edm_zip(p), p + "/00001/img00000009.png", "not a PNG");
    }
    {
      std::vector<ZipItem> items = fx.zip_items(false);
      items.back().data = text_bytes("{\"labels\": [[\"00000/img00000000.png\", 1]]}");
      const std::string p = dir / "labels.zip";
      write_file(p, build_zip(items).bytes);
      CHECK_ERROR_MENTIONS(load_edm_zip(p), p + "/dataset.json", "no label");
    }
  }

  // ---- ImageNet .npz
  // -----------------------------------------------------------------------------

  namespace {
  // An .npy file as NumPy writes it: magic, version, header length, the dict padded with spaces to
  // a multiple of 64 bytes and ended by a newline, then the data.
  Bytes npy(const std::string& descr, const std::string& shape, const Bytes& data, int major = 1,
            const std::string& order = "False") {
    std::string dict =
        "{'descr': '" + descr + "', 'fortran_order': " + order + ", 'shape': " + shape + ", }";
    const size_t pre = major == 1 ? 10 : 12;
    while ((pre + dict.size() + 1) % 64 != 0) dict += ' ';
    dict += '\n';
    Bytes b = {0x93, 'N', 'U', 'M', 'P', 'Y', uint8_t(major), 0};
    if (major == 1) {
      put_le16(b, uint16_t(dict.size()));
    } else {
      put_le32(b, uint32_t(dict.size()));
    }
    b.insert(b.end(), dict.begin(), dict.end());
    b.insert(b.end(), data.begin(), data.end());
    return b;
  }
  Bytes i64_le(const std::vector<int64_t>& v) {
    Bytes b;
    for (int64_t x : v) put_le64(b, uint64_t(x));
    return b;
  }
  // 4 images of 3×2×2 (12 values each), labels 1-based.
  Bytes imagenet_data() {
    Bytes b;
    for (int i = 0; i < 48; ++i) b.push_back(uint8_t(i * 5 + 1));
    return b;
  }
  }  // namespace

  TEST_CASE("npz: downsampled ImageNet as NumPy writes it") {
    TempDir dir;
    const Bytes data = npy("|u1", "(4, 12)", imagenet_data());
    const Bytes labels = npy("<i8", "(4,)", i64_le({1, 1000, 5, 2}));
    Bytes labels_i4 = npy("<i4", "(4,)", {1, 0, 0, 0, 0xe8, 3, 0, 0, 5, 0, 0, 0, 2, 0, 0, 0}, 2);
    int k = 0;
    for (const auto& [deflate, zip64, lab] :
         {std::tuple{false, true, labels}, std::tuple{true, true, labels},
          std::tuple{false, false, labels_i4}}) {
      CAPTURE(k);
      const std::string p = dir / ("in" + std::to_string(k++) + ".npz");
      write_file(p, build_zip({{"data.npy", data, deflate, zip64},
                               {"labels.npy", lab, deflate, zip64},
                               {"mean.npy", npy("<f8", "(12,)", Bytes(96, 0)), deflate, zip64}})
                        .bytes);
      const ImageDataset ds = k == 1 ? load_dataset("npz:" + p) : load_imagenet_npz(p);
      CHECK(ds.images.shape() == Shape{4, 3, 2, 2});
      CHECK(ds.num_classes == 1000);
      CHECK(ds.labels.to_vector<int64_t>() == std::vector<int64_t>{0, 999, 4, 1});
      // Row i of data is image i, channel-planar: value (i·12 + c·4 + y·2 + x)·5 + 1.
      CHECK(ds.images.select(0, 2).select(0, 1).select(0, 1).select(0, 0).item<int64_t>() ==
            (2 * 12 + 1 * 4 + 1 * 2 + 0) * 5 + 1);
      std::vector<int> expected;
      for (int i = 0; i < 48; ++i) expected.push_back(i * 5 + 1);
      CHECK(values_of(ds.images) == expected);
    }
  }

  TEST_CASE("npz: a stored data.npy is mapped, not read, and trains as the deflated one does") {
    TempDir dir;
    std::vector<uint8_t> pixels;
    for (int i = 0; i < 40 * 12; ++i) pixels.push_back(uint8_t((i * 37 + 11) % 251));
    std::vector<int64_t> lab;
    for (int i = 0; i < 40; ++i) lab.push_back(1 + (i * 7) % 1000);
    const Bytes data = npy("|u1", "(40, 12)", pixels), labels = npy("<i8", "(40,)", i64_le(lab));
    const std::string stored = dir / "stored.npz", deflated = dir / "deflated.npz";
    write_file(
        stored,
        build_zip({{"data.npy", data, false, false}, {"labels.npy", labels, false, false}}).bytes);
    write_file(
        deflated,
        build_zip({{"data.npy", data, true, false}, {"labels.npy", labels, true, false}}).bytes);
    const ImageDataset a = load_dataset("npz:" + stored), b = load_dataset("npz:" + deflated);
    CHECK(values_of(a.images) == values_of(b.images));
    Loader la(a, {.batch_size = 8, .seed = 3, .random_flip = true});
    Loader lb(b, {.batch_size = 8, .seed = 3, .random_flip = true});
    for (int k = 0; k < 7; ++k) {  // past an epoch (5 batches)
      const Batch x = la.next(), y = lb.next();
      CHECK(test::values(x.images) == test::values(y.images));
      CHECK(test::values(x.labels) == test::values(y.labels));
    }
  }

  TEST_CASE("npz: several files are one data set in natural order, streamed over the files") {
    TempDir dir;
    // parts of 3, 2 and 4 images of 3×2×2; values and labels numbered across the parts
    const std::vector<int> counts = {3, 2, 4};
    std::vector<uint8_t> all_pixels;
    std::vector<int64_t> all_labels;
    fs::create_directories(dir / "parts");
    const std::vector<std::string> names = {"train_data_batch_1.npz", "train_data_batch_2.npz",
                                            "train_data_batch_10.npz"};
    for (size_t k = 0; k < counts.size(); ++k) {
      std::vector<uint8_t> pixels;
      std::vector<int64_t> lab;
      for (int i = 0; i < counts[k] * 12; ++i)
        pixels.push_back(uint8_t((all_pixels.size() + size_t(i)) * 7 % 253));
      for (int i = 0; i < counts[k]; ++i) lab.push_back(1 + int64_t(all_labels.size()) + i);
      all_pixels.insert(all_pixels.end(), pixels.begin(), pixels.end());
      for (int64_t l : lab) all_labels.push_back(l - 1);
      const std::string n = std::to_string(counts[k]);
      write_file(dir / ("parts/" + names[k]),
                 build_zip({{"data.npy", npy("|u1", "(" + n + ", 12)", pixels), k == 1, false},
                            {"labels.npy", npy("<i8", "(" + n + ",)", i64_le(lab)), k == 1, false}})
                     .bytes);
    }
    write_text(dir / "parts/notes.txt", "not an npz");
    // natural order: batch_10 after batch_2 (the files were given in that order above)
    const std::vector<std::string> files = npz_files_in(dir / "parts");
    REQUIRE(files.size() == 3);
    for (size_t k = 0; k < 3; ++k) CHECK(files[k] == (fs::path(dir / "parts") / names[k]).string());
    std::string list;
    for (const std::string& f : files) list += (list.empty() ? "" : ",") + f;
    const std::vector<int> expected(all_pixels.begin(), all_pixels.end());
    for (const std::string& spec : {"npz:" + dir / "parts", "npz:" + list}) {
      CAPTURE(spec);
      const ImageDataset s = load_dataset(spec);
      const ImageDataset m = load_dataset(spec, {.residency = Residency::Memory});
      CHECK(s.streamed());
      CHECK(!m.streamed());
      CHECK(s.shape() == Shape{9, 3, 2, 2});
      CHECK(values_of(s.rows(0, 9)) == expected);
      CHECK(values_of(m.images) == expected);
      CHECK(s.labels.to_vector<int64_t>() == all_labels);
      CHECK(s.num_classes == 1000);
      CHECK(values_of(s.rows(2, 3)) ==
            std::vector<int>(expected.begin() + 2 * 12, expected.begin() + 5 * 12));
      check_same_batches(s, m, 4, 5);  // over two epochs
    }
    // one file: as load_imagenet_npz (in memory)
    CHECK(!load_dataset("npz:" + files[0]).streamed());
    // files that do not fit together
    write_file(dir / "other.npz",
               build_zip({{"data.npy", npy("|u1", "(1, 48)", Bytes(48, 1)), false, false},
                          {"labels.npy", npy("<i8", "(1,)", i64_le({3})), false, false}})
                   .bytes);
    CHECK_ERROR_MENTIONS(load_dataset("npz:" + files[0] + "," + dir / "other.npz"),
                         dir / "other.npz", "3×4×4", "one image shape");
    Tensor nhwc = zeros({2, 2, 2, 3}, {.dtype = DType::u8});
    write_npz(dir / "unlabelled.npz", {{"arr_0", nhwc}});
    CHECK_ERROR_MENTIONS(load_dataset("npz:" + files[0] + "," + dir / "unlabelled.npz"),
                         dir / "unlabelled.npz", "has none");
    CHECK_ERROR_MENTIONS(load_dataset("npz:" + files[0] + ","), "empty path");
    fs::create_directories(dir / "empty");
    CHECK_ERROR_MENTIONS(load_dataset("npz:" + dir / "empty"), dir / "empty", "no .npz files");
  }

  TEST_CASE("npz: openai's image batches, arr_0 NHWC with arr_1 labels, as cm sample writes them") {
    TempDir dir;
    // images [3, 2, 2, 3] whose value encodes (i, y, x, c)
    std::vector<uint8_t> v;
    for (int i = 0; i < 3; ++i)
      for (int y = 0; y < 2; ++y)
        for (int x = 0; x < 2; ++x)
          for (int c = 0; c < 3; ++c) v.push_back(uint8_t(i * 64 + y * 16 + x * 4 + c));
    const Tensor nhwc = from_vector(v, {3, 2, 2, 3});
    const std::string with = dir / "batch.npz", without = dir / "nolabels.npz";
    write_npz(with, {{"arr_0", nhwc}, {"arr_1", from_vector(std::vector<int64_t>{4, 0, 2}, {3})}});
    write_npz(without, {{"arr_0", nhwc}});
    const ImageDataset a = load_dataset("npz:" + with);
    CHECK(a.images.shape() == Shape{3, 3, 2, 2});
    for (int i = 0; i < 3; ++i)
      for (int c = 0; c < 3; ++c)
        for (int y = 0; y < 2; ++y)
          for (int x = 0; x < 2; ++x)
            CHECK(a.images.select(0, i).select(0, c).select(0, y).select(0, x).item<int64_t>() ==
                  i * 64 + y * 16 + x * 4 + c);
    CHECK(a.labels.to_vector<int64_t>() == std::vector<int64_t>{4, 0, 2});
    CHECK(a.num_classes == 5);
    const ImageDataset b = load_dataset("npz:" + without);
    CHECK(b.num_classes == 0);
    CHECK(b.labels.to_vector<int64_t>() == std::vector<int64_t>{-1, -1, -1});
    // wrong layouts name the entry
    const std::string bad = dir / "bad.npz";
    write_npz(bad, {{"arr_0", from_vector(std::vector<float>(12, 0.f), {1, 2, 2, 3})}});
    test::check_error([&] { load_dataset("npz:" + bad); }, {"bad.npz/arr_0.npy", "uint8"});
    write_npz(bad, {{"arr_0", nhwc}, {"arr_1", from_vector(std::vector<int64_t>{1, -1, 0}, {3})}});
    test::check_error([&] { load_dataset("npz:" + bad); }, {"arr_1.npy", "label 1 is -1"});
  }

  TEST_CASE("npz: malformed .npy and .npz files are cm::Errors naming the file") {
    TempDir dir;
    const Bytes data = npy("|u1", "(4, 12)", imagenet_data());
    const Bytes labels = npy("<i8", "(4,)", i64_le({1, 2, 3, 4}));
    int k = 0;
    auto npz = [&](const Bytes& d, const Bytes& l) {
      const std::string p = dir / ("bad" + std::to_string(k++) + ".npz");
      write_file(p, build_zip({{"data.npy", d}, {"labels.npy", l}}).bytes);
      return p;
    };
    struct Bad {
      const char* what;
      Bytes data, labels;
      std::string entry, says;
    };
    Bytes bad_magic = data;
    bad_magic[1] = 'X';
    Bytes trunc = data;
    trunc.pop_back();
    Bytes trailing = data;
    trailing.push_back(0);
    Bytes version = data;
    version[6] = 4;
    Bytes no_newline = data;
    no_newline[9 + size_t(no_newline[8])] = ' ';
    const std::vector<Bad> bads = {
        {"bad magic", bad_magic, labels, "data.npy", "bad magic"},
        {"version", version, labels, "data.npy", "version 4"},
        {"truncated data", trunc, labels, "data.npy", "truncated"},
        {"trailing data", trailing, labels, "data.npy", "trailing"},
        {"no newline", no_newline, labels, "data.npy", "newline"},
        {"big-endian", data, npy(">i8", "(4,)", i64_le({1, 2, 3, 4})), "labels.npy", "'>i8'"},
        {"float labels", data, npy("<f8", "(4,)", Bytes(32, 0)), "labels.npy", "integers"},
        {"float data", npy("<f4", "(4, 12)", Bytes(192, 0)), labels, "data.npy", "uint8"},
        {"fortran", npy("|u1", "(4, 12)", imagenet_data(), 1, "True"), labels, "data.npy",
         "Fortran"},
        {"3-D data", npy("|u1", "(4, 3, 4)", imagenet_data()), labels, "data.npy", "[N, 3·R·R]"},
        {"not square", npy("|u1", "(3, 16)", imagenet_data()),
         npy("<i8", "(3,)", i64_le({1, 2, 3})), "data.npy", "3·R·R"},
        {"label count", data, npy("<i8", "(3,)", i64_le({1, 2, 3})), "labels.npy", "expected [4]"},
        {"label 0", data, npy("<i8", "(4,)", i64_le({1, 0, 3, 4})), "labels.npy", "1..1000"},
        {"label 1001", data, npy("<i8", "(4,)", i64_le({1, 2, 1001, 4})), "labels.npy", "1..1000"},
        {"unknown key", npy("|u1", "(4, 12), 'extra': 1", imagenet_data()), labels, "data.npy",
         "unexpected key 'extra'"},
        {"bad shape", npy("|u1", "(4, -12)", imagenet_data()), labels, "data.npy",
         "malformed header"},
        {"bad bool", npy("|u1", "(4, 12)", imagenet_data(), 1, "false"), labels, "data.npy",
         "True or False"},
        {"zero-size with huge dims",
         npy("|u1", "(0, 4611686018427387904, 4611686018427387904)", {}), labels, "data.npy",
         "too large"},
    };
    for (const Bad& b : bads) {
      INFO(b.what);
      const std::string p = npz(b.data, b.labels);
      CHECK_ERROR_MENTIONS(load_imagenet_npz(p), p + "/" + b.entry, b.says);
    }
    {
      // Fuzzing finding: a zero-size array whose dims multiply past 2^63 (cm's strides would
      // overflow) is refused by read_npz too.
      const std::string z = dir / "zero.npz";
      write_file(z, build_zip({{"a.npy", npy("<f8", "(0, 9223372036854775807, 3)", {})}}).bytes);
      CHECK_ERROR_MENTIONS(read_npz(z), z + "/a.npy", "too large");
      // 2^62 doubles: the byte count 2^65 would wrap to 0 and match an empty data section.
      const std::string w = dir / "wrap.npz";
      write_file(w, build_zip({{"a.npy", npy("<f8", "(4611686018427387904,)", {})}}).bytes);
      CHECK_ERROR_MENTIONS(read_npz(w), w + "/a.npy", "too large");
    }
    const std::string p = dir / "nolabels.npz";
    write_file(p, build_zip({{"data.npy", data}}).bytes);
    CHECK_ERROR_MENTIONS(load_imagenet_npz(p), p, "labels.npy");
    // A header missing a key, parsed directly.
    std::string dict = "{'descr': '|u1', 'shape': (2,), }\n";
    Bytes h = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
    put_le16(h, uint16_t(dict.size()));
    h.insert(h.end(), dict.begin(), dict.end());
    h.insert(h.end(), {1, 2});
    CHECK_ERROR_MENTIONS(parse_npy_header(h.data(), h.size(), "x.npy"), "x.npy", "fortran_order");
    const NpyHeader ok = parse_npy_header(data.data(), data.size(), "d.npy");
    CHECK(ok.descr == "|u1");
    CHECK(ok.shape == Shape{4, 12});
    CHECK(ok.data_offset == 10 + size_t(data[8] | (data[9] << 8)));
    CHECK(ok.data_offset % 64 == 0);
    CHECK_FALSE(ok.fortran_order);
  }

  // ---- parser hardening: FIFOs, deep JSON, duplicate entries, size bounds
  // ------------------------------------------------------------------

  // Runs `read` in a thread and returns its cm::Error message. A reader that blocks on the FIFO
  // (open() waits for a writer) is released after 10 s by opening the FIFO's write end without
  // blocking and closing it, so that it sees end of file: the test then fails instead of hanging.
  std::string fifo_error(const std::string& fifo, std::function<void()> read) {
    auto result = std::async(std::launch::async, [read] { return error_message(read); });
    if (result.wait_for(std::chrono::seconds(10)) == std::future_status::timeout) {
      while (result.wait_for(std::chrono::milliseconds(50)) == std::future_status::timeout) {
        const int fd = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK);
        if (fd >= 0) ::close(fd);
      }
      FAIL_CHECK("reading '", fifo, "' blocked on the FIFO");
    }
    return result.get();
  }

  TEST_CASE("every file reader refuses a FIFO, naming it, without blocking") {
    TempDir dir;
    auto make_fifo = [&](const std::string& name) {
      const std::string p = dir / name;
      fs::create_directories(fs::path(p).parent_path());
      REQUIRE(::mkfifo(p.c_str(), 0600) == 0);
      return p;
    };
    auto check_fifo = [&](const std::string& fifo, std::function<void()> read) {
      const std::string msg = fifo_error(fifo, std::move(read));
      CHECK_MESSAGE(msg.find(fifo) != std::string::npos, msg);
      CHECK_MESSAGE(msg.find("FIFO") != std::string::npos, msg);
    };
    // An ordinary labels file beside the FIFO, so that only the FIFO can fail.
    const std::string lab = dir / "labels";
    {
      Bytes b;
      put_be32(b, 0x801);
      put_be32(b, 1);
      b.push_back(3);
      write_file(lab, b);
    }
    const std::string f = make_fifo("fifo");
    check_fifo(f, [&] { load_idx(f, lab); });
    check_fifo(f, [&] { load_dataset("idx:" + f + "," + lab); });
    check_fifo(f, [&] { load_dataset("npz:" + f); });
    check_fifo(f, [&] { load_dataset("zip:" + f); });
    check_fifo(f, [&] { read_npz(f); });
    check_fifo(f, [&] { ZipReader z(f); });
    check_fifo(f, [&] { read_png(f); });
    check_fifo(f, [&] { load_digits_csv(f); });
    check_fifo(f, [&] { runner::sha256_file(f); });
    const std::string batch = make_fifo("cifar/test_batch.bin");
    check_fifo(batch, [&] { load_cifar10_bin(dir / "cifar", "test"); });
    // A folder data set: a FIFO named like an image or like dataset.json is refused, not skipped.
    write_file(dir / "folder/a.png", encode_png(pattern(3, 2, 2, 0)));
    const std::string png_fifo = make_fifo("folder/x.png");
    check_fifo(png_fifo, [&] { load_image_folder(dir / "folder"); });
    write_file(dir / "folder2/a.png", encode_png(pattern(3, 2, 2, 0)));
    const std::string json_fifo = make_fifo("folder2/dataset.json");
    check_fifo(json_fifo, [&] { load_dataset("folder:" + dir / "folder2"); });
  }

  TEST_CASE("edm: a dataset.json nested 100,000 levels deep is a cm::Error, not a stack overflow") {
    TempDir dir;
    const std::string deep = std::string(100000, '[') + std::string(100000, ']');
    const std::string deep_obj = "{\"labels\": " + deep + "}";
    write_file(dir / "ds/a.png", encode_png(pattern(3, 2, 2, 0)));
    write_text(dir / "ds/dataset.json", deep);
    CHECK_ERROR_MENTIONS(load_image_folder(dir / "ds"), dir / "ds/dataset.json", "nested");
    write_text(dir / "ds/dataset.json", deep_obj);
    CHECK_ERROR_MENTIONS(load_dataset("folder:" + dir / "ds"), dir / "ds/dataset.json", "nested");
    const std::string z = dir / "deep.zip";
    write_file(z, build_zip({{"a.png", encode_png(pattern(3, 2, 2, 0))},
                             {"dataset.json", text_bytes(deep_obj), true}})
                      .bytes);
    CHECK_ERROR_MENTIONS(load_edm_zip(z), z + "/dataset.json", "nested");
  }

  TEST_CASE("zip: two entries of one name are refused when the archive is opened") {
    TempDir dir;
    const Bytes a = npy("|u1", "(2,)", {1, 2});
    const std::string npz = dir / "dup.npz";
    write_file(npz, build_zip({{"arr_0.npy", a}, {"x.npy", a}, {"arr_0.npy", a}}).bytes);
    CHECK_ERROR_MENTIONS(ZipReader{npz}, npz, "two entries", "'arr_0.npy'");
    CHECK_ERROR_MENTIONS(read_npz(npz), npz, "two entries", "'arr_0.npy'");
    CHECK_ERROR_MENTIONS(read_npz(npz, {"x"}), npz, "two entries", "'arr_0.npy'");
    const std::string edm = dir / "dup.zip";
    const Bytes png = encode_png(pattern(3, 2, 2, 0));
    write_file(edm, build_zip({{"a/img.png", png},
                               {"dataset.json", text_bytes("{}")},
                               {"dataset.json", text_bytes("{\"labels\": null}")}})
                        .bytes);
    CHECK_ERROR_MENTIONS(load_edm_zip(edm), edm, "two entries", "'dataset.json'");
    CHECK_ERROR_MENTIONS(load_dataset("zip:" + edm), edm, "two entries", "'dataset.json'");
  }

  TEST_CASE("zip: an entry declaring more than kMaxEntryBytes is refused before allocating") {
    TempDir dir;
    const BuiltZip z = build_zip({{"big.bin", Bytes(3000, 7), true}});
    Bytes b = z.bytes;
    set_le32(b, z.central[0] + 24, 0xfffffff0u);  // uncompressed size, under the ZIP64 marker
    const std::string p = dir / "bomb.zip";
    write_file(p, b);
    CHECK_ERROR_MENTIONS(ZipReader{p}, p, "'big.bin'", "over the limit");
  }

  TEST_CASE("png: a header asking for more pixels than the file can hold is refused early") {
    // 30000×30000 gray (900 MB of pixels) from a few hundred bytes: refused before allocating.
    std::vector<Bytes> rows(4, Bytes(30000, 0));
    Bytes png = make_png(30000, 4, 8, 0, rows);
    set_be32(png, 16 + 4, 30000);  // IHDR height, after the signature, length, type and width
    // The IHDR CRC must follow the change for libpng to read the header.
    const Bytes body(png.begin() + 12, png.begin() + 12 + 4 + 13);
    set_be32(png, 12 + 4 + 13, crc_of(body));
    CHECK_ERROR_MENTIONS(decode_png(png.data(), png.size(), "huge.png"), "huge.png", "cannot hold");
  }

  // ---- load_dataset
  // ------------------------------------------------------------------------------

  TEST_CASE("load_dataset: grammar errors") {
    CHECK_ERROR_MENTIONS(load_dataset("mnist"), "unknown data set", "\"mnist\"", "npz:<path>");
    CHECK_ERROR_MENTIONS(load_dataset("digits:extra"), "unknown data set");
    CHECK_ERROR_MENTIONS(load_dataset("idx:only_one_file"), "idx:<images>,<labels>");
    CHECK_ERROR_MENTIONS(load_dataset("idx:a,b,c"), "idx:<images>,<labels>");
    CHECK_ERROR_MENTIONS(load_dataset("folder:"), "needs a directory");
    CHECK_ERROR_MENTIONS(load_dataset("zip"), "needs a path");
    CHECK_ERROR_MENTIONS(load_dataset("npz:/no/such.npz"), "/no/such.npz");
    CHECK_ERROR_MENTIONS(load_dataset("cifar10:/no/such/dir:test"), "/no/such/dir/test_batch.bin");
  }

  // ---- toy 2-D distributions
  // ---------------------------------------------------------------------

  TEST_CASE("toy_2d: deterministic samples with each distribution's geometry") {
    const int64_t n = 2000;
    const double pi = std::numbers::pi;
    for (const char* name : {"moons", "swiss_roll", "eight_gaussians", "checkerboard"}) {
      INFO(name);
      const Tensor a = toy_2d(name, n, 7);
      CHECK(a.shape() == Shape{n, 2});
      CHECK(a.dtype() == DType::f32);
      CHECK(max_abs_diff(a, toy_2d(name, n, 7)) == 0);
      CHECK(max_abs_diff(a, toy_2d(name, n, 8)) > 0.1);
    }
    auto rows = [&](const char* name) {
      const std::vector<double> v = toy_2d(name, n, 3).to_vector<double>();
      std::vector<std::pair<double, double>> p;
      for (int64_t i = 0; i < n; ++i) p.emplace_back(v[size_t(2 * i)], v[size_t(2 * i + 1)]);
      return p;
    };
    {  // moons: undo the affine map; each point lies within 5σ of the outer or the inner circle.
      int outer = 0, off = 0;
      for (auto [x, y] : rows("moons")) {
        const double u = x / 2 + 0.5, v = y / 2 + 0.25;
        const double r_outer = std::hypot(u, v), r_inner = std::hypot(u - 1, v - 0.5);
        const bool near_outer = std::fabs(r_outer - 1) < 0.25 && v > -0.25;
        const bool near_inner = std::fabs(r_inner - 1) < 0.25 && v < 0.75;
        off += !(near_outer || near_inner);
        outer += std::fabs(r_outer - 1) < std::fabs(r_inner - 1);
      }
      CHECK(off == 0);
      CHECK(std::abs(outer - n / 2) < 5 * std::sqrt(n / 4.0));
    }
    {  // swiss roll: p ≈ (t·cos t, t·sin t)/5 with t in [1.5π, 4.5π)
      // The angle fixes t up to whole turns; the right turn puts |p| within 5σ of t/5.
      int bad = 0;
      for (auto [x, y] : rows("swiss_roll")) {
        const double r = std::hypot(x, y), theta = std::atan2(y, x);
        double best = 1e9;
        for (int k = -1; k <= 3; ++k) {
          const double t = theta + 2 * pi * k;
          if (t >= 1.5 * pi - 1 && t <= 4.5 * pi + 1) best = std::min(best, std::fabs(t / 5 - r));
        }
        bad += best > 0.55;
      }
      CHECK(bad == 0);
    }
    {  // eight gaussians: every point within 6σ of one of 8 centres, ~n/8 at each
      std::map<int, int> count;
      int far = 0;
      for (auto [x, y] : rows("eight_gaussians")) {
        int best = -1;
        for (int k = 0; k < 8; ++k)
          if (std::hypot(x - 2 * std::cos(k * pi / 4), y - 2 * std::sin(k * pi / 4)) < 0.6)
            best = k;
        far += best < 0;
        ++count[best];
      }
      CHECK(far == 0);
      for (int k = 0; k < 8; ++k) CHECK(std::abs(count[k] - n / 8) < 5 * std::sqrt(n / 8.0));
    }
    {  // checkerboard: in [−4, 4)², only squares with ⌊x/2⌋ + ⌊y/2⌋ even, 8 squares ~equally
      std::map<std::pair<int, int>, int> squares;
      int odd = 0, outside = 0;
      for (auto [x, y] : rows("checkerboard")) {
        const int sx = int(std::floor(x / 2)), sy = int(std::floor(y / 2));
        outside += x < -4 || x >= 4 || y < -4 || y >= 4;
        odd += ((sx + sy) % 2 + 2) % 2 != 0;
        ++squares[{sx, sy}];
      }
      CHECK(outside == 0);
      CHECK(odd == 0);
      CHECK(squares.size() == 8);
      for (const auto& [sq, c] : squares) CHECK(std::abs(c - n / 8) < 5 * std::sqrt(n / 8.0));
    }
    CHECK_ERROR_MENTIONS(toy_2d("spirals", 10, 0), "spirals");
    CHECK_ERROR_MENTIONS(toy_2d("moons", 0, 0), "n must be positive");
  }

  // ---- Loader
  // ------------------------------------------------------------------------------------

  namespace {
  // N images u8 [N, C, H, W] with distinct, mirror-asymmetric rows; label i % classes (−1 for
  // every 5th image when `unlabelled`).
  ImageDataset toy_images(int64_t n, int64_t c, int64_t h, int64_t w, int64_t classes,
                          bool unlabelled = false) {
    std::vector<uint8_t> px;
    for (int64_t i = 0; i < n * c * h * w; ++i)
      px.push_back(uint8_t((i * 29 + (i / w) * 3 + (i % w) * (i % w)) % 256));
    std::vector<int64_t> labels;
    for (int64_t i = 0; i < n; ++i)
      labels.push_back(classes == 0 || (unlabelled && i % 5 == 0) ? -1 : i % classes);
    ImageDataset ds;
    ds.images = from_vector(px, {n, c, h, w}, {.dtype = DType::u8});
    ds.labels = from_vector(labels, {n}, {.dtype = DType::i64});
    ds.num_classes = classes;
    ds.source = "toy";
    return ds;
  }

  std::vector<int64_t> indices_of(const Batch& b) {
    return b.indices.to_vector<int64_t>();
  }

  // The indices of `batches` consecutive batches.
  std::vector<std::vector<int64_t>> run(Loader& l, int batches) {
    std::vector<std::vector<int64_t>> out;
    for (int i = 0; i < batches; ++i) out.push_back(indices_of(l.next()));
    return out;
  }
  }  // namespace

  TEST_CASE("loader: pixels scaled to -1..1 and one-hot labels") {
    const ImageDataset ds = toy_images(10, 2, 3, 4, 3, true);
    const std::vector<double> src = ds.images.to_vector<double>();
    const std::vector<int64_t> lab = ds.labels.to_vector<int64_t>();
    for (bool prefetch : {true, false}) {
      CAPTURE(prefetch);
      Loader l(ds, {.batch_size = 4, .seed = 5, .prefetch = prefetch});
      CHECK(l.batches_per_epoch() == 2);
      for (int step = 0; step < 3; ++step) {
        const Batch b = l.next();
        REQUIRE(b.images.shape() == Shape{4, 2, 3, 4});
        CHECK(b.images.dtype() == DType::f32);
        REQUIRE(b.labels.shape() == Shape{4, 3});
        const std::vector<double> img = b.images.to_vector<double>(),
                                  oh = b.labels.to_vector<double>();
        const std::vector<int64_t> idx = indices_of(b);
        double err = 0;
        for (int64_t k = 0; k < 4; ++k) {
          for (int64_t j = 0; j < 24; ++j)
            err = std::max(err, std::fabs(img[size_t(k * 24 + j)] -
                                          (src[size_t(idx[size_t(k)] * 24 + j)] / 127.5 - 1)));
          for (int64_t c = 0; c < 3; ++c)
            CHECK(oh[size_t(k * 3 + c)] == (lab[size_t(idx[size_t(k)])] == c ? 1.0 : 0.0));
        }
        CHECK(err < 1e-7);
      }
    }
    // 0 → −1 and 255 → 1 exactly.
    ImageDataset ends;
    ends.images = from_vector(std::vector<uint8_t>{0, 255}, {2, 1, 1, 1}, {.dtype = DType::u8});
    Loader e(ends, {.batch_size = 2, .shuffle = false});
    const Batch eb = e.next();
    CHECK(eb.images.to_vector<double>() == std::vector<double>{-1.0, 1.0});
    CHECK_FALSE(eb.labels.defined());  // no classes
    Loader off(ds, {.batch_size = 2, .labels = false});
    CHECK_FALSE(off.next().labels.defined());
  }

  TEST_CASE("loader: batches depend only on seed and epoch and drop the remainder") {
    const ImageDataset ds = toy_images(10, 1, 2, 2, 0);
    Loader a(ds, {.batch_size = 3, .seed = 11});
    Loader b(ds, {.batch_size = 3, .seed = 11, .prefetch = false});
    Loader c(ds, {.batch_size = 3, .seed = 12});
    CHECK(a.batches_per_epoch() == 3);
    const auto ra = run(a, 9), rb = run(b, 9), rc = run(c, 9);
    CHECK(ra == rb);  // prefetching or not, same batches
    CHECK(ra != rc);
    for (int e = 0; e < 3; ++e) {
      std::vector<int64_t> all;
      for (int i = 0; i < 3; ++i)
        all.insert(all.end(), ra[size_t(3 * e + i)].begin(), ra[size_t(3 * e + i)].end());
      // 9 distinct samples from one permutation: the epoch's first 9 positions.
      CHECK(std::set<int64_t>(all.begin(), all.end()).size() == 9);
      const std::vector<int64_t> order = Loader::epoch_order(10, 11, uint64_t(e));
      CHECK(all == std::vector<int64_t>(order.begin(), order.begin() + 9));
    }
    CHECK(ra[0] != ra[3]);
    CHECK(a.state() == LoaderState{3, 0});
    // No shuffling: data set order every epoch.
    Loader s(ds, {.batch_size = 5, .shuffle = false});
    const auto rs = run(s, 4);
    CHECK(rs[0] == std::vector<int64_t>{0, 1, 2, 3, 4});
    CHECK(rs[2] == rs[0]);
    CHECK(rs[3] == std::vector<int64_t>{5, 6, 7, 8, 9});
  }

  TEST_CASE("loader: the shards of a batch are its rows, flips and labels included") {
    ImageDataset ds = toy_images(13, 1, 2, 3, 4);
    Loader whole(ds, {.batch_size = 6, .seed = 5, .random_flip = true, .prefetch = false});
    std::vector<std::unique_ptr<Loader>> shards;
    for (int64_t r = 0; r < 3; ++r)
      shards.push_back(std::make_unique<Loader>(ds, LoaderOptions{.batch_size = 6,
                                                                  .seed = 5,
                                                                  .random_flip = true,
                                                                  .shard_index = r,
                                                                  .shard_count = 3}));
    for (int step = 0; step < 5; ++step) {  // across an epoch boundary (2 batches per epoch)
      const Batch w = whole.next();
      for (int64_t r = 0; r < 3; ++r) {
        const Batch b = shards[size_t(r)]->next();
        CHECK(b.images.shape() == Shape{2, 1, 2, 3});
        CHECK(max_abs_diff(b.images, w.images.narrow(0, 2 * r, 2)) == 0);
        CHECK(b.indices.to_vector<int64_t>() == w.indices.narrow(0, 2 * r, 2).to_vector<int64_t>());
        if (w.labels.defined()) CHECK(max_abs_diff(b.labels, w.labels.narrow(0, 2 * r, 2)) == 0);
        CHECK(shards[size_t(r)]->state() == whole.state());
      }
    }
    CHECK_THROWS_WITH_AS(Loader(ds, {.batch_size = 6, .shard_index = 0, .shard_count = 4}),
                         doctest::Contains("does not split into 4 equal shards"), cm::Error);
    CHECK_THROWS_AS(Loader(ds, {.batch_size = 6, .shard_index = 3, .shard_count = 3}), cm::Error);
  }

  TEST_CASE("loader: epoch_order is a uniform random permutation") {
    const int n = 8, epochs = 4000;
    std::vector<std::vector<int>> count(n, std::vector<int>(n, 0));  // count[position][value]
    for (int e = 0; e < epochs; ++e) {
      const std::vector<int64_t> o = Loader::epoch_order(n, 99, uint64_t(e));
      REQUIRE(std::set<int64_t>(o.begin(), o.end()).size() == size_t(n));
      for (int p = 0; p < n; ++p) ++count[size_t(p)][size_t(o[size_t(p)])];
    }
    // Each (position, value) pair has probability 1/8: 500 expected, σ ≈ 20.9.
    int worst = 0;
    for (const auto& row : count)
      for (int c : row) worst = std::max(worst, std::abs(c - epochs / n));
    CHECK(worst < 110);
    CHECK(Loader::epoch_order(n, 99, 0) != Loader::epoch_order(n, 100, 0));
  }

  TEST_CASE("loader: random horizontal flips") {
    const ImageDataset ds = toy_images(64, 2, 3, 5, 4);
    const std::vector<double> src = ds.images.to_vector<double>();
    auto flips = [&](const LoaderOptions& o, int batches) {
      Loader l(ds, o);
      std::vector<int> out;
      for (int i = 0; i < batches; ++i) {
        const Batch b = l.next();
        const std::vector<double> img = b.images.to_vector<double>();
        const std::vector<int64_t> idx = indices_of(b);
        for (size_t k = 0; k < idx.size(); ++k) {
          bool plain = true, mirrored = true;
          for (int r = 0; r < 6; ++r)
            for (int w = 0; w < 5; ++w) {
              const double v = img[k * 30 + size_t(r * 5 + w)];
              plain =
                  plain &&
                  std::fabs(v - (src[size_t(idx[k]) * 30 + size_t(r * 5 + w)] / 127.5 - 1)) < 1e-6;
              mirrored =
                  mirrored &&
                  std::fabs(v - (src[size_t(idx[k]) * 30 + size_t(r * 5 + 4 - w)] / 127.5 - 1)) <
                      1e-6;
            }
          REQUIRE(plain != mirrored);  // exactly one: the rows are not palindromes
          out.push_back(mirrored);
        }
      }
      return out;
    };
    const std::vector<int> f = flips({.batch_size = 16, .seed = 3, .random_flip = true}, 16);
    const int flipped = int(std::count(f.begin(), f.end(), 1));
    CHECK(std::abs(flipped - 128) < 40);  // 256 fair coins: σ = 8
    CHECK(f == flips({.batch_size = 16, .seed = 3, .random_flip = true, .prefetch = false}, 16));
    const std::vector<int> none = flips({.batch_size = 16, .seed = 3}, 8);
    CHECK(std::count(none.begin(), none.end(), 1) == 0);
  }

  TEST_CASE("loader: a saved state resumes exactly") {
    const ImageDataset ds = toy_images(13, 1, 2, 3, 4);
    const LoaderOptions o{.batch_size = 4, .seed = 77, .random_flip = true};
    Loader a(ds, o);
    CHECK(a.batches_per_epoch() == 3);
    std::vector<Batch> first;
    LoaderState saved;
    for (int i = 0; i < 8; ++i) {
      if (i == 4) saved = a.state();
      first.push_back(a.next());
    }
    CHECK(saved == LoaderState{1, 1});
    CHECK(first[4].position == saved);
    Loader b(ds, o, saved);
    for (int i = 4; i < 8; ++i) {
      const Batch x = b.next();
      CHECK(x.position == first[size_t(i)].position);
      CHECK(indices_of(x) == indices_of(first[size_t(i)]));
      CHECK(max_abs_diff(x.images, first[size_t(i)].images) == 0);
      CHECK(max_abs_diff(x.labels, first[size_t(i)].labels) == 0);
    }
    // set_state rewinds a running loader (discarding what it prefetched).
    a.set_state({0, 2});
    CHECK(indices_of(a.next()) == indices_of(first[2]));
    CHECK(a.state() == LoaderState{1, 0});
    CHECK_ERROR_MENTIONS(a.set_state({0, 3}), "index 3", "3 batches");
    CHECK_ERROR_MENTIONS(Loader(ds, o, {5, 7}), "index 7");
  }

  TEST_CASE("loader: the prefetch thread shuts down cleanly mid-epoch") {
    const ImageDataset ds = toy_images(40, 1, 4, 4, 2);
    using clock = std::chrono::steady_clock;
    auto seconds = [](clock::time_point t0) {
      return std::chrono::duration<double>(clock::now() - t0).count();
    };
    {  // worker blocked on a full queue
      auto l = std::make_unique<Loader>(ds, LoaderOptions{.batch_size = 4});
      l->next();
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      const auto t0 = clock::now();
      l.reset();
      CHECK(seconds(t0) < 1.0);
    }
    {  // worker busy preparing a slow batch
      std::atomic<int> prepared{0};
      auto slow = [&](Batch&) {
        std::this_thread::sleep_for(std::chrono::milliseconds(30));
        ++prepared;
      };
      auto l = std::make_unique<Loader>(ds, LoaderOptions{.batch_size = 4, .transform = slow});
      l->next();
      const auto t0 = clock::now();
      l.reset();
      CHECK(seconds(t0) < 1.0);
      CHECK(prepared.load() <= 4);  // it stopped instead of running through the epoch
    }
    {  // never used
      Loader l(ds, {.batch_size = 4});
    }
    {  // many loaders created and dropped at once
      for (int i = 0; i < 20; ++i) Loader l(ds, {.batch_size = 8, .seed = uint64_t(i)});
    }
  }

  TEST_CASE("loader: an exception while preparing a batch reaches next()") {
    const ImageDataset ds = toy_images(20, 1, 2, 2, 2);
    for (bool prefetch : {true, false}) {
      CAPTURE(prefetch);
      std::atomic<bool> fail{true};
      auto t = [&](Batch& b) {
        if (fail && b.position == LoaderState{0, 2}) CM_FAIL("augmentation failed at batch 2");
      };
      Loader l(ds, {.batch_size = 4, .seed = 1, .prefetch = prefetch, .transform = t});
      l.next();
      l.next();
      CHECK_ERROR_MENTIONS(l.next(), "augmentation failed at batch 2");
      CHECK(l.state() == LoaderState{0, 2});  // the failed batch was not consumed
      CHECK_ERROR_MENTIONS(l.next(), "augmentation failed");
      fail = false;
      l.set_state(l.state());
      CHECK(l.next().position == LoaderState{0, 2});
    }
  }

  TEST_CASE("loader: options and data set are validated") {
    const ImageDataset ds = toy_images(6, 1, 2, 2, 3);
    CHECK_ERROR_MENTIONS(Loader(ds, {}), "batch_size", "1..6");
    CHECK_ERROR_MENTIONS(Loader(ds, {.batch_size = 7}), "batch_size");
    ImageDataset f = ds;
    f.images = zeros({6, 1, 2, 2});
    CHECK_ERROR_MENTIONS(Loader(f, {.batch_size = 2}), "u8 [N, C, H, W]", "f32");
    ImageDataset bad = ds;
    bad.labels = from_vector(std::vector<int64_t>{0, 1, 2, 3, 0, 1}, {6}, {.dtype = DType::i64});
    CHECK_ERROR_MENTIONS(Loader(bad, {.batch_size = 2}), "label 3", "is 3");
    // A non-contiguous image tensor is accepted (made contiguous).
    ImageDataset nc = ds;
    nc.images = permute(permute(ds.images, {0, 1, 3, 2}).contiguous(), {0, 1, 3, 2});
    REQUIRE_FALSE(nc.images.is_contiguous());
    Loader a(nc, {.batch_size = 3, .seed = 4}), b(ds, {.batch_size = 3, .seed = 4});
    CHECK(max_abs_diff(a.next().images, b.next().images) == 0);
  }
}

// ---- the reference's image folders (tools/gen_reference_folder_golden.py)
// ------------------------------------------------------------------------------

namespace {
const std::string kReferenceGolden = std::string(CM_SOURCE_DIR) + "/tests/golden/";

// u8 [H, W, C] (as NumPy and PIL hold images) → [C, H, W]
Tensor planar(const Tensor& hwc) {
  return permute(hwc, {2, 0, 1}).contiguous();
}
}  // namespace

TEST_SUITE("datasets") {
  TEST_CASE("resize: PIL's BOX and BICUBIC resampling, byte for byte") {
    const auto g = read_npz(kReferenceGolden + "reference_folder.npz");
    const Tensor src = planar(g.at("resize_src"));
    int cases = 0;
    for (const auto& [key, want] : g) {
      for (const auto& [prefix, filter] :
           {std::pair{std::string("resize_box_"), ResampleFilter::Box},
            std::pair{std::string("resize_bicubic_"), ResampleFilter::Bicubic}}) {
        if (key.rfind(prefix, 0) != 0) continue;
        CAPTURE(key);
        const Tensor out = pil_resize(src, want.size(1), want.size(0), filter);
        CHECK(values_of(out) == values_of(planar(want)));
        ++cases;
      }
    }
    CHECK(cases == 12);
    // equal sizes: a copy; a single pass where one side is unchanged is the same as PIL's
    CHECK(values_of(pil_resize(src, 23, 17, ResampleFilter::Bicubic)) == values_of(src));
    CHECK_ERROR_MENTIONS(pil_resize(src, 0, 3, ResampleFilter::Box), "out of range");
    CHECK_ERROR_MENTIONS(pil_resize(zeros({2, 2}), 1, 1, ResampleFilter::Box), "u8 [C, H, W]");
  }

  TEST_CASE("reference folder: the reference's order, classes and pixels (JPEG, PNG, CMYK, gray)") {
    const std::string dir = kReferenceGolden + "reference_folder";
    const auto g = read_npz(kReferenceGolden + "reference_folder.npz");
    const Tensor want = g.at("arr_0");  // [N, 16, 16, 3]
    const int64_t n = want.size(0);
    for (Residency r : {Residency::Memory, Residency::Stream}) {
      CAPTURE(int(r));
      const ImageDataset ds = load_reference_folder(dir, 16, {.residency = r});
      CHECK(ds.streamed() == (r == Residency::Stream));
      REQUIRE(ds.shape() == Shape{n, 3, 16, 16});
      CHECK(ds.labels.to_vector<int64_t>() == g.at("arr_1").to_vector<int64_t>());
      CHECK(ds.num_classes == 3);
      const Tensor got = ds.rows(0, n);
      for (int64_t i = 0; i < n; ++i) {
        CAPTURE(i);
        CHECK(values_of(got.select(0, i)) == values_of(planar(want.select(0, i))));
      }
    }
    const ImageDataset s = load_dataset("openai:" + dir + ":16");
    CHECK(s.size() == n);
    CHECK(s.source == "openai:" + dir + ":16");
    CHECK_ERROR_MENTIONS(load_dataset("openai:" + dir), "openai:<dir>:<size>");
    CHECK_ERROR_MENTIONS(load_dataset("openai:" + dir + ":x"), "openai:<dir>:<size>");
    CHECK_ERROR_MENTIONS(load_dataset("openai:" + dir + ":0"), "out of range");
  }

  TEST_CASE("reference folder: GIFs, broken and truncated images are errors naming the file") {
    TempDir dir;
    const std::string src = kReferenceGolden + "reference_folder/n01440764_10026.JPEG";
    std::ifstream f(src, std::ios::binary);
    const std::vector<uint8_t> jpeg((std::istreambuf_iterator<char>(f)),
                                    std::istreambuf_iterator<char>());
    REQUIRE(jpeg.size() > 200);
    {
      write_file(dir / "gif/x_1.jpg", jpeg);
      write_file(dir / "gif/x_2.GIF", {'G', 'I', 'F', '8', '9', 'a'});
      CHECK_ERROR_MENTIONS(load_reference_folder(dir / "gif", 8), dir / "gif/x_2.GIF", "GIF");
    }
    {
      write_file(dir / "trunc/x_1.jpg", std::vector<uint8_t>(jpeg.begin(), jpeg.begin() + 200));
      CHECK_ERROR_MENTIONS(load_reference_folder(dir / "trunc", 8), dir / "trunc/x_1.jpg");
      // streamed: when the image is read
      const ImageDataset s =
          load_reference_folder(dir / "trunc", 8, {.residency = Residency::Stream});
      CHECK_ERROR_MENTIONS(s.rows(0, 1), dir / "trunc/x_1.jpg");
    }
    {
      write_file(dir / "junk/x_1.jpg", {0xFF, 0xD8, 0xFF, 0x00, 0x01, 0x02});
      CHECK_ERROR_MENTIONS(load_reference_folder(dir / "junk", 8), dir / "junk/x_1.jpg");
      write_file(dir / "text/x_1.png", {'h', 'e', 'l', 'l', 'o'});
      CHECK_ERROR_MENTIONS(load_reference_folder(dir / "text", 8), dir / "text/x_1.png");
    }
    fs::create_directories(dir / "empty/sub");
    write_text(dir / "empty/sub/notes.txt", "no images");
    CHECK_ERROR_MENTIONS(load_reference_folder(dir / "empty", 8), "holds no .jpg");
    CHECK_ERROR_MENTIONS(load_reference_folder(dir / "missing", 8), "not a directory");
    // extraneous bytes before a marker are a warning that PIL ignores: so does cm
    std::vector<uint8_t> padded = jpeg;
    const auto eoi = padded.end() - 2;  // FF D9
    padded.insert(eoi, {0x00, 0x11, 0x22});
    write_file(dir / "pad/x_1.jpg", padded);
    write_file(dir / "plain/x_1.jpg", jpeg);
    CHECK(values_of(load_reference_folder(dir / "pad", 8).images) ==
          values_of(load_reference_folder(dir / "plain", 8).images));
  }

  // tools/gen_random_crop_golden.py: the reference's random_crop_arr with its draws recorded.
  TEST_CASE("random crop: the reference's random_crop_arr, byte for byte, from the full image") {
    const std::string dir = kReferenceGolden + "reference_folder";
    const auto g = read_npz(kReferenceGolden + "random_crop.npz");
    const std::vector<int64_t> trials = g.at("trials").to_vector<int64_t>();  // [K, 3]
    const std::vector<int64_t> draws = g.at("draws").to_vector<int64_t>();    // [K, 3, 2]
    const int64_t K = g.at("trials").size(0);
    REQUIRE(K == 46);
    std::map<std::pair<int64_t, int>, ImageDataset> folders;  // (size, residency)
    ImageDataset square_rgb, square_gray;  // stored squares: no originals, crop the image itself
    square_rgb.images = planar(g.at("square_rgb")).unsqueeze(0).contiguous();
    square_gray.images = g.at("square_gray").unsqueeze(0).unsqueeze(0).contiguous();
    square_rgb.source = "square_rgb";
    square_gray.source = "square_gray";
    std::set<int64_t> halved;  // sizes at which some image was halved with BOX first
    for (int64_t k = 0; k < K; ++k) {
      CAPTURE(k);
      const int64_t source = trials[size_t(3 * k)], size = trials[size_t(3 * k + 1)],
                    index = trials[size_t(3 * k + 2)];
      // replays the trial's draws, checking that cm asks for the ranges the reference asked for
      int calls = 0;
      auto replay = [&](int64_t n) -> int64_t {
        REQUIRE(calls < 3);
        const size_t at = size_t(6 * k + 2 * calls++);
        CHECK(n == draws[at]);
        return draws[at + 1];
      };
      const Tensor want = g.at("crop_" + std::to_string(k));
      const Tensor want_chw = want.dim() == 3 ? planar(want) : want.unsqueeze(0);
      if (source == 0) {
        for (Residency r : {Residency::Memory, Residency::Stream}) {
          CAPTURE(int(r));
          auto it = folders.find({size, int(r)});
          if (it == folders.end())
            it = folders
                     .emplace(std::pair{size, int(r)},
                              load_reference_folder(dir, size, {.residency = r}))
                     .first;
          const ImageDataset& ds = it->second;
          CHECK(ds.reader);  // in memory too: the originals are kept for the crops
          calls = 0;
          Tensor got = zeros({3, size, size}, {.dtype = DType::u8});
          ds.read_random_crop(index, replay, got.data<uint8_t>());
          CHECK(calls == 3);
          CHECK(values_of(got) == values_of(want_chw));
          if (draws[size_t(6 * k)] + size < ds.reader->original(index).size(1) / 2)
            halved.insert(size);
        }
      } else {
        const ImageDataset& ds = source == 1 ? square_rgb : square_gray;
        CHECK(ds.height() == size);
        Tensor got = zeros({ds.channels(), size, size}, {.dtype = DType::u8});
        ds.read_random_crop(0, replay, got.data<uint8_t>());
        CHECK(calls == 3);
        CHECK(values_of(got) == values_of(want_chw));
        calls = 0;
        CHECK(values_of(random_crop_arr(ds.images.select(0, 0), size, replay)) ==
              values_of(want_chw));
      }
    }
    CHECK(halved.count(8) == 1);
    // a randrange out of its range is caught, not read past the image
    CHECK_ERROR_MENTIONS(
        random_crop_arr(square_rgb.images.select(0, 0), 16, [](int64_t n) { return n; }),
        "randrange(");
    CHECK_ERROR_MENTIONS(random_crop_arr(zeros({3, 4, 4}), 4, [](int64_t) { return 0; }),
                         "u8 [C, H, W]");
    // a stored image that is not square has no square crop of its size
    ImageDataset wide;
    wide.images = zeros({2, 1, 6, 8}, {.dtype = DType::u8});
    wide.source = "wide";
    Tensor dst = zeros({1, 6, 8}, {.dtype = DType::u8});
    CHECK_ERROR_MENTIONS(wide.read_random_crop(
                             0, [](int64_t) { return 0; }, dst.data<uint8_t>()),
                         "'wide'", "square", "8×6");
    CHECK_ERROR_MENTIONS(Loader(wide, {.batch_size = 1, .random_crop = true}), "'wide'",
                         "random_crop", "8×6");
  }

  TEST_CASE(
      "Loader: random crops are a pure function of (seed, epoch, position), before the flip") {
    const std::string dir = kReferenceGolden + "reference_folder";
    const ImageDataset mem = load_reference_folder(dir, 8, {.residency = Residency::Memory});
    const ImageDataset str = load_reference_folder(dir, 8, {.residency = Residency::Stream});
    const int64_t n = mem.size(), B = 3;
    REQUIRE(n == 6);
    const uint64_t seed = 11;
    // the documented draws: lanes 0, 1, 2 of Philox(key seed + 0x9E3779B97F4A7C15, counter (p, e))
    auto crop_of = [&](int64_t row, uint64_t epoch, uint64_t p) {
      const uint64_t key = seed + 0x9E3779B97F4A7C15ull;
      const Philox4 r = philox4x32_10(
          Philox4{{uint32_t(p), uint32_t(p >> 32), uint32_t(epoch), uint32_t(epoch >> 32)}},
          uint32_t(key), uint32_t(key >> 32));
      int lane = 0;
      Tensor out = zeros({3, 8, 8}, {.dtype = DType::u8});
      mem.read_random_crop(
          row, [&](int64_t m) { return int64_t((uint64_t(r.v[lane++]) * uint64_t(m)) >> 32); },
          out.data<uint8_t>());
      return to(sub(div(to(out, DType::f64), 127.5), 1.0), DType::f32);  // the loader rounds once
    };
    Loader a(mem, {.batch_size = B, .seed = seed, .random_crop = true, .prefetch = false});
    Loader b(str, {.batch_size = B, .seed = seed, .random_crop = true, .read_threads = 3});
    Loader flipped(mem, {.batch_size = B, .seed = seed, .random_flip = true, .random_crop = true});
    Loader plain(mem, {.batch_size = B, .seed = seed});
    std::vector<Batch> seen;
    int mirrored = 0, differs_from_centre = 0;
    for (int step = 0; step < 6; ++step) {
      CAPTURE(step);
      const Batch x = a.next(), y = b.next(), f = flipped.next(), c = plain.next();
      CHECK(max_abs_diff(x.images, y.images) == 0);  // residency, threads and prefetch: no matter
      const std::vector<int64_t> rows = x.indices.to_vector<int64_t>();
      CHECK(rows == c.indices.to_vector<int64_t>());  // the crop does not change the order
      for (int64_t k = 0; k < B; ++k) {
        const uint64_t p = x.position.index * uint64_t(B) + uint64_t(k);
        const Tensor want = crop_of(rows[size_t(k)], x.position.epoch, p);
        CHECK(max_abs_diff(x.images.select(0, k), want) == 0);
        // with flips: the same crop, mirrored where the flip bit says
        const Tensor fk = f.images.select(0, k);
        if (max_abs_diff(fk, want) != 0) {
          CHECK(max_abs_diff(
                    fk, index_select(want, 2,
                                     from_vector<int64_t>({7, 6, 5, 4, 3, 2, 1, 0}, {8}))) == 0);
          ++mirrored;
        }
        if (max_abs_diff(want, c.images.select(0, k)) != 0) ++differs_from_centre;
      }
      seen.push_back(x);
    }
    CHECK(mirrored > 0);
    CHECK(differs_from_centre > 12);
    // another epoch crops an image differently
    CHECK(max_abs_diff(crop_of(0, 0, 0), crop_of(0, 1, 0)) +
              max_abs_diff(crop_of(1, 0, 1), crop_of(1, 1, 1)) >
          0);
    // resume and shards: the batches of the uninterrupted run
    Loader resumed(str, {.batch_size = B, .seed = seed, .random_crop = true}, seen[3].position);
    CHECK(max_abs_diff(resumed.next().images, seen[3].images) == 0);
    for (int64_t s = 0; s < 3; ++s) {
      Loader shard(
          mem,
          {.batch_size = B, .seed = seed, .random_crop = true, .shard_index = s, .shard_count = 3},
          seen[5].position);
      CHECK(max_abs_diff(shard.next().images, seen[5].images.narrow(0, s, 1)) == 0);
    }
    // a stored square data set (digits) is scaled up and cropped back
    Loader d(load_dataset("digits"), {.batch_size = 16, .seed = 2, .random_crop = true});
    Loader dp(load_dataset("digits"), {.batch_size = 16, .seed = 2});
    const Batch dc = d.next(), dpl = dp.next();
    CHECK(dc.images.shape() == Shape{16, 1, 8, 8});
    CHECK(max_abs_diff(dc.images, dpl.images) > 0);
  }
}  // TEST_SUITE
