// kvsaga._kvcore.ManagerCore: KVCacheManager's hot loops (kvsaga/manager.py) over the pool,
// the prefix index and the hasher: the steps' (append_tokens, allocate_slots, decode_step,
// the prefix hits of lookup and begin_step). Its eviction loops are its base class,
// EvictionPath (manager_evict.h).
#pragma once
#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "block_pool.h"
#include "kvcore_common.h"
#include "manager_evict.h"
#include "prefix_index.h"

namespace kvcore {

// Works on the manager's own containers (sessions dict, block_owner/block_position lists,
// Session records), so that Python code reading them sees every change.
class ManagerCore : public EvictionPath {
 public:
  ManagerCore(nb::object pool, nb::object index, nb::object hasher, nb::dict sessions,
              nb::list block_owner, nb::list block_position, nb::object running,
              nb::object check_token_ids)
      : EvictionPath(pool, index, block_owner),
        hasher_obj_(hasher),
        hasher_(nb::cast<Hasher*>(hasher)),
        bs_(hasher_->block_size),
        sessions_(sessions),
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
    // The context itself (a caller repeating it): the appends below would grow, and move,
    // the items they read; they read a copy (as the Python twin always does).
    if (tokens.is(ctx)) tokens = steal_or_throw(PyList_GetSlice(ctx.ptr(), 0, PY_SSIZE_T_MAX));
    Py_ssize_t n_new = PySequence_Fast_GET_SIZE(tokens.ptr());
    check_context(PyList_GET_SIZE(ctx.ptr()) + n_new, max_model_len);
    PyObject** items = PySequence_Fast_ITEMS(tokens.ptr());
    for (Py_ssize_t i = 0; i < n_new; ++i)
      if (PyList_Append(ctx.ptr(), items[i])) throw_current();
    hash_new_blocks(s, ctx.ptr());
  }

