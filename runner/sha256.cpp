// SHA-256 through OpenSSL's EVP digest interface (chosen over cm's former hand-written FIPS 180-4
// code: several times faster on the multi-GiB checkpoints `cm eval` hashes, and one parser less to
// keep). Files are opened with nn::open_regular_file, so a FIFO is refused instead of blocking.
#include "runner/sha256.h"

#include <openssl/evp.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "nn/file_io.h"
#include "tensor/error.h"

namespace cm::runner {

void Sha256::FreeCtx::operator()(evp_md_ctx_st* ctx) const {
  EVP_MD_CTX_free(ctx);
}

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  CM_CHECK(ctx_ != nullptr, "Sha256: EVP_MD_CTX_new failed (out of memory)");
  CM_CHECK(EVP_DigestInit_ex(ctx_.get(), EVP_sha256(), nullptr) == 1,
           "Sha256: EVP_DigestInit_ex(sha256) failed");
}

Sha256::~Sha256() = default;
Sha256::Sha256(Sha256&&) noexcept = default;
Sha256& Sha256::operator=(Sha256&&) noexcept = default;

void Sha256::update(const void* data, size_t size) {
  CM_CHECK(ctx_ && !finished_, "Sha256: update after digest");
  if (size > 0)
    CM_CHECK(EVP_DigestUpdate(ctx_.get(), data, size) == 1, "Sha256: EVP_DigestUpdate failed");
}

std::array<uint8_t, 32> Sha256::digest() {
  CM_CHECK(ctx_ && !finished_, "Sha256: digest taken twice");
  std::array<uint8_t, 32> out{};
  unsigned int n = 0;
  CM_CHECK(EVP_DigestFinal_ex(ctx_.get(), out.data(), &n) == 1 && n == out.size(),
           "Sha256: EVP_DigestFinal_ex failed");
  finished_ = true;
  return out;
}

std::string Sha256::hex_digest() {
  static const char* kHex = "0123456789abcdef";
  std::string s;
  for (uint8_t b : digest()) {
    s += kHex[b >> 4];
    s += kHex[b & 15];
  }
  return s;
}

std::string sha256_hex(std::string_view s) {
  Sha256 h;
  h.update(s);
  return h.hex_digest();
}

std::string sha256_file(const std::string& path) {
  const int fd = nn::open_regular_file(path, "sha256");
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  Sha256 h;
  std::vector<uint8_t> buf(size_t(1) << 20);
  for (;;) {
    const ssize_t got = ::read(fd, buf.data(), buf.size());
    if (got < 0 && errno == EINTR) continue;
    CM_CHECK(got >= 0, "sha256: error reading '", path, "': ", std::strerror(errno));
    if (got == 0) break;
    h.update(buf.data(), size_t(got));
  }
  return h.hex_digest();
}

}  // namespace cm::runner
