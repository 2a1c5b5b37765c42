// oneDNN kernels as XLA:CPU FFI handlers, float32 or bfloat16, NHWC activations:
// - 2D convolution (HWIO kernels): forward, gradient wrt the input, gradient wrt the kernel;
// - training-mode batch normalisation: forward (also returning the batch mean and biased
//   variance) and backward (gradients wrt the input, scale and shift).
// A bfloat16 call takes and returns bfloat16 activations and kernels (on CPUs with AMX, oneDNN
// runs them on its tile units); batch norm's scale, shift and statistics stay float32.
// Primitives are built once per shape and cached; calls are serialised because each one
// already uses every core through oneDNN's own OpenMP threads.
// oneDNN's direct kernel-gradient convolution is slow on small outputs (2x2 to 4x4: up to 15x
// a matmul; in bfloat16 on AMX also strided or 1x1 convolutions with outputs up to 8x8);
// there the kernel gradient is an im2col copy and one matmul instead (MatmulKernelGrad).
// Wide 3x3 float32 convolutions run as oneDNN's Winograd F(4x4, 3x3) on AVX-512 (UseWinograd):
// its activations are in a blocked layout, reordered from and to NHWC around each call.
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

enum class Kind { kForward, kInputGrad, kKernelGrad, kKernelGradMatmul };

// Kind, algorithm, data type; N, H, W, C of the input; KH, KW, O of the kernel; strides;
// paddings.
using Key = std::array<int64_t, 16>;

struct Geometry {
  dt type;
  int64_t n, h, w, c, kh, kw, o, oh, ow, sh, sw, pt, pb, pl, pr;
  Key key(Kind kind, dnnl::algorithm algorithm) const {
    return {static_cast<int64_t>(kind), static_cast<int64_t>(algorithm),
            static_cast<int64_t>(type), n, h, w, c, kh, kw, o, sh, sw, pt, pb, pl, pr};
  }
  dnnl::memory::desc input(tag t) const { return {{n, c, h, w}, type, t}; }
  dnnl::memory::desc output(tag t) const { return {{n, o, oh, ow}, type, t}; }
  dnnl::memory::desc kernel(tag t) const { return {{o, c, kh, kw}, type, t}; }
  dnnl::memory::dims strides() const { return {sh, sw}; }
  dnnl::memory::dims pad_lo() const { return {pt, pl}; }
  dnnl::memory::dims pad_hi() const { return {pb, pr}; }
};

