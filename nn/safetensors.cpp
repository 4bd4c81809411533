// safetensors: the dtype table, the strict header parser behind SafetensorsFile (mmap), the
// writer, and the module helpers.
#include "nn/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <tuple>

#include "nn/atomic_file.h"
#include "nn/file_io.h"

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; cm reads and writes it as host memory");

namespace cm::nn {

namespace {

using json = nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the reference reader's limit
// A valid header nests 3 deep; deeper nesting is refused while parsing (the SAX callback below),
// before nlohmann builds, copies or destroys anything recursively.
constexpr int kMaxHeaderDepth = 64;

// ---- dtypes -------------------------------------------------------------------------------------
// `rank` is the position in the reference's Dtype enum (BOOL < U8 < I8 < F8_E5M2 < F8_E4M3 < I16 <
// U16 < F16 < BF16 < I32 < U32 < F32 < F64 < I64 < U64); its writer orders tensors by descending
// rank, then name, and so does ours. `cm` is the cm dtype the data is read as, when there is one.
struct FileDType {
  const char* name;
  size_t size;
  int rank;
  std::optional<DType> cm;
};

constexpr FileDType kFileDTypes[] = {
    {"BOOL", 1, 0, DType::b8},    {"U8", 1, 1, DType::u8},     {"I8", 1, 2, std::nullopt},
    {"I16", 2, 5, std::nullopt},  {"U16", 2, 6, std::nullopt}, {"F16", 2, 7, DType::f16},
    {"BF16", 2, 8, DType::bf16},  {"I32", 4, 9, DType::i32},   {"U32", 4, 10, std::nullopt},
    {"F32", 4, 11, DType::f32},   {"F64", 8, 12, DType::f64},  {"I64", 8, 13, DType::i64},
    {"U64", 8, 14, std::nullopt},
};
constexpr const char* kSupportedList = "BOOL U8 I8 I16 U16 I32 U32 I64 U64 F16 BF16 F32 F64";
// safetensors dtypes that cm knows of but does not read.
constexpr const char* kUnsupported[] = {"F8_E5M2",     "F8_E4M3",     "F8_E8M0",
                                        "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F4",
                                        "F6_E2M3",     "F6_E3M2",     "C64"};

const FileDType* find_file_dtype(const std::string& name) {
  for (const auto& d : kFileDTypes)
    if (name == d.name) return &d;
  return nullptr;
}

const FileDType& file_dtype_of(DType t) {
  for (const auto& d : kFileDTypes)
    if (d.cm == t) return d;
  CM_FAIL("safetensors: no file dtype for ", dtype_name(t));
}

// ---- the mapping --------------------------------------------------------------------------------
struct Mapping {
  void* base = nullptr;
  size_t size = 0;
  Mapping() = default;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    if (base) ::munmap(base, size);
  }
  const uint8_t* bytes() const { return static_cast<const uint8_t*>(base); }
};

// Opens and maps the whole file: private and writable, so tensors aliasing it can be modified in
// place without touching the file (copy on write); the file descriptor is read-only.
std::shared_ptr<Mapping> map_file(const std::string& path) {
  // Never blocks: a FIFO, a device or a directory is refused naming the path.
  const int fd = open_regular_file(path, "safetensors");
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    CM_FAIL("safetensors '", path, "': cannot stat: ", std::strerror(err));
  }
  const uint64_t size = uint64_t(st.st_size);
  if (size < 8) {
    ::close(fd);
    CM_FAIL("safetensors '", path, "': file is too short (", size,
            " bytes): it must start with an 8-byte header length");
  }
  auto m = std::make_shared<Mapping>();
  void* p = ::mmap(nullptr, size_t(size), PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  const int err = errno;
  ::close(fd);  // the mapping keeps the file open
  CM_CHECK(p != MAP_FAILED, "safetensors '", path, "': cannot mmap ", size,
           " bytes: ", std::strerror(err));
  m->base = p;
  m->size = size_t(size);
  return m;
}

// ---- header parsing -----------------------------------------------------------------------------
std::string json_type(const json& j) {
  return j.type_name();
}

// A non-negative integer that fits `limit`, or an error naming `what`.
uint64_t to_uint(const json& j, uint64_t limit, const std::string& err_prefix,
                 const std::string& what) {
  CM_CHECK(j.is_number_integer(), err_prefix, what, " must be a non-negative integer, got ",
           j.is_number() ? j.dump() : json_type(j));
  CM_CHECK(j.is_number_unsigned(), err_prefix, what,
           " must be a non-negative integer, got negative ", j.dump());
  const uint64_t v = j.get<uint64_t>();
  CM_CHECK(v <= limit, err_prefix, what, " ", v, " is too large (limit ", limit, ")");
  return v;
}

// Parses the header JSON, throwing on duplicate keys at any level (nlohmann keeps one of them
// silently) and on absurd nesting.
json parse_header(const std::string& path, const char* begin, const char* end) {
  std::vector<std::set<std::string>> keys;  // one set per open object or array (arrays: empty)
  auto cb = [&](int /*depth*/, json::parse_event_t ev, json& parsed) {
    switch (ev) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        keys.emplace_back();
        CM_CHECK(int(keys.size()) <= kMaxHeaderDepth, "safetensors '", path,
                 "': header nests deeper than ", kMaxHeaderDepth, " levels");
        break;
      case json::parse_event_t::object_end:
      case json::parse_event_t::array_end:
        if (!keys.empty()) keys.pop_back();
        break;
      case json::parse_event_t::key: {
        const std::string& k = parsed.get_ref<const std::string&>();
        CM_CHECK(keys.empty() || keys.back().insert(k).second, "safetensors '", path,
                 "': duplicate key \"", k, "\" in the header",
                 keys.size() == 1 ? " (a tensor name may appear only once)" : "");
        break;
      }
      default:
        break;
    }
    return true;
  };
  try {
    return json::parse(begin, end, cb);
  } catch (const json::exception& e) {
    CM_FAIL("safetensors '", path, "': header is not valid JSON: ", e.what());
  }
}

