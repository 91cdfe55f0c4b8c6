// test_run_folder.cpp: the run folder that cannot be broken (issue 16, items 4-8), through `moce pretrain` / `moce
// train` as the binary runs them and through moce/common/run_folder.h: a new run refuses another run's records
// unless --force, and checks every flag (and the data) before it touches a file; the folder's lock (a second run fails
// at once naming the first one's pid; a dead holder's lock does not block), checked against raw flock(2) in a child
// process; the range of every numeric flag, nan and inf refused, the same rules for a resumed run's saved config;
// metrics.jsonl cut back to the checkpoint (a later epoch's lines, a half-written last line, a missing newline);
// --resume with flags it ignores (one note each, the run unchanged) and with a new --epochs (the stretched schedule
// said, and the learning rate it then follows recomputed here from the cosine formula).
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "data/image.h"
#include "engine/io/checkpoint.h"
#include "engine/rng.h"
#include "moce/cmd/commands.h"
#include "moce/common/cli.h"
#include "moce/common/run_folder.h"
#include "tests/moce_fixture.h"
#include "tests/test_util.h"

using json = nlohmann::json;
namespace fs = std::filesystem;
using testutil::error_of;
using testutil::TempDir;

namespace {

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

void write_bytes(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

// Every file of a folder and its bytes: what "nothing already written lost" compares.
std::map<std::string, std::string> snapshot(const std::string& dir) {
  std::map<std::string, std::string> m;
  for (const auto& e : fs::directory_iterator(dir)) m[e.path().filename().string()] = read_bytes(e.path().string());
  return m;
}

std::vector<json> json_lines(const std::string& path) {
  std::vector<json> v;
  std::ifstream f(path);
  for (std::string line; std::getline(f, line);) v.push_back(json::parse(line));  // throws on a broken line
  return v;
}

// root/class<c>/<i>.png: two classes of 16x16 noise, 8 each (16 images: 2 steps of 8 per epoch).
std::string make_images(const std::string& root) {
  eng::Generator g(5);
  for (int c = 0; c < 2; c++) {
    fs::create_directories(root + "/class" + std::to_string(c));
    for (int i = 0; i < 8; i++)
      data::write_png(root + "/class" + std::to_string(c) + "/" + std::to_string(i) + ".png",
                      g.uniform({3, 16, 16}, 0.1 + 0.5 * c, 0.4 + 0.5 * c));
  }
  return root;
}

// What fd 2 received while f ran (the notes go there), and f's eng::Error message ("" when none).
struct Outcome {
  int status = 0;
  std::string error, err_text;
};
Outcome run_cmd(int (*cmd)(int, char**), const char* name, std::vector<std::string> args, const TempDir& tmp) {
  args.insert(args.begin(), {"moce", name});
  std::vector<char*> argv;
  for (auto& s : args) argv.push_back(s.data());
  const std::string err_file = tmp.file("stderr.txt");
  std::fflush(stderr);
  const int saved = ::dup(2);
  const int fd = ::open(err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ::dup2(fd, 2);
  ::close(fd);
  Outcome o;
  try {
    o.status = cmd(int(argv.size()), argv.data());
  } catch (const eng::Error& e) {
    o.status = 1;
    o.error = e.what();
  }
  std::fflush(stderr);
  ::dup2(saved, 2);
  ::close(saved);
  o.err_text = read_bytes(err_file);
  return o;
}
Outcome pretrain(std::vector<std::string> args, const TempDir& tmp) {
  return run_cmd(moce::cmd_pretrain, "pretrain", std::move(args), tmp);
}

std::vector<std::string> common(const std::string& data, const std::string& out) {
  return {"--data", data, "--config", "mae_test_tiny", "--batch", "8", "--out", out, "--workers", "0",
          "--base-lr", "1e-3", "--log-every", "1"};
}
std::vector<std::string> with(std::vector<std::string> v, const std::vector<std::string>& extra) {
  v.insert(v.end(), extra.begin(), extra.end());
  return v;
}

bool one_line(const std::string& e) { return !e.empty() && e.find('\n') == std::string::npos; }

// MAE's cosine schedule with linear warm-up, written out here: the reference for the lr a run logs.
double cosine_lr(double base, double min, double warmup, double total, double step) {
  if (step < warmup) return base * step / warmup;
  return min + (base - min) * 0.5 * (1 + std::cos(M_PI * (step - warmup) / (total - warmup)));
}

}  // namespace

TEST_SUITE("run folder") {
  TEST_CASE("a new run refuses another run's records unless --force, and checks every flag before touching a file") {
    TempDir tmp("runfolder_reuse");
    const std::string data = make_images(tmp.file("data")), out = tmp.file("run");
    REQUIRE(pretrain(with(common(data, out), {"--epochs", "1"}), tmp).status == 0);
    const auto before = snapshot(out);
    REQUIRE(before.count("checkpoint-last.safetensors") == 1);
    REQUIRE(before.count(moce::kRunLockFile) == 0);  // a finished run leaves no lock file

    // The same folder without --resume: refused, naming the records and the ways on.
    Outcome o = pretrain(with(common(data, out), {"--epochs", "2"}), tmp);
    CHECK(o.status == 1);
    CHECK_MESSAGE(one_line(o.error), o.error);
    CHECK_MESSAGE(o.error.find("--out " + out + ": holds another run's records (config.json, metrics.jsonl, "
                               "checkpoint-last.safetensors") != std::string::npos, o.error);
    CHECK(o.error.find("--resume") != std::string::npos);
    CHECK(o.error.find("--force") != std::string::npos);
    CHECK(snapshot(out) == before);

    // Behind --force, a bad flag or missing data still stops the run before the old records go.
    for (const auto& [extra, want] : std::vector<std::pair<std::vector<std::string>, std::string>>{
             {{"--epochs", "1", "--warmup-epochs", "2"}, "--warmup-epochs 2: expected an integer in [0, --epochs 1]"},
             {{"--epochs", "1", "--base-lr", "-1"}, "--base-lr -1: expected a finite number >= 0"},
             {{"--epochs", "1", "--limit", "-5"}, "--limit -5: expected an integer >= 0"}}) {
      o = pretrain(with(with(common(data, out), extra), {"--force"}), tmp);
      CHECK(o.status == 1);
      CHECK_MESSAGE(o.error.find(want) != std::string::npos, o.error);
      CHECK(snapshot(out) == before);
    }
    o = pretrain(with(common(tmp.file("no-such-data"), out), {"--force"}), tmp);
    CHECK(o.status == 1);
    CHECK_MESSAGE(o.error.find(tmp.file("no-such-data")) != std::string::npos, o.error);
    CHECK(snapshot(out) == before);

    // A bad flag on a new folder: the folder is not even made.
    o = pretrain(with(common(data, tmp.file("fresh")), {"--clip-grad", "-1"}), tmp);
    CHECK_MESSAGE(o.error == "--clip-grad -1: expected a finite number >= 0", o.error);
    CHECK(!fs::exists(tmp.file("fresh")));

    // --force replaces the run as a whole: no line of the old metrics, and a checkpoint matching config.json.
    REQUIRE(pretrain(with(common(data, out), {"--epochs", "1", "--seed", "7", "--force"}), tmp).status == 0);
    const json config = json::parse(read_bytes(out + "/config.json"));
    CHECK(config["run"]["seed"] == 7);
    CHECK(eng::load_checkpoint(out + "/checkpoint-last.safetensors").config["run"] == config["run"]);
    CHECK(read_bytes(out + "/metrics.jsonl") != before.at("metrics.jsonl"));
    CHECK(json_lines(out + "/metrics.jsonl").size() == 3);  // steps 1, 2 and the epoch line: nothing of the old run
  }

  TEST_CASE("moce train: the same refusal, naming moce train's --resume; --force starts the run again") {
    const testutil::MoceFixture& f = testutil::moce_fixture();
    TempDir tmp("runfolder_train");
    const std::string out = tmp.file("dense");
    REQUIRE(f.train("dense", out, {"--epochs", "1"}) == 0);
    const auto before = snapshot(out);
    const std::string e = error_of([&] {
      if (f.train("dense", out, {"--epochs", "1"}) != 0) throw eng::Error("status");
    });
    CHECK_MESSAGE(e.find("--out " + out + ": holds another run's records") == 0, e);
    CHECK_MESSAGE(e.find("`moce train --resume " + out + "`") != std::string::npos, e);
    CHECK(snapshot(out) == before);
    CHECK(f.train("dense", out, {"--epochs", "1", "--force"}) == 0);
  }

  TEST_CASE("the lock: one run per folder, the holder's pid named; a dead holder's lock does not block") {
    TempDir tmp("runfolder_lock");
    const std::string dir = tmp.file("run");
    fs::create_directories(dir);
    const std::string lock_path = dir + "/" + moce::kRunLockFile;

    // A second lock in this process: flock locks belong to the open file, so it conflicts like another process.
    {
      moce::RunLock first(dir);
      const std::string e = error_of([&] { moce::RunLock second(dir); });
      CHECK_MESSAGE(e.find("--out " + dir + ": in use by another run (pid " + std::to_string(::getpid()) + " on host ") ==
                        0, e);
      CHECK(one_line(e));
    }
    CHECK(!fs::exists(lock_path));  // released and removed with its holder
    CHECK(error_of([&] { moce::RunLock again(dir); }).empty());

    // A child process holds the lock with raw flock(2) (the independent reference) while moce pretrain tries the folder.
    int to_child[2], to_parent[2];
    REQUIRE(::pipe(to_child) == 0);
    REQUIRE(::pipe(to_parent) == 0);
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {  // only async-signal-safe calls here
      const int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT, 0644);
      char ok = fd >= 0 && ::flock(fd, LOCK_EX | LOCK_NB) == 0 ? 'y' : 'n';
      char text[32];
      int n = 0;
      for (long p = long(::getpid()), div = 1000000000; div > 0; div /= 10)
        if (p / div > 0 || n > 0 || div == 1) text[n++] = char('0' + (p / div) % 10);
      const char host[] = " childhost\n";
      for (char c : host)
        if (c) text[n++] = c;
      if (::write(fd, text, size_t(n)) != n) ok = 'n';
      if (::write(to_parent[1], &ok, 1) != 1) ::_exit(3);
      char go;
      if (::read(to_child[0], &go, 1) != 1) ::_exit(4);
      ::_exit(0);  // dies holding the lock, its file left behind: the kernel releases the flock
    }
    char ok = 0;
    REQUIRE(::read(to_parent[0], &ok, 1) == 1);
    REQUIRE(ok == 'y');
    const std::string data = make_images(tmp.file("data"));
    write_bytes(dir + "/keep.txt", "not to be touched");
    const auto before = snapshot(dir);
    Outcome o = pretrain(with(common(data, dir), {"--epochs", "1"}), tmp);
    CHECK(o.status == 1);
    CHECK_MESSAGE(o.error == "--out " + dir + ": in use by another run (pid " + std::to_string(child) +
                                 " on host childhost); wait for it to end or choose another --out", o.error);
    CHECK(snapshot(dir) == before);  // nothing written, the holder's file as it was
    REQUIRE(::write(to_child[1], "g", 1) == 1);
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);

    // The stale lock file is still there; it does not block, and the run that takes it removes it at its end.
    REQUIRE(fs::exists(lock_path));
    o = pretrain(with(common(data, dir), {"--epochs", "1"}), tmp);
    CHECK_MESSAGE(o.status == 0, o.error);
    CHECK(!fs::exists(lock_path));
    CHECK(read_bytes(dir + "/keep.txt") == "not to be touched");
    for (int fd : {to_child[0], to_child[1], to_parent[0], to_parent[1]}) ::close(fd);
  }

