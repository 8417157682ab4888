// kvsaga._kvcore: the bookkeeping hot path in C++ (see docs/architecture.md, "C++ core").
//
// The twin of kvsaga/block_queue.py, pool.py, prefix.py and the hot loops of
// KVCacheManager (append_tokens, allocate_slots, decode_step). Python stays the reference:
// every method here behaves as its Python twin (same results, same errors, same observer
// calls in the same order); tests/test_core_parity.py runs both side by side.
//
// What stays Python objects, so that policies and the simulator read them unchanged:
// `BlockPool.block_hash` is a list of bytes|None, the manager's `block_owner` and
// `block_position` lists and the Session records. `refcount`, `state` and `generation` live
// in C++ arrays that Python sees as memoryviews (indexing gives ints, as the lists did).
// Misuse that the Python twin would silently corrupt state with (releasing a free block,
// evicting an active one, an id out of range) raises here and changes nothing.

#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "key_table.h"
#include "queue.h"
#include "sha256.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace kvcore {

enum : int32_t { kFree = 0, kActive = 1, kCached = 2 };

// kvsaga.errors' classes, looked up once at import.
struct Errors {
  nb::object invalid, unknown, out_of_blocks;
};
static Errors* g_errors = nullptr;

[[noreturn]] static void throw_current() { throw nb::python_error(); }

[[noreturn]] static void raise_instance(const nb::object& cls, const nb::object& inst) {
  PyErr_SetObject(cls.ptr(), inst.ptr());
  throw_current();
}

static nb::object steal_or_throw(PyObject* o) {
  if (!o) throw_current();
  return nb::steal(o);
}

// -- id lists -----------------------------------------------------------------------------

// Reads a sequence of block ids into `out`, each checked against [0, n).
static void read_ids(nb::handle seq, int32_t n, std::vector<int32_t>& out) {
  nb::object fast = steal_or_throw(PySequence_Fast(seq.ptr(), "block ids must be a sequence"));
  Py_ssize_t k = PySequence_Fast_GET_SIZE(fast.ptr());
  PyObject** items = PySequence_Fast_ITEMS(fast.ptr());
  out.resize(k);
  for (Py_ssize_t i = 0; i < k; ++i) {
    long v = PyLong_AsLong(items[i]);
    if (v == -1 && PyErr_Occurred()) throw_current();
    if (v < 0 || v >= n) {
      PyErr_Format(PyExc_IndexError, "block id %ld out of range [0, %d)", v, n);
      throw_current();
    }
    out[i] = static_cast<int32_t>(v);
  }
}

// Python ints for block ids 0..n-1 of the largest pool or queue made so far: handing out a
// block id is then a reference, not an allocation (ints above 256 are not cached by Python).
static std::vector<PyObject*>* g_ids = new std::vector<PyObject*>();

static void reserve_ids(int32_t n) {
  g_ids->reserve(n);
  while (g_ids->size() < static_cast<size_t>(n)) {
    PyObject* o = PyLong_FromSize_t(g_ids->size());
    if (!o) throw_current();
    g_ids->push_back(o);
  }
}

static PyObject* id_object(int32_t b) {
  return static_cast<size_t>(b) < g_ids->size() ? Py_NewRef((*g_ids)[b]) : PyLong_FromLong(b);
}

static nb::list to_list(const int32_t* ids, size_t k) {
  PyObject* l = PyList_New(static_cast<Py_ssize_t>(k));
  if (!l) throw_current();
  for (size_t i = 0; i < k; ++i) PyList_SET_ITEM(l, i, id_object(ids[i]));
  return nb::steal<nb::list>(l);
}

// -- BlockQueue ---------------------------------------------------------------------------

// Python-facing intrusive queue (the policies' orders). Checks what the raw queue assumes.
class PyQueue {
 public:
  explicit PyQueue(int32_t capacity) : q_(check_capacity(capacity)) { reserve_ids(capacity); }

  IntrusiveQueue& raw() { return q_; }
  int64_t size() const { return q_.size(); }

  bool contains(int64_t b) const { return b >= 0 && b < q_.capacity() && q_.contains(b); }

  nb::list items() const {
    std::vector<int32_t> out;
    out.reserve(q_.size());
    for (int32_t b = q_.first(); b != q_.end(); b = q_.after(b)) out.push_back(b);
    return to_list(out.data(), out.size());
  }

  void push(int64_t b) {
    check_id(b);
    if (q_.contains(b)) raise_linked(b);
    q_.push(static_cast<int32_t>(b));
  }

  void push_many(nb::handle ids) {
    read_ids(ids, q_.capacity(), buf_);
    check_batch(true);
    for (int32_t b : buf_) q_.push(b);
  }

  void remove(int64_t b) {
    check_id(b);
    if (!q_.contains(b)) raise_unlinked(b);
    q_.remove(static_cast<int32_t>(b));
  }

  void remove_many(nb::handle ids) {
    read_ids(ids, q_.capacity(), buf_);
    check_batch(false);
    for (int32_t b : buf_) q_.remove(b);
  }

  int64_t peek() const { return q_.size() ? q_.first() : -1; }

  nb::list head(int64_t count) const {
    std::vector<int32_t> out;
    int64_t k = std::max<int64_t>(0, std::min<int64_t>(count, q_.size()));
    out.reserve(k);
    int32_t b = q_.first();
    for (int64_t i = 0; i < k; ++i, b = q_.after(b)) out.push_back(b);
    return to_list(out.data(), out.size());
  }

  int64_t pop() {
    if (!q_.size()) throw nb::index_error("pop from an empty BlockQueue");
    return q_.pop();
  }

  nb::list pop_many(int64_t count) {
    if (count < 0 || count > q_.size()) {
      PyErr_Format(PyExc_ValueError, "pop_many(%lld) on a queue of %lld", (long long)count,
                   (long long)q_.size());
      throw_current();
    }
    buf_.resize(count);
    for (int64_t i = 0; i < count; ++i) buf_[i] = q_.pop();
    return to_list(buf_.data(), buf_.size());
  }

 private:
  static int32_t check_capacity(int64_t c) {
    if (c < 0 || c > (1 << 30)) throw nb::value_error("BlockQueue capacity out of range");
    return static_cast<int32_t>(c);
  }
  void check_id(int64_t b) const {
    if (b < 0 || b >= q_.capacity()) {
      PyErr_Format(PyExc_IndexError, "block id %lld out of range [0, %d)", (long long)b,
                   q_.capacity());
      throw_current();
    }
  }
  [[noreturn]] static void raise_linked(int32_t b) {
    PyErr_Format(PyExc_ValueError, "block %d is already queued", b);
    throw_current();
  }
  [[noreturn]] static void raise_unlinked(int32_t b) {
    PyErr_Format(PyExc_ValueError, "block %d is not queued", b);
    throw_current();
  }
  // Every id in buf_ once, and unlinked (push) or linked (remove): checked before any
  // change, so a bad batch changes nothing.
  void check_batch(bool push) {
    marks_.resize(q_.capacity(), 0);
    size_t i = 0;
    bool ok = true;
    for (; i < buf_.size(); ++i) {
      int32_t b = buf_[i];
      if (marks_[b]++ || q_.contains(b) == push) {
        ok = false;
        break;
      }
    }
    for (size_t j = 0; j < buf_.size() && j <= i; ++j) marks_[buf_[j]] = 0;
    if (ok) return;
    if (q_.contains(buf_[i]) == push) push ? raise_linked(buf_[i]) : raise_unlinked(buf_[i]);
    PyErr_Format(PyExc_ValueError, "block %d appears twice", buf_[i]);
    throw_current();
  }

