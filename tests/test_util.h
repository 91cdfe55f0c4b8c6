// test_util.h: small helpers shared by the test suites: a temporary directory removed at the end of its scope,
// the message of the eng::Error a call throws, and the relative error of a result against a golden one.
#pragma once
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <functional>
#include <string>
#include <system_error>

#include "engine/error.h"
#include "engine/tensor.h"

namespace testutil {

// A fresh, empty directory under the system's temporary directory, unique to this process and instance
// (tag names the test that made it), removed with everything in it when the object goes out of scope.
struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& tag) {
    static std::atomic<int> counter{0};
    path = std::filesystem::temp_directory_path() /
           ("moce_test_" + tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return (path / name).string(); }
};

// Restores the OpenMP thread count when it goes out of scope; ThreadCount(n) also sets it to n for the scope (tests
// that compare results across thread counts).
struct ThreadCount {
  int saved = omp_get_max_threads();
  ThreadCount() = default;
  explicit ThreadCount(int n) { omp_set_num_threads(n); }
  ~ThreadCount() { omp_set_num_threads(saved); }
  ThreadCount(const ThreadCount&) = delete;
  ThreadCount& operator=(const ThreadCount&) = delete;
};

// The message of the eng::Error that f throws, or "" when it returns normally.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const eng::Error& e) {
    return e.what();
  }
  return "";
}

// Whether an atomic write of `path` left its temporary file ("<path>.tmp.*", engine/io/atomic_file.h) in the folder.
inline bool atomic_temporary_left(const std::string& path) {
  const std::filesystem::path target(path);
  const std::string prefix = target.filename().string() + ".tmp";
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(target.parent_path(), ec))
    if (e.path().filename().string().rfind(prefix, 0) == 0) return true;
  return false;
}

// A path in dir whose file name (250 bytes, ending in suffix) can exist, but leaves no room for the temporary file of
// an atomic write beside it ("<name>.tmp.<pid>.<n>" passes the 255-byte limit), so such a write cannot even start.
inline std::string name_without_room_for_temporary(const TempDir& dir, const std::string& suffix) {
  return dir.file(std::string(250 - suffix.size(), 'n') + suffix);
}

// max |got - want| / max |want|: the relative error of a result against a golden fixture's.
inline double max_rel(const eng::Tensor& got, const eng::Tensor& want) {
  auto g = got.to_vector<double>(), w = want.to_vector<double>();
  double d = 0, m = 0;
  for (size_t i = 0; i < g.size(); i++) {
    d = std::max(d, std::fabs(g[i] - w[i]));
    m = std::max(m, std::fabs(w[i]));
  }
  return d / std::max(m, 1e-30);
}

}  // namespace testutil
