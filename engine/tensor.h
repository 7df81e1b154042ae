// Tensor: a view (shape, strides in elements, offset in elements, dtype) on
// refcounted Storage, plus optional autograd state. Copying a Tensor copies the
// handle, not the data. View methods here (view, reshape, narrow, permute,
// transpose, detach) share storage and do NOT record autograd; the
// differentiable versions are in engine/ops/ops.h.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "engine/device.h"
#include "engine/dtype.h"
#include "engine/error.h"
#include "engine/rng.h"
#include "engine/storage.h"

namespace ttq {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);  // "[2, 3, 4]"
int64_t shape_numel(const Shape& s);
Shape contiguous_strides(const Shape& s);

namespace autograd {
struct Node;
struct AutogradMeta;
}  // namespace autograd

class Tensor {
 public:
  Tensor() = default;  // undefined tensor

  // Factories. `empty` leaves memory uninitialised.
  static Tensor empty(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor ones(const Shape& shape, DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor full(const Shape& shape, double value, DType dtype = DType::F32,
                     Device device = Device::cpu());
  // N(mean, std) / U[lo, hi) from the generator (drawn on the CPU, then moved).
  static Tensor randn(const Shape& shape, Generator& gen, DType dtype = DType::F32,
                      Device device = Device::cpu(), double mean = 0, double std = 1);
  static Tensor uniform(const Shape& shape, Generator& gen, double lo, double hi, DType dtype = DType::F32,
                        Device device = Device::cpu());
  template <class T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape, Device device = Device::cpu());
  static Tensor scalar(double v, DType dtype = DType::F32, Device device = Device::cpu()) {
    return full({}, v, dtype, device);
  }

  bool defined() const { return m_storage != nullptr; }
  const Shape& shape() const { return m_shape; }
  const std::vector<int64_t>& strides() const { return m_strides; }
  int64_t dim() const { return static_cast<int64_t>(m_shape.size()); }
  int64_t size(int64_t d) const;  // negative d counts from the end
  int64_t stride(int64_t d) const;
  int64_t offset() const { return m_offset; }
  int64_t numel() const { return shape_numel(m_shape); }
  DType dtype() const { return m_dtype; }
  Device device() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(m_dtype); }
  bool is_contiguous() const;
  const std::shared_ptr<Storage>& storage() const { return m_storage; }

  // Pointer to element 0 of the view. Checks the dtype.
  template <class T>
  T* data() const {
    TTQ_CHECK(defined()) << "data() of an undefined tensor";
    TTQ_CHECK(dtype_of<T>() == m_dtype)
        << "data<" << dtype_name(dtype_of<T>()) << ">() on a " << dtype_name(m_dtype) << " tensor";
    return static_cast<T*>(m_storage->data()) + m_offset;
  }
  void* raw_data() const;

  // Views (no autograd). view() requires compatible strides; reshape() copies when needed.
  // One dimension may be -1.
  Tensor view(const Shape& shape) const;
  Tensor reshape(const Shape& shape) const;
  Tensor flatten(int64_t start_dim = 1) const;
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const;
  Tensor select(int64_t dim, int64_t index) const;  // removes dim
  Tensor permute(const std::vector<int64_t>& order) const;
  Tensor transpose(int64_t a, int64_t b) const;
  Tensor as_strided(const Shape& shape, const std::vector<int64_t>& strides, int64_t offset) const;

  // Copies (no autograd).
  Tensor contiguous() const;  // self when already contiguous
  Tensor clone() const;       // always a fresh contiguous copy
  Tensor to(Device device) const;
  Tensor to(DType dtype) const;
  void copy_(const Tensor& src);  // same shape; any devices / strides; converts dtype
  void fill_(double v);

  // Host reads (copy to the CPU when needed).
  template <class T>
  std::vector<T> to_vector() const;
  double item() const;  // numel() == 1, any dtype

  // Autograd.
  bool requires_grad() const;
  Tensor& set_requires_grad(bool r);
  Tensor grad() const;
  void set_grad(const Tensor& g);
  void zero_grad() { set_grad(Tensor()); }
  std::shared_ptr<autograd::Node> grad_fn() const;
  const std::shared_ptr<autograd::AutogradMeta>& autograd_meta() const { return m_meta; }
  std::shared_ptr<autograd::AutogradMeta>& mutable_autograd_meta() { return m_meta; }
  // Same data, no autograd state: what backward closures should capture.
  Tensor detach() const;
  // Reverse-mode from this tensor; `grad` defaults to ones for a scalar.
  void backward() const;
  void backward(const Tensor& grad) const;

  // Same storage, shape, strides, offset.
  bool same_view(const Tensor& o) const {
    return m_storage == o.m_storage && m_shape == o.m_shape && m_strides == o.m_strides &&
           m_offset == o.m_offset;
  }
  std::string str() const;  // short description: "Tensor[F32 cpu [2, 3]]"

 private:
  std::shared_ptr<Storage> m_storage;
  Shape m_shape;
  std::vector<int64_t> m_strides;
  int64_t m_offset = 0;
  DType m_dtype = DType::F32;
  std::shared_ptr<autograd::AutogradMeta> m_meta;
};

// Checks used by ops; throw ttq::Error naming both shapes.
void check_same_shape(const Tensor& a, const Tensor& b, const char* what);
void check_same_device(const Tensor& a, const Tensor& b, const char* what);
void check_dtype(const Tensor& a, DType d, const char* what);

}  // namespace ttq
