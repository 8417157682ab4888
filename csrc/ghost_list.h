// kvsaga._evict.GhostList: adaptive's ghost list of one expert in C++, the twin of
// kvsaga/policy/ghost_list.py's PyGhostList (the reference; read its docstrings for what each
// method means). tests/policy/test_ghost_list.py drives both side by side.
//
// Why: an eviction names ~100 victims, and the Python list (an OrderedDict of 32-byte hashes)
// spends, per name, a dict probe and a linked-list node on a table of pool-size x 8 entries,
// and per name that falls out a probe, a node and the freeing of its key object, each a
// cache miss when the names come between two steps. Here a name is a 32-byte key and its
// cost in one ring (insertion order), and the table (key_table.h) maps a key to its ring slot:
// a name that falls out is read off the ring in order and erased by (hash bits, slot).
#pragma once
#include <nanobind/nanobind.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "key_table.h"

namespace ghost {

namespace nb = nanobind;

class GhostList {
 public:
  // reserve: room made at once for that many names (at most cap), so that filling the list
  // to it rehashes nothing (the owner knows how many names it is about to enter).
  explicit GhostList(int64_t cap, int64_t reserve = 0) : cap_(cap) {
    if (cap < 1) throw nb::value_error("GhostList capacity must be >= 1");
    if (reserve < 0) throw nb::value_error("GhostList reserve must be >= 0");
    size_t n = static_cast<size_t>(std::min(reserve, cap));
    ring_.reserve(n);
    table_.reserve(n);
  }

  size_t size() const { return live_; }

  bool contains(nb::handle h) const {
    kvcore::Key k;
    return read_key(h, &k) && table_.find(k) >= 0;
  }

  // pop(h, default): h's cost, taken out; default when it is not a ghost.
  nb::object pop(nb::handle h, nb::handle dflt) {
    kvcore::Key k;
    if (!read_key(h, &k)) return nb::borrow(dflt);
    double c;
    return take(k, &c) ? nb::float_(c) : nb::borrow(dflt);
  }

  // charge(total, hashes): total plus the cost of each hash that is a ghost, added in
  // order, each ghost taken out.
  double charge(double total, nb::handle hashes) {
    nb::object it = nb::steal(PyObject_GetIter(hashes.ptr()));
    if (!it.is_valid()) throw nb::python_error();
    kvcore::Key k;
    double c;
    while (PyObject* o = PyIter_Next(it.ptr())) {
      bool ok = read_key(o, &k);
      Py_DECREF(o);
      if (ok && take(k, &c)) total += c;
    }
    if (PyErr_Occurred()) throw nb::python_error();
    return total;
  }

  // enter(hashes, costs): each hash not None and not yet a ghost enters with its cost (a
  // ghost keeps its first cost and place); then the oldest fall out down to the capacity.
  // Returns how many entered. Bad input (a hash that is not 32 bytes, a cost that is not a
  // number) raises before anything enters: the list is left as it was.
  int64_t enter(nb::list hashes, nb::list costs) {
    size_t n = hashes.size();
    if (costs.size() != n) throw nb::value_error("enter: hashes and costs differ in length");
    std::vector<Slot> named;
    named.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      nb::handle h = hashes[i];
      if (h.is_none()) continue;
      Slot s{{}, 0.0, true};
      if (!read_key(h, &s.key)) throw nb::type_error("a ghost's hash must be 32 bytes");
      s.cost = PyFloat_AsDouble(costs[i].ptr());
      if (s.cost == -1.0 && PyErr_Occurred()) throw nb::python_error();
      named.push_back(s);
    }
    return admit(named);
  }

