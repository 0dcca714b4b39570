// Native probe loops of recis.ops.IdMapper (linear probing, Fibonacci hashing).
// The table layout is IdMapper's numpy arrays, shared without copies:
//   slots int32 [S] (-1 empty, -2 deleted, else tag << rbits | row), row_key int64 [C].
// A slot's low rbits bits are its row; the 31 - rbits bits above them are a tag of
// the key (a second multiplicative hash), so a probe reads row_key (a cache miss
// per occupied slot) only when the tags agree: that is what lets the table run at
// a high load factor (fewer bytes per row) without long probes costing misses.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include "task_pool.h"

#include <algorithm>
#include <type_traits>
#include <unordered_map>
#include <vector>

namespace {
constexpr uint64_t kFib = 0x9E3779B97F4A7C15ULL;
constexpr int32_t kEmpty = -1;
constexpr int32_t kTomb = -2;

// Home slot of a key among n slots: the top 32 bits of its Fibonacci hash scaled
// to [0, n) (multiply-shift), so the slot count need not be a power of two.
inline uint64_t home(uint64_t key, uint64_t n) { return (((key * kFib) >> 32) * n) >> 32; }
inline uint64_t next_slot(uint64_t p, uint64_t n) { return p + 1 == n ? 0 : p + 1; }

constexpr uint64_t kTag = 0xC2B2AE3D27D4EB4FULL;
// A key's tag, already shifted above the row bits (0 when rows need all 31 bits).
inline int32_t tag_of(uint64_t key, int64_t rbits) {
  const int64_t tbits = 31 - rbits;
  return tbits > 0 ? static_cast<int32_t>((key * kTag) >> (64 - tbits)) << rbits : 0;
}
inline int32_t row_mask(int64_t rbits) {
  return rbits >= 31 ? 0x7FFFFFFF : static_cast<int32_t>((1U << rbits) - 1);
}
}  // namespace

// Row (or slot position if want_pos) of each key, -1 where absent. When
// row_last is non-empty, rows found get row_last[row] = step (LRU/TTL touch).
torch::Tensor find(torch::Tensor slots, torch::Tensor row_key, torch::Tensor keys, bool want_pos,
                   torch::Tensor row_last, int64_t step, int64_t rbits) {
  const uint64_t ns = static_cast<uint64_t>(slots.numel());
  const int64_t n = keys.numel();
  auto out = torch::empty({n}, torch::kInt64);
  const int32_t* s = slots.data_ptr<int32_t>();
  const int64_t* rk = row_key.data_ptr<int64_t>();
  const int64_t* k = keys.data_ptr<int64_t>();
  int64_t* o = out.data_ptr<int64_t>();
  int32_t* last = row_last.numel() ? row_last.data_ptr<int32_t>() : nullptr;
  const int32_t st = static_cast<int32_t>(step);
  const int32_t mask = row_mask(rbits);
  at::parallel_for(0, n, 8192, [&](int64_t b, int64_t e) {
    // slots, row_key and row_last are MBs per table and each key's probe
    // touches one random line of each: prefetch the slot of key i + 2A and
    // the row_key / row_last lines of key i + A so the misses overlap
    constexpr int64_t kA = 16;
    for (int64_t i = b; i < e; ++i) {
      if (i + 2 * kA < e) {
        __builtin_prefetch(s + home(static_cast<uint64_t>(k[i + 2 * kA]), ns));
      }
      if (i + kA < e) {
        const uint64_t ka = static_cast<uint64_t>(k[i + kA]);
        const int32_t v = s[home(ka, ns)];
        if (v >= 0 && (v & ~mask) == tag_of(ka, rbits)) {
          __builtin_prefetch(rk + (v & mask));
          if (last) __builtin_prefetch(last + (v & mask), 1);
        }
      }
      const uint64_t key = static_cast<uint64_t>(k[i]);
      const int32_t tag = tag_of(key, rbits);
      uint64_t p = home(key, ns);
      int64_t r = -1;
      for (;;) {
        const int32_t v = s[p];
        if (v == kEmpty) break;
        if (v >= 0 && (v & ~mask) == tag && static_cast<uint64_t>(rk[v & mask]) == key) {
          r = want_pos ? static_cast<int64_t>(p) : (v & mask);
          if (last) last[v & mask] = st;  // same value from every thread: a benign race
          break;
        }
        p = next_slot(p, ns);
      }
      o[i] = r;
    }
  });
  return out;
}

