// kvsaga._kvcore.BlockHasher and PrefixIndex: the twins of kvsaga/prefix.py (chained block
// hashes, and the index from a block hash to the cached block that holds it).
#pragma once
#include <algorithm>
#include <cstring>
#include <vector>

#include "key_table.h"
#include "kvcore_common.h"
#include "prefetch.h"
#include "sha256.h"

namespace kvcore {

// A token id as array("I", ...) reads it: an int, or any integer type through __index__
// (numpy's ints; numpy's bool has none); (unsigned long long)-1 with the error set.
inline unsigned long long token_value(PyObject* o) {
  long small;
  if (small_long(o, small) && small >= 0) return static_cast<unsigned long long>(small);
  if (PyLong_Check(o)) return PyLong_AsUnsignedLongLong(o);
  nb::object i = nb::steal(PyNumber_Index(o));
  return i.is_valid() ? PyLong_AsUnsignedLongLong(i.ptr()) : static_cast<unsigned long long>(-1);
}

// Items [first, last) of a list or tuple (a subclass too) as a tuple of their own, taken
// without running any Python code.
inline nb::object owned_range(PyObject* fast, Py_ssize_t first, Py_ssize_t last) {
  if (PyTuple_Check(fast)) return steal_or_throw(PyTuple_GetSlice(fast, first, last));
  nb::object part = steal_or_throw(PyList_GetSlice(fast, first, last));
  return steal_or_throw(PyList_AsTuple(part.ptr()));
}

// Reads token ids [first, last) of a sequence (a list or tuple of ints in [0, 2^32)) as
// native-endian uint32 into `out`, as the Python twin's array("I", ...) does.
// A list or tuple is read in place; any other sequence (a view of a longer list, say) is
// sliced to [first, last) once, not copied whole.
inline void read_tokens(PyObject* seq, Py_ssize_t first, Py_ssize_t last, uint8_t* out) {
  nb::object part;
  if (!PyList_Check(seq) && !PyTuple_Check(seq)) {
    part = steal_or_throw(PySequence_GetSlice(seq, first, last));
    seq = part.ptr();
    last -= first;
    first = 0;
  }
  nb::object fast = steal_or_throw(PySequence_Fast(seq, "token ids must be a sequence"));
  if (PySequence_Fast_GET_SIZE(fast.ptr()) < last)
    throw nb::value_error("token ids: the sequence is shorter than its length");
  PyObject** items = PySequence_Fast_ITEMS(fast.ptr());
  nb::object rest;  // ids [base, last) in a tuple of our own, once an id runs __index__
  Py_ssize_t base = 0;
  for (Py_ssize_t i = first; i < last; ++i) {
    if (!rest.is_valid() && !PyLong_Check(items[i])) {
      // __index__ is arbitrary code: it may change the list and free the items read here
      // in place. The rest is read from a tuple that holds its own references.
      rest = owned_range(fast.ptr(), i, last);
      items = PySequence_Fast_ITEMS(rest.ptr());
      base = i;
    }
    unsigned long long v = token_value(items[i - base]);
    if (v == static_cast<unsigned long long>(-1) && PyErr_Occurred()) throw_current();
    if (v > 0xffffffffull) throw nb::value_error("token id out of range [0, 2^32)");
    uint32_t t = static_cast<uint32_t>(v);
    std::memcpy(out + 4 * (i - first), &t, 4);
  }
}

inline const uint8_t* digest_of(PyObject* h) {
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
    if (!num_blocks.is_none()) full = std::min(full, clamped_index(num_blocks.ptr()));
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
inline bool key_of(PyObject* h, Key& k) {
  if (!PyBytes_Check(h) || PyBytes_GET_SIZE(h) != 32) return false;
  std::memcpy(k.w, PyBytes_AS_STRING(h), 32);
  return true;
}

// A bytes digest spans the object's first ~70 bytes: two cache lines at most.
inline void prefetch_object(PyObject* o) {
  KV_PREFETCH(o);
  KV_PREFETCH(reinterpret_cast<const char*>(o) + 64);
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
    if (!limit.is_none()) k = std::min(k, clamped_index(limit.ptr()));
    out.clear();
    scan_items(PySequence_Fast_ITEMS(fast.ptr()), 0, k, out);
  }

  // scan_prefix's walk over `items[first:k]`, appending the blocks found to `out`.
  void scan_items(PyObject** items, Py_ssize_t first, Py_ssize_t k,
                  std::vector<int32_t>& out) const {
    Key key;
    // Each hit reads its digest object and its table slot: both fetched ahead, as in
    // ManagerCore::unindex.
    constexpr Py_ssize_t kFar = 16, kNear = 8;
    for (Py_ssize_t i = first; i < std::min(first + kFar, k); ++i) prefetch_object(items[i]);
    for (Py_ssize_t i = first; i < std::min(first + kNear, k); ++i) prefetch(items[i]);
    for (Py_ssize_t i = first; i < k; ++i) {
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

}  // namespace kvcore
