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

// The value after "key": in a flat JSON text (the metadata is written by mhe-edge, keys are unique).
std::string json_value(const std::string& json, const std::string& key) {
  const std::string quoted = "\"" + key + "\":";
  size_t at = json.find(quoted);
  if (at == std::string::npos) throw std::runtime_error("metadata has no '" + key + "'");
  at = json.find_first_not_of(' ', at + quoted.size());
  if (json[at] == '"') return json.substr(at + 1, json.find('"', at + 1) - at - 1);
  size_t end = json.find_first_of(",}", at);
  return json.substr(at, end - at);
}

int64_t json_int(const std::string& json, const std::string& key) { return std::stoll(json_value(json, key)); }

std::vector<int64_t> parse_prompt(const std::string& text) {
  std::vector<int64_t> ids;
  std::stringstream stream(text);
  std::string part;
  while (std::getline(stream, part, ',')) {
    size_t used = 0;
    long long id = 0;
    try {
      id = std::stoll(part, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != part.size()) throw Usage("prompt must be comma-separated token ids such as 3,1,4, not '" + text + "'");
    ids.push_back(id);
  }
  if (ids.empty()) throw Usage("prompt must be comma-separated token ids such as 3,1,4");
  return ids;
}

template <typename T>
int64_t argmax_last_row(const Ort::Value& logits) {
  auto shape = logits.GetTensorTypeAndShapeInfo().GetShape();  // (1, T, V)
  const int64_t vocab = shape[2];
  const T* row = logits.GetTensorData<T>() + (shape[1] - 1) * vocab;
  int64_t best = 0;
  for (int64_t v = 1; v < vocab; ++v) {
    if (static_cast<float>(row[v]) > static_cast<float>(row[best])) best = v;
  }
  return best;
}

int64_t next_token(const Ort::Value& logits) {
  if (logits.GetTensorTypeAndShapeInfo().GetElementType() == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16) {
    return argmax_last_row<Ort::Float16_t>(logits);
  }
  return argmax_last_row<float>(logits);
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
      max_new_tokens = std::stoll(argv[++i]);
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
  const int64_t layers = json_int(io, "num_layers"), kv_heads = json_int(io, "kv_heads"), head_dim = json_int(io, "head_dim");
  const int64_t vocab = json_int(io, "vocab_size"), max_len = json_int(io, "max_seq_len");
  for (int64_t id : prompt) {
    if (id < 0 || id >= vocab) throw Usage("token id " + std::to_string(id) + " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
  }
  if (max_new_tokens < 0) throw Usage("the number of new tokens must not be negative");
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

  // The cache: one (1, kv_heads, past, head_dim) tensor per past input, starting empty (past = 0).
  auto cache_type = session.GetInputTypeInfo(1).GetTensorTypeAndShapeInfo().GetElementType();
  std::map<std::string, Ort::Value> cache;
  const std::vector<int64_t> empty_shape{1, kv_heads, 0, head_dim};
  for (size_t i = 1; i < input_names.size(); ++i) {
    cache.emplace(input_names[i], Ort::Value::CreateTensor(allocator, empty_shape.data(), empty_shape.size(), cache_type));
  }
  if (static_cast<int64_t>(cache.size()) != 2 * layers) throw std::runtime_error("cache inputs do not match num_layers");

  Ort::MemoryInfo cpu = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  std::vector<int64_t> ids = prompt, generated;
  for (int64_t step = 0; step < max_new_tokens; ++step) {
    const std::vector<int64_t> ids_shape{1, static_cast<int64_t>(ids.size())};
    std::vector<Ort::Value> inputs;
    inputs.push_back(Ort::Value::CreateTensor<int64_t>(cpu, ids.data(), ids.size(), ids_shape.data(), ids_shape.size()));
    for (size_t i = 1; i < input_names.size(); ++i) inputs.push_back(std::move(cache.at(input_names[i])));
    auto outputs = session.Run(Ort::RunOptions{nullptr}, input_ptrs.data(), inputs.data(), inputs.size(),
                               output_ptrs.data(), output_ptrs.size());
    const int64_t token = next_token(outputs[0]);
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
  } catch (const Ort::Exception& e) {
    std::cerr << "error: ONNX Runtime: " << e.what() << '\n';
    return 4;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << '\n';
    return 1;
  }
}
