// cli.h: a small command-line flag parser: --name value / --name=value / boolean --flag, with --help
// printing every flag and its default. Errors name the flag and what is wrong, in one line.
//
// Numbers: f64() refuses nan and inf for every flag; the range getters (i64_at_least, f64_at_least, f64_in) add the
// flag's accepted range, and the check_* functions apply the same rules to a value already read (an options struct
// validated once, whether it came from the flags or from a saved run's config).
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
  // The value, or "--name V: expected an integer >= MIN" / "a finite number >= MIN" / "... in [LO, HI]".
  int64_t i64_at_least(const std::string& name, int64_t min) const;
  double f64_at_least(const std::string& name, double min) const;
  double f64_in(const std::string& name, double lo, double hi) const;
  // Names of the flags given on the command line, in the order they were declared.
  std::vector<std::string> given_names() const;
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
// One line naming the flag, its value and the accepted range when the value lies outside it (and for a non-finite one).
void check_at_least(const std::string& flag, int64_t value, int64_t min);
void check_at_least(const std::string& flag, double value, double min);
// [lo, hi]; an open end (lo_open / hi_open) excludes that bound: (0, 1) is check_in(f, v, 0, 1, true, true).
void check_in(const std::string& flag, double value, double lo, double hi, bool lo_open = false, bool hi_open = false);

std::vector<int64_t> parse_index_list(const std::string& text, const std::string& flag, const std::string& expected);

}  // namespace moce
