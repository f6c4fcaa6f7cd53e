// Fused relative attention for the CPU (Music Transformer logits, flash-style forward and backward).
//
// Logits of query i and key j: alpha * (q_i . k_j + q_i . e[min(i - j, R - 1)]), causal, optionally
// limited to the last `window` keys; rel holds e in descending distance order (row R-1-d is distance d).
//
// Work is cut into blocks of `block` queries of one (batch, head). A block's keys span n positions
// [ks, ke); its logits S (bq x n) and its relative scores M = alpha * q . e for distances Dmax .. 0
// (bq x W, W = min(n, R)) come from two GEMMs. Row a of the skewed Srel is row a of M read at a
// shifted offset (the skewing of Huang et al. without any copy); distances past R-1 read the score of
// R-1 (a per-row constant). Everything elementwise (skew, mask, softmax, its gradient, the adjoint of
// the skew) is one pass over a block that stays in L2, between GEMMs that go through BLAS.
//
// The forward keeps the log-sum-exp of every row; the backward recomputes each block's
// probabilities from it (no L x L tensor is ever stored). float32 only: with head_dim 32 the GEMMs
// have K = 32 and gain little from bf16 (AMX tiles stay mostly idle), so bf16 callers upcast
// (measured: faster than MKL's bf16 GEMMs here, and every accumulation stays float32).
// Threads: one OpenMP region per call; blocks (forward) or (batch, head) pairs (backward) are handed
// out dynamically, so a thread that the OS deschedules does not hold the others back. Which thread runs
// a unit never changes a result: every unit writes its own outputs (dE too: one part per (batch, head),
// summed over the batch in a fixed order), so a backward is bit-for-bit repeatable, as resuming needs.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

// BLAS entry points exported by PyTorch's MKL build, declared weak: a torch without them still loads
// this library, and `available()` says the kernel cannot run (Python then keeps its eager path).
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
int MKL_Set_Num_Threads_Local(int n) __attribute__((weak));  // the C entry (the lowercase one is Fortran)
}

namespace {

using at::Tensor;

// ---- GEMM on row-major operands: C (m x n) = alpha * op(A) op(B) + beta * C ----

void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
          const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  // Row-major C is column-major C^T = op(B)^T op(A)^T: swap the operands.
  const char tra = tb ? 'T' : 'N', trb = ta ? 'T' : 'N';
  const int M = n, N = m, K = k, LDA = ldb, LDB = lda, LDC = ldc;
  sgemm_(&tra, &trb, &M, &N, &K, &alpha, b, &LDA, a, &LDB, &beta, c, &LDC);
}

// ---- elementwise helpers (plain loops the compiler vectorizes) ----

// exp(x) for x <= 0 (a softmax's shifted logits): Cephes' expf polynomial, relative error ~1e-7.
inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;  // keeps 2^n a normal number; exp(-87) is 1.6e-38, zero for any sum
  const float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  return p * std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);  // 2^n
}

// Max of x[0 .. n-1], n >= 1. A running max is a latency chain, so several independent lanes.
#if defined(__AVX512F__)
inline float row_max(const float* x, int64_t n) {
  const __m512 lowest = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512 m0 = lowest, m1 = lowest;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    m0 = _mm512_max_ps(m0, _mm512_loadu_ps(x + i));
    m1 = _mm512_max_ps(m1, _mm512_loadu_ps(x + i + 16));
  }
  for (; i < n; i += 16) {
    const __mmask16 lanes = n - i >= 16 ? 0xffff : static_cast<__mmask16>((1u << (n - i)) - 1);
    m0 = _mm512_max_ps(m0, _mm512_mask_loadu_ps(lowest, lanes, x + i));
  }
  return _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
}
#else
inline float row_max(const float* x, int64_t n) {
  constexpr int kLanes = 16;
  float acc[kLanes];
  for (int j = 0; j < kLanes; ++j) acc[j] = x[0];
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] = x[i + j] > acc[j] ? x[i + j] : acc[j];
  for (; i < n; ++i) acc[0] = x[i] > acc[0] ? x[i] : acc[0];
  float m = acc[0];
  for (int j = 1; j < kLanes; ++j) m = acc[j] > m ? acc[j] : m;
  return m;
}
#endif

void fill_zero(float* p, int64_t n) {
  if (n > 0) std::memset(p, 0, n * sizeof(float));
}

// Per-thread scratch that lives across calls: fresh multi-MB buffers would page-fault every time.
float* scratch(int which, int64_t n) {
  thread_local std::vector<float> buffers[4];
  auto& b = buffers[which];
  if (static_cast<int64_t>(b.size()) < n) b.resize(n);
  return b.data();
}