  IntrusiveQueue q_;
  std::vector<int32_t> buf_;
  std::vector<uint8_t> marks_;
};

// -- BlockPool ----------------------------------------------------------------------------

// An int array in a bytearray that Python sees as a writable memoryview of `fmt`.
template <class T>
struct SharedArray {
  nb::object view;
  T* data = nullptr;
  SharedArray(size_t n, const char* fmt) {
    nb::object ba = steal_or_throw(
        PyByteArray_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(n * sizeof(T))));
    data = reinterpret_cast<T*>(PyByteArray_AS_STRING(ba.ptr()));
    std::memset(data, 0, n * sizeof(T));
    // The memoryview holds an export of the bytearray, which therefore never moves.
    view = steal_or_throw(PyMemoryView_FromObject(ba.ptr())).attr("cast")(fmt);
  }
};

static int32_t check_num_blocks(nb::handle num_blocks) {
  PyObject* o = num_blocks.ptr();
  long long v = -1;
  if (PyLong_Check(o) && !PyBool_Check(o)) {
    int overflow = 0;
    v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow) v = -1;
  }
  if (v < 1 || v > (1 << 30)) {
    PyErr_Format(g_errors->invalid.ptr(), "num_blocks must be a positive int, got %R", o);
    throw_current();
  }
  return static_cast<int32_t>(v);
}

class Pool {
 public:
  Pool(nb::handle num_blocks, std::string tier)
      : n(check_num_blocks(num_blocks)),
        tier(std::move(tier)),
        ref(n, "i"),
        state(n, "i"),
        gen(n, "q"),
        free_q_(n),
        scratch_(n, 0),
        cached_at_(n, 0.0) {
    reserve_ids(n);
    block_hash = steal_or_throw(PyList_New(n));
    for (int32_t b = 0; b < n; ++b) {
      PyList_SET_ITEM(block_hash.ptr(), b, Py_NewRef(Py_None));
      free_q_.push(b);
    }
  }

  const int32_t n;
  const std::string tier;
  SharedArray<int32_t> ref, state;
  SharedArray<int64_t> gen;
  nb::object block_hash;  // list: bytes | None per block
  int64_t num_cached = 0;
  // Cache residence, for a simulator's usage metrics: `clock` is the time its owner says
  // it is; `reused_s` adds, for each CACHED block a hit reclaims, in order, the time since
  // it became CACHED.
  double clock = 0.0;
  double reused_s = 0.0;

  int64_t num_free() const { return free_q_.size(); }
  int64_t num_active() const { return n - free_q_.size() - num_cached; }
  int64_t num_available() const { return free_q_.size() + num_cached; }

  nb::list free_ids() const {
    std::vector<int32_t> out;
    for (int32_t b = free_q_.first(); b != free_q_.end(); b = free_q_.after(b)) out.push_back(b);
    return to_list(out.data(), out.size());
  }

  // -- observer -------------------------------------------------------------------------
  nb::object observer() const { return observer_; }

  void set_observer(nb::object obs) {
    nb::object one_c = obs.attr("block_cached"), one_u = obs.attr("block_uncached");
    nb::object many_c = nb::getattr(obs, "blocks_cached", nb::none());
    nb::object many_u = nb::getattr(obs, "blocks_uncached", nb::none());
    observer_ = obs;
    one_cached_ = one_c;
    one_uncached_ = one_u;
    many_cached_ = nb::bool_(many_c) ? many_c : nb::object();
    many_uncached_ = nb::bool_(many_u) ? many_u : nb::object();
  }

  // -- transitions (the Python twin's API) ----------------------------------------------
  [[noreturn]] void raise_out_of_blocks(int64_t needed, int64_t available) const {
    raise_instance(g_errors->out_of_blocks,
                   g_errors->out_of_blocks(needed, available, nb::str(tier.c_str())));
  }

  nb::list allocate(int64_t count) {
    if (count < 0) throw nb::value_error("allocate: count must be >= 0");
    if (count > free_q_.size()) raise_out_of_blocks(count, free_q_.size());
    PyObject* l = PyList_New(static_cast<Py_ssize_t>(count));
    if (!l) throw_current();
    nb::list out = nb::steal<nb::list>(l);
    for (int64_t i = 0; i < count; ++i) {
      int32_t b;
      take(1, &b);
      PyList_SET_ITEM(out.ptr(), i, id_object(b));
    }
    return out;
  }

  void acquire_many(nb::handle ids) {
    read_ids(ids, n, buf_);
    for (int32_t b : buf_)
      if (state.data[b] == kFree) raise_state(b, "acquire_many takes active or cached blocks");
    acquire(buf_.data(), buf_.size());
  }

  void release_many(nb::handle ids, int64_t keep_unhashed) {
    read_ids(ids, n, buf_);
    check_releasable(buf_.data(), buf_.size());
    release(buf_.data(), buf_.size(), keep_unhashed);
  }

  nb::list evict_many(nb::handle ids) {
    read_ids(ids, n, buf_);
    size_t k = buf_.size();
    size_t i = 0;
    const char* why = nullptr;
    for (; i < k; ++i) {
      int32_t b = buf_[i];
      if (state.data[b] != kCached) why = "evict_many takes cached blocks";
      else if (scratch_[b]++) why = "evict_many got it twice";
      if (why) break;
    }
    for (size_t j = 0; j < k && j <= i; ++j) scratch_[buf_[j]] = 0;
    if (why) raise_state(buf_[i], why);
    PyObject* hashes = PyList_New(static_cast<Py_ssize_t>(k));
    if (!hashes) throw_current();
    nb::list out = nb::steal<nb::list>(hashes);
    for (size_t j = 0; j < k; ++j) PyList_SET_ITEM(hashes, j, free_cached(buf_[j]));
    num_cached -= static_cast<int64_t>(k);
    notify(false, buf_.data(), k);
    return out;
  }

  // A CACHED block becomes FREE (at the free queue's tail); returns its old hash (a new
  // reference). The caller fixes num_cached and tells the observer.
  PyObject* free_cached(int32_t b) {
    PyObject* h = PyList_GET_ITEM(block_hash.ptr(), b);  // the reference moves to the caller
    PyList_SET_ITEM(block_hash.ptr(), b, Py_NewRef(Py_None));
    state.data[b] = kFree;
    free_q_.push(b);
    return h;
  }

