// Fused causal softmax attention for XLA:CPU, forward and backward, as XLA FFI handlers.
//
// Why: XLA:CPU runs attention as separate passes over the [B, H, S, N] scores (the score
// matmul writes them, the softmax reads and rewrites them, the value matmul reads them again),
// and for gathered queries it cannot skip the key blocks that the causal mask discards. Here
// each (batch row, head) is one task: its keys and values are packed once into cache-resident
// buffers, and each tile of queries streams over the key blocks up to its own largest
// position with an online softmax, so scores live only in registers and on the stack
// (FlashAttention, Dao et al. 2022, on CPU vectors).
//
// Contract (checked on the Python side, anira_jax/model/cpu_attention.py):
//   q [B, S, H, K], k [B, N, H, K], v [B, N, H, K] float32, K in {16, 32, 64, 128};
//   q_positions [B, S] int32 in [0, N): query s of row b sees keys 0..q_positions[b, s];
//   out [B, S, H, K]; logsumexp [B, S, H] (natural log of each row's softmax normaliser);
//   scores are (q / sqrt(K)) . k, as in layers.attention.
//   The ragged forward entry point (compaction) takes q [T, H, K] and q_positions [T] for all
//   rows at once, row b's at [row_starts[b], row_starts[b + 1]) (row_starts [B + 1] int32).
// Rows of a tile share the tile's key range, so queries sorted by position (a causal sequence,
// or compaction's gathered tokens) skip the most; any order is correct.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float f32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));

constexpr int kTileQueries = 8;  // queries per tile: 8 rows x (K / 16) vector accumulators
// Keys per online-softmax step, KB (a template parameter): 16 for sequences of up to
// kShortKeys keys, where finer causal skipping pays most, else 32 (less bookkeeping per key).
constexpr int64_t kShortKeys = 128;
constexpr float kMasked = -1e30f;

inline f32x16 splat(float x) { return f32x16{} + x; }
inline f32x16 load(const float* p) { f32x16 x; std::memcpy(&x, p, 64); return x; }
inline void store(float* p, f32x16 x) { std::memcpy(p, &x, 64); }

