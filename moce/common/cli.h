// cli.h: a small command-line flag parser: --name value / --name=value / boolean --flag, with --help
// printing every flag and its default. Errors name the flag and what is wrong, in one line.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace moce {

class Args {
 public:
  Args(std::string command, std::string summary) : command_(std::move(command)), summary_(std::move(summary)) {}
  // A flag taking a value; `def` is its default ("" = none).
  Args& add(const std::string& name, const std::string& def, const std::string& help);
  // A boolean switch, false unless given.
  Args& flag(const std::string& name, const std::string& help);
  // Parses argv[first..]; returns false when --help was asked for (the help is then printed).
  bool parse(int argc, char** argv, int first);
  std::string help() const;

  std::string str(const std::string& name) const;
  int64_t i64(const std::string& name) const;
  double f64(const std::string& name) const;
  bool on(const std::string& name) const;
  bool given(const std::string& name) const { return given_.count(name) > 0; }

 private:
  struct Spec {
    std::string def, help;
    bool is_flag = false;
  };
  const Spec& spec(const std::string& name) const;
  std::string command_, summary_;
  std::vector<std::string> order_;
  std::map<std::string, Spec> specs_;
  std::map<std::string, std::string> values_;
  std::map<std::string, bool> given_;
};

// A command-line value as an error message shows it: control characters as \xNN, so that the message stays one line
// whatever the argument holds (found by fuzz/fuzz_cli).
std::string printable_arg(const std::string& v);

// "3,5" -> {3, 5}: non-negative integers separated by commas, nothing else; otherwise throws
// "<flag> <text>: expected <expected>" (e.g. flag "--moe-blocks", expected "block numbers (0-based) separated by commas").
std::vector<int64_t> parse_index_list(const std::string& text, const std::string& flag, const std::string& expected);

}  // namespace moce