  // -- internal, for the manager's hot loops (arguments already valid) ------------------
  void take(int64_t count, int32_t* out) {
    for (int64_t i = 0; i < count; ++i) {
      int32_t b = free_q_.pop();
      ref.data[b] = 1;
      state.data[b] = kActive;
      gen.data[b] += 1;
      out[i] = b;
    }
  }

  void acquire(const int32_t* ids, size_t k) {
    std::vector<int32_t>& reclaimed = buf2_;
    reclaimed.clear();
    for (size_t i = 0; i < k; ++i) {
      int32_t b = ids[i];
      if (state.data[b] == kActive) {
        ref.data[b] += 1;
      } else {
        state.data[b] = kActive;
        ref.data[b] = 1;
        reused_s += clock - cached_at_[b];
        reclaimed.push_back(b);
      }
    }
    if (!reclaimed.empty()) {
      num_cached -= static_cast<int64_t>(reclaimed.size());
      notify(false, reclaimed.data(), reclaimed.size());
    }
  }

 private:
  [[noreturn]] void raise_state(int32_t b, const char* why) const {
    static const char* names[] = {"free", "active", "cached"};
    PyErr_Format(PyExc_ValueError, "%s block %d: %s", names[state.data[b]], b, why);
    throw_current();
  }

  // Every id must be ACTIVE and named at most refcount times.
  void check_releasable(const int32_t* ids, size_t k) {
    size_t i = 0;
    bool ok = true;
    for (; i < k; ++i) {
      int32_t b = ids[i];
      if (state.data[b] != kActive || ++scratch_[b] > ref.data[b]) {
        ok = false;
        break;
      }
    }
    for (size_t j = 0; j < k && j <= i; ++j) scratch_[ids[j]] = 0;
    if (!ok) raise_state(ids[i], "release_many names it more often than it is referenced");
  }

  void release(const int32_t* ids, size_t k, int64_t keep_unhashed) {
    std::vector<int32_t>& to_cache = buf2_;
    to_cache.clear();
    PyObject** hashes = reinterpret_cast<PyListObject*>(block_hash.ptr())->ob_item;
    for (size_t i = 0; i < k; ++i) {
      int32_t b = ids[i];
      if (--ref.data[b]) continue;
      if (hashes[b] != Py_None || b == keep_unhashed) {
        state.data[b] = kCached;
        cached_at_[b] = clock;
        to_cache.push_back(b);
      } else {
        state.data[b] = kFree;
        free_q_.push(b);
      }
    }
    if (!to_cache.empty()) {
      num_cached += static_cast<int64_t>(to_cache.size());
      notify(true, to_cache.data(), to_cache.size());
    }
  }

  // Tells the observer, in one call when it takes batches, else block by block.
  void notify(bool cached, const int32_t* ids, size_t k) {
    const nb::object& many = cached ? many_cached_ : many_uncached_;
    if (many.is_valid()) {
      many(to_list(ids, k));
      return;
    }
    const nb::object& one = cached ? one_cached_ : one_uncached_;
    if (!one.is_valid()) return;
    std::vector<int32_t> copy(ids, ids + k);  // the callback may re-enter the pool
    for (int32_t b : copy) one(b);
  }

  IntrusiveQueue free_q_;
  std::vector<int32_t> scratch_;  // per-block counters for batch checks; all 0 between calls
  std::vector<int32_t> buf_, buf2_;
  std::vector<double> cached_at_;  // when each CACHED block became so (`clock` then)
  nb::object observer_ = nb::none(), one_cached_, one_uncached_, many_cached_, many_uncached_;

 public:
  // The observer (a policy) holds the manager, which holds this pool: a cycle that Python's
  // collector must see through (tp_traverse / tp_clear below).
  template <class F>
  void for_each_ref(F&& f) {
    for (nb::object* o : {&block_hash, &observer_, &one_cached_, &one_uncached_, &many_cached_,
                          &many_uncached_})
      f(*o);
  }
};

// -- hashing ------------------------------------------------------------------------------

// Reads token ids [first, last) of a sequence (a list or tuple of ints in [0, 2^32)) as
// native-endian uint32 into `out`, as the Python twin's array("I", ...) does.
static void read_tokens(PyObject* seq, Py_ssize_t first, Py_ssize_t last, uint8_t* out) {
  nb::object fast = steal_or_throw(PySequence_Fast(seq, "token ids must be a sequence"));
  PyObject** items = PySequence_Fast_ITEMS(fast.ptr());
  for (Py_ssize_t i = first; i < last; ++i) {
    unsigned long long v = PyLong_AsUnsignedLongLong(items[i]);
    if (v == static_cast<unsigned long long>(-1) && PyErr_Occurred()) throw_current();
    if (v > 0xffffffffull) throw nb::value_error("token id out of range [0, 2^32)");
    uint32_t t = static_cast<uint32_t>(v);
    std::memcpy(out + 4 * (i - first), &t, 4);
  }
}

static const uint8_t* digest_of(PyObject* h) {
  if (!PyBytes_Check(h) || PyBytes_GET_SIZE(h) != 32)
    throw nb::value_error("a parent hash must be 32 bytes");
  return reinterpret_cast<const uint8_t*>(PyBytes_AS_STRING(h));
}

class Hasher {
 public:
  explicit Hasher(int64_t block_size) : block_size(block_size) {
    if (block_size < 1 || block_size > (1 << 20)) throw nb::value_error("bad block_size");
    buf_.resize(32 + 4 * block_size);
  }
  const int64_t block_size;

  // Appends to `hashes` the hash of every full block of `token_ids` not yet hashed, up to
  // `num_blocks` hashes in all when it is not None.
  void extend(nb::handle hashes, nb::handle root, nb::handle token_ids,
              nb::handle num_blocks = nb::none()) {
    PyObject* hl = hashes.ptr();
    if (!PyList_Check(hl)) throw nb::type_error("hashes must be a list");
    Py_ssize_t have = PyList_GET_SIZE(hl);
    Py_ssize_t ntok = PySequence_Size(token_ids.ptr());
    if (ntok < 0) throw_current();
    Py_ssize_t full = ntok / block_size;
    if (!num_blocks.is_none()) full = std::min(full, nb::cast<Py_ssize_t>(num_blocks));
    if (full <= have) return;
    const uint8_t* parent = digest_of(have ? PyList_GET_ITEM(hl, have - 1) : root.ptr());
    std::memcpy(buf_.data(), parent, 32);
    std::vector<uint8_t> packed(4 * block_size * (full - have));
    read_tokens(token_ids.ptr(), have * block_size, full * block_size, packed.data());
    for (Py_ssize_t i = 0; i < full - have; ++i) {
      std::memcpy(buf_.data() + 32, packed.data() + 4 * block_size * i, 4 * block_size);
      uint8_t out[32];
      Sha256::digest(buf_.data(), buf_.size(), out);
      nb::object h = steal_or_throw(PyBytes_FromStringAndSize(reinterpret_cast<char*>(out), 32));
      if (PyList_Append(hl, h.ptr())) throw_current();
      std::memcpy(buf_.data(), out, 32);
    }
  }