// Insert distinct keys known to be absent at rows; returns how many deleted
// slots were reused.
int64_t insert(torch::Tensor slots, torch::Tensor row_key, torch::Tensor keys, torch::Tensor rows,
               int64_t rbits) {
  const uint64_t ns = static_cast<uint64_t>(slots.numel());
  int32_t* s = slots.data_ptr<int32_t>();
  int64_t* rk = row_key.data_ptr<int64_t>();
  const int64_t* k = keys.data_ptr<int64_t>();
  const int64_t* r = rows.data_ptr<int64_t>();
  int64_t reused = 0;
  for (int64_t i = 0; i < keys.numel(); ++i) {
    const uint64_t key = static_cast<uint64_t>(k[i]);
    rk[r[i]] = k[i];
    uint64_t p = home(key, ns);
    while (s[p] >= 0) p = next_slot(p, ns);
    reused += s[p] == kTomb;
    s[p] = tag_of(key, rbits) | static_cast<int32_t>(r[i]);
  }
  return reused;
}

// One table's share of a find-or-insert call: the table (slots, row_key,
// row_last), the keys and where the free rows come from (the recycled rows
// first, then next_unused, next_unused + 1, ...).
struct MapJob {
  int32_t* s;
  int64_t* rk;
  const int64_t* k;
  int64_t n;
  uint64_t ns;  // slots
  int64_t rbits;  // row bits of a slot (the tag is above them)
  int32_t mask;
  int32_t* last;
  const int64_t* hint;  // rows found ahead (-1: probe), or nullptr
  const int32_t* recycled;
  int64_t n_recycled, next_unused;
  int64_t* out;
  int64_t taken = 0, reused = 0;
};

MapJob make_job(torch::Tensor slots, torch::Tensor row_key, torch::Tensor keys,
                torch::Tensor row_last, torch::Tensor recycled, int64_t next_unused, int64_t n_free,
                int64_t rbits, torch::Tensor out, torch::Tensor hint) {
  TORCH_CHECK(keys.numel() <= n_free, "find_or_insert: more ids than free rows");
  const bool hinted = hint.defined() && hint.numel() > 0;
  TORCH_CHECK(!hinted || hint.numel() == keys.numel(),
              "find_or_insert: ", hint.numel(), " hints for ", keys.numel(), " keys");
  MapJob j;
  j.s = slots.data_ptr<int32_t>();
  j.rk = row_key.data_ptr<int64_t>();
  j.k = keys.data_ptr<int64_t>();
  j.n = keys.numel();
  j.ns = static_cast<uint64_t>(slots.numel());
  j.rbits = rbits;
  j.mask = row_mask(rbits);
  j.last = row_last.numel() ? row_last.data_ptr<int32_t>() : nullptr;
  j.hint = hinted ? hint.data_ptr<int64_t>() : nullptr;
  j.recycled = recycled.numel() ? recycled.data_ptr<int32_t>() : nullptr;
  j.n_recycled = recycled.numel();
  j.next_unused = next_unused;
  j.out = out.data_ptr<int64_t>();
  return j;
}