SafetensorsInfo parse_entry(const std::string& path, const std::string& name, const json& e) {
  const std::string pre = "safetensors '" + path + "': tensor \"" + name + "\": ";
  CM_CHECK(e.is_object(), pre, "entry must be a JSON object, got ", json_type(e));
  for (const auto& [k, v] : e.items())
    CM_CHECK(k == "dtype" || k == "shape" || k == "data_offsets", pre, "unexpected field \"", k,
             "\" (entries have dtype, shape and data_offsets)");
  for (const char* f : {"dtype", "shape", "data_offsets"})
    CM_CHECK(e.contains(f), pre, "missing \"", f, "\"");

  SafetensorsInfo info;
  const json& dt = e["dtype"];
  CM_CHECK(dt.is_string(), pre, "dtype must be a string, got ", json_type(dt));
  info.dtype = dt.get<std::string>();
  const FileDType* fd = find_file_dtype(info.dtype);
  if (!fd) {
    const bool known = std::any_of(std::begin(kUnsupported), std::end(kUnsupported),
                                   [&](const char* u) { return info.dtype == u; });
    CM_FAIL(pre, known ? "dtype " : "unknown dtype \"", info.dtype,
            known ? " is not supported by cm" : "\"", " (supported: ", kSupportedList, ")");
  }

  const json& sh = e["shape"];
  CM_CHECK(sh.is_array(), pre, "shape must be an array, got ", json_type(sh));
  uint64_t numel = 1;
  bool overflow = false;
  // The product of the dims with zeros taken as 1 is what cm's strides multiply out to: a
  // zero-size tensor [0, 2^62, 2^62] needs no bytes but has no representable strides (fuzzing
  // finding), so it is refused too.
  uint64_t span = 1;
  bool span_overflow = false;
  for (size_t i = 0; i < sh.size(); ++i) {
    const uint64_t d = to_uint(sh[i], uint64_t(std::numeric_limits<int64_t>::max()), pre,
                               "shape[" + std::to_string(i) + "]");
    info.shape.push_back(int64_t(d));
    overflow |= __builtin_mul_overflow(numel, d, &numel);
    span_overflow |= __builtin_mul_overflow(span, std::max<uint64_t>(d, 1), &span);
  }
  uint64_t nbytes = 0;
  overflow |= __builtin_mul_overflow(numel, uint64_t(fd->size), &nbytes);
  // Zero-size tensors need no bytes whatever the other dims are.
  if (std::find(info.shape.begin(), info.shape.end(), 0) != info.shape.end())
    overflow = false, nbytes = 0;
  CM_CHECK(!overflow, pre, "shape ", shape_str(info.shape), " of ", info.dtype,
           " overflows 64-bit byte counts");
  CM_CHECK(!span_overflow && span <= uint64_t(std::numeric_limits<int64_t>::max()), pre, "shape ",
           shape_str(info.shape), " is too large (its dims multiply past 2^63)");

  const json& off = e["data_offsets"];
  CM_CHECK(off.is_array() && off.size() == 2, pre, "data_offsets must be a pair [begin, end], got ",
           off.is_array() ? "an array of " + std::to_string(off.size()) : json_type(off));
  info.begin = to_uint(off[0], std::numeric_limits<uint64_t>::max(), pre, "data_offsets begin");
  info.end = to_uint(off[1], std::numeric_limits<uint64_t>::max(), pre, "data_offsets end");
  CM_CHECK(info.begin <= info.end, pre, "data_offsets [", info.begin, ", ", info.end,
           "] has begin > end");
  CM_CHECK(info.end - info.begin == nbytes, pre, "data_offsets [", info.begin, ", ", info.end,
           "] hold ", info.end - info.begin, " bytes but shape ", shape_str(info.shape), " of ",
           info.dtype, " needs ", nbytes, " (size mismatch)");
  return info;
}

