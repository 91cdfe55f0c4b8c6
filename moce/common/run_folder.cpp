// run_folder.cpp: the run directory, its JSON files and metrics.jsonl; see run_folder.h.
#include "moce/common/run_folder.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <iterator>

#include "engine/error.h"
#include "engine/io/atomic_file.h"

namespace moce {

void make_run_dir(const std::string& d) {
  for (size_t pos = d.find('/', 1); pos != std::string::npos; pos = d.find('/', pos + 1))
    ::mkdir(d.substr(0, pos).c_str(), 0755);
  if (::mkdir(d.c_str(), 0755) != 0 && errno != EEXIST) ENG_FAIL("--out {}: cannot create the directory", d);
  struct stat st;
  ENG_CHECK(::stat(d.c_str(), &st) == 0 && S_ISDIR(st.st_mode), "--out {}: not a directory", d);
}

bool file_exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

RunLock::RunLock(const std::string& dir) : path_(dir + "/" + kRunLockFile) {
  for (;;) {
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    ENG_CHECK(fd_ >= 0, "--out {}: cannot create its lock file {} ({})", dir, path_, std::strerror(errno));
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      char holder[256] = {0};
      const ssize_t n = ::pread(fd_, holder, sizeof holder - 1, 0);
      ::close(fd_);
      fd_ = -1;
      ENG_CHECK(err == EWOULDBLOCK, "--out {}: cannot lock {} ({})", dir, path_, std::strerror(err));
      long long pid = 0;
      char host[200] = {0};
      const int got = n > 0 ? std::sscanf(holder, "%lld %199s", &pid, host) : 0;
      ENG_FAIL("--out {}: in use by another run ({}); wait for it to end or choose another --out", dir,
               got >= 1 ? fmt::format("pid {}{}", pid, got == 2 ? fmt::format(" on host {}", host) : "")
                        : std::string("its pid not written yet"));
    }
    // The holder before us removes the file as it lets go: a lock on a file no longer at the path guards nothing.
    struct stat held, named;
    if (::fstat(fd_, &held) == 0 && ::stat(path_.c_str(), &named) == 0 && held.st_ino == named.st_ino &&
        held.st_dev == named.st_dev)
      break;
    ::close(fd_);
    fd_ = -1;
  }
  char host[HOST_NAME_MAX + 1] = {0};
  if (::gethostname(host, sizeof host - 1) != 0) std::snprintf(host, sizeof host, "unknown");
  const std::string holder = fmt::format("{} {}\n", (long long)::getpid(), host);
  // Best effort: the lock itself is the flock; the text only names the holder in the second run's message.
  if (::ftruncate(fd_, 0) == 0 && ::pwrite(fd_, holder.data(), holder.size(), 0) == ssize_t(holder.size())) ::fsync(fd_);
}

RunLock::~RunLock() {
  if (fd_ < 0) return;
  // Removed while still held, so that a finished run leaves no lock file; a waiting run that opened the old file
  // sees it gone and retries (the inode check above).
  ::unlink(path_.c_str());
  ::close(fd_);
}

const std::vector<std::string>& run_record_files() {
  static const std::vector<std::string> names = {"config.json",      "metrics.jsonl",
                                                 "checkpoint-last.safetensors", "checkpoint-prev.safetensors",
                                                 "weights.safetensors", "loss.png"};
  return names;
}

void refuse_other_run(const std::string& dir, bool force, const std::string& command) {
  if (force) return;
  std::string found;
  for (const std::string& n : run_record_files())
    if (file_exists(dir + "/" + n)) found += (found.empty() ? "" : ", ") + n;
  ENG_CHECK(found.empty(), "--out {}: holds another run's records ({}); continue it with `moce {} --resume {}`, pass "
            "--force to replace it, or choose another --out", dir, found, command, dir);
}

void remove_run_records(const std::string& dir) {
  for (const std::string& n : run_record_files()) {
    const std::string p = dir + "/" + n;
    ENG_CHECK(::unlink(p.c_str()) == 0 || errno == ENOENT, "--force: cannot remove {} ({})", p, std::strerror(errno));
  }
}

void write_json_file(const std::string& path, const nlohmann::json& j) {
  eng::io::write_file_atomic(path, j.dump(2) + "\n");
}

MetricsLog::MetricsLog(const std::string& dir, int64_t done_epochs) : path_(dir + "/metrics.jsonl") {
  const bool resuming = done_epochs >= 0;
  if (resuming) {
    std::ifstream old(path_, std::ios::binary);
    const std::string text((std::istreambuf_iterator<char>(old)), std::istreambuf_iterator<char>());
    old.close();
    std::vector<std::string> lines;
    for (size_t at = 0; at < text.size();) {
      const size_t end = std::min(text.find('\n', at), text.size());
      lines.push_back(text.substr(at, end - at));
      at = end + 1;
    }
    std::string kept;
    bool dropped = !text.empty() && text.back() != '\n';  // a complete last record whose newline never came
    for (size_t i = 0; i < lines.size(); i++) {
      nlohmann::json j = nlohmann::json::parse(lines[i], nullptr, /*allow_exceptions=*/false);
      const bool later_epoch = j.is_object() && j.contains("epoch") && j["epoch"].is_number_integer() &&
                               j["epoch"].get<int64_t>() > done_epochs;
      const bool cut_last_line = j.is_discarded() && i + 1 == lines.size();  // the interruption cut it short
      if (later_epoch || cut_last_line) {
        dropped = true;
        continue;
      }
      if (j.is_object()) earlier_.push_back(j);
      kept += lines[i] + "\n";
    }
    if (dropped) eng::io::write_file_atomic(path_, kept);
  }
  out_.open(path_, resuming ? std::ios::app : std::ios::trunc);
  ENG_CHECK(out_.good(), "{}: cannot write", path_);
}

void MetricsLog::append(const nlohmann::json& line) {
  out_ << line.dump() << "\n";
  out_.flush();
  ENG_CHECK(out_.good(), "{}: write failed", path_);
}

}  // namespace moce
