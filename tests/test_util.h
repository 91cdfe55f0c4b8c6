// test_util.h: small helpers shared by the test suites: a temporary directory removed at the end of its scope,
// and the message of the eng::Error a call throws.
#pragma once
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <functional>
#include <string>
#include <system_error>

#include "engine/error.h"

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

// The message of the eng::Error that f throws, or "" when it returns normally.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const eng::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace testutil
