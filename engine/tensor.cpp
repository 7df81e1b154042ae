#include "engine/tensor.h"

#include <algorithm>
#include <sstream>

#include "engine/autograd.h"
#include "engine/backend.h"

namespace ttq {

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& s) {
  Shape st(s.size());
  int64_t acc = 1;
  for (int64_t i = static_cast<int64_t>(s.size()) - 1; i >= 0; --i) {
    st[i] = acc;
    acc *= std::max<int64_t>(s[i], 1);
  }
  return st;
}

namespace {

int64_t wrap_dim(int64_t d, int64_t nd, const char* what) {
  int64_t w = d < 0 ? d + nd : d;
  TTQ_CHECK(w >= 0 && w < nd) << what << ": dimension " << d << " out of range for " << nd << "-d tensor";
  return w;
}

Shape infer_shape(const Shape& shape, int64_t numel, const Shape& from) {
  Shape out = shape;
  int64_t known = 1, neg = -1;
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i] == -1) {
      TTQ_CHECK(neg < 0) << "reshape: more than one -1 in " << shape_str(shape);
      neg = static_cast<int64_t>(i);
    } else {
      TTQ_CHECK(out[i] >= 0) << "reshape: negative size in " << shape_str(shape);
      known *= out[i];
    }
  }
  if (neg >= 0) {
    TTQ_CHECK(known > 0 && numel % known == 0)
        << "reshape: cannot view " << shape_str(from) << " as " << shape_str(shape);
    out[neg] = numel / known;
  }
  TTQ_CHECK(shape_numel(out) == numel)
      << "reshape: cannot view " << shape_str(from) << " (" << numel << " elements) as " << shape_str(shape);
  return out;
}

}  // namespace

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape) TTQ_CHECK(d >= 0) << "negative size in shape " << shape_str(shape);
  Tensor t;
  t.m_storage =
      std::make_shared<Storage>(static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype), device);
  t.m_shape = shape;
  t.m_strides = contiguous_strides(shape);
  t.m_dtype = dtype;
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) { return full(shape, 0, dtype, device); }
Tensor Tensor::ones(const Shape& shape, DType dtype, Device device) { return full(shape, 1, dtype, device); }

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill_(value);
  return t;
}

Tensor Tensor::randn(const Shape& shape, Generator& gen, DType dtype, Device device, double mean,
                     double std) {
  Tensor t = empty(shape, DType::F64);
  double* p = t.data<double>();
  const int64_t n = t.numel();
  const uint64_t base = gen.take(static_cast<uint64_t>(n));
  for (int64_t i = 0; i < n; ++i) p[i] = mean + std * rng::normal_f64(gen.seed(), base + i);
  return t.to(dtype).to(device);
}

Tensor Tensor::uniform(const Shape& shape, Generator& gen, double lo, double hi, DType dtype, Device device) {
  Tensor t = empty(shape, DType::F64);
  double* p = t.data<double>();
  const int64_t n = t.numel();
  const uint64_t base = gen.take(static_cast<uint64_t>(n));
  for (int64_t i = 0; i < n; ++i) p[i] = lo + (hi - lo) * rng::uniform_f64(gen.seed(), base + i);
  return t.to(dtype).to(device);
}

template <class T>
Tensor Tensor::from_vector(const std::vector<T>& values, const Shape& shape, Device device) {
  TTQ_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape))
      << "from_vector: " << values.size() << " values for shape " << shape_str(shape);
  Tensor t = empty(shape, dtype_of<T>());
  std::copy(values.begin(), values.end(), t.data<T>());
  return t.to(device);
}
template Tensor Tensor::from_vector(const std::vector<float>&, const Shape&, Device);
template Tensor Tensor::from_vector(const std::vector<double>&, const Shape&, Device);
template Tensor Tensor::from_vector(const std::vector<uint8_t>&, const Shape&, Device);
template Tensor Tensor::from_vector(const std::vector<int32_t>&, const Shape&, Device);
template Tensor Tensor::from_vector(const std::vector<int64_t>&, const Shape&, Device);