 private:
  std::vector<uint8_t> buf_;
};

// -- PrefixIndex --------------------------------------------------------------------------

// False when `h` is not a 32-byte bytes object (no such key can be in the index).
static bool key_of(PyObject* h, Key& k) {
  if (!PyBytes_Check(h) || PyBytes_GET_SIZE(h) != 32) return false;
  std::memcpy(k.w, PyBytes_AS_STRING(h), 32);
  return true;
}

// A bytes digest spans the object's first ~70 bytes: two cache lines at most.
static void prefetch_object(PyObject* o) {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(o);
  __builtin_prefetch(reinterpret_cast<const char*>(o) + 64);
#else
  (void)o;
#endif
}

class Index {
 public:
  size_t size() const { return map_.size(); }

  nb::object get(nb::handle h) const {
    Key k;
    if (!key_of(h.ptr(), k)) return nb::none();
    int32_t b = map_.find(k);
    if (b < 0) return nb::none();
    return nb::int_(b);
  }

  bool insert_key(const Key& k, int32_t b) { return map_.insert(k, b); }
  bool erase_held(const Key& k, int32_t b) { return map_.erase_held(k, b); }
  // Fetch the table slot of digest `h` (a bytes object) ahead of a lookup or erase.
  void prefetch(PyObject* h) const {
    Key k;
    if (key_of(h, k)) map_.prefetch(k);
  }

  bool insert(nb::handle h, int64_t b) {
    Key k;
    if (!key_of(h.ptr(), k)) throw nb::type_error("a block hash must be 32 bytes");
    if (b < 0 || b > INT32_MAX) throw nb::index_error("block id out of range");
    return insert_key(k, static_cast<int32_t>(b));
  }

  void remove(nb::handle h) {
    Key k;
    if (!key_of(h.ptr(), k) || !map_.erase(k)) {
      PyErr_SetObject(PyExc_KeyError, h.ptr());
      throw_current();
    }
  }

  nb::list items() const {
    nb::list out;
    map_.for_each([&](const Key& k, int32_t b) {
      out.append(nb::make_tuple(nb::bytes(reinterpret_cast<const char*>(k.w), 32), b));
    });
    return out;
  }

  nb::list longest_prefix(nb::handle hashes, nb::handle limit) const {
    std::vector<int32_t> out;
    scan_prefix(hashes, limit, out);
    return to_list(out.data(), out.size());
  }

  // The blocks of the leading run of `hashes` (at most `limit`) found here, into `out`.
  void scan_prefix(nb::handle hashes, nb::handle limit, std::vector<int32_t>& out) const {
    nb::object fast = steal_or_throw(PySequence_Fast(hashes.ptr(), "hashes must be a sequence"));
    Py_ssize_t k = PySequence_Fast_GET_SIZE(fast.ptr());
    if (!limit.is_none()) k = std::min<Py_ssize_t>(k, nb::cast<Py_ssize_t>(limit));
    PyObject** items = PySequence_Fast_ITEMS(fast.ptr());
    out.clear();
    Key key;
    // Each hit reads its digest object and its table slot: both fetched ahead, as in
    // ManagerCore::unindex.
    constexpr Py_ssize_t kFar = 16, kNear = 8;
    for (Py_ssize_t i = 0; i < std::min(kFar, k); ++i) prefetch_object(items[i]);
    for (Py_ssize_t i = 0; i < std::min(kNear, k); ++i) prefetch(items[i]);
    for (Py_ssize_t i = 0; i < k; ++i) {
      if (i + kFar < k) prefetch_object(items[i + kFar]);
      if (i + kNear < k) prefetch(items[i + kNear]);
      if (!key_of(items[i], key)) break;
      int32_t b = map_.find(key);
      if (b < 0) break;
      out.push_back(b);
    }
  }

 private:
  KeyTable map_;
};

// -- the manager's hot loops --------------------------------------------------------------

// Works on the manager's own containers (sessions dict, block_owner/block_position lists,
// Session records), so that Python code reading them sees every change.
class ManagerCore {
 public:
  ManagerCore(nb::object pool, nb::object index, nb::object hasher, nb::dict sessions,
              nb::list block_owner, nb::list block_position, nb::object running,
              nb::object check_token_ids)
      : pool_obj_(pool),
        index_obj_(index),
        hasher_obj_(hasher),
        pool_(nb::cast<Pool*>(pool)),
        index_(nb::cast<Index*>(index)),
        hasher_(nb::cast<Hasher*>(hasher)),
        bs_(hasher_->block_size),
        sessions_(sessions),
        owner_(block_owner),
        position_(block_position),
        running_(running),
        check_token_ids_(check_token_ids) {
    if (nb::len(block_owner) != size_t(pool_->n) || nb::len(block_position) != size_t(pool_->n))
      throw nb::value_error("block_owner/block_position must have one entry per block");
    const std::pair<nb::object*, const char*> names[] = {
        {&n_state_, "state"},         {&n_token_ids_, "token_ids"},
        {&n_block_ids_, "block_ids"}, {&n_hashes_, "block_hashes"},
        {&n_computed_, "num_computed"}, {&n_root_, "root"}};
    for (const auto& [field, name] : names)
      *field = steal_or_throw(PyUnicode_InternFromString(name));
  }

  // KVCacheManager.append_tokens.
  void append_tokens(nb::handle sid, nb::handle token_ids, nb::handle max_model_len) {
    PyObject* s = running_session(sid.ptr());
    nb::object tokens = checked_tokens(token_ids);
    nb::object ctx = attr(s, n_token_ids_);
    Py_ssize_t n_new = PySequence_Fast_GET_SIZE(tokens.ptr());
    check_context(PyList_GET_SIZE(ctx.ptr()) + n_new, max_model_len);
    PyObject** items = PySequence_Fast_ITEMS(tokens.ptr());
    for (Py_ssize_t i = 0; i < n_new; ++i)
      if (PyList_Append(ctx.ptr(), items[i])) throw_current();
    hash_new_blocks(s, ctx.ptr());
  }