// Element i of a file tensor whose dtype has no cm equivalent (all integers), widened.
struct Wide {
  bool negative;
  uint64_t magnitude_or_value;  // the value itself when !negative, else -(value) as u64
};

template <class T>
T load_unaligned(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

}  // namespace

// ---- SafetensorsFile ----------------------------------------------------------------------------
struct SafetensorsFile::Impl {
  std::string path;
  std::shared_ptr<Mapping> map;
  uint64_t data_start = 0;
  std::map<std::string, SafetensorsInfo> infos;
  std::vector<std::string> order;  // by data offsets
  std::map<std::string, std::string> metadata;
};

SafetensorsFile::SafetensorsFile(const std::string& path) {
  auto impl = std::make_shared<Impl>();
  impl->path = path;
  impl->map = map_file(path);
  const uint8_t* bytes = impl->map->bytes();
  const uint64_t file_size = impl->map->size;
  const std::string pre = "safetensors '" + path + "': ";

  const uint64_t n = load_unaligned<uint64_t>(bytes);
  CM_CHECK(n <= kMaxHeaderBytes, pre, "header length ", n, " exceeds the limit of ",
           kMaxHeaderBytes, " bytes");
  CM_CHECK(n <= file_size - 8, pre, "header length ", n, " is larger than the file (", file_size,
           " bytes, so at most ", file_size - 8,
           " after the length): truncated or not a safetensors file");
  CM_CHECK(n > 0 && bytes[8] == '{', pre, "header does not start with '{' (",
           n == 0 ? std::string("it is empty") : "first byte " + std::to_string(int(bytes[8])),
           ")");
  impl->data_start = 8 + n;
  const uint64_t buffer_size = file_size - impl->data_start;

  const char* hb = reinterpret_cast<const char*>(bytes + 8);
  // nlohmann's parser takes a NUL byte for the end of the input: find one first (valid JSON has
  // none).
  if (const void* nul = std::memchr(hb, 0, size_t(n)))
    CM_FAIL(pre, "header is not valid JSON: NUL byte at header offset ",
            static_cast<const char*>(nul) - hb);
  const json header = parse_header(path, hb, hb + n);
  CM_CHECK(header.is_object(), pre, "header must be a JSON object, got ", json_type(header));

  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__") {
      if (value.is_null()) continue;
      CM_CHECK(value.is_object(), pre, "__metadata__ must be an object of strings, got ",
               json_type(value));
      for (const auto& [k, v] : value.items()) {
        CM_CHECK(v.is_string(), pre, "__metadata__ must map strings to strings, but \"", k,
                 "\" holds ", json_type(v));
        impl->metadata.emplace(k, v.get<std::string>());
      }
      continue;
    }
    impl->infos.emplace(key, parse_entry(path, key, value));
  }

  // The buffer must be covered exactly once: walk the tensors by offset.
  std::vector<const std::pair<const std::string, SafetensorsInfo>*> sorted;
  for (const auto& e : impl->infos) sorted.push_back(&e);
  std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) {
    return std::tie(a->second.begin, a->second.end, a->first) <
           std::tie(b->second.begin, b->second.end, b->first);
  });
  uint64_t cursor = 0;
  const std::string* prev = nullptr;
  for (const auto* e : sorted) {
    const auto& [name, info] = *e;
    CM_CHECK(info.end <= buffer_size, pre, "tensor \"", name, "\": data_offsets [", info.begin,
             ", ", info.end, "] reach past the end of the file (the data buffer has ", buffer_size,
             " bytes): truncated?");
    CM_CHECK(info.begin >= cursor, pre, "tensor \"", name, "\": data_offsets [", info.begin, ", ",
             info.end, "] overlap tensor \"", prev ? *prev : std::string(), "\" (which ends at ",
             cursor, ")");
    CM_CHECK(info.begin == cursor, pre, "hole in the data buffer: bytes [", cursor, ", ",
             info.begin, ") belong to no tensor (before tensor \"", name, "\")");
    cursor = info.end;
    if (info.end > info.begin) prev = &name;
    impl->order.push_back(name);
  }
  CM_CHECK(cursor == buffer_size, pre, buffer_size - cursor, " trailing bytes: the tensors cover ",
           cursor, " of the ", buffer_size,
           " bytes after the header (the buffer must be fully covered)");
  impl_ = std::move(impl);
}