// Insert the keys find() missed, in the order they occur: the j-th new
// distinct key takes the j-th free row at once (so a repeat later in the batch
// finds it as an ordinary row); a deleted slot met on the way is reused.
// Inserting one by one in this order gives the same rows.
void insert_misses(MapJob& j, int32_t st) {
  for (int64_t i = 0; i < j.n; ++i) {
    if (j.out[i] >= 0) continue;
    const uint64_t key = static_cast<uint64_t>(j.k[i]);
    const int32_t tag = tag_of(key, j.rbits);
    uint64_t p = home(key, j.ns);
    int64_t tomb = -1, r = -1;
    for (;;) {
      const int32_t v = j.s[p];
      if (v == kEmpty) break;
      if (v == kTomb) {
        if (tomb < 0) tomb = static_cast<int64_t>(p);
      } else if ((v & ~j.mask) == tag && static_cast<uint64_t>(j.rk[v & j.mask]) == key) {
        r = v & j.mask;  // inserted earlier in this batch
        break;
      }
      p = next_slot(p, j.ns);
    }
    if (r < 0) {
      r = j.taken < j.n_recycled ? j.recycled[j.taken] : j.next_unused + j.taken - j.n_recycled;
      const int64_t at = tomb >= 0 ? tomb : static_cast<int64_t>(p);
      j.s[at] = tag | static_cast<int32_t>(r);
      j.rk[r] = static_cast<int64_t>(key);
      if (j.last) j.last[r] = st;
      j.reused += tomb >= 0;
      ++j.taken;
    }
    j.out[i] = r;
  }
}

// The row of one key in a job's table, -1 when absent; a row found gets
// last[row] = st when the job stamps.
__attribute__((always_inline)) inline int64_t find_one(const MapJob& j, uint64_t key, int32_t st) {
  const int32_t tag = tag_of(key, j.rbits);
  uint64_t p = home(key, j.ns);
  for (;;) {
    const int32_t v = j.s[p];
    if (v == kEmpty) return -1;
    if (v >= 0 && (v & ~j.mask) == tag && static_cast<uint64_t>(j.rk[v & j.mask]) == key) {
      if (j.last) j.last[v & j.mask] = st;
      return v & j.mask;
    }
    p = next_slot(p, j.ns);
  }
}

// find() of one job over keys [b, e), without a parallel region of its own. With
// hints (rows a read-only probe found on this same, unchanged table), a hinted
// key is only stamped; the others are probed.
void find_range(MapJob& j, int64_t b, int64_t e, int32_t st) {
  constexpr int64_t kA = 16;
  if (j.hint) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t h = j.hint[i];
      if (h >= 0 && j.last) j.last[h] = st;
      j.out[i] = h >= 0 ? h : find_one(j, static_cast<uint64_t>(j.k[i]), st);
    }
    return;
  }
  for (int64_t i = b; i < e; ++i) {
    if (i + 2 * kA < e) {
      __builtin_prefetch(j.s + home(static_cast<uint64_t>(j.k[i + 2 * kA]), j.ns));
    }
    if (i + kA < e) {
      const uint64_t ka = static_cast<uint64_t>(j.k[i + kA]);
      const int32_t v = j.s[home(ka, j.ns)];
      if (v >= 0 && (v & ~j.mask) == tag_of(ka, j.rbits)) {
        __builtin_prefetch(j.rk + (v & j.mask));
        if (j.last) __builtin_prefetch(j.last + (v & j.mask), 1);
      }
    }
    j.out[i] = find_one(j, static_cast<uint64_t>(j.k[i]), st);
  }
}

