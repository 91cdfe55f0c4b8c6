// safetensors.cpp: the safetensors reader (header validation, in-memory and file loaders) and the
// atomic writer. See safetensors.h for the format.
#include "engine/io/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <mutex>
#include <set>

#include <nlohmann/json.hpp>

#include "engine/backend.h"  // kMaxDims
#include "engine/io/atomic_file.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.cpp copies tensor bytes as they are: it assumes a little-endian host"
#endif

namespace eng {
namespace {

using json = nlohmann::json;
using ordered_json = nlohmann::ordered_json;

// One tensor as the header describes it, after validation.
struct Entry {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  uint64_t begin = 0, end = 0;  // byte range in the data buffer
};

struct Header {
  std::vector<Entry> entries;  // sorted by begin offset
  std::map<std::string, std::string> metadata;  // without the checksums key
  bool has_checksums = false;
  std::map<std::string, uint32_t> checksums;  // by tensor name, when has_checksums
};

// A string read from a file, quoted for an error message: control and non-ASCII bytes escaped and long
// strings cut, so that an error stays one readable line whatever the file holds.
std::string printable(const std::string& s) {
  constexpr size_t kMaxShown = 120;
  std::string out = "'";
  for (size_t i = 0; i < s.size(); i++) {
    if (i == kMaxShown) {
      out += fmt::format("...({} bytes)", s.size());
      break;
    }
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '\\' || c == '\'') {
      out += '\\';
      out += char(c);
    } else if (c >= 0x20 && c < 0x7f) {
      out += char(c);
    } else {
      out += fmt::format("\\x{:02x}", c);
    }
  }
  return out + "'";
}

// The safetensors dtype names this engine does not read; they get a clearer message than garbage does.
bool is_foreign_safetensors_dtype(const std::string& s) {
  static const std::set<std::string> names = {"BOOL", "U8",  "I8",      "U16",     "I16",     "F16",
                                              "U32",  "U64", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F6_E2M3",
                                              "F6_E3M2", "F4", "C64"};
  return names.count(s) != 0;
}

bool dtype_from_safetensors_name(const std::string& s, DType* out) {
  for (DType d : {DType::F32, DType::F64, DType::BF16, DType::I32, DType::I64}) {
    if (s == safetensors_dtype_name(d)) {
      *out = d;
      return true;
    }
  }
  return false;
}

// CRC-32 (zlib's) of n bytes; in chunks, since zlib's length is 32 bits.
uint32_t crc32_of(const void* data, size_t n) {
  const Bytef* p = static_cast<const Bytef*>(data);
  uLong crc = crc32(0L, Z_NULL, 0);
  constexpr size_t kChunk = size_t(1) << 30;
  while (n > 0) {
    const size_t k = std::min(n, kChunk);
    crc = crc32(crc, p, uInt(k));
    p += k;
    n -= k;
  }
  return uint32_t(crc);
}

std::string crc_hex(uint32_t crc) { return fmt::format("{:08x}", crc); }

// The checksums metadata value: a JSON object {tensor name: 8 lower-case hex digits}, exactly one per tensor.
void parse_checksums(const std::string& text, Header& h, const std::string& file) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  ENG_CHECK(j.is_object(), "{}: __metadata__ \"{}\" is not a JSON object of tensor checksums (the header is damaged)",
            file, kSafetensorsChecksumsKey);
  for (auto it = j.begin(); it != j.end(); ++it) {
    const bool hex8 = it.value().is_string() && it.value().get_ref<const std::string&>().size() == 8 &&
                      it.value().get_ref<const std::string&>().find_first_not_of("0123456789abcdef") == std::string::npos;
    ENG_CHECK(hex8, "{}: __metadata__ \"{}\": the checksum of tensor {} is not 8 hex digits (the header is damaged)",
              file, kSafetensorsChecksumsKey, printable(it.key()));
    h.checksums[it.key()] = uint32_t(std::stoul(it.value().get<std::string>(), nullptr, 16));
  }
  h.has_checksums = true;
}

// Every tensor has its checksum and every checksum its tensor (run after the entries are parsed).
void check_checksum_names(const Header& h, const std::string& file) {
  if (!h.has_checksums) return;
  std::set<std::string> names;
  for (const Entry& e : h.entries) {
    names.insert(e.name);
    ENG_CHECK(h.checksums.count(e.name), "{}: tensor {} has no checksum in __metadata__ \"{}\" (the header is damaged)",
              file, printable(e.name), kSafetensorsChecksumsKey);
  }
  for (const auto& [name, crc] : h.checksums)
    ENG_CHECK(names.count(name), "{}: __metadata__ \"{}\" lists tensor {}, which the file does not hold (the header is "
              "damaged)", file, kSafetensorsChecksumsKey, printable(name));
}