struct Cached {
  dnnl::primitive primitive;
  dnnl::memory::desc kernel_desc;  // The layout the primitive wants its kernel (or kernel grad) in.
  // The layouts it wants its activations in (NHWC but for Winograd's blocked ones).
  dnnl::memory::desc input_desc, output_desc;
  dnnl::memory::desc scratchpad_desc;  // Its scratch memory, which Run provides.
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// Serialises the calls and guards the primitive caches.
std::mutex& Lock() {
  static std::mutex lock;
  return lock;
}

// Runs `body(stream)` holding Lock(), on a fresh stream; a oneDNN error becomes an FFI error.
template <typename Body>
ffi::Error Guarded(Body body) {
  try {
    std::lock_guard<std::mutex> guard(Lock());
    dnnl::stream stream(Engine());
    body(stream);
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

// Convolutions take their scratch memory from the caller: with oneDNN 2.6's own (per-thread)
// scratch memory, Winograd's gradients write through a null pointer when run from a thread
// other than the process's first, as XLA's worker threads are.
dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

dnnl::convolution_forward::primitive_desc ForwardDesc(const Geometry& g,
                                                     dnnl::algorithm algorithm, tag act) {
  dnnl::convolution_forward::desc desc(
      dnnl::prop_kind::forward_training, algorithm, g.input(act), g.kernel(tag::any),
      g.output(act), g.strides(), g.pad_lo(), g.pad_hi());
  return {desc, UserScratchpad(), Engine()};
}

// The primitive computing `kind` of `g` with `algorithm` (direct or Winograd; the matmul kind
// ignores it), built on first use. Direct convolutions take NHWC activations as they are;
// Winograd ones choose their own layout (tag::any: oneDNN's has no NHWC variant).
const Cached& Primitive(Kind kind, dnnl::algorithm algorithm, const Geometry& g) {
  static std::map<Key, std::unique_ptr<Cached>> cache;
  auto& slot = cache[g.key(kind, algorithm)];
  if (slot) return *slot;
  if (kind == Kind::kKernelGradMatmul) {
    // dW[(kh, kw, c), o] = cols[(n, oh, ow), (kh, kw, c)]^T @ dy[(n, oh, ow), o]: the result
    // is the HWIO kernel gradient itself.
    int64_t patch = g.kh * g.kw * g.c, rows = g.n * g.oh * g.ow;
    dnnl::matmul::desc desc({{patch, rows}, g.type, tag::ba}, {{rows, g.o}, g.type, tag::ab},
                            {{patch, g.o}, g.type, tag::ab});
    dnnl::matmul::primitive_desc pd(desc, UserScratchpad(), Engine());
    slot.reset(new Cached{dnnl::matmul(pd), g.kernel(tag::hwio), g.input(tag::nhwc),
                          g.output(tag::nhwc), pd.scratchpad_desc()});
    return *slot;
  }
  tag act = algorithm == dnnl::algorithm::convolution_direct ? tag::nhwc : tag::any;
  auto forward = ForwardDesc(g, algorithm, act);
  if (kind == Kind::kForward) {
    slot.reset(new Cached{dnnl::convolution_forward(forward), forward.weights_desc(),
                          forward.src_desc(), forward.dst_desc(), forward.scratchpad_desc()});
  } else if (kind == Kind::kInputGrad) {
    dnnl::convolution_backward_data::desc desc(algorithm, g.input(act), g.kernel(tag::any),
                                               g.output(act), g.strides(), g.pad_lo(),
                                               g.pad_hi());
    dnnl::convolution_backward_data::primitive_desc pd(desc, UserScratchpad(), Engine(),
                                                       forward);
    slot.reset(new Cached{dnnl::convolution_backward_data(pd), pd.weights_desc(),
                          pd.diff_src_desc(), pd.diff_dst_desc(), pd.scratchpad_desc()});
  } else {
    dnnl::convolution_backward_weights::desc desc(algorithm, g.input(act), g.kernel(tag::any),
                                                  g.output(act), g.strides(), g.pad_lo(),
                                                  g.pad_hi());
    dnnl::convolution_backward_weights::primitive_desc pd(desc, UserScratchpad(), Engine(),
                                                          forward);
    slot.reset(new Cached{dnnl::convolution_backward_weights(pd), pd.diff_weights_desc(),
                          pd.src_desc(), pd.diff_dst_desc(), pd.scratchpad_desc()});
  }
  return *slot;
}

// The oneDNN data type of an FFI buffer; only float32 and bfloat16 are handled.
dt DataType(const ffi::AnyBuffer& buffer) {
  return buffer.element_type() == ffi::DataType::BF16 ? dt::bf16 : dt::f32;
}

ffi::Error CheckTypes(std::initializer_list<const ffi::AnyBuffer*> buffers) {
  auto type = (*buffers.begin())->element_type();
  for (const ffi::AnyBuffer* buffer : buffers) {
    if (buffer->element_type() != type ||
        (type != ffi::DataType::F32 && type != ffi::DataType::BF16)) {
      return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                        "oneDNN kernels take float32 or bfloat16 buffers, all of one type");
    }
  }
  return ffi::Error::Success();
}

Geometry MakeGeometry(const ffi::AnyBuffer& input, const ffi::AnyBuffer& kernel,
                      const ffi::AnyBuffer& output, int64_t sh, int64_t sw, int64_t pt,
                      int64_t pb, int64_t pl, int64_t pr) {
  auto in = input.dimensions(), k = kernel.dimensions(), out = output.dimensions();
  return {DataType(input), in[0], in[1], in[2], in[3], k[0], k[1], k[3], out[1], out[2],
          sh, sw, pt, pb, pl, pr};
}

// im2col of NHWC `input` into `cols`, one row of (kh, kw, c) values per output pixel; the
// padding reads as zeros.
void Im2col(const Geometry& g, const char* input, char* cols) {
  const int64_t bytes = g.type == dt::bf16 ? 2 : 4, pixel = g.c * bytes;
#pragma omp parallel for
  for (int64_t row = 0; row < g.n * g.oh; ++row) {
    const int64_t n = row / g.oh, oy = row % g.oh;
    char* out = cols + row * g.ow * g.kh * g.kw * pixel;
    for (int64_t ox = 0; ox < g.ow; ++ox) {
      for (int64_t ky = 0; ky < g.kh; ++ky) {
        const int64_t iy = oy * g.sh - g.pt + ky;
        for (int64_t kx = 0; kx < g.kw; ++kx, out += pixel) {
          const int64_t ix = ox * g.sw - g.pl + kx;
          if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) {
            std::memset(out, 0, pixel);
          } else {
            std::memcpy(out, input + ((n * g.h + iy) * g.w + ix) * pixel, pixel);
          }
        }
      }
    }
  }
}

// A buffer in `desc`'s layout (oneDNN-allocated, so aligned), reused across calls: `slot` 0
// holds a staged input, 1 a staged output, 2 the scratch memory. Callers hold Lock().
dnnl::memory Staging(int slot, const dnnl::memory::desc& desc) {
  static std::array<dnnl::memory, 3> buffers;
  static std::array<size_t, 3> sizes = {0, 0, 0};
  size_t size = std::max<size_t>(desc.get_size(), 1);  // A handle even for no scratch.
  if (sizes[slot] < size) {
    sizes[slot] = size;
    buffers[slot] = dnnl::memory({{static_cast<int64_t>(size)}, dt::u8, tag::x}, Engine());
  }
  return dnnl::memory(desc, Engine(), buffers[slot].get_data_handle());
}

// Runs one cached primitive. `kernel` is the user's HWIO buffer and `input`/`output` its NHWC
// activations, each reordered to and from the primitive's preferred layout when they differ.
ffi::Error Run(Kind kind, dnnl::algorithm algorithm, const Geometry& g, void* input,
               void* kernel, void* output) {
  return Guarded([&](dnnl::stream& stream) {
    const Cached& cached = Primitive(kind, algorithm, g);
    dnnl::memory user_input(g.input(tag::nhwc), Engine(), input);
    dnnl::memory user_output(g.output(tag::nhwc), Engine(), output);
    dnnl::memory user_kernel(g.kernel(tag::hwio), Engine(), kernel);
    dnnl::memory input_mem = user_input, output_mem = user_output, kernel_mem = user_kernel;
    bool reorder = cached.kernel_desc != user_kernel.get_desc();
    bool stage_input = cached.input_desc != user_input.get_desc();
    bool stage_output = cached.output_desc != user_output.get_desc();
    if (reorder) kernel_mem = dnnl::memory(cached.kernel_desc, Engine());
    dnnl::memory scratchpad = Staging(2, cached.scratchpad_desc);
    if (stage_input) input_mem = Staging(0, cached.input_desc);
    if (stage_output) output_mem = Staging(1, cached.output_desc);
    auto copy = [&stream](dnnl::memory& from, dnnl::memory& to) {
      dnnl::reorder(from, to).execute(stream, from, to);
    };
    if (kind == Kind::kForward) {
      if (reorder) copy(user_kernel, kernel_mem);
      if (stage_input) copy(user_input, input_mem);
      cached.primitive.execute(stream, {{DNNL_ARG_SRC, input_mem},
                                        {DNNL_ARG_WEIGHTS, kernel_mem},
                                        {DNNL_ARG_DST, output_mem},
                                        {DNNL_ARG_SCRATCHPAD, scratchpad}});
      if (stage_output) copy(output_mem, user_output);
    } else if (kind == Kind::kInputGrad) {
      if (reorder) copy(user_kernel, kernel_mem);
      if (stage_output) copy(user_output, output_mem);
      cached.primitive.execute(stream, {{DNNL_ARG_DIFF_SRC, input_mem},
                                        {DNNL_ARG_WEIGHTS, kernel_mem},
                                        {DNNL_ARG_DIFF_DST, output_mem},
                                        {DNNL_ARG_SCRATCHPAD, scratchpad}});
      if (stage_input) copy(input_mem, user_input);
    } else if (kind == Kind::kKernelGradMatmul) {
      int64_t bytes = g.type == dt::bf16 ? 2 : 4;
      static std::vector<char> cols;  // Guarded by the lock; reused across calls.
      cols.resize(g.n * g.oh * g.ow * g.kh * g.kw * g.c * bytes);
      Im2col(g, static_cast<const char*>(input), cols.data());
      dnnl::memory cols_mem(
          {{g.kh * g.kw * g.c, g.n * g.oh * g.ow}, g.type, tag::ba}, Engine(), cols.data());
      dnnl::memory grad_mem({{g.n * g.oh * g.ow, g.o}, g.type, tag::ab}, Engine(), output);
      dnnl::memory result_mem({{g.kh * g.kw * g.c, g.o}, g.type, tag::ab}, Engine(), kernel);
      cached.primitive.execute(stream, {{DNNL_ARG_SRC, cols_mem},
                                        {DNNL_ARG_WEIGHTS, grad_mem},
                                        {DNNL_ARG_DST, result_mem},
                                        {DNNL_ARG_SCRATCHPAD, scratchpad}});
    } else {
      if (stage_input) copy(user_input, input_mem);
      if (stage_output) copy(user_output, output_mem);
      cached.primitive.execute(stream, {{DNNL_ARG_SRC, input_mem},
                                        {DNNL_ARG_DIFF_WEIGHTS, kernel_mem},
                                        {DNNL_ARG_DIFF_DST, output_mem},
                                        {DNNL_ARG_SCRATCHPAD, scratchpad}});
      if (reorder) copy(kernel_mem, user_kernel);
    }
  });
}

using Any = ffi::AnyBuffer;
using AnyOut = ffi::Result<ffi::AnyBuffer>;
using F32 = ffi::Buffer<ffi::F32>;
using F32Out = ffi::ResultBuffer<ffi::F32>;

// Whether oneDNN dispatches to an instruction set here (the CPU has it and
// ONEDNN_MAX_CPU_ISA allows it).
bool HasIsa(dnnl_cpu_isa_t isa) { return (dnnl_get_effective_cpu_isa() & isa) == isa; }

// Whether the kernel gradient of `g` is faster as im2col + matmul than as oneDNN's direct
// convolution, by CPU kind: the rule fits per-layer timings of both on AMX, AVX-512-BF16
// without AMX (Intel capped, AMD) and AVX2 (experiments/benchmarks/kernel_grad.py; tables in
// docs/performance.md). With AVX-512 the matmul wins up to 4x4 outputs, in bfloat16 (with or
// without AMX) also for strided or 1x1 convolutions up to 8x8; with AVX2 only at 2x2.
bool MatmulKernelGrad(const Geometry& g) {
  static const bool avx512 = HasIsa(dnnl_cpu_isa_avx512_core);
  int64_t pixels = g.oh * g.ow;
  bool strided_or_pointwise = g.sh > 1 || g.sw > 1 || g.kh * g.kw == 1;
  if (!avx512) return pixels <= 4;
  if (g.type == dt::bf16) return pixels <= 16 || (pixels <= 64 && strided_or_pointwise);
  return pixels <= 16;
}

// Whether oneDNN's direct kernel gradient is unsafe for `g`: oneDNN 2.6's, for a strided 1x1
// convolution over a number of input channels that is not a multiple of 16, reads out of
// bounds (it crashed 1x1/2 convolutions of 4, 8 and 12 channels at 56 px, not 16 or 64; float32,
// AVX-512). The rule sends those to the matmul, which computes the same gradient.
bool DirectKernelGradUnsafe(const Geometry& g) {
  return g.kh * g.kw == 1 && (g.sh > 1 || g.sw > 1) && g.c % 16 != 0;
}

// Whether oneDNN's Winograd convolution computes `g` right: oneDNN 2.6's input gradient is
// wrong (off by the order of the values) when a side's padding differs from the opposite
// side's, e.g. (0, 1); equal paddings of 0 or 1 match XLA.
bool WinogradSafe(const Geometry& g) {
  return g.pt == g.pb && g.pl == g.pr && g.pt <= 1 && g.pl <= 1;
}

// Whether `g` (all three passes) is faster as oneDNN's Winograd F(4x4, 3x3) than as the other
// paths, the blocked-layout reorders included: float32 3x3/1 convolutions with AVX-512 (oneDNN
// has no other), at least 64 channels in and out (multiples of 16), and outputs of at least
// 7x7, or 4x4 for 256 channels and more. Fitted to per-layer timings on AVX-512 without AMX
// (experiments/benchmarks/conv_algorithm.py; docs/performance.md): 1.1-1.9x there, growing with the
// channels, while 32-channel layers break even (the reorders) and 3x3 outputs lose.
bool UseWinograd(const Geometry& g) {
  static const bool avx512 = HasIsa(dnnl_cpu_isa_avx512_core);
  int64_t pixels = g.oh * g.ow, channels = std::min(g.c, g.o);
  return avx512 && g.type == dt::f32 && g.kh == 3 && g.kw == 3 && g.sh == 1 && g.sw == 1 &&
         WinogradSafe(g) && g.c % 16 == 0 && g.o % 16 == 0 && channels >= 64 &&
         (pixels >= 49 || (pixels >= 16 && channels >= 256));
}

// The `path` attribute of a convolution call: the rules above, or one path forced (benchmarks
// and tests); the matmul is a kernel-gradient path only.
constexpr int64_t kPathRule = 0, kPathDirect = 1, kPathMatmul = 2, kPathWinograd = 3;

// Runs `kind` (forward, input or kernel gradient) of `g` on the path `path` names.
ffi::Error Convolve(Kind kind, const Geometry& g, int64_t path, void* input, void* kernel,
                    void* output) {
  if (path == kPathWinograd && !WinogradSafe(g)) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "oneDNN's Winograd convolution takes equal paddings of 0 or 1 per axis");
  }
  bool winograd = path == kPathWinograd || (path == kPathRule && UseWinograd(g));
  if (kind == Kind::kKernelGrad &&
      (path == kPathMatmul ||
       (path == kPathRule && !winograd && (MatmulKernelGrad(g) || DirectKernelGradUnsafe(g))))) {
    kind = Kind::kKernelGradMatmul;
  }
  auto algorithm = winograd ? dnnl::algorithm::convolution_winograd
                            : dnnl::algorithm::convolution_direct;
  return Run(kind, algorithm, g, input, kernel, output);
}

