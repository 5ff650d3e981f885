// Weight gradient of a stride-1, unpadded ("VALID") 2-D convolution as an XLA FFI CPU custom call.
//
//   x  : (..., N, H, W, Cin)    float32, NHWC
//   dy : (..., N, Ho, Wo, Cout) float32, Ho = H-KH+1, Wo = W-KW+1
//   dw : (..., KH, KW, Cin, Cout) float32, HWIO
//   dw[i, j, ci, co] = sum_{n, h, w} x[n, h+i, w+j, ci] * dy[n, h, w, co]
// Leading dims ("...", e.g. from vmap with vmap_method="broadcast_all") are independent problems.
//
// Observation used: for fixed (n, h+i, w) the KW*Cin values x[n, h+i, w:w+KW, :] are contiguous,
// and dw[i, :, :, :] viewed as (KW*Cin, Cout) uses the same flattening q = j*Cin + ci. So per kernel
// row i, dw[i] (Q x Cout, Q = KW*Cin) += sum over positions p=(n,h,w) of
//   xrow(n, h+i)[w*Cin + q] * dy[n, h, w, co],
// a GEMM whose "A" rows are overlapping windows of an image row. The micro-kernel keeps a
// QB (q) x 8*NV (co) block of dw in AVX2 registers (6 x 16 normally), broadcasts QB x values and
// loads NV dy vectors per position. Blocking: one example at a time (its x and dy tiles sit in L2), and within it a
// block of RB output rows (x rows + dy rows fit L1) swept over all (i, q-block, co-block).
// Partial sums start at zero per (example, row block) and are added to dw afterwards, which keeps
// the float32 accumulation chains short.
// Threads: see Job below.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"

#ifdef __AVX2__
#include <immintrin.h>
#endif

namespace ffi = xla::ffi;

namespace {

struct Geom {
  int64_t H, W, Cin, Cout, KH, KW, Ho, Wo;
};

#ifdef __AVX2__
// The k / v loops carry "GCC unroll" pragmas: without early unrolling GCC 12 keeps the acc array
// in memory and stores every accumulator on every position.
typedef float v8f __attribute__((vector_size(32)));

// dw_blk[k*Cout + v*8 + l] += sum_{h in rows, w} xr(h)[w*Cin + k] * dr(h)[w*Cout + v*8 + l]
template <int QB, int NV>
inline void micro(const float* x0, const float* d0, float* dwb, int64_t rows, const Geom& g) {
  v8f acc[QB][NV];
  _Pragma("GCC unroll 16") for (int k = 0; k < QB; ++k)
    _Pragma("GCC unroll 16") for (int v = 0; v < NV; ++v) acc[k][v] = v8f{};
  // One flat loop over the rows*Wo positions (GCC keeps the accumulators in registers only
  // with a single loop); dy rows are contiguous, x jumps (KW-1)*Cin floats at each row end.
  const int64_t xs = g.Cin, ds = g.Cout, xskip = (g.W - g.Wo) * g.Cin, wo = g.Wo;
  const int64_t total = rows * wo;
  const float* xp = x0;
  const float* dp = d0;
  int64_t w = 0;
  for (int64_t t = 0; t < total; ++t) {
    v8f d[NV];
    _Pragma("GCC unroll 16") for (int v = 0; v < NV; ++v) d[v] = (v8f)_mm256_loadu_ps(dp + 8 * v);
    _Pragma("GCC unroll 16") for (int k = 0; k < QB; ++k) {
      const __m256 b = _mm256_broadcast_ss(xp + k);
      _Pragma("GCC unroll 16") for (int v = 0; v < NV; ++v)
        acc[k][v] = (v8f)_mm256_fmadd_ps(b, (__m256)d[v], (__m256)acc[k][v]);
    }
    xp += xs;
    dp += ds;
    if (++w == wo) {
      w = 0;
      xp += xskip;
    }
  }
  _Pragma("GCC unroll 16") for (int k = 0; k < QB; ++k)
    _Pragma("GCC unroll 16") for (int v = 0; v < NV; ++v) {
      float* o = dwb + k * g.Cout + 8 * v;
      _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), (__m256)acc[k][v]));
    }
}