// ---- geometry of one block ----

struct Problem {
  int64_t B, H, Lq, Lk, D, R, window, block, nblk;
  float alpha;
  bool rel;
};

struct BlockGeom {
  int64_t a0, bq, i0, ks, n, dmax, w;  // rows a0 .. a0+bq-1 at key positions i0 ..; keys [ks, ks+n)
};

BlockGeom geometry(const Problem& p, int64_t blk) {
  BlockGeom g;
  g.a0 = blk * p.block;
  g.bq = std::min(p.block, p.Lq - g.a0);
  g.i0 = p.Lk - p.Lq + g.a0;
  const int64_t ke = g.i0 + g.bq;
  g.ks = p.window > 0 ? std::max<int64_t>(0, g.i0 - p.window + 1) : 0;
  g.n = ke - g.ks;
  g.dmax = std::min(g.n - 1, p.R - 1);  // M's columns are distances dmax .. 0
  g.w = g.dmax + 1;
  return g;
}

// Columns [clo, chi] of row a are visible; a column c >= split reads M at c - split (distance chi - c),
// a column c < split is farther than R-1 and reads the clipped score M[0].
struct RowGeom {
  int64_t clo, chi, split;
};

RowGeom row_geometry(const Problem& p, const BlockGeom& g, int64_t a) {
  RowGeom r;
  r.chi = g.i0 + a - g.ks;
  r.clo = p.window > 0 ? std::max<int64_t>(0, g.i0 + a - p.window + 1 - g.ks) : 0;
  r.split = r.chi - g.dmax;
  return r;
}

// Adds the skewed relative scores to the visible columns of one row of logits.
inline void add_relative(float* s, const float* m, const RowGeom& r) {
  const int64_t c1 = std::min(r.split, r.chi + 1);
  if (r.clo < c1) {
    const float m0 = m[0];
#pragma omp simd
    for (int64_t c = r.clo; c < c1; ++c) s[c] += m0;
  }
  const float* shifted = m - r.split;
  const int64_t c2 = std::max(r.clo, r.split);
#pragma omp simd
  for (int64_t c = c2; c <= r.chi; ++c) s[c] += shifted[c];
}

struct Strides {
  int64_t b, h, l;  // element strides of dims 0, 1, 2 of a (B, H, L, D) tensor (dim 3 is contiguous)
};

// (a length-1 dim may carry any stride; BLAS wants a leading dimension of at least D)
Strides strides_of(const Tensor& t) { return {t.stride(0), t.stride(1), t.size(2) > 1 ? t.stride(2) : t.size(3)}; }

void check_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const std::optional<Tensor>& rel) {
  TORCH_CHECK(q.device().is_cpu(), "relative attention kernel: CPU tensors only");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "q, k, v must be (B, H, L, D)");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(), "q, k, v dtypes differ");
  TORCH_CHECK(q.scalar_type() == at::kFloat, "float32 only (bfloat16 callers upcast)");
  TORCH_CHECK(k.sizes() == v.sizes() && q.size(0) == k.size(0) && q.size(1) == k.size(1) && q.size(3) == k.size(3),
              "q, k, v shapes disagree");
  TORCH_CHECK(q.size(2) <= k.size(2), "more queries than keys");
  for (const Tensor* t : {&q, &k, &v})
    TORCH_CHECK((t->stride(3) == 1 || t->size(3) == 1) && (t->stride(2) >= t->size(3) || t->size(2) == 1),
                "q, k, v rows must be contiguous");
  if (rel) {
    TORCH_CHECK(rel->dim() == 3 && rel->size(0) == q.size(1) && rel->size(2) == q.size(3) && rel->is_contiguous(),
                "rel must be contiguous (H, R, D)");
    TORCH_CHECK(rel->scalar_type() == at::kFloat, "rel must be float32");
  }
}

Problem make_problem(const Tensor& q, const Tensor& k, const std::optional<Tensor>& rel, int64_t window,
                     int64_t block) {
  TORCH_CHECK(block > 0, "block must be positive");
  Problem p;
  p.B = q.size(0), p.H = q.size(1), p.Lq = q.size(2), p.Lk = k.size(2), p.D = q.size(3);
  p.rel = rel.has_value();
  p.R = p.rel ? rel->size(1) : 1;
  p.window = window;
  p.block = block;
  p.nblk = (p.Lq + block - 1) / block;
  p.alpha = 1.0f / std::sqrt(static_cast<float>(p.D));
  return p;
}