ffi::Error Forward(Any x, Any w, AnyOut y, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                   int64_t pl, int64_t pr, int64_t path) {
  if (auto error = CheckTypes({&x, &w, &*y}); error.failure()) return error;
  auto g = MakeGeometry(x, w, *y, sh, sw, pt, pb, pl, pr);
  return Convolve(Kind::kForward, g, path, x.untyped_data(), w.untyped_data(),
                  y->untyped_data());
}

ffi::Error InputGrad(Any dy, Any w, AnyOut dx, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                     int64_t pl, int64_t pr, int64_t path) {
  if (auto error = CheckTypes({&dy, &w, &*dx}); error.failure()) return error;
  auto g = MakeGeometry(*dx, w, dy, sh, sw, pt, pb, pl, pr);
  return Convolve(Kind::kInputGrad, g, path, dx->untyped_data(), w.untyped_data(),
                  dy.untyped_data());
}

ffi::Error KernelGrad(Any x, Any dy, AnyOut dw, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                      int64_t pl, int64_t pr, int64_t path) {
  if (auto error = CheckTypes({&x, &dy, &*dw}); error.failure()) return error;
  auto g = MakeGeometry(x, *dw, dy, sh, sw, pt, pb, pl, pr);
  return Convolve(Kind::kKernelGrad, g, path, x.untyped_data(), dw->untyped_data(),
                  dy.untyped_data());
}