// Runs the jobs. Enough tables for the threads: each thread takes whole tables, largest
// first, from a shared counter, so one step is one parallel region of a few large tasks,
// not a region per table, and a thread the kernel parks (a busy machine) holds up only the
// table it is on: the others take the rest. Fewer tables than threads: each table's find
// runs in parallel, its inserts serially. Each table is one job's alone: the results do
// not depend on which thread ran it.
void run_jobs(std::vector<MapJob>& jobs, int32_t st) {
  const int64_t t = static_cast<int64_t>(jobs.size());
  const int64_t p = at::get_num_threads();
  if (t < p || p == 1) {
    for (auto& j : jobs) {
      at::parallel_for(0, j.n, 8192, [&](int64_t b, int64_t e) { find_range(j, b, e, st); });
      insert_misses(j, st);
    }
    return;
  }
  std::vector<int64_t> order(t);
  for (int64_t i = 0; i < t; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return jobs[a].n > jobs[b].n; });
  recis::run_tasks(t, p, [&](const recis::Claim& claim) {
    for (int64_t k = claim(); k >= 0; k = claim()) {
      MapJob& j = jobs[order[k]];
      find_range(j, 0, j.n, st);
      insert_misses(j, st);
    }
  });
}

// Rows of keys, inserting the keys not found (at most n_free of them: the
// caller makes room first). New distinct keys take free rows in first-seen
// order: the recycled rows (int32) first, then next_unused, next_unused + 1...
// Rows found or given get row_last[row] = step when row_last is non-empty.
// Returns (rows int64 [n], rows taken, deleted slots reused).
std::tuple<torch::Tensor, int64_t, int64_t> find_or_insert(
    torch::Tensor slots, torch::Tensor row_key, torch::Tensor keys, torch::Tensor row_last,
    int64_t step, torch::Tensor recycled, int64_t next_unused, int64_t n_free, int64_t rbits) {
  auto out = torch::empty({keys.numel()}, torch::kInt64);
  std::vector<MapJob> jobs{
      make_job(slots, row_key, keys, row_last, recycled, next_unused, n_free, rbits, out, torch::Tensor())};
  run_jobs(jobs, static_cast<int32_t>(step));
  return {out, jobs[0].taken, jobs[0].reused};
}

// find_or_insert over several tables in one call (argument i of each list is
// table i's); returns (rows per table, rows taken per table, reused per table).
// hints: per table, empty or int64 [n] rows that find_many gave for these keys on
// the table as it is now (-1: not found), so only the keys without one are probed.
std::tuple<std::vector<torch::Tensor>, std::vector<int64_t>, std::vector<int64_t>>
find_or_insert_many(std::vector<torch::Tensor> slots, std::vector<torch::Tensor> row_key,
                    std::vector<torch::Tensor> keys, std::vector<torch::Tensor> row_last, int64_t step,
                    std::vector<torch::Tensor> recycled, std::vector<int64_t> next_unused,
                    std::vector<int64_t> n_free, std::vector<int64_t> rbits,
                    std::vector<torch::Tensor> hints) {
  const size_t t = keys.size();
  TORCH_CHECK(slots.size() == t && row_key.size() == t && row_last.size() == t &&
                  recycled.size() == t && hints.size() == t &&
                  next_unused.size() == t && n_free.size() == t && rbits.size() == t,
              "find_or_insert_many: lists of different lengths");
  std::vector<torch::Tensor> outs;
  std::vector<MapJob> jobs;
  for (size_t i = 0; i < t; ++i) {
    outs.push_back(torch::empty({keys[i].numel()}, torch::kInt64));
    jobs.push_back(make_job(slots[i], row_key[i], keys[i], row_last[i], recycled[i],
                            next_unused[i], n_free[i], rbits[i], outs.back(), hints[i]));
  }
  run_jobs(jobs, static_cast<int32_t>(step));
  std::vector<int64_t> taken, reused;
  for (const auto& j : jobs) {
    taken.push_back(j.taken);
    reused.push_back(j.reused);
  }
  return {outs, taken, reused};
}

