// Fused backward + sparse optimizer update of a CPU table-batched embedding
// (fbgemm's SplitTableBatchedEmbeddingBagsCodegen layout), for EXACT_SGD,
// EXACT_ADAGRAD and EXACT_ROWWISE_ADAGRAD. Each row's gradient is summed in the
// order its ids occur in `indices` (fbgemm sorts them with a stable radix sort,
// which keeps that order), in float, then
//   sgd:     w -= lr * g
//   adagrad: m += g * g;  w -= lr * g / (sqrt(m) + eps)
//   rowwise: m += mean(g * g) (one m per row);  w -= lr * g / (sqrt(m) + eps)
// sgd and adagrad are bit for bit fbgemm's (its C++ types: W -= expression, so
// fp16 rounds as fbgemm's does); rowwise follows fbgemm's reference arithmetic
// (float sum of squares, float step), which its JIT kernel vectorises, so the
// two agree to float rounding, not bit for bit.
// fbgemm's exact CPU kernels run each table on one thread after a sort into
// CSC form; here the distinct rows of a table are found with a small hash map
// (no sort) and tables (or row partitions of one table) run in parallel.
//
// Layout (as in the TBE module): features f = 0..T-1, table of f starts at
// weights_offsets[f] in the flat `weights`, has D = D_offsets[f+1]-D_offsets[f]
// columns; features of a shared table are adjacent and have equal
// weights_offsets. indices/offsets: feature-major bags, offsets [T * B + 1].
// grad_output: pooled [B, total_D] or, for nobag (pooling none), [N, D].
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include "task_pool.h"

#include <cmath>
#include <vector>