// Batch normalisation over N, H, W of an NHWC tensor, with learned scale and shift, optionally
// followed by a ReLU fused into it (`relu`): the forward pass then also returns oneDNN's
// workspace (which outputs the ReLU zeroed), which its backward pass takes.
struct NormCached {
  dnnl::batch_normalization_forward::primitive_desc forward;
  dnnl::primitive forward_primitive, backward_primitive;
};

dnnl::memory::desc DataDesc(dt type, int64_t n, int64_t h, int64_t w, int64_t c) {
  return {{n, c, h, w}, type, tag::nhwc};
}

dnnl::memory::desc DataDesc(const ffi::AnyBuffer& x) {
  auto dims = x.dimensions();
  return DataDesc(DataType(x), dims[0], dims[1], dims[2], dims[3]);
}


// Callers hold Lock().
const NormCached& NormPrimitives(dt type, const int64_t* nhwc, float epsilon, bool relu) {
  static std::map<std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, float, bool>,
                  std::unique_ptr<NormCached>> cache;
  auto& slot = cache[{static_cast<int64_t>(type), nhwc[0], nhwc[1], nhwc[2], nhwc[3], epsilon,
                      relu}];
  if (slot) return *slot;
  auto data = DataDesc(type, nhwc[0], nhwc[1], nhwc[2], nhwc[3]);
  auto flags = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;
  if (relu) flags |= dnnl::normalization_flags::fuse_norm_relu;
  dnnl::batch_normalization_forward::primitive_desc forward(
      {dnnl::prop_kind::forward_training, data, epsilon, flags}, Engine());
  dnnl::batch_normalization_backward::primitive_desc backward(
      {dnnl::prop_kind::backward, data, data, epsilon, flags}, Engine(), forward);
  slot.reset(new NormCached{forward, dnnl::batch_normalization_forward(forward),
                            dnnl::batch_normalization_backward(backward)});
  return *slot;
}

