// fuzz_run_config.cpp: libFuzzer target over the run configuration a resume reads back: the JSON of a
// checkpoint's "config" metadata (parsed as engine/io/checkpoint.cpp does), whose "run" entry
// moce::options_from_json (moce/train/pretrain_config.h) turns into PretrainOptions. The input is that JSON text.
// Checked: no crash or sanitizer report (a huge number into an integer field is undefined behaviour UBSan sees);
// a refusal is an eng::Error of one line; an accepted config writes back (options_to_json) to one that reads
// back to the same options.
#include <nlohmann/json.hpp>

#include "fuzz/fuzz_common.h"
#include "moce/train/pretrain_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  nlohmann::json config = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.is_object() || !config.contains("run")) return 0;  // refused before this reader
  fuzz::run_checked("run_config", "", [&] {
    moce::PretrainOptions o = moce::options_from_json(config["run"]);
    nlohmann::json back = moce::options_to_json(o);
    moce::PretrainOptions again = moce::options_from_json(back);
    if (moce::options_to_json(again) != back) fuzz::fail("run_config", "accepted options do not round-trip", back.dump());
  });
  return 0;
}