// Rows of each table's keys, -1 where absent: a read-only probe (no stamps, no
// inserts) on the calling thread alone, with the GIL released: the training
// pipeline runs it in a background thread for the next batch while this one trains.
std::vector<torch::Tensor> find_many(std::vector<torch::Tensor> slots,
                                     std::vector<torch::Tensor> row_key,
                                     std::vector<torch::Tensor> keys, std::vector<int64_t> rbits) {
  const size_t t = keys.size();
  TORCH_CHECK(slots.size() == t && row_key.size() == t && rbits.size() == t,
              "find_many: lists of different lengths");
  std::vector<torch::Tensor> outs;
  const torch::Tensor none = torch::empty({0}, torch::kInt32);  // no row_last, no free rows
  for (size_t i = 0; i < t; ++i) {
    outs.push_back(torch::empty({keys[i].numel()}, torch::kInt64));
    MapJob j = make_job(slots[i], row_key[i], keys[i], none, none, 0, keys[i].numel(), rbits[i],
                        outs.back(), torch::Tensor());
    find_range(j, 0, j.n, 0);
  }
  return outs;
}

namespace {
__attribute__((always_inline)) inline uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// The row loop is built for several x86 levels and picked at load time (GCC's
// target_clones): with AVX-512 (x86-64-v4) its 64-bit multiplies and int64 -> double
// conversions are vector instructions (8 columns at a time), elsewhere they are
// scalar. Every level computes the same IEEE operations, so the values are
// bit for bit equal. (The x86-64-v3/v4 levels need GCC 11 and glibc's ifunc; other
// toolchains build the one baseline loop.)
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && \
    defined(__GLIBC__)
#define RECIS_ROW_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define RECIS_ROW_CLONES
#endif

// one id's initial vector: (2u - 1) * scale in double, rounded to float, with
// u = (splitmix64(x + col * M2) >> 11) * 2^-53 and x = splitmix64(id ^ salt)
RECIS_ROW_CLONES void id_uniform_row(float* __restrict o, uint64_t x, int64_t dim, double scale) {
  for (int64_t c = 0; c < dim; ++c) {
    const uint64_t z = splitmix64(x + static_cast<uint64_t>(c) * 0x94D049BB133111EBULL);
    // z >> 11 < 2^53: the signed conversion is exact (and has a vector form)
    const double u = static_cast<double>(static_cast<int64_t>(z >> 11)) * 0x1.0p-53;
    const double two_u = 2.0 * u;
    const double v = two_u - 1.0;
    o[c] = static_cast<float>(v * scale);
  }
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
  at::parallel_for(0, n, std::max<int64_t>(1, 32768 / std::max<int64_t>(dim, 1)), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      id_uniform_row(o + i * dim, splitmix64(static_cast<uint64_t>(k[i]) ^ sl), dim, scale);
    }
  });
  return out;
}

namespace {
template <typename W>
void init_table_rows(W* w, int64_t dim, const int64_t* rows, const int64_t* ids, int64_t n,
                     uint64_t salt, double scale) {
  std::vector<float> buf(std::is_same<W, float>::value ? 0 : dim);
  for (int64_t i = 0; i < n; ++i) {
    W* o = w + rows[i] * dim;
    if (scale == 0.0) {
      for (int64_t c = 0; c < dim; ++c) o[c] = W(0.0f);
      continue;
    }
    const uint64_t x = splitmix64(static_cast<uint64_t>(ids[i]) ^ salt);
    if constexpr (std::is_same<W, float>::value) {
      id_uniform_row(o, x, dim, scale);
    } else {  // float first, as the tensor path rounds
      id_uniform_row(buf.data(), x, dim, scale);
      for (int64_t c = 0; c < dim; ++c) o[c] = W(buf[c]);
    }
  }
}
}  // namespace

