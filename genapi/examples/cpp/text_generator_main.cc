// text_generator_main: generate text from a genapi model with the TensorFlow Lite C API.
//
// Usage:
//   text_generator_main --model=MODEL.tflite --tokenizer=TOKENIZER.model --prompt="TEXT"
//   text_generator_main --model=MODEL.task --prompt="TEXT"
//
// Options:
//   --model=PATH        a genapi .tflite (prefill_<T> and decode signatures) or a .task bundle
//                       (a stored zip with TF_LITE_PREFILL_DECODE, TOKENIZER_MODEL, METADATA)
//   --tokenizer=PATH    a SentencePiece .model file; required with a .tflite, overrides the
//                       bundle's own with a .task
//   --prompt=TEXT       the prompt; BOS (a .task's start token) is prepended once; control
//                       tokens written in it, such as <start_of_turn>, are single ids
//   --max_tokens=N      most new tokens (default 32)
//   --temperature=F     0 picks the most likely token (default); above 0 samples
//   --top_k=N           sample among the N most likely tokens (default 0: all)
//   --top_p=F           sample among the smallest set reaching probability F (default 1)
//   --seed=N            seed of the sampler (default 0)
//   --threads=N         CPU threads (default 2)
//   --stop_ids=A,B,...  more ids that end generation, besides the bundle's stop tokens (else
//                       EOS and the chat end tokens the vocabulary has)
//   --print_ids         also print the prompt and generated token ids (to stderr)
//
// The new text streams to stdout; model facts, speeds and errors go to stderr. Any failure
// prints one line starting with "error:" and exits with status 1 (2 for bad arguments).
// LITERT_LM_LIBRARY=/path/to/liblitert-lm.so overrides the library CMake found.
//
// Generation mirrors genapi's Python runner (genapi/runtime/generator.py) and LiteRT-LM: all
// prompt tokens but the last go through prefill calls (the smallest prefill signature that
// takes the rest, else the largest that fits), the last one goes to the first decode call,
// whose logits give the first new token. Each signature owns its tensors, so the updated KV
// cache a call outputs is copied into the inputs of the next call.

#include <dlfcn.h>
#include <fcntl.h>
#include <sentencepiece_processor.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "tflite_c_api.h"

// Where CMake found liblitert-lm.so; the LITERT_LM_LIBRARY environment variable overrides it.
#ifndef GENAPI_LITERT_LM_LIBRARY
#define GENAPI_LITERT_LM_LIBRARY "liblitert-lm.so"
#endif

namespace {

// Additive mask value of hidden cache slots (the Python runner's MASK_VALUE).
constexpr float kMaskValue = -1e30f;

// Tokens that end a chat turn in the model families genapi knows; each one the vocabulary has
// as a control token is a stop token (as in genapi.tokenizer.CHAT_END_TOKENS).
const char* const kChatEndTokens[] = {"<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>",
                                      "<|endoftext|>"};

[[noreturn]] void Fail(const std::string& message) {
  std::cout.flush();
  std::cerr << "error: " << message << std::endl;
  std::exit(1);
}

[[noreturn]] void UsageError(const std::string& message) {
  std::cerr << "error: " << message << "\n(run with --help for the options)" << std::endl;
  std::exit(2);
}

std::string Join(const std::vector<std::string>& items, const char* separator) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? separator : "") + items[i];
  return out;
}

// ---------------------------------------------------------------------------------------------
// Command line

struct Options {
  std::string model;
  std::string tokenizer;
  std::string prompt;
  bool has_prompt = false;
  int max_tokens = 32;
  float temperature = 0.0f;
  int top_k = 0;
  float top_p = 1.0f;
  uint64_t seed = 0;
  int threads = 2;
  std::vector<int> stop_ids;
  bool print_ids = false;
};

void PrintUsage() {
  std::cerr << "usage: text_generator_main --model=MODEL.tflite --tokenizer=TOKENIZER.model "
               "--prompt=TEXT\n"
               "       text_generator_main --model=MODEL.task --prompt=TEXT\n"
               "options: --max_tokens=N --temperature=F --top_k=N --top_p=F --seed=N "
               "--threads=N --stop_ids=A,B --print_ids\n";
}

template <typename T>
T ParseNumber(const std::string& name, const std::string& text) {
  std::istringstream stream(text);
  T value;
  if (!(stream >> value) || !stream.eof()) {
    UsageError("--" + name + "=" + text + " is not a number");
  }
  return value;
}

Options ParseOptions(int argc, char** argv) {
  Options options;
  const std::set<std::string> valued = {"model", "tokenizer", "prompt", "max_tokens", "temperature",
                                        "top_k", "top_p",     "seed",   "threads",    "stop_ids"};
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      PrintUsage();
      std::exit(0);
    }
    if (arg.rfind("--", 0) != 0) UsageError("unexpected argument '" + arg + "'");
    std::string name = arg.substr(2), value;
    size_t equals = name.find('=');
    if (equals != std::string::npos) {
      value = name.substr(equals + 1);
      name = name.substr(0, equals);
    } else if (valued.count(name)) {
      if (i + 1 >= argc) UsageError("--" + name + " needs a value");
      value = argv[++i];
    }
    if (name == "print_ids") {
      options.print_ids = true;
    } else if (!valued.count(name)) {
      UsageError("unknown option --" + name);
    } else if (name == "model") {
      options.model = value;
    } else if (name == "tokenizer") {
      options.tokenizer = value;
    } else if (name == "prompt") {
      options.prompt = value;
      options.has_prompt = true;
    } else if (name == "max_tokens") {
      options.max_tokens = ParseNumber<int>(name, value);
    } else if (name == "temperature") {
      options.temperature = ParseNumber<float>(name, value);
    } else if (name == "top_k") {
      options.top_k = ParseNumber<int>(name, value);
    } else if (name == "top_p") {
      options.top_p = ParseNumber<float>(name, value);
    } else if (name == "seed") {
      options.seed = ParseNumber<uint64_t>(name, value);
    } else if (name == "threads") {
      options.threads = ParseNumber<int>(name, value);
    } else if (name == "stop_ids") {
      std::stringstream list(value);
      std::string item;
      while (std::getline(list, item, ',')) {
        if (!item.empty()) options.stop_ids.push_back(ParseNumber<int>(name, item));
      }
    }
  }
  if (options.model.empty()) UsageError("--model is required");
  if (!options.has_prompt) UsageError("--prompt is required");
  if (options.max_tokens < 1) UsageError("--max_tokens must be >= 1");
  if (options.temperature < 0) UsageError("--temperature must be >= 0");
  if (options.top_k < 0) UsageError("--top_k must be >= 0");
  if (!(options.top_p > 0 && options.top_p <= 1)) UsageError("--top_p must be in (0, 1]");
  if (options.threads < 1) UsageError("--threads must be >= 1");
  return options;
}

