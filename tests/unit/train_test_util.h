// What the trainer tests (CPU and CUDA) share: the data directory, tinyshakespeare prepared as byte
// tokens, and a small hybrid model config. Paths are the caller's, so that each test process (ctest
// -j runs them side by side) writes its own.
#pragma once
#include <cstdlib>
#include <filesystem>
#include <string>

#include "data/prepare.h"
#include "model/config.h"
#include "model/model_io.h"

namespace mslm::test {

inline std::string data_dir() {
    const char* env = std::getenv("MSLM_DATA_DIR");
    return env ? env : MSLM_DATA_DIR;
}

// tinyshakespeare as bytes (vocab 257 with EOT) prepared into out_dir with 5% of its documents held
// out; "" when the corpus is absent.
inline std::string prepare_shakespeare_bytes(const std::string& out_dir) {
    const std::string src = data_dir() + "/tinyshakespeare.txt";
    if (!std::filesystem::exists(src)) return std::string();
    PrepareOptions po;
    po.out_dir = out_dir;
    po.val_fraction = 0.05;
    po.seed = 1;
    po.progress = false;
    auto enc = load_text_encoder("bytes");
    prepare_from_sources({parse_source_spec(src + ":split=block")}, MixtureOptions{}, *enc, po);
    return po.out_dir;
}

// A small hybrid (one Mamba-2 and one attention layer, SwiGLU) over the 257 byte tokens, saved to path.
inline std::string write_small_model_config(const std::string& path) {
    ModelConfig c;
    c.vocab_size = 257;
    c.d_model = 32;
    c.n_layers = 2;
    c.layers = parse_layer_pattern("MA");
    c.mamba.version = 2;
    c.mamba.d_state = 8;
    c.mamba.head_dim = 16;
    c.mamba.chunk_size = 16;
    c.attention.n_heads = 4;
    c.attention.n_kv_heads = 2;
    c.mlp = {MlpKind::SwiGLU, 64, false};
    c.max_seq_len = 64;
    save_config(c, path);
    return path;
}

}  // namespace mslm::test