const NormCached& NormPrimitives(const ffi::AnyBuffer& x, float epsilon, bool relu) {
  return NormPrimitives(DataType(x), x.dimensions().begin(), epsilon, relu);
}

dnnl::memory Wrap(const ffi::AnyBuffer& x, void* data) {
  return dnnl::memory(DataDesc(x), Engine(), data);
}

dnnl::memory WrapVector(int64_t size, float* data) {
  return dnnl::memory({{size}, dt::f32, tag::x}, Engine(), data);
}

ffi::Error NormForward(Any x, F32 scale, F32 shift, AnyOut y, F32Out mean, F32Out variance,
                       AnyOut workspace, float epsilon, bool relu) {
  if (auto error = CheckTypes({&x, &*y}); error.failure()) return error;
  int64_t channels = x.dimensions()[3];
  return Guarded([&](dnnl::stream& stream) {
    const NormCached& cached = NormPrimitives(x, epsilon, relu);
    std::unordered_map<int, dnnl::memory> args = {
        {DNNL_ARG_SRC, Wrap(x, x.untyped_data())},
        {DNNL_ARG_DST, Wrap(x, y->untyped_data())},
        {DNNL_ARG_SCALE, WrapVector(channels, scale.typed_data())},
        {DNNL_ARG_SHIFT, WrapVector(channels, shift.typed_data())},
        {DNNL_ARG_MEAN, WrapVector(channels, mean->typed_data())},
        {DNNL_ARG_VARIANCE, WrapVector(channels, variance->typed_data())}};
    if (relu) {
      args[DNNL_ARG_WORKSPACE] = dnnl::memory(cached.forward.workspace_desc(), Engine(),
                                              workspace->untyped_data());
    }
    cached.forward_primitive.execute(stream, args);
  });
}