// A tensor's bytes against the checksum the writer stored.
void verify_checksum(const Header& h, const Entry& e, const void* bytes, const std::string& file) {
  if (!h.has_checksums) return;
  const uint32_t stored = h.checksums.at(e.name), got = crc32_of(bytes, size_t(e.end - e.begin));
  ENG_CHECK(got == stored, "{}: tensor {} is damaged (checksum {} != stored {})", file, printable(e.name), crc_hex(got),
            crc_hex(stored));
}

enum class IntCheck { Ok, NotInteger, Negative, TooLarge };

// A JSON value that must be an integer in [0, 2^63): floats, strings, negatives and huge values are refused.
IntCheck json_nonneg_int(const json& v, uint64_t* out) {
  if (v.is_number_unsigned()) {
    uint64_t u = v.get<uint64_t>();
    if (u > uint64_t(std::numeric_limits<int64_t>::max())) return IntCheck::TooLarge;
    *out = u;
    return IntCheck::Ok;
  }
  if (v.is_number_integer()) {
    int64_t i = v.get<int64_t>();
    if (i < 0) return IntCheck::Negative;
    *out = uint64_t(i);
    return IntCheck::Ok;
  }
  return IntCheck::NotInteger;
}

const char* int_check_problem(IntCheck c) {
  switch (c) {
    case IntCheck::NotInteger: return "is not an integer";
    case IntCheck::Negative: return "is negative";
    case IntCheck::TooLarge: return "does not fit in 63 bits";
    case IntCheck::Ok: break;
  }
  return "is fine";
}

uint64_t read_le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}

void check_header_length(uint64_t header_len, uint64_t file_size, const std::string& file) {
  ENG_CHECK(file_size >= 8, "{}: {} bytes is too short for a safetensors file (it starts with an 8-byte header length)",
            file, file_size);
  ENG_CHECK(header_len <= kSafetensorsMaxHeaderBytes,
            "{}: header length {} is absurd (the limit is {} bytes); not a safetensors file?", file, header_len,
            kSafetensorsMaxHeaderBytes);
  ENG_CHECK(header_len <= file_size - 8, "{}: header length {} is larger than the rest of the file ({} bytes)", file,
            header_len, file_size - 8);
}

// nlohmann's parse_error text without its "[json.exception...] " prefix, made one printable ASCII line.
std::string json_error_text(const std::exception& e) {
  std::string what = e.what();
  size_t close = what.find("] ");
  if (what.rfind("[json.exception", 0) == 0 && close != std::string::npos) what = what.substr(close + 2);
  std::string out;
  for (char c : what) {  // nlohmann quotes the input it stopped at: keep the message one printable line
    unsigned char u = static_cast<unsigned char>(c);
    out += (u < 0x20 || u >= 0x7f) ? '?' : c;
  }
  if (out.size() > 240) out = out.substr(0, 240) + "...";
  return out;
}

