// Tensor: a typed, shaped, strided view of shared storage on a device. Views (reshape, slice,
// transpose, select) share the storage and cost nothing; `contiguous()` and `to()` copy.
// Kernels take contiguous inputs unless they say otherwise.
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

namespace mslm {

enum class Device : uint8_t { CPU, CUDA };
std::string_view device_name(Device d);

constexpr int kMaxDims = 5;

// Bytes owned by someone: an aligned host allocation, a mapped file, a CUDA allocation, or a
// foreign buffer kept alive by a holder.
class Storage {
public:
    Storage(void* data, size_t bytes, Device device, std::function<void(void*)> release)
        : data_(data), bytes_(bytes), device_(device), release_(std::move(release)) {}
    ~Storage() {
        if (release_) release_(data_);
    }
    Storage(const Storage&) = delete;
    Storage& operator=(const Storage&) = delete;

    static std::shared_ptr<Storage> allocate(size_t bytes, Device device);

    void* data() const { return data_; }
    size_t bytes() const { return bytes_; }
    Device device() const { return device_; }

private:
    void* data_;
    size_t bytes_;
    Device device_;
    std::function<void(void*)> release_;
};

using Shape = std::vector<int64_t>;
std::string shape_str(std::span<const int64_t> shape);  // "(2, 3, 4)"

class Tensor {
public:
    Tensor() = default;
    static Tensor empty(const Shape& shape, DType dtype, Device device = Device::CPU);
    static Tensor zeros(const Shape& shape, DType dtype, Device device = Device::CPU);
    // A contiguous tensor over existing bytes that `storage` keeps alive.
    static Tensor from_storage(std::shared_ptr<Storage> storage, size_t byte_offset, const Shape& shape,
                               DType dtype);
    template <typename T>
    static Tensor from_vector(const std::vector<T>& values, const Shape& shape);

    bool defined() const { return storage_ != nullptr; }
    DType dtype() const { return dtype_; }
    Device device() const { return storage_ ? storage_->device() : Device::CPU; }
    int ndim() const { return ndim_; }
    Shape shape() const { return Shape(shape_.begin(), shape_.begin() + ndim_); }
    int64_t size(int dim) const;  // negative dims count from the end
    int64_t stride(int dim) const;
    int64_t numel() const;
    size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
    bool is_contiguous() const;
    const std::shared_ptr<Storage>& storage() const { return storage_; }
    size_t byte_offset() const { return offset_; }

    void* raw() const { return static_cast<char*>(storage_->data()) + offset_; }
    template <typename T>
    T* data() const {
        MSLM_CHECK(dtype_ == dtype_of<T>(), "tensor of {} read as {}", dtype_name(dtype_),
                   dtype_name(dtype_of<T>()));
        return static_cast<T*>(raw());
    }

    // Views.
    Tensor view(const Shape& shape) const;      // contiguous only; one dim may be -1
    Tensor reshape(const Shape& shape) const;   // view when contiguous, else a copy
    Tensor slice(int dim, int64_t begin, int64_t end) const;
    Tensor select(int dim, int64_t index) const;  // drops the dimension
    Tensor transpose(int d0, int d1) const;

    // Copies.
    Tensor contiguous() const;
    Tensor clone() const;
    Tensor to(DType dtype) const;       // numeric conversion (float <-> bf16/f16/ints), CPU
    Tensor to(Device device) const;
    void copy_from(const Tensor& src);  // same shape; converts dtype; any strides
    void fill(double value);

    // Element access for tests and tools (slow path, converts to double).
    double item_at(std::span<const int64_t> index) const;
    std::vector<float> to_float_vector() const;

private:
    std::shared_ptr<Storage> storage_;
    size_t offset_ = 0;
    DType dtype_ = DType::F32;
    int ndim_ = 0;
    std::array<int64_t, kMaxDims> shape_{};
    std::array<int64_t, kMaxDims> strides_{};  // in elements

    int wrap_dim(int dim) const;
};

template <typename T>
Tensor Tensor::from_vector(const std::vector<T>& values, const Shape& shape) {
    Tensor t = empty(shape, dtype_of<T>());
    MSLM_CHECK(static_cast<int64_t>(values.size()) == t.numel(), "from_vector: {} values for shape {}",
               values.size(), shape_str(shape));
    std::copy(values.begin(), values.end(), t.data<T>());
    return t;
}

}  // namespace mslm