  // KVCacheManager.allocate_slots without its eviction: the slots, or (nothing changed)
  // the number of blocks the caller must evict first.
  nb::object allocate_slots(nb::handle sid, nb::handle num_tokens, bool return_slots = true) {
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
    if (!return_slots) {
      take_slots(s, sid.ptr(), table.ptr(), start, end, nullptr, 0);
      return nb::none();
    }
    nb::object slots = steal_or_throw(PyList_New(end - start));
    take_slots(s, sid.ptr(), table.ptr(), start, end, slots.ptr(), 0);
    return slots;
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
  // are indexed, up to `limit`; how many of those blocks are CACHED). `table`: the
  // session's block table (see session_hits), or None.
  nb::tuple prefix_hits(nb::handle hashes, nb::handle limit, nb::handle table) {
    hits_into(table, hashes, limit);
    int64_t cached = 0;
    for (int32_t b : ids_) cached += pool_->state.data[b] == kCached;
    return nb::make_tuple(ids_.size(), cached);
  }

  // The index's blocks for the leading run of `hashes` (at most `limit`), as
  // PrefixIndex.longest_prefix, read first from `table`, the session's block table as its
  // last step left it: block table[i] holds hashes[i] when that is its registered hash, and
  // a registered hash is indexed under exactly its block (check_integrity), so those are
  // the index's answers, found without probing it (a resume walks its whole context
  // again); the index is probed from the first block that no longer holds its hash.
  nb::list session_hits(nb::handle table, nb::handle hashes, nb::handle limit) {
    hits_into(table, hashes, limit);
    return to_list(ids_.data(), ids_.size());
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
    // A resumed prompt mostly holds its context's very objects: skip the identical run by
    // chunks of pointers first, then go token by token from the first chunk that differs.
    constexpr Py_ssize_t kChunk = 64;
    while (keep + kChunk <= n &&
           std::memcmp(items + keep, old + keep, kChunk * sizeof(PyObject*)) == 0)
      keep += kChunk;
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
    // Pass 1: check every session and count the blocks the batch needs; nothing changes.
    rows_.clear();
    seen_.assign(seen_size(k), nullptr);
    int64_t need = 0;
    bool aliased = false;  // token_ids is a batch session's own context
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
      aliased |= r.ctx.is(tokens);
      rows_.push_back(std::move(r));
    }
    if (int64_t evict = room_for(need)) return nb::int_(evict);
    // Pass 2: append, hash, allocate, one slot each. The tokens as they were passed: an
    // append to the context they are would move the items read after it (a copy then).
    if (aliased) tokens = steal_or_throw(PyList_GetSlice(tokens.ptr(), 0, k));
    PyObject** toks = PySequence_Fast_ITEMS(tokens.ptr());
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

  // session_hits into ids_.
  void hits_into(nb::handle table, nb::handle hashes, nb::handle limit) {
    nb::object fast = steal_or_throw(PySequence_Fast(hashes.ptr(), "hashes must be a sequence"));
    Py_ssize_t k = PySequence_Fast_GET_SIZE(fast.ptr());
    if (!limit.is_none()) k = std::min(k, clamped_index(limit.ptr()));
    PyObject** items = PySequence_Fast_ITEMS(fast.ptr());
    ids_.clear();
    if (PyList_Check(table.ptr())) {
      PyObject* t = table.ptr();
      Py_ssize_t n = std::min(k, PyList_GET_SIZE(t));
      PyObject** row = reinterpret_cast<PyListObject*>(t)->ob_item;
      PyObject** registered = reinterpret_cast<PyListObject*>(pool_->block_hash.ptr())->ob_item;
      for (Py_ssize_t i = 0; i < n; ++i) {
        long b = as_long(row[i]);
        if (b == -1 && PyErr_Occurred()) throw_current();
        if (b < 0 || b >= pool_->n) break;
        PyObject* h = registered[b];
        if (h != items[i] && !same_digest(h, items[i])) break;
        ids_.push_back(static_cast<int32_t>(b));
      }
    }
    index_->scan_items(items, static_cast<Py_ssize_t>(ids_.size()), k, ids_);
  }

  static bool same_digest(PyObject* a, PyObject* b) {
    return PyBytes_Check(a) && PyBytes_Check(b) && PyBytes_GET_SIZE(a) == 32 &&
           PyBytes_GET_SIZE(b) == 32 &&
           std::memcmp(PyBytes_AS_STRING(a), PyBytes_AS_STRING(b), 32) == 0;
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
    long small;
    if (small_long(o, small)) return small >= 0 && small <= 0xffffffffL;
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    return !overflow && v >= 0 && v <= 0xffffffffLL;
  }

  static void check_context(Py_ssize_t length, nb::handle max_model_len) {
    if (max_model_len.is_none()) return;
    // (clamped: the manager takes any positive int, and one past 2^63 limits nothing; read
    // with PyLong_AsSsize_t, it raised OverflowError at every step: review s52 csrc, F1)
    Py_ssize_t limit = clamped_index(max_model_len.ptr());
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
  // `out` (a new list; null: not made) from index `at`, num_computed = end, and the blocks
  // that became full registered in the index.
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
    PyObject** slot = out ? reinterpret_cast<PyListObject*>(out)->ob_item + at : nullptr;
    for (Py_ssize_t i = start / bs_; slot && i * bs_ < end; ++i) {  // per block: its id, once
      long long first = static_cast<long long>(as_long(row[i])) * bs_;
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
      long b = as_long(row[i]);
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

  nb::object hasher_obj_;

 public:
  template <class F>
  void for_each_ref(F&& f) {
    EvictionPath::for_each_ref(f);
    for (nb::object* o : {&hasher_obj_, &running_, &check_token_ids_}) f(*o);
    f(sessions_);
    f(position_);
  }

 private:
  Hasher* hasher_;
  const int64_t bs_;
  nb::object sessions_;
  nb::object position_;
  nb::object running_, check_token_ids_;
  nb::object n_state_, n_token_ids_, n_block_ids_, n_hashes_, n_computed_, n_root_;
  std::vector<Row> rows_;
  std::vector<PyObject*> seen_;
  std::vector<int32_t> new_ids_;
};

}  // namespace kvcore
