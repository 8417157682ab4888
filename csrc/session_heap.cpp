// kvsaga._evict: the victim index of the indexed eviction policies in C++ (SessionHeap).
//
// The twin of kvsaga/policy/session_heap.py's PySessionHeap (the reference; read its
// docstrings for what each method means): same results for the same calls,
// tests/policy/test_session_heap.py drives both side by side. What differs is memory: an
// entry here is a plain struct in one array, so a heap operation reads no Python object per
// level (the Python heap reads a tuple, a key tuple and a float per comparison, each a
// cache miss once the heap outgrows the cache). Sessions are Python objects (str ids) mapped
// to slots by a dict; a slot is reused once its session is dropped, which is safe because
// versions are unique: an old entry's version never matches the slot's new one (an entry
// holds its version's low 32 bits; csrc/entry_heap.h says why that stays true).
//
// A push is read and checked by csrc/session_push.h before anything changes.
//
// Time-driven re-keys without Python: a push may carry the session's *timed* record (its
// key is a function of a class of sessions and of the grid point of its elapsed pause,
// kvsaga/policy/search.py `grid_index`) and the key of its class at its current grid
// point, or its class's formula (modes 2-4). `due` then re-keys a session whose deadline
// passed from that table when its class has a key for its new grid point, or from the
// formula at any grid point, and hands Python only the others. The formulas of modes 3
// (ttl) and 4 (graph) live in csrc/session_keys.h: the log-normal pause model of
// kvsaga/policy/lognormal.py and aeg.py, operation for operation, so a key is the float
// Python computes (timed_keys.py `ttl_window_key`, `graph_rate`: the references).

#include <nanobind/nanobind.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <unordered_map>
#include <vector>

#include "class_table.h"
#include "elapsed_grid.h"
#include "entry_heap.h"
#include "few_refs.h"
#include "ghost_list.h"
#include "prefetch.h"
#include "session_keys.h"
#include "session_push.h"
#include "timed_record.h"
#include "timer_wheel.h"
#include "victim_runs.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using namespace session_keys;
using namespace timed_record;
using timer_wheel::Timer;
using namespace session_push;
using class_table::ClassTable;
using entry_heap::Entry;

// A slot's live version (0: none), its session's blocks when keyed and its live entry's tag
// (csrc/entry_heap.h; 0: none), read together.
struct Live {
  int64_t ver;
  int64_t size;
  uint32_t tag;
};

class SessionHeap {
 public:
  size_t size() const { return heap_.size(); }

  void push(nb::handle sid, nb::handle key, int64_t tie, int64_t size, double until,
            double now, nb::handle timed) {
    if (!PyTuple_Check(key.ptr()) || PyTuple_GET_SIZE(key.ptr()) != 2)
      throw nb::type_error("key must be a tuple of two numbers");
    apply(read_push(sid, key, tie, size, until, timed, inv_cdf_), now);
  }

  // A usual search's index work in one call (session_heap.py `refresh_runs`, the
  // reference): compact when stale, drops, pushes (all read and checked before anything
  // changes), due; then, when no due session is left for Python, restore and runs.
  nb::tuple refresh_runs(double now, nb::handle drops, nb::handle pushes, int64_t num_blocks,
                         int64_t stale_limit) {
    nb::list due_now = refresh(now, drops, pushes, stale_limit, nb::handle());
    if (PyList_GET_SIZE(due_now.ptr()) > 0) return nb::make_tuple(due_now, nb::none());
    restore();
    if (num_blocks < 0) return nb::make_tuple(nb::none(), nb::none());
    return nb::make_tuple(nb::none(), runs(num_blocks));
  }

  // `refresh_runs` and, with the runs, their victims off `groups` (session_heap.py
  // `refresh_victims`): (due, runs, victims), the last two None where refresh_runs gives
  // no runs.
  nb::tuple refresh_victims(double now, nb::handle drops, nb::handle pushes,
                            int64_t num_blocks, int64_t stale_limit, nb::handle groups) {
    if (!PyDict_Check(groups.ptr())) throw nb::type_error("groups must be a dict");
    return victims_after(refresh(now, drops, pushes, stale_limit, nb::handle()), num_blocks,
                         groups);
  }

