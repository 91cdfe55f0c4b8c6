// fuzz_cli.cpp: libFuzzer target over the flag parser (moce/common/cli.h: Args::parse, str/i64/f64/on,
// parse_index_list) with the real flags of `moce pretrain` / `moce train` (add_training_flags, read_training_flags)
// and a list flag as --moe-blocks takes it. The input is the argument list, NUL-separated.
// Checked: no crash or sanitizer report; a refusal is an eng::Error of one line; any other exception is a finding.
#include <cstring>
#include <vector>

#include "fuzz/fuzz_common.h"
#include "moce/cmd/training_flags.h"
#include "moce/common/cli.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<std::string> words{"moce", "pretrain"};
  std::string cur;
  for (size_t i = 0; i < size; i++) {
    if (data[i] == 0) {
      words.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(char(data[i]));
    }
  }
  if (!cur.empty()) words.push_back(cur);
  std::vector<char*> argv;
  for (std::string& w : words) {
    if (w == "--help" || w == "-h") return 0;  // prints the help and stops: nothing parsed after it
    argv.push_back(w.data());
  }
  argv.push_back(nullptr);
  fuzz::run_checked("cli", "", [&] {
    moce::Args a("pretrain", "fuzzing the flag parser");
    moce::add_training_flags(a, "1.5e-4", "runs/pretrain", "1");
    a.add("moe-blocks", "", "blocks with experts").add("ratio", "0.5", "a number");
    if (!a.parse(int(argv.size()) - 1, argv.data(), 2)) return;
    moce::PretrainOptions o;
    moce::PretrainSession s;
    moce::read_training_flags(a, o, s);
    (void)a.f64("ratio");
    if (a.given("moe-blocks")) {
      std::vector<int64_t> blocks = moce::parse_index_list(a.str("moe-blocks"), "--moe-blocks", "block numbers");
      for (int64_t b : blocks)
        if (b < 0) fuzz::fail("cli", "parse_index_list accepted a negative entry", a.str("moe-blocks"));
    }
  });
  return 0;
}
