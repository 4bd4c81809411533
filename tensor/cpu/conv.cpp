// CPU 2-D convolution (NCHW): the forward, and the gradients with respect to the input (also
// conv_transpose2d's forward) and to the weight.
//
// Lowering, per group (Cg = C/G input and Cog = Co/G output channels, K = Cg·kh·kw, P = Ho·Wo):
//   forward          out_g[Cog, P]  = w_g[Cog, K] · col[K, P]       col = im2col(x_g)
//   backward input   col[K, P]      = w_gᵀ · gout_g[Cog, P]         gx_g = col2im(col)
//   backward weight  gw_g[Cog, K]  += gout_g · colᵀ                 col = im2col(x_g)
// with col[(c, i, j), (oh, ow)] = x[c, oh·sh − ph + i·dh, ow·sw − pw + j·dw] (0 outside x).
// The work is cut into independent items (chunks of samples × groups × blocks of output rows or
// input channels; see Split), run on the backend's threads (loops.h) with OpenBLAS held to one
// thread, so each item's products run on its own thread: calling the pthreads OpenBLAS from
// several threads would oversubscribe the cores, and alternating between the two pools leaves each
// spinning while the other works. A chunk puts several samples' columns side by side in one
// product, so the small low-resolution layers still hand BLAS wide products; 1×1 stride-1 unpadded
// convolutions skip im2col (col is x itself) for one-sample chunks. Channel-wise convolutions (one
// input channel per group: depthwise, EDM's resampling filters) run direct loops instead, as a
// product with K = kh·kw would be all overhead. Every output element is computed by one item in a
// fixed order, so results do not depend on the thread count. f16/bf16 compute in f32;
// non-contiguous operands are copied to contiguous ones first.
// Where oneDNN is built in, f32 convolutions with a spatial kernel run on it instead
// (conv_onednn.h: the selection rules, layouts and numerics); this file stays the reference path,
// and the one for f64, grouped and channel-wise convolutions.
#include <algorithm>
#include <climits>
#include <cstring>
#include <vector>

#include "tensor/cpu/blas.h"
#include "tensor/cpu/conv_onednn.h"
#include "tensor/cpu/cpu_backend.h"
#include "tensor/cpu/loops.h"

namespace cm::cpu {
namespace {

struct ConvGeom {
  int64_t N, C, H, W;  // input [N, C, H, W]
  int64_t Co, kh, kw;  // weight [Co, C/G, kh, kw]
  int64_t Ho, Wo;      // output [N, Co, Ho, Wo]
  int64_t G, Cg, Cog;  // groups; input and output channels per group
  Conv2dParams p;