int64_t Tensor::size(int64_t d) const { return m_shape[wrap_dim(d, dim(), "size")]; }
int64_t Tensor::stride(int64_t d) const { return m_strides[wrap_dim(d, dim(), "stride")]; }
Device Tensor::device() const { return m_storage ? m_storage->device() : Device::cpu(); }

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (int64_t i = dim() - 1; i >= 0; --i) {
    if (m_shape[i] == 1) continue;
    if (m_strides[i] != expected) return false;
    expected *= m_shape[i];
  }
  return true;
}

void* Tensor::raw_data() const {
  TTQ_CHECK(defined()) << "raw_data() of an undefined tensor";
  return static_cast<char*>(m_storage->data()) + m_offset * static_cast<int64_t>(dtype_size(m_dtype));
}

Tensor Tensor::view(const Shape& shape) const {
  Shape s = infer_shape(shape, numel(), m_shape);
  TTQ_CHECK(is_contiguous()) << "view " << shape_str(m_shape) << " -> " << shape_str(shape)
                             << " needs a contiguous tensor (use reshape)";
  Tensor t = detach();
  t.m_shape = s;
  t.m_strides = contiguous_strides(s);
  return t;
}

Tensor Tensor::reshape(const Shape& shape) const {
  return is_contiguous() ? view(shape) : contiguous().view(shape);
}

Tensor Tensor::flatten(int64_t start_dim) const {
  start_dim = wrap_dim(start_dim, std::max<int64_t>(dim(), 1), "flatten");
  Shape s(m_shape.begin(), m_shape.begin() + start_dim);
  int64_t rest = 1;
  for (int64_t i = start_dim; i < dim(); ++i) rest *= m_shape[i];
  s.push_back(rest);
  return reshape(s);
}

Tensor Tensor::narrow(int64_t d, int64_t start, int64_t length) const {
  d = wrap_dim(d, dim(), "narrow");
  TTQ_CHECK(start >= 0 && length >= 0 && start + length <= m_shape[d])
      << "narrow: [" << start << ", " << start + length << ") out of range for dim " << d << " of "
      << shape_str(m_shape);
  Tensor t = detach();
  t.m_shape[d] = length;
  t.m_offset += start * m_strides[d];
  return t;
}

Tensor Tensor::select(int64_t d, int64_t index) const {
  d = wrap_dim(d, dim(), "select");
  Tensor t = narrow(d, index, 1);
  t.m_shape.erase(t.m_shape.begin() + d);
  t.m_strides.erase(t.m_strides.begin() + d);
  return t;
}

Tensor Tensor::permute(const std::vector<int64_t>& order) const {
  TTQ_CHECK(static_cast<int64_t>(order.size()) == dim())
      << "permute: order of size " << order.size() << " for shape " << shape_str(m_shape);
  Tensor t = detach();
  std::vector<bool> seen(dim(), false);
  for (size_t i = 0; i < order.size(); ++i) {
    int64_t o = wrap_dim(order[i], dim(), "permute");
    TTQ_CHECK(!seen[o]) << "permute: repeated dimension " << o;
    seen[o] = true;
    t.m_shape[i] = m_shape[o];
    t.m_strides[i] = m_strides[o];
  }
  return t;
}

Tensor Tensor::transpose(int64_t a, int64_t b) const {
  std::vector<int64_t> order(dim());
  for (int64_t i = 0; i < dim(); ++i) order[i] = i;
  std::swap(order[wrap_dim(a, dim(), "transpose")], order[wrap_dim(b, dim(), "transpose")]);
  return permute(order);
}

Tensor Tensor::as_strided(const Shape& shape, const std::vector<int64_t>& strides, int64_t offset) const {
  TTQ_CHECK(shape.size() == strides.size()) << "as_strided: shape and strides differ in rank";
  Tensor t = detach();
  t.m_shape = shape;
  t.m_strides = strides;
  t.m_offset = offset;
  return t;
}

Tensor Tensor::contiguous() const { return is_contiguous() ? *this : clone(); }

Tensor Tensor::clone() const {
  Tensor t = empty(m_shape, m_dtype, device());
  t.copy_(*this);
  return t;
}