template <int NV>
inline void q_sweep(const float* x0, const float* d0, float* dwi, int64_t rows, const Geom& g) {
  // Register budget: QB*NV accumulators + NV loads + 1 broadcast <= 16.
  constexpr int QB = NV >= 4 ? 3 : (NV == 3 ? 4 : (NV == 2 ? 6 : 8));
  const int64_t Q = g.KW * g.Cin;
  int64_t q = 0;
  for (; q + QB <= Q; q += QB) micro<QB, NV>(x0 + q, d0, dwi + q * g.Cout, rows, g);
  switch (Q - q) {
#define TAIL(n) \
  case n: if constexpr (n < QB) micro<n, NV>(x0 + q, d0, dwi + q * g.Cout, rows, g); break;
    TAIL(1) TAIL(2) TAIL(3) TAIL(4) TAIL(5) TAIL(6) TAIL(7)
#undef TAIL
    default: break;
  }
}
#endif

// Plain C++ for output channels [co_begin, Cout) (the whole thing without AVX2).
void scalar_part(const float* x0, const float* d0, float* dwi, int64_t rows, const Geom& g,
                 int64_t co_begin) {
  const int64_t Q = g.KW * g.Cin, nco = g.Cout - co_begin;
  if (nco <= 0) return;
  std::vector<float> acc(Q * nco, 0.f);
  for (int64_t r = 0; r < rows; ++r) {
    const float* xp = x0 + r * g.W * g.Cin;
    const float* dp = d0 + r * g.Wo * g.Cout + co_begin;
    for (int64_t w = 0; w < g.Wo; ++w)
      for (int64_t q = 0; q < Q; ++q) {
        const float a = xp[w * g.Cin + q];
        float* ac = acc.data() + q * nco;
        const float* dd = dp + w * g.Cout;
        for (int64_t c = 0; c < nco; ++c) ac[c] += a * dd[c];
      }
  }
  for (int64_t q = 0; q < Q; ++q)
    for (int64_t c = 0; c < nco; ++c) dwi[q * g.Cout + co_begin + c] += acc[q * nco + c];
}

void conv_dw_one(const float* x, const float* dy, float* dw, int64_t N, const Geom& g) {
  std::memset(dw, 0, sizeof(float) * g.KH * g.KW * g.Cin * g.Cout);
  // Rows per block: keep (RB + KH - 1) x rows and RB dy rows within ~24 KB (L1 is 32 KB).
  const int64_t xrow_b = 4 * g.W * g.Cin, drow_b = 4 * g.Wo * g.Cout;
  int64_t RB = (24 * 1024 - (g.KH - 1) * xrow_b) / (xrow_b + drow_b);
  if (RB < 2) RB = 2;
  if (RB > g.Ho) RB = g.Ho;
  const int64_t Q = g.KW * g.Cin;
  for (int64_t n = 0; n < N; ++n) {
    const float* xn = x + n * g.H * g.W * g.Cin;
    const float* dn = dy + n * g.Ho * g.Wo * g.Cout;
    for (int64_t h0 = 0; h0 < g.Ho; h0 += RB) {
      const int64_t rows = h0 + RB <= g.Ho ? RB : g.Ho - h0;
      for (int64_t i = 0; i < g.KH; ++i) {
        const float* x0 = xn + (h0 + i) * g.W * g.Cin;
        const float* d0 = dn + h0 * g.Wo * g.Cout;
        float* dwi = dw + i * Q * g.Cout;
        int64_t co = 0;
#ifdef __AVX2__
        // Main co blocks: 6 q x 16 co (2 dy loads + 6 broadcasts per 12 FMAs, all operands in
        // registers) when Q >= 6; for tiny Q (e.g. Cin = 1) 3 q x 32 co keeps 12 accumulators.
        if (Q >= 6)
          for (; co + 16 <= g.Cout; co += 16) q_sweep<2>(x0, d0 + co, dwi + co, rows, g);
        else
          for (; co + 32 <= g.Cout; co += 32) q_sweep<4>(x0, d0 + co, dwi + co, rows, g);
        switch ((g.Cout - co) / 8) {
          case 3: q_sweep<3>(x0, d0 + co, dwi + co, rows, g); co += 24; break;
          case 2: q_sweep<2>(x0, d0 + co, dwi + co, rows, g); co += 16; break;
          case 1: q_sweep<1>(x0, d0 + co, dwi + co, rows, g); co += 8; break;
          default: break;
        }
#endif
        scalar_part(x0, d0, dwi, rows, g, co);
      }
    }
  }
}

