// run_folder.cpp: the run directory, its JSON files and metrics.jsonl; see run_folder.h.
#include "moce/common/run_folder.h"

#include <sys/stat.h>

#include <cerrno>

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

void write_json_file(const std::string& path, const nlohmann::json& j) {
  eng::io::write_file_atomic(path, j.dump(2) + "\n");
}

MetricsLog::MetricsLog(const std::string& dir, int64_t done_epochs) : path_(dir + "/metrics.jsonl") {
  const bool resuming = done_epochs >= 0;
  if (resuming) {
    std::ifstream old(path_);
    std::vector<std::string> lines;
    for (std::string line; std::getline(old, line);) lines.push_back(line);
    old.close();
    std::string kept;
    bool dropped = false;
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
