// test_atomic_file.cpp: the one atomic writer: whole files, piecewise writes, and that a failed or abandoned write
// leaves the old file as it was and no temporary file behind.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/io/atomic_file.h"
#include "tests/test_util.h"

namespace {

std::string read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

size_t entries_in(const std::filesystem::path& dir) {
  size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) (void)e, n++;
  return n;
}

}  // namespace

TEST_CASE("atomic_file: write, overwrite, and nothing left behind") {
  testutil::TempDir dir("atomic_file");
  const std::string path = dir.file("a.txt");
  eng::io::write_file_atomic(path, std::string_view("first"));
  CHECK(read_all(path) == "first");
  eng::io::write_file_atomic(path, std::string_view("second, longer"));
  CHECK(read_all(path) == "second, longer");
  {
    eng::io::AtomicFile f(path);
    f.write(std::string_view("piece 1, "));
    f.write(std::string_view("piece 2"));
    CHECK(read_all(path) == "second, longer");  // not visible before commit
    f.commit();
  }
  CHECK(read_all(path) == "piece 1, piece 2");
  CHECK(entries_in(dir.path) == 1);
}

TEST_CASE("atomic_file: an abandoned or failed write keeps the old file") {
  testutil::TempDir dir("atomic_file_fail");
  const std::string path = dir.file("keep.txt");
  eng::io::write_file_atomic(path, std::string_view("old"));
  {
    eng::io::AtomicFile f(path);
    f.write(std::string_view("half of the new"));
    // no commit: as if an exception ended the writer here
  }
  CHECK(read_all(path) == "old");
  CHECK(entries_in(dir.path) == 1);

  const std::string msg = testutil::error_of([&] { eng::io::write_file_atomic(dir.file("no/such/folder.txt"), "x"); });
  CHECK(msg.find("no/such/folder.txt") != std::string::npos);
  CHECK(msg.find("cannot create") != std::string::npos);

  // Renaming onto a folder fails: the error names the target and the old folder stays.
  std::filesystem::create_directories(dir.path / "sub" / "inner");
  const std::string msg2 = testutil::error_of([&] { eng::io::write_file_atomic(dir.file("sub"), "x"); });
  CHECK(msg2.find("cannot rename") != std::string::npos);
  CHECK(std::filesystem::is_directory(dir.path / "sub"));
  CHECK(entries_in(dir.path) == 2);
}
