// libFuzzer target for the GGUF reader: any input either parses into a header whose tensors all
// lie inside the file, aligned and without overlap, and whose values can all be read, or throws
// mslm::Error. Anything else (a crash, a sanitizer report, an allocation larger than the input
// warrants, another exception type) is a bug. Run: see docs/TESTING.md (the fuzz preset).
#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "export/gguf.h"

namespace {

// Independent check of what parse promises about an accepted file.
void check_invariants(const mslm::gguf::Header& h, size_t size) {
    if (h.alignment == 0 || (h.alignment & (h.alignment - 1)) != 0) __builtin_trap();
    if (h.tensors.empty()) return;
    if (h.data_start % h.alignment != 0 || h.data_start > size) __builtin_trap();
    std::vector<const mslm::gguf::TensorInfo*> sorted;
    for (const auto& t : h.tensors) {
        if (t.offset % h.alignment != 0) __builtin_trap();
        if (t.nbytes != mslm::gguf::tensor_bytes(t.type, static_cast<uint64_t>(t.numel()))) __builtin_trap();
        if (t.offset + t.nbytes > size - h.data_start) __builtin_trap();
        sorted.push_back(&t);
    }
    std::stable_sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
    for (size_t i = 1; i < sorted.size(); ++i)
        if (sorted[i]->offset < sorted[i - 1]->offset + sorted[i - 1]->nbytes) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    try {
        const mslm::gguf::Header header = mslm::gguf::parse(data, size, "fuzz-input");
        check_invariants(header, size);
        auto bytes =
            std::make_shared<mslm::Storage>(const_cast<uint8_t*>(data), size, mslm::Device::CPU, nullptr);
        const mslm::gguf::File file = mslm::gguf::File::from_bytes(bytes, "fuzz-input");
        volatile float sink = 0;
        for (const auto& t : file.tensors()) {
            if (t.numel() > (int64_t{1} << 22)) continue;  // bounded by the file anyway; keeps runs fast
            for (float v : file.to_f32(t)) sink = sink + v;
        }
        for (const auto& [key, v] : header.kv) {
            try {
                if (!v.is_array() && v.type != mslm::gguf::ValueType::STRING)
                    sink = sink + static_cast<float>(file.get_uint(key));
            } catch (const mslm::Error&) {
                // not an unsigned integer
            }
        }
    } catch (const mslm::Error&) {
    }
    return 0;
}
