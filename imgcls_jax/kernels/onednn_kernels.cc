// oneDNN kernels as XLA:CPU FFI handlers, float32, NHWC activations:
// - 2D convolution (HWIO kernels): forward, gradient wrt the input, gradient wrt the kernel;
// - training-mode batch normalisation: forward (also returning the batch mean and biased
//   variance) and backward (gradients wrt the input, scale and shift).
// Primitives are built once per shape and cached; calls are serialised because each one
// already uses every core through oneDNN's own OpenMP threads.
#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

enum class Kind { kForward, kInputGrad, kKernelGrad };

// N, H, W, C of the input; KH, KW, O of the kernel; OH, OW; strides; paddings (lo/hi per axis).
using Key = std::array<int64_t, 14>;

struct Geometry {
  int64_t n, h, w, c, kh, kw, o, oh, ow, sh, sw, pt, pb, pl, pr;
  Key key(Kind kind) const {
    return {static_cast<int64_t>(kind), n, h, w, c, kh, kw, o, sh, sw, pt, pb, pl, pr};
  }
  dnnl::memory::desc input(tag t) const { return {{n, c, h, w}, dt::f32, t}; }
  dnnl::memory::desc output(tag t) const { return {{n, o, oh, ow}, dt::f32, t}; }
  dnnl::memory::desc kernel(tag t) const { return {{o, c, kh, kw}, dt::f32, t}; }
  dnnl::memory::dims strides() const { return {sh, sw}; }
  dnnl::memory::dims pad_lo() const { return {pt, pl}; }
  dnnl::memory::dims pad_hi() const { return {pb, pr}; }
};