Entry parse_entry(const std::string& name, const json& val, uint64_t buffer_size, const std::string& file) {
  Entry e;
  e.name = name;
  const std::string who = "tensor " + printable(name);
  ENG_CHECK(val.is_object(), "{}: {} is described by a JSON {}, not an object", file, who, val.type_name());

  auto dtype_it = val.find("dtype");
  ENG_CHECK(dtype_it != val.end(), "{}: {} has no \"dtype\"", file, who);
  ENG_CHECK(dtype_it->is_string(), "{}: {}: \"dtype\" is a JSON {}, not a string", file, who, dtype_it->type_name());
  const std::string& dtype_str = dtype_it->get_ref<const std::string&>();
  if (!dtype_from_safetensors_name(dtype_str, &e.dtype)) {
    if (is_foreign_safetensors_dtype(dtype_str))
      ENG_FAIL("{}: unsupported dtype {} for {} (this engine reads F32, F64, BF16, I32, I64)", file, dtype_str, who);
    ENG_FAIL("{}: unsupported dtype {} for {} (not a safetensors dtype)", file, printable(dtype_str), who);
  }

  auto shape_it = val.find("shape");
  ENG_CHECK(shape_it != val.end(), "{}: {} has no \"shape\"", file, who);
  ENG_CHECK(shape_it->is_array(), "{}: {}: \"shape\" is a JSON {}, not an array", file, who, shape_it->type_name());
  ENG_CHECK(shape_it->size() <= size_t(kMaxDims), "{}: {} has {} dims; this engine supports at most {}", file, who,
            shape_it->size(), kMaxDims);
  // Both the element count and the product of the non-zero sizes (which row-major strides reach) must fit.
  int64_t span = 1;
  for (size_t i = 0; i < shape_it->size(); i++) {
    uint64_t d = 0;
    IntCheck c = json_nonneg_int((*shape_it)[i], &d);
    ENG_CHECK(c == IntCheck::Ok, "{}: {}: shape entry {} {}", file, who, i, int_check_problem(c));
    e.shape.push_back(int64_t(d));
    ENG_CHECK(!__builtin_mul_overflow(span, std::max<int64_t>(int64_t(d), 1), &span),
              "{}: {}: the product of shape {} overflows 64 bits", file, who, shape_str(e.shape));
  }
  const uint64_t numel = uint64_t(shape_numel(e.shape));
  uint64_t nbytes = 0;
  ENG_CHECK(!__builtin_mul_overflow(numel, uint64_t(dtype_size(e.dtype)), &nbytes),
            "{}: {}: shape {} of {} is too large (its byte size overflows 64 bits)", file, who, shape_str(e.shape),
            dtype_str);

  auto off_it = val.find("data_offsets");
  ENG_CHECK(off_it != val.end(), "{}: {} has no \"data_offsets\"", file, who);
  ENG_CHECK(off_it->is_array() && off_it->size() == 2,
            "{}: {}: \"data_offsets\" must be an array [begin, end], found a JSON {}{}", file, who,
            off_it->type_name(), off_it->is_array() ? fmt::format(" of {} elements", off_it->size()) : "");
  for (int k = 0; k < 2; k++) {
    IntCheck c = json_nonneg_int((*off_it)[size_t(k)], k == 0 ? &e.begin : &e.end);
    ENG_CHECK(c == IntCheck::Ok, "{}: {}: data_offsets {} {}", file, who, k == 0 ? "begin" : "end",
              int_check_problem(c));
  }
  ENG_CHECK(e.begin <= e.end, "{}: {}: data_offsets [{}, {}] end before they begin", file, who, e.begin, e.end);
  ENG_CHECK(e.end - e.begin == nbytes, "{}: {}: data_offsets [{}, {}] hold {} bytes but shape {} of {} needs {}",
            file, who, e.begin, e.end, e.end - e.begin, shape_str(e.shape), dtype_str, nbytes);
  ENG_CHECK(e.end <= buffer_size, "{}: {}: data_offsets [{}, {}] reach beyond the data buffer ({} bytes)", file, who,
            e.begin, e.end, buffer_size);
  return e;
}

