#include "core/tensor.h"

#include <algorithm>
#include <cstring>

#include "core/allocator.h"
#include "core/cuda_device.h"

namespace mslm {

std::string_view device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

std::shared_ptr<Storage> Storage::allocate(size_t bytes, Device device) {
    if (device == Device::CPU) return std::make_shared<Storage>(aligned_malloc(bytes), bytes, device, aligned_free);
    return std::make_shared<Storage>(cuda_malloc(bytes), bytes, device, cuda_free);
}

std::string shape_str(std::span<const int64_t> shape) {
    std::string s = "(";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + (shape.size() == 1 ? ",)" : ")");
}

namespace {

int64_t checked_numel(const Shape& shape) {
    MSLM_CHECK(shape.size() <= kMaxDims, "tensor of {} dims: at most {} are supported", shape.size(), kMaxDims);
    int64_t n = 1;
    for (int64_t d : shape) {
        MSLM_CHECK(d >= 0, "negative dimension in shape {}", shape_str(shape));
        n *= d;
    }
    return n;
}

// Visits every element of `t` in row-major order, calling fn(element byte offset from raw()).
template <typename Fn>
void for_each_offset(const Tensor& t, Fn&& fn) {
    int nd = t.ndim();
    int64_t n = t.numel();
    if (n == 0) return;
    std::array<int64_t, kMaxDims> idx{};
    size_t esize = dtype_size(t.dtype());
    for (int64_t i = 0; i < n; ++i) {
        int64_t off = 0;
        for (int d = 0; d < nd; ++d) off += idx[d] * t.stride(d);
        fn(static_cast<size_t>(off) * esize);
        for (int d = nd - 1; d >= 0; --d) {
            if (++idx[d] < t.size(d)) break;
            idx[d] = 0;
        }
    }
}

double load_as_double(const void* p, DType t) {
    switch (t) {
        case DType::F32: return *static_cast<const float*>(p);
        case DType::F64: return *static_cast<const double*>(p);
        case DType::BF16: return bf16_to_f32(*static_cast<const uint16_t*>(p));
        case DType::F16: return f16_to_f32(*static_cast<const uint16_t*>(p));
        case DType::I64: return static_cast<double>(*static_cast<const int64_t*>(p));
        case DType::I32: return *static_cast<const int32_t*>(p);
        case DType::I16: return *static_cast<const int16_t*>(p);
        case DType::I8: return *static_cast<const int8_t*>(p);
        case DType::U8: return *static_cast<const uint8_t*>(p);
        case DType::BOOL: return *static_cast<const uint8_t*>(p) != 0;
    }
    return 0;
}

void store_double(void* p, DType t, double v) {
    switch (t) {
        case DType::F32: *static_cast<float*>(p) = static_cast<float>(v); break;
        case DType::F64: *static_cast<double*>(p) = v; break;
        case DType::BF16: *static_cast<uint16_t*>(p) = f32_to_bf16(static_cast<float>(v)); break;
        case DType::F16: *static_cast<uint16_t*>(p) = f32_to_f16(static_cast<float>(v)); break;
        case DType::I64: *static_cast<int64_t*>(p) = static_cast<int64_t>(v); break;
        case DType::I32: *static_cast<int32_t*>(p) = static_cast<int32_t>(v); break;
        case DType::I16: *static_cast<int16_t*>(p) = static_cast<int16_t>(v); break;
        case DType::I8: *static_cast<int8_t*>(p) = static_cast<int8_t>(v); break;
        case DType::U8: *static_cast<uint8_t*>(p) = static_cast<uint8_t>(v); break;
        case DType::BOOL: *static_cast<uint8_t*>(p) = v != 0; break;
    }
}

}  // namespace

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
    int64_t n = checked_numel(shape);
    Tensor t;
    t.storage_ = Storage::allocate(static_cast<size_t>(n) * dtype_size(dtype), device);
    t.dtype_ = dtype;
    t.ndim_ = static_cast<int>(shape.size());
    int64_t stride = 1;
    for (int d = t.ndim_ - 1; d >= 0; --d) {
        t.shape_[d] = shape[d];
        t.strides_[d] = stride;
        stride *= shape[d];
    }
    return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
    Tensor t = empty(shape, dtype, device);
    if (device == Device::CPU) {
        std::memset(t.raw(), 0, t.nbytes());
    } else {
        Tensor host = zeros(shape, dtype, Device::CPU);
        cuda_copy(t.raw(), host.raw(), t.nbytes(), CopyKind::HostToDevice);
    }
    return t;
}

