// libFuzzer target for the safetensors reader: any input either parses into tensors that can all
// be read in bounds, or throws mslm::Error. Anything else (a crash, a sanitizer report, another
// exception type) is a bug. See docs/TESTING.md for how to run it.
#include <algorithm>
#include <cstdint>
#include <memory>

#include "core/safetensors.h"

namespace {

// Independent check of what parse_safetensors promises about an accepted file.
void check_invariants(const mslm::SafetensorsHeader& h, size_t size) {
    if (h.data_start < 8 || h.data_start > size) __builtin_trap();
    std::vector<const mslm::SafetensorsEntry*> sorted;
    for (const auto& e : h.entries) sorted.push_back(&e);
    std::stable_sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
    uint64_t pos = 0;
    for (const auto* e : sorted) {
        if (e->begin != pos || e->end < e->begin) __builtin_trap();
        pos = e->end;
    }
    if (pos != size - h.data_start) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    try {
        mslm::SafetensorsHeader header = mslm::parse_safetensors(data, size, "fuzz-input");
        check_invariants(header, size);

        // Zero-copy access over the fuzzer's buffer, which outlives this call's tensors.
        auto bytes =
            std::make_shared<mslm::Storage>(const_cast<uint8_t*>(data), size, mslm::Device::CPU, nullptr);
        auto file = mslm::SafetensorsFile::from_bytes(bytes, "fuzz-input");
        volatile uint32_t sink = 0;
        for (const std::string& name : file.names()) {
            for (uint8_t b : file.bytes(name)) sink = sink + b;
            try {
                mslm::Tensor t = file.get(name);
                if (t.nbytes() != file.bytes(name).size()) __builtin_trap();
                mslm::Tensor f = file.get_f32(name);
                for (float v : f.to_float_vector()) sink = sink + static_cast<uint32_t>(v == v);
            } catch (const mslm::Error&) {
                // more than 5 dims, or a dtype get_f32 does not convert
            }
        }
    } catch (const mslm::Error&) {
    }
    return 0;
}
