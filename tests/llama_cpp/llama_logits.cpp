// A test tool built against llama.cpp by scripts/build_llama_cpp.sh (never by our CMake): loads a
// GGUF, evaluates token ids in independent windows and writes the logits of every position.
//
//   mslm_llama_logits MODEL.gguf TOKENS.txt OUT.f32 [--window N] [--threads N]
//   mslm_llama_logits --tokenize MODEL.gguf TEXT.txt OUT.txt
//
// The second form loads only the vocabulary and writes the ids llama.cpp's tokenizer gives for the
// whole of TEXT.txt (no BOS/EOS added; special tokens in the text are recognised, as HF tokenizers
// does), one per line.
// TOKENS.txt holds whitespace-separated token ids. They are cut into windows of N tokens (default:
// all of them), each evaluated from an empty state in one batch. OUT.f32 receives, for every
// token in order, n_vocab little-endian float32 logits. The first stdout line is "n_vocab N".
// Everything runs in fp32 where llama.cpp lets us choose: the KV cache is F32 (its default is F16)
// and flash attention is off, so that the comparison with mamba-slm measures the model, not a
// cache format.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "llama.h"

namespace {

[[noreturn]] void die(const std::string& msg) {
    std::fprintf(stderr, "mslm_llama_logits: %s\n", msg.c_str());
    std::exit(1);
}

void quiet_log(ggml_log_level level, const char* text, void*) {
    if (level >= GGML_LOG_LEVEL_WARN) std::fputs(text, stderr);
}

}  // namespace

int tokenize(const std::string& model_path, const std::string& text_path, const std::string& out_path) {
    std::ifstream in(text_path, std::ios::binary);
    if (!in) die(text_path + ": cannot open");
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    llama_log_set(quiet_log, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.vocab_only = true;
    llama_model* model = llama_model_load_from_file(model_path.c_str(), mp);
    if (!model) die(model_path + ": llama.cpp could not load the vocabulary");
    const llama_vocab* vocab = llama_model_get_vocab(model);
    // A first call with no room returns minus the number of tokens needed.
    const int needed = -llama_tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), nullptr, 0,
                                       /*add_special=*/false, /*parse_special=*/true);
    std::vector<llama_token> ids(static_cast<size_t>(needed > 0 ? needed : 0));
    const int n = llama_tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), ids.data(),
                                 static_cast<int32_t>(ids.size()), false, true);
    if (n < 0 || n != static_cast<int>(ids.size())) die("llama_tokenize failed");
    std::ofstream out(out_path);
    if (!out) die(out_path + ": cannot write");
    for (llama_token id : ids) out << id << '\n';
    llama_model_free(model);
    llama_backend_free();
    return 0;
}

int main(int argc, char** argv) {
    if (argc == 5 && std::strcmp(argv[1], "--tokenize") == 0) return tokenize(argv[2], argv[3], argv[4]);
    if (argc < 4) die("usage: mslm_llama_logits MODEL.gguf TOKENS.txt OUT.f32 [--window N] [--threads N]");
    const std::string model_path = argv[1], tokens_path = argv[2], out_path = argv[3];
    int window = 0, threads = 2;
    for (int i = 4; i + 1 < argc; i += 2) {
        if (std::strcmp(argv[i], "--window") == 0)
            window = std::atoi(argv[i + 1]);
        else if (std::strcmp(argv[i], "--threads") == 0)
            threads = std::atoi(argv[i + 1]);
        else
            die(std::string("unknown option ") + argv[i]);
    }
    std::vector<llama_token> tokens;
    {
        std::ifstream in(tokens_path);
        if (!in) die(tokens_path + ": cannot open");
        long v;
        while (in >> v) tokens.push_back(static_cast<llama_token>(v));
    }
    if (tokens.empty()) die(tokens_path + ": no tokens");
    if (window <= 0 || window > static_cast<int>(tokens.size())) window = static_cast<int>(tokens.size());

    llama_log_set(quiet_log, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    llama_model* model = llama_model_load_from_file(model_path.c_str(), mp);
    if (!model) die(model_path + ": llama.cpp could not load the model");
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = static_cast<uint32_t>(window);
    cp.n_batch = cp.n_ubatch = static_cast<uint32_t>(window);
    cp.n_seq_max = 1;
    cp.n_threads = cp.n_threads_batch = threads;
    cp.type_k = cp.type_v = GGML_TYPE_F32;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    llama_context* ctx = llama_init_from_model(model, cp);
    if (!ctx) die("could not create a llama.cpp context");

    std::FILE* out = std::fopen(out_path.c_str(), "wb");
    if (!out) die(out_path + ": cannot write");
    std::printf("n_vocab %d\n", n_vocab);
    llama_batch batch = llama_batch_init(window, 0, 1);
    for (size_t start = 0; start < tokens.size(); start += static_cast<size_t>(window)) {
        const int n = static_cast<int>(std::min(tokens.size() - start, static_cast<size_t>(window)));
        llama_memory_clear(llama_get_memory(ctx), true);
        batch.n_tokens = n;
        for (int i = 0; i < n; ++i) {
            batch.token[i] = tokens[start + static_cast<size_t>(i)];
            batch.pos[i] = i;
            batch.n_seq_id[i] = 1;
            batch.seq_id[i][0] = 0;
            batch.logits[i] = 1;
        }
        if (llama_decode(ctx, batch) != 0) die("llama_decode failed");
        for (int i = 0; i < n; ++i) {
            const float* logits = llama_get_logits_ith(ctx, i);
            if (!logits) die("no logits for a position");
            if (std::fwrite(logits, sizeof(float), static_cast<size_t>(n_vocab), out) !=
                static_cast<size_t>(n_vocab))
                die(out_path + ": write failed");
        }
    }
    llama_batch_free(batch);
    if (std::fclose(out) != 0) die(out_path + ": write failed");
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