// Runs fn(unit) for units 0 .. n-1 on the intra-op threads, handing units out one at a time.
template <typename F>
void parallel_units(int64_t n, const F& fn) {
  const int64_t threads = at::in_parallel_region() ? 1 : std::min<int64_t>(at::get_num_threads(), n);
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::max<int64_t>(threads, 1), 1, [&](int64_t, int64_t) {
    const int previous = MKL_Set_Num_Threads_Local ? MKL_Set_Num_Threads_Local(1) : 0;
    for (int64_t u; (u = next++) < n;) fn(u);
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(previous);
  });
}

// ---- forward ----

void forward_impl(const Problem& p, const float* q, Strides sq, const float* k, Strides sk, const float* v,
                  Strides sv, const float* rel, float* out, float* lse) {
  const int64_t D = p.D, ldo = p.H * D;  // out is stored (B, Lq, H, D)
  parallel_units(p.B * p.H * p.nblk, [&](int64_t u) {
    const int64_t blk = p.nblk - 1 - u / (p.B * p.H);  // the longest blocks first: better balance
    const int64_t bh = u % (p.B * p.H), b = bh / p.H, h = bh % p.H;
    const BlockGeom g = geometry(p, blk);
    const float* qb = q + b * sq.b + h * sq.h + g.a0 * sq.l;
    const float* kb = k + b * sk.b + h * sk.h + g.ks * sk.l;
    const float* vb = v + b * sv.b + h * sv.h + g.ks * sv.l;
    float* s = scratch(0, g.bq * g.n);
    gemm(false, true, g.bq, g.n, D, p.alpha, qb, sq.l, kb, sk.l, 0.0f, s, g.n);  // S (bq, n)
    float* m = nullptr;
    if (p.rel) {
      m = scratch(1, g.bq * g.w);
      const float* eb = rel + (h * p.R + p.R - g.w) * D;  // distances dmax .. 0
      gemm(false, true, g.bq, g.w, D, p.alpha, qb, sq.l, eb, D, 0.0f, m, g.w);  // M (bq, w)
    }
    float* inv_sum = scratch(2, g.bq);
    for (int64_t a = 0; a < g.bq; ++a) {  // unnormalized probabilities: 1/sum scales the output rows
      const RowGeom r = row_geometry(p, g, a);
      float* row = s + a * g.n;
      if (m) add_relative(row, m + a * g.w, r);
      const float mx = row_max(row + r.clo, r.chi - r.clo + 1);
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int64_t c = r.clo; c <= r.chi; ++c) {
        const float e = exp_nonpositive(row[c] - mx);
        row[c] = e;
        sum += e;
      }
      fill_zero(row, r.clo);
      fill_zero(row + r.chi + 1, g.n - r.chi - 1);
      inv_sum[a] = 1.0f / sum;
      lse[bh * p.Lq + g.a0 + a] = mx + std::log(sum);
    }
    float* ob = out + b * p.Lq * ldo + h * D + g.a0 * ldo;
    gemm(false, false, g.bq, D, g.n, 1.0f, s, g.n, vb, sv.l, 0.0f, ob, ldo);  // O = P V
    for (int64_t a = 0; a < g.bq; ++a) {
      float* orow = ob + a * ldo;
      const float f = inv_sum[a];
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) orow[d] *= f;
    }
  });
}

std::tuple<Tensor, Tensor> relative_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                                      const std::optional<Tensor>& rel, int64_t window,
                                                      int64_t block) {
  check_inputs(q, k, v, rel);
  const Problem p = make_problem(q, k, rel, window, block);
  Tensor out = at::empty({p.B, p.Lq, p.H, p.D}, q.options());
  Tensor lse = at::empty({p.B, p.H, p.Lq}, q.options());
  if (q.numel() > 0) {
    forward_impl(p, q.const_data_ptr<float>(), strides_of(q), k.const_data_ptr<float>(), strides_of(k),
                 v.const_data_ptr<float>(), strides_of(v), rel ? rel->const_data_ptr<float>() : nullptr,
                 out.mutable_data_ptr<float>(), lse.mutable_data_ptr<float>());
  }
  return {out.permute({0, 2, 1, 3}), lse};
}

// ---- backward ----