// Parses and validates the JSON header against a data buffer of `buffer_size` bytes.
Header parse_header(const char* text, size_t len, uint64_t buffer_size, const std::string& file) {
  // nlohmann keeps the last of two equal keys silently; a repeated tensor name is an error here.
  std::set<std::string> top_keys;
  std::string repeated_key;
  json::parser_callback_t watch_keys = [&](int depth, json::parse_event_t event, json& parsed) {
    if (depth == 1 && event == json::parse_event_t::key && repeated_key.empty() && parsed.is_string()) {
      if (!top_keys.insert(parsed.get_ref<const std::string&>()).second) repeated_key = parsed.get<std::string>();
    }
    return true;
  };
  json j;
  try {
    j = json::parse(text, text + len, watch_keys);
  } catch (const json::exception& e) {
    ENG_FAIL("{}: header is not valid JSON: {}", file, json_error_text(e));
  }
  ENG_CHECK(j.is_object(), "{}: header is a JSON {}, not an object", file, j.type_name());
  ENG_CHECK(repeated_key.empty(), "{}: header names {} twice", file, printable(repeated_key));

  Header h;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& key = it.key();
    const json& val = it.value();
    if (key == "__metadata__") {
      ENG_CHECK(val.is_object(), "{}: __metadata__ is a JSON {}, not an object of strings", file, val.type_name());
      for (auto m = val.begin(); m != val.end(); ++m) {
        ENG_CHECK(m.value().is_string(), "{}: __metadata__ value {} is a JSON {}, not a string", file,
                  printable(m.key()), m.value().type_name());
        if (m.key() == kSafetensorsChecksumsKey)
          parse_checksums(m.value().get_ref<const std::string&>(), h, file);
        else
          h.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    h.entries.push_back(parse_entry(key, val, buffer_size, file));
  }

  // The spec wants the buffer covered exactly: tensors in offset order, each starting where the last ended.
  std::stable_sort(h.entries.begin(), h.entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t covered = 0;
  const Entry* last = nullptr;  // the entry that ends at `covered`
  for (const Entry& e : h.entries) {
    ENG_CHECK(e.begin >= covered, "{}: tensors {} [{}, {}] and {} [{}, {}] overlap", file, printable(last->name),
              last->begin, last->end, printable(e.name), e.begin, e.end);
    ENG_CHECK(e.begin == covered, "{}: bytes [{}, {}) of the data buffer belong to no tensor (gap before {})", file,
              covered, e.begin, printable(e.name));
    covered = e.end;  // >= begin == covered
    last = &e;
  }
  ENG_CHECK(covered == buffer_size,
            "{}: {} trailing bytes after the last tensor (the data buffer holds {} bytes, the tensors cover {})", file,
            buffer_size - covered, buffer_size, covered);
  check_checksum_names(h, file);
  return h;
}

// ---- writing ----

// The header bytes (length prefix + padded JSON) and the contiguous CPU tensors in buffer order.
struct Prepared {
  std::string header;
  std::vector<Tensor> data;
};

Prepared prepare(const std::map<std::string, Tensor>& tensors, const std::map<std::string, std::string>& metadata,
                 const std::string& file) {
  Prepared p;
  ENG_CHECK(!metadata.count(kSafetensorsChecksumsKey),
            "{}: metadata key \"{}\" is reserved for the tensor checksums the writer adds; nothing was written", file,
            kSafetensorsChecksumsKey);
  ordered_json h = ordered_json::object();
  h["__metadata__"] = ordered_json::object();  // filled below, once the checksums are known
  ordered_json checksums = ordered_json::object();
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    ENG_CHECK(name != "__metadata__", "{}: a tensor cannot be named __metadata__; nothing was written", file);
    ENG_CHECK(t.defined(), "{}: tensor {} is undefined; nothing was written", file, printable(name));
    Tensor c = t.detach();
    if (!c.device().is_cpu()) c = c.to(Device::cpu());
    c = c.contiguous();
    ordered_json e = ordered_json::object();
    e["dtype"] = safetensors_dtype_name(c.dtype());
    e["shape"] = c.shape();
    e["data_offsets"] = {offset, offset + c.nbytes()};
    h[name] = std::move(e);
    offset += c.nbytes();
    checksums[name] = crc_hex(crc32_of(c.raw_data(), c.nbytes()));
    p.data.push_back(c);
  }
  std::string text;
  try {  // dump() throws on invalid UTF-8 in a name or value
    std::map<std::string, std::string> all = metadata;
    all[kSafetensorsChecksumsKey] = checksums.dump();
    ordered_json m = ordered_json::object();
    for (const auto& [k, v] : all) m[k] = v;
    h["__metadata__"] = std::move(m);
    text = h.dump();
  } catch (const ordered_json::exception& e) {
    ENG_FAIL("{}: cannot write the header ({}); nothing was written", file, json_error_text(e));
  }
  // Pad with spaces so the data buffer starts 8-byte aligned in the file.
  text.append((8 - text.size() % 8) % 8, ' ');
  p.header.resize(8);
  uint64_t n = text.size();
  for (int i = 0; i < 8; i++) p.header[size_t(i)] = char((n >> (8 * i)) & 0xff);
  p.header += text;
  return p;
}

// Through io::AtomicFile: on any failure the temporary file is removed and whatever was at <path> before is left
// as it was; the errors name <path> and the step that failed.
void write_atomically(const std::string& path, const Prepared& p) {
  io::AtomicFile file(path);
  file.write(p.header.data(), p.header.size());
  for (const Tensor& t : p.data)
    if (t.nbytes() > 0) file.write(t.raw_data(), t.nbytes());
  file.commit();
}

// ---- reading a file ----

struct FdCloser {
  int fd;
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
};

// Files without checksums (a converted official checkpoint, files written before the checksums) load as they are; one
// note per file and process, so that a loop over a file does not repeat it.
void note_unchecked_file(const std::string& path) {
  static std::mutex mu;
  static std::set<std::string> noted;
  std::lock_guard<std::mutex> lock(mu);
  if (!noted.insert(path).second) return;
  std::fprintf(stderr, "note: %s has no tensor checksums (not written by this engine's writer, or by an older one): "
               "loaded unverified\n", path.c_str());
}

void pread_exact(int fd, void* dst, size_t n, uint64_t offset, const std::string& file) {
  char* p = static_cast<char*>(dst);
  while (n > 0) {
    ssize_t r = ::pread(fd, p, n, off_t(offset));
    if (r < 0 && errno == EINTR) continue;
    ENG_CHECK(r >= 0, "{}: read failed at byte {}: {}", file, offset, std::strerror(errno));
    ENG_CHECK(r > 0, "{}: file ended at byte {} while reading (was it truncated meanwhile?)", file, offset);
    p += r;
    n -= size_t(r);
    offset += uint64_t(r);
  }
}

}  // namespace