inline float reduce_max(f32x16 x) {
  f32x16 y = __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
  x = x > y ? x : y;
  y = __builtin_shufflevector(x, x, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
  x = x > y ? x : y;
  y = __builtin_shufflevector(x, x, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
  x = x > y ? x : y;
  y = __builtin_shufflevector(x, x, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
  x = x > y ? x : y;
  return x[0];
}

inline float reduce_sum(f32x16 x) {
  x += __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
  x += __builtin_shufflevector(x, x, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
  x += __builtin_shufflevector(x, x, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
  x += __builtin_shufflevector(x, x, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
  return x[0];
}

// e^x for x <= 0 (softmax arguments): Cody-Waite reduction to r in [-ln2/2, ln2/2] and a
// degree-6 polynomial (Cephes expf's coefficients), relative error ~2e-7; exactly 0 below -87
// (where expf leaves the normal range), so masked scores (kMasked) weigh nothing.
inline f32x16 exp_nonpositive(f32x16 x) {
  const i32x16 underflow = x < splat(-87.f);
  x = underflow ? splat(-87.f) : x;
  const f32x16 n = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;  // round(x / ln 2)
  const f32x16 r = x - n * 0.693145751953125f - n * 1.428606765330187045e-06f;
  f32x16 p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  const i32x16 bits = (__builtin_convertvector(n, i32x16) + 127) << 23;  // 2^n
  f32x16 scale;
  std::memcpy(&scale, &bits, 64);
  return underflow ? splat(0.f) : p * scale;
}

// Key indices n0 .. n0 + 15 as floats, for the causal comparison with a query's position.
inline f32x16 key_indices(int64_t n0) {
  f32x16 idx;
  for (int j = 0; j < 16; ++j) idx[j] = static_cast<float>(n0 + j);
  return idx;
}

// Strided views of one (batch row, head): element (i, c) at data[i * stride + c].
struct Rows {
  const float* data;
  int64_t stride;
  const float* row(int64_t i) const { return data + i * stride; }
};

// A tile of up to kTileQueries queries (rows past `count` repeat the last one and are not
// written), scaled by 1/sqrt(K), with their positions.
template <int K>
struct QueryTile {
  float q[kTileQueries][K];
  float position[kTileQueries];
  int64_t count, min_position, max_position;

  QueryTile(Rows queries, const int32_t* positions, int64_t start, int64_t total) {
    count = std::min<int64_t>(kTileQueries, total - start);
    const float scale = 1.f / std::sqrt(static_cast<float>(K));
    min_position = INT64_MAX;
    max_position = 0;
    for (int i = 0; i < kTileQueries; ++i) {
      const int64_t s = start + std::min<int64_t>(i, count - 1);
      for (int c = 0; c < K; ++c) q[i][c] = queries.row(s)[c] * scale;
      position[i] = static_cast<float>(positions[s]);
      min_position = std::min<int64_t>(min_position, positions[s]);
      max_position = std::max<int64_t>(max_position, positions[s]);
    }
  }
};

#define ANIRA_ARGS(...) __VA_ARGS__  // a list with commas, as one macro argument
// One step of a 16 x 16 register transpose: rows r and r + S (r with bit S clear) swap their
// off-diagonal S x S blocks.
#define ANIRA_TRANSPOSE_STEP(S, LO, HI)                          \
  for (int r = 0; r < 16; ++r) {                                 \
    if (r & S) continue;                                         \
    const f32x16 a = t[r], b = t[r + S];                         \
    t[r] = __builtin_shufflevector(a, b, LO);                    \
    t[r + S] = __builtin_shufflevector(a, b, HI);                \
  }

// Transposes 16 rows of 16 floats in registers (t[i][j] becomes t[j][i]).
inline void transpose16(f32x16 (&t)[16]) {
  ANIRA_TRANSPOSE_STEP(8, ANIRA_ARGS(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23),
                       ANIRA_ARGS(8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31))
  ANIRA_TRANSPOSE_STEP(4, ANIRA_ARGS(0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27),
                       ANIRA_ARGS(4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31))
  ANIRA_TRANSPOSE_STEP(2, ANIRA_ARGS(0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29),
                       ANIRA_ARGS(2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31))
  ANIRA_TRANSPOSE_STEP(1, ANIRA_ARGS(0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30),
                       ANIRA_ARGS(1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31))
}

// Keys 0 .. padded-1 of one head packed for the tiles: transposed [K][padded] (the score
// products read 16 consecutive keys per vector) or row-major [padded][K]; positions past
// `length` are zeros. Transposed 16 x 16 at a time, in registers.
template <int K>
void pack_transposed(Rows x, int64_t length, int64_t padded, float* out_KxP) {
  for (int64_t n0 = 0; n0 < padded; n0 += 16) {
    for (int c0 = 0; c0 < K; c0 += 16) {
      f32x16 t[16];
      for (int j = 0; j < 16; ++j) t[j] = n0 + j < length ? load(x.row(n0 + j) + c0) : splat(0.f);
      transpose16(t);
      for (int c = 0; c < 16; ++c) store(out_KxP + (c0 + c) * padded + n0, t[c]);
    }
  }
}

template <int K>
void pack_rows(Rows x, int64_t length, int64_t padded, float* out_PxK) {
  for (int64_t n = 0; n < padded; ++n) {
    if (n < length) std::memcpy(out_PxK + n * K, x.row(n), K * sizeof(float));
    else std::memset(out_PxK + n * K, 0, K * sizeof(float));
  }
}

// scores[i][u] = q_i . key(n0 + 16u + lane), from keys packed [K][padded].
template <int K, int KB, typename Query>
inline void tile_products(const Query& a, const float* keys_KxP, int64_t padded, int64_t n0,
                          f32x16 (&scores)[kTileQueries][KB / 16]) {
  for (int i = 0; i < kTileQueries; ++i)
    for (int u = 0; u < KB / 16; ++u) scores[i][u] = splat(0.f);
  for (int c = 0; c < K; ++c) {
    f32x16 key[KB / 16];
    for (int u = 0; u < KB / 16; ++u) key[u] = load(keys_KxP + c * padded + n0 + 16 * u);
    for (int i = 0; i < kTileQueries; ++i)
      for (int u = 0; u < KB / 16; ++u) scores[i][u] += a[i][c] * key[u];
  }
}

// The key count a head's queries reach (their largest position + 1), padded to whole blocks.
template <int KB>
inline int64_t padded_keys(const int32_t* positions, int64_t queries) {
  int64_t last = 0;
  for (int64_t s = 0; s < queries; ++s) last = std::max<int64_t>(last, positions[s]);
  return (last / KB + 1) * KB;
}

struct HeadBuffers {  // per-thread scratch, reused across calls
  std::vector<float> a, b, c, d, e;
  void reserve(size_t n) { for (auto* v : {&a, &b, &c, &d, &e}) if (v->size() < n) v->resize(n); }
};

template <int K, int KB>
void forward_head(Rows q, Rows k, Rows v, const int32_t* positions, float* out, float* lse,
                  int64_t out_stride, int64_t lse_stride, int64_t queries, int64_t length,
                  HeadBuffers& scratch) {
  constexpr int V = K / 16;
  const int64_t padded = padded_keys<KB>(positions, queries);
  scratch.reserve(padded * K);
  float* keys_KxP = scratch.a.data();
  pack_transposed<K>(k, length, padded, keys_KxP);
  alignas(64) static constexpr float kZeroRow[K] = {};  // values of keys past the sequence

  for (int64_t start = 0; start < queries; start += kTileQueries) {
    const QueryTile<K> tile(q, positions, start, queries);
    f32x16 acc[kTileQueries][V];
    float running_max[kTileQueries], total[kTileQueries];
    for (int i = 0; i < kTileQueries; ++i) {
      for (int w = 0; w < V; ++w) acc[i][w] = splat(0.f);
      running_max[i] = kMasked;
      total[i] = 0.f;
    }
    for (int64_t n0 = 0; n0 <= tile.max_position; n0 += KB) {
      f32x16 scores[kTileQueries][KB / 16];
      tile_products<K, KB>(tile.q, keys_KxP, padded, n0, scores);
      const bool all_visible = n0 + KB - 1 <= tile.min_position;
      alignas(64) float probs[kTileQueries][KB];
      for (int i = 0; i < kTileQueries; ++i) {
        f32x16 block_max = splat(kMasked);
        for (int u = 0; u < KB / 16; ++u) {
          if (!all_visible) {
            const i32x16 visible = key_indices(n0 + 16 * u) <= splat(tile.position[i]);
            scores[i][u] = visible ? scores[i][u] : splat(kMasked);
          }
          block_max = block_max > scores[i][u] ? block_max : scores[i][u];
        }
        const float new_max = std::max(running_max[i], reduce_max(block_max));
        const float rescale = std::exp(running_max[i] - new_max);
        running_max[i] = new_max;
        f32x16 sum = splat(0.f);
        for (int u = 0; u < KB / 16; ++u) {
          const f32x16 p = exp_nonpositive(scores[i][u] - new_max);
          sum += p;
          store(probs[i] + 16 * u, p);
        }
        total[i] = total[i] * rescale + reduce_sum(sum);
        for (int w = 0; w < V; ++w) acc[i][w] *= rescale;
      }
      for (int j = 0; j < KB; ++j) {  // values read in place: each key's row is contiguous
        const float* value = n0 + j < length ? v.row(n0 + j) : kZeroRow;
        f32x16 val[V];
        for (int w = 0; w < V; ++w) val[w] = load(value + 16 * w);
        for (int i = 0; i < kTileQueries; ++i)
          for (int w = 0; w < V; ++w) acc[i][w] += probs[i][j] * val[w];
      }
    }
    for (int i = 0; i < tile.count; ++i) {
      float* row = out + (start + i) * out_stride;
      for (int w = 0; w < V; ++w) store(row + 16 * w, acc[i][w] / total[i]);
      lse[(start + i) * lse_stride] = running_max[i] + std::log(total[i]);
    }
  }
}

template <int K, int KB>
void backward_head(Rows q, Rows k, Rows v, const int32_t* positions, Rows out, Rows dout,
                   const float* lse, int64_t lse_stride, float* dq, float* dk, float* dv,
                   int64_t q_stride, int64_t k_stride, int64_t queries, int64_t length,
                   HeadBuffers& scratch) {
  constexpr int V = K / 16;
  const int64_t padded = padded_keys<KB>(positions, queries);
  scratch.reserve(padded * K);
  float* keys_KxP = scratch.a.data();
  float* values_KxP = scratch.b.data();
  float* keys_PxK = scratch.c.data();
  float* dk_PxK = scratch.d.data();
  float* dv_PxK = scratch.e.data();
  pack_transposed<K>(k, length, padded, keys_KxP);
  pack_transposed<K>(v, length, padded, values_KxP);
  pack_rows<K>(k, length, padded, keys_PxK);
  std::memset(dk_PxK, 0, padded * K * sizeof(float));
  std::memset(dv_PxK, 0, padded * K * sizeof(float));
  const float scale = 1.f / std::sqrt(static_cast<float>(K));

  for (int64_t start = 0; start < queries; start += kTileQueries) {
    const QueryTile<K> tile(q, positions, start, queries);
    float d_out[kTileQueries][K], row_lse[kTileQueries], row_dot[kTileQueries];
    for (int i = 0; i < kTileQueries; ++i) {  // rows past the tile's count get zero cotangent
      const int64_t s = start + std::min<int64_t>(i, tile.count - 1);
      float dot = 0.f;
      for (int c = 0; c < K; ++c) {
        d_out[i][c] = i < tile.count ? dout.row(s)[c] : 0.f;
        dot += d_out[i][c] * out.row(s)[c];
      }
      row_dot[i] = dot;  // sum_n p_n dp_n, from the output (FlashAttention's D)
      row_lse[i] = lse[s * lse_stride];
    }
    f32x16 dq_acc[kTileQueries][V];
    for (int i = 0; i < kTileQueries; ++i)
      for (int w = 0; w < V; ++w) dq_acc[i][w] = splat(0.f);
    for (int64_t n0 = 0; n0 <= tile.max_position; n0 += KB) {
      f32x16 scores[kTileQueries][KB / 16], d_probs[kTileQueries][KB / 16];
      tile_products<K, KB>(tile.q, keys_KxP, padded, n0, scores);
      tile_products<K, KB>(d_out, values_KxP, padded, n0, d_probs);
      const bool all_visible = n0 + KB - 1 <= tile.min_position;
      alignas(64) float probs[kTileQueries][KB], d_scores[kTileQueries][KB];
      for (int i = 0; i < kTileQueries; ++i) {
        for (int u = 0; u < KB / 16; ++u) {
          f32x16 x = scores[i][u] - row_lse[i];
          if (!all_visible) {
            const i32x16 visible = key_indices(n0 + 16 * u) <= splat(tile.position[i]);
            x = visible ? x : splat(kMasked);
          }
          const f32x16 p = exp_nonpositive(x);
          store(probs[i] + 16 * u, p);
          store(d_scores[i] + 16 * u, p * (d_probs[i][u] - row_dot[i]));
        }
      }
      for (int j = 0; j < KB; ++j) {
        const int64_t n = n0 + j;
        f32x16 key[V], dk_sum[V], dv_sum[V];
        for (int w = 0; w < V; ++w) {
          key[w] = load(keys_PxK + n * K + 16 * w);
          dk_sum[w] = dv_sum[w] = splat(0.f);
        }
        for (int i = 0; i < kTileQueries; ++i) {
          for (int w = 0; w < V; ++w) {
            dq_acc[i][w] += d_scores[i][j] * key[w];
            dk_sum[w] += d_scores[i][j] * load(tile.q[i] + 16 * w);  // q already scaled
            dv_sum[w] += probs[i][j] * load(d_out[i] + 16 * w);
          }
        }
        for (int w = 0; w < V; ++w) {
          store(dk_PxK + n * K + 16 * w, load(dk_PxK + n * K + 16 * w) + dk_sum[w]);
          store(dv_PxK + n * K + 16 * w, load(dv_PxK + n * K + 16 * w) + dv_sum[w]);
        }
      }
    }
    for (int i = 0; i < tile.count; ++i)
      for (int w = 0; w < V; ++w) store(dq + (start + i) * q_stride + 16 * w, dq_acc[i][w] * scale);
  }
  for (int64_t n = 0; n < length; ++n) {  // keys no query reached get zero gradient
    if (n < padded) {
      std::memcpy(dk + n * k_stride, dk_PxK + n * K, K * sizeof(float));
      std::memcpy(dv + n * k_stride, dv_PxK + n * K, K * sizeof(float));
    } else {
      std::memset(dk + n * k_stride, 0, K * sizeof(float));
      std::memset(dv + n * k_stride, 0, K * sizeof(float));
    }
  }
}

// Below this many multiply-adds a call runs on the calling thread alone: waking a pool thread
// costs more than it saves.
constexpr int64_t kMinParallelWork = 1 << 18;

// Runs work(0 .. total-1) on the calling thread and XLA's intra-op pool. Tasks claim items from
// a shared counter; the caller returns once every item is done. A pool task that starts after
// all items are claimed finds nothing to do, so the shared state outlives the call.
template <typename Work>
void parallel_for(ffi::ThreadPool& pool, int64_t total, int64_t cost, Work work) {
  if (cost < kMinParallelWork) {
    for (int64_t item = 0; item < total; ++item) work(item);
    return;
  }
  struct Shared {
    std::atomic<int64_t> next{0}, done{0};
    std::mutex mu;
    std::condition_variable all_done;
  };
  auto shared = std::make_shared<Shared>();
  auto run = [shared, work, total]() {
    int64_t item, finished = 0;
    while ((item = shared->next.fetch_add(1)) < total) {
      work(item);
      ++finished;
    }
    if (finished && shared->done.fetch_add(finished) + finished == total) {
      std::lock_guard<std::mutex> lock(shared->mu);
      shared->all_done.notify_all();
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), total) - 1;
  for (int64_t t = 0; t < helpers; ++t) {
    auto task = run;
    pool.Schedule(std::move(task));
  }
  run();
  std::unique_lock<std::mutex> lock(shared->mu);
  shared->all_done.wait(lock, [&] { return shared->done.load() == total; });
}

thread_local HeadBuffers tls_scratch;

template <int K, int KB>
void forward(ffi::ThreadPool& pool, const float* q, const float* k, const float* v,
             const int32_t* positions, float* out, float* lse, int64_t batch, int64_t queries,
             int64_t heads, int64_t length) {
  const int64_t row = heads * K;
  const int64_t cost = batch * heads * queries * length * K;  // multiply-adds, at most
  parallel_for(pool, batch * heads, cost, [=](int64_t item) {
    const int64_t b = item / heads, h = item % heads;
    const int64_t qo = b * queries * row + h * K, ko = b * length * row + h * K;
    forward_head<K, KB>({q + qo, row}, {k + ko, row}, {v + ko, row}, positions + b * queries,
                    out + qo, lse + b * queries * heads + h, row, heads, queries, length,
                    tls_scratch);
  });
}

template <int K, int KB>
void backward(ffi::ThreadPool& pool, const float* q, const float* k, const float* v,
              const int32_t* positions, const float* out, const float* lse, const float* dout,
              float* dq, float* dk, float* dv, int64_t batch, int64_t queries, int64_t heads,
              int64_t length) {
  const int64_t row = heads * K;
  const int64_t cost = 3 * batch * heads * queries * length * K;
  parallel_for(pool, batch * heads, cost, [=](int64_t item) {
    const int64_t b = item / heads, h = item % heads;
    const int64_t qo = b * queries * row + h * K, ko = b * length * row + h * K;
    backward_head<K, KB>({q + qo, row}, {k + ko, row}, {v + ko, row}, positions + b * queries,
                     {out + qo, row}, {dout + qo, row}, lse + b * queries * heads + h, heads,
                     dq + qo, dk + ko, dv + ko, row, row, queries, length, tls_scratch);
  });
}

// The forward pass over a ragged batch: the queries of all rows in one [T, H, K] array, row b's
// at [row_starts[b], row_starts[b + 1]); queries past row_starts[batch] are padding and get
// zeros. For compaction, whose rows have different numbers of active tokens: a [B, S] layout
// would pad every row to the largest.
template <int K, int KB>
void ragged_forward(ffi::ThreadPool& pool, const float* q, const float* k, const float* v,
                    const int32_t* positions, const int32_t* row_starts, float* out, float* lse,
                    int64_t batch, int64_t total, int64_t heads, int64_t length) {
  const int64_t row = heads * K;
  const int64_t cost = heads * total * length * K;  // multiply-adds, at most
  parallel_for(pool, batch * heads, cost, [=](int64_t item) {
    const int64_t b = item / heads, h = item % heads;
    const int64_t start = row_starts[b], queries = row_starts[b + 1] - start;
    if (queries <= 0) return;
    const int64_t qo = start * row + h * K, ko = b * length * row + h * K;
    forward_head<K, KB>({q + qo, row}, {k + ko, row}, {v + ko, row}, positions + start,
                        out + qo, lse + start * heads + h, row, heads, queries, length,
                        tls_scratch);
  });
  const int64_t used = row_starts[batch];
  std::fill(out + used * row, out + total * row, 0.f);
  std::fill(lse + used * heads, lse + total * heads, 0.f);
}

// Calls f.template operator()<K, KB>() for the supported head dims K and the key block KB.
template <typename F>
ffi::Error with_sizes(int64_t head_dim, int64_t keys, F f) {
  const bool short_keys = keys <= kShortKeys;
  auto blocks = [&]<int K>() {
    if (short_keys) f.template operator()<K, 16>();
    else f.template operator()<K, 32>();
  };
  switch (head_dim) {
    case 16: blocks.template operator()<16>(); break;
    case 32: blocks.template operator()<32>(); break;
    case 64: blocks.template operator()<64>(); break;
    case 128: blocks.template operator()<128>(); break;
    default: return ffi::Error::InvalidArgument("head dim must be 16, 32, 64 or 128");
  }
  return ffi::Error::Success();
}

using F32 = ffi::Buffer<ffi::F32>;
using S32 = ffi::Buffer<ffi::S32>;

// q [..., S, H, K] and k [..., N, H, K]: leading axes (the batch, and any that vmap added) are
// one batch axis of contiguous rows.
struct Shape {
  int64_t batch = 1, queries, heads, head_dim, length;
  Shape(const F32& q, const F32& k) {
    const auto qd = q.dimensions();
    const size_t rank = qd.size();
    for (size_t i = 0; i + 3 < rank; ++i) batch *= qd[i];
    queries = qd[rank - 3];
    heads = qd[rank - 2];
    head_dim = qd[rank - 1];
    length = k.dimensions()[rank - 3];
  }
};

ffi::Error ForwardImpl(ffi::ThreadPool pool, F32 q, F32 k, F32 v, S32 positions,
                       ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> lse) {
  const Shape shape(q, k);
  return with_sizes(shape.head_dim, shape.length, [&]<int K, int KB>() {
    forward<K, KB>(pool, q.typed_data(), k.typed_data(), v.typed_data(), positions.typed_data(),
               out->typed_data(), lse->typed_data(), shape.batch, shape.queries, shape.heads,
               shape.length);
  });
}

ffi::Error BackwardImpl(ffi::ThreadPool pool, F32 q, F32 k, F32 v, S32 positions, F32 out,
                        F32 lse, F32 dout, ffi::ResultBuffer<ffi::F32> dq,
                        ffi::ResultBuffer<ffi::F32> dk, ffi::ResultBuffer<ffi::F32> dv) {
  const Shape shape(q, k);
  return with_sizes(shape.head_dim, shape.length, [&]<int K, int KB>() {
    backward<K, KB>(pool, q.typed_data(), k.typed_data(), v.typed_data(), positions.typed_data(),
                out.typed_data(), lse.typed_data(), dout.typed_data(), dq->typed_data(),
                dk->typed_data(), dv->typed_data(), shape.batch, shape.queries, shape.heads,
                shape.length);
  });
}

ffi::Error RaggedForwardImpl(ffi::ThreadPool pool, F32 q, F32 k, F32 v, S32 positions,
                             S32 row_starts, ffi::ResultBuffer<ffi::F32> out,
                             ffi::ResultBuffer<ffi::F32> lse) {
  const auto qd = q.dimensions(), kd = k.dimensions();  // q [T, H, K], k [B, N, H, K]
  const int64_t batch = kd[0], length = kd[1];
  if (row_starts.element_count() != static_cast<size_t>(batch) + 1)
    return ffi::Error::InvalidArgument("row_starts must have batch + 1 entries");
  const int32_t* starts = row_starts.typed_data();
  bool ascending = starts[0] == 0 && starts[batch] <= qd[0];
  for (int64_t b = 0; b < batch; ++b) ascending = ascending && starts[b] <= starts[b + 1];
  if (!ascending)
    return ffi::Error::InvalidArgument("row_starts must ascend from 0 to at most the query count");
  return with_sizes(qd[2], length, [&]<int K, int KB>() {
    ragged_forward<K, KB>(pool, q.typed_data(), k.typed_data(), v.typed_data(),
                          positions.typed_data(), row_starts.typed_data(), out->typed_data(),
                          lse->typed_data(), batch, qd[0], qd[1], length);
  });
}

// The arguments every entry point starts with: the thread pool, then q, k, v and q_positions.
auto bind_attention() {
  return ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<S32>();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AniraAttentionForward, ForwardImpl,
                              bind_attention()  // q, k, v [B, N, H, K], q_positions [B, S]
                                  .Ret<F32>()   // out
                                  .Ret<F32>()   // logsumexp
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(AniraAttentionBackward, BackwardImpl,
                              bind_attention()
                                  .Arg<F32>()  // out
                                  .Arg<F32>()  // logsumexp
                                  .Arg<F32>()  // d out
                                  .Ret<F32>()  // d q
                                  .Ret<F32>()  // d k
                                  .Ret<F32>()  // d v
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(AniraRaggedAttentionForward, RaggedForwardImpl,
                              bind_attention()  // q [T, H, K], k, v [B, N, H, K], q_positions [T]
                                  .Arg<S32>()   // row_starts [B + 1]
                                  .Ret<F32>()   // out [T, H, K]
                                  .Ret<F32>()   // logsumexp [T, H]
);