  int64_t K() const { return Cg * kh * kw; }  // rows of col
  int64_t P() const { return Ho * Wo; }       // columns of col per sample
  int64_t HW() const { return H * W; }
  bool pointwise() const {
    return kh == 1 && kw == 1 && p.stride_h == 1 && p.stride_w == 1 && p.pad_h == 0 && p.pad_w == 0;
  }
};

int64_t floor_div(int64_t a, int64_t b) {  // b > 0
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}

ConvGeom make_geom(const Shape& x, const Shape& w, const Shape& out, const Conv2dParams& p,
                   const char* op) {
  CM_CHECK(x.size() == 4 && w.size() == 4 && out.size() == 4, op,
           ": expected 4-D x, w and out, got ", shape_str(x), ", ", shape_str(w), ", ",
           shape_str(out));
  ConvGeom g{x[0], x[1], x[2], x[3], w[0], w[2], w[3], out[2], out[3], p.groups, w[1], 0, p};
  CM_CHECK(p.groups >= 1 && g.C == g.Cg * p.groups && g.Co % p.groups == 0 && out[0] == g.N &&
               out[1] == g.Co,
           op, ": inconsistent shapes x ", shape_str(x), ", w ", shape_str(w), ", out ",
           shape_str(out), " for groups=", p.groups);
  g.Cog = g.Co / p.groups;
  CM_CHECK(p.stride_h >= 1 && p.stride_w >= 1 && p.dil_h >= 1 && p.dil_w >= 1 && p.pad_h >= 0 &&
               p.pad_w >= 0 &&
               g.Ho == floor_div(g.H + 2 * p.pad_h - p.dil_h * (g.kh - 1) - 1, p.stride_h) + 1 &&
               g.Wo == floor_div(g.W + 2 * p.pad_w - p.dil_w * (g.kw - 1) - 1, p.stride_w) + 1,
           op, ": out ", shape_str(out), " is not the output of x ", shape_str(x), " and w ",
           shape_str(w), " with stride (", p.stride_h, ", ", p.stride_w, "), padding (", p.pad_h,
           ", ", p.pad_w, "), dilation (", p.dil_h, ", ", p.dil_w, ")");
  CM_CHECK(g.Cog * g.K() <= INT_MAX && g.K() * g.P() <= INT_MAX && g.Cog * g.P() <= INT_MAX, op,
           ": sizes exceed BLAS's 32-bit limits (x ", shape_str(x), ", w ", shape_str(w), ")");
  return g;
}

// The output positions o in [lo, hi) ⊆ [0, n_out) whose input position o·s + off lies in [0, n_in).
struct Range {
  int64_t lo, hi;
};
Range valid_range(int64_t n_out, int64_t n_in, int64_t s, int64_t off) {
  const int64_t lo = std::clamp<int64_t>(-floor_div(off, s), 0, n_out);  // ceil(−off / s)
  const int64_t hi = std::clamp<int64_t>(floor_div(n_in - 1 - off, s) + 1, lo, n_out);
  return {lo, hi};
}

template <class T>
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* a, int64_t lda, const T* b,
          int64_t ldb, T beta, T* c, int64_t ldc) {
  if constexpr (std::is_same_v<T, float>)
    blas::sgemm(ta, tb, M, N, K, 1.0f, a, lda, b, ldb, beta, c, ldc);
  else
    blas::dgemm(ta, tb, M, N, K, 1.0, a, lda, b, ldb, beta, c, ldc);
}

// ---- im2col / col2im --------------------------------------------------------------------------

// The output positions whose input position lies inside x, per tap: rows oh with
// oh·sh − ph + i·dh in [0, H) for kernel row i, columns ow with ow·sw − pw + j·dw in [0, W) for
// kernel column j (and those offsets, off = i·dh − ph or j·dw − pw).
struct TapRanges {
  std::vector<Range> rows, cols;
  std::vector<int64_t> offh, offw;
  explicit TapRanges(const ConvGeom& g) {
    for (int64_t i = 0; i < g.kh; ++i) {
      offh.push_back(i * g.p.dil_h - g.p.pad_h);
      rows.push_back(valid_range(g.Ho, g.H, g.p.stride_h, offh.back()));
    }
    for (int64_t j = 0; j < g.kw; ++j) {
      offw.push_back(j * g.p.dil_w - g.p.pad_w);
      cols.push_back(valid_range(g.Wo, g.W, g.p.stride_w, offw.back()));
    }
  }
};

// Row (c, i, j) of col for one sample and group, output rows [oh0, oh1):
// crow[(oh − oh0)·Wo + ow] = x_g[c, oh·sh + offh, ow·sw + offw] (0 outside x), xc = x_g[c].
template <class T>
void im2col_row(const ConvGeom& g, const TapRanges& tr, const T* xc, int64_t i, int64_t j,
                int64_t oh0, int64_t oh1, T* crow) {
  const int64_t sh = g.p.stride_h, sw = g.p.stride_w, Wo = g.Wo;
  const Range rh = tr.rows[size_t(i)], rw = tr.cols[size_t(j)];
  const int64_t offh = tr.offh[size_t(i)], offw = tr.offw[size_t(j)];
  for (int64_t oh = oh0; oh < oh1; ++oh) {
    T* o = crow + (oh - oh0) * Wo;
    if (oh < rh.lo || oh >= rh.hi) {
      std::fill(o, o + Wo, T(0));
      continue;
    }
    const T* xr = xc + (oh * sh + offh) * g.W;
    for (int64_t ow = 0; ow < rw.lo; ++ow) o[ow] = T(0);
    if (sw == 1)
      for (int64_t ow = rw.lo; ow < rw.hi; ++ow) o[ow] = xr[ow + offw];
    else
      for (int64_t ow = rw.lo; ow < rw.hi; ++ow) o[ow] = xr[ow * sw + offw];
    for (int64_t ow = rw.hi; ow < Wo; ++ow) o[ow] = T(0);
  }
}

// col rows [r0, r1) for samples n0 .. n0 + nb of group grp, output rows [oh0, oh1): sample b's
// columns start at b·cols (cols = (oh1 − oh0)·Wo) in rows of stride ld = nb·cols.
template <class T>
void im2col(const ConvGeom& g, const TapRanges& tr, const T* x, int64_t n0, int64_t nb, int64_t grp,
            int64_t r0, int64_t r1, int64_t oh0, int64_t oh1, T* col) {
  const int64_t cols = (oh1 - oh0) * g.Wo, ld = nb * cols, taps = g.kh * g.kw;
  for (int64_t b = 0; b < nb; ++b) {
    const T* xg = x + ((n0 + b) * g.C + grp * g.Cg) * g.HW();
    // r = (c, i, j), walked with counters
    int64_t c = r0 / taps, i = (r0 % taps) / g.kw, j = r0 % g.kw;
    for (int64_t r = r0; r < r1; ++r) {
      im2col_row(g, tr, xg + c * g.HW(), i, j, oh0, oh1, col + (r - r0) * ld + b * cols);
      if (++j == g.kw) {
        j = 0;
        if (++i == g.kh) {
          i = 0;
          ++c;
        }
      }
    }
  }
}

// gx_c[H, W] += the rows (c, ·, ·) of col (row stride ld), for one channel of one sample.
template <class T>
void col2im_channel(const ConvGeom& g, const TapRanges& tr, const T* col, int64_t ld, T* gxc) {
  const int64_t sh = g.p.stride_h, sw = g.p.stride_w;
  for (int64_t i = 0; i < g.kh; ++i)
    for (int64_t j = 0; j < g.kw; ++j) {
      const T* crow = col + (i * g.kw + j) * ld;
      const Range rh = tr.rows[size_t(i)], rw = tr.cols[size_t(j)];
      const int64_t offh = tr.offh[size_t(i)], offw = tr.offw[size_t(j)];
      for (int64_t oh = rh.lo; oh < rh.hi; ++oh) {
        T* gr = gxc + (oh * sh + offh) * g.W;
        const T* cr = crow + oh * g.Wo;
        if (sw == 1)
          for (int64_t ow = rw.lo; ow < rw.hi; ++ow) gr[ow + offw] += cr[ow];
        else
          for (int64_t ow = rw.lo; ow < rw.hi; ++ow) gr[ow * sw + offw] += cr[ow];
      }
    }
}

// buf[Cog, nb·P] <-> t[n0 + b, grp·Cog + co, P] (a tensor shaped like the output).
template <class T>
void gather_chunk(const ConvGeom& g, const T* t, int64_t n0, int64_t nb, int64_t grp, T* buf) {
  const int64_t P = g.P();
  for (int64_t co = 0; co < g.Cog; ++co)
    for (int64_t b = 0; b < nb; ++b)
      std::memcpy(buf + co * nb * P + b * P, t + ((n0 + b) * g.Co + grp * g.Cog + co) * P,
                  size_t(P) * sizeof(T));
}
template <class T>
void scatter_chunk(const ConvGeom& g, const T* buf, int64_t n0, int64_t nb, int64_t grp, T* t) {
  const int64_t P = g.P();
  for (int64_t co = 0; co < g.Cog; ++co)
    for (int64_t b = 0; b < nb; ++b)
      std::memcpy(t + ((n0 + b) * g.Co + grp * g.Cog + co) * P, buf + co * nb * P + b * P,
                  size_t(P) * sizeof(T));
}

// ---- work items ---------------------------------------------------------------------------------

// How a pass is cut into independent items: samples in chunks of nb (their columns side by side in
// one product), times groups, times `blocks` pieces of each (output rows for the forward, input
// channels for the gradients). Decided from the shapes alone, so results never depend on the
// thread count.
struct Split {
  int64_t nb = 1, chunks = 1, blocks = 1;
  int64_t items(const ConvGeom& g) const { return chunks * g.G * blocks; }
};

// Items to aim for (enough to balance a few threads), columns a product should have, and the most
// elements one thread's column buffer may hold (one sample's is always allowed).
constexpr int64_t kMinItems = 8;
constexpr int64_t kMinColumns = 256;
constexpr int64_t kMaxColumnElements = int64_t(1) << 22;

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// Chunks of nb ≥ 1 samples: nb·P ≥ min_cols where the buffer (rows × nb·P) allows, and (when
// keep_items) no fewer than kMinItems chunk × group items where the batch allows.
Split chunk_split(const ConvGeom& g, int64_t min_cols, int64_t rows, bool keep_items) {
  const int64_t P = std::max<int64_t>(g.P(), 1), N = std::max<int64_t>(g.N, 1);
  int64_t nb = ceil_div(min_cols, P);
  nb = std::min(nb, kMaxColumnElements / std::max<int64_t>(rows * P, 1));
  if (keep_items) nb = std::min(nb, N * g.G / kMinItems);
  Split s;
  s.nb = std::clamp<int64_t>(nb, 1, N);
  s.chunks = ceil_div(N, s.nb);
  return s;
}

// Pieces per (chunk, group) so that there are about kMinItems items, at most `max_blocks`.
int64_t blocks_for(const Split& s, const ConvGeom& g, int64_t max_blocks) {
  const int64_t have = s.chunks * g.G;
  return have >= kMinItems ? 1 : std::clamp<int64_t>(ceil_div(kMinItems, have), 1, max_blocks);
}

// [begin, end) of piece k of n over `size`.
Range piece(int64_t k, int64_t n, int64_t size) {
  return {k * size / n, (k + 1) * size / n};
}

// Runs f(item, thread) for every item on the backend's threads (thread < max_threads(); see
// loops.h); serially when the work is small.
template <class F>
void run_conv_items(int64_t n, int64_t cost_per_item, F&& f) {
  run_items(n, n * cost_per_item >= 4 * kGrain,
            [&](int64_t i, int thread) { f(i, int64_t(thread)); });
}

// Per-thread scratch of `per_thread` elements each.
template <class T>
struct Scratch {
  Tensor buf;
  int64_t per_thread;
  explicit Scratch(int64_t n) : per_thread(n) {
    buf = empty({std::max<int64_t>(n, 1) * max_threads()}, {.dtype = dtype_v<T>});
  }
  T* at(int64_t thread) const { return buf.data<T>() + thread * per_thread; }
};

// ---- channel-wise (one input channel per group): direct loops ----------------------------------
// Each input plane is first copied into a zero-padded buffer whose rows are split into sw phases
// (phase q holds padded columns q, q + sw, q + 2·sw, ...). Tap (i, j) of output row oh then reads
// padded row oh·sh + i·dh, phase (j·dw) mod sw, from column (j·dw) div sw + ow on: a contiguous,
// branch-free run of Wo elements, whatever the stride, padding and dilation.

struct PhasePlane {
  int64_t rows, phases, width;  // buffer [phases, rows, width]
  int64_t size() const { return rows * phases * width; }
};
PhasePlane phase_plane(const ConvGeom& g) {
  const int64_t Wp = g.W + 2 * g.p.pad_w;
  return {g.H + 2 * g.p.pad_h, g.p.stride_w, ceil_div(Wp, g.p.stride_w)};
}

// For stride 2: where input row r's even columns c = 2m and odd columns c = 2m + 1 sit in the
// buffer (at even[m] and odd[m]). Padded column c + pw is in phase (c + pw) mod 2 at (c + pw)
// div 2.
template <class Ptr>
void phase2_rows(const ConvGeom& g, const PhasePlane& pp, Ptr buf, int64_t r, Ptr* even, Ptr* odd) {
  const int64_t pw = g.p.pad_w, pe = pw % 2;  // pe: the phase of the even columns
  *even = buf + (pe * pp.rows + r + g.p.pad_h) * pp.width + (pw - pe) / 2;
  *odd = buf + ((1 - pe) * pp.rows + r + g.p.pad_h) * pp.width + (pw + pe) / 2;
}

// buf = the phase-split zero-padded copy of plane x[H, W].
template <class T>
void to_phases(const ConvGeom& g, const PhasePlane& pp, const T* x, T* buf) {
  std::fill(buf, buf + pp.size(), T(0));
  const int64_t sw = pp.phases, pw = g.p.pad_w;
  for (int64_t r = 0; r < g.H; ++r) {
    const T* xr = x + r * g.W;
    if (sw == 2) {  // the common case, as one interleaved (vectorisable) loop
      T *even, *odd;
      phase2_rows(g, pp, buf, r, &even, &odd);
      for (int64_t m = 0; m < g.W / 2; ++m) {
        even[m] = xr[2 * m];
        odd[m] = xr[2 * m + 1];
      }
      if (g.W % 2) even[g.W / 2] = xr[g.W - 1];
      continue;
    }
    for (int64_t q = 0; q < sw; ++q) {
      // padded column c + pw = q + sw·k  <=>  c = q − pw + sw·k
      T* dst = buf + (q * pp.rows + r + g.p.pad_h) * pp.width;
      const int64_t k0 = ceil_div(std::max<int64_t>(pw - q, 0), sw);
      for (int64_t k = k0, c = q - pw + sw * k0; c < g.W; ++k, c += sw) dst[k] = xr[c];
    }
  }
}

// gx plane [H, W] = the unpadded columns of a phase-split buffer (the inverse of to_phases).
template <class T>
void from_phases(const ConvGeom& g, const PhasePlane& pp, const T* buf, T* gx) {
  const int64_t sw = pp.phases, pw = g.p.pad_w;
  for (int64_t r = 0; r < g.H; ++r) {
    T* gr = gx + r * g.W;
    if (sw == 2) {
      const T *even, *odd;
      phase2_rows(g, pp, buf, r, &even, &odd);
      for (int64_t m = 0; m < g.W / 2; ++m) {
        gr[2 * m] = even[m];
        gr[2 * m + 1] = odd[m];
      }
      if (g.W % 2) gr[g.W - 1] = even[g.W / 2];
      continue;
    }
    for (int64_t q = 0; q < sw; ++q) {
      const T* src = buf + (q * pp.rows + r + g.p.pad_h) * pp.width;
      const int64_t k0 = ceil_div(std::max<int64_t>(pw - q, 0), sw);
      for (int64_t k = k0, c = q - pw + sw * k0; c < g.W; ++k, c += sw) gr[c] = src[k];
    }
  }
}

// The run of Wo buffer elements that tap (i, j) of output row oh reads.
template <class T>
T* tap_row(const ConvGeom& g, const PhasePlane& pp, T* buf, int64_t oh, int64_t i, int64_t j) {
  const int64_t col = j * g.p.dil_w;
  return buf + ((col % pp.phases) * pp.rows + oh * g.p.stride_h + i * g.p.dil_h) * pp.width +
         col / pp.phases;
}

// out[n, co] = Σ_ij w[co, 0, i, j] · x[n, co / Cog] at the taps; items (n, c), each filling the Cog
// output planes of input channel c.
template <class T>
void forward_channelwise(const ConvGeom& g, const T* x, const T* w, T* out) {
  const int64_t P = g.P(), taps = g.kh * g.kw;
  const PhasePlane pp = phase_plane(g);
  Scratch<T> planes(pp.size());
  run_conv_items(g.N * g.C, g.Cog * P * taps, [&](int64_t t, int64_t thread) {
    T* buf = planes.at(thread);
    to_phases(g, pp, x + t * g.HW(), buf);
    const int64_t n = t / g.C, c = t % g.C;
    for (int64_t co = c * g.Cog; co < (c + 1) * g.Cog; ++co) {
      const T* wc = w + co * taps;
      T* oc = out + (n * g.Co + co) * P;
      for (int64_t oh = 0; oh < g.Ho; ++oh) {
        T* orow = oc + oh * g.Wo;
        std::fill(orow, orow + g.Wo, T(0));
        for (int64_t i = 0; i < g.kh; ++i)
          for (int64_t j = 0; j < g.kw; ++j) {
            const T wv = wc[i * g.kw + j];
            const T* xr = tap_row(g, pp, buf, oh, i, j);
            for (int64_t ow = 0; ow < g.Wo; ++ow) orow[ow] += wv * xr[ow];
          }
      }
    }
  });
}

// gx[n, c] = the taps of its Cog output-gradient planes scattered back; items (n, c).
template <class T>
void backward_input_channelwise(const ConvGeom& g, const T* gout, const T* w, T* gx) {
  const int64_t P = g.P(), taps = g.kh * g.kw;
  const PhasePlane pp = phase_plane(g);
  Scratch<T> planes(pp.size());
  run_conv_items(g.N * g.C, g.Cog * P * taps, [&](int64_t t, int64_t thread) {
    T* buf = planes.at(thread);
    std::fill(buf, buf + pp.size(), T(0));
    const int64_t n = t / g.C, c = t % g.C;
    for (int64_t co = c * g.Cog; co < (c + 1) * g.Cog; ++co) {
      const T* wc = w + co * taps;
      const T* goc = gout + (n * g.Co + co) * P;
      for (int64_t oh = 0; oh < g.Ho; ++oh) {
        const T* grow = goc + oh * g.Wo;
        for (int64_t i = 0; i < g.kh; ++i)
          for (int64_t j = 0; j < g.kw; ++j) {
            const T wv = wc[i * g.kw + j];
            T* xr = tap_row(g, pp, buf, oh, i, j);
            for (int64_t ow = 0; ow < g.Wo; ++ow) xr[ow] += wv * grow[ow];
          }
      }
    }
    from_phases(g, pp, buf, gx + t * g.HW());
  });
}

// gw[co, 0, i, j] = Σ_n Σ_(oh, ow) gout[n, co, oh, ow] · x[n, co / Cog] at tap (i, j); items are
// input channels c (their Cog weights). Each tap sums a row of Wo partial sums over (n, oh), a
// vectorisable loop, and adds the row up at the end.
template <class T>
void backward_weight_channelwise(const ConvGeom& g, const T* x, const T* gout, T* gw) {
  const int64_t P = g.P(), taps = g.kh * g.kw;
  const PhasePlane pp = phase_plane(g);
  Scratch<T> planes(pp.size()), sums(g.Cog * taps * g.Wo);
  run_conv_items(g.C, g.N * g.Cog * P * taps, [&](int64_t c, int64_t thread) {
    T* buf = planes.at(thread);
    T* acc = sums.at(thread);
    std::fill(acc, acc + g.Cog * taps * g.Wo, T(0));
    for (int64_t n = 0; n < g.N; ++n) {
      to_phases(g, pp, x + (n * g.C + c) * g.HW(), buf);
      for (int64_t k = 0; k < g.Cog; ++k) {
        const T* goc = gout + (n * g.Co + c * g.Cog + k) * P;
        for (int64_t oh = 0; oh < g.Ho; ++oh) {
          const T* grow = goc + oh * g.Wo;
          for (int64_t i = 0; i < g.kh; ++i)
            for (int64_t j = 0; j < g.kw; ++j) {
              const T* xr = tap_row(g, pp, buf, oh, i, j);
              T* a = acc + (k * taps + i * g.kw + j) * g.Wo;
              for (int64_t ow = 0; ow < g.Wo; ++ow) a[ow] += grow[ow] * xr[ow];
            }
        }
      }
    }
    for (int64_t k = 0; k < g.Cog * taps; ++k) {
      T s = T(0);
      for (int64_t ow = 0; ow < g.Wo; ++ow) s += acc[k * g.Wo + ow];
      gw[c * g.Cog * taps + k] = s;
    }
  });
}

// ---- the three passes (contiguous operands, compute dtype T) -----------------------------------
// Item buffers: col (im2col / product columns) and, for chunks of several samples, the chunk of the
// output (forward) or output gradient (backward) laid out as one [Cog, nb·P] matrix.

// Items: (chunk, group, block of output rows). A one-sample item writes its rows of out_g
// directly; a chunk's product goes through a buffer and is scattered to its samples.
template <class T>
void forward(const ConvGeom& g, const T* x, const T* w, T* out) {
  const int64_t K = g.K(), P = g.P();
  if (K == 0) {  // no input channels: the empty sum
    std::fill(out, out + g.N * g.Co * P, T(0));
    return;
  }
  if (g.Cg == 1) return forward_channelwise(g, x, w, out);
  Split s = chunk_split(g, kMinColumns, K, true);
  if (s.nb == 1) s.blocks = blocks_for(s, g, g.Ho);
  const bool x_is_col = g.pointwise() && s.nb == 1;  // x_g[Cg, H·W] is col itself
  const int64_t width = s.nb * P;
  Scratch<T> cols(x_is_col ? 0 : K * width), outs(s.nb > 1 ? g.Cog * width : 0);
  const TapRanges tr(g);
  blas::OneThread blas;
  run_conv_items(s.items(g), g.Cog * K * width / s.blocks, [&](int64_t t, int64_t thread) {
    const int64_t chunk = t / (g.G * s.blocks), grp = (t / s.blocks) % g.G;
    const Range rows = piece(t % s.blocks, s.blocks, g.Ho);
    const int64_t n0 = chunk * s.nb, nb = std::min(s.nb, g.N - n0);
    const int64_t ncols = (rows.hi - rows.lo) * g.Wo, ld = nb * ncols;
    const T* wg = w + grp * g.Cog * K;
    const T* col = x + (n0 * g.C + grp * g.Cg) * g.HW() + rows.lo * g.Wo;
    int64_t ldcol = P;
    if (!x_is_col) {
      im2col(g, tr, x, n0, nb, grp, 0, K, rows.lo, rows.hi, cols.at(thread));
      col = cols.at(thread);
      ldcol = ld;
    }
    T* og = out + (n0 * g.Co + grp * g.Cog) * P;
    if (nb == 1) {
      gemm<T>(false, false, g.Cog, ncols, K, wg, K, col, ldcol, T(0), og + rows.lo * g.Wo, P);
    } else {
      gemm<T>(false, false, g.Cog, ld, K, wg, K, col, ldcol, T(0), outs.at(thread), ld);
      scatter_chunk(g, outs.at(thread), n0, nb, grp, out);
    }
  });
}

// Items: (chunk, group, block of input channels [c0, c1)). The product gives the col rows of the
// block, which col2im adds into the block's planes of gx (each plane belongs to one item).
template <class T>
void backward_input(const ConvGeom& g, const T* gout, const T* w, T* gx) {
  const int64_t K = g.K(), P = g.P(), taps = g.kh * g.kw;
  if (K == 0 || g.Cog == 0 || P == 0) {
    std::fill(gx, gx + g.N * g.C * g.HW(), T(0));
    return;
  }
  if (g.Cg == 1) return backward_input_channelwise(g, gout, w, gx);
  Split s = chunk_split(g, kMinColumns, K, true);
  s.blocks = blocks_for(s, g, g.Cg);
  const bool direct = g.pointwise() && s.nb == 1;  // the product writes gx_g itself
  const int64_t width = s.nb * P, block_rows = ceil_div(g.Cg, s.blocks) * taps;
  Scratch<T> cols(direct ? 0 : block_rows * width), gouts(s.nb > 1 ? g.Cog * width : 0);
  const TapRanges tr(g);
  blas::OneThread blas;
  run_conv_items(s.items(g), g.Cog * K * width / s.blocks, [&](int64_t t, int64_t thread) {
    const int64_t chunk = t / (g.G * s.blocks), grp = (t / s.blocks) % g.G;
    const Range ch = piece(t % s.blocks, s.blocks, g.Cg);
    const int64_t n0 = chunk * s.nb, nb = std::min(s.nb, g.N - n0), ld = nb * P;
    const T* wg = w + grp * g.Cog * K;
    const T* go = gout + (n0 * g.Co + grp * g.Cog) * P;
    if (nb > 1) {
      gather_chunk(g, gout, n0, nb, grp, gouts.at(thread));
      go = gouts.at(thread);
    }
    T* gxg = gx + (n0 * g.C + grp * g.Cg) * g.HW();
    if (direct) {  // gx_g[c0:c1, P] = w_g[:, c0:c1]ᵀ · gout_g
      gemm<T>(true, false, ch.hi - ch.lo, P, g.Cog, wg + ch.lo, K, go, P, T(0),
              gxg + ch.lo * g.HW(), P);
      return;
    }
    T* col = cols.at(thread);
    const int64_t rows = (ch.hi - ch.lo) * taps;
    gemm<T>(true, false, rows, ld, g.Cog, wg + ch.lo * taps, K, go, ld, T(0), col, ld);
    for (int64_t b = 0; b < nb; ++b)
      for (int64_t c = ch.lo; c < ch.hi; ++c) {
        T* plane = gxg + (b * g.C + c) * g.HW();
        std::fill(plane, plane + g.HW(), T(0));
        col2im_channel(g, tr, col + (c - ch.lo) * taps * ld + b * P, ld, plane);
      }
  });
}

// Items: (part, group, block of input channels [c0, c1)). The chunks of samples are shared out
// among at most kMinItems parts; a part sums its chunks in order into its own partial gw_g (gw
// itself when there is one part), and the partials are added in part order at the end. Channel
// blocks split the work further only for batches too small to fill the items.
template <class T>
void backward_weight(const ConvGeom& g, const T* x, const T* gout, T* gw) {
  const int64_t K = g.K(), P = g.P(), taps = g.kh * g.kw, nw = g.Co * K;
  if (g.N == 0 || P == 0) {
    std::fill(gw, gw + nw, T(0));
    return;
  }
  if (K == 0 || g.Cog == 0) return;
  if (g.Cg == 1) return backward_weight_channelwise(g, x, gout, gw);
  Split s = chunk_split(g, 4 * kMinColumns, K, true);
  const int64_t parts = std::min(s.chunks, kMinItems);
  s.blocks = std::clamp<int64_t>(ceil_div(kMinItems, parts * g.G), 1, g.Cg);
  const bool x_is_col = g.pointwise() && s.nb == 1;
  const int64_t width = s.nb * P, block_rows = ceil_div(g.Cg, s.blocks) * taps;
  Scratch<T> cols(x_is_col ? 0 : block_rows * width), gouts(s.nb > 1 ? g.Cog * width : 0);
  Tensor partial_buf = parts > 1 ? empty({parts * nw}, {.dtype = dtype_v<T>}) : Tensor();
  T* partial = parts > 1 ? partial_buf.data<T>() : gw;
  const int64_t items = parts * g.G * s.blocks;
  const TapRanges tr(g);
  blas::OneThread blas;
  run_conv_items(items, g.N * P * g.Cog * K / items, [&](int64_t t, int64_t thread) {
    const int64_t part = t / (g.G * s.blocks), grp = (t / s.blocks) % g.G;
    const Range ch = piece(t % s.blocks, s.blocks, g.Cg);
    const Range chunks = piece(part, parts, s.chunks);
    const int64_t rows = (ch.hi - ch.lo) * taps;
    T* gwp = partial + part * nw + grp * g.Cog * K + ch.lo * taps;
    for (int64_t chunk = chunks.lo; chunk < chunks.hi; ++chunk) {
      const int64_t n0 = chunk * s.nb, nb = std::min(s.nb, g.N - n0), ld = nb * P;
      const T* col = x + (n0 * g.C + grp * g.Cg + ch.lo) * g.HW();
      if (!x_is_col) {
        im2col(g, tr, x, n0, nb, grp, ch.lo * taps, ch.hi * taps, 0, g.Ho, cols.at(thread));
        col = cols.at(thread);
      }
      const T* go = gout + (n0 * g.Co + grp * g.Cog) * P;
      if (nb > 1) {
        gather_chunk(g, gout, n0, nb, grp, gouts.at(thread));
        go = gouts.at(thread);
      }
      // gw_g[:, rows of the block] (+)= gout_g[Cog, ld] · col[rows, ld]ᵀ
      gemm<T>(false, true, g.Cog, rows, ld, go, ld, col, ld, chunk == chunks.lo ? T(0) : T(1), gwp,
              K);
    }
  });
  if (parts > 1)
    parallel_for(nw, parts, [&](int64_t i) {
      T sum = partial[i];
      for (int64_t q = 1; q < parts; ++q) sum += partial[q * nw + i];
      gw[i] = sum;
    });
}

// ---- dispatch -----------------------------------------------------------------------------------

using Pass = onednn::ConvPass;

// The geometry in conv_onednn.h's terms.
onednn::ConvShape onednn_shape(const ConvGeom& g) {
  return {g.N, g.C, g.H, g.W, g.Co, g.kh, g.kw, g.Ho, g.Wo, g.p};
}

// t when it is contiguous and of dtype dt, else a contiguous copy converted to dt.
Tensor contiguous_as(const Tensor& t, DType dt) {
  if (t.dtype() == dt && t.is_contiguous()) return t;
  Tensor c = empty(t.shape(), {.dtype = dt});
  cpu_backend().copy(t, c);
  return c;
}

template <class T>
void run_pass(Pass pass, const ConvGeom& g, const T* a, const T* b, T* out) {
  switch (pass) {
    case Pass::Forward:
      return forward(g, a, b, out);
    case Pass::BackwardInput:
      return backward_input(g, a, b, out);
    case Pass::BackwardWeight:
      return backward_weight(g, a, b, out);
  }
}

// out = pass(a, b): the operands converted to the compute dtype (f64, or f32 for the others) and
// made contiguous where needed; the result rounded into `out` once.
void run(Pass pass, const char* op, const Tensor& a, const Tensor& b, const ConvGeom& g,
         const Tensor& out) {
  const DType t = out.dtype();
  CM_CHECK(is_floating(t) && a.dtype() == t && b.dtype() == t, op,
           ": operands of one floating dtype required, got ", dtype_name(a.dtype()), ", ",
           dtype_name(b.dtype()), " -> ", dtype_name(t));
  if (out.numel() == 0) return;
  const DType ct = t == DType::f64 ? DType::f64 : DType::f32;
  Tensor af = a, bf = b;
  if (ct == DType::f32) {  // oneDNN where it applies (conv_onednn.h), in any dense layout
    if (a.dtype() != ct) af = contiguous_as(a, ct);
    if (b.dtype() != ct) bf = contiguous_as(b, ct);
    const Tensor of = t == ct ? out : empty(out.shape(), {.dtype = ct});
    const onednn::ConvShape s = onednn_shape(g);
    if (onednn::uses_onednn(pass, s, af, bf, of)) {
      onednn::run(pass, s, af, bf, of);
      if (!of.same(out)) cpu_backend().copy(of, out);
      return;
    }
  }
  const Tensor ac = contiguous_as(af, ct), bc = contiguous_as(bf, ct);
  const Tensor oc = t == ct && out.is_contiguous() ? out : empty(out.shape(), {.dtype = ct});
  if (ct == DType::f64)
    run_pass<double>(pass, g, ac.data<double>(), bc.data<double>(), oc.data<double>());
  else
    run_pass<float>(pass, g, ac.data<float>(), bc.data<float>(), oc.data<float>());
  if (!oc.same(out)) cpu_backend().copy(oc, out);
}

}  // namespace