// One row of the backward pass: P = exp(S + Srel - lse) into s, dS = P (dP - delta) into dp, and dM,
// the adjoint of the skew (dS summed per distance, clipped distances into column 0), into m.
inline void backward_row(float* s, float* dp, float* m, const RowGeom& r, int64_t n, float lse, float delta) {
  fill_zero(s, r.clo);
  fill_zero(dp, r.clo);
  fill_zero(s + r.chi + 1, n - r.chi - 1);
  fill_zero(dp + r.chi + 1, n - r.chi - 1);
  if (!m) {
#pragma omp simd
    for (int64_t c = r.clo; c <= r.chi; ++c) {
      const float pc = exp_nonpositive(s[c] - lse);
      s[c] = pc;
      dp[c] = pc * (dp[c] - delta);
    }
    return;
  }
  const float m0 = m[0];
  const int64_t c1 = std::min(r.split, r.chi + 1);
  float clipped = 0.0f;
#pragma omp simd reduction(+ : clipped)
  for (int64_t c = r.clo; c < c1; ++c) {
    const float pc = exp_nonpositive(s[c] + m0 - lse);
    const float dsc = pc * (dp[c] - delta);
    s[c] = pc;
    dp[c] = dsc;
    clipped += dsc;
  }
  const int64_t c2 = std::max(r.clo, r.split);
  float* shifted = m - r.split;
#pragma omp simd
  for (int64_t c = c2; c <= r.chi; ++c) {
    const float pc = exp_nonpositive(s[c] + shifted[c] - lse);
    const float dsc = pc * (dp[c] - delta);
    s[c] = pc;
    dp[c] = dsc;
    shifted[c] = dsc;
  }
  fill_zero(m, c2 - r.split);  // distances that no visible key of this row has
  if (r.clo < c1) m[0] += clipped;
}

void backward_impl(const Problem& p, const float* dout, Strides sdo, const float* q, Strides sq, const float* k,
                   Strides sk, const float* v, Strides sv, const float* rel, const float* out, Strides so,
                   const float* lse, float* dq, float* dk, float* dv, float* drel_parts) {
  const int64_t D = p.D, ldg = p.H * D;  // gradients are stored (B, L, H, D)
  parallel_units(p.B * p.H, [&](int64_t bh) {
    const int64_t b = bh / p.H, h = bh % p.H;
    float* drel = p.rel ? drel_parts + bh * p.R * D : nullptr;  // this (batch, head)'s own part
    float* delta = scratch(3, p.block);
    for (int64_t blk = 0; blk < p.nblk; ++blk) {
      const BlockGeom g = geometry(p, blk);
      const float* qb = q + b * sq.b + h * sq.h + g.a0 * sq.l;
      const float* kb = k + b * sk.b + h * sk.h + g.ks * sk.l;
      const float* vb = v + b * sv.b + h * sv.h + g.ks * sv.l;
      const float* dob = dout + b * sdo.b + h * sdo.h + g.a0 * sdo.l;
      const float* ob = out + b * so.b + h * so.h + g.a0 * so.l;
      for (int64_t a = 0; a < g.bq; ++a) {  // delta = rowsum(dP * P) = dO . O
        float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
        for (int64_t d = 0; d < D; ++d) acc += dob[a * sdo.l + d] * ob[a * so.l + d];
        delta[a] = acc;
      }
      float* s = scratch(0, g.bq * g.n);
      float* dp = scratch(2, g.bq * g.n);
      gemm(false, true, g.bq, g.n, D, p.alpha, qb, sq.l, kb, sk.l, 0.0f, s, g.n);  // S
      gemm(false, true, g.bq, g.n, D, 1.0f, dob, sdo.l, vb, sv.l, 0.0f, dp, g.n);  // dP = dO V^T
      float* m = nullptr;
      const float* eb = nullptr;
      if (p.rel) {
        m = scratch(1, g.bq * g.w);
        eb = rel + (h * p.R + p.R - g.w) * D;
        gemm(false, true, g.bq, g.w, D, p.alpha, qb, sq.l, eb, D, 0.0f, m, g.w);  // M
      }
      const float* lse_b = lse + bh * p.Lq + g.a0;
      for (int64_t a = 0; a < g.bq; ++a)
        backward_row(s + a * g.n, dp + a * g.n, m ? m + a * g.w : nullptr, row_geometry(p, g, a), g.n, lse_b[a],
                     delta[a]);
      float* dkb = dk + b * p.Lk * ldg + h * D + g.ks * ldg;
      float* dvb = dv + b * p.Lk * ldg + h * D + g.ks * ldg;
      float* dqb = dq + b * p.Lq * ldg + h * D + g.a0 * ldg;
      gemm(true, false, g.n, D, g.bq, 1.0f, s, g.n, dob, sdo.l, 1.0f, dvb, ldg);      // dV += P^T dO
      gemm(true, false, g.n, D, g.bq, p.alpha, dp, g.n, qb, sq.l, 1.0f, dkb, ldg);    // dK += dS^T Q
      gemm(false, false, g.bq, D, g.n, p.alpha, dp, g.n, kb, sk.l, 0.0f, dqb, ldg);   // dQ = dS K
      if (p.rel) {
        gemm(false, false, g.bq, D, g.w, p.alpha, m, g.w, eb, D, 1.0f, dqb, ldg);     // dQ += dM E
        gemm(true, false, g.w, D, g.bq, p.alpha, m, g.w, qb, sq.l, 1.0f, drel + (p.R - g.w) * D, D);  // dE += dM^T Q
      }
    }
  });
}