const char* safetensors_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32: return "F32";
    case DType::F64: return "F64";
    case DType::BF16: return "BF16";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
  }
  return "?";
}

std::vector<uint8_t> serialize_safetensors(const std::map<std::string, Tensor>& tensors,
                                           const std::map<std::string, std::string>& metadata,
                                           const std::string& name_for_errors) {
  Prepared p = prepare(tensors, metadata, name_for_errors);
  std::vector<uint8_t> out(p.header.begin(), p.header.end());
  for (const Tensor& t : p.data) {
    const uint8_t* b = static_cast<const uint8_t*>(t.raw_data());
    if (t.nbytes() > 0) out.insert(out.end(), b, b + t.nbytes());
  }
  return out;
}

void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  write_atomically(path, prepare(tensors, metadata, path));
}

SafetensorsFile parse_safetensors(const uint8_t* data, size_t size, const std::string& name_for_errors) {
  const std::string& file = name_for_errors;
  ENG_CHECK(data != nullptr || size == 0, "{}: no data", file);
  check_header_length(size >= 8 ? read_le64(data) : 0, size, file);
  const uint64_t header_len = read_le64(data);
  const uint8_t* buffer = data + 8 + header_len;
  Header h = parse_header(reinterpret_cast<const char*>(data + 8), size_t(header_len), size - 8 - header_len, file);
  SafetensorsFile out;
  out.metadata = std::move(h.metadata);
  out.checksummed = h.has_checksums;
  for (const Entry& e : h.entries) {
    verify_checksum(h, e, buffer + e.begin, file);
    Tensor t = Tensor::empty(e.shape, e.dtype, Device::cpu());
    if (e.end > e.begin) std::memcpy(t.raw_data(), buffer + e.begin, size_t(e.end - e.begin));
    out.tensors.emplace(e.name, std::move(t));
  }
  return out;
}

SafetensorsFile load_safetensors(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ENG_CHECK(fd >= 0, "{}: cannot open: {}", path, std::strerror(errno));
  FdCloser closer{fd};
  struct stat st;
  ENG_CHECK(::fstat(fd, &st) == 0, "{}: cannot stat: {}", path, std::strerror(errno));
  ENG_CHECK(S_ISREG(st.st_mode), "{}: not a regular file{}", path, S_ISDIR(st.st_mode) ? " (it is a directory)" : "");
  const uint64_t size = uint64_t(st.st_size);

  uint8_t len_bytes[8] = {};
  check_header_length(0, size, path);  // at least 8 bytes
  pread_exact(fd, len_bytes, 8, 0, path);
  const uint64_t header_len = read_le64(len_bytes);
  check_header_length(header_len, size, path);
  std::string header(size_t(header_len), '\0');
  pread_exact(fd, &header[0], header.size(), 8, path);
  Header h = parse_header(header.data(), header.size(), size - 8 - header_len, path);

  SafetensorsFile out;
  out.metadata = std::move(h.metadata);
  out.checksummed = h.has_checksums;
  for (const Entry& e : h.entries) {  // offset order: the reads walk the file forwards
    Tensor t = Tensor::empty(e.shape, e.dtype, Device::cpu());
    if (e.end > e.begin) pread_exact(fd, t.raw_data(), size_t(e.end - e.begin), 8 + header_len + e.begin, path);
    verify_checksum(h, e, t.raw_data(), path);
    out.tensors.emplace(e.name, std::move(t));
  }
  if (!out.checksummed) note_unchecked_file(path);
  return out;
}

}  // namespace eng