MemoryFormat CpuBackend::preferred_conv_format() const {
  return onednn::enabled() ? MemoryFormat::ChannelsLast : MemoryFormat::Contiguous;
}

void CpuBackend::conv2d(const Tensor& x, const Tensor& w, const Conv2dParams& p,
                        const Tensor& out) {
  const ConvGeom g = make_geom(x.shape(), w.shape(), out.shape(), p, "conv2d");
  run(Pass::Forward, "conv2d", x, w, g, out);
}

void CpuBackend::conv2d_backward_input(const Tensor& grad_out, const Tensor& w,
                                       const Conv2dParams& p, const Tensor& grad_x) {
  const ConvGeom g =
      make_geom(grad_x.shape(), w.shape(), grad_out.shape(), p, "conv2d_backward_input");
  run(Pass::BackwardInput, "conv2d_backward_input", grad_out, w, g, grad_x);
}

void CpuBackend::conv2d_backward_weight(const Tensor& x, const Tensor& grad_out,
                                        const Conv2dParams& p, const Tensor& grad_w) {
  const ConvGeom g =
      make_geom(x.shape(), grad_w.shape(), grad_out.shape(), p, "conv2d_backward_weight");
  run(Pass::BackwardWeight, "conv2d_backward_weight", x, grad_out, g, grad_w);
}

