#include "datasets/npz.h"

#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <set>

#include "autograd/ops.h"
#include "datasets/dataset.h"
#include "datasets/zip.h"
#include "nn/atomic_file.h"

namespace cm::data {

namespace {

struct DescrType {
  const char* descr;
  DType dtype;
};
constexpr DescrType kDescrs[] = {{"|u1", DType::u8},  {"|b1", DType::b8},  {"<i4", DType::i32},
                                 {"<i8", DType::i64}, {"<f2", DType::f16}, {"<f4", DType::f32},
                                 {"<f8", DType::f64}};

// A .npy file: magic, version 1.0, header dict padded to a multiple of 64 bytes, raw data.
std::vector<uint8_t> npy_bytes(const std::string& descr, const Shape& shape, const void* data,
                               size_t nbytes) {
  std::string shape_s = "(";
  for (size_t i = 0; i < shape.size(); ++i)
    shape_s += std::to_string(shape[i]) + (shape.size() == 1 || i + 1 < shape.size() ? "," : "");
  shape_s += ")";
  std::string header =
      "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape_s + ", }";
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  CM_CHECK(header.size() <= 0xffff, "write_npz: the .npy header of shape ", shape_str(shape),
           " is too long for format 1.0");
  const uint8_t magic[8] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
  std::vector<uint8_t> out(10 + header.size() + nbytes);
  std::memcpy(out.data(), magic, 8);
  out[8] = uint8_t(header.size() & 0xff);
  out[9] = uint8_t(header.size() >> 8);
  std::memcpy(out.data() + 10, header.data(), header.size());
  if (nbytes) std::memcpy(out.data() + 10 + header.size(), data, nbytes);
  return out;
}

void put16(std::vector<uint8_t>& b, uint32_t v) {
  b.push_back(uint8_t(v));
  b.push_back(uint8_t(v >> 8));
}
void put32(std::vector<uint8_t>& b, uint32_t v) {
  put16(b, v & 0xffff);
  put16(b, v >> 16);
}

// A ZIP archive of stored (uncompressed) entries, as numpy.savez writes.
std::vector<uint8_t> zip_stored(
    const std::vector<std::pair<std::string, std::vector<uint8_t>>>& entries) {
  std::vector<uint8_t> out, central;
  for (const auto& [name, data] : entries) {
    CM_CHECK(data.size() < 0xffffffffull && out.size() + data.size() < 0xffffffffull,
             "write_npz: entry ", name, " is too large for a ZIP without ZIP64");
    const uint32_t crc = uint32_t(crc32(0L, data.data(), uInt(data.size())));
    const uint32_t offset = uint32_t(out.size());
    put32(out, 0x04034b50);
    put16(out, 20);
    put16(out, 0);
    put16(out, 0);  // stored
    put16(out, 0);
    put16(out, 0x21);  // 1980-01-01
    put32(out, crc);
    put32(out, uint32_t(data.size()));
    put32(out, uint32_t(data.size()));
    put16(out, uint16_t(name.size()));
    put16(out, 0);
    out.insert(out.end(), name.begin(), name.end());
    out.insert(out.end(), data.begin(), data.end());
    put32(central, 0x02014b50);
    put16(central, 20);
    put16(central, 20);
    put16(central, 0);
    put16(central, 0);
    put16(central, 0);
    put16(central, 0x21);
    put32(central, crc);
    put32(central, uint32_t(data.size()));
    put32(central, uint32_t(data.size()));
    put16(central, uint16_t(name.size()));
    put16(central, 0);
    put16(central, 0);
    put16(central, 0);
    put16(central, 0);
    put32(central, 0);
    put32(central, offset);
    central.insert(central.end(), name.begin(), name.end());
  }
  const uint32_t cd_offset = uint32_t(out.size());
  out.insert(out.end(), central.begin(), central.end());
  put32(out, 0x06054b50);
  put16(out, 0);
  put16(out, 0);
  put16(out, uint16_t(entries.size()));
  put16(out, uint16_t(entries.size()));
  put32(out, uint32_t(central.size()));
  put32(out, cd_offset);
  put16(out, 0);
  return out;
}

// The array of one .npy file as a contiguous CPU tensor (C order).
Tensor npy_tensor(const std::vector<uint8_t>& bytes, const std::string& name) {
  const NpyHeader h = parse_npy_header(bytes.data(), bytes.size(), name);
  const DescrType* found = nullptr;
  for (const DescrType& d : kDescrs)
    if (h.descr == d.descr) found = &d;
  CM_CHECK(found != nullptr, "read_npz: '", name, "' has dtype '", h.descr,
           "', which cm lacks (u8, bool, i32, i64, f16, f32 and f64 only)");
  // Fortran order stores the transpose's C-order data: read the reversed shape, then permute.
  const Shape stored = h.fortran_order ? Shape(h.shape.rbegin(), h.shape.rend()) : h.shape;
  Tensor t = empty(stored, {.dtype = found->dtype});
  if (t.nbytes()) std::memcpy(t.data_ptr(), bytes.data() + h.data_offset, t.nbytes());
  if (found->dtype == DType::b8)
    for (int64_t i = 0; i < t.numel(); ++i)
      CM_CHECK(bytes[h.data_offset + size_t(i)] <= 1, "read_npz: '", name,
               "': a bool array holds the byte ", int(bytes[h.data_offset + size_t(i)]));
  if (!h.fortran_order || t.dim() < 2) return t;
  Shape perm(static_cast<size_t>(t.dim()));
  for (int64_t d = 0; d < t.dim(); ++d) perm[size_t(d)] = t.dim() - 1 - d;
  return contiguous(permute(t, perm));
}

}  // namespace

