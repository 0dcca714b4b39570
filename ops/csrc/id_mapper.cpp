// Native probe loops of recis.ops.IdMapper (linear probing, Fibonacci hashing).
// The table layout is IdMapper's numpy arrays, shared without copies:
//   slots int32 [S] (row >= 0, -1 empty, -2 deleted), row_key int64 [C].
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <unordered_map>
#include <vector>

namespace {
constexpr uint64_t kFib = 0x9E3779B97F4A7C15ULL;
constexpr int32_t kEmpty = -1;
constexpr int32_t kTomb = -2;
}  // namespace

// Row (or slot position if want_pos) of each key, -1 where absent. When
// row_last is non-empty, rows found get row_last[row] = step (LRU/TTL touch).
torch::Tensor find(torch::Tensor slots, torch::Tensor row_key, torch::Tensor keys, int64_t shift,
                   int64_t mask, bool want_pos, torch::Tensor row_last, int64_t step) {
  const int64_t n = keys.numel();
  auto out = torch::empty({n}, torch::kInt64);
  const int32_t* s = slots.data_ptr<int32_t>();
  const int64_t* rk = row_key.data_ptr<int64_t>();
  const int64_t* k = keys.data_ptr<int64_t>();
  int64_t* o = out.data_ptr<int64_t>();
  int32_t* last = row_last.numel() ? row_last.data_ptr<int32_t>() : nullptr;
  const int32_t st = static_cast<int32_t>(step);
  at::parallel_for(0, n, 8192, [&](int64_t b, int64_t e) {
    // slots, row_key and row_last are MBs per table and each key's probe
    // touches one random line of each: prefetch the slot of key i + 2A and
    // the row_key / row_last lines of key i + A so the misses overlap
    constexpr int64_t kA = 16;
    for (int64_t i = b; i < e; ++i) {
      if (i + 2 * kA < e) {
        __builtin_prefetch(s + ((static_cast<uint64_t>(k[i + 2 * kA]) * kFib) >> shift));
      }
      if (i + kA < e) {
        const int32_t v = s[(static_cast<uint64_t>(k[i + kA]) * kFib) >> shift];
        if (v >= 0) {
          __builtin_prefetch(rk + v);
          if (last) __builtin_prefetch(last + v, 1);
        }
      }
      const uint64_t key = static_cast<uint64_t>(k[i]);
      uint64_t p = (key * kFib) >> shift;
      int64_t r = -1;
      for (;;) {
        const int32_t v = s[p];
        if (v == kEmpty) break;
        if (v >= 0 && static_cast<uint64_t>(rk[v]) == key) {
          r = want_pos ? static_cast<int64_t>(p) : v;
          if (last) last[v] = st;  // same value from every thread: a benign race
          break;
        }
        p = (p + 1) & static_cast<uint64_t>(mask);
      }
      o[i] = r;
    }
  });
  return out;
}

// Insert distinct keys known to be absent at rows; returns how many deleted
// slots were reused.
int64_t insert(torch::Tensor slots, torch::Tensor row_key, torch::Tensor keys, torch::Tensor rows,
               int64_t shift, int64_t mask) {
  int32_t* s = slots.data_ptr<int32_t>();
  int64_t* rk = row_key.data_ptr<int64_t>();
  const int64_t* k = keys.data_ptr<int64_t>();
  const int64_t* r = rows.data_ptr<int64_t>();
  int64_t reused = 0;
  for (int64_t i = 0; i < keys.numel(); ++i) {
    const uint64_t key = static_cast<uint64_t>(k[i]);
    rk[r[i]] = k[i];
    uint64_t p = (key * kFib) >> shift;
    while (s[p] >= 0) p = (p + 1) & static_cast<uint64_t>(mask);
    reused += s[p] == kTomb;
    s[p] = static_cast<int32_t>(r[i]);
  }
  return reused;
}

