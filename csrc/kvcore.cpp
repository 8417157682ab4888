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
//
// One concept a file, all headers of this one translation unit: kvcore_common.h (errors, id
// lists), block_queue.h, block_pool.h, prefix_index.h (hasher and index), manager_core.h (the
// manager's step loops) over manager_evict.h (its eviction loops), marks.h (a policy's
// per-block marks written in one call), shadow_loops.h (adaptive's shadow pools' loops); this
// file binds them. queue.h, key_table.h and sha256.h are their building blocks.

#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <cstdint>
#include <string>

#include "block_pool.h"
#include "block_queue.h"
#include "kvcore_common.h"
#include "manager_core.h"
#include "marks.h"
#include "prefix_index.h"
#include "sha256.h"
#include "shadow_loops.h"

namespace nb = nanobind;
using namespace nb::literals;

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

  m.def(
      "set_leak_warnings", [](bool on) { nb::set_leak_warnings(on); }, "on"_a,
      "Whether nanobind lists the instances still alive at the interpreter's exit (shared by "
      "every kvsaga extension). kvsaga-serve turns it off once it leaves an engine thread "
      "inside a hung step, whose frames hold the engine's C++ objects (kvsaga/serve/app.py).");

  m.def(
      "scatter",
      [](nb::handle marks, nb::handle ids, nb::handle values) {
        store_marks(marks, ids, values, Source::kEach);
      },
      "marks"_a, "ids"_a, "values"_a,
      "marks[ids[i]] = values[i] for each i (a list or bytearray; kvsaga/marks.py).");
  m.def(
      "fill",
      [](nb::handle marks, nb::handle ids, nb::handle value) {
        store_marks(marks, ids, value, Source::kOne);
      },
      "marks"_a, "ids"_a, "value"_a.none(),
      "marks[i] = value for each i of ids (a list or bytearray; kvsaga/marks.py).");

  m.def(
      "copy",
      [](nb::handle marks, nb::handle source, nb::handle ids) {
        store_marks(marks, ids, source, Source::kSame);
      },
      "marks"_a, "source"_a, "ids"_a,
      "marks[i] = source[i] for each i of ids (kvsaga/marks.py).");
  m.def("owner_runs", &owner_runs, "ids"_a, "owners"_a, "positions"_a,
        "[(owner, length, positions falling)] of ids' runs of equal owners (kvsaga/marks.py).");

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
      .def_ro("calls", &Pool::calls)
      .def_prop_ro("last_result", [](Pool& p) { return p.last_result; })
      .def("free_ids", &Pool::free_ids, "Free blocks, oldest first.")
      .def("allocate", &Pool::allocate, "count"_a)
      .def("acquire_many", &Pool::acquire_many, "block_ids"_a)
      .def("hold_many", &Pool::hold_many, "block_ids"_a)
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

  nb::class_<ShadowLoops>(m, "ShadowLoops", nb::type_slots(gc_slots<ShadowLoops>))
      .def(nb::init<nb::handle, nb::handle, nb::handle, nb::handle, nb::handle, nb::handle,
                    nb::handle, nb::handle, std::string>(),
           "state"_a, "ref"_a, "gen"_a, "owner"_a, "position"_a, "block_hash"_a, "free"_a,
           "index"_a, "name"_a)
      .def("hits", &ShadowLoops::hits, "hashes"_a, "limit"_a)
      .def("take", &ShadowLoops::take, "hits"_a, "sid"_a.none())
      .def("allocate", &ShadowLoops::allocate, "sid"_a.none(), "table"_a, "hashes"_a, "need"_a,
           "full"_a)
      .def("index_block", nb::overload_cast<nb::handle, nb::handle>(&ShadowLoops::index_block),
           "b"_a, "h"_a.none())
      .def("evict", &ShadowLoops::evict, "victims"_a)
      .def("disown", &ShadowLoops::disown, "blocks"_a)
      .def("release", &ShadowLoops::release, "table"_a, "tail"_a);

  nb::class_<ManagerCore>(m, "ManagerCore", nb::type_slots(gc_slots<ManagerCore>))
      .def(nb::init<nb::object, nb::object, nb::object, nb::dict, nb::list, nb::list, nb::object,
                    nb::object>())
      .def("append_tokens", &ManagerCore::append_tokens, "session_id"_a.none(),
           "token_ids"_a.none(), "max_model_len"_a.none())
      .def("allocate_slots", &ManagerCore::allocate_slots, "session_id"_a.none(),
           "num_tokens"_a.none(), "return_slots"_a = true)
      .def("decode_step", &ManagerCore::decode_step, "session_ids"_a.none(), "token_ids"_a.none(),
           "max_model_len"_a.none())
      .def("victims_valid", &ManagerCore::victims_valid, "victims"_a, "num_blocks"_a)
      .def("evict_blocks", &ManagerCore::evict_blocks, "victims"_a)
      .def("evict_head", &ManagerCore::evict_head, "queue"_a, "num_blocks"_a)
      .def("evict_runs", &ManagerCore::evict_runs, "policy"_a, "num_blocks"_a)
      .def("register_full_blocks", &ManagerCore::register_full_blocks, "session_id"_a,
           "first"_a, "last"_a)
      .def("copy_token_ids", &ManagerCore::copy_token_ids, "token_ids"_a.none())
      .def("prefix_hits", &ManagerCore::prefix_hits, "hashes"_a, "limit"_a.none(),
           "table"_a.none() = nb::none())
      .def("session_hits", &ManagerCore::session_hits, "table"_a.none(), "hashes"_a,
           "limit"_a.none())
      .def("reopen_context", &ManagerCore::reopen_context, "context"_a, "token_ids"_a.none())
      .def("disown_shared", &ManagerCore::disown_shared, "hits"_a, "session_id"_a.none());
}
