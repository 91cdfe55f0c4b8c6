// atomic_file.cpp: temporary file, fsync, rename, fsync of the folder (see atomic_file.h).
#include "engine/io/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "engine/error.h"

namespace eng::io {

namespace {

std::string folder_of(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

}  // namespace

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  ENG_CHECK(!path_.empty(), "cannot write a file with an empty name");
  static std::atomic<uint64_t> counter{0};
  tmp_ = fmt::format("{}.tmp.{}.{}", path_, long(::getpid()), counter.fetch_add(1));
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  ENG_CHECK(fd_ >= 0, "{}: cannot create the temporary file {}: {}", path_, tmp_, std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(tmp_.c_str());
}

void AtomicFile::write(const void* data, size_t n) {
  ENG_CHECK(fd_ >= 0, "{}: write after commit", path_);
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd_, p, n);
    if (w < 0 && errno == EINTR) continue;
    ENG_CHECK(w > 0, "{}: write failed: {}", path_, w < 0 ? std::strerror(errno) : "no progress (disk full?)");
    p += w;
    n -= size_t(w);
  }
}

void AtomicFile::commit() {
  ENG_CHECK(fd_ >= 0 && !committed_, "{}: commit called twice", path_);
  ENG_CHECK(::fsync(fd_) == 0, "{}: fsync of {} failed: {}", path_, tmp_, std::strerror(errno));
  const int fd = fd_;
  fd_ = -1;
  ENG_CHECK(::close(fd) == 0, "{}: close of {} failed: {}", path_, tmp_, std::strerror(errno));
  ENG_CHECK(::rename(tmp_.c_str(), path_.c_str()) == 0, "{}: cannot rename {} over it: {}", path_, tmp_,
            std::strerror(errno));
  committed_ = true;
  // Make the rename itself durable. Best effort: some file systems refuse fsync on a folder.
  const int dfd = ::open(folder_of(path_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

void write_file_atomic(const std::string& path, const void* data, size_t n) {
  AtomicFile f(path);
  f.write(data, n);
  f.commit();
}

}  // namespace eng::io