Tensor Tensor::from_storage(std::shared_ptr<Storage> storage, size_t byte_offset, const Shape& shape,
                            DType dtype) {
    int64_t n = checked_numel(shape);
    MSLM_CHECK(byte_offset + static_cast<size_t>(n) * dtype_size(dtype) <= storage->bytes(),
               "tensor {} of {} at byte {} does not fit in a buffer of {} bytes", shape_str(shape),
               dtype_name(dtype), byte_offset, storage->bytes());
    Tensor t;
    t.storage_ = std::move(storage);
    t.offset_ = byte_offset;
    t.dtype_ = dtype;
    t.ndim_ = static_cast<int>(shape.size());
    int64_t stride = 1;
    for (int d = t.ndim_ - 1; d >= 0; --d) {
        t.shape_[d] = shape[d];
        t.strides_[d] = stride;
        stride *= shape[d];
    }
    return t;
}

int Tensor::wrap_dim(int dim) const {
    int d = dim < 0 ? dim + ndim_ : dim;
    MSLM_CHECK(d >= 0 && d < ndim_, "dimension {} out of range for a tensor of {} dims", dim, ndim_);
    return d;
}

int64_t Tensor::size(int dim) const { return shape_[wrap_dim(dim)]; }
int64_t Tensor::stride(int dim) const { return strides_[wrap_dim(dim)]; }

int64_t Tensor::numel() const {
    int64_t n = 1;
    for (int d = 0; d < ndim_; ++d) n *= shape_[d];
    return n;
}

bool Tensor::is_contiguous() const {
    int64_t expected = 1;
    for (int d = ndim_ - 1; d >= 0; --d) {
        if (shape_[d] != 1 && strides_[d] != expected) return false;
        expected *= shape_[d];
    }
    return true;
}

Tensor Tensor::view(const Shape& shape) const {
    MSLM_CHECK(is_contiguous(), "view {} of a non-contiguous tensor {}", shape_str(shape), shape_str(this->shape()));
    Shape s = shape;
    int infer = -1;
    int64_t known = 1;
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == -1) {
            MSLM_CHECK(infer < 0, "view {}: only one dimension may be -1", shape_str(shape));
            infer = static_cast<int>(i);
        } else {
            known *= s[i];
        }
    }
    if (infer >= 0) {
        MSLM_CHECK(known > 0 && numel() % known == 0, "view {} of {} elements", shape_str(shape), numel());
        s[infer] = numel() / known;
    }
    MSLM_CHECK(checked_numel(s) == numel(), "view {} of a tensor {} ({} elements)", shape_str(s),
               shape_str(this->shape()), numel());
    Tensor t = *this;
    t.ndim_ = static_cast<int>(s.size());
    int64_t stride = 1;
    for (int d = t.ndim_ - 1; d >= 0; --d) {
        t.shape_[d] = s[d];
        t.strides_[d] = stride;
        stride *= s[d];
    }
    return t;
}

Tensor Tensor::reshape(const Shape& shape) const { return is_contiguous() ? view(shape) : contiguous().view(shape); }

Tensor Tensor::slice(int dim, int64_t begin, int64_t end) const {
    int d = wrap_dim(dim);
    MSLM_CHECK(0 <= begin && begin <= end && end <= shape_[d], "slice [{}, {}) of dimension {} of size {}", begin,
               end, dim, shape_[d]);
    Tensor t = *this;
    t.offset_ += static_cast<size_t>(begin * strides_[d]) * dtype_size(dtype_);
    t.shape_[d] = end - begin;
    return t;
}

Tensor Tensor::select(int dim, int64_t index) const {
    int d = wrap_dim(dim);
    Tensor t = slice(d, index, index + 1);
    for (int i = d; i < ndim_ - 1; ++i) {
        t.shape_[i] = t.shape_[i + 1];
        t.strides_[i] = t.strides_[i + 1];
    }
    t.ndim_ = ndim_ - 1;
    return t;
}

