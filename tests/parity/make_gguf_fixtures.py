"""Q8_0 / Q4_0 reference blocks from the `gguf` package (llama.cpp's gguf-py, whose numpy quantizers
mirror ggml's quantize_row_q8_0_ref / quantize_row_q4_0_ref), for tests/unit/test_gguf.cpp.

    ~/.cache/mamba-slm/venv/bin/python tests/parity/make_gguf_fixtures.py

Writes tests/parity/fixtures/gguf/quant.safetensors: "x" (fp32 values, blocks of 32) and "q8_0",
"q4_0" (the encoded bytes, uint8). The blocks include the cases where the rounding rules matter:
all zeros, exact halves, a tie in magnitude between a positive and a negative value (Q4_0 takes the
first), the largest magnitude negative or positive (Q4_0's scale sign), and tiny / huge scales."""
import os
from importlib.metadata import version

import gguf
import numpy as np
from gguf.quants import quantize
from safetensors.numpy import save_file

rng = np.random.default_rng(20251129)
blocks = [
    rng.standard_normal(32 * 24).astype(np.float32).reshape(-1, 32),
    np.zeros((1, 32), np.float32),
    # multiples of 0.5 of a scale of 1/127 and 1/8: the x/d products land on halves
    (np.arange(32, dtype=np.float32) - 16) / 2 * (127 / 16 / 127),
    np.linspace(-8, 7, 32, dtype=np.float32)[None, :],
    np.concatenate([[3.0, -3.0], rng.uniform(-1, 1, 30)]).astype(np.float32)[None, :],
    np.concatenate([[-3.0, 3.0], rng.uniform(-1, 1, 30)]).astype(np.float32)[None, :],
    (rng.standard_normal(32) * 1e-6).astype(np.float32)[None, :],
    (rng.standard_normal(32) * 3e3).astype(np.float32)[None, :],
    (np.arange(32, dtype=np.float32) - 15.5)[None, :] * 0.25,
]
x = np.concatenate([b.reshape(-1, 32) for b in blocks]).astype(np.float32)
out = {
    "x": x.reshape(-1),
    "q8_0": quantize(x, gguf.GGMLQuantizationType.Q8_0).reshape(-1).astype(np.uint8),
    "q4_0": quantize(x, gguf.GGMLQuantizationType.Q4_0).reshape(-1).astype(np.uint8),
}
path = os.path.join(os.path.dirname(__file__), "fixtures", "gguf", "quant.safetensors")
os.makedirs(os.path.dirname(path), exist_ok=True)
save_file(out, path, metadata={"gguf": version("gguf")})
print(path, x.shape, {k: v.shape for k, v in out.items()})


# llama.cpp's own converter (convert_hf_to_gguf.py of the llama-cpp-python sdist that
# scripts/build_llama_cpp.sh pins) run on the HF Mamba-1 and Mamba-2 fixtures, F32, so that the C++
# test can check that our importer reads what llama.cpp's tools write. Without a tokenizer the
# converter embeds GPT-NeoX's 50k-token vocabulary; it is dropped here (tokenizer.ggml.model
# "none") to keep the fixtures small. Needs LLAMA_CPP_SRC=<sdist>/vendor/llama.cpp and torch.
def convert_fixture(name):
    import subprocess
    import sys
    import tempfile

    src = os.environ.get("LLAMA_CPP_SRC")
    if not src:
        print("LLAMA_CPP_SRC not set: skipping the converter fixtures")
        return
    here = os.path.dirname(__file__)
    with tempfile.TemporaryDirectory() as tmp:
        full = os.path.join(tmp, "full.gguf")
        subprocess.run([sys.executable, os.path.join(src, "convert_hf_to_gguf.py"), os.path.join(here, "fixtures", name),
                        "--outtype", "f32", "--outfile", full], check=True, cwd=src, stdout=subprocess.DEVNULL)
        r = gguf.GGUFReader(full)
        arch = r.fields["general.architecture"].contents()
        out = os.path.join(here, "fixtures", "gguf", f"converter_{name}.gguf")
        w = gguf.GGUFWriter(out, arch)
        for key, field in r.fields.items():
            if key.startswith("GGUF.") or key.startswith("tokenizer.") or key == "general.architecture":
                continue
            vtype = field.types[0]
            if vtype == gguf.GGUFValueType.ARRAY:
                w.add_key_value(key, field.contents(), vtype, sub_type=field.types[-1])
            else:
                w.add_key_value(key, field.contents(), vtype)
        w.add_string("tokenizer.ggml.model", "none")
        for t in r.tensors:
            w.add_tensor(t.name, np.array(t.data), raw_shape=list(reversed(t.shape.tolist())), raw_dtype=t.tensor_type)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        print(out, os.path.getsize(out))


for fixture in ("mamba1", "mamba2"):
    convert_fixture(fixture)