const std::string& SafetensorsFile::path() const {
  return impl_->path;
}
std::vector<std::string> SafetensorsFile::names() const {
  return impl_->order;
}
bool SafetensorsFile::contains(const std::string& name) const {
  return impl_->infos.count(name) > 0;
}
const std::map<std::string, std::string>& SafetensorsFile::metadata() const {
  return impl_->metadata;
}
uint64_t SafetensorsFile::data_start() const {
  return impl_->data_start;
}

const SafetensorsInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = impl_->infos.find(name);
  if (it != impl_->infos.end()) return it->second;
  std::string some;
  size_t i = 0;
  for (const auto& n : impl_->order) {
    if (i == 10) {
      some += ", ...";
      break;
    }
    if (i++) some += ", ";
    some += n;
  }
  CM_FAIL("safetensors '", impl_->path, "': no tensor named \"", name, "\" (", impl_->order.size(),
          " tensors: ", some, ")");
}

Tensor SafetensorsFile::get(const std::string& name, std::optional<DType> as, Device device) const {
  const SafetensorsInfo& info = this->info(name);
  const std::string pre = "safetensors '" + impl_->path + "': tensor \"" + name + "\": ";
  const FileDType& fd = *find_file_dtype(info.dtype);
  CM_CHECK(int64_t(info.shape.size()) <= kMaxDims, pre, "has ", info.shape.size(),
           " dims; cm supports at most ", kMaxDims);
  const uint8_t* src = impl_->map->bytes() + impl_->data_start + info.begin;
  const size_t nbytes = size_t(info.end - info.begin);
  const int64_t numel = shape_numel(info.shape);
  NoGradGuard ng;

  Tensor t;
  if (fd.cm) {
    const DType native = *fd.cm;
    if (native == DType::b8)
      for (size_t i = 0; i < nbytes; ++i)
        CM_CHECK(src[i] <= 1, pre, "BOOL byte ", i, " holds ", int(src[i]), " (must be 0 or 1)");
    if (reinterpret_cast<uintptr_t>(src) % fd.size == 0) {
      // Zero copy: a storage adopting the mapped bytes. Its release callback owns a reference to
      // the mapping, which is unmapped after the last alias dies.
      auto storage = std::make_shared<Storage>(const_cast<uint8_t*>(src), nbytes, Device::cpu(),
                                               [keep = impl_->map](void*) {});
      t = Tensor(std::make_shared<TensorImpl>(std::move(storage), info.shape,
                                              contiguous_strides(info.shape), 0, native,
                                              std::make_shared<VersionCounter>()));
    } else {
      t = empty(info.shape, {.dtype = native});
      if (nbytes) std::memcpy(t.data_ptr(), src, nbytes);
    }
    if (as && *as != native) t = to(t, *as);
  } else {
    CM_CHECK(as.has_value(), pre, "dtype ", info.dtype,
             " has no cm equivalent: pass the dtype to convert to (e.g. i64 or f32)");
    const DType target = *as;
    t = empty(info.shape, {.dtype = target});
    const bool is_signed = info.dtype[0] == 'I';
    auto read = [&](int64_t i) -> Wide {
      const uint8_t* p = src + size_t(i) * fd.size;
      int64_t s = 0;
      uint64_t u = 0;
      if (is_signed) {
        s = fd.size == 1   ? load_unaligned<int8_t>(p)
            : fd.size == 2 ? load_unaligned<int16_t>(p)
            : fd.size == 4 ? load_unaligned<int32_t>(p)
                           : load_unaligned<int64_t>(p);
      } else {
        u = fd.size == 1   ? load_unaligned<uint8_t>(p)
            : fd.size == 2 ? load_unaligned<uint16_t>(p)
            : fd.size == 4 ? load_unaligned<uint32_t>(p)
                           : load_unaligned<uint64_t>(p);
      }
      if (!is_signed) return {false, u};
      return s < 0 ? Wide{true, uint64_t(0) - uint64_t(s)} : Wide{false, uint64_t(s)};
    };
    CM_DISPATCH_ALL(target, "safetensors get", [&] {
      scalar_t* out = t.data<scalar_t>();
      for (int64_t i = 0; i < numel; ++i) {
        const Wide w = read(i);
        if constexpr (std::is_same_v<scalar_t, bool>) {
          out[i] = w.magnitude_or_value != 0;
        } else if constexpr (std::is_integral_v<scalar_t>) {
          const bool fits =
              w.negative
                  ? (std::is_signed_v<scalar_t> &&
                     w.magnitude_or_value <= uint64_t(std::numeric_limits<scalar_t>::max()) + 1)
                  : w.magnitude_or_value <= uint64_t(std::numeric_limits<scalar_t>::max());
          CM_CHECK(fits, pre, "value ", w.negative ? "-" : "", w.magnitude_or_value, " of ",
                   info.dtype, " element ", i, " does not fit in ", dtype_name(target));
          out[i] = w.negative ? scalar_t(-int64_t(w.magnitude_or_value - 1) - 1)
                              : scalar_t(w.magnitude_or_value);
        } else {
          const double v =
              w.negative ? -double(w.magnitude_or_value) : double(w.magnitude_or_value);
          out[i] = convert<scalar_t>(v);
        }
      }
    });
  }
  if (device != Device::cpu()) t = to(t, device);
  return t;
}

