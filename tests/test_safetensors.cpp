// safetensors checkpoints (nn/safetensors.h) and atomic writes (nn/atomic_file.h): bit-exact round
// trips of every dtype, files made in Python (by hand and by the safetensors package) read and
// reproduced byte for byte, every malformed-file case, zero copy, atomic replacement, module I/O.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "helpers.h"
#include "nn/atomic_file.h"
#include "nn/safetensors.h"

using namespace cm;
using namespace cm::nn;
using namespace cm::test;
namespace fs = std::filesystem;

namespace {

// A scratch directory for this process, removed at exit.
struct ScratchDir {
  fs::path dir;
  ScratchDir() {
    dir = fs::temp_directory_path() / ("cm_test_safetensors_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};
std::string scratch(const std::string& name) {
  static ScratchDir d;
  return (d.dir / name).string();
}

std::string golden(const std::string& name) {
  return std::string(CM_SOURCE_DIR) + "/tests/golden/" + name;
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  REQUIRE_MESSAGE(f.good(), "cannot read ", path);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
  REQUIRE(f.good());
}

// The 8-byte little-endian length, the header, the buffer.
std::string make_file(const std::string& header, const std::string& buffer,
                      std::optional<uint64_t> n = {}) {
  const uint64_t len = n.value_or(header.size());
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[size_t(i)] = char((len >> (8 * i)) & 0xff);
  return out + header + buffer;
}

// Raw bytes of a tensor's values (host, row-major).
std::string raw(const Tensor& t) {
  const Tensor h = contiguous(to(t, Device::cpu()));
  return std::string(static_cast<const char*>(h.data_ptr()), h.nbytes());
}

// A tensor whose elements have exactly these bit patterns.
template <class Bits>
Tensor from_bits(const std::vector<Bits>& bits, const Shape& shape, DType dt) {
  REQUIRE(sizeof(Bits) == dtype_size(dt));
  REQUIRE(int64_t(bits.size()) == shape_numel(shape));
  Tensor t = empty(shape, {.dtype = dt});
  if (!bits.empty()) std::memcpy(t.data_ptr(), bits.data(), bits.size() * sizeof(Bits));
  return t;
}

const std::string kEAcute = "\xc3\xa9";  // é in UTF-8

// The tensors of tools/gen_safetensors_goldens.py (TENSORS), from the same bit patterns.
std::map<std::string, Tensor> golden_tensors() {
  std::map<std::string, Tensor> m;
  m["f32"] = from_bits<uint32_t>({0x00000000, 0x80000000, 0x3FC00000, 0xC0100000, 0x7F7FFFFF,
                                  0x00000001, 0x7F800000, 0x7FC00000},
                                 {2, 4}, DType::f32);
  m["f64"] = from_bits<uint64_t>({0x3FD5555555555555, 0xFFE1CCF385EBC8A0, 0x0000000000000001}, {3},
                                 DType::f64);
  m["f16"] = from_bits<uint16_t>({0x3C00, 0xC000, 0x7BFF, 0x0001, 0x7C00}, {5}, DType::f16);
  m["bf16"] = from_bits<uint16_t>({0x3F80, 0xC040, 0x7F7F, 0x0001, 0xFF80}, {5}, DType::bf16);
  m["i32"] = from_vector<int32_t>({0, -1, 2147483647, std::numeric_limits<int32_t>::min()}, {2, 2});
  m["i64"] = from_vector<int64_t>(
      {0, std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max()}, {3});
  m["u8"] = from_vector<uint8_t>({0, 1, 127, 255}, {4});
  m["bool"] = from_vector(std::vector<bool>{true, false, true}, {3}, {.dtype = DType::b8});
  m["scalar"] = from_bits<uint32_t>({0x40200000}, {}, DType::f32);
  m["empty"] = empty({0, 3}, {.dtype = DType::f32});
  m["nested.name." + kEAcute] = from_bits<uint64_t>({0xBFE0000000000000}, {1}, DType::f64);
  m["q\"\\"] = from_vector<int32_t>({7}, {1});
  return m;
}
const std::map<std::string, std::string> kGoldenMetadata = {
    {"format", "pt"}, {"note", "line1\nline2 \"q\" " + kEAcute}};

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// Files in the scratch directory whose name contains `part`.
std::vector<std::string> files_containing(const std::string& dir, const std::string& part) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir))
    if (contains(e.path().filename().string(), part)) out.push_back(e.path().string());
  return out;
}

// A tiny module: two parameters and a buffer, and a parent holding it plus its own parameter.
struct Tiny : Module {
  Tensor weight, bias, running;
  Tiny(int64_t in, int64_t out) {
    weight = zeros({out, in});
    bias = zeros({out});
    running = zeros({out});
    register_parameter("weight", weight);
    register_parameter("bias", bias);
    register_buffer("running", running);
  }
};
struct Outer : Module {
  std::shared_ptr<Tiny> lin;
  Tensor scale;
  Outer() {
    lin = register_module("lin", std::make_shared<Tiny>(3, 2));
    scale = ones({1});
    register_parameter("scale", scale);
  }
};
// Fills every tensor of m with distinct values from seed.
void randomize(Module& m, uint64_t seed) {
  NoGradGuard ng;
  for (auto& [n, t] : m.state_dict()) {
    Tensor v = randn_input(t.shape(), seed++, Layout::Contiguous, t.dtype());
    Tensor dst = t;
    copy_(dst, v);
  }
}

}  // namespace

