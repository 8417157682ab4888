// A snapshot of a Python iterable's items, each held, in a small buffer on the stack for the
// few a usual victim search hands over (kvsaga/policy/search.py `_index_victims`: the marks,
// a set, and the pushes, a list, of a handful of sessions each).
//
// Why not `PySequence_List`: it reads a set through a new set iterator and `list_extend`,
// and grows a new list (`list_resize`, realloc); a search between two steps finds each of
// those code paths out of the CPU caches (bench/RESULTS.md, "Fewer code paths a search").
// An exact list or set is read here directly, in the order `PySequence_List` reads it (a
// set's table order: `_PySet_NextEntry` before Python 3.13, which made it internal, the
// set's own iterator from 3.13, the same order), with no Python code run; anything else goes
// through `PySequence_List`, whose errors (an iterable that is not one) stay its own.
#pragma once
#include <nanobind/nanobind.h>

#include <cstddef>
#include <vector>

namespace few_refs {

class FewRefs {
 public:
  FewRefs() = default;
  FewRefs(const FewRefs&) = delete;
  FewRefs& operator=(const FewRefs&) = delete;
  ~FewRefs() {
    for (Py_ssize_t i = 0; i < n_; ++i) Py_DECREF(at_[i]);
  }

  // Take `seq`'s items (an iterable), each held; false with the Python error set when it
  // cannot be read (as `PySequence_List` fails). Once per snapshot.
  bool read(PyObject* seq) {
    if (PyList_CheckExact(seq)) {
      // (no Python code runs between the length read and the copies)
      Py_ssize_t n = PyList_GET_SIZE(seq);
      reserve(n);
      for (Py_ssize_t i = 0; i < n; ++i) add(PyList_GET_ITEM(seq, i));
      return true;
    }
    if (PyAnySet_CheckExact(seq)) {
      reserve(PySet_GET_SIZE(seq));
#if PY_VERSION_HEX < 0x030D0000
      Py_ssize_t pos = 0;
      PyObject* key;
      Py_hash_t hash;
      while (_PySet_NextEntry(seq, &pos, &key, &hash)) add(key);
#else
      // (a set's iterator runs no Python code, so the size read above still holds)
      PyObject* it = PyObject_GetIter(seq);
      if (!it) return false;
      while (PyObject* key = PyIter_Next(it)) {
        add(key);
        Py_DECREF(key);  // (`add` holds its own reference)
      }
      Py_DECREF(it);
      if (PyErr_Occurred()) return false;
#endif
      return true;
    }
    PyObject* list = PySequence_List(seq);
    if (!list) return false;
    Py_ssize_t n = PyList_GET_SIZE(list);
    reserve(n);
    for (Py_ssize_t i = 0; i < n; ++i) add(PyList_GET_ITEM(list, i));
    Py_DECREF(list);
    return true;
  }

  Py_ssize_t size() const { return n_; }
  PyObject* operator[](Py_ssize_t i) const { return at_[i]; }
  PyObject** data() { return at_; }

 private:
  static constexpr Py_ssize_t kSmall = 16;

  // (`read` runs once, on an empty snapshot)
  void reserve(Py_ssize_t n) {
    if (n > kSmall) {
      big_.resize(static_cast<size_t>(n));
      at_ = big_.data();
    }
  }
  void add(PyObject* o) {
    Py_INCREF(o);
    at_[n_++] = o;
  }

  PyObject* small_[kSmall];
  std::vector<PyObject*> big_;
  PyObject** at_ = small_;
  Py_ssize_t n_ = 0;
};

// Remove `key` from `dict` if present, with one lookup (as `dict.pop(key, None)`: no
// KeyError made for an absent key, and a key whose `__eq__` answers differently on a second
// look cannot make a second lookup fail); -1 with the Python error set when the lookup fails.
inline int dict_discard(PyObject* dict, PyObject* key) {
#if PY_VERSION_HEX >= 0x030D0000
  return PyDict_Pop(dict, key, nullptr) < 0 ? -1 : 0;
#else
  PyObject* got = _PyDict_Pop(dict, key, Py_None);
  if (!got) return -1;
  Py_DECREF(got);
  return 0;
#endif
}

}  // namespace few_refs