// The fused forms: on oneDNN for f32 operands where it runs the pass (the bias in the kernel's
// epilogue, its gradient from the weight-gradient pass), else the composite (Backend's defaults).
namespace {
bool fusable(const Tensor& v) {
  return v.dtype() == DType::f32 && v.is_contiguous() && v.dim() == 1;
}
}  // namespace

void CpuBackend::conv2d_bias(const Tensor& x, const Tensor& w, const Tensor& b,
                             const Conv2dParams& p, const Tensor& out) {
  const ConvGeom g = make_geom(x.shape(), w.shape(), out.shape(), p, "conv2d");
  const onednn::ConvShape s = onednn_shape(g);
  if (out.numel() > 0 && fusable(b) && b.size(0) == g.Co &&
      onednn::uses_onednn(Pass::Forward, s, x, w, out, true))
    return onednn::run(Pass::Forward, s, x, w, out, b);
  Backend::conv2d_bias(x, w, b, p, out);
}

void CpuBackend::conv2d_backward_weight_bias(const Tensor& x, const Tensor& grad_out,
                                             const Conv2dParams& p, const Tensor& grad_w,
                                             const Tensor& grad_b) {
  const ConvGeom g =
      make_geom(x.shape(), grad_w.shape(), grad_out.shape(), p, "conv2d_backward_weight");
  const onednn::ConvShape s = onednn_shape(g);
  if (grad_out.numel() > 0 && fusable(grad_b) && grad_b.size(0) == g.Co &&
      onednn::uses_onednn(Pass::BackwardWeight, s, x, grad_out, grad_w, true))
    return onednn::run(Pass::BackwardWeight, s, x, grad_out, grad_w, {}, grad_b);
  Backend::conv2d_backward_weight_bias(x, grad_out, p, grad_w, grad_b);
}

}  // namespace cm::cpu