  TEST_CASE("every numeric flag has a range: named with its value and the accepted range, nothing written") {
    TempDir tmp("runfolder_ranges");
    const std::string data = make_images(tmp.file("data")), out = tmp.file("run");
    const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
        {{"--base-lr", "-1"}, "--base-lr -1: expected a finite number >= 0"},
        {{"--base-lr", "nan"}, "--base-lr nan: expected a finite number"},
        {{"--base-lr", "inf"}, "--base-lr inf: expected a finite number"},
        {{"--base-lr", "-inf"}, "--base-lr -inf: expected a finite number"},
        {{"--base-lr", "1e999"}, "--base-lr 1e999: expected a finite number"},
        {{"--limit", "-5"}, "--limit -5: expected an integer >= 0"},
        {{"--clip-grad", "-1"}, "--clip-grad -1: expected a finite number >= 0"},
        {{"--weight-decay", "-5"}, "--weight-decay -5: expected a finite number >= 0"},
        {{"--weight-decay", "nan"}, "--weight-decay nan: expected a finite number"},
        // lr = 1e-3 x 8 / 256 = 3.125e-05
        {{"--min-lr", "1e-3"}, "--min-lr 0.001: above the learning rate 3.125e-05"},
        {{"--min-lr", "-1e-6"}, "--min-lr -1e-06: expected a finite number >= 0"},
        {{"--stop-after", "-1"}, "--stop-after -1: expected an integer >= 0"},
        {{"--warmup-epochs", "-1"}, "--warmup-epochs -1: expected an integer >= 0"},
        {{"--epochs", "2", "--warmup-epochs", "3"}, "--warmup-epochs 3: expected an integer in [0, --epochs 2]"},
        {{"--epochs", "0"}, "--epochs 0: expected an integer >= 1"},
        {{"--batch", "0"}, "--batch 0: expected an integer >= 1"},
        {{"--accum-iter", "-2"}, "--accum-iter -2: expected an integer >= 1"},
        {{"--save-every", "0"}, "--save-every 0: expected an integer >= 1"},
        {{"--log-every", "0"}, "--log-every 0: expected an integer >= 1"},
        {{"--workers", "-1"}, "--workers -1: expected an integer >= 0"},
        {{"--seed", "-3"}, "--seed -3: expected an integer >= 0"},
        {{"--mask-ratio", "1"}, "--mask-ratio 1: expected a number in (0, 1)"},
        {{"--mask-ratio", "nan"}, "--mask-ratio nan: expected a finite number"},
    };
    for (const auto& [flags, want] : cases) {
      Outcome o = pretrain(with(common(data, out), flags), tmp);
      CHECK(o.status == 1);
      CHECK_MESSAGE(one_line(o.error), o.error);
      CHECK_MESSAGE(o.error.find(want) == 0, "want '" << want << "', got: " << o.error);
      CHECK_MESSAGE(!fs::exists(out), want);
    }
    // moce train's own flags, and those of the commands after it: refused while the flags are read, before any file.
    const std::vector<std::tuple<int (*)(int, char**), const char*, std::vector<std::string>, std::string>> others = {
        {moce::cmd_train, "train", {"--method", "dense", "--experts", "0"}, "--experts 0: expected an integer >= 1"},
        {moce::cmd_train, "train", {"--method", "dense", "--perturbation", "-1"}, "--perturbation -1: expected a finite number >= 0"},
        {moce::cmd_train, "train", {"--method", "dense", "--base-lr", "nan"}, "--base-lr nan: expected a finite number"},
        {moce::cmd_train, "train", {"--method", "dense", "--capacity-factor", "inf"}, "--capacity-factor inf: expected a finite number"},
        {moce::cmd_eval_mae, "eval-mae", {"--checkpoint", "x", "--seed", "-1"}, "--seed -1: expected an integer >= 0"},
        {moce::cmd_eval_mae, "eval-mae", {"--checkpoint", "x", "--limit-test", "-2"}, "--limit-test -2: expected an integer >= 0"},
        {moce::cmd_linprobe, "linprobe", {"--model", "x", "--data", "y", "--lr", "nan"}, "--lr nan: expected a finite number"},
        {moce::cmd_linprobe, "linprobe", {"--model", "x", "--data", "y", "--epochs", "0"}, "--epochs 0: expected an integer >= 1"},
        {moce::cmd_finetune, "finetune", {"--model", "x", "--data", "y", "--eval-batch", "0"}, "--eval-batch 0: expected an integer >= 1"},
        {moce::cmd_finetune, "finetune", {"--model", "x", "--data", "y", "--heads", "-4"}, "--heads -4: expected an integer >= 0"},
        {moce::cmd_search, "search", {"--model", data, "--data", "y", "--finetune-lr", "-0.1"}, "--finetune-lr -0.1: expected a finite number >= 0"},
        {moce::cmd_routing, "routing", {"--model", data, "--data", "y", "--batch", "0"}, "--batch 0: expected an integer >= 1"},
        {moce::cmd_cluster, "cluster", {"--checkpoint", "x", "--data", "y", "--seed", "-1"}, "--seed -1: expected an integer >= 0"},
    };
    for (const auto& [cmd, name, flags, want] : others) {
      Outcome o = run_cmd(cmd, name, with(flags, {"--out", out}), tmp);
      CHECK(o.status == 1);
      CHECK_MESSAGE(o.error.find(want) == 0, name << ": want '" << want << "', got: " << o.error);
      CHECK_MESSAGE(!fs::exists(out), name << " " << want);
    }
  }

  TEST_CASE("a resumed run's saved config meets the same rules as the flags, named with the checkpoint") {
    TempDir tmp("runfolder_saved");
    const std::string data = make_images(tmp.file("data")), out = tmp.file("run");
    REQUIRE(pretrain(with(common(data, out), {"--epochs", "2", "--stop-after", "1"}), tmp).status == 0);
    const std::string ck = out + "/checkpoint-last.safetensors";
    for (const auto& [key, value, want] : std::vector<std::tuple<std::string, json, std::string>>{
             {"base_lr", -1.0, "--base-lr -1: expected a finite number >= 0"},
             {"warmup_epochs", 5, "--warmup-epochs 5: expected an integer in [0, --epochs 2]"},
             {"batch", 0, "--batch 0: expected an integer >= 1"},
             {"mask_ratio", 1.5, "--mask-ratio 1.5: expected a number in (0, 1)"},
             {"epochs", "two", "\"epochs\" must be an integer, got string \"two\""}}) {
      eng::Checkpoint c = eng::load_checkpoint(ck);
      c.config["run"][key] = value;
      eng::save_checkpoint(ck, c);
      const auto before = snapshot(out);
      Outcome o = pretrain({"--resume", out}, tmp);
      CHECK(o.status == 1);
      CHECK_MESSAGE(one_line(o.error), o.error);
      CHECK_MESSAGE(o.error == "--resume " + out + ": " + ck + "'s run config: " + want, o.error);
      CHECK(snapshot(out) == before);
      REQUIRE(pretrain(with(common(data, tmp.file("again")), {"--epochs", "2", "--stop-after", "1", "--force"}), tmp)
                  .status == 0);
      fs::copy_file(tmp.file("again") + "/checkpoint-last.safetensors", ck, fs::copy_options::overwrite_existing);
    }
  }

  TEST_CASE("metrics.jsonl on resume: cut back to the checkpoint's epoch, a half-written line dropped, a missing newline mended") {
    TempDir tmp("runfolder_metrics");
    const std::string dir = tmp.file("run");
    fs::create_directories(dir);
    const std::string path = dir + "/metrics.jsonl";
    const std::string e1 = R"({"epoch":1,"step":1,"loss":2.0})" "\n" R"({"epoch":1,"train_loss":2.0})" "\n";
    const std::string e2 = R"({"epoch":2,"step":2,"loss":1.5})" "\n" R"({"epoch":2,"train_loss":1.5})" "\n";
    const std::string e3 = R"({"epoch":3,"step":3,"loss":1.2})" "\n";

    // A kill during epoch 3 with the checkpoint of epoch 2 (--save-every 2): epoch 3's line and the cut one go.
    write_bytes(path, e1 + e2 + e3 + R"({"epoch":3,"st)");
    {
      moce::MetricsLog log(dir, 2);
      CHECK(log.earlier().size() == 4);
      log.append(json{{"epoch", 3}, {"step", 3}, {"loss", 1.25}});
    }
    CHECK(read_bytes(path) == e1 + e2 + R"({"epoch":3,"loss":1.25,"step":3})" "\n");

    // A checkpoint of epoch 1: both later epochs' lines go; the earlier ones stay byte for byte.
    write_bytes(path, e1 + e2 + e3);
    { moce::MetricsLog log(dir, 1); }
    CHECK(read_bytes(path) == e1);

    // A last record complete but without its newline: kept, and the next one starts on a line of its own.
    write_bytes(path, e1 + R"({"epoch":1,"note":"x"})");
    {
      moce::MetricsLog log(dir, 1);
      CHECK(log.earlier().size() == 3);
      log.append(json{{"epoch", 2}});
    }
    CHECK(read_bytes(path) == e1 + R"({"epoch":1,"note":"x"})" "\n" R"({"epoch":2})" "\n");

    // Nothing to drop: the file is left as it is (not rewritten), and appended to.
    write_bytes(path, e1);
    const auto mtime = fs::last_write_time(path);
    { moce::MetricsLog log(dir, 1); }
    CHECK(fs::last_write_time(path) == mtime);
    CHECK(read_bytes(path) == e1);
  }

  TEST_CASE("metrics.jsonl after an interrupted epoch and a resume: every line once, every line JSON, losses as uninterrupted") {
    TempDir tmp("runfolder_metrics_e2e");
    const std::string data = make_images(tmp.file("data"));
    REQUIRE(pretrain(with(common(data, tmp.file("full")), {"--epochs", "3"}), tmp).status == 0);
    const std::string part = tmp.file("part");
    REQUIRE(pretrain(with(common(data, part), {"--epochs", "3", "--save-every", "2", "--stop-after", "2"}), tmp).status == 0);
    // What a kill during epoch 3 leaves after the checkpoint of epoch 2: a log line and a line cut short.
    { std::ofstream(part + "/metrics.jsonl", std::ios::app) << R"({"epoch":3,"step":5,"loss":9.5})" "\n" R"({"epoch":3,"tr)"; }
    REQUIRE(pretrain({"--resume", part}, tmp).status == 0);
    const std::vector<json> full = json_lines(tmp.file("full") + "/metrics.jsonl");
    const std::vector<json> got = json_lines(part + "/metrics.jsonl");
    REQUIRE(got.size() == full.size());
    for (size_t i = 0; i < got.size(); i++) {
      CHECK(got[i].value("step", -1) == full[i].value("step", -1));
      CHECK(got[i].value("epoch", -1) == full[i].value("epoch", -1));
      CHECK(got[i].value("train_loss_hex", "") == full[i].value("train_loss_hex", ""));
      CHECK(got[i].value("loss", 0.0) == full[i].value("loss", 0.0));
    }
  }

  TEST_CASE("--resume: each ignored flag is named on stderr and changes nothing; a new --epochs says the schedule is stretched") {
    TempDir tmp("runfolder_resume_flags");
    const std::string data = make_images(tmp.file("data"));
    const auto args = with(common(data, ""), {"--epochs", "2", "--warmup-epochs", "0"});
    auto at = [&](const std::string& out) {
      auto v = args;
      v[size_t(std::find(v.begin(), v.end(), "--out") - v.begin()) + 1] = out;
      return v;
    };
    REQUIRE(pretrain(at(tmp.file("full")), tmp).status == 0);
    const std::string part = tmp.file("part");
    REQUIRE(pretrain(with(at(part), {"--stop-after", "1"}), tmp).status == 0);
    Outcome o = pretrain({"--resume", part, "--base-lr", "5", "--warmup-epochs", "1", "--seed", "3", "--force"}, tmp);
    REQUIRE_MESSAGE(o.status == 0, o.error);
    for (const char* flag : {"--base-lr", "--warmup-epochs", "--seed", "--force"})
      CHECK_MESSAGE(o.err_text.find(std::string("note: ") + flag + " is ignored with --resume") != std::string::npos,
                    o.err_text);
    size_t lines = 0;
    for (char c : o.err_text) lines += c == '\n';
    CHECK(lines == 4);  // one line each, nothing else
    std::vector<std::string> want, have;
    for (const json& j : json_lines(tmp.file("full") + "/metrics.jsonl")) want.push_back(j.value("train_loss_hex", ""));
    for (const json& j : json_lines(part + "/metrics.jsonl")) have.push_back(j.value("train_loss_hex", ""));
    CHECK(have == want);  // the ignored flags really were ignored: the uninterrupted run's losses

    // --stop-after counts the run's epochs: one already reached is refused, not a run that does nothing.
    const auto before = snapshot(part);
    o = pretrain({"--resume", part, "--epochs", "4", "--stop-after", "2"}, tmp);
    CHECK(o.status == 1);
    CHECK_MESSAGE(o.error.find("--stop-after 2: the run already finished 2 epochs") == 0, o.error);
    CHECK(snapshot(part) == before);

    // --epochs 4 on the finished 2-epoch run: said, with the step it starts from, and the lr then follows the cosine
    // schedule of 4 epochs (lr = 1e-3 x 8 / 256; no warm-up; 2 steps per epoch).
    o = pretrain({"--resume", part, "--epochs", "4"}, tmp);
    REQUIRE_MESSAGE(o.status == 0, o.error);
    CHECK_MESSAGE(o.err_text.find("note: --epochs 4 with --resume: the cosine schedule of this 2-epoch run is stretched "
                                  "to 4 epochs from step 5 on") != std::string::npos, o.err_text);
    const double lr = 1e-3 * 8 / 256;
    int checked = 0;
    for (const json& j : json_lines(part + "/metrics.jsonl")) {
      if (!j.contains("lr")) continue;
      const int64_t step = j["step"];  // 1-based; the lr of 0-based step - 1
      const double want_lr = step > 4 ? cosine_lr(lr, 0, 0, 8, double(step - 1)) : cosine_lr(lr, 0, 0, 4, double(step - 1));
      CHECK_MESSAGE(std::fabs(j["lr"].get<double>() - want_lr) <= 1e-12 * lr, "step " << step);
      checked += step > 4;
    }
    CHECK(checked == 4);
  }

  TEST_CASE("Args: range getters and the check functions, one line each") {
    char p0[] = "moce", p1[] = "x", f1[] = "--n", v1[] = "-2", f2[] = "--r", v2[] = "0.5", f3[] = "--q", v3[] = "1e999";
    char* argv[] = {p0, p1, f1, v1, f2, v2, f3, v3};
    moce::Args a("x", "test");
    a.add("n", "0", "").add("r", "0", "").add("q", "0", "").add("u", "3", "");
    REQUIRE(a.parse(8, argv, 2));
    CHECK(error_of([&] { a.i64_at_least("n", 0); }) == "--n -2: expected an integer >= 0");
    CHECK(a.i64_at_least("n", -2) == -2);
    CHECK(a.f64_in("r", 0, 1) == 0.5);
    CHECK(error_of([&] { a.f64_in("r", 0.6, 1); }) == "--r 0.5: expected a number in [0.6, 1]");
    CHECK(error_of([&] { a.f64("q"); }).find("--q 1e999: expected a finite number") == 0);
    CHECK(a.given_names() == std::vector<std::string>{"n", "r", "q"});
    CHECK(error_of([] { moce::check_in("--m", 0.0, 0, 1, true, false); }) == "--m 0: expected a number in (0, 1]");
    CHECK(error_of([] { moce::check_at_least("--m", std::nan(""), 0.0); }) == "--m nan: expected a finite number >= 0");
  }
}
