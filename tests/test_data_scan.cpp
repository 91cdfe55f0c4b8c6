// test_data_scan.cpp: the ImageFolder scan over links (issue 16, item 3). Each real folder and each real image (by
// device and inode) is taken once: a symlink loop in a class folder (cat/loopa -> ., cat/loopb -> .) used to hang the
// scan with growing memory, and one such link counted every image 41 times. Crafted folders with 2x2 PPM images in a
// temp dir; the expected listings are written out by hand.
#include <doctest/doctest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "data/dataset.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using testutil::error_of;
using testutil::TempDir;

namespace {

// A 2x2 binary PPM whose pixels are all `value`, so that each test image is a different file.
void put_ppm(const fs::path& p, uint8_t value) {
  fs::create_directories(p.parent_path());
  std::ofstream f(p, std::ios::binary);
  f << "P6\n2 2\n255\n";
  for (int i = 0; i < 12; i++) f.put(char(value));
}

void link(const fs::path& target, const fs::path& at) { fs::create_symlink(target, at); }

// The scan of `root` in a child process with a 20 s alarm: its image count, or -1 when it did not finish (killed by
// the alarm: a hang) or failed. Run first, so that a regression ends this test instead of hanging the whole suite.
int count_in_child(const std::string& root) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::alarm(20);
    try {
      data::ImageFolder ds(root);
      ::_exit(int(std::min<int64_t>(ds.size(), 250)));
    } catch (...) {
      ::_exit(255);
    }
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) && WEXITSTATUS(status) != 255 ? WEXITSTATUS(status) : -1;
}

std::vector<std::string> listing(const data::ImageFolder& ds) {
  std::vector<std::string> out;
  for (int64_t i = 0; i < ds.size(); i++)
    out.push_back(ds.id(i).substr(ds.root().size() + 1) + " " + std::to_string(ds.label(i)));  // as listed, no
                                                                                              // link resolved
  return out;
}

}  // namespace