  // `refresh_victims` with the sessions marked since the last search instead of the drops
  // (session_heap.py `refresh_marked`, which says more): those of `marked` that `groups`
  // does not hold are dropped (and leave `bases`, a dict, if given), the others left to
  // `pushes`. Seven arguments, as `refresh_marked_runs`: nanobind's shorter dispatch.
  nb::tuple refresh_marked(double now, nb::handle marked, nb::handle pushes,
                           int64_t num_blocks, int64_t stale_limit, nb::handle groups,
                           nb::handle bases) {
    return victims_after(refresh(now, marked, pushes, stale_limit, groups, bases), num_blocks,
                         groups);
  }

  // `refresh_marked` with no victims' list (None; ManagerCore.evict_runs takes the runs).
  nb::tuple refresh_marked_runs(double now, nb::handle marked, nb::handle pushes,
                                int64_t num_blocks, int64_t stale_limit, nb::handle groups,
                                nb::handle bases) {
    return victims_after(refresh(now, marked, pushes, stale_limit, groups, bases), num_blocks,
                         groups, false);
  }

  // Push `p` (read by `read_push`).
  void apply(const Pushed& p, double now) {
    const Timed& t = p.t;
    const TableKey& tk = p.tk;
    int64_t k = p.k;
    int32_t slot = slot_for(p.sid);
    timed_[slot] = t;
    if (t.cls >= 0 && tk.mode >= 2) {
      Formula formula = p.formula;
      formula.limit = t.limit;
      formulas_[t.cls] = formula;
      timed_[slot].value = tk.v;
    } else if (t.cls >= 0) {
      table_.set(ClassTable::key(t.cls, k), tk);
    }
    enter(p.k0, p.k1, slot, p.until, now);
    // A formula's key at the session's own grid point enters the table now (the key Python
    // just computed, by the formula), so that the class's next sessions to reach that point
    // read it there: after a re-key in Python, as when the index re-keyed them itself.
    int64_t n = static_cast<int64_t>(points_.size());
    if (t.cls >= 0 && tk.mode >= 3 && k >= -1 && k + 2 < n &&
        !table_.find(ClassTable::key(t.cls, k)))
      formula_key(formulas_[t.cls], t.cls, k, k < 0 ? 0.0 : points_[k]);
  }

  // The value the session's key was last computed from by its timed record (before its
  // multiplier or pause start): the policy's per-session base behind that key.
  double base(nb::handle sid) const {
    PyObject* found = PyDict_GetItemWithError(slot_of_.ptr(), sid.ptr());
    if (!found) {
      if (PyErr_Occurred()) throw_current();
      throw nb::key_error("no such session");
    }
    const Timed& t = timed_[PyLong_AsLong(found)];
    if (t.cls < 0 || std::isnan(t.value))
      throw nb::key_error("the session has no timed record with a value");
    return t.value;
  }

  // For tests: count `n` more entries as made, unused (the tags' wrap within reach).
  void skip_tags(int64_t n) {
    if (n < 0 || n > static_cast<int64_t>(UINT32_MAX - tags_))
      throw nb::value_error("_skip_tags: n must be from 0 to the tags left before the wrap");
    tags_ += static_cast<uint32_t>(n);
  }

  // Forget the table of keys (what they were computed from changed); timed records stay,
  // and a session whose class has no key left goes back to Python when due.
  void forget_keys() {
    table_.clear();
    formulas_.clear();
    expiry_.clear();
    expired_from_.clear();
  }

  // Name the class a mode-2 record of class `cls` moves to once its pause reaches its limit
  // (`expire`); forgotten with the keys (`forget_keys`).
  void expire_into(int64_t cls, int64_t dst) {
    if (cls < 0 || dst < 0) throw nb::value_error("expire_into: class ids must be >= 0");
    if (cls == dst) throw nb::value_error("expire_into: a class cannot expire into itself");
    expiry_[cls] = dst;
    expired_from_[dst] = cls;
  }