  // KVCacheManager.allocate_slots without its eviction: the slots, or (nothing changed)
  // the number of blocks the caller must evict first.
  nb::object allocate_slots(nb::handle sid, nb::handle num_tokens) {
    PyObject* s = running_session(sid.ptr());
    PyObject* n_obj = num_tokens.ptr();
    long long n = 0;
    if (PyLong_Check(n_obj) && !PyBool_Check(n_obj)) {
      int overflow = 0;
      n = PyLong_AsLongLongAndOverflow(n_obj, &overflow);
      if (overflow > 0) n = INT64_MAX / 4;
    }
    if (n <= 0) {
      PyErr_Format(g_errors->invalid.ptr(), "num_tokens must be a positive int, got %R", n_obj);
      throw_current();
    }
    Py_ssize_t start = num_computed(s);
    nb::object ctx = attr(s, n_token_ids_);
    Py_ssize_t ntok = PyList_GET_SIZE(ctx.ptr());
    if (start + n > ntok) {
      PyErr_Format(g_errors->invalid.ptr(),
                   "num_tokens %S exceeds the %zd tokens of session %R without slots "
                   "(append_tokens first)",
                   n_obj, ntok - start, sid.ptr());
      throw_current();
    }
    Py_ssize_t end = start + static_cast<Py_ssize_t>(n);
    nb::object table = attr(s, n_block_ids_);
    int64_t need = blocks_to_add(table.ptr(), end);
    if (int64_t evict = room_for(need)) return nb::int_(evict);
    nb::object slots = steal_or_throw(PyList_New(end - start));
    take_slots(s, sid.ptr(), table.ptr(), start, end, slots.ptr(), 0);
    return slots;
  }

  // KVCacheManager._victims_valid: `num_blocks` distinct CACHED blocks.
  bool victims_valid(nb::handle victims, Py_ssize_t num_blocks) {
    nb::object fast = steal_or_throw(PySequence_Fast(victims.ptr(), "victims must be a list"));
    Py_ssize_t k = PySequence_Fast_GET_SIZE(fast.ptr());
    if (k != num_blocks) return false;
    PyObject** items = PySequence_Fast_ITEMS(fast.ptr());
    ids_.resize(k);
    for (Py_ssize_t i = 0; i < k; ++i) {
      long b = PyLong_AsLong(items[i]);
      if (b == -1 && PyErr_Occurred()) throw_current();
      if (b < 0 || b >= pool_->n || pool_->state.data[b] != kCached) return false;
      ids_[i] = static_cast<int32_t>(b);
    }
    std::sort(ids_.begin(), ids_.end());
    return std::adjacent_find(ids_.begin(), ids_.end()) == ids_.end();
  }

  // KVCacheManager._evict's loops over checked victims: free them, unindex their hashes,
  // forget their owners.
  void evict_blocks(nb::handle victims) {
    nb::list hashes = pool_->evict_many(victims);
    read_ids(victims, pool_->n, ids_);
    unindex(reinterpret_cast<PyListObject*>(hashes.ptr())->ob_item, ids_.data(), ids_.size(),
            false);
  }

  // KVCacheManager._evict for a policy whose victims are the head of `queue` (its
  // `victim_queue`, which holds exactly the CACHED blocks): the same evictions as
  // choose_victims + evict_blocks, without a Python list per step. The queue loses the
  // blocks here, which is all that the policy's blocks_uncached would have done.
  void evict_head(PyQueue& queue, int64_t num_blocks) {
    IntrusiveQueue& q = queue.raw();
    if (q.capacity() != pool_->n || num_blocks > q.size() || num_blocks > pool_->num_cached) {
      PyErr_Format(PyExc_RuntimeError, "victim queue holds %lld blocks, %lld asked for",
                   (long long)q.size(), (long long)num_blocks);
      throw_current();
    }
    // Check first, so that a queue out of step with the pool changes nothing.
    ids_.resize(num_blocks);
    int32_t b = q.first();
    for (int64_t i = 0; i < num_blocks; ++i, b = q.after(b)) {
      if (pool_->state.data[b] != kCached) {
        PyErr_Format(PyExc_RuntimeError, "victim queue names block %d, which is not cached", b);
        throw_current();
      }
      ids_[i] = b;
    }
    held_.resize(num_blocks);
    for (int64_t i = 0; i < num_blocks; ++i) {
      q.pop();
      held_[i] = pool_->free_cached(ids_[i]);
    }
    pool_->num_cached -= num_blocks;
    unindex(held_.data(), ids_.data(), held_.size(), true);
  }

  // KVCacheManager._register_full_blocks (allocate_slots runs it; exposed for the benchmark).
  void register_full_blocks(nb::handle sid, Py_ssize_t first, Py_ssize_t last) {
    PyObject* s = running_session(sid.ptr());
    nb::object table = attr(s, n_block_ids_);
    nb::object hashes = attr(s, n_hashes_);
    if (first < 0 || last > PyList_GET_SIZE(table.ptr()) || last > PyList_GET_SIZE(hashes.ptr()))
      throw nb::index_error("register_full_blocks: range outside the table or its hashes");
    register_full(s, reinterpret_cast<PyListObject*>(table.ptr())->ob_item, first, last);
  }

  // kvsaga.manager._check_token_ids: a new list of the ids. The plain case (a list or tuple
  // of exact ints in range) is copied here; anything else goes through the Python twin,
  // for its checks and its errors.
  nb::object copy_token_ids(nb::handle token_ids) {
    PyObject* t = token_ids.ptr();
    if (!plain_token_ids(t)) return check_token_ids_(token_ids);
    Py_ssize_t k = PySequence_Fast_GET_SIZE(t);
    PyObject** items = PySequence_Fast_ITEMS(t);
    PyObject* l = PyList_New(k);
    if (!l) throw_current();
    for (Py_ssize_t i = 0; i < k; ++i) PyList_SET_ITEM(l, i, Py_NewRef(items[i]));
    return nb::steal(l);
  }

  // KVCacheManager.lookup's GPU hits, without a list of them: (how many leading `hashes`
  // are indexed, up to `limit`; how many of those blocks are CACHED).
  nb::tuple prefix_hits(nb::handle hashes, nb::handle limit) {
    index_->scan_prefix(hashes, limit, ids_);
    int64_t cached = 0;
    for (int32_t b : ids_) cached += pool_->state.data[b] == kCached;
    return nb::make_tuple(ids_.size(), cached);
  }

