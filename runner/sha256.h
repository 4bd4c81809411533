// SHA-256 (FIPS 180-4), for the file hashes that `cm eval` records with each result (checkpoint,
// Inception or classifier weights, reference statistics), so that a number can be traced to the
// exact files that produced it. The hashing is OpenSSL's (libcrypto's EVP interface, with its
// SHA-NI / AVX2 code paths); this header keeps OpenSSL out of its includers.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

struct evp_md_ctx_st;  // OpenSSL's EVP_MD_CTX

namespace cm::runner {

// Incremental hashing: update() any number of times, then digest() once. Movable, not copyable.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(Sha256&&) noexcept;
  Sha256& operator=(Sha256&&) noexcept;
  void update(const void* data, size_t size);
  void update(std::string_view s) { update(s.data(), s.size()); }
  // The 32-byte digest; the object must not be updated afterwards.
  std::array<uint8_t, 32> digest();
  // The digest as 64 lowercase hexadecimal digits (what sha256sum prints).
  std::string hex_digest();

 private:
  struct FreeCtx {
    void operator()(evp_md_ctx_st* ctx) const;
  };
  std::unique_ptr<evp_md_ctx_st, FreeCtx> ctx_;
  bool finished_ = false;
};

// The hex digest of a string.
std::string sha256_hex(std::string_view s);
// The hex digest of a file's contents, read in chunks; a missing or unreadable file, or one that
// is not a regular file (a FIFO, a directory), is a cm::Error naming it.
std::string sha256_file(const std::string& path);

}  // namespace cm::runner