  // Class `cls`'s formula; for a class `expire_into` named as another's past its limit, when
  // none was pushed, that class's mode-2 formula with k0 1 and no limit (entered), which is
  // what Python gives its expired sessions under the same statistics; else end()
  // (session_heap.py `_formula_of`).
  std::unordered_map<int64_t, Formula>::iterator formula_of(int64_t cls) {
    auto f = formulas_.find(cls);
    if (f != formulas_.end()) return f;
    auto r = expired_from_.find(cls);
    if (r == expired_from_.end()) return f;
    auto g = formulas_.find(r->second);
    if (g == formulas_.end() || g->second.mode != 2) return formulas_.end();
    Formula x = g->second;
    x.k0 = 1.0;
    x.limit = std::numeric_limits<double>::infinity();
    return formulas_.emplace(cls, x).first;
  }

  // The elapsed-time grid of kvsaga/policy/search.py (its first point, log of its ratio,
  // its points), read exactly as `grid_index` reads it.
  void set_grid(double grid_s, double log_ratio, const std::vector<double>& points) {
    if (points.size() < 2) throw nb::value_error("the grid needs two points at least");
    // (a grid point's index must fit a table key: class_table.h kMaxPoint)
    if (points.size() > static_cast<size_t>(class_table::kMaxPoint) + 2)
      throw nb::value_error("the grid holds 65535 points at most");
    grid_s_ = grid_s;
    log_ratio_ = log_ratio;
    timers_.set_width(grid_s);
    points_ = points;
  }

  // The timers' placement (timer_wheel.h `layout`): (on the ring, beyond it, ring buckets
  // holding any), for tests.
  nb::tuple timer_layout() const {
    int64_t ring, far, buckets;
    timers_.layout(ring, far, buckets);
    return nb::make_tuple(ring, far, buckets);
  }

  void drop(nb::handle sid) {
    PyObject* found = PyDict_GetItemWithError(slot_of_.ptr(), sid.ptr());
    if (!found) {
      if (PyErr_Occurred()) throw_current();
      return;
    }
    int32_t slot = static_cast<int32_t>(PyLong_AsLong(found));
    if (PyDict_DelItem(slot_of_.ptr(), sid.ptr()) != 0) throw_current();
    live_[slot] = {0, 0, 0};
    sids_[slot] = nb::none();
    free_.push_back(slot);
  }

  nb::list due(double now) {
    if (std::isnan(now)) throw nb::value_error("due: now must not be NaN");
    nb::list out;
    std::vector<int32_t> fired;  // the slots of `out`, re-armed at `now` if a re-key raises
    try {
    timers_.due(
        now,
        [&](const Timer& t) {
          if (live_[t.slot].ver == t.ver && !rekey_from_table(t.slot, now)) {
            out.append(sids_[t.slot]);
            fired.push_back(t.slot);
          }
        },
        [&](const Timer& t) {
          KV_PREFETCH(&live_[t.slot]);
          KV_PREFETCH(&timed_[t.slot]);
        },
        [&](const Timer& t) {  // the table cell `rekey_from_table` will look up first
          const Timed& r = timed_[t.slot];
          int64_t k;
          double lo, hi, d = now - r.t0;
          if (r.cls >= 0 && d < r.limit && grid_index(d < 0.0 ? 0.0 : d, k, lo, hi))
            table_.prefetch(ClassTable::key(r.cls, k));
        });
    } catch (...) {
      // Those already fired for Python to re-key lost their timers with `out`: each gets
      // one at `now`, so the next `due` answers them (session_heap.py `due`).
      for (int32_t slot : fired) timers_.push({now, live_[slot].ver, slot}, now);
      throw;
    }
    return out;
  }

  // For each class of the live timed records, one session of it: the latest paused (largest
  // t0), then the lowest tail block, then the latest keyed (largest version: the slots'
  // order, reused after drops, is not the reference's; session_heap.py `timed_classes`).
  nb::dict timed_classes(nb::handle among) const {
    std::unordered_map<int64_t, int32_t> best;
    for (int32_t s : live_slots(among)) {
      if (timed_[s].cls < 0) continue;
      auto [it, fresh] = best.try_emplace(timed_[s].cls, s);
      const Timed& b = timed_[it->second];
      const Timed& t = timed_[s];
      if (!fresh && (t.t0 > b.t0 || (t.t0 == b.t0 && (t.tie < b.tie || (
                         t.tie == b.tie && live_[s].ver > live_[it->second].ver)))))
        it->second = s;
    }
    nb::dict out;
    for (const auto& [cls, s] : best) out[nb::int_(cls)] = sids_[s];
    return out;
  }

