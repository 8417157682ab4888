// kvsaga._evict: the victim index of the indexed eviction policies in C++ (SessionHeap).
//
// The twin of kvsaga/policy/session_heap.py's PySessionHeap (the reference; read its
// docstrings for what each method means): same results for the same calls,
// tests/policy/test_session_heap.py drives both side by side. What differs is memory: an
// entry here is a plain struct in one array, so a heap operation reads no Python object per
// level (the Python heap reads a tuple, a key tuple and a float per comparison, each a
// cache miss once the heap outgrows the cache). Sessions are Python objects (str ids) mapped
// to slots by a dict; a slot is reused once its session is dropped, which is safe because
// versions are unique: an old entry's version never matches the slot's new one.

#include <nanobind/nanobind.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "ghost_list.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

struct Entry {
  double k0, k1;  // the key (class, value)
  int64_t tie;    // the tail block
  int64_t ver;
  int64_t size;   // the session's blocks when keyed
  int32_t slot;
};

// Lexicographic (key, tie, version), as Python compares the reference's tuples.
inline bool before(const Entry& a, const Entry& b) {
  if (a.k0 != b.k0) return a.k0 < b.k0;
  if (a.k1 != b.k1) return a.k1 < b.k1;
  if (a.tie != b.tie) return a.tie < b.tie;
  return a.ver < b.ver;
}
inline bool after(const Entry& a, const Entry& b) { return before(b, a); }  // min-heap order

struct Timer {
  double when;
  int64_t ver;
  int32_t slot;
};
inline bool timer_after(const Timer& a, const Timer& b) {
  if (a.when != b.when) return a.when > b.when;
  return a.ver > b.ver;
}

[[noreturn]] void throw_current() { throw nb::python_error(); }

double read_number(PyObject* o) {
  double x = PyFloat_AsDouble(o);
  if (x == -1.0 && PyErr_Occurred()) throw_current();
  return x;
}

class SessionHeap {
 public:
  size_t size() const { return heap_.size(); }

  void push(nb::handle sid, nb::handle key, int64_t tie, int64_t size, double until,
            double now) {
    if (!PyTuple_Check(key.ptr()) || PyTuple_GET_SIZE(key.ptr()) != 2)
      throw nb::type_error("key must be a tuple of two numbers");
    Entry e{read_number(PyTuple_GET_ITEM(key.ptr(), 0)),
            read_number(PyTuple_GET_ITEM(key.ptr(), 1)), tie, ++versions_, size, 0};
    e.slot = slot_for(sid);
    version_[e.slot] = e.ver;
    heap_.push_back(e);
    std::push_heap(heap_.begin(), heap_.end(), after);
    if (until < std::numeric_limits<double>::infinity()) {
      double when = std::max(until, std::nextafter(now, std::numeric_limits<double>::infinity()));
      timers_.push_back({when, e.ver, e.slot});
      std::push_heap(timers_.begin(), timers_.end(), timer_after);
    }
  }

  void drop(nb::handle sid) {
    PyObject* found = PyDict_GetItemWithError(slot_of_.ptr(), sid.ptr());
    if (!found) {
      if (PyErr_Occurred()) throw_current();
      return;
    }
    int32_t slot = static_cast<int32_t>(PyLong_AsLong(found));
    if (PyDict_DelItem(slot_of_.ptr(), sid.ptr()) != 0) throw_current();
    version_[slot] = 0;
    sids_[slot] = nb::none();
    free_.push_back(slot);
  }

  nb::list due(double now) {
    nb::list out;
    while (!timers_.empty() && timers_.front().when <= now) {
      std::pop_heap(timers_.begin(), timers_.end(), timer_after);
      Timer t = timers_.back();
      timers_.pop_back();
      if (version_[t.slot] == t.ver) out.append(sids_[t.slot]);
    }
    return out;
  }

  nb::object top() {
    if (!live_top()) return nb::none();
    const Entry& e = heap_.front();
    return nb::make_tuple(nb::make_tuple(e.k0, e.k1), e.tie);
  }

  nb::object pop() {
    if (!live_top()) throw nb::index_error("pop from an index without a live entry");
    return sids_[take().slot];
  }

  nb::list runs(int64_t num_blocks) {
    nb::list out;
    int64_t left = num_blocks;
    while (left > 0 && live_top()) {
      const Entry& e = take();
      int64_t k = std::min(e.size, left);
      out.append(nb::make_tuple(sids_[e.slot], k));
      left -= k;
    }
    return out;
  }