TEST_SUITE("nn") {
  TEST_CASE("safetensors: dtype names") {
    CHECK(std::string(safetensors_dtype_name(DType::f32)) == "F32");
    CHECK(std::string(safetensors_dtype_name(DType::f64)) == "F64");
    CHECK(std::string(safetensors_dtype_name(DType::f16)) == "F16");
    CHECK(std::string(safetensors_dtype_name(DType::bf16)) == "BF16");
    CHECK(std::string(safetensors_dtype_name(DType::i32)) == "I32");
    CHECK(std::string(safetensors_dtype_name(DType::i64)) == "I64");
    CHECK(std::string(safetensors_dtype_name(DType::u8)) == "U8");
    CHECK(std::string(safetensors_dtype_name(DType::b8)) == "BOOL");
  }

  TEST_CASE("safetensors: every dtype round-trips bit-exactly, with metadata") {
    const auto tensors = golden_tensors();
    const std::string path = scratch("roundtrip.safetensors");
    save_safetensors(path, tensors, kGoldenMetadata);
    const auto loaded = load_safetensors(path);
    REQUIRE(loaded.size() == tensors.size());
    for (const auto& [name, t] : tensors) {
      CAPTURE(name);
      REQUIRE(loaded.count(name));
      const Tensor& l = loaded.at(name);
      CHECK(l.dtype() == t.dtype());
      CHECK(l.shape() == t.shape());
      CHECK(l.device() == Device::cpu());
      CHECK(raw(l) == raw(t));
    }
    CHECK(SafetensorsFile(path).metadata() == kGoldenMetadata);
    // The values themselves (an independent reading of a few bit patterns).
    const auto f32 = loaded.at("f32").to_vector<double>();
    CHECK(f32[2] == 1.5);
    CHECK(f32[3] == -2.25);
    CHECK(f32[5] == std::ldexp(1.0, -149));
    CHECK(std::isinf(f32[6]));
    CHECK(std::isnan(f32[7]));
    CHECK(std::signbit(f32[1]));
    CHECK(loaded.at("f16").to_vector<double>() ==
          std::vector<double>{1, -2, 65504, std::ldexp(1.0, -24), INFINITY});
    CHECK(loaded.at("bf16").to_vector<double>()[1] == -3.0);
    CHECK(loaded.at("f64").to_vector<double>()[0] == 1.0 / 3.0);
    CHECK(loaded.at("i64").to_vector<int64_t>()[1] == std::numeric_limits<int64_t>::min());
    CHECK(loaded.at("u8").to_vector<int64_t>() == std::vector<int64_t>{0, 1, 127, 255});
    CHECK(loaded.at("bool").to_vector<int64_t>() == std::vector<int64_t>{1, 0, 1});

    // Random values of every dtype, larger shapes.
    std::map<std::string, Tensor> random;
    for (DType dt : {DType::f32, DType::f64, DType::f16, DType::bf16})
      random[dtype_name(dt)] = randn_input({3, 5}, 7, Layout::Contiguous, dt, 100.0);
    random["i32"] = randint(-1000000, 1000000, {4, 3}, {.dtype = DType::i32});
    random["i64"] = randint(-1000000000000LL, 1000000000000LL, {7}, {.dtype = DType::i64});
    random["u8"] = randint(0, 256, {2, 2, 3}, {.dtype = DType::u8});
    random["bool"] = gt(randn_input({9}, 3), 0.0);
    save_safetensors(path, random);
    const auto back = load_safetensors(path);
    for (const auto& [name, t] : random) {
      CAPTURE(name);
      CHECK(back.at(name).dtype() == t.dtype());
      CHECK(raw(back.at(name)) == raw(t));
    }
    CHECK(SafetensorsFile(path).metadata().empty());
  }

  TEST_CASE("safetensors: 0-d, zero-size and empty files") {
    const std::string path = scratch("small.safetensors");
    save_safetensors(path, {{"s", scalar_tensor(-4.5, {.dtype = DType::f64})},
                            {"z", empty({2, 0, 3}, {.dtype = DType::i64})},
                            {"z2", empty({0}, {.dtype = DType::bf16})}});
    SafetensorsFile f(path);
    CHECK(f.get("s").shape() == Shape{});
    CHECK(f.get("s").item<double>() == -4.5);
    CHECK(f.get("z").shape() == Shape{2, 0, 3});
    CHECK(f.get("z").dtype() == DType::i64);
    CHECK(f.get("z2").numel() == 0);
    CHECK(f.info("z").begin == f.info("z").end);

    // The reference writer's own test vectors (safetensors/src/tensor.rs, test_empty).
    const std::string none = scratch("none.safetensors");
    save_safetensors(none, {});
    CHECK(read_bytes(none) == make_file("{}      ", ""));
    CHECK(SafetensorsFile(none).names().empty());
    save_safetensors(none, {}, {{"framework", "pt"}});
    CHECK(read_bytes(none) == make_file("{\"__metadata__\":{\"framework\":\"pt\"}}     ", ""));
    CHECK(SafetensorsFile(none).metadata().at("framework") == "pt");
  }

  TEST_CASE("safetensors: non-contiguous inputs are written row-major") {
    const std::string path = scratch("layouts.safetensors");
    for (Layout layout : kLayouts) {
      CAPTURE(layout_name(layout));
      const Tensor a = randn_input({3, 4}, 11, layout, DType::f32);
      const Tensor b = randn_input({2, 3, 2}, 12, layout, DType::i64, 1000.0);
      const Tensor c =
          expand(randn_input({1, 3}, 13, Layout::Contiguous, DType::f16), {4, 3});  // stride 0
      const Tensor d = select(randn_input({4, 5}, 14, layout, DType::f64), 1, 2);   // offset
      save_safetensors(path, {{"a", a}, {"b", b}, {"c", c}, {"d", d}});
      const auto l = load_safetensors(path);
      for (const auto& [n, t] :
           std::map<std::string, Tensor>{{"a", a}, {"b", b}, {"c", c}, {"d", d}}) {
        CAPTURE(n);
        CHECK(l.at(n).shape() == t.shape());
        CHECK(l.at(n).to_vector<double>() == t.to_vector<double>());
        CHECK(raw(l.at(n)) == raw(clone(t)));
      }
    }
    // Tensors that require grad are saved as their values.
    Tensor g = randn_input({3}, 5);
    g.set_requires_grad(true);
    save_safetensors(path, {{"g", g}});
    CHECK(load_safetensors(path).at("g").to_vector<double>() == g.to_vector<double>());
  }

  TEST_CASE("safetensors: reads the files made in Python") {
    const auto expect = golden_tensors();
    SafetensorsFile f(golden("safetensors_handmade.safetensors"));
    CHECK(f.metadata() == kGoldenMetadata);
    // Buffer order: descending dtype rank, then name.
    CHECK(f.names() == std::vector<std::string>{"i64", "f64", "nested.name." + kEAcute, "empty",
                                                "f32", "scalar", "i32", "q\"\\", "bf16", "f16",
                                                "u8", "bool"});
    CHECK(f.data_start() % 8 == 0);
    for (const auto& [name, t] : expect) {
      CAPTURE(name);
      const Tensor g = f.get(name);
      CHECK(g.dtype() == t.dtype());
      CHECK(g.shape() == t.shape());
      CHECK(raw(g) == raw(t));
      CHECK(f.info(name).end - f.info(name).begin == t.nbytes());
      CHECK((f.data_start() + f.info(name).begin) % t.element_size() == 0);
    }
    CHECK(f.info("i64").dtype == "I64");
    CHECK(f.info("i64").begin == 0);
    CHECK(f.info("f64").begin == 24);

    SafetensorsFile r(
        golden("safetensors_reference.safetensors"));  // written by the safetensors package
    CHECK(r.metadata() == std::map<std::string, std::string>{{"format", "pt"}});
    CHECK(r.names() == f.names());
    for (const auto& [name, t] : expect) CHECK(raw(r.get(name)) == raw(t));
  }

  TEST_CASE("safetensors: cm writes the same bytes as Python") {
    const std::string path = scratch("same.safetensors");
    save_safetensors(path, golden_tensors(), kGoldenMetadata);
    CHECK(read_bytes(path) == read_bytes(golden("safetensors_handmade.safetensors")));
    save_safetensors(path, golden_tensors(), {{"format", "pt"}});
    CHECK(read_bytes(path) == read_bytes(golden("safetensors_reference.safetensors")));
    // The reference writer's test vector (test_serialization): "attn.0", F32 [1, 2, 3], 0..5.
    save_safetensors(path,
                     {{"attn.0", arange(0.0, 6.0, 1.0, {.dtype = DType::f32}).reshape({1, 2, 3})}});
    std::string data;
    for (float v : {0.f, 1.f, 2.f, 3.f, 4.f, 5.f})
      data.append(reinterpret_cast<const char*>(&v), 4);
    CHECK(read_bytes(path) ==
          make_file("{\"attn.0\":{\"dtype\":\"F32\",\"shape\":[1,2,3],\"data_offsets\":[0,24]}}",
                    data));
  }

  TEST_CASE("safetensors: conversions and dtypes without a cm equivalent") {
    const std::string path = golden("safetensors_extra_dtypes.safetensors");
    SafetensorsFile f(path);
    CHECK(f.data_start() % 8 != 0);  // unpadded header: nothing is aligned
    CHECK(f.names() ==
          std::vector<std::string>{"a_i8", "b_f64", "c_i16", "d_u16", "e_bool", "f_u32", "g_u64"});
    // F64 at buffer offset 3: read by copying.
    CHECK(f.get("b_f64").to_vector<double>() == std::vector<double>{1.5, -2.5});
    CHECK(f.get("e_bool").dtype() == DType::b8);
    CHECK(f.get("e_bool").to_vector<int64_t>() == std::vector<int64_t>{0, 1});

    for (const char* n : {"a_i8", "c_i16", "d_u16", "f_u32", "g_u64"}) {
      CAPTURE(n);
      const std::string msg = error_of([&] { f.get(n); });
      CHECK(contains(msg, n));
      CHECK(contains(msg, f.info(n).dtype));
      CHECK(contains(msg, path));
    }
    CHECK(f.get("a_i8", DType::i32).to_vector<int64_t>() == std::vector<int64_t>{-128, -1, 127});
    CHECK(f.get("a_i8", DType::i32).dtype() == DType::i32);
    CHECK(f.get("c_i16", DType::f32).to_vector<double>() ==
          std::vector<double>{-32768, 300, 32767});
    CHECK(f.get("d_u16", DType::i32).to_vector<int64_t>() == std::vector<int64_t>{0, 40000, 65535});
    CHECK(f.get("f_u32", DType::i64).to_vector<int64_t>() == std::vector<int64_t>{7, 4000000000});
    CHECK(f.get("g_u64", DType::f64).to_vector<double>() ==
          std::vector<double>{1.0, 9223372036854775807.0, 18446744073709551615.0});
    CHECK(f.get("c_i16", DType::b8).to_vector<int64_t>() == std::vector<int64_t>{1, 1, 1});
    // Integer targets must hold every value.
    CHECK(contains(error_of([&] { f.get("f_u32", DType::i32); }), "4000000000"));
    CHECK(contains(error_of([&] { f.get("g_u64", DType::i64); }), "does not fit"));
    CHECK(contains(error_of([&] { f.get("a_i8", DType::u8); }), "-128"));
    CHECK(contains(error_of([&] { f.get("d_u16", DType::u8); }), "does not fit"));

    // Native dtypes convert with cm's casts.
    SafetensorsFile h(golden("safetensors_handmade.safetensors"));
    const Tensor f16 = h.get("f16", DType::f32);
    CHECK(f16.dtype() == DType::f32);
    CHECK(f16.to_vector<double>() ==
          std::vector<double>{1, -2, 65504, std::ldexp(1.0, -24), INFINITY});
    CHECK(h.get("bf16", DType::f64).to_vector<double>()[1] == -3.0);
    CHECK(h.get("i32", DType::f64).to_vector<double>() ==
          std::vector<double>{0, -1, 2147483647, -2147483648.0});

    CHECK(contains(error_of([&] { h.get("nope"); }), "no tensor named \"nope\""));
  }

  TEST_CASE(
      "safetensors: zero-copy tensors alias a private mapping that outlives the file object") {
    const std::string path = scratch("alias.safetensors");
    const Tensor src = randn_input({4, 4}, 21, Layout::Contiguous, DType::f32);
    save_safetensors(path,
                     {{"w", src}, {"b", randn_input({3}, 22, Layout::Contiguous, DType::f64)}});
    const std::string before = read_bytes(path);
    Tensor a, b, copied;
    {
      SafetensorsFile f(path);
      a = f.get("w");
      b = f.get("w");
      copied = f.get("w", DType::f64);
      CHECK(a.data_ptr() == b.data_ptr());  // both alias the mapping
      CHECK(f.get("w", std::nullopt).storage()->nbytes() == 64);
    }
    // The file object is gone; the mapping lives on in the tensors.
    CHECK(raw(a) == raw(src));
    NoGradGuard ng;
    add_(a, 1.0);  // copy on write: the file does not change
    CHECK(read_bytes(path) == before);
    CHECK(raw(load_safetensors(path).at("w")) == raw(src));
    CHECK(copied.to_vector<double>() == src.to_vector<double>());
    // Replacing the file (rename) leaves the old mapping intact.
    save_safetensors(path, {{"w", zeros({4, 4})}});
    CHECK(allclose(a, add(src, 1.0)));
    CHECK(load_safetensors(path).at("w").to_vector<double>() == std::vector<double>(16, 0.0));
  }

  TEST_CASE("safetensors: malformed files are rejected with clear messages") {
    const std::string f4 = std::string(4, '\x01');
    const std::string ok_entry = R"("w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})";
    struct Case {
      std::string label;
      std::string bytes;
      std::vector<std::string> words;
    };
    const std::vector<Case> cases = {
        {"empty file", "", {"too short"}},
        {"shorter than 8 bytes", "abc", {"too short"}},
        {"header length larger than the file",
         make_file("{}", "", 1000),
         {"header length 1000", "larger than the file"}},
        {"header length above the limit", make_file("{}", "", 100000001), {"exceeds the limit"}},
        {"header length 2^64-1", make_file("{}", "", ~uint64_t(0)), {"exceeds the limit"}},
        {"empty header", make_file("", ""), {"does not start with '{'"}},
        {"header starting with a space", make_file(" {}", ""), {"does not start with '{'"}},
        {"header that is an array", make_file("[1,2]", ""), {"does not start with '{'"}},
        {"header not JSON", make_file("{\"w\":", ""), {"not valid JSON"}},
        {"garbage after the JSON", make_file("{}x", ""), {"not valid JSON"}},
        {"NUL padding", make_file(std::string("{}\0\0", 4), ""), {"not valid JSON"}},
        {"invalid UTF-8", make_file("{\"\xff\":1}", ""), {"not valid JSON"}},
        {"entry not an object", make_file(R"({"w":[1]})", ""), {"\"w\"", "JSON object"}},
        {"missing dtype",
         make_file(R"({"w":{"shape":[1],"data_offsets":[0,4]}})", f4),
         {"\"w\"", "missing \"dtype\""}},
        {"missing shape",
         make_file(R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", f4),
         {"\"w\"", "missing \"shape\""}},
        {"missing data_offsets",
         make_file(R"({"w":{"dtype":"F32","shape":[1]}})", f4),
         {"\"w\"", "missing \"data_offsets\""}},
        {"unexpected field",
         make_file(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}})", f4),
         {"\"w\"", "unexpected field \"x\""}},
        {"dtype not a string",
         make_file(R"({"w":{"dtype":5,"shape":[1],"data_offsets":[0,4]}})", f4),
         {"\"w\"", "dtype must be a string"}},
        {"shape not an array",
         make_file(R"({"w":{"dtype":"F32","shape":"1","data_offsets":[0,4]}})", f4),
         {"\"w\"", "shape must be an array"}},
        {"negative shape",
         make_file(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", f4),
         {"\"w\"", "shape[0]", "negative"}},
        {"non-integer shape",
         make_file(R"({"w":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}})", f4),
         {"\"w\"", "shape[0]", "non-negative integer"}},
        {"boolean shape",
         make_file(R"({"w":{"dtype":"F32","shape":[true],"data_offsets":[0,4]}})", f4),
         {"\"w\"", "non-negative integer"}},
        {"shape too large for int64",
         make_file(R"({"w":{"dtype":"U8","shape":[9223372036854775808],"data_offsets":[0,4]}})",
                   f4),
         {"\"w\"", "too large"}},
        {"byte count overflow",
         make_file(R"({"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,4]}})",
                   f4),
         {"\"w\"", "overflow"}},
        {"unknown dtype",
         make_file(R"({"w":{"dtype":"F128","shape":[1],"data_offsets":[0,4]}})", f4),
         {"\"w\"", "unknown dtype", "F128"}},
        {"unsupported dtype F8",
         make_file(R"({"w":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}})", f4),
         {"\"w\"", "F8_E4M3", "not supported"}},
        {"data_offsets not an array",
         make_file(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":{"a":0}}})", f4),
         {"\"w\"", "pair"}},
        {"data_offsets of one",
         make_file(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", f4),
         {"\"w\"", "pair"}},
        {"data_offsets of three",
         make_file(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4,4]}})", f4),
         {"\"w\"", "pair"}},
        {"negative offset",
         make_file(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", f4),
         {"\"w\"", "negative"}},
        {"begin > end",
         make_file(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}})", f4),
         {"\"w\"", "begin > end"}},
        {"size mismatch",
         make_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", f4),
         {"\"w\"", "size mismatch"}},
        {"offsets past the end",
         make_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", f4),
         {"\"w\"", "past the end"}},
        {"huge offsets",
         make_file(
             R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[18446744073709551615,18446744073709551615]}})",
             ""),
         {"\"w\"", "past the end"}},
        {"same range twice",
         make_file("{" + ok_entry + R"(,"v":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                   f4),
         {"overlap"}},
        {"partial overlap",
         make_file(
             R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
             std::string(12, '\0')),
         {"\"b\"", "overlap", "\"a\""}},
        {"hole",
         make_file(
             R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
             std::string(12, '\0')),
         {"hole", "[4, 8)"}},
        {"hole at the start",
         make_file(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", f4 + f4),
         {"hole"}},
        {"trailing bytes",
         make_file("{" + ok_entry + "}", f4 + "xy"),
         {"2 trailing bytes", "fully covered"}},
        {"buffer without tensors", make_file("{}", "x"), {"1 trailing bytes"}},
        {"duplicate tensor name",
         make_file("{" + ok_entry + "," + ok_entry + "}", f4),
         {"duplicate key \"w\""}},
        {"duplicate field",
         make_file(R"({"w":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}})", f4),
         {"duplicate key \"dtype\""}},
        {"duplicate metadata key",
         make_file(R"({"__metadata__":{"k":"a","k":"b"}})", ""),
         {"duplicate key \"k\""}},
        {"metadata not an object",
         make_file(R"({"__metadata__":"x"})", ""),
         {"__metadata__", "object"}},
        {"metadata value not a string",
         make_file(R"({"__metadata__":{"k":1}})", ""),
         {"__metadata__", "\"k\"", "number"}},
        {"nested metadata",
         make_file(R"({"__metadata__":{"k":{"a":"b"}}})", ""),
         {"__metadata__", "\"k\""}},
        {"absurd nesting",
         make_file("{\"w\":" + std::string(100, '[') + std::string(100, ']') + "}", ""),
         {"deeper"}},
        {"zero-size with huge dims (fuzzing finding)",
         make_file(R"({"e":{"dtype":"F32","shape":[0,4611686018427387904,4611686018427387904],)"
                   R"("data_offsets":[0,0]}})",
                   ""),
         {"\"e\"", "too large"}},
        {"100,000 levels of nesting",
         make_file("{\"w\":" + std::string(100000, '[') + std::string(100000, ']') + "}", ""),
         {"deeper"}},
    };
    for (size_t i = 0; i < cases.size(); ++i) {
      const Case& c = cases[i];
      CAPTURE(c.label);
      const std::string path = scratch("bad" + std::to_string(i) + ".safetensors");
      write_bytes(path, c.bytes);
      const std::string msg = error_of([&] { SafetensorsFile f(path); });
      CAPTURE(msg);
      CHECK(contains(msg, path));
      for (const auto& w : c.words) CHECK_MESSAGE(contains(msg, w), "missing \"", w, "\"");
      CHECK_THROWS_AS(load_safetensors(path), Error);
    }

    // A well-formed file with an invalid BOOL byte: the tensor, not the file, is refused.
    const std::string path = scratch("badbool.safetensors");
    write_bytes(path, make_file(R"({"m":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]}})",
                                std::string("\x01\x02\x00", 3)));
    SafetensorsFile f(path);
    const std::string msg = error_of([&] { f.get("m"); });
    CHECK(contains(msg, path));
    CHECK(contains(msg, "\"m\""));
    CHECK(contains(msg, "0 or 1"));

    // Not a file at all.
    CHECK(contains(error_of([&] { SafetensorsFile g(scratch("missing.safetensors")); }),
                   "cannot open"));
    CHECK(contains(
        error_of([&] { SafetensorsFile g(fs::path(scratch("x")).parent_path().string()); }),
        "not a regular file"));
  }

  TEST_CASE("safetensors: a FIFO is refused, naming it, without blocking") {
    // The reader runs in a thread; if it blocks in open() (waiting for a writer), the FIFO's write
    // end is opened without blocking and closed after 10 s so that it sees end of file and the
    // test fails instead of hanging.
    const std::string fifo = scratch("ckpt.fifo");
    ::unlink(fifo.c_str());
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    auto result =
        std::async(std::launch::async, [&] { return error_of([&] { SafetensorsFile f(fifo); }); });
    if (result.wait_for(std::chrono::seconds(10)) == std::future_status::timeout) {
      while (result.wait_for(std::chrono::milliseconds(50)) == std::future_status::timeout) {
        const int fd = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK);
        if (fd >= 0) ::close(fd);
      }
      FAIL_CHECK("SafetensorsFile blocked on the FIFO");
    }
    const std::string msg = result.get();
    CHECK_MESSAGE(contains(msg, fifo), msg);
    CHECK_MESSAGE(contains(msg, "FIFO"), msg);
  }

  TEST_CASE("safetensors: truncated and corrupted files fail cleanly") {
    // Every truncation of a valid file, and random byte changes: a cm::Error or a valid file whose
    // tensors all load, never a crash or another exception (run under ASan in the sanitizer build).
    const std::string good = read_bytes(golden("safetensors_handmade.safetensors"));
    const std::string path = scratch("fuzz.safetensors");
    for (size_t len = 0; len < good.size(); ++len) {
      write_bytes(path, good.substr(0, len));
      CHECK_THROWS_AS(SafetensorsFile{path}, Error);
    }
    std::mt19937 rng(1234);
    int opened = 0, rejected = 0;
    for (int trial = 0; trial < 400; ++trial) {
      std::string bad = good;
      const int changes = 1 + int(rng() % 3);
      for (int k = 0; k < changes; ++k) {
        // Mostly the header, where the structure is.
        const size_t at =
            rng() % 4 ? rng() % std::min<size_t>(bad.size(), 8 + 500) : rng() % bad.size();
        bad[at] = char(rng() % 4 ? "{}[],:\"0123456789 -eE."[rng() % 22] : char(rng()));
      }
      write_bytes(path, bad);
      try {
        SafetensorsFile f(path);
        ++opened;
        for (const auto& n : f.names()) {
          try {
            (void)f.get(n);
          } catch (const Error&) {
          }
        }
      } catch (const Error&) {
        ++rejected;
      }
    }
    CHECK(rejected > 0);
    CHECK(opened + rejected == 400);
  }

  TEST_CASE("safetensors: the writer refuses what it cannot write") {
    const std::string path = scratch("refused.safetensors");
    CHECK(contains(error_of([&] {
                     save_safetensors(path, {{"__metadata__", zeros({1})}});
                   }),
                   "reserved"));
    CHECK(contains(error_of([&] {
                     save_safetensors(path, {{"u", Tensor()}});
                   }),
                   "\"u\" is undefined"));
    CHECK(contains(error_of([&] { save_safetensors(path, {{"bad\xff", zeros({1})}}); }), "UTF-8"));
    CHECK(contains(error_of([&] { save_safetensors(path, {}, {{"k", "\xfe"}}); }), "UTF-8"));
    CHECK(!fs::exists(path));
    CHECK(files_containing(fs::path(path).parent_path().string(), "refused").empty());
  }

  TEST_CASE("write_atomic: the target is replaced as a whole") {
    const std::string path = scratch("atomic.bin");
    const std::string dir = fs::path(path).parent_path().string();
    write_atomic(path, std::string_view("old contents"));
    CHECK(read_bytes(path) == "old contents");
    const std::string big(1 << 20, 'n');
    write_atomic(path, [&](std::FILE* f) { write_all(f, big.data(), big.size(), path); });
    CHECK(read_bytes(path) == big);
    CHECK(files_containing(dir, "atomic.bin.tmp").empty());

    // A writer that fails midway: the old file stays, the temporary goes, the error propagates.
    write_atomic(path, std::string_view("old contents"));
    struct Boom {};
    CHECK_THROWS_AS(write_atomic(path,
                                 [&](std::FILE* f) {
                                   write_all(f, big.data(), big.size() / 2, path);
                                   throw Boom{};
                                 }),
                    Boom);
    CHECK(read_bytes(path) == "old contents");
    CHECK(files_containing(dir, "atomic.bin.tmp").empty());

    // A crash midway (a child process that dies while writing): the old file stays whole.
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      write_atomic(path, [&](std::FILE* f) {
        write_all(f, big.data(), big.size() / 2, path);
        std::fflush(f);
        ::_exit(3);
      });
      ::_exit(0);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 3);
    CHECK(read_bytes(path) == "old contents");
    const auto stray = files_containing(dir, "atomic.bin.tmp." + std::to_string(pid));
    CHECK(stray.size() == 1);  // what a crash leaves: the half-written temporary, never the target
    for (const auto& s : stray) fs::remove(s);
  }

  TEST_CASE("write_atomic: failures name the path and the reason") {
    const std::string missing_dir = scratch("no/such/dir/file.bin");
    std::string msg = error_of([&] { write_atomic(missing_dir, std::string_view("x")); });
    CHECK(contains(msg, missing_dir));
    CHECK(contains(msg, std::strerror(ENOENT)));

    const std::string plain = scratch("plainfile");
    write_bytes(plain, "x");
    msg = error_of([&] { write_atomic(plain + "/file.bin", std::string_view("x")); });
    CHECK(contains(msg, plain + "/file.bin"));
    CHECK(contains(msg, std::strerror(ENOTDIR)));

    // The rename fails (the target is a non-empty directory): the temporary is removed.
    const std::string dir_target = scratch("dir_target");
    fs::create_directories(dir_target + "/inside");
    msg = error_of([&] { save_safetensors(dir_target, {{"w", zeros({2})}}); });
    CHECK(contains(msg, dir_target));
    CHECK(contains(msg, "renaming"));
    CHECK(files_containing(fs::path(dir_target).parent_path().string(), "dir_target.tmp").empty());

    // An unwritable directory (permissions do not bind root, so only checked as a normal user).
    if (::geteuid() != 0) {
      const std::string ro = scratch("readonly");
      fs::create_directories(ro);
      fs::permissions(ro, fs::perms::owner_read | fs::perms::owner_exec);
      msg = error_of([&] { save_safetensors(ro + "/m.safetensors", {{"w", zeros({2})}}); });
      CHECK(contains(msg, ro + "/m.safetensors"));
      CHECK(contains(msg, std::strerror(EACCES)));
      fs::permissions(ro, fs::perms::owner_all);
    }
  }

  TEST_CASE("save_module / load_module") {
    const std::string path = scratch("module.safetensors");
    Outer a;
    randomize(a, 100);
    save_module(path, a, {{"step", "42"}});
    CHECK(SafetensorsFile(path).metadata().at("step") == "42");
    CHECK(SafetensorsFile(path).names().size() == 4);

    Outer b;
    load_module(path, b);
    for (const auto& [n, t] : a.state_dict()) {
      CAPTURE(n);
      CHECK(raw(b.state_dict().at(n)) == raw(t));
    }
    // Parameters stay trainable leaves; the buffer does not require grad.
    CHECK(b.lin->weight.requires_grad());
    CHECK(b.lin->weight.is_leaf());
    CHECK(b.scale.requires_grad());
    CHECK(!b.lin->running.requires_grad());

    // A checkpoint in another dtype converts to the module's.
    std::map<std::string, Tensor> f64_state;
    for (const auto& [n, t] : a.state_dict()) f64_state[n] = to(detach(t), DType::f64);
    save_safetensors(path, f64_state);
    Outer c;
    load_module(path, c);
    CHECK(c.lin->weight.dtype() == DType::f32);
    CHECK(c.lin->weight.to_vector<double>() == a.lin->weight.to_vector<double>());
  }

  TEST_CASE("load_module: strict mismatch report") {
    const std::string path = scratch("mismatch.safetensors");
    Outer ref;
    randomize(ref, 200);
    auto state = ref.state_dict();
    state.erase("lin.bias");              // missing
    state["lin.weight"] = zeros({3, 3});  // mis-shaped
    state["extra.thing"] = zeros({1});    // unexpected
    save_safetensors(path, state);

    Outer m;
    randomize(m, 300);
    const std::string before = raw(m.scale);
    const std::string msg = error_of([&] { load_module(path, m); });
    CAPTURE(msg);
    CHECK(contains(msg, path));
    CHECK(contains(msg, "missing: lin.bias"));
    CHECK(contains(msg, "unexpected: extra.thing"));
    CHECK(contains(msg, "mis-shaped: lin.weight"));
    CHECK(contains(msg, "[3, 3]"));
    CHECK(raw(m.scale) == before);  // nothing was loaded

    // Not strict: missing and unexpected entries are allowed, a wrong shape is not.
    CHECK(contains(error_of([&] { load_module(path, m, false); }), "mis-shaped: lin.weight"));
    state.erase("lin.weight");
    save_safetensors(path, state);
    load_module(path, m, false);
    CHECK(raw(m.scale) == raw(ref.scale));
    CHECK(raw(m.lin->running) == raw(ref.lin->running));
    CHECK(raw(m.lin->bias) != raw(ref.lin->bias));  // missing: untouched
  }
}