  // begin_step's prompt for a paused session whose context is `ctx` (a list the manager
  // owns): `ctx` becomes equal to `token_ids`, changed in place past their common prefix,
  // whose length is returned. Only the new tokens are checked and copied; a token equal to
  // the context's is the same object or an equal exact int (so it passed the checks once).
  // -1, nothing changed, when `token_ids` is not a plain list or tuple of ints in range:
  // the caller then copies them with the Python checks (and their errors).
  Py_ssize_t reopen_context(nb::handle ctx, nb::handle token_ids) {
    PyObject* t = token_ids.ptr();
    PyObject* c = ctx.ptr();
    if ((!PyList_CheckExact(t) && !PyTuple_CheckExact(t)) || !PyList_CheckExact(c)) return -1;
    Py_ssize_t k = PySequence_Fast_GET_SIZE(t);
    PyObject** items = PySequence_Fast_ITEMS(t);
    Py_ssize_t m = PyList_GET_SIZE(c);
    PyObject** old = reinterpret_cast<PyListObject*>(c)->ob_item;
    Py_ssize_t keep = 0, n = std::min(k, m);
    for (; keep < n; ++keep) {
      PyObject* a = items[keep];
      PyObject* b = old[keep];
      if (a == b) continue;
      if (!PyLong_CheckExact(a) || !PyLong_CheckExact(b)) break;
      int same = PyObject_RichCompareBool(a, b, Py_EQ);
      if (same < 0) throw_current();
      if (!same) break;
    }
    for (Py_ssize_t i = keep; i < k; ++i)
      if (!plain_token_id(items[i])) return -1;
    if (PyList_SetSlice(c, keep, m, nullptr)) throw_current();
    for (Py_ssize_t i = keep; i < k; ++i)
      if (PyList_Append(c, items[i])) throw_current();
    return keep;
  }

  // begin_step's loop over its hits: a block owned by another session is shared now, and
  // becomes plain cache (owner None).
  void disown_shared(nb::handle hits, nb::handle sid) {
    read_ids(hits, pool_->n, ids_);
    PyObject** owners = reinterpret_cast<PyListObject*>(owner_.ptr())->ob_item;
    for (int32_t b : ids_) {
      PyObject* o = owners[b];
      if (o == sid.ptr()) continue;
      int same = PyObject_RichCompareBool(o, sid.ptr(), Py_EQ);
      if (same < 0) throw_current();
      if (!same) {
        owners[b] = Py_NewRef(Py_None);
        Py_DECREF(o);
      }
    }
  }

  // KVCacheManager.decode_step without its eviction (see there).
  nb::object decode_step(nb::handle session_ids, nb::handle token_ids, nb::handle max_model_len) {
    nb::object tokens = checked_tokens(token_ids);
    PyObject* sid_seq = session_ids.ptr();
    if (!PyList_Check(sid_seq) && !PyTuple_Check(sid_seq)) {
      PyErr_Format(g_errors->invalid.ptr(), "session_ids must be a list or tuple, got %s",
                   Py_TYPE(sid_seq)->tp_name);
      throw_current();
    }
    nb::object sids = nb::borrow(sid_seq);
    Py_ssize_t k = PySequence_Fast_GET_SIZE(sids.ptr());
    if (k != PySequence_Fast_GET_SIZE(tokens.ptr())) {
      PyErr_Format(g_errors->invalid.ptr(), "decode_step got %zd session ids and %zd token ids",
                   k, PySequence_Fast_GET_SIZE(tokens.ptr()));
      throw_current();
    }
    PyObject** ids = PySequence_Fast_ITEMS(sids.ptr());
    PyObject** toks = PySequence_Fast_ITEMS(tokens.ptr());
    // Pass 1: check every session and count the blocks the batch needs; nothing changes.
    rows_.clear();
    seen_.assign(seen_size(k), nullptr);
    int64_t need = 0;
    for (Py_ssize_t i = 0; i < k; ++i) {
      PyObject* s = running_session(ids[i]);
      if (!mark_seen(s)) {
        PyErr_Format(g_errors->invalid.ptr(), "session %R appears twice in one decode step",
                     ids[i]);
        throw_current();
      }
      Row r{s, attr(s, n_token_ids_), attr(s, n_block_ids_), num_computed(s)};
      check_context(PyList_GET_SIZE(r.ctx.ptr()) + 1, max_model_len);
      need += blocks_to_add(r.table.ptr(), r.start + 1);
      rows_.push_back(std::move(r));
    }
    if (int64_t evict = room_for(need)) return nb::int_(evict);
    // Pass 2: append, hash, allocate, one slot each.
    nb::object slots = steal_or_throw(PyList_New(k));
    for (Py_ssize_t i = 0; i < k; ++i) {
      Row& r = rows_[i];
      if (PyList_Append(r.ctx.ptr(), toks[i])) throw_current();
      hash_new_blocks(r.s, r.ctx.ptr());
      take_slots(r.s, ids[i], r.table.ptr(), r.start, r.start + 1, slots.ptr(), i);
    }
    rows_.clear();
    return slots;
  }

 private:
  struct Row {
    PyObject* s;  // borrowed: the sessions dict holds it for the whole call
    nb::object ctx, table;
    Py_ssize_t start;
  };

  // The last step of an eviction, once the victims are FREE: their old `hashes` leave the
  // index (released here when `owned`) and their owners are forgotten. Per victim, two
  // cache misses dominate: its hash object and its index slot, whose address needs the key
  // from the object. Both are fetched ahead: the object kFar victims ahead, the slot kNear.
  void unindex(PyObject* const* hashes, const int32_t* ids, size_t k, bool owned) {
    constexpr size_t kFar = 16, kNear = 8;
    for (size_t i = 0; i < std::min(kFar, k); ++i) prefetch_object(hashes[i]);
    for (size_t i = 0; i < std::min(kNear, k); ++i) index_->prefetch(hashes[i]);
    PyObject** owners = reinterpret_cast<PyListObject*>(owner_.ptr())->ob_item;
    Key key;
    for (size_t i = 0; i < k; ++i) {
      if (i + kFar < k) prefetch_object(hashes[i + kFar]);
      if (i + kNear < k) index_->prefetch(hashes[i + kNear]);
      if (key_of(hashes[i], key)) index_->erase_held(key, ids[i]);
      if (owned) Py_DECREF(hashes[i]);
      PyObject* old = owners[ids[i]];
      owners[ids[i]] = Py_NewRef(Py_None);
      Py_DECREF(old);
    }
  }



  static nb::object attr(PyObject* o, const nb::object& name) {
    return steal_or_throw(PyObject_GetAttr(o, name.ptr()));
  }

  Py_ssize_t num_computed(PyObject* s) const {
    nb::object v = attr(s, n_computed_);
    Py_ssize_t n = PyLong_AsSsize_t(v.ptr());
    if (n == -1 && PyErr_Occurred()) throw_current();
    return n;
  }