// oneDNN 2.6 insists on being given the shift, though the gradients do not depend on it.
ffi::Error NormBackward(Any x, Any dy, F32 mean, F32 variance, F32 scale, F32 shift,
                        Any workspace, AnyOut dx, F32Out dscale, F32Out dshift, float epsilon,
                        bool relu) {
  if (auto error = CheckTypes({&x, &dy, &*dx}); error.failure()) return error;
  int64_t channels = x.dimensions()[3];
  return Guarded([&](dnnl::stream& stream) {
    const NormCached& cached = NormPrimitives(x, epsilon, relu);
    std::unordered_map<int, dnnl::memory> args = {
        {DNNL_ARG_SRC, Wrap(x, x.untyped_data())},
        {DNNL_ARG_DIFF_DST, Wrap(x, dy.untyped_data())},
        {DNNL_ARG_MEAN, WrapVector(channels, mean.typed_data())},
        {DNNL_ARG_VARIANCE, WrapVector(channels, variance.typed_data())},
        {DNNL_ARG_SCALE, WrapVector(channels, scale.typed_data())},
        {DNNL_ARG_SHIFT, WrapVector(channels, shift.typed_data())},
        {DNNL_ARG_DIFF_SRC, Wrap(x, dx->untyped_data())},
        {DNNL_ARG_DIFF_SCALE, WrapVector(channels, dscale->typed_data())},
        {DNNL_ARG_DIFF_SHIFT, WrapVector(channels, dshift->typed_data())}};
    if (relu) {
      args[DNNL_ARG_WORKSPACE] = dnnl::memory(cached.forward.workspace_desc(), Engine(),
                                              workspace.untyped_data());
    }
    cached.backward_primitive.execute(stream, args);
  });
}