// ---------------------------------------------------------------------------------------------
// Files: a read-only mapping, and the entries of a stored (uncompressed) zip such as a .task

class MappedFile {
 public:
  explicit MappedFile(const std::string& path) : path_(path) {
    int fd = open(path.c_str(), O_RDONLY);
    if (fd < 0) Fail("no model file at " + path + ": " + std::strerror(errno));
    struct stat info;
    if (fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
      close(fd);
      Fail(path + " is not a regular file");
    }
    size_ = static_cast<size_t>(info.st_size);
    if (size_ > 0) {
      void* data = mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (data == MAP_FAILED) {
        close(fd);
        Fail("cannot map " + path + ": " + std::strerror(errno));
      }
      data_ = static_cast<const uint8_t*>(data);
    }
    close(fd);
  }
  ~MappedFile() {
    if (data_) munmap(const_cast<uint8_t*>(data_), size_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

uint32_t ReadU16(const uint8_t* p) { return p[0] | (p[1] << 8); }
uint32_t ReadU32(const uint8_t* p) { return ReadU16(p) | (ReadU16(p + 2) << 16); }
uint64_t ReadU64(const uint8_t* p) {
  return ReadU32(p) | (static_cast<uint64_t>(ReadU32(p + 4)) << 32);
}

struct ZipEntry {
  const uint8_t* data;
  size_t size;
};

// The entries of a zip whose members are stored, read from its central directory. Bundles
// past 4 GiB carry ZIP64 records, whose 64-bit values replace the 0xffffffff placeholders.
std::map<std::string, ZipEntry> ReadStoredZip(const MappedFile& file) {
  const uint8_t* base = file.data();
  const uint64_t size = file.size();
  const std::string& where = file.path();
  auto damaged = [&](const std::string& what) { Fail(where + ": damaged zip file: " + what); };

  // The end-of-central-directory record is in the last 22 + 65535 (comment) bytes.
  constexpr uint64_t kEndRecord = 22;
  if (size < kEndRecord) Fail(where + " is too short to be a zip (.task) file");
  uint64_t end = UINT64_MAX;
  const uint64_t lowest = size > kEndRecord + 65535 ? size - kEndRecord - 65535 : 0;
  for (uint64_t at = size - kEndRecord + 1; at-- > lowest;) {
    if (ReadU32(base + at) == 0x06054b50) {
      end = at;
      break;
    }
  }
  if (end == UINT64_MAX) Fail(where + " is not a zip (.task) file: no central directory");
  uint64_t count = ReadU16(base + end + 10);
  uint64_t directory_size = ReadU32(base + end + 12);
  uint64_t directory_offset = ReadU32(base + end + 16);
  if (end >= 20 && ReadU32(base + end - 20) == 0x07064b50) {  // the ZIP64 locator
    const uint64_t record = ReadU64(base + end - 20 + 8);
    if (record + 56 > end || ReadU32(base + record) != 0x06064b50) damaged("ZIP64 end record");
    count = ReadU64(base + record + 32);
    directory_size = ReadU64(base + record + 40);
    directory_offset = ReadU64(base + record + 48);
  }
  if (directory_offset + directory_size > end) damaged("central directory out of bounds");

  std::map<std::string, ZipEntry> entries;
  uint64_t at = directory_offset;
  for (uint64_t i = 0; i < count; ++i) {
    if (at + 46 > end || ReadU32(base + at) != 0x02014b50) damaged("central directory");
    const uint32_t method = ReadU16(base + at + 10);
    const uint32_t name_length = ReadU16(base + at + 28);
    const uint32_t extra_length = ReadU16(base + at + 30);
    const uint32_t comment_length = ReadU16(base + at + 32);
    if (at + 46 + name_length + extra_length > end) damaged("central directory");
    const std::string name(reinterpret_cast<const char*>(base + at + 46), name_length);
    uint64_t stored_size = ReadU32(base + at + 20), uncompressed = ReadU32(base + at + 24);
    uint64_t local = ReadU32(base + at + 42);
    // ZIP64 extra field (id 1): the 64-bit values of the placeholders, in this order.
    const uint8_t* extra = base + at + 46 + name_length;
    for (uint32_t x = 0; x + 4 <= extra_length;) {
      const uint32_t id = ReadU16(extra + x), length = ReadU16(extra + x + 2);
      const uint8_t* value = extra + x + 4;
      if (id == 1) {
        for (uint64_t* field : {&uncompressed, &stored_size, &local}) {
          if (*field == 0xffffffffu && value + 8 <= extra + x + 4 + length) {
            *field = ReadU64(value);
            value += 8;
          }
        }
      }
      x += 4 + length;
    }
    if (method != 0 || stored_size != uncompressed) {
      Fail(where + ": entry " + name + " is compressed (method " + std::to_string(method) +
           "); a .task bundle stores its entries uncompressed");
    }
    if (local + 30 > size || ReadU32(base + local) != 0x04034b50) damaged("entry " + name);
    // The local header has its own name and extra field lengths (the extra field may pad).
    const uint64_t data = local + 30 + ReadU16(base + local + 26) + ReadU16(base + local + 28);
    if (data + stored_size > size) damaged("entry " + name + " runs past the end");
    entries[name] = ZipEntry{base + data, static_cast<size_t>(stored_size)};
    at += 46 + name_length + extra_length + comment_length;
  }
  return entries;
}

// Strings of fields 5 (stop_tokens) and 6 (start_token) of a MediaPipe LlmParameters message.
struct BundleTokens {
  std::string start_token;
  std::vector<std::string> stop_tokens;
};

BundleTokens ReadLlmParameters(const ZipEntry& metadata) {
  BundleTokens tokens;
  const uint8_t* p = metadata.data;
  const uint8_t* end = p + metadata.size;
  auto varint = [&](uint64_t* value) {
    *value = 0;
    for (int shift = 0; p < end && shift < 64; shift += 7) {
      uint8_t byte = *p++;
      *value |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if (!(byte & 0x80)) return true;
    }
    return false;
  };
  while (p < end) {
    uint64_t key, value;
    if (!varint(&key)) return {};  // not a message this runner understands: ignore it
    const uint64_t field = key >> 3, wire = key & 7;
    if (wire == 0) {
      if (!varint(&value)) return {};
    } else if (wire == 1 || wire == 5) {
      const size_t skip = wire == 1 ? 8 : 4;
      if (static_cast<size_t>(end - p) < skip) return {};
      p += skip;
    } else if (wire == 2) {
      if (!varint(&value) || value > static_cast<uint64_t>(end - p)) return {};
      std::string text(reinterpret_cast<const char*>(p), value);
      p += value;
      if (field == 5) tokens.stop_tokens.push_back(text);
      if (field == 6) tokens.start_token = text;
    } else {
      return {};
    }
  }
  return tokens;
}

// ---------------------------------------------------------------------------------------------
// Tokenizer: SentencePiece with control tokens matched in the text first, as genapi does

class Tokenizer {
 public:
  void LoadFile(const std::string& path) {
    struct stat info;
    if (stat(path.c_str(), &info) != 0) Fail("no tokenizer file at " + path);
    Check(processor_.Load(path), "load the SentencePiece model " + path);
    Index();
  }
  void LoadBytes(std::string_view bytes, const std::string& where) {
    Check(processor_.LoadFromSerializedProto(bytes), "load the SentencePiece model in " + where);
    Index();
  }

  int vocab_size() const { return processor_.GetPieceSize(); }
  int bos_id() const { return processor_.bos_id(); }
  int eos_id() const { return processor_.eos_id(); }

  // The id of `piece`, or -1 if the vocabulary lacks it.
  int PieceId(const std::string& piece) const {
    const int id = processor_.PieceToId(piece);
    return processor_.IdToPiece(id) == piece ? id : -1;
  }
  bool IsControl(int id) const { return id >= 0 && processor_.IsControl(id); }

  // Ids of `text`; control tokens written in it become their single ids (longest first at
  // the leftmost position), the text between them is encoded piece by piece.
  std::vector<int> Encode(const std::string& text) const {
    std::vector<int> ids;
    size_t done = 0, at = 0;
    auto encode_plain = [&](size_t from, size_t to) {
      if (to <= from) return;
      std::vector<int> part;
      Check(processor_.Encode(text.substr(from, to - from), &part), "encode the prompt");
      ids.insert(ids.end(), part.begin(), part.end());
    };
    while (at < text.size()) {
      int match = -1;
      size_t match_length = 0;
      auto candidates = controls_.find(text[at]);
      if (candidates != controls_.end()) {
        for (const auto& [piece, id] : candidates->second) {  // longest first
          if (text.compare(at, piece.size(), piece) == 0) {
            match = id;
            match_length = piece.size();
            break;
          }
        }
      }
      if (match < 0) {
        ++at;
        continue;
      }
      encode_plain(done, at);
      ids.push_back(match);
      at += match_length;
      done = at;
    }
    encode_plain(done, text.size());
    return ids;
  }

  std::string Decode(const std::vector<int>& ids) const {
    std::vector<int> known;
    for (int id : ids) {
      if (id >= 0 && id < vocab_size()) known.push_back(id);
    }
    std::string text;
    Check(processor_.Decode(known, &text), "decode token ids");
    return text;
  }

 private:
  static void Check(const sentencepiece::util::Status& status, const std::string& what) {
    if (!status.ok()) Fail("cannot " + what + ": " + status.ToString());
  }

  void Index() {
    controls_.clear();
    for (int id = 0; id < processor_.GetPieceSize(); ++id) {
      if (!processor_.IsControl(id)) continue;
      const std::string piece = processor_.IdToPiece(id);
      if (!piece.empty()) controls_[piece[0]].emplace_back(piece, id);
    }
    for (auto& [first, list] : controls_) {
      std::stable_sort(list.begin(), list.end(), [](const auto& a, const auto& b) {
        return a.first.size() > b.first.size();
      });
    }
  }

  sentencepiece::SentencePieceProcessor processor_;
  std::map<char, std::vector<std::pair<std::string, int>>> controls_;  // by first byte
};

// ---------------------------------------------------------------------------------------------
// TFLite: every call is checked; the error reporter keeps the library's last message

TfLiteCApi tfl;

// Opens liblitert-lm.so privately (see tflite_c_api.h for why) and resolves the C API.
void LoadTfLiteCApi() {
  const char* from_environment = std::getenv("LITERT_LM_LIBRARY");
  const std::string path =
      from_environment && *from_environment ? from_environment : GENAPI_LITERT_LM_LIBRARY;
  void* library = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (library == nullptr) {
    Fail(std::string("cannot open the TFLite C API library: ") + dlerror() +
         " (set LITERT_LM_LIBRARY to the liblitert-lm.so of the litert-lm-api wheel)");
  }
#define GENAPI_TFLITE_LOAD(result, name, parameters)                      \
  tfl.name = reinterpret_cast<decltype(tfl.name)>(dlsym(library, #name)); \
  if (tfl.name == nullptr) Fail(path + " does not export " #name);
  GENAPI_TFLITE_C_API(GENAPI_TFLITE_LOAD)
#undef GENAPI_TFLITE_LOAD
}

std::string g_tflite_message;

void ReportTfLiteError(void*, const char* format, va_list args) {
  char buffer[2048];
  vsnprintf(buffer, sizeof(buffer), format, args);
  g_tflite_message = buffer;
}

std::string TfLiteDetail() {
  return g_tflite_message.empty() ? "" : " (TFLite: " + g_tflite_message + ")";
}

void CheckStatus(TfLiteStatus status, const std::string& what) {
  if (status != kTfLiteOk) {
    Fail(what + " failed with TFLite status " + std::to_string(status) + TfLiteDetail());
  }
}

template <typename T>
T* CheckNotNull(T* pointer, const std::string& what) {
  if (pointer == nullptr) Fail(what + " failed" + TfLiteDetail());
  return pointer;
}

// A tensor's buffer; null would mean its tensors were never allocated.
void* Data(const TfLiteTensor* tensor, const std::string& what) {
  return CheckNotNull(tfl.TfLiteTensorData(tensor), "reading the buffer of " + what);
}

std::vector<int> Shape(const TfLiteTensor* tensor) {
  std::vector<int> shape(tfl.TfLiteTensorNumDims(tensor));
  for (size_t i = 0; i < shape.size(); ++i) shape[i] = tfl.TfLiteTensorDim(tensor, i);
  return shape;
}

std::string ShapeText(const std::vector<int>& shape) {
  std::vector<std::string> dims;
  for (int d : shape) dims.push_back(std::to_string(d));
  return "[" + Join(dims, ", ") + "]";
}

// ---------------------------------------------------------------------------------------------
// The model: signatures, the KV cache hand-back, prefill and decode

// One signature's tensors. Inputs: tokens int32 [1, T], input_pos int32 [T], optional mask
// float32 [1, 1, T, S], kv_cache_{k,v}_<i>; outputs: the same kv names, logits on decode.
struct Signature {
  std::string key;
  TfLiteSignatureRunner* runner = nullptr;
  int length = 0;  // T
  TfLiteTensor* tokens = nullptr;
  TfLiteTensor* input_pos = nullptr;
  TfLiteTensor* mask = nullptr;
  const TfLiteTensor* logits = nullptr;
  std::vector<TfLiteTensor*> cache_inputs;  // in the order of LlmModel::cache_names_
  std::vector<const TfLiteTensor*> cache_outputs;
};

class LlmModel {
 public:
  // `data` (with `size`) is a .tflite in memory that must outlive the model; null reads `path`.
  LlmModel(const std::string& path, const void* data, size_t size, int threads) : path_(path) {
    model_ = data ? tfl.TfLiteModelCreate(data, size) : tfl.TfLiteModelCreateFromFile(path.c_str());
    CheckNotNull(model_, "reading a TFLite model from " + path);
    TfLiteInterpreterOptions* options =
        CheckNotNull(tfl.TfLiteInterpreterOptionsCreate(), "creating interpreter options");
    tfl.TfLiteInterpreterOptionsSetNumThreads(options, threads);
    tfl.TfLiteInterpreterOptionsSetErrorReporter(options, ReportTfLiteError, nullptr);
    // XNNPACK, as the Python runner's CompiledModel uses: the interpreter alone would run the
    // reference kernels, several times slower and with other rounding in hybrid int8 layers.
    TfLiteXNNPackDelegateOptions xnnpack = tfl.TfLiteXNNPackDelegateOptionsDefault();
    xnnpack.num_threads = threads;
    delegate_ = CheckNotNull(tfl.TfLiteXNNPackDelegateCreate(&xnnpack), "creating XNNPACK");
    tfl.TfLiteInterpreterOptionsAddDelegate(options, delegate_);
    interpreter_ = tfl.TfLiteInterpreterCreate(model_, options);
    tfl.TfLiteInterpreterOptionsDelete(options);
    CheckNotNull(interpreter_, "creating the interpreter for " + path);

    std::vector<std::string> keys;
    const int32_t count = tfl.TfLiteInterpreterGetSignatureCount(interpreter_);
    for (int32_t i = 0; i < count; ++i) {
      keys.push_back(CheckNotNull(tfl.TfLiteInterpreterGetSignatureKey(interpreter_, i),
                                  "reading signature key " + std::to_string(i)));
    }
    const bool has_decode = std::count(keys.begin(), keys.end(), "decode") == 1;
    const bool has_prefill = std::any_of(
        keys.begin(), keys.end(), [](const std::string& k) { return k.rfind("prefill", 0) == 0; });
    if (!has_decode || !has_prefill) {
      Fail(path + " has signatures [" + Join(keys, ", ") +
           "]; a genapi model needs `decode` and at least one `prefill_<T>`");
    }

    decode_ = OpenSignature("decode");
    for (const std::string& key : keys) {
      if (key.rfind("prefill", 0) == 0) prefills_.push_back(OpenSignature(key));
    }
    std::sort(prefills_.begin(), prefills_.end(),
              [](const auto& a, const auto& b) { return a->length < b->length; });

    if (decode_->length != 1) Fail(path + ": decode takes tokens [1, 1], not [1, T > 1]");
    if (decode_->logits == nullptr) Fail(path + ": the decode signature has no `logits` output");
    const std::vector<int> logits_shape = Shape(decode_->logits);
    if (tfl.TfLiteTensorType(decode_->logits) != kTfLiteFloat32 || logits_shape.size() != 3 ||
        logits_shape[0] != 1 || logits_shape[1] != 1) {
      Fail(path + ": decode logits must be float32 [1, 1, V], not " + ShapeText(logits_shape));
    }
    vocab_size_ = logits_shape[2];
    FindCacheLength();
    for (const auto& sig : prefills_) {
      if (static_cast<bool>(sig->mask) != static_cast<bool>(decode_->mask)) {
        Fail(path + ": " + sig->key + " and decode disagree on the mask input");
      }
    }
    ZeroCache();
  }

  ~LlmModel() {
    for (auto& sig : prefills_) tfl.TfLiteSignatureRunnerDelete(sig->runner);
    if (decode_) tfl.TfLiteSignatureRunnerDelete(decode_->runner);
    tfl.TfLiteInterpreterDelete(interpreter_);
    tfl.TfLiteXNNPackDelegateDelete(delegate_);
    tfl.TfLiteModelDelete(model_);
  }
  LlmModel(const LlmModel&) = delete;
  LlmModel& operator=(const LlmModel&) = delete;

  int cache_len() const { return cache_len_; }
  int vocab_size() const { return vocab_size_; }

  std::string Describe() const {
    std::vector<std::string> lengths;
    for (const auto& sig : prefills_) lengths.push_back(std::to_string(sig->length));
    return "prefill lengths [" + Join(lengths, ", ") + "], KV cache " + std::to_string(cache_len_) +
           " positions (layout " + layout_ + ", " + std::to_string(cache_names_.size() / 2) +
           " layers), " + (decode_->mask ? "mask input, " : "") + "vocabulary " +
           std::to_string(vocab_size_);
  }

  // Writes `tokens` at positions start.. into the KV cache, chunk by chunk.
  void Prefill(const std::vector<int>& tokens, int start) {
    size_t done = 0;
    while (done < tokens.size()) {
      const int pos = start + static_cast<int>(done);
      const size_t remaining = tokens.size() - done;
      Signature* sig = PickPrefill(remaining, pos);
      if (sig == nullptr) {  // too close to the cache end for any prefill: one token at a time
        Run(decode_.get(), &tokens[done], 1, pos);
        done += 1;
        continue;
      }
      // A partial chunk is padded with token 0; the padded rows write cache slots past the
      // prompt, which stay hidden until a decode call overwrites them (see generator.py).
      const size_t chunk = std::min<size_t>(remaining, sig->length);
      Run(sig, &tokens[done], chunk, pos);
      done += chunk;
    }
  }

  // Feeds one token at `pos`; returns the logits [V], valid until the next call.
  const float* Decode(int token, int pos) {
    Run(decode_.get(), &token, 1, pos);
    return static_cast<const float*>(Data(decode_->logits, "decode logits"));
  }

 private:
  std::unique_ptr<Signature> OpenSignature(const std::string& key) {
    auto sig = std::make_unique<Signature>();
    sig->key = key;
    sig->runner = CheckNotNull(tfl.TfLiteInterpreterGetSignatureRunner(interpreter_, key.c_str()),
                               "opening signature " + key);
    CheckStatus(tfl.TfLiteSignatureRunnerAllocateTensors(sig->runner),
                "allocating the tensors of " + key);

    static const std::regex kCacheName("kv_cache_[kv]_[0-9]+");
    std::vector<std::string> inputs, cache_names;
    const size_t input_count = tfl.TfLiteSignatureRunnerGetInputCount(sig->runner);
    for (size_t i = 0; i < input_count; ++i) {
      inputs.push_back(CheckNotNull(tfl.TfLiteSignatureRunnerGetInputName(sig->runner, i),
                                    key + ": reading input name " + std::to_string(i)));
      if (std::regex_match(inputs.back(), kCacheName)) cache_names.push_back(inputs.back());
    }
    std::set<std::string> outputs;
    const size_t output_count = tfl.TfLiteSignatureRunnerGetOutputCount(sig->runner);
    for (size_t i = 0; i < output_count; ++i) {
      outputs.insert(CheckNotNull(tfl.TfLiteSignatureRunnerGetOutputName(sig->runner, i),
                                  key + ": reading output name " + std::to_string(i)));
    }
    auto input = [&](const std::string& name) -> TfLiteTensor* {
      if (std::find(inputs.begin(), inputs.end(), name) == inputs.end()) return nullptr;
      return CheckNotNull(tfl.TfLiteSignatureRunnerGetInputTensor(sig->runner, name.c_str()),
                          key + ": reading input " + name);
    };

    sig->tokens = input("tokens");
    sig->input_pos = input("input_pos");
    sig->mask = input("mask");
    if (!sig->tokens || !sig->input_pos) {
      Fail(path_ + ": signature " + key + " has inputs [" + Join(inputs, ", ") +
           "]; `tokens` and `input_pos` are needed");
    }
    const std::vector<int> tokens_shape = Shape(sig->tokens);
    if (tfl.TfLiteTensorType(sig->tokens) != kTfLiteInt32 || tokens_shape.size() != 2 ||
        tokens_shape[0] != 1) {
      Fail(path_ + ": " + key + " tokens must be int32 [1, T], not " + ShapeText(tokens_shape));
    }
    sig->length = tokens_shape[1];
    const std::vector<int> pos_shape = Shape(sig->input_pos);
    if (tfl.TfLiteTensorType(sig->input_pos) != kTfLiteInt32 || pos_shape.size() != 1 ||
        pos_shape[0] != sig->length) {
      Fail(path_ + ": " + key + " input_pos must be int32 [" + std::to_string(sig->length) +
           "], not " + ShapeText(pos_shape));
    }
    if (sig->mask) {
      const std::vector<int> mask_shape = Shape(sig->mask);
      if (tfl.TfLiteTensorType(sig->mask) != kTfLiteFloat32 || mask_shape.size() != 4 ||
          mask_shape[2] != sig->length) {
        Fail(path_ + ": " + key + " mask must be float32 [1, 1, T, S], not " +
             ShapeText(mask_shape));
      }
    }
    if (outputs.count("logits")) {
      sig->logits = CheckNotNull(tfl.TfLiteSignatureRunnerGetOutputTensor(sig->runner, "logits"),
                                 key + ": reading output logits");
    }

    if (cache_names.empty()) Fail(path_ + ": " + key + " has no kv_cache_k_<i> inputs");
    if (cache_names_.empty()) cache_names_ = cache_names;
    if (std::set<std::string>(cache_names.begin(), cache_names.end()) !=
        std::set<std::string>(cache_names_.begin(), cache_names_.end())) {
      Fail(path_ + ": " + key + " and decode have different KV cache inputs");
    }
    for (const std::string& name : cache_names_) {
      if (!outputs.count(name)) {
        Fail(path_ + ": " + key + " has input " + name +
             " but no output of that name to hand the updated cache back");
      }
      TfLiteTensor* in = input(name);
      const TfLiteTensor* out =
          CheckNotNull(tfl.TfLiteSignatureRunnerGetOutputTensor(sig->runner, name.c_str()),
                       key + ": reading output " + name);
      if (Shape(in) != Shape(out) ||
          tfl.TfLiteTensorByteSize(in) != tfl.TfLiteTensorByteSize(out)) {
        Fail(path_ + ": " + key + " " + name + " is " + ShapeText(Shape(in)) + " as an input but " +
             ShapeText(Shape(out)) + " as an output");
      }
      if (decode_ && Shape(in) != Shape(decode_->cache_inputs[sig->cache_inputs.size()])) {
        Fail(path_ + ": " + key + " and decode disagree on the shape of " + name);
      }
      sig->cache_inputs.push_back(in);
      sig->cache_outputs.push_back(out);
    }
    return sig;
  }

  // S, and the layout behind it. With a mask, S is its last dim. Without one, the layout
  // is told by K and V: K [1, G, S, D] with V [1, G, D, S] ("transposed", the dims 2 and 3
  // swap between them) or K = V [1, G, S, D] ("bgsd"); S is dim 2 of K in both. ("bsgd",
  // [1, S, G, D], always comes with a mask.)
  void FindCacheLength() {
    int k_index = -1, v_index = -1;
    for (size_t i = 0; i < cache_names_.size(); ++i) {
      if (cache_names_[i] == "kv_cache_k_0") k_index = i;
      if (cache_names_[i] == "kv_cache_v_0") v_index = i;
    }
    if (k_index < 0 || v_index < 0) Fail(path_ + ": kv_cache_k_0 or kv_cache_v_0 is missing");
    const std::vector<int> k = Shape(decode_->cache_inputs[k_index]);
    const std::vector<int> v = Shape(decode_->cache_inputs[v_index]);
    if (k.size() != 4 || v.size() != 4) {
      Fail(path_ + ": KV cache tensors must have rank 4, not " + ShapeText(k) + " and " +
           ShapeText(v));
    }
    const std::string shapes = " (K " + ShapeText(k) + ", V " + ShapeText(v) + ")";
    if (decode_->mask) {
      cache_len_ = Shape(decode_->mask)[3];
      if (k == v && k[1] == cache_len_ && k[2] != cache_len_) {
        layout_ = "bsgd";
      } else if (k == v && k[2] == cache_len_) {
        layout_ = "bgsd";
      } else if (k[2] == cache_len_ && v[3] == cache_len_ && k[3] == v[2]) {
        layout_ = "transposed";
      } else {
        Fail(path_ + ": the mask's cache length " + std::to_string(cache_len_) +
             " matches no KV cache layout" + shapes);
      }
    } else if (k == v) {
      cache_len_ = k[2];
      layout_ = k[2] == k[3] ? "bgsd or transposed" : "bgsd";
    } else if (k[2] == v[3] && k[3] == v[2] && k[1] == v[1]) {
      cache_len_ = k[2];
      layout_ = "transposed";
    } else {
      Fail(path_ + ": unknown KV cache layout without a mask input" + shapes);
    }
    layout_ += shapes;
    if (cache_len_ < 2) Fail(path_ + ": KV cache of " + std::to_string(cache_len_) + " slots");
  }

  // Never-written slots are hidden by the mask, but hidden slots still enter attention as
  // value * 0, and uninitialized NaNs would poison it.
  void ZeroCache() {
    auto zero = [](TfLiteTensor* tensor) {
      std::memset(Data(tensor, "a KV cache input"), 0, tfl.TfLiteTensorByteSize(tensor));
    };
    for (TfLiteTensor* tensor : decode_->cache_inputs) zero(tensor);
    for (const auto& sig : prefills_) {
      for (TfLiteTensor* tensor : sig->cache_inputs) zero(tensor);
    }
  }

  // The smallest prefill that takes all `remaining` tokens, else the largest full chunk;
  // either must end inside the cache. Null if none fits.
  Signature* PickPrefill(size_t remaining, int start) {
    Signature* full = nullptr;
    for (const auto& sig : prefills_) {
      if (start + sig->length > cache_len_) continue;
      if (static_cast<size_t>(sig->length) >= remaining) return sig.get();
      full = sig.get();  // ascending, so this ends as the largest that fits
    }
    return full;
  }

  // Runs `sig` on `count` tokens (padded with 0) at positions start, start + 1, ...
  void Run(Signature* sig, const int* tokens, size_t count, int start) {
    const int length = sig->length;
    std::vector<int32_t> padded(length, 0), positions(length);
    std::copy(tokens, tokens + count, padded.begin());
    for (int i = 0; i < length; ++i) positions[i] = start + i;
    CheckStatus(
        tfl.TfLiteTensorCopyFromBuffer(sig->tokens, padded.data(), length * sizeof(int32_t)),
        sig->key + ": writing tokens");
    CheckStatus(
        tfl.TfLiteTensorCopyFromBuffer(sig->input_pos, positions.data(), length * sizeof(int32_t)),
        sig->key + ": writing input_pos");
    if (sig->mask) {
      // Query row i sees cache slots 0..start+i.
      float* mask = static_cast<float*>(Data(sig->mask, sig->key + " mask"));
      for (int i = 0; i < length; ++i) {
        for (int s = 0; s < cache_len_; ++s) {
          mask[i * cache_len_ + s] = s <= positions[i] ? 0.0f : kMaskValue;
        }
      }
    }
    if (live_ != nullptr) {  // hand the updated cache of the last call to this one
      for (size_t i = 0; i < sig->cache_inputs.size(); ++i) {
        const TfLiteTensor* from = live_->cache_outputs[i];
        CheckStatus(
            tfl.TfLiteTensorCopyFromBuffer(sig->cache_inputs[i], Data(from, cache_names_[i]),
                                           tfl.TfLiteTensorByteSize(from)),
            sig->key + ": writing " + cache_names_[i]);
      }
    }
    CheckStatus(tfl.TfLiteSignatureRunnerInvoke(sig->runner), "running " + sig->key);
    live_ = sig;
  }

  std::string path_;
  TfLiteModel* model_ = nullptr;
  TfLiteDelegate* delegate_ = nullptr;  // must outlive the interpreter
  TfLiteInterpreter* interpreter_ = nullptr;
  std::unique_ptr<Signature> decode_;
  std::vector<std::unique_ptr<Signature>> prefills_;  // ascending length
  std::vector<std::string> cache_names_;              // in decode's input order
  Signature* live_ = nullptr;  // whose cache outputs hold the live cache; null: all zeros
  int cache_len_ = 0;
  int vocab_size_ = 0;
  std::string layout_;
};

// ---------------------------------------------------------------------------------------------
// Sampling: greedy, or temperature with top-k and top-p

class Sampler {
 public:
  explicit Sampler(const Options& options)
      : temperature_(options.temperature),
        top_k_(options.top_k),
        top_p_(options.top_p),
        rng_(options.seed) {}

  int operator()(const float* logits, int vocab_size) {
    if (temperature_ == 0) {  // the first of equal maxima, as numpy's argmax
      return static_cast<int>(std::max_element(logits, logits + vocab_size) - logits);
    }
    std::vector<double> scaled(logits, logits + vocab_size);
    for (double& value : scaled) value /= temperature_;
    if (top_k_ > 0 && top_k_ < vocab_size) {
      std::vector<double> sorted = scaled;
      std::nth_element(sorted.begin(), sorted.begin() + (top_k_ - 1), sorted.end(),
                       std::greater<double>());
      const double kth = sorted[top_k_ - 1];
      for (double& value : scaled) {
        if (value < kth) value = -INFINITY;
      }
    }
    const double top = *std::max_element(scaled.begin(), scaled.end());
    std::vector<double> probs(vocab_size);
    double total = 0;
    for (int i = 0; i < vocab_size; ++i) total += probs[i] = std::exp(scaled[i] - top);
    for (double& p : probs) p /= total;
    if (top_p_ < 1) {
      std::vector<int> order(vocab_size);
      for (int i = 0; i < vocab_size; ++i) order[i] = i;
      std::stable_sort(order.begin(), order.end(),
                       [&](int a, int b) { return probs[a] > probs[b]; });
      double cumulative = 0;
      size_t keep = 0;
      while (keep < order.size() && cumulative < top_p_) cumulative += probs[order[keep++]];
      std::vector<double> kept(vocab_size, 0.0);
      for (size_t i = 0; i < keep; ++i) kept[order[i]] = probs[order[i]];
      probs.swap(kept);
    }
    std::discrete_distribution<int> pick(probs.begin(), probs.end());
    return pick(rng_);
  }

 private:
  float temperature_;
  int top_k_;
  float top_p_;
  std::mt19937_64 rng_;
};

// ---------------------------------------------------------------------------------------------
// Streaming text: print what the ids decode to so far, holding back a partial UTF-8 character

class TextStream {
 public:
  explicit TextStream(const Tokenizer& tokenizer) : tokenizer_(tokenizer) {}

  void Add(int id) {
    ids_.push_back(id);
    Print(false);
  }
  void Finish() { Print(true); }

 private:
  void Print(bool final) {
    const std::string text = tokenizer_.Decode(ids_);
    static const std::string kReplacement = "\xEF\xBF\xBD";  // U+FFFD: bytes still to come
    const bool partial = text.size() >= 3 && text.compare(text.size() - 3, 3, kReplacement) == 0;
    if ((partial && !final) || text.size() <= printed_) return;
    std::cout << text.substr(printed_) << std::flush;
    printed_ = text.size();
  }

  const Tokenizer& tokenizer_;
  std::vector<int> ids_;
  size_t printed_ = 0;
};

std::string IdsText(const std::vector<int>& ids) {
  std::string out;
  for (size_t i = 0; i < ids.size(); ++i) out += (i ? " " : "") + std::to_string(ids[i]);
  return out;
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

}  // namespace

int main(int argc, char** argv) {
  const Options options = ParseOptions(argc, argv);

  // ---- model file and tokenizer: a .task bundle carries both, a .tflite needs --tokenizer
  MappedFile file(options.model);
  const bool is_zip = file.size() >= 4 && ReadU32(file.data()) == 0x04034b50;
  const bool is_tflite = file.size() >= 8 && std::memcmp(file.data() + 4, "TFL3", 4) == 0;
  Tokenizer tokenizer;
  BundleTokens bundle_tokens;
  const void* model_data = nullptr;
  size_t model_size = 0;
  std::vector<uint8_t> aligned_copy;
  if (is_zip) {
    const auto entries = ReadStoredZip(file);
    auto model_entry = entries.find("TF_LITE_PREFILL_DECODE");
    if (model_entry == entries.end()) {
      Fail(options.model + " has no TF_LITE_PREFILL_DECODE entry (not a .task LLM bundle)");
    }
    model_data = model_entry->second.data;
    model_size = model_entry->second.size;
    if (reinterpret_cast<uintptr_t>(model_data) % 16 != 0) {  // TFLite reads it in place
      aligned_copy.assign(model_entry->second.data, model_entry->second.data + model_size);
      model_data = aligned_copy.data();  // operator new aligns to 16 bytes
    }
    if (options.tokenizer.empty()) {
      auto tokenizer_entry = entries.find("TOKENIZER_MODEL");
      if (tokenizer_entry == entries.end()) {
        Fail(options.model + " has no TOKENIZER_MODEL entry; pass --tokenizer");
      }
      tokenizer.LoadBytes(
          std::string_view(reinterpret_cast<const char*>(tokenizer_entry->second.data),
                           tokenizer_entry->second.size),
          options.model);
    }
    auto metadata = entries.find("METADATA");
    if (metadata != entries.end()) bundle_tokens = ReadLlmParameters(metadata->second);
  } else if (!is_tflite) {
    Fail(options.model + " is neither a .tflite model nor a .task bundle");
  } else if (options.tokenizer.empty()) {
    UsageError("--tokenizer is required with a .tflite model");
  }
  if (!options.tokenizer.empty()) tokenizer.LoadFile(options.tokenizer);

  // ---- prompt ids (BOS once) and stop ids. A bundle's METADATA, when it names tokens of this
  // vocabulary, decides both, as in the engines; otherwise the tokenizer's BOS and EOS do.
  const bool bundle_decides =
      !bundle_tokens.stop_tokens.empty() &&
      std::all_of(bundle_tokens.stop_tokens.begin(), bundle_tokens.stop_tokens.end(),
                  [&](const auto& t) { return tokenizer.PieceId(t) >= 0; }) &&
      (bundle_tokens.start_token.empty() || tokenizer.PieceId(bundle_tokens.start_token) >= 0);
  std::set<int> stop(options.stop_ids.begin(), options.stop_ids.end());
  int bos = tokenizer.bos_id();
  if (bundle_decides) {
    bos = bundle_tokens.start_token.empty() ? -1 : tokenizer.PieceId(bundle_tokens.start_token);
    for (const std::string& token : bundle_tokens.stop_tokens)
      stop.insert(tokenizer.PieceId(token));
    std::cerr << "bundle: start token "
              << (bundle_tokens.start_token.empty() ? "none" : bundle_tokens.start_token)
              << ", stop tokens " << Join(bundle_tokens.stop_tokens, " ") << std::endl;
  } else {
    if (tokenizer.eos_id() >= 0) stop.insert(tokenizer.eos_id());
    for (const char* token : kChatEndTokens) {
      const int id = tokenizer.PieceId(token);
      if (tokenizer.IsControl(id)) stop.insert(id);
    }
  }
  std::vector<int> prompt = tokenizer.Encode(options.prompt);
  if (bos >= 0 && (prompt.empty() || prompt[0] != bos)) prompt.insert(prompt.begin(), bos);
  if (prompt.empty()) Fail("the prompt is empty and there is no start (BOS) token");

  // ---- the model
  LoadTfLiteCApi();
  LlmModel model(options.model, model_data, model_size, options.threads);
  std::cerr << "model: " << model.Describe() << std::endl;
  if (model.vocab_size() != tokenizer.vocab_size()) {
    std::cerr << "warning: the model has " << model.vocab_size() << " logits but the tokenizer "
              << tokenizer.vocab_size() << " pieces" << std::endl;
  }
  const int n = static_cast<int>(prompt.size());
  if (n + 1 > model.cache_len()) {
    Fail("prompt of " + std::to_string(n) + " tokens does not fit the KV cache of " +
         std::to_string(model.cache_len()) + " positions (at most " +
         std::to_string(model.cache_len() - 1) + " prompt tokens)");
  }
  if (options.print_ids) std::cerr << "prompt ids: " << IdsText(prompt) << std::endl;

  // ---- generation: prefill all but the last prompt token, then decode from the last one
  const auto began = std::chrono::steady_clock::now();
  model.Prefill(std::vector<int>(prompt.begin(), prompt.end() - 1), 0);
  const double prefill_seconds = Seconds(began);

  Sampler sample(options);
  TextStream stream(tokenizer);
  std::vector<int> generated;
  double decode_seconds = 0, first_token_seconds = 0;
  int decode_tokens = 0;
  int token = prompt.back(), pos = n - 1;
  for (int step = 0; step < options.max_tokens; ++step) {
    const auto started = std::chrono::steady_clock::now();
    token = sample(model.Decode(token, pos), model.vocab_size());
    decode_seconds += Seconds(started);
    if (++decode_tokens == 1) first_token_seconds = Seconds(began);
    if (stop.count(token)) break;
    generated.push_back(token);
    stream.Add(token);
    if (++pos >= model.cache_len()) break;  // the cache is full: no slot for this token
  }
  stream.Finish();
  std::cout << std::endl;

  if (options.print_ids) std::cerr << "generated ids: " << IdsText(generated) << std::endl;
  char stats[256];
  std::snprintf(stats, sizeof(stats),
                "prompt %d tokens, prefill %.3f s (%.1f tok/s), decode %d tokens (%.1f tok/s), "
                "first token after %.3f s",
                n, prefill_seconds, prefill_seconds > 0 ? (n - 1) / prefill_seconds : 0.0,
                decode_tokens, decode_seconds > 0 ? decode_tokens / decode_seconds : 0.0,
                first_token_seconds);
  std::cerr << stats << std::endl;
  return 0;
}