  // Re-key every live session whose timed record's class `mapping` maps, from the new
  // class's key at its grid point (session_heap.py `rekey_classes`); the others, as a set,
  // for Python to key.
  nb::set rekey_classes(nb::dict mapping, double now, nb::handle among) {
    std::unordered_map<int64_t, int64_t> to;
    for (auto [k, v] : mapping) to[nb::cast<int64_t>(k)] = nb::cast<int64_t>(v);
    std::vector<int32_t> order;
    nb::set rest;
    for (int32_t s : live_slots(among)) {
      if (timed_[s].cls >= 0 && to.count(timed_[s].cls)) {
        order.push_back(s);
      } else {
        rest.add(sids_[s]);
      }
    }
    // In (tail block, version) order, as the reference: versions and timers come out alike.
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
      if (timed_[a].tie != timed_[b].tie) return timed_[a].tie < timed_[b].tie;
      return live_[a].ver < live_[b].ver;
    });
    for (int32_t s : order) {
      Timed& t = timed_[s];
      int64_t dst = to[t.cls];
      if (dst != t.cls) {
        auto f = formula_of(dst);
        if (f == formulas_.end()) {
          rest.add(sids_[s]);
          continue;
        }
        t.cls = dst;
        class_limits(f->second, t.t0, t.limit, t.extra);
      }
      if (!rekey_from_table(s, now)) rest.add(sids_[s]);
    }
    return rest;
  }

  // The live slots: all of them (`among` None), or those of the sessions `among` names
  // (an iterable; unknown and dropped ones are skipped), each once.
  std::vector<int32_t> live_slots(nb::handle among) const {
    std::vector<int32_t> out;
    if (among.is_none()) {
      for (int32_t s = 0; s < static_cast<int32_t>(live_.size()); ++s)
        if (live_[s].ver != 0) out.push_back(s);
      return out;
    }
    std::vector<bool> seen(live_.size(), false);
    for (nb::handle sid : nb::iter(among)) {
      PyObject* found = PyDict_GetItemWithError(slot_of_.ptr(), sid.ptr());
      if (!found) {
        if (PyErr_Occurred()) throw_current();
        continue;
      }
      int32_t s = static_cast<int32_t>(PyLong_AsLong(found));
      if (!seen[s]) seen[s] = true, out.push_back(s);
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
      int64_t k = std::min(live_[e.slot].size, left);
      out.append(nb::make_tuple(sids_[e.slot], k));
      left -= k;
    }
    return out;
  }

  void restore() {
    heap_.reserve(heap_.size() + named_.size());  // (no push below can throw: named_ whole)
    for (const Entry& e : named_) {
      if (live(e)) heap_.push(e);
    }
    named_.clear();
  }

  void clear() {
    heap_.clear();
    named_.clear();
    timers_.clear();
    slot_of_.clear();
    live_.clear();
    timed_.clear();
    sids_.clear();
    free_.clear();
  }

  void compact() {
    heap_.remove_if([&](const Entry& e) { return !live(e); });
    timers_.compact([&](const Timer& t) { return live_[t.slot].ver != t.ver; });
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
      slot = static_cast<int32_t>(live_.size());
      live_.push_back({0, 0, 0});
      sids_.emplace_back();
      timed_.emplace_back();
    }
    nb::object boxed = nb::steal(PyLong_FromLong(slot));
    if (!boxed.is_valid() || PyDict_SetItem(slot_of_.ptr(), sid.ptr(), boxed.ptr()) != 0)
      throw_current();
    sids_[slot] = nb::borrow(sid);
    return slot;
  }

  // `refresh_victims`' answer after `refresh` gave `due_now` (without `victims`: None).
  nb::tuple victims_after(nb::list due_now, int64_t num_blocks, nb::handle groups,
                          bool victims = true) {
    if (PyList_GET_SIZE(due_now.ptr()) > 0)
      return nb::make_tuple(due_now, nb::none(), nb::none());
    restore();
    if (num_blocks < 0) return nb::make_tuple(nb::none(), nb::none(), nb::none());
    nb::list taken = runs(num_blocks);
    if (!victims) return nb::make_tuple(nb::none(), taken, nb::none());
    return nb::make_tuple(nb::none(), taken, victim_runs::tail_victims(groups, taken));
  }

  // `refresh_runs` up to its `due`: the sessions due for Python. `refresh_victims` runs it
  // too, and its errors name `refresh_runs` from there as well, as the Python twin's do
  // (session_heap.py `refresh_victims` calls `refresh_runs`). With `held` (a dict: the
  // groups), only the drops it does not hold are dropped (`refresh_marked`), judged after
  // every drop was hashed and before anything changes; with `bases` too (a dict; None: none),
  // each dropped session leaves it as well (absent ones are skipped).
  nb::list refresh(double now, nb::handle drops, nb::handle pushes, int64_t stale_limit,
                   nb::handle held, nb::handle bases = nb::handle()) {
    if (held.is_valid() && !PyDict_Check(held.ptr()))
      throw nb::type_error("groups must be a dict");
    if (bases.is_valid() && !bases.is_none() && !PyDict_Check(bases.ptr()))
      throw nb::type_error("bases must be a dict or None");
    if (bases.is_valid() && bases.is_none()) bases = nb::handle();
    if (std::isnan(now)) throw nb::value_error("refresh_runs: now must not be NaN");
    // Snapshots of both, each item held (few_refs.h: no list built for a set of marks)
    few_refs::FewRefs ds, ps;
    if (!ds.read(drops.ptr()) || !ps.read(pushes.ptr())) throw_current();
    Py_ssize_t nd = ds.size(), np = ps.size();
    for (Py_ssize_t i = 0; i < nd; ++i)
      if (PyObject_Hash(ds[i]) == -1) throw_current();
    if (held.is_valid()) {  // the gone first (swapped within the snapshot)
      Py_ssize_t gone = 0;
      for (Py_ssize_t i = 0; i < nd; ++i) {
        int in = PyDict_Contains(held.ptr(), ds[i]);
        if (in < 0) throw_current();
        if (!in) std::swap(ds.data()[gone++], ds.data()[i]);
      }
      nd = gone;
    }
    // The usual search pushes a few sessions: read into the stack, with no heap allocation
    // (whose code a search between two steps finds out of the caches: bench/RESULTS.md, "What
    // the victim search costs, way by way").
    Pushed few[kFewPushes];
    std::vector<Pushed> many(np > kFewPushes ? np : 0);
    Pushed* read = np > kFewPushes ? many.data() : few;
    for (Py_ssize_t i = 0; i < np; ++i)
      read[i] = read_refresh(i, ps[i], inv_cdf_);
    if (static_cast<int64_t>(heap_.size()) > stale_limit) compact();
    for (Py_ssize_t i = 0; i < nd; ++i) drop(ds[i]);
    if (bases.is_valid())
      for (Py_ssize_t i = 0; i < nd; ++i)  // (absent ones skipped without a KeyError made)
        if (few_refs::dict_discard(bases.ptr(), ds[i]) < 0) throw_current();
    for (Py_ssize_t i = 0; i < np; ++i) apply(read[i], now);
    return due(now);
  }

  // A new live entry of `slot`, and its timer when `until` is finite.
  void enter(double k0, double k1, int32_t slot, double until, double now) {
    const Timed& t = timed_[slot];
    // (the 32-bit tags wrap: entry_heap.h); tags_ changes only once nothing below can throw
    uint32_t tag = tags_ + 1;
    if (tag == 0) tag = renumber() + 1;
    heap_.push({k0, k1, t.tie, slot, tag});  // first: a throw leaves no live tag without an entry
    tags_ = tag;
    live_[slot] = {++versions_, t.size, tag};
    if (until < std::numeric_limits<double>::infinity()) {
      double when = std::max(until, std::nextafter(now, std::numeric_limits<double>::infinity()));
      timers_.push({when, versions_, slot}, now);
    }
  }

  // search.py's grid_index: (k, grid(k), grid(k + 1)) of an elapsed time e >= 0, k = -1
  // below the first point; false near the end of the points held (Python extends them).
  bool grid_index(double e, int64_t& k, double& lo, double& hi) const {
    return elapsed_grid::lookup(points_, grid_s_, log_ratio_, e, k, lo, hi);
  }

  // Re-key a due session from the table; false (nothing done) when it has no timed
  // record, its pause reached its limit, or its class has no key at its grid point.
  bool rekey_from_table(int32_t slot, double now) {
    const Timed& t = timed_[slot];
    if (t.cls < 0 || points_.empty()) return false;
    double d = now - t.t0;
    if (!(d < t.limit) && !expire(slot)) return false;
    int64_t k;
    double lo, hi;
    if (!grid_index(d < 0.0 ? 0.0 : d, k, lo, hi)) return false;
    double until = t.t0 + hi;
    if (t.extra < until) until = t.extra;
    // The class's key at this grid point: from its table, else from its formula (modes 3
    // and 4 then enter it in the table, for the class's next sessions at this point).
    const TableKey* hit = table_.find(ClassTable::key(t.cls, k));
    TableKey tk;
    if (hit) {
      tk = *hit;
    } else {
      auto f = formulas_.find(t.cls);
      if (f == formulas_.end()) return false;
      const Formula& x = f->second;
      if (x.mode == 2) {
        double r = lo / x.p[1];
        timed_[slot].value = std::numeric_limits<double>::quiet_NaN();
        enter(x.k0, -((mul(x.p[0], r > 1.0 ? 1.0 : r) + x.p[2]) + x.p[3]), slot, until, now);
        return true;
      }
      tk = formula_key(f->second, t.cls, k, lo);
    }
    timed_[slot].value = tk.v;
    double k1 = tk.mode == 0 ? tk.v * t.mult : (t.t0 + lo) + tk.v;
    enter(tk.k0, k1, slot, until, now);
    return true;
  }

  // A mode-2 record past its limit moves to the class `expire_into` named for its class (saga:
  // past its TTL, the same score in class 1, no limit), that class's formula being its own
  // with k0 1 and no limit where Python has not pushed one yet; false (nothing done) when its
  // class has no such successor or no formula (session_heap.py `_expire`).
  bool expire(int32_t slot) {
    Timed& t = timed_[slot];
    auto e = expiry_.find(t.cls);
    if (e == expiry_.end()) return false;
    auto f = formulas_.find(t.cls);
    if (f == formulas_.end() || f->second.mode != 2) return false;
    int64_t dst = e->second;
    auto g = formula_of(dst);
    if (g == formulas_.end() || g->second.mode != 2) return false;
    t.cls = dst;
    class_limits(g->second, t.t0, t.limit, t.extra);
    return true;
  }

  // Class `cls`'s key at grid point k (at lo) from its formula `x` (mode 3 or 4), entered
  // in the table.
  TableKey formula_key(Formula& x, int64_t cls, int64_t k, double lo) {
    TableKey tk = x.mode == 3 ? ttl_key(x.p, lo, x.memo)
                              : TableKey{1.0, graph_rate(x.p, lo, inv_cdf_), 0};
    table_.set(ClassTable::key(cls, k), tk);
    return tk;
  }

  // Drops stale entries off the top; whether a live one is left.
  bool live_top() {
    while (!heap_.empty() && !live(heap_.front())) heap_.pop();
    return !heap_.empty();
  }

  // Moves the (live) top aside, into named_; returns it.
  const Entry& take() {
    named_.push_back(heap_.pop());
    return named_.back();
  }

  static constexpr Py_ssize_t kFewPushes = 4;  // `refresh`'s pushes read without allocating
  // Whether `e` is its slot's live entry (its tag: entry_heap.h).
  bool live(const Entry& e) const { return live_[e.slot].tag == e.ver; }

  // Drop the stale entries and tag the live ones 1, 2, ... in their tags' order (so every
  // comparison answers as before); how many are live.
  uint32_t renumber() {
    std::vector<Entry*> all;
    all.reserve(heap_.size() + named_.size());  // the one allocation, before anything changes
    heap_.remove_if([&](const Entry& x) { return !live(x); });
    named_.erase(std::remove_if(named_.begin(), named_.end(),
                                [&](const Entry& x) { return !live(x); }),
                 named_.end());
    for (Entry& e : heap_) all.push_back(&e);
    for (Entry& e : named_) all.push_back(&e);
    std::sort(all.begin(), all.end(), [](const Entry* a, const Entry* b) { return a->ver < b->ver; });
    uint32_t n = 0;
    for (Entry* e : all) live_[e->slot].tag = e->ver = ++n;
    return n;
  }

  entry_heap::Heap heap_;          // csrc/entry_heap.h
  std::vector<Entry> named_;       // taken aside by the last search
  timer_wheel::TimerWheel timers_;  // csrc/timer_wheel.h
  nb::dict slot_of_;               // session -> slot
  std::vector<Live> live_;        // per slot
  std::vector<nb::object> sids_;   // per slot
  std::vector<int32_t> free_;      // dropped slots, for reuse
  std::vector<Timed> timed_;       // per slot
  ClassTable table_;               // (class, grid point) -> key: csrc/class_table.h
  std::unordered_map<int64_t, Formula> formulas_;  // class -> key at every grid point
  std::unordered_map<int64_t, int64_t> expiry_;  // class -> its class past the limit
  std::unordered_map<int64_t, int64_t> expired_from_;  // the reverse of expiry_
  InvCdf inv_cdf_;                 // statistics' NormalDist quantile (mode 4)
  double grid_s_ = 0.0, log_ratio_ = 1.0;
  std::vector<double> points_;     // empty: no grid set, no re-key from the table
  int64_t versions_ = 0;
  uint32_t tags_ = 0;              // the last entry's tag (entry_heap.h)
};

}  // namespace

