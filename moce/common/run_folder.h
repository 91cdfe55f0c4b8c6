// run_folder.h: the run directory of a training subcommand: creating it, its JSON files (config.json, and the
// reports of the evaluation commands) written through the one atomic writer, and metrics.jsonl, the run's log.
#pragma once
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace moce {

// mkdir -p; errors name the --out flag and the directory.
void make_run_dir(const std::string& dir);
bool file_exists(const std::string& path);

// `j` pretty-printed (indent 2, a final newline), written atomically (engine/io/atomic_file.h).
void write_json_file(const std::string& path, const nlohmann::json& j);

// <dir>/metrics.jsonl: one JSON object per line, appended as training goes and flushed line by line (a log; a crash
// loses at most the line being written). A new run starts it empty. A resumed run first cuts it back to the lines of
// the epochs its checkpoint holds: lines of a later epoch belong to the interrupted part, which is run again, and so
// does a last line that is not JSON (cut short by the interruption). The cut file is written atomically, and only when
// a line is dropped; other lines are kept as they are.
class MetricsLog {
 public:
  // done_epochs < 0: a new run.
  MetricsLog(const std::string& dir, int64_t done_epochs);
  void append(const nlohmann::json& line);
  const std::string& path() const { return path_; }
  // On resume: the JSON objects kept from the earlier sessions, in order.
  const std::vector<nlohmann::json>& earlier() const { return earlier_; }

 private:
  std::string path_;
  std::vector<nlohmann::json> earlier_;
  std::ofstream out_;
};

}  // namespace moce