namespace {

struct TableSpan {
  int64_t f0, f1;  // features [f0, f1)
  int64_t rows;    // rows of the table
};

// The loops below are written so that the compiler vectorizes them (restrict
// pointers, -fno-math-errno); each keeps fbgemm's per-element arithmetic:
// fbgemm's build contracts `a += b * c` in float to one FMA, computes
// `w -= lr * g / (sqrt(m) + eps)` in double (sqrt of a float resolves to the
// double one there), and for fp16 weights rounds the right-hand side to half
// first (c10::Half -= float).
inline void accumulate(float* __restrict acc, const float* __restrict src, int64_t D) {
  for (int64_t d = 0; d < D; ++d) acc[d] += src[d];
}

inline void accumulate_scaled(float* __restrict acc, const float* __restrict src, float wt,
                              int64_t D) {
  for (int64_t d = 0; d < D; ++d) acc[d] = std::fma(src[d], wt, acc[d]);
}

inline void sgd_row(float* __restrict w, const float* __restrict g, int64_t D, float lr) {
  for (int64_t d = 0; d < D; ++d) w[d] = std::fma(-lr, g[d], w[d]);
}

inline void sgd_row(at::Half* w, const float* g, int64_t D, float lr) {
  for (int64_t d = 0; d < D; ++d) w[d] -= lr * g[d];
}

inline void adagrad_row(float* __restrict w, float* __restrict m, const float* __restrict g,
                        int64_t D, float lr, float eps) {
  for (int64_t d = 0; d < D; ++d) {
    const float mn = std::fma(g[d], g[d], m[d]);
    m[d] = mn;
    const double step = static_cast<double>(lr * g[d]) /
                        (std::sqrt(static_cast<double>(mn)) + static_cast<double>(eps));
    w[d] = static_cast<float>(static_cast<double>(w[d]) - step);
  }
}

inline void adagrad_row(at::Half* w, float* m, const float* g, int64_t D, float lr, float eps) {
  for (int64_t d = 0; d < D; ++d) {
    m[d] = std::fma(g[d], g[d], m[d]);
    w[d] -= lr * g[d] / (std::sqrt(static_cast<double>(m[d])) + eps);
  }
}

// fbgemm's rowwise_sparse_adagrad_ref: h += sum(g^2) / D; w += g * (-lr / (sqrt(h) + eps))
inline void rowwise_row(float* __restrict w, float* __restrict m, const float* __restrict g,
                        int64_t D, float lr, float eps) {
  float sq = 0.0f;
  for (int64_t d = 0; d < D; ++d) sq = std::fma(g[d], g[d], sq);
  const float h = *m + sq / static_cast<float>(D);
  *m = h;
  const float step = -lr / (std::sqrt(h) + eps);
  for (int64_t d = 0; d < D; ++d) w[d] = std::fma(g[d], step, w[d]);
}

inline void rowwise_row(at::Half* w, float* m, const float* g, int64_t D, float lr, float eps) {
  float sq = 0.0f;
  for (int64_t d = 0; d < D; ++d) sq = std::fma(g[d], g[d], sq);
  const float h = *m + sq / static_cast<float>(D);
  *m = h;
  const float step = -lr / (std::sqrt(h) + eps);
  for (int64_t d = 0; d < D; ++d) w[d] += g[d] * step;
}

enum Optimizer : int64_t { kSgd = 0, kAdagrad = 1, kRowwise = 2 };

template <typename W>
void fused_update(const torch::Tensor& grad_output, torch::Tensor& weights, torch::Tensor& momentum,
                  const torch::Tensor& weights_offsets, const torch::Tensor& momentum_offsets,
                  const torch::Tensor& D_offsets, const std::vector<TableSpan>& tables,
                  const torch::Tensor& indices, const torch::Tensor& offsets,
                  const torch::Tensor& indice_weights, int64_t pooling_mode, int64_t nobag_D,
                  float lr, float eps, int64_t opt) {
  const bool state = opt != kSgd;  // a momentum tensor: D floats a row, or one (rowwise)
  const int64_t T = weights_offsets.numel();
  const int64_t B = (offsets.numel() - 1) / T;
  const float* go = grad_output.data_ptr<float>();
  const int64_t go_stride = nobag_D > 0 ? nobag_D : grad_output.size(1);
  W* w = weights.data_ptr<W>();
  float* mom = state ? momentum.data_ptr<float>() : nullptr;
  const int64_t* wo = weights_offsets.data_ptr<int64_t>();
  const int64_t* mo = state ? momentum_offsets.data_ptr<int64_t>() : nullptr;
  const int32_t* dof = D_offsets.data_ptr<int32_t>();
  const int64_t* idx = indices.data_ptr<int64_t>();
  const int64_t* off = offsets.data_ptr<int64_t>();
  // fbgemm's nobag kernels ignore per-sample weights
  const float* iw =
      indice_weights.numel() && nobag_D == 0 ? indice_weights.data_ptr<float>() : nullptr;
  const bool mean = pooling_mode == 1 && nobag_D == 0;

  // one task per (table, row partition): a lone table still uses every thread
  const int64_t nt = static_cast<int64_t>(tables.size());
  const int64_t threads = at::get_num_threads();
  const int64_t parts = std::max<int64_t>(1, (threads + nt - 1) / nt);
  std::vector<int64_t> bad(nt * parts, -1);
  // tasks are handed out one at a time from a shared counter rather than in
  // fixed halves: when another process takes a core, the thread that still runs
  // takes over the remaining tables instead of waiting for the stalled one
  // (recis::run_tasks: nor does the call wait for a helper that never started)
  constexpr int64_t kAheadB = 4;
  recis::run_tasks(nt * parts, threads, [&](const recis::Claim& claim) {
    std::vector<int64_t> keys;   // open-addressing map row -> slot in uniq
    std::vector<int32_t> vals;
    std::vector<int64_t> uniq;   // distinct rows, first-seen order
    std::vector<float> gbuf;     // [uniq, D] gradient sums
    for (int64_t task = claim(); task >= 0; task = claim()) {
      const TableSpan& tb = tables[task / parts];
      const int64_t part = task % parts;
      const int64_t D = nobag_D > 0 ? nobag_D : dof[tb.f0 + 1] - dof[tb.f0];
      const int64_t n = off[tb.f1 * B] - off[tb.f0 * B];
      if (n == 0) continue;
      int64_t cap = 16;
      while (cap < 2 * (n / parts + 1)) cap <<= 1;
      keys.assign(cap, -1);
      vals.resize(cap);
      uniq.clear();
      gbuf.clear();
      for (int64_t f = tb.f0; f < tb.f1; ++f) {
        const int64_t col = nobag_D > 0 ? 0 : dof[f];
        for (int64_t b = 0; b < B; ++b) {
          // the pooled gradient rows of one feature lie a whole row of features
          // apart (a page or more): fetch a few samples ahead, the hardware
          // prefetcher does not follow such strides
          if (nobag_D == 0 && b + kAheadB < B) {
            const char* pg = reinterpret_cast<const char*>(go + (b + kAheadB) * go_stride + col);
            for (int64_t o = 0; o < D * 4; o += 64) __builtin_prefetch(pg + o, 0);
          }
          const int64_t p0 = off[f * B + b], p1 = off[f * B + b + 1];
          // fbgemm: float(1.0 / L) for mean pooling without weights
          const float scale = (mean && !iw && p1 > p0) ? static_cast<float>(1.0 / (p1 - p0)) : 1.0f;
          for (int64_t p = p0; p < p1; ++p) {
            const int64_t row = idx[p];
            if (row < 0 || row >= tb.rows) {
              bad[task] = row;
              continue;
            }
            if (row % parts != part) continue;
            uint64_t h = (static_cast<uint64_t>(row) * 0x9E3779B97F4A7C15ULL) >> 20;
            int64_t s = static_cast<int64_t>(h & static_cast<uint64_t>(cap - 1));
            while (keys[s] != -1 && keys[s] != row) s = (s + 1) & (cap - 1);
            if (keys[s] == -1) {
              keys[s] = row;
              vals[s] = static_cast<int32_t>(uniq.size());
              uniq.push_back(row);
              gbuf.resize(gbuf.size() + D, 0.0f);
            }
            float* acc = gbuf.data() + static_cast<int64_t>(vals[s]) * D;
            const float* src = go + (nobag_D > 0 ? p * go_stride : b * go_stride + col);
            if (iw || mean) {
              accumulate_scaled(acc, src, iw ? iw[p] : scale, D);
            } else {
              accumulate(acc, src, D);
            }
          }
        }
      }
      W* wt = w + wo[tb.f0];
      float* mt = state ? mom + mo[tb.f0] : nullptr;
      const int64_t mD = opt == kRowwise ? 1 : D;  // momentum floats per row
      // rows are scattered over tables of up to GBs: fetch a few rows ahead so
      // their cache (and TLB) misses overlap instead of stalling one by one
      constexpr size_t kAhead = 8;
      const int64_t wbytes = D * static_cast<int64_t>(sizeof(W)), mbytes = mD * 4;
      for (size_t u = 0; u < uniq.size(); ++u) {
        if (u + kAhead < uniq.size()) {
          const int64_t r = uniq[u + kAhead];
          const char* pw = reinterpret_cast<const char*>(wt + r * D);
          for (int64_t o = 0; o < wbytes; o += 64) __builtin_prefetch(pw + o, 1);
          if (state) {
            const char* pm = reinterpret_cast<const char*>(mt + r * mD);
            for (int64_t o = 0; o < mbytes; o += 64) __builtin_prefetch(pm + o, 1);
          }
        }
        const float* g = gbuf.data() + u * D;
        if (opt == kAdagrad) {
          adagrad_row(wt + uniq[u] * D, mt + uniq[u] * D, g, D, lr, eps);
        } else if (opt == kRowwise) {
          rowwise_row(wt + uniq[u] * D, mt + uniq[u], g, D, lr, eps);
        } else {
          sgd_row(wt + uniq[u] * D, g, D, lr);
        }
      }
    }
  });
  for (int64_t task = 0; task < nt * parts; ++task) {
    TORCH_CHECK(bad[task] < 0, "fused_backward: index ", bad[task], " out of range for table ",
                task / parts, " (", tables[task / parts].rows, " rows)");
  }
}

}  // namespace