  // enter_blocks(blocks, hashes, positions, costs): enter(hashes[b] for b in blocks,
  // costs[positions[b]] for b in blocks), read off the caller's tables here (a victim
  // search's names: no Python list of hashes, positions and costs per call). A position
  // past `costs` returns -1 - that position, with nothing entered (the caller extends its
  // table of costs and calls again); bad input raises, nothing entered.
  int64_t enter_blocks(nb::handle blocks, nb::handle hashes, nb::handle positions,
                       nb::handle costs) {
    if (!PyList_Check(blocks.ptr()) || !PyList_Check(costs.ptr()))
      throw nb::type_error("enter_blocks: blocks and costs must be lists");
    std::vector<Slot> named;
    named.reserve(static_cast<size_t>(PyList_GET_SIZE(blocks.ptr())));
    int64_t beyond = -1;
    // Sizes are read at each item: a table's __getitem__ may run Python code that
    // shrinks `blocks` or `costs`.
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(blocks.ptr()); ++i) {
      PyObject* b = PyList_GET_ITEM(blocks.ptr(), i);
      nb::object h = item(hashes, b);
      if (h.is_none()) continue;
      Slot s{{}, 0.0, true};
      if (!read_key(h, &s.key)) throw nb::type_error("a ghost's hash must be 32 bytes");
      nb::object p = item(positions, b);
      int64_t pos = PyLong_AsLongLong(p.ptr());
      if (pos == -1 && PyErr_Occurred()) throw nb::python_error();
      if (pos < 0) throw nb::value_error("enter_blocks: a negative position");
      if (pos >= PyList_GET_SIZE(costs.ptr())) {
        beyond = std::max(beyond, pos);
        continue;
      }
      s.cost = PyFloat_AsDouble(PyList_GET_ITEM(costs.ptr(), pos));
      if (s.cost == -1.0 && PyErr_Occurred()) throw nb::python_error();
      named.push_back(s);
    }
    if (beyond >= 0) return -1 - beyond;
    return admit(named);
  }

 private:
  struct Slot {
    kvcore::Key key;
    double cost;
    bool live;
  };

  // table[key] (a list's item read in place).
  static nb::object item(nb::handle table, PyObject* key) {
    if (PyList_Check(table.ptr()) && PyLong_Check(key)) {
      Py_ssize_t i = PyLong_AsSsize_t(key);
      if (i >= 0 && i < PyList_GET_SIZE(table.ptr()))
        return nb::borrow(PyList_GET_ITEM(table.ptr(), i));
      PyErr_Clear();
    }
    PyObject* o = PyObject_GetItem(table.ptr(), key);
    if (!o) throw nb::python_error();
    return nb::steal(o);
  }

  // Enters checked names (enter's second half).
  int64_t admit(const std::vector<Slot>& named) {
    if (ring_.size() + named.size() > (size_t(1) << 30)) throw nb::value_error("GhostList full");
    int64_t added = 0;
    for (const Slot& s : named) {
      if (ring_.size() >= 64 && ring_.size() >= 2 * (live_ + 1)) compact();
      if (!table_.insert(s.key, static_cast<int32_t>(ring_.size()))) continue;  // a ghost already
      ring_.push_back(s);
      ++live_;
      ++added;
    }
    while (live_ > size_t(cap_)) pop_oldest();
    return added;
  }

  static bool read_key(nb::handle h, kvcore::Key* k) {
    if (!PyBytes_Check(h.ptr()) || PyBytes_GET_SIZE(h.ptr()) != 32) return false;
    std::memcpy(k->w, PyBytes_AS_STRING(h.ptr()), 32);
    return true;
  }

  // Drops the dead slots (taken, or fallen out) and re-indexes the table: once they are
  // half the ring, so each name pays O(1) for it.
  void compact() {
    std::vector<Slot> kept;
    kept.reserve(ring_.capacity());  // the names to come fit without a reallocation
    kvcore::KeyTable table;
    table.reserve(live_ + 1);  // one allocation, not a rehash at each doubling from 16
    for (size_t i = head_; i < ring_.size(); ++i) {
      if (!ring_[i].live) continue;
      table.insert(ring_[i].key, static_cast<int32_t>(kept.size()));
      kept.push_back(ring_[i]);
    }
    ring_.swap(kept);
    table_ = std::move(table);
    head_ = 0;
  }

  bool take(const kvcore::Key& k, double* c) {
    int32_t slot = table_.find(k);
    if (slot < 0) return false;
    table_.erase_held(k, slot);
    ring_[slot].live = false;
    *c = ring_[slot].cost;
    --live_;
    return true;
  }

  void pop_oldest() {
    while (!ring_[head_].live) ++head_;
    Slot& s = ring_[head_++];
    table_.erase_held(s.key, static_cast<int32_t>(&s - ring_.data()));
    s.live = false;
    --live_;
  }

  int64_t cap_;
  std::vector<Slot> ring_;  // names in order of entry; dead: taken or fallen out
  size_t head_ = 0;         // ring_[:head_] are all dead
  size_t live_ = 0;
  kvcore::KeyTable table_;  // key -> its ring slot
};

// kvsaga._evict.GhostList's binding (csrc/session_heap.cpp's module).
inline void bind(nanobind::module_& m) {
  using namespace nanobind::literals;
  nanobind::class_<GhostList>(m, "GhostList")
      .def(nanobind::init<int64_t, int64_t>(), "cap"_a, "reserve"_a = 0)
      .def("__len__", &GhostList::size)
      .def("__contains__", &GhostList::contains, "h"_a.none())
      .def("pop", &GhostList::pop, "h"_a.none(), "default"_a.none() = nanobind::none())
      .def("charge", &GhostList::charge, "total"_a, "hashes"_a)
      .def("enter", &GhostList::enter, "hashes"_a, "costs"_a)
      .def("enter_blocks", &GhostList::enter_blocks, "blocks"_a, "hashes"_a, "positions"_a,
           "costs"_a);
}

}  // namespace ghost