Tensor Tensor::transpose(int d0, int d1) const {
    int a = wrap_dim(d0), b = wrap_dim(d1);
    Tensor t = *this;
    std::swap(t.shape_[a], t.shape_[b]);
    std::swap(t.strides_[a], t.strides_[b]);
    return t;
}

Tensor Tensor::contiguous() const { return is_contiguous() ? *this : clone(); }

Tensor Tensor::clone() const {
    if (device() == Device::CUDA) {
        MSLM_CHECK(is_contiguous(), "clone of a non-contiguous CUDA tensor");
        Tensor t = empty(shape(), dtype_, Device::CUDA);
        cuda_copy(t.raw(), raw(), nbytes(), CopyKind::DeviceToDevice);
        return t;
    }
    Tensor t = empty(shape(), dtype_);
    t.copy_from(*this);
    return t;
}

Tensor Tensor::to(DType dtype) const {
    MSLM_CHECK(device() == Device::CPU, "dtype conversion runs on CPU tensors");
    if (dtype == dtype_) return *this;
    Tensor t = empty(shape(), dtype);
    t.copy_from(*this);
    return t;
}

Tensor Tensor::to(Device dev) const {
    if (dev == device()) return *this;
    Tensor src = dev == Device::CUDA ? contiguous() : *this;
    MSLM_CHECK(src.is_contiguous(), "copy of a non-contiguous CUDA tensor to the host");
    Tensor t = empty(shape(), dtype_, dev);
    cuda_copy(t.raw(), src.raw(), nbytes(), dev == Device::CUDA ? CopyKind::HostToDevice : CopyKind::DeviceToHost);
    return t;
}

void Tensor::copy_from(const Tensor& src) {
    MSLM_CHECK(device() == Device::CPU && src.device() == Device::CPU, "copy_from runs on CPU tensors");
    MSLM_CHECK(shape() == src.shape(), "copy of a tensor {} into one of {}", shape_str(src.shape()),
               shape_str(shape()));
    if (dtype_ == src.dtype_ && is_contiguous() && src.is_contiguous()) {
        std::memmove(raw(), src.raw(), nbytes());
        return;
    }
    std::vector<size_t> dst_offsets;
    dst_offsets.reserve(static_cast<size_t>(numel()));
    for_each_offset(*this, [&](size_t off) { dst_offsets.push_back(off); });
    size_t i = 0;
    char* dst = static_cast<char*>(raw());
    const char* s = static_cast<const char*>(src.raw());
    if (dtype_ == src.dtype_) {
        size_t es = dtype_size(dtype_);
        for_each_offset(src, [&](size_t off) { std::memcpy(dst + dst_offsets[i++], s + off, es); });
    } else {
        for_each_offset(src, [&](size_t off) { store_double(dst + dst_offsets[i++], dtype_, load_as_double(s + off, src.dtype_)); });
    }
}

void Tensor::fill(double value) {
    MSLM_CHECK(device() == Device::CPU, "fill runs on CPU tensors");
    char* base = static_cast<char*>(raw());
    for_each_offset(*this, [&](size_t off) { store_double(base + off, dtype_, value); });
}

double Tensor::item_at(std::span<const int64_t> index) const {
    MSLM_CHECK(device() == Device::CPU, "item_at reads CPU tensors");
    MSLM_CHECK(static_cast<int>(index.size()) == ndim_, "index of {} dims into a tensor of {}", index.size(), ndim_);
    int64_t off = 0;
    for (int d = 0; d < ndim_; ++d) {
        MSLM_CHECK(index[d] >= 0 && index[d] < shape_[d], "index {} out of range for dimension {} of size {}",
                   index[d], d, shape_[d]);
        off += index[d] * strides_[d];
    }
    return load_as_double(static_cast<const char*>(raw()) + off * dtype_size(dtype_), dtype_);
}

std::vector<float> Tensor::to_float_vector() const {
    Tensor f = to(Device::CPU).to(DType::F32).contiguous();
    const float* p = f.data<float>();
    return std::vector<float>(p, p + f.numel());
}

}  // namespace mslm