Tensor Tensor::to(Device d) const {
  if (d == device()) return *this;
  Tensor src = contiguous();
  Tensor t = empty(m_shape, m_dtype, d);
  copy_bytes(t.raw_data(), d, src.raw_data(), src.device(), src.nbytes());
  return t;
}

Tensor Tensor::to(DType dt) const {
  if (dt == m_dtype) return *this;
  Tensor t = empty(m_shape, dt, device());
  t.copy_(*this);
  return t;
}

void Tensor::copy_(const Tensor& src) {
  check_same_shape(*this, src, "copy_");
  if (src.device() == device()) {
    TTQ_BACKEND(device(), copy)(src, *this);
    return;
  }
  // Across devices: move a contiguous image of src, then convert / scatter locally.
  Tensor s = src.contiguous();
  if (is_contiguous() && s.dtype() == m_dtype) {
    copy_bytes(raw_data(), device(), s.raw_data(), s.device(), s.nbytes());
    return;
  }
  Tensor staged = s.to(device());
  TTQ_BACKEND(device(), copy)(staged, *this);
}

void Tensor::fill_(double v) { TTQ_BACKEND(device(), fill)(*this, v); }

template <class T>
std::vector<T> Tensor::to_vector() const {
  Tensor c = to(Device::cpu()).to(dtype_of<T>()).contiguous();
  const T* p = c.data<T>();
  return std::vector<T>(p, p + c.numel());
}
template std::vector<float> Tensor::to_vector() const;
template std::vector<double> Tensor::to_vector() const;
template std::vector<uint8_t> Tensor::to_vector() const;
template std::vector<int32_t> Tensor::to_vector() const;
template std::vector<int64_t> Tensor::to_vector() const;

double Tensor::item() const {
  TTQ_CHECK(numel() == 1) << "item() of a tensor with " << numel() << " elements " << shape_str(m_shape);
  return to_vector<double>()[0];
}

bool Tensor::requires_grad() const { return m_meta != nullptr && m_meta->requires_grad; }

Tensor& Tensor::set_requires_grad(bool r) {
  TTQ_CHECK(!r || is_floating(m_dtype)) << "only floating tensors can require gradients";
  if (!m_meta) m_meta = std::make_shared<autograd::AutogradMeta>();
  TTQ_CHECK(m_meta->grad_fn == nullptr) << "set_requires_grad on a non-leaf tensor";
  m_meta->requires_grad = r;
  return *this;
}

Tensor Tensor::grad() const { return m_meta ? m_meta->grad : Tensor(); }

void Tensor::set_grad(const Tensor& g) {
  if (!m_meta) m_meta = std::make_shared<autograd::AutogradMeta>();
  m_meta->grad = g;
}

std::shared_ptr<autograd::Node> Tensor::grad_fn() const { return m_meta ? m_meta->grad_fn : nullptr; }

Tensor Tensor::detach() const {
  Tensor t = *this;
  t.m_meta.reset();
  return t;
}

void Tensor::backward() const { autograd::backward(*this, Tensor()); }
void Tensor::backward(const Tensor& grad) const { autograd::backward(*this, grad); }

std::string Tensor::str() const {
  std::ostringstream os;
  os << "Tensor[" << dtype_name(m_dtype) << " " << device().str() << " " << shape_str(m_shape) << "]";
  return os.str();
}

void check_same_shape(const Tensor& a, const Tensor& b, const char* what) {
  TTQ_CHECK(a.shape() == b.shape()) << what << ": shapes " << shape_str(a.shape()) << " and "
                                    << shape_str(b.shape()) << " differ";
}

void check_same_device(const Tensor& a, const Tensor& b, const char* what) {
  TTQ_CHECK(a.device() == b.device())
      << what << ": tensors on " << a.device().str() << " and " << b.device().str();
}

void check_dtype(const Tensor& a, DType d, const char* what) {
  TTQ_CHECK(a.dtype() == d) << what << ": expected " << dtype_name(d) << ", got " << dtype_name(a.dtype());
}

}  // namespace ttq