  void restore() {
    for (const Entry& e : named_) {
      if (version_[e.slot] == e.ver) {
        heap_.push_back(e);
        std::push_heap(heap_.begin(), heap_.end(), after);
      }
    }
    named_.clear();
  }

  void clear() {
    heap_.clear();
    named_.clear();
    timers_.clear();
    slot_of_.clear();
    version_.clear();
    sids_.clear();
    free_.clear();
  }

  void compact() {
    heap_.erase(std::remove_if(heap_.begin(), heap_.end(),
                               [&](const Entry& e) { return version_[e.slot] != e.ver; }),
                heap_.end());
    std::make_heap(heap_.begin(), heap_.end(), after);
    timers_.erase(std::remove_if(timers_.begin(), timers_.end(),
                                 [&](const Timer& t) { return version_[t.slot] != t.ver; }),
                  timers_.end());
    std::make_heap(timers_.begin(), timers_.end(), timer_after);
  }

 private:
  int32_t slot_for(nb::handle sid) {
    PyObject* found = PyDict_GetItemWithError(slot_of_.ptr(), sid.ptr());
    if (found) return static_cast<int32_t>(PyLong_AsLong(found));
    if (PyErr_Occurred()) throw_current();
    int32_t slot;
    if (!free_.empty()) {
      slot = free_.back();
      free_.pop_back();
    } else {
      slot = static_cast<int32_t>(version_.size());
      version_.push_back(0);
      sids_.emplace_back();
    }
    nb::object boxed = nb::steal(PyLong_FromLong(slot));
    if (!boxed.is_valid() || PyDict_SetItem(slot_of_.ptr(), sid.ptr(), boxed.ptr()) != 0)
      throw_current();
    sids_[slot] = nb::borrow(sid);
    return slot;
  }

  // Drops stale entries off the top; whether a live one is left.
  bool live_top() {
    while (!heap_.empty() && version_[heap_.front().slot] != heap_.front().ver) {
      std::pop_heap(heap_.begin(), heap_.end(), after);
      heap_.pop_back();
    }
    return !heap_.empty();
  }

  // Moves the (live) top aside, into named_; returns it.
  const Entry& take() {
    std::pop_heap(heap_.begin(), heap_.end(), after);
    named_.push_back(heap_.back());
    heap_.pop_back();
    return named_.back();
  }

  std::vector<Entry> heap_, named_;
  std::vector<Timer> timers_;
  nb::dict slot_of_;               // session -> slot
  std::vector<int64_t> version_;   // per slot; 0: no live entry
  std::vector<nb::object> sids_;   // per slot
  std::vector<int32_t> free_;      // dropped slots, for reuse
  int64_t versions_ = 0;
};

}  // namespace

NB_MODULE(_evict, m) {
  m.doc() = "The eviction policies' victim index and adaptive's ghost lists in C++ "
            "(kvsaga/policy/session_heap.py and ghost_list.py are the references).";
  nb::class_<SessionHeap>(m, "SessionHeap")
      .def(nb::init<>())
      .def("__len__", &SessionHeap::size)
      .def("push", &SessionHeap::push, "sid"_a, "key"_a, "tie"_a, "size"_a, "until"_a, "now"_a)
      .def("drop", &SessionHeap::drop, "sid"_a)
      .def("due", &SessionHeap::due, "now"_a)
      .def("top", &SessionHeap::top)
      .def("pop", &SessionHeap::pop)
      .def("runs", &SessionHeap::runs, "num_blocks"_a)
      .def("restore", &SessionHeap::restore)
      .def("compact", &SessionHeap::compact)
      .def("clear", &SessionHeap::clear);
  // adaptive's ghost lists (kvsaga/policy/ghost_list.py is the reference).
  nb::class_<ghost::GhostList>(m, "GhostList")
      .def(nb::init<int64_t>(), "cap"_a)
      .def("__len__", &ghost::GhostList::size)
      .def("__contains__", &ghost::GhostList::contains, "h"_a.none())
      .def("pop", &ghost::GhostList::pop, "h"_a.none(), "default"_a.none() = nb::none())
      .def("charge", &ghost::GhostList::charge, "total"_a, "hashes"_a)
      .def("enter", &ghost::GhostList::enter, "hashes"_a, "costs"_a)
      .def("enter_blocks", &ghost::GhostList::enter_blocks, "blocks"_a, "hashes"_a,
           "positions"_a, "costs"_a);
}