// Rows of keys, inserting the keys not found: the new distinct keys, in
// ascending uint64 order (as the numpy path's np.unique gives them), take the
// rows of free_rows in order. First a parallel find (which also touches the
// rows found); then one sequential pass over the misses, in which a new key is
// put in its slot as a provisional code -(3 + j) (j: first-seen index) so its
// repeats in the batch find it; then the new keys are sorted and get their
// rows. Rows found or given get row_last[row] = step when row_last is non-empty.
// Returns (rows int64 [n], rows taken from free_rows, deleted slots reused).
std::tuple<torch::Tensor, int64_t, int64_t> find_or_insert(
    torch::Tensor slots, torch::Tensor row_key, torch::Tensor keys, int64_t shift, int64_t mask,
    torch::Tensor row_last, int64_t step, torch::Tensor free_rows) {
  auto out = find(slots, row_key, keys, shift, mask, false, row_last, step);
  const int64_t n = keys.numel();
  int32_t* s = slots.data_ptr<int32_t>();
  int64_t* rk = row_key.data_ptr<int64_t>();
  const int64_t* k = keys.data_ptr<int64_t>();
  const int64_t* fr = free_rows.data_ptr<int64_t>();
  const int64_t n_free = free_rows.numel();
  int64_t* o = out.data_ptr<int64_t>();
  int32_t* last = row_last.numel() ? row_last.data_ptr<int32_t>() : nullptr;
  const int32_t st = static_cast<int32_t>(step);
  const uint64_t m = static_cast<uint64_t>(mask);
  std::vector<uint64_t> new_key;  // j-th new key (first-seen order)
  std::vector<int64_t> new_slot;  // and its slot
  std::vector<int64_t> miss;      // positions of the keys not found
  for (int64_t i = 0; i < n; ++i) {
    if (o[i] < 0) miss.push_back(i);
  }
  int64_t reused = 0;
  for (const int64_t i : miss) {
    const uint64_t key = static_cast<uint64_t>(k[i]);
    uint64_t p = (key * kFib) >> shift;
    int64_t tomb = -1, r = kEmpty;
    for (;;) {
      const int32_t v = s[p];
      if (v == kEmpty) break;
      if (v == kTomb) {
        if (tomb < 0) tomb = static_cast<int64_t>(p);
      } else if (v < 0 && new_key[-3 - v] == key) {  // rows >= 0 were checked by find
        r = v;
        break;
      }
      p = (p + 1) & m;
    }
    if (r == kEmpty) {
      const int64_t j = static_cast<int64_t>(new_key.size());
      TORCH_CHECK(j < n_free, "find_or_insert: more new ids than free rows");
      const int64_t at = tomb >= 0 ? tomb : static_cast<int64_t>(p);
      r = -3 - j;
      s[at] = static_cast<int32_t>(r);
      reused += tomb >= 0;
      new_key.push_back(key);
      new_slot.push_back(at);
    }
    o[i] = r;
  }
  const int64_t taken = static_cast<int64_t>(new_key.size());
  if (taken) {
    std::vector<int64_t> order(taken);
    for (int64_t j = 0; j < taken; ++j) order[j] = j;
    std::sort(order.begin(), order.end(),
              [&](int64_t a, int64_t b) { return new_key[a] < new_key[b]; });
    std::vector<int64_t> row_of(taken);
    for (int64_t rank = 0; rank < taken; ++rank) {
      const int64_t j = order[rank], r = fr[rank];
      row_of[j] = r;
      rk[r] = static_cast<int64_t>(new_key[j]);
      s[new_slot[j]] = static_cast<int32_t>(r);
      if (last) last[r] = st;
    }
    for (const int64_t i : miss) o[i] = row_of[-3 - o[i]];
  }
  return {out, taken, reused};
}

namespace {
inline uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}
}  // namespace

// float32 [n, dim] initial vectors uniform in (-scale, scale), each a fixed
// function of (salt, id, column): exactly recis.ops.hashing.id_uniform's
// u = (splitmix64(splitmix64(id ^ salt) + col * M2) >> 11) * 2^-53, then
// float32((2u - 1) * scale) in double, as the numpy code computes it.
torch::Tensor id_init_uniform(torch::Tensor ids, int64_t dim, int64_t salt, double scale) {
  const int64_t n = ids.numel();
  auto out = torch::empty({n, dim}, torch::kFloat);
  const int64_t* k = ids.data_ptr<int64_t>();
  float* o = out.data_ptr<float>();
  const uint64_t sl = static_cast<uint64_t>(salt);
  at::parallel_for(0, n, 256, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const uint64_t x = splitmix64(static_cast<uint64_t>(k[i]) ^ sl);
      for (int64_t c = 0; c < dim; ++c) {
        const uint64_t z = splitmix64(x + static_cast<uint64_t>(c) * 0x94D049BB133111EBULL);
        const double u = static_cast<double>(z >> 11) * 0x1.0p-53;
        const double two_u = 2.0 * u;
        const double v = two_u - 1.0;
        o[i * dim + c] = static_cast<float>(v * scale);
      }
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("id_init_uniform", &id_init_uniform, "per-id uniform initial vectors",
        py::call_guard<py::gil_scoped_release>());
  m.def("find_or_insert", &find_or_insert, "rows of keys, inserting new ones",
        py::call_guard<py::gil_scoped_release>());
  m.def("find", &find, "find rows of keys");
  m.def("insert", &insert, "insert absent keys");
}