std::map<std::string, Tensor> load_safetensors(const std::string& path, Device device) {
  SafetensorsFile f(path);
  std::map<std::string, Tensor> out;
  for (const auto& n : f.names()) out.emplace(n, f.get(n, std::nullopt, device));
  return out;
}

// ---- writer -------------------------------------------------------------------------------------
const char* safetensors_dtype_name(DType t) {
  return file_dtype_of(t).name;
}

namespace {
// A JSON string literal, escaped as the reference (serde_json) and nlohmann both do.
std::string quoted(const std::string& s, const std::string& path, const char* what) {
  try {
    return json(s).dump();
  } catch (const json::exception&) {
    CM_FAIL("save_safetensors '", path, "': ", what, " is not valid UTF-8");
  }
}
}  // namespace

void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  struct Item {
    const std::string* name;
    Tensor t;
    int rank;
  };
  std::vector<Item> items;
  for (const auto& [name, t] : tensors) {
    CM_CHECK(name != "__metadata__", "save_safetensors '", path,
             "': \"__metadata__\" is reserved, not a tensor name");
    CM_CHECK(t.defined(), "save_safetensors '", path, "': tensor \"", name, "\" is undefined");
    items.push_back({&name, t, file_dtype_of(t.dtype()).rank});
  }
  std::sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
    return a.rank != b.rank ? a.rank > b.rank : *a.name < *b.name;
  });

  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : metadata) {
      if (!first) header += ",";
      first = false;
      header += quoted(k, path, ("metadata key \"" + k + "\"").c_str()) + ":" +
                quoted(v, path, ("metadata value of \"" + k + "\"").c_str());
    }
    header += "}";
  }
  uint64_t offset = 0;
  for (const Item& it : items) {
    if (header.size() > 1) header += ",";
    const uint64_t nbytes = it.t.nbytes();
    header += quoted(*it.name, path, ("tensor name \"" + *it.name + "\"").c_str());
    header +=
        ":{\"dtype\":\"" + std::string(safetensors_dtype_name(it.t.dtype())) + "\",\"shape\":[";
    for (size_t d = 0; d < it.t.shape().size(); ++d) {
      if (d) header += ',';
      header += std::to_string(it.t.shape()[d]);
    }
    header += "],\"data_offsets\":[" + std::to_string(offset) + "," +
              std::to_string(offset + nbytes) + "]}";
    offset += nbytes;
  }
  header += "}";
  header.append((8 - header.size() % 8) % 8, ' ');  // every tensor then starts 8-byte aligned
  CM_CHECK(header.size() <= kMaxHeaderBytes, "save_safetensors '", path, "': header of ",
           header.size(), " bytes exceeds the format's limit of ", kMaxHeaderBytes);

  write_atomic(path, [&](std::FILE* f) {
    const uint64_t n = header.size();
    write_all(f, &n, 8, path);
    write_all(f, header.data(), header.size(), path);
    NoGradGuard ng;
    for (const Item& it : items) {
      // One host copy at a time keeps the peak memory at one tensor.
      const Tensor h = contiguous(to(detach(it.t), Device::cpu()));
      write_all(f, h.data_ptr(), h.nbytes(), path);
    }
  });
}

// ---- modules ------------------------------------------------------------------------------------
void save_module(const std::string& path, const Module& m,
                 const std::map<std::string, std::string>& metadata) {
  save_safetensors(path, m.state_dict(), metadata);
}

void load_module(const std::string& path, Module& m, bool strict) {
  const auto state = load_safetensors(path);
  try {
    m.load_state_dict(state, strict);
  } catch (const Error& e) {
    throw Error("load_module '" + path + "': " + e.what());
  }
}

}  // namespace cm::nn