struct Cached {
  dnnl::primitive primitive;
  dnnl::memory::desc kernel_desc;  // The layout the primitive wants its kernel (or kernel grad) in.
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// Runs `body(stream)` holding the lock (which also guards the primitive caches), on a fresh
// stream; a oneDNN error becomes an FFI error.
template <typename Body>
ffi::Error Guarded(Body body) {
  static std::mutex lock;
  try {
    std::lock_guard<std::mutex> guard(lock);
    dnnl::stream stream(Engine());
    body(stream);
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

dnnl::convolution_forward::primitive_desc ForwardDesc(const Geometry& g) {
  dnnl::convolution_forward::desc desc(
      dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
      g.input(tag::nhwc), g.kernel(tag::any), g.output(tag::nhwc), g.strides(), g.pad_lo(),
      g.pad_hi());
  return {desc, Engine()};
}

const Cached& Primitive(Kind kind, const Geometry& g) {
  static std::map<Key, std::unique_ptr<Cached>> cache;
  auto& slot = cache[g.key(kind)];
  if (slot) return *slot;
  auto forward = ForwardDesc(g);
  if (kind == Kind::kForward) {
    slot.reset(new Cached{dnnl::convolution_forward(forward), forward.weights_desc()});
  } else if (kind == Kind::kInputGrad) {
    dnnl::convolution_backward_data::desc desc(
        dnnl::algorithm::convolution_direct, g.input(tag::nhwc), g.kernel(tag::any),
        g.output(tag::nhwc), g.strides(), g.pad_lo(), g.pad_hi());
    dnnl::convolution_backward_data::primitive_desc pd(desc, Engine(), forward);
    slot.reset(new Cached{dnnl::convolution_backward_data(pd), pd.weights_desc()});
  } else {
    dnnl::convolution_backward_weights::desc desc(
        dnnl::algorithm::convolution_direct, g.input(tag::nhwc), g.kernel(tag::any),
        g.output(tag::nhwc), g.strides(), g.pad_lo(), g.pad_hi());
    dnnl::convolution_backward_weights::primitive_desc pd(desc, Engine(), forward);
    slot.reset(new Cached{dnnl::convolution_backward_weights(pd), pd.diff_weights_desc()});
  }
  return *slot;
}

Geometry MakeGeometry(ffi::Span<const int64_t> input, ffi::Span<const int64_t> kernel,
                      ffi::Span<const int64_t> output, int64_t sh, int64_t sw, int64_t pt,
                      int64_t pb, int64_t pl, int64_t pr) {
  return {input[0], input[1], input[2], input[3], kernel[0], kernel[1], kernel[3],
          output[1], output[2], sh, sw, pt, pb, pl, pr};
}

// Runs one cached primitive; `kernel` is the user's HWIO buffer, reordered to and from the
// primitive's preferred layout when they differ.
ffi::Error Run(Kind kind, const Geometry& g, float* input, float* kernel, float* output) {
  return Guarded([&](dnnl::stream& stream) {
    const Cached& cached = Primitive(kind, g);
    dnnl::memory input_mem(g.input(tag::nhwc), Engine(), input);
    dnnl::memory output_mem(g.output(tag::nhwc), Engine(), output);
    dnnl::memory user_kernel(g.kernel(tag::hwio), Engine(), kernel);
    dnnl::memory kernel_mem = user_kernel;
    bool reorder = cached.kernel_desc != user_kernel.get_desc();
    if (reorder) kernel_mem = dnnl::memory(cached.kernel_desc, Engine());
    if (kind == Kind::kForward) {
      if (reorder) dnnl::reorder(user_kernel, kernel_mem).execute(stream, user_kernel, kernel_mem);
      cached.primitive.execute(stream, {{DNNL_ARG_SRC, input_mem},
                                        {DNNL_ARG_WEIGHTS, kernel_mem},
                                        {DNNL_ARG_DST, output_mem}});
    } else if (kind == Kind::kInputGrad) {
      if (reorder) dnnl::reorder(user_kernel, kernel_mem).execute(stream, user_kernel, kernel_mem);
      cached.primitive.execute(stream, {{DNNL_ARG_DIFF_SRC, input_mem},
                                        {DNNL_ARG_WEIGHTS, kernel_mem},
                                        {DNNL_ARG_DIFF_DST, output_mem}});
    } else {
      cached.primitive.execute(stream, {{DNNL_ARG_SRC, input_mem},
                                        {DNNL_ARG_DIFF_WEIGHTS, kernel_mem},
                                        {DNNL_ARG_DIFF_DST, output_mem}});
      if (reorder) dnnl::reorder(kernel_mem, user_kernel).execute(stream, kernel_mem, user_kernel);
    }
  });
}

using F32 = ffi::Buffer<ffi::F32>;
using F32Out = ffi::ResultBuffer<ffi::F32>;

ffi::Error Forward(F32 x, F32 w, F32Out y, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                   int64_t pl, int64_t pr) {
  auto g = MakeGeometry(x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, pt, pb, pl, pr);
  return Run(Kind::kForward, g, x.typed_data(), w.typed_data(), y->typed_data());
}

ffi::Error InputGrad(F32 dy, F32 w, F32Out dx, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                     int64_t pl, int64_t pr) {
  auto g = MakeGeometry(dx->dimensions(), w.dimensions(), dy.dimensions(), sh, sw, pt, pb, pl, pr);
  return Run(Kind::kInputGrad, g, dx->typed_data(), w.typed_data(), dy.typed_data());
}

ffi::Error KernelGrad(F32 x, F32 dy, F32Out dw, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                      int64_t pl, int64_t pr) {
  auto g = MakeGeometry(x.dimensions(), dw->dimensions(), dy.dimensions(), sh, sw, pt, pb, pl, pr);
  return Run(Kind::kKernelGrad, g, x.typed_data(), dw->typed_data(), dy.typed_data());
}

// Batch normalisation over N, H, W of an NHWC tensor, with learned scale and shift.
struct NormCached {
  dnnl::batch_normalization_forward::primitive_desc forward;
  dnnl::primitive forward_primitive, backward_primitive;
};

const NormCached& NormPrimitives(ffi::Span<const int64_t> dims, float epsilon) {
  static std::map<std::tuple<int64_t, int64_t, int64_t, int64_t, float>,
                  std::unique_ptr<NormCached>> cache;
  auto& slot = cache[{dims[0], dims[1], dims[2], dims[3], epsilon}];
  if (slot) return *slot;
  dnnl::memory::desc data({dims[0], dims[3], dims[1], dims[2]}, dt::f32, tag::nhwc);
  auto flags = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;
  dnnl::batch_normalization_forward::primitive_desc forward(
      {dnnl::prop_kind::forward_training, data, epsilon, flags}, Engine());
  dnnl::batch_normalization_backward::primitive_desc backward(
      {dnnl::prop_kind::backward, data, data, epsilon, flags}, Engine(), forward);
  slot.reset(new NormCached{forward, dnnl::batch_normalization_forward(forward),
                            dnnl::batch_normalization_backward(backward)});
  return *slot;
}

dnnl::memory Wrap(ffi::Span<const int64_t> dims, float* data) {
  dnnl::memory::desc desc({dims[0], dims[3], dims[1], dims[2]}, dt::f32, tag::nhwc);
  return dnnl::memory(desc, Engine(), data);
}

dnnl::memory WrapVector(int64_t size, float* data) {
  return dnnl::memory({{size}, dt::f32, tag::x}, Engine(), data);
}

ffi::Error NormForward(F32 x, F32 scale, F32 shift, F32Out y, F32Out mean, F32Out variance,
                       float epsilon) {
  auto dims = x.dimensions();
  return Guarded([&](dnnl::stream& stream) {
    NormPrimitives(dims, epsilon).forward_primitive.execute(
        stream, {{DNNL_ARG_SRC, Wrap(dims, x.typed_data())},
                 {DNNL_ARG_DST, Wrap(dims, y->typed_data())},
                 {DNNL_ARG_SCALE, WrapVector(dims[3], scale.typed_data())},
                 {DNNL_ARG_SHIFT, WrapVector(dims[3], shift.typed_data())},
                 {DNNL_ARG_MEAN, WrapVector(dims[3], mean->typed_data())},
                 {DNNL_ARG_VARIANCE, WrapVector(dims[3], variance->typed_data())}});
  });
}

// oneDNN 2.6 insists on being given the shift, though the gradients do not depend on it.
ffi::Error NormBackward(F32 x, F32 dy, F32 mean, F32 variance, F32 scale, F32 shift, F32Out dx,
                        F32Out dscale, F32Out dshift, float epsilon) {
  auto dims = x.dimensions();
  return Guarded([&](dnnl::stream& stream) {
    NormPrimitives(dims, epsilon).backward_primitive.execute(
        stream, {{DNNL_ARG_SRC, Wrap(dims, x.typed_data())},
                 {DNNL_ARG_DIFF_DST, Wrap(dims, dy.typed_data())},
                 {DNNL_ARG_MEAN, WrapVector(dims[3], mean.typed_data())},
                 {DNNL_ARG_VARIANCE, WrapVector(dims[3], variance.typed_data())},
                 {DNNL_ARG_SCALE, WrapVector(dims[3], scale.typed_data())},
                 {DNNL_ARG_SHIFT, WrapVector(dims[3], shift.typed_data())},
                 {DNNL_ARG_DIFF_SRC, Wrap(dims, dx->typed_data())},
                 {DNNL_ARG_DIFF_SCALE, WrapVector(dims[3], dscale->typed_data())},
                 {DNNL_ARG_DIFF_SHIFT, WrapVector(dims[3], dshift->typed_data())}});
  });
}

#define CONV_ATTRS                                                                  \
  .Attr<int64_t>("stride_h").Attr<int64_t>("stride_w").Attr<int64_t>("pad_top")     \
      .Attr<int64_t>("pad_bottom").Attr<int64_t>("pad_left").Attr<int64_t>("pad_right")

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvForward, Forward,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>() CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvInputGrad, InputGrad,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>() CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvKernelGrad, KernelGrad,
                              ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>() CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnNormForward, NormForward,
                              ffi::Ffi::Bind()
                                  .Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Ret<F32>().Ret<F32>().Ret<F32>()
                                  .Attr<float>("epsilon"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnNormBackward, NormBackward,
                              ffi::Ffi::Bind()
                                  .Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Ret<F32>().Ret<F32>().Ret<F32>()
                                  .Attr<float>("epsilon"));