#define CONV_ATTRS                                                                  \
  .Attr<int64_t>("stride_h").Attr<int64_t>("stride_w").Attr<int64_t>("pad_top")     \
      .Attr<int64_t>("pad_bottom").Attr<int64_t>("pad_left").Attr<int64_t>("pad_right") \
      .Attr<int64_t>("path")

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvForward, Forward,
                              ffi::Ffi::Bind().Arg<Any>().Arg<Any>().Ret<Any>() CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvInputGrad, InputGrad,
                              ffi::Ffi::Bind().Arg<Any>().Arg<Any>().Ret<Any>() CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvKernelGrad, KernelGrad,
                              ffi::Ffi::Bind().Arg<Any>().Arg<Any>().Ret<Any>() CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnNormForward, NormForward,
                              ffi::Ffi::Bind()
                                  .Arg<Any>().Arg<F32>().Arg<F32>()
                                  .Ret<Any>().Ret<F32>().Ret<F32>().Ret<Any>()
                                  .Attr<float>("epsilon").Attr<bool>("relu"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnNormBackward, NormBackward,
                              ffi::Ffi::Bind()
                                  .Arg<Any>().Arg<Any>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Arg<Any>()
                                  .Ret<Any>().Ret<F32>().Ret<F32>()
                                  .Attr<float>("epsilon").Attr<bool>("relu"));

// The bytes of workspace a fused batch norm + ReLU of this NHWC shape needs; -1 on error.
extern "C" int64_t OnednnNormWorkspaceBytes(int bfloat16, int64_t n, int64_t h, int64_t w,
                                            int64_t c, float epsilon) {
  try {
    std::lock_guard<std::mutex> guard(Lock());
    int64_t nhwc[] = {n, h, w, c};
    return NormPrimitives(bfloat16 ? dt::bf16 : dt::f32, nhwc, epsilon, true)
        .forward.workspace_desc()
        .get_size();
  } catch (const dnnl::error&) {
    return -1;
  }
}
