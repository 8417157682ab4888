// kvsaga._kvcore.ManagerCore's eviction loops, the twin of KVCacheManager's eviction path
// (kvsaga/manager_evict.py, `EvictionPath`): the check of a policy's named victims and their
// eviction (freed, unindexed, their owners forgotten), LRU's eviction off the head of its
// queue, and a grouped policy's off its groups' tails (tail_runs.h). ManagerCore
// (manager_core.h), the steps' loops, derives from this class; kvcore.cpp binds both as one.
#pragma once
#include <algorithm>
#include <utility>
#include <vector>

#include "block_pool.h"
#include "block_queue.h"
#include "kvcore_common.h"
#include "prefix_index.h"
#include "tail_runs.h"

namespace kvcore {

// Works on the manager's pool, index and block_owner list (its Python objects), as
// ManagerCore does.
class EvictionPath {
 public:
  // KVCacheManager._victims_valid: `num_blocks` distinct CACHED blocks. Only a list or a
  // tuple (TypeError otherwise, as the Python core's check): the victims are read once, here,
  // and `evict_blocks` evicts the ids read (an iterator read twice would be used up, and
  // the second read would evict nothing). The ids are read into a local vector and kept only
  // once all are checked: an id's __index__ may call victims_valid again, which resets the
  // kept ids and keeps its own; read straight into `checked_`, this call's ids would follow
  // the nested call's, and evict_blocks would evict the nested call's blocks. Nothing is
  // kept when the answer is False or the check raises.
  bool victims_valid(nb::handle victims, Py_ssize_t num_blocks) {
    std::vector<int32_t> read;
    read.swap(checked_);  // (its buffer, reused)
    read.clear();
    checked_obj_ = nb::object();
    bool valid = false;
    try {
      valid = read_victims(victims.ptr(), num_blocks, read);
    } catch (...) {
      nb::object nested = std::move(checked_obj_);  // (released last: see below)
      checked_.clear();
      throw;
    }
    // What a nested call kept is dropped; its list is released once this call's state is
    // set (a release may run Python code).
    nb::object nested = std::move(checked_obj_);
    checked_.swap(read);
    if (valid)
      checked_obj_ = nb::borrow(victims);
    else
      checked_.clear();
    return valid;
  }

  // KVCacheManager._evict's loops over checked victims: tell the pool's observer, then
  // free them, unindex their hashes and forget their owners. `victims` must be what
  // `victims_valid` just found valid: its ids as read then are evicted (the pool checks
  // again that they are cached and distinct). Told first, a raising blocks_uncached
  // changes nothing: the victims stay CACHED, indexed and owned, as the policy, told
  // nothing by the raise, still has them (review s49 hooks, finding 2).
  void evict_blocks(nb::handle victims) {
    if (!checked_obj_.is_valid() || checked_obj_.is_none() || !victims.is(checked_obj_)) {
      checked_.clear();
      checked_obj_ = nb::object();
      PyErr_SetString(PyExc_RuntimeError,
                      "evict_blocks takes the victims victims_valid just found valid");
      throw_current();
    }
    checked_obj_ = nb::object();
    // Ours alone: the observer, called back first, may evict again (and reuse checked_).
    std::vector<int32_t> ids;
    ids.swap(checked_);
    pool_->tell_uncached(ids.data(), ids.size());  // (its hook cannot change the pool)
    nb::list hashes = pool_->free_ids_untold(ids);
    unindex(reinterpret_cast<PyListObject*>(hashes.ptr())->ob_item, ids.data(), ids.size(),
            false);
    ids.clear();
    if (checked_.empty()) checked_.swap(ids);  // (its buffer, reused)
  }

