// atomic_file.h: the one way the project writes a file. The bytes go to a temporary file in the target's folder,
// which is flushed and fsynced, renamed over the target, and then the folder itself is fsynced, so that after a
// crash or a kill -9 the target is either the old file or the whole new one, never a torn mix.
//
//   eng::io::write_file_atomic("run/config.json", text);          // all at once
//
//   eng::io::AtomicFile f("run/model.safetensors");                // piece by piece
//   f.write(header.data(), header.size());
//   f.write(tensor_bytes, n);
//   f.commit();   // without commit() (an exception on the way), the destructor removes the temporary file
//
// The temporary file is "<target>.tmp.<pid>.<counter>" so two writers in one process, or two processes, never
// share one. Errors are eng::Error with a one-line message naming the target and the failing step.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>

namespace eng::io {

class AtomicFile {
 public:
  explicit AtomicFile(std::string path);
  ~AtomicFile();  // removes the temporary file unless commit() succeeded
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t n);
  void write(std::string_view s) { write(s.data(), s.size()); }
  // fsync, close, rename over the target, fsync the folder. Call once; no write() after it.
  void commit();

  const std::string& path() const { return path_; }
  const std::string& temporary_path() const { return tmp_; }

 private:
  std::string path_, tmp_;
  int fd_ = -1;
  bool committed_ = false;
};

// The whole file at once.
void write_file_atomic(const std::string& path, const void* data, size_t n);
inline void write_file_atomic(const std::string& path, std::string_view bytes) {
  write_file_atomic(path, bytes.data(), bytes.size());
}

}  // namespace eng::io