// The examples of each problem are split into `parts` ranges run on XLA's intra-op thread pool;
// each range has its own partial dW, summed in range order afterwards, so the result depends on
// the number of threads but not on scheduling. The calling thread works too, and waits only for
// ranges another thread has already started: a task that starts after all ranges are taken
// finds nothing to do, so a busy (or nested) pool cannot deadlock the call.
struct Job {
  const float* x;
  const float* dy;
  float* dw;
  Geom g;
  int64_t N, parts, total, xsz, ysz, wsz;
  std::vector<float> partial;  // (batch, parts - 1, wsz): ranges 1.. of every problem
  std::atomic<int64_t> next{0};
  std::mutex mu;
  std::condition_variable cv;
  int64_t done = 0;

  void work() {
    for (int64_t k = next.fetch_add(1); k < total; k = next.fetch_add(1)) {
      const int64_t b = k / parts, p = k % parts;
      const int64_t n0 = N * p / parts, n1 = N * (p + 1) / parts;
      float* out = p == 0 ? dw + b * wsz : partial.data() + (b * (parts - 1) + p - 1) * wsz;
      conv_dw_one(x + b * xsz + n0 * g.H * g.W * g.Cin, dy + b * ysz + n0 * g.Ho * g.Wo * g.Cout,
                  out, n1 - n0, g);
      std::lock_guard<std::mutex> lock(mu);
      if (++done == total) cv.notify_all();
    }
  }
};

ffi::Error ConvDwImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                      ffi::ResultBuffer<ffi::F32> dw) {
  auto xd = x.dimensions(), yd = dy.dimensions(), wd = dw->dimensions();
  const size_t r = xd.size();
  if (r < 4 || yd.size() != r || wd.size() != r)
    return ffi::Error::InvalidArgument("conv_dw: x, dy, dw must have equal rank >= 4");
  int64_t batch = 1;
  for (size_t k = 0; k + 4 < r; ++k) {
    if (yd[k] != xd[k] || wd[k] != xd[k])
      return ffi::Error::InvalidArgument("conv_dw: leading (batch) dims differ");
    batch *= xd[k];
  }
  const int64_t N = xd[r - 4];
  Geom g{xd[r - 3], xd[r - 2], xd[r - 1], yd[r - 1], wd[r - 4], wd[r - 3], yd[r - 3], yd[r - 2]};
  if (yd[r - 4] != N || g.Ho != g.H - g.KH + 1 || g.Wo != g.W - g.KW + 1 || wd[r - 2] != g.Cin ||
      wd[r - 1] != g.Cout || g.Ho < 1 || g.Wo < 1)
    return ffi::Error::InvalidArgument("conv_dw: shapes inconsistent with a VALID stride-1 conv");
  if (batch == 0) return ffi::Error::Success();
  auto job = std::make_shared<Job>();
  job->x = x.typed_data();
  job->dy = dy.typed_data();
  job->dw = dw->typed_data();
  job->g = g;
  job->N = N;
  job->xsz = N * g.H * g.W * g.Cin;
  job->ysz = N * g.Ho * g.Wo * g.Cout;
  job->wsz = g.KH * g.KW * g.Cin * g.Cout;
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  // Split examples only where the problems alone cannot keep the threads busy.
  job->parts = std::max<int64_t>(1, std::min<int64_t>(N, (threads + batch - 1) / batch));
  job->total = batch * job->parts;
  job->partial.assign(batch * (job->parts - 1) * job->wsz, 0.f);
  const int64_t helpers = std::min<int64_t>(threads, job->total) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([job] { job->work(); });
  job->work();
  {
    std::unique_lock<std::mutex> lock(job->mu);
    job->cv.wait(lock, [&] { return job->done == job->total; });
  }
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t p = 1; p < job->parts; ++p) {
      const float* src = job->partial.data() + (b * (job->parts - 1) + p - 1) * job->wsz;
      float* dst = job->dw + b * job->wsz;
      for (int64_t i = 0; i < job->wsz; ++i) dst[i] += src[i];
    }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ConvDwF32, ConvDwImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