// Applies the update in place to weights (and momentum for adagrad / rowwise).
// optimizer: 0 = sgd, 1 = adagrad, 2 = rowwise adagrad. pooling_mode: 0 sum, 1 mean (fbgemm's codes);
// nobag_D > 0 means pooling none with that dim (grad_output [N, D]).
void fused_backward(torch::Tensor grad_output, torch::Tensor weights, torch::Tensor momentum,
                    torch::Tensor weights_offsets, torch::Tensor momentum_offsets,
                    torch::Tensor D_offsets, torch::Tensor hash_size_cumsum, torch::Tensor indices,
                    torch::Tensor offsets, torch::Tensor indice_weights, int64_t pooling_mode,
                    int64_t nobag_D, double lr, double eps, int64_t optimizer) {
  TORCH_CHECK(grad_output.scalar_type() == torch::kFloat, "fused_backward: float gradients only");
  TORCH_CHECK(indices.scalar_type() == torch::kLong && offsets.scalar_type() == torch::kLong,
              "fused_backward: int64 indices and offsets");
  TORCH_CHECK(optimizer >= kSgd && optimizer <= kRowwise, "fused_backward: optimizer code");
  TORCH_CHECK(weights.is_contiguous() && (optimizer == kSgd || momentum.is_contiguous()));
  TORCH_CHECK(indice_weights.numel() == 0 || indice_weights.scalar_type() == torch::kFloat);
  grad_output = grad_output.contiguous();
  indices = indices.contiguous();
  offsets = offsets.contiguous();
  indice_weights = indice_weights.contiguous();
  // physical tables: runs of features with the same weights offset
  const int64_t T = weights_offsets.numel();
  const int64_t* wo = weights_offsets.data_ptr<int64_t>();
  const int64_t* hs = hash_size_cumsum.data_ptr<int64_t>();
  std::vector<TableSpan> tables;
  for (int64_t f = 0; f < T; ++f) {
    if (f == 0 || wo[f] != wo[f - 1]) tables.push_back({f, f + 1, 0});
    else tables.back().f1 = f + 1;
  }
  for (auto& tb : tables) tb.rows = hs[tb.f1] - hs[tb.f0];
  const float flr = static_cast<float>(lr), feps = static_cast<float>(eps);
  if (weights.scalar_type() == torch::kFloat) {
    fused_update<float>(grad_output, weights, momentum, weights_offsets, momentum_offsets,
                        D_offsets, tables, indices, offsets, indice_weights, pooling_mode, nobag_D,
                        flr, feps, optimizer);
  } else {
    TORCH_CHECK(weights.scalar_type() == torch::kHalf, "fused_backward: fp32 or fp16 weights");
    fused_update<at::Half>(grad_output, weights, momentum, weights_offsets, momentum_offsets,
                           D_offsets, tables, indices, offsets, indice_weights, pooling_mode,
                           nobag_D, flr, feps, optimizer);
  }
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fused_backward", &fused_backward, "fused embedding backward + sgd/adagrad/rowwise adagrad update",
        py::call_guard<py::gil_scoped_release>());
}