TEST_SUITE("data scan") {

TEST_CASE("a symlink loop in a class folder: each image once, both links named, no hang") {
  TempDir tmp("data_scan");
  const fs::path root = tmp.path / "root";
  put_ppm(root / "cat" / "a.ppm", 10);
  put_ppm(root / "cat" / "b.ppm", 20);
  put_ppm(root / "cat" / "sub" / "c.ppm", 30);
  put_ppm(root / "dog" / "d.ppm", 40);
  link(".", root / "cat" / "loopa");
  link(".", root / "cat" / "loopb");
  link("..", root / "cat" / "sub" / "up");  // a loop one level down, back to the class folder

  REQUIRE(count_in_child(root.string()) == 4);
  data::ImageFolder ds(root.string());
  CHECK(listing(ds) == std::vector<std::string>{"cat/a.ppm 0", "cat/b.ppm 0", "cat/sub/c.ppm 0", "dog/d.ppm 1"});
  const std::string r = root.string();
  CHECK(ds.scan_notes() == std::vector<std::string>{r + "/cat/loopa: a link back to a folder above it (a loop), skipped",
                                                    r + "/cat/loopb: a link back to a folder above it (a loop), skipped",
                                                    r + "/cat/sub/up: a link back to a folder above it (a loop), skipped"});
  for (const std::string& note : ds.scan_notes()) CHECK(note.find('\n') == std::string::npos);
  CHECK(ds.get(2).image.shape() == std::vector<int64_t>{3, 2, 2});
}

TEST_CASE("one link back to the class folder counts each image once, not 41 times") {
  TempDir tmp("data_scan");
  const fs::path root = tmp.path / "root";
  put_ppm(root / "cat" / "a.ppm", 1);
  put_ppm(root / "cat" / "b.ppm", 2);
  put_ppm(root / "dog" / "c.ppm", 3);
  link(".", root / "cat" / "loop");
  REQUIRE(count_in_child(root.string()) == 3);
  data::ImageFolder ds(root.string());
  CHECK(ds.size() == 3);
  CHECK(ds.scan_notes().size() == 1);
}

TEST_CASE("a second path to a folder or an image is taken once; links to real folders elsewhere are followed") {
  TempDir tmp("data_scan");
  const fs::path root = tmp.path / "root";
  put_ppm(root / "cat" / "real" / "a.ppm", 1);
  put_ppm(root / "cat" / "real" / "b.ppm", 2);
  link("real", root / "cat" / "alias");                  // the same folder again: skipped, the first path kept
  link("real/a.ppm", root / "cat" / "z_link.ppm");        // the same image by a file link
  fs::create_hard_link(root / "cat" / "real" / "b.ppm", root / "cat" / "z_hard.ppm");  // and by a hard link
  put_ppm(tmp.path / "elsewhere" / "e.ppm", 5);
  link(tmp.path / "elsewhere", root / "cat" / "ext");     // a real folder outside the root: followed, once
  link(tmp.path / "nowhere.ppm", root / "cat" / "broken.ppm");  // a dangling link: skipped with a note
  put_ppm(root / "dog" / "d.ppm", 4);

  REQUIRE(count_in_child(root.string()) == 4);
  data::ImageFolder ds(root.string());
  // Traversal is by sorted name: alias/ comes before real/, so the folder's images are listed under alias/.
  CHECK(listing(ds) == std::vector<std::string>{"cat/alias/a.ppm 0", "cat/alias/b.ppm 0", "cat/ext/e.ppm 0", "dog/d.ppm 1"});
  const std::string c = (root / "cat").string();
  REQUIRE(ds.scan_notes().size() == 4);
  CHECK(ds.scan_notes()[0].rfind(c + "/broken.ppm: a broken link or an unreadable entry (", 0) == 0);
  CHECK(ds.scan_notes()[1] == c + "/real: a second path to the folder already scanned as " + c + "/alias, skipped");
  CHECK(ds.scan_notes()[2] == c + "/z_hard.ppm: a second path to the image already listed as " + c + "/alias/b.ppm, skipped");
  CHECK(ds.scan_notes()[3] == c + "/z_link.ppm: a second path to the image already listed as " + c + "/alias/a.ppm, skipped");
  CHECK(ds.ignored_files() == 1);  // the broken link

  // Deterministic: the same listing and notes on a second scan.
  data::ImageFolder again(root.string());
  CHECK(listing(again) == listing(ds));
  CHECK(again.scan_notes() == ds.scan_notes());
}

TEST_CASE("an image reachable from two class folders is an error naming both") {
  TempDir tmp("data_scan");
  const fs::path root = tmp.path / "root";
  put_ppm(root / "cat" / "a.ppm", 1);
  put_ppm(root / "dog" / "d.ppm", 2);
  link("../cat/a.ppm", root / "dog" / "x.ppm");
  const std::string err = error_of([&] { data::ImageFolder ds(root.string()); });
  CHECK(err == "ImageFolder: " + (root / "dog" / "x.ppm").string() + " is an image of class folder cat too (a link or "
               "a second path to one file): one image cannot have two labels; remove one of them");
  // A class folder that is a link to another: every image in two classes.
  TempDir tmp2("data_scan");
  put_ppm(tmp2.path / "cat" / "a.ppm", 1);
  link("cat", tmp2.path / "kitten");
  CHECK(error_of([&] { data::ImageFolder ds(tmp2.path.string()); }).find("is an image of class folder cat too") !=
        std::string::npos);
}

TEST_CASE("folders nested deeper than 32 levels are an error; 32 levels are scanned") {
  TempDir tmp("data_scan");
  const fs::path root = tmp.path / "root";
  fs::path deep = root / "cat";
  for (int level = 1; level <= 32; level++) deep /= "d";
  put_ppm(deep / "at32.ppm", 1);
  REQUIRE(count_in_child(root.string()) == 1);
  CHECK(data::ImageFolder(root.string()).size() == 1);

  put_ppm(deep / "d" / "at33.ppm", 2);
  const std::string err = error_of([&] { data::ImageFolder ds(root.string()); });
  CHECK(err.rfind("ImageFolder: " + (deep / "d").string() + ": folders nested more than 32 levels below the class folder;", 0) == 0);
  CHECK(err.find('\n') == std::string::npos);
}

}  // TEST_SUITE