std::tuple<Tensor, Tensor, Tensor, Tensor> relative_attention_backward(
    const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v, const std::optional<Tensor>& rel,
    const Tensor& out, const Tensor& lse, int64_t window, int64_t block) {
  check_inputs(q, k, v, rel);
  TORCH_CHECK(grad_out.sizes() == q.sizes() && out.sizes() == q.sizes(), "grad_out, out must have q's shape");
  TORCH_CHECK(grad_out.scalar_type() == at::kFloat && out.scalar_type() == at::kFloat, "grad_out, out: float32");
  for (const Tensor* t : {&grad_out, &out})
    TORCH_CHECK((t->stride(3) == 1 || t->size(3) == 1) && (t->stride(2) >= t->size(3) || t->size(2) == 1),
                "grad_out, out rows must be contiguous");
  TORCH_CHECK(lse.is_contiguous() && lse.scalar_type() == at::kFloat && lse.numel() == q.numel() / q.size(3),
              "lse must be contiguous float32 (B, H, Lq)");
  const Problem p = make_problem(q, k, rel, window, block);
  Tensor dq = at::empty({p.B, p.Lq, p.H, p.D}, q.options());  // every row is written by exactly one block
  Tensor dk = at::zeros({p.B, p.Lk, p.H, p.D}, q.options());
  Tensor dv = at::zeros({p.B, p.Lk, p.H, p.D}, q.options());
  // dE per (batch, head), summed below: a part per thread would make the sum's order depend on which
  // thread happened to take which unit (measured: 55 different dE bit patterns in 300 calls).
  Tensor parts = at::zeros({p.rel ? p.B : 0, p.H, p.R, p.D}, q.options());
  if (q.numel() > 0) {
    backward_impl(p, grad_out.const_data_ptr<float>(), strides_of(grad_out), q.const_data_ptr<float>(), strides_of(q),
                  k.const_data_ptr<float>(), strides_of(k), v.const_data_ptr<float>(), strides_of(v),
                  rel ? rel->const_data_ptr<float>() : nullptr, out.const_data_ptr<float>(), strides_of(out),
                  lse.const_data_ptr<float>(), dq.mutable_data_ptr<float>(), dk.mutable_data_ptr<float>(),
                  dv.mutable_data_ptr<float>(), p.rel ? parts.mutable_data_ptr<float>() : nullptr);
  }
  Tensor drel = at::zeros({p.rel ? p.H : 0, p.R, p.D}, q.options());
  if (p.rel) {
    float* acc = drel.mutable_data_ptr<float>();
    const float* src = parts.const_data_ptr<float>();
    const int64_t n = drel.numel();
    at::parallel_for(0, n, 1 << 14, [&](int64_t i0, int64_t i1) {
      for (int64_t b = 0; b < p.B; ++b)  // always in batch order
#pragma omp simd
        for (int64_t i = i0; i < i1; ++i) acc[i] += src[b * n + i];
    });
  }
  auto heads_view = [](const Tensor& t) { return t.permute({0, 2, 1, 3}); };
  return {heads_view(dq), heads_view(dk), heads_view(dv), drel};
}

bool available() { return sgemm_ != nullptr; }

}  // namespace

TORCH_LIBRARY(musicgpt_relattn, m) {
  m.def("forward(Tensor q, Tensor k, Tensor v, Tensor? rel, int window, int block) -> (Tensor, Tensor)");
  m.def("backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor? rel, Tensor out, Tensor lse, int window, "
        "int block) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("available() -> bool", &available);
}

TORCH_LIBRARY_IMPL(musicgpt_relattn, CPU, m) {
  m.impl("forward", &relative_attention_forward);
  m.impl("backward", &relative_attention_backward);
}