  // KVCacheManager._evict for a policy whose victims are the head of `queue` (its
  // `victim_queue`, which holds exactly the CACHED blocks): the same evictions as
  // choose_victims + evict_blocks, without a Python list per step. The queue loses the
  // blocks here, which is all that the policy's blocks_uncached would have done.
  void evict_head(PyQueue& queue, int64_t num_blocks) {
    pool_->check_quiet("evict_head");
    IntrusiveQueue& q = queue.raw();
    if (num_blocks < 0) {
      PyErr_Format(PyExc_ValueError, "evict_head: num_blocks must be >= 0, got %lld",
                   (long long)num_blocks);
      throw_current();
    }
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

  // KVCacheManager._evict for a grouped policy whose search answered with runs (session,
  // count) off its groups' tails (kvsaga/policy/fast_search.py; csrc/tail_runs.h): the same
  // evictions as its victims' list through evict_blocks, with the pool's call of the
  // policy's blocks_uncached made here (the runs, `policy._runs`, cut off `policy.groups`,
  // their sessions added to each set of `policy._dirty_sets`), the victims C++ ids
  // throughout. False, nothing changed, when the pool's observer is not `policy` (its
  // uncaching is then not groups.py's to make here); RuntimeError (nothing changed) when the
  // runs are not `num_blocks` distinct CACHED blocks, each its group's head.
  bool evict_runs(nb::handle policy, int64_t num_blocks) {
    pool_->check_quiet("evict_runs");
    if (!pool_->observer().is(policy)) return false;
    nb::object groups = policy.attr(n_groups_), dirty = policy.attr(n_dirty_);
    try {
      read_tail_runs(*pool_, groups, policy.attr(n_runs_), dirty, num_blocks, tail_runs_, ids_,
                     sorted_);
    } catch (...) {
      tail_runs_.clear();  // (no group held past the call)
      throw;
    }
    held_.resize(ids_.size());
    for (size_t i = 0; i < ids_.size(); ++i) held_[i] = pool_->free_cached(ids_[i]);
    pool_->num_cached -= num_blocks;
    unindex(held_.data(), ids_.data(), held_.size(), true);
    cut_tail_runs(groups, dirty, tail_runs_);
    return true;
  }

  template <class F>
  void for_each_ref(F&& f) {
    for (nb::object* o : {&pool_obj_, &index_obj_, &checked_obj_}) f(*o);
    f(owner_);
  }

 protected:
  EvictionPath(nb::object pool, nb::object index, nb::list block_owner)
      : pool_(nb::cast<Pool*>(pool)),
        index_(nb::cast<Index*>(index)),
        owner_(block_owner),
        pool_obj_(pool),
        index_obj_(index) {
    const std::pair<nb::object*, const char*> names[] = {
        {&n_groups_, "groups"}, {&n_runs_, "_runs"}, {&n_dirty_, "_dirty_sets"}};
    for (const auto& [field, name] : names)
      *field = steal_or_throw(PyUnicode_InternFromString(name));
  }

  Pool* pool_;
  Index* index_;
  nb::object owner_;
  std::vector<int32_t> ids_;  // one call's block ids (ManagerCore's calls' too)

 private:
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

  // victims_valid's reading and checks: true when `v`'s ids, appended to `read`, are
  // `num_blocks` distinct CACHED blocks. The TypeError names the type as the Python core
  // does (its __name__: `deque`, not tp_name's `collections.deque`).
  bool read_victims(PyObject* v, Py_ssize_t num_blocks, std::vector<int32_t>& read) {
    if (!PyList_Check(v) && !PyTuple_Check(v)) {
      nb::object name = steal_or_throw(
          PyObject_GetAttrString(reinterpret_cast<PyObject*>(Py_TYPE(v)), "__name__"));
      PyErr_Format(PyExc_TypeError,
                   "the policy's victims must be a list or tuple of block ids, got %S",
                   name.ptr());
      throw_current();
    }
    if (PySequence_Fast_GET_SIZE(v) != num_blocks) return false;
    // (an id's __index__ may run Python code: each item is held, the size read each time)
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(v); ++i) {
      nb::object item = nb::borrow(PySequence_Fast_GET_ITEM(v, i));
      long b = as_long(item.ptr());
      if (b == -1 && PyErr_Occurred()) throw_current();
      if (b < 0 || b >= pool_->n || pool_->state.data[b] != kCached) return false;
      read.push_back(static_cast<int32_t>(b));
    }
    if (static_cast<Py_ssize_t>(read.size()) != num_blocks) return false;
    ids_.assign(read.begin(), read.end());
    std::sort(ids_.begin(), ids_.end());
    return std::adjacent_find(ids_.begin(), ids_.end()) == ids_.end();
  }

  nb::object pool_obj_, index_obj_;  // (held: pool_ and index_ are theirs)
  nb::object n_groups_, n_runs_, n_dirty_;  // evict_runs' reads of the policy
  std::vector<int32_t> sorted_;
  std::vector<int32_t> checked_;  // victims_valid's ids, for evict_blocks
  nb::object checked_obj_;                   // the victims they were read from
  std::vector<PyObject*> held_;
  std::vector<TailRun> tail_runs_;
};

}  // namespace kvcore