std::string npy_descr(DType t, const char* op) {
  for (const DescrType& d : kDescrs)
    if (d.dtype == t) return d.descr;
  CM_FAIL(op, ": dtype ", dtype_name(t), " has no NumPy equivalent");
}

void write_npz(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& arrays) {
  std::set<std::string> seen;
  std::vector<std::pair<std::string, std::vector<uint8_t>>> entries;
  for (const auto& [name, t] : arrays) {
    CM_CHECK(!name.empty() && seen.insert(name).second, "write_npz: '", path,
             "': array names must be non-empty and unique, got '", name, "' twice or empty");
    CM_CHECK(t.defined(), "write_npz: '", path, "': array '", name, "' is undefined");
    const std::string descr = npy_descr(t.dtype(), "write_npz");
    const Tensor c = contiguous(to(detach(t), Device::cpu()));
    entries.emplace_back(name + ".npy", npy_bytes(descr, c.shape(), c.data_ptr(), c.nbytes()));
  }
  const std::vector<uint8_t> bytes = zip_stored(entries);
  nn::write_atomic(path,
                   std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
}

std::map<std::string, Tensor> read_npz(const std::string& path,
                                       const std::vector<std::string>& keys) {
  const ZipReader zip(path);
  std::map<std::string, Tensor> out;
  for (const ZipEntry& e : zip.entries()) {
    if (e.is_directory()) continue;
    if (!keys.empty() &&
        std::find(keys.begin(), keys.end(), e.name.substr(0, e.name.rfind(".npy"))) == keys.end())
      continue;
    const std::string full = path + "/" + e.name;
    CM_CHECK(e.name.size() > 4 && e.name.compare(e.name.size() - 4, 4, ".npy") == 0, "read_npz: '",
             full, "' is not an .npy array (an .npz holds only <name>.npy entries)");
    const std::string key = e.name.substr(0, e.name.size() - 4);
    CM_CHECK(!out.count(key), "read_npz: '", path, "' holds the array '", key, "' twice");
    out.emplace(key, npy_tensor(zip.read(e), full));
  }
  return out;
}

}  // namespace cm::data