// Fresh rows of several tables in one parallel region (whole tables per
// thread): weights[t] (float or half, [rows, dim] contiguous) gets at rows[t]
// the per-id initial vectors of ids[t] (id_init_uniform's values; zeros when
// scales[t] == 0), and each float state tensor states[k] ([rows] or
// [rows, d], contiguous) of table state_table[k] gets 0 at those rows.
void init_rows_many(std::vector<torch::Tensor> weights, std::vector<torch::Tensor> rows,
                    std::vector<torch::Tensor> ids, std::vector<int64_t> salts,
                    std::vector<double> scales, std::vector<torch::Tensor> states,
                    std::vector<int64_t> state_table) {
  const int64_t t = static_cast<int64_t>(weights.size());
  TORCH_CHECK(rows.size() == weights.size() && ids.size() == weights.size() &&
                  salts.size() == weights.size() && scales.size() == weights.size() &&
                  state_table.size() == states.size(),
              "init_rows_many: lists of different lengths");
  for (int64_t i = 0; i < t; ++i) {
    TORCH_CHECK(weights[i].is_contiguous() && weights[i].dim() == 2, "init_rows_many: weights");
    TORCH_CHECK(weights[i].scalar_type() == torch::kFloat || weights[i].scalar_type() == torch::kHalf,
                "init_rows_many: float or half weights");
    TORCH_CHECK(rows[i].numel() == ids[i].numel(), "init_rows_many: rows and ids differ");
    if (rows[i].numel()) {
      const auto lo = rows[i].min().item<int64_t>(), hi = rows[i].max().item<int64_t>();
      TORCH_CHECK(lo >= 0 && hi < weights[i].size(0), "init_rows_many: row out of range");
    }
  }
  for (const auto& s : states) {
    TORCH_CHECK(s.is_contiguous() && s.scalar_type() == torch::kFloat && s.dim() >= 1,
                "init_rows_many: float contiguous states");
  }
  std::vector<std::vector<int64_t>> of_table(t);
  for (size_t k = 0; k < states.size(); ++k) {
    TORCH_CHECK(state_table[k] >= 0 && state_table[k] < t, "init_rows_many: state_table");
    TORCH_CHECK(states[k].size(0) == weights[state_table[k]].size(0), "init_rows_many: state rows");
    of_table[state_table[k]].push_back(static_cast<int64_t>(k));
  }
  // tables from a shared counter (not fixed halves): a parked thread holds up one table
  recis::run_tasks(t, at::get_num_threads(), [&](const recis::Claim& claim) {
    for (int64_t i = claim(); i >= 0; i = claim()) {
      const int64_t n = rows[i].numel(), dim = weights[i].size(1);
      const int64_t* r = rows[i].data_ptr<int64_t>();
      const int64_t* k = ids[i].data_ptr<int64_t>();
      const uint64_t salt = static_cast<uint64_t>(salts[i]);
      if (weights[i].scalar_type() == torch::kFloat) {
        init_table_rows(weights[i].data_ptr<float>(), dim, r, k, n, salt, scales[i]);
      } else {
        init_table_rows(weights[i].data_ptr<at::Half>(), dim, r, k, n, salt, scales[i]);
      }
      for (const int64_t s : of_table[i]) {
        float* p = states[s].data_ptr<float>();
        const int64_t width = states[s].numel() / std::max<int64_t>(states[s].size(0), 1);
        for (int64_t j = 0; j < n; ++j) std::fill(p + r[j] * width, p + (r[j] + 1) * width, 0.0f);
      }
    }
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("id_init_uniform", &id_init_uniform, "per-id uniform initial vectors",
        py::call_guard<py::gil_scoped_release>());
  m.def("find_or_insert", &find_or_insert, "rows of keys, inserting new ones",
        py::call_guard<py::gil_scoped_release>());
  m.def("find_or_insert_many", &find_or_insert_many, "find_or_insert over several tables",
        py::call_guard<py::gil_scoped_release>());
  m.def("init_rows_many", &init_rows_many, "fresh rows of several tables",
        py::call_guard<py::gil_scoped_release>());
  m.def("find_many", &find_many, "read-only find over several tables, one thread",
        py::call_guard<py::gil_scoped_release>());
  m.def("find", &find, "find rows of keys");
  m.def("insert", &insert, "insert absent keys");
}