  // The session, borrowed from the sessions dict; raises as KVCacheManager._running.
  PyObject* running_session(PyObject* sid) {
    PyObject* s = PyDict_GetItemWithError(sessions_.ptr(), sid);
    if (!s) {
      if (PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_TypeError)) throw_current();
        PyErr_Clear();
      }
      raise_instance(g_errors->unknown, g_errors->unknown(nb::handle(sid)));
    }
    nb::object st = attr(s, n_state_);
    if (!st.is(running_)) {
      PyErr_Format(g_errors->invalid.ptr(), "session %R has no open step (call begin_step)", sid);
      throw_current();
    }
    return s;
  }

  // A list or tuple of exact ints in [0, 2^32) as it is; anything else through the Python
  // twin's checker, which returns a list or raises the reference error.
  nb::object checked_tokens(nb::handle token_ids) {
    if (plain_token_ids(token_ids.ptr())) return nb::borrow(token_ids);
    return check_token_ids_(token_ids);
  }

  // Whether `t` is a list or tuple of exact ints in [0, 2^32): the case that needs no
  // Python, whose answer is the sequence itself.
  static bool plain_token_ids(PyObject* t) {
    if (!PyList_CheckExact(t) && !PyTuple_CheckExact(t)) return false;
    Py_ssize_t k = PySequence_Fast_GET_SIZE(t);
    PyObject** items = PySequence_Fast_ITEMS(t);
    for (Py_ssize_t i = 0; i < k; ++i)
      if (!plain_token_id(items[i])) return false;
    return true;
  }

  // An exact int in [0, 2^32).
  static bool plain_token_id(PyObject* o) {
    if (!PyLong_CheckExact(o)) return false;
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    return !overflow && v >= 0 && v <= 0xffffffffLL;
  }

  static void check_context(Py_ssize_t length, nb::handle max_model_len) {
    if (max_model_len.is_none()) return;
    Py_ssize_t limit = PyLong_AsSsize_t(max_model_len.ptr());
    if (limit == -1 && PyErr_Occurred()) throw_current();
    if (length > limit) {
      PyErr_Format(g_errors->invalid.ptr(), "context of %zd tokens exceeds max_model_len %S",
                   length, max_model_len.ptr());
      throw_current();
    }
  }

  // New blocks a table needs to cover `end` tokens (KVCacheManager._blocks_to_add).
  int64_t blocks_to_add(PyObject* table, Py_ssize_t end) const {
    int64_t total = (end + bs_ - 1) / bs_;
    if (total > pool_->n) {
      PyErr_Format(g_errors->invalid.ptr(),
                   "a context of %zd tokens needs %lld blocks; the pool has only %d", end,
                   (long long)total, pool_->n);
      throw_current();
    }
    return std::max<int64_t>(0, total - PyList_GET_SIZE(table));
  }

  // 0 when `need` blocks are free now; else the blocks to evict first; raises OutOfBlocks
  // when not even eviction makes room (KVCacheManager._make_room).
  int64_t room_for(int64_t need) const {
    if (need <= 0) return 0;
    if (need > pool_->num_available()) {
      raise_instance(g_errors->out_of_blocks,
                     g_errors->out_of_blocks(need, pool_->num_available()));
    }
    return need > pool_->num_free() ? need - pool_->num_free() : 0;
  }

  void hash_new_blocks(PyObject* s, PyObject* ctx) {
    nb::object hashes = attr(s, n_hashes_);
    if ((PyList_GET_SIZE(hashes.ptr()) + 1) * bs_ > PyList_GET_SIZE(ctx)) return;
    hasher_->extend(hashes, attr(s, n_root_), ctx);
  }

  // KVCacheManager._take_slots: blocks up to `end`, the slot ids of [start, end) written to
  // `out` (a new list) from index `at`, num_computed = end, and the blocks that became full
  // registered in the index.
  void take_slots(PyObject* s, PyObject* sid, PyObject* table, Py_ssize_t start, Py_ssize_t end,
                  PyObject* out, Py_ssize_t at) {
    Py_ssize_t have = PyList_GET_SIZE(table);
    Py_ssize_t total = (end + bs_ - 1) / bs_;
    if (total > have) {
      new_ids_.resize(total - have);
      pool_->take(total - have, new_ids_.data());
      for (Py_ssize_t i = have; i < total; ++i) {
        int32_t b = new_ids_[i - have];
        nb::object id = nb::steal(id_object(b));
        if (PyList_Append(table, id.ptr())) throw_current();
        PyList_SetItem(owner_.ptr(), b, Py_NewRef(sid));
        PyList_SetItem(position_.ptr(), b, id_object(static_cast<int32_t>(i)));
      }
    }
    PyObject** row = reinterpret_cast<PyListObject*>(table)->ob_item;
    PyObject** slot = reinterpret_cast<PyListObject*>(out)->ob_item + at;
    for (Py_ssize_t i = start / bs_; i * bs_ < end; ++i) {  // per block: its id, read once
      long long first = static_cast<long long>(PyLong_AsLong(row[i])) * bs_;
      for (Py_ssize_t pos = std::max(start, i * bs_); pos < std::min(end, (i + 1) * bs_); ++pos)
        *slot++ = steal_or_throw(PyLong_FromLongLong(first + pos % bs_)).release().ptr();
    }
    nb::object end_obj = steal_or_throw(PyLong_FromSsize_t(end));
    if (PyObject_SetAttr(s, n_computed_.ptr(), end_obj.ptr())) throw_current();
    if (end / bs_ > start / bs_) register_full(s, row, start / bs_, end / bs_);
  }

  // KVCacheManager._register_full_blocks.
  void register_full(PyObject* s, PyObject** row, Py_ssize_t first, Py_ssize_t last) {
    nb::object hashes = attr(s, n_hashes_);
    PyObject* block_hash = pool_->block_hash.ptr();
    PyObject** hs = reinterpret_cast<PyListObject*>(hashes.ptr())->ob_item;
    constexpr Py_ssize_t kAhead = 8;  // each insert's slot is a cache miss: fetch it ahead
    for (Py_ssize_t i = first; i < std::min(last, first + kAhead); ++i) index_->prefetch(hs[i]);
    for (Py_ssize_t i = first; i < last; ++i) {
      if (i + kAhead < last) index_->prefetch(hs[i + kAhead]);
      long b = PyLong_AsLong(row[i]);
      if (b < 0 || b >= pool_->n) throw nb::index_error("block table holds an invalid id");
      if (PyList_GET_ITEM(block_hash, b) != Py_None) continue;
      PyObject* h = PyList_GET_ITEM(hashes.ptr(), i);
      Key k;
      if (!key_of(h, k)) throw nb::type_error("a block hash must be 32 bytes");
      // Same content computed twice (two sessions at once): keep the first copy.
      if (index_->insert_key(k, static_cast<int32_t>(b)))
        PyList_SetItem(block_hash, b, Py_NewRef(h));
    }
  }

  static size_t seen_size(Py_ssize_t k) {
    size_t n = 16;
    while (n < size_t(2 * k)) n *= 2;
    return n;
  }

  // Open-addressing set of session pointers for decode_step's duplicate check.
  bool mark_seen(PyObject* s) {
    size_t mask = seen_.size() - 1;
    size_t i = (reinterpret_cast<uintptr_t>(s) >> 4) * 0x9E3779B97F4A7C15ull >> 20 & mask;
    while (seen_[i]) {
      if (seen_[i] == s) return false;
      i = (i + 1) & mask;
    }
    seen_[i] = s;
    return true;
  }

  nb::object pool_obj_, index_obj_, hasher_obj_;

 public:
  template <class F>
  void for_each_ref(F&& f) {
    for (nb::object* o : {&pool_obj_, &index_obj_, &hasher_obj_, &running_, &check_token_ids_})
      f(*o);
    f(sessions_);
    f(owner_);
    f(position_);
  }

 private:
  Pool* pool_;
  Index* index_;
  Hasher* hasher_;
  const int64_t bs_;
  nb::object sessions_;
  nb::object owner_, position_;
  nb::object running_, check_token_ids_;
  nb::object n_state_, n_token_ids_, n_block_ids_, n_hashes_, n_computed_, n_root_;
  std::vector<Row> rows_;
  std::vector<PyObject*> seen_;
  std::vector<int32_t> new_ids_, ids_;
  std::vector<PyObject*> held_;
};

}  // namespace kvcore

