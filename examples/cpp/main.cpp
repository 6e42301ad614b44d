// mhe_generate: greedy generation from an mhe-edge decoder export with the ONNX Runtime C++ API.
//
//   mhe_generate MODEL.onnx --prompt 3,1,4 --max-new-tokens N
//
// Everything it needs is in the file: the metadata entry "mhe_edge.io" (JSON) names the cache layout
// (layers, KV heads, head size), the vocabulary and the context length. It prints the new ids on one line,
// "tokens: a b c", exactly as `mhe-edge generate` does.
#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct Usage : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct BadModel : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A whole decimal integer in [low, high], or a clear refusal: no sign games, spaces, suffixes or overflow.
int64_t strict_int(const std::string& text, int64_t low, int64_t high, const std::string& what) {
  size_t digits_from = (!text.empty() && text[0] == '-') ? 1 : 0;
  bool digits = text.size() > digits_from && text.size() - digits_from <= 18 &&
                std::all_of(text.begin() + digits_from, text.end(), [](char c) { return c >= '0' && c <= '9'; });
  if (!digits) throw Usage(what + " must be an integer, not '" + text + "'");
  const int64_t value = std::stoll(text);
  if (value < low || value > high) {
    throw Usage(what + " must be in [" + std::to_string(low) + ", " + std::to_string(high) + "], not " + text);
  }
  return value;
}

// The value after "key": in a flat JSON text (the metadata is written by mhe-edge, keys are unique).
std::string json_value(const std::string& json, const std::string& key) {
  const std::string quoted = "\"" + key + "\":";
  size_t at = json.find(quoted);
  if (at == std::string::npos) throw BadModel("metadata has no '" + key + "'");
  at = json.find_first_not_of(' ', at + quoted.size());
  if (at == std::string::npos) throw BadModel("metadata ends after '" + key + "'");
  if (json[at] == '"') {
    size_t close = json.find('"', at + 1);
    if (close == std::string::npos) throw BadModel("metadata has an unterminated '" + key + "'");
    return json.substr(at + 1, close - at - 1);
  }
  size_t end = json.find_first_of(",}", at);
  if (end == std::string::npos) throw BadModel("metadata has an unterminated '" + key + "'");
  return json.substr(at, end - at);
}

// A metadata number, bounded: a file that lies about its sizes is refused before anything is allocated.
int64_t json_int(const std::string& json, const std::string& key, int64_t high) {
  try {
    return strict_int(json_value(json, key), 1, high, "metadata '" + key + "'");
  } catch (const Usage& e) {
    throw BadModel(e.what());
  }
}

std::vector<int64_t> parse_prompt(const std::string& text) {
  std::vector<int64_t> ids;
  std::stringstream stream(text);
  std::string part;
  while (std::getline(stream, part, ',')) {
    try {
      ids.push_back(strict_int(part, -(int64_t(1) << 62), int64_t(1) << 62, "token id"));
    } catch (const Usage&) {
      throw Usage("prompt must be comma-separated token ids such as 3,1,4, not '" + text + "'");
    }
  }
  if (ids.empty()) throw Usage("prompt must be comma-separated token ids such as 3,1,4");
  return ids;
}

template <typename T>
int64_t argmax_last_row(const Ort::Value& logits, int64_t expected_vocab) {
  auto shape = logits.GetTensorTypeAndShapeInfo().GetShape();  // (1, T, V)
  if (shape.size() != 3 || shape[0] != 1 || shape[1] < 1 || shape[2] != expected_vocab) {
    throw BadModel("logits are not (1, T, " + std::to_string(expected_vocab) + ") as the metadata says");
  }
  const int64_t vocab = shape[2];
  const T* row = logits.GetTensorData<T>() + (shape[1] - 1) * vocab;
  int64_t best = 0;
  for (int64_t v = 1; v < vocab; ++v) {
    if (static_cast<float>(row[v]) > static_cast<float>(row[best])) best = v;
  }
  return best;
}

int64_t next_token(const Ort::Value& logits, int64_t vocab) {
  const auto type = logits.GetTensorTypeAndShapeInfo().GetElementType();
  if (type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16) return argmax_last_row<Ort::Float16_t>(logits, vocab);
  if (type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) return argmax_last_row<float>(logits, vocab);
  throw BadModel("logits are neither float32 nor float16");
}

