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

// <dir>/.lock, the run folder's one-writer lock: flock(LOCK_EX | LOCK_NB) on a descriptor held as long as the object
// lives, the file holding the holder's "pid host". A second run on the folder fails at once with
// "--out DIR: in use by another run (pid N on host H)". The kernel drops the lock when its holder dies, so a lock file
// left by a killed run never blocks; a run that ends removes its lock file (taking a lock checks that the locked file
// is still the one at the path, so the removal cannot let two holders in).
inline constexpr const char* kRunLockFile = ".lock";
class RunLock {
 public:
  explicit RunLock(const std::string& dir);  // the folder must exist
  ~RunLock();
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;

 private:
  std::string path_;
  int fd_ = -1;
};

// The files that make a folder a training run's records (config.json, metrics.jsonl, the checkpoints, the weights,
// the loss curve). A new run (not --resume) on a folder that holds any of them is refused, naming them, unless
// `force`; with `force` remove_run_records deletes them just before the new run writes its own, so that no file of
// the old run is left beside the new one's.
const std::vector<std::string>& run_record_files();
void refuse_other_run(const std::string& dir, bool force, const std::string& command);
void remove_run_records(const std::string& dir);

// `j` pretty-printed (indent 2, a final newline), written atomically (engine/io/atomic_file.h).
void write_json_file(const std::string& path, const nlohmann::json& j);

// <dir>/metrics.jsonl: one JSON object per line, appended as training goes and flushed line by line (a log; a crash
// loses at most the line being written). A new run starts it empty. A resumed run first cuts it back to the lines of
// the epochs its checkpoint holds: lines of a later epoch belong to the interrupted part, which is run again, and so
// does a last line that is not JSON (cut short by the interruption), and a last line without its newline gets one
// (else the next record would be appended onto it). The cut file is written atomically, and only when a line is
// dropped or mended; other lines are kept as they are.
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