NB_MODULE(_evict, m) {
  m.doc() = "The eviction policies' victim index and adaptive's ghost lists in C++ "
            "(kvsaga/policy/session_heap.py and ghost_list.py are the references).";
  nb::class_<SessionHeap>(m, "SessionHeap")
      .def(nb::init<>())
      .def("__len__", &SessionHeap::size)
      .def("push", &SessionHeap::push, "sid"_a, "key"_a, "tie"_a, "size"_a, "until"_a, "now"_a,
           "timed"_a.none() = nb::none())
      .def("forget_keys", &SessionHeap::forget_keys)
      .def("expire_into", &SessionHeap::expire_into, "cls"_a, "dst"_a)
      .def("base", &SessionHeap::base, "sid"_a)
      .def("set_grid", &SessionHeap::set_grid, "grid_s"_a, "log_ratio"_a, "points"_a)
      .def("drop", &SessionHeap::drop, "sid"_a)
      .def("_timer_layout", &SessionHeap::timer_layout)
      .def("_skip_tags", &SessionHeap::skip_tags, "n"_a)
      .def("due", &SessionHeap::due, "now"_a)
      .def("top", &SessionHeap::top)
      .def("pop", &SessionHeap::pop)
      .def("runs", &SessionHeap::runs, "num_blocks"_a)
      .def("restore", &SessionHeap::restore)
      .def("compact", &SessionHeap::compact)
      .def("timed_classes", &SessionHeap::timed_classes, "among"_a.none() = nb::none())
      .def("rekey_classes", &SessionHeap::rekey_classes, "mapping"_a, "now"_a,
           "among"_a.none() = nb::none())
      .def("refresh_runs", &SessionHeap::refresh_runs, "now"_a, "drops"_a, "pushes"_a,
           "num_blocks"_a, "stale_limit"_a)
      .def("refresh_victims", &SessionHeap::refresh_victims, "now"_a, "drops"_a, "pushes"_a,
           "num_blocks"_a, "stale_limit"_a, "groups"_a)
      .def("refresh_marked", &SessionHeap::refresh_marked, "now"_a, "marked"_a, "pushes"_a,
           "num_blocks"_a, "stale_limit"_a, "groups"_a, "bases"_a.none() = nb::none())
      .def("refresh_marked_runs", &SessionHeap::refresh_marked_runs, "now"_a, "marked"_a,
           "pushes"_a, "num_blocks"_a, "stale_limit"_a, "groups"_a,
           "bases"_a.none() = nb::none())
      .def_static("tail_victims", &victim_runs::tail_victims, "groups"_a, "runs"_a)
      .def_static("cut_tails", &victim_runs::cut_tails, "groups"_a, "runs"_a, "block_ids"_a,
                  "dirty"_a)
      .def("clear", &SessionHeap::clear);
  elapsed_grid::bind(m);  // search.py's grid_index (grid_index_py is the reference)
  ghost::bind(m);  // adaptive's ghost lists (kvsaga/policy/ghost_list.py is the reference)
}