int run(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help") {
    throw Usage("usage: mhe_generate MODEL.onnx --prompt 3,1,4 --max-new-tokens N");
  }
  const std::string model_path = argv[1];
  std::string prompt_text;
  int64_t max_new_tokens = 16;
  for (int i = 2; i < argc; ++i) {
    std::string arg = argv[i];
    if (i + 1 >= argc) throw Usage("option " + arg + " needs a value");
    if (arg == "--prompt") {
      prompt_text = argv[++i];
    } else if (arg == "--max-new-tokens") {
      max_new_tokens = strict_int(argv[++i], 0, 1000000, "--max-new-tokens");
    } else {
      throw Usage("unknown option " + arg);
    }
  }
  std::vector<int64_t> prompt = parse_prompt(prompt_text);

  Ort::Env env(ORT_LOGGING_LEVEL_ERROR, "mhe_generate");
  Ort::SessionOptions options;
  options.SetIntraOpNumThreads(1);
  Ort::Session session(env, model_path.c_str(), options);
  Ort::AllocatorWithDefaultOptions allocator;

  Ort::ModelMetadata metadata = session.GetModelMetadata();
  Ort::AllocatedStringPtr io_value = metadata.LookupCustomMetadataMapAllocated("mhe_edge.io", allocator);
  const std::string io = io_value ? io_value.get() : "";
  if (io.empty()) throw Usage(model_path + " is not an mhe-edge export (no mhe_edge.io metadata)");
  if (json_value(io, "arch") != "decoder") throw Usage(model_path + " is an encoder; generation needs a decoder");
  const int64_t layers = json_int(io, "num_layers", 4096), kv_heads = json_int(io, "kv_heads", 4096);
  const int64_t head_dim = json_int(io, "head_dim", 65536), vocab = json_int(io, "vocab_size", int64_t(1) << 31);
  const int64_t max_len = json_int(io, "max_seq_len", int64_t(1) << 31);
  for (int64_t id : prompt) {
    if (id < 0 || id >= vocab) throw Usage("token id " + std::to_string(id) + " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
  }
  if (static_cast<int64_t>(prompt.size()) + max_new_tokens > max_len) {
    throw Usage(std::to_string(prompt.size()) + " prompt + " + std::to_string(max_new_tokens) +
                " new tokens exceed the model's max_seq_len " + std::to_string(max_len));
  }

  std::vector<std::string> input_names, output_names;
  for (size_t i = 0; i < session.GetInputCount(); ++i) input_names.push_back(session.GetInputNameAllocated(i, allocator).get());
  for (size_t i = 0; i < session.GetOutputCount(); ++i) output_names.push_back(session.GetOutputNameAllocated(i, allocator).get());
  std::vector<const char*> input_ptrs, output_ptrs;
  for (auto& n : input_names) input_ptrs.push_back(n.c_str());
  for (auto& n : output_names) output_ptrs.push_back(n.c_str());

  // The graph must be what the metadata says: input_ids, attention_mask (files from before it have none),
  // then 2 * layers past inputs of (batch, kv_heads, past, head_dim) where those sizes are fixed, and logits
  // first among the outputs.
  const bool has_mask = input_names.size() > 1 && input_names[1] == "attention_mask";
  const size_t first_cache = has_mask ? 2 : 1;
  if (input_names.size() != static_cast<size_t>(2 * layers) + first_cache || input_names[0] != "input_ids" ||
      output_names.size() != input_names.size() - first_cache + 1 || output_names[0] != "logits") {
    throw BadModel("the graph's inputs and outputs do not match the metadata's " + std::to_string(layers) + " layers");
  }
  for (size_t i = first_cache; i < input_names.size(); ++i) {
    const size_t k = i - first_cache;
    const std::string expected = "past_key_values." + std::to_string(k / 2) + ((k % 2) ? ".value" : ".key");
    auto shape = session.GetInputTypeInfo(i).GetTensorTypeAndShapeInfo().GetShape();
    if (input_names[i] != expected || shape.size() != 4 || (shape[1] >= 0 && shape[1] != kv_heads) ||
        (shape[3] >= 0 && shape[3] != head_dim)) {
      throw BadModel("cache input " + input_names[i] + " does not match the metadata's layout");
    }
  }

  // The cache: one (1, kv_heads, past, head_dim) tensor per past input, starting empty (past = 0).
  auto cache_type = session.GetInputTypeInfo(first_cache).GetTensorTypeAndShapeInfo().GetElementType();
  std::map<std::string, Ort::Value> cache;
  const std::vector<int64_t> empty_shape{1, kv_heads, 0, head_dim};
  for (size_t i = first_cache; i < input_names.size(); ++i) {
    cache.emplace(input_names[i], Ort::Value::CreateTensor(allocator, empty_shape.data(), empty_shape.size(), cache_type));
  }

  Ort::MemoryInfo cpu = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  std::vector<int64_t> ids = prompt, generated, mask;
  for (int64_t step = 0; step < max_new_tokens; ++step) {
    const std::vector<int64_t> ids_shape{1, static_cast<int64_t>(ids.size())};
    std::vector<Ort::Value> inputs;
    inputs.push_back(Ort::Value::CreateTensor<int64_t>(cpu, ids.data(), ids.size(), ids_shape.data(), ids_shape.size()));
    mask.resize(mask.size() + ids.size(), 1);  // one 1 per token, past and new: no padding in a single prompt
    const std::vector<int64_t> mask_shape{1, static_cast<int64_t>(mask.size())};
    if (has_mask) inputs.push_back(Ort::Value::CreateTensor<int64_t>(cpu, mask.data(), mask.size(), mask_shape.data(), mask_shape.size()));
    for (size_t i = first_cache; i < input_names.size(); ++i) inputs.push_back(std::move(cache.at(input_names[i])));
    auto outputs = session.Run(Ort::RunOptions{nullptr}, input_ptrs.data(), inputs.data(), inputs.size(),
                               output_ptrs.data(), output_ptrs.size());
    const int64_t token = next_token(outputs[0], vocab);
    generated.push_back(token);
    for (size_t i = 1; i < output_names.size(); ++i) {  // present.{i}.key -> past_key_values.{i}.key
      std::string past = output_names[i];
      past.replace(0, std::string("present").size(), "past_key_values");
      cache.insert_or_assign(past, std::move(outputs[i]));
    }
    ids.assign(1, token);
  }
  std::cout << "tokens:";
  for (int64_t t : generated) std::cout << ' ' << t;
  std::cout << '\n';
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const Usage& e) {
    std::cerr << "error: " << e.what() << '\n';
    return 2;
  } catch (const BadModel& e) {
    std::cerr << "error: " << e.what() << '\n';
    return 4;
  } catch (const Ort::Exception& e) {
    std::cerr << "error: ONNX Runtime: " << e.what() << '\n';
    return 4;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << '\n';
    return 1;
  }
}