using namespace kvcore;

// Python's cycle collector: visit / drop the Python objects a C++ instance holds.
template <class T>
static int traverse(PyObject* self, visitproc visit, void* arg) {
  Py_VISIT(Py_TYPE(self));
  if (!nb::inst_ready(self)) return 0;
  int err = 0;
  nb::inst_ptr<T>(self)->for_each_ref([&](nb::handle o) {
    if (!err && o.ptr()) err = visit(o.ptr(), arg);
  });
  return err;
}

template <class T>
static int clear(PyObject* self) {
  if (nb::inst_ready(self))
    nb::inst_ptr<T>(self)->for_each_ref([](auto& o) { o = nb::none(); });
  return 0;
}

template <class T>
static PyType_Slot gc_slots[] = {{Py_tp_traverse, reinterpret_cast<void*>(traverse<T>)},
                                 {Py_tp_clear, reinterpret_cast<void*>(clear<T>)},
                                 {0, nullptr}};

NB_MODULE(_kvcore, m) {
  m.doc() = "kvsaga's bookkeeping core in C++ (the Python twins are the reference).";
  nb::module_ errors = nb::module_::import_("kvsaga.errors");
  g_errors = new Errors{errors.attr("InvalidRequest"), errors.attr("UnknownSession"),
                        errors.attr("OutOfBlocks")};

  m.def(
      "_sha256",
      [](nb::bytes data, bool portable) {
        uint8_t out[32];
        Sha256::digest(reinterpret_cast<const uint8_t*>(data.c_str()), data.size(), out, portable);
        return nb::bytes(reinterpret_cast<const char*>(out), 32);
      },
      "data"_a, "portable"_a, "SHA-256 of `data` (tests: both compression paths).");

  nb::class_<PyQueue>(m, "BlockQueue")
      .def(nb::init<int32_t>(), "capacity"_a)
      .def("__len__", &PyQueue::size)
      .def("__contains__", &PyQueue::contains)
      .def("__iter__", [](const PyQueue& q) { return nb::iter(q.items()); })
      .def("push", &PyQueue::push)
      .def("push_many", &PyQueue::push_many)
      .def("remove", &PyQueue::remove)
      .def("remove_many", &PyQueue::remove_many)
      .def("peek", &PyQueue::peek)
      .def("head", &PyQueue::head)
      .def("pop", &PyQueue::pop)
      .def("pop_many", &PyQueue::pop_many);

  nb::class_<Pool>(m, "BlockPool", nb::type_slots(gc_slots<Pool>))
      .def(nb::init<nb::handle, std::string>(), "num_blocks"_a.none(), "tier"_a = "gpu")
      .def_ro("num_blocks", &Pool::n)
      .def_ro("tier", &Pool::tier)
      .def_ro("num_cached", &Pool::num_cached)
      .def_prop_ro("num_free", &Pool::num_free)
      .def_prop_ro("num_active", &Pool::num_active)
      .def_prop_ro("num_available", &Pool::num_available)
      .def_prop_ro("refcount", [](Pool& p) { return p.ref.view; })
      .def_prop_ro("state", [](Pool& p) { return p.state.view; })
      .def_prop_ro("generation", [](Pool& p) { return p.gen.view; })
      .def_prop_ro("block_hash", [](Pool& p) { return p.block_hash; })
      .def_prop_rw("observer", &Pool::observer, &Pool::set_observer)
      .def_rw("clock", &Pool::clock)
      .def_rw("reused_s", &Pool::reused_s)
      .def("free_ids", &Pool::free_ids, "Free blocks, oldest first.")
      .def("allocate", &Pool::allocate, "count"_a)
      .def("acquire_many", &Pool::acquire_many, "block_ids"_a)
      .def("release_many", &Pool::release_many, "block_ids"_a, "keep_unhashed"_a = -1)
      .def("evict_many", &Pool::evict_many, "block_ids"_a);

  nb::class_<Hasher>(m, "BlockHasher")
      .def(nb::init<int64_t>(), "block_size"_a)
      .def_ro("block_size", &Hasher::block_size)
      .def("extend", &Hasher::extend, "hashes"_a, "root"_a, "token_ids"_a,
           "num_blocks"_a.none() = nb::none());

  nb::class_<Index>(m, "PrefixIndex")
      .def(nb::init<>())
      .def("__len__", &Index::size)
      .def("get", &Index::get, "block_hash"_a.none())
      .def("insert", &Index::insert, "block_hash"_a, "block_id"_a)
      .def("remove", &Index::remove, "block_hash"_a)
      .def("items", &Index::items)
      .def("longest_prefix", &Index::longest_prefix, "hashes"_a, "limit"_a.none() = nb::none());

  nb::class_<ManagerCore>(m, "ManagerCore", nb::type_slots(gc_slots<ManagerCore>))
      .def(nb::init<nb::object, nb::object, nb::object, nb::dict, nb::list, nb::list, nb::object,
                    nb::object>())
      .def("append_tokens", &ManagerCore::append_tokens, "session_id"_a.none(),
           "token_ids"_a.none(), "max_model_len"_a.none())
      .def("allocate_slots", &ManagerCore::allocate_slots, "session_id"_a.none(),
           "num_tokens"_a.none())
      .def("decode_step", &ManagerCore::decode_step, "session_ids"_a.none(), "token_ids"_a.none(),
           "max_model_len"_a.none())
      .def("victims_valid", &ManagerCore::victims_valid, "victims"_a, "num_blocks"_a)
      .def("evict_blocks", &ManagerCore::evict_blocks, "victims"_a)
      .def("evict_head", &ManagerCore::evict_head, "queue"_a, "num_blocks"_a)
      .def("register_full_blocks", &ManagerCore::register_full_blocks, "session_id"_a,
           "first"_a, "last"_a)
      .def("copy_token_ids", &ManagerCore::copy_token_ids, "token_ids"_a.none())
      .def("prefix_hits", &ManagerCore::prefix_hits, "hashes"_a, "limit"_a.none())
      .def("reopen_context", &ManagerCore::reopen_context, "context"_a, "token_ids"_a.none())
      .def("disown_shared", &ManagerCore::disown_shared, "hits"_a, "session_id"_a.none());
}
