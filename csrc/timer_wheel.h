// The timers of kvsaga._evict's victim index (csrc/session_heap.cpp): when each session's
// key next changes by time alone. They fire in (when, version) order, as the reference's
// binary heap of (when, version, sid) pops them (kvsaga/policy/session_heap.py `due`).
//
// Why not a binary heap: at 4,000 paused sessions about 45 cross a grid point each
// millisecond, each a timer popped and a timer pushed. A pop walks the heap's ~11 levels,
// and between two engine steps (the forward pass in between) each level is a cache miss:
// under callgrind's cache model the index's `due` took ~16 last-level misses per re-key,
// most of them there. Here timers sit in buckets of `width` seconds on a ring that covers
// the next `kRing` buckets (farther ones wait in a small binary heap and move onto the ring
// as it reaches them): a push appends to its bucket, and `due` reads the buckets up to now
// in order, each sorted by (when, version) before it fires, so the order is the heap's.
// Header-only: session_heap.cpp is the extension's one translation unit.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace timer_wheel {

struct Timer {
  double when;
  int64_t ver;
  int32_t slot;
};
inline bool timer_before(const Timer& a, const Timer& b) {
  if (a.when != b.when) return a.when < b.when;
  return a.ver < b.ver;
}
inline bool timer_after(const Timer& a, const Timer& b) { return timer_before(b, a); }

class TimerWheel {
 public:
  static constexpr int64_t kRing = 512;  // buckets on the ring

  explicit TimerWheel(double width = 1e-3) { set_width(width); }

  // The bucket width (the grid's first point: the finest step of a session's deadlines).
  // Only while empty: a bucket's timers were placed by the width they were pushed under.
  void set_width(double width) {
    if (!empty()) return;
    width_ = width > 0 && std::isfinite(width) ? width : 1e-3;
  }

  bool empty() const { return near_ == 0 && far_.empty(); }

  // `now`: the caller's time. An empty wheel anchors its ring there (or at t.when, when
  // earlier or `now` is NaN), not on the first timer's bucket: a far first timer would
  // otherwise leave every nearer one in the ring's first bucket, all re-sorted by each `due`.
  // While `due` runs (a `fire` emptied the wheel and pushes), only forward: `due` goes on
  // reading buckets from `cur_` up to the bucket it set out for, so moving `cur_` back (the
  // clock went back: `now` is behind it) would let it pass the new timer's bucket, which it
  // would then read a ring turn late. With `cur_` left where `due` stands, a deadline
  // behind it goes into bucket `cur_` (as any push behind `cur_`), the one the next `due`
  // reads first. Moving it forward skips no timer: the wheel is empty (the batch being
  // fired has no rest), and a deadline pushed by `fire` is later than `now`, so `cur_`
  // lands on bucket(now), the one `due` set out for, and the new timer is not behind it.
  // It spares `due` the walk over the empty buckets up to there (up to kRing - 1 of them).
  void push(const Timer& t, double now) {
    if (empty()) {
      int64_t a = bucket(now < t.when ? now : t.when);
      if (!firing_ || a > cur_) cur_ = a;
    }
    int64_t b = bucket(t.when);
    if (b < cur_) b = cur_;  // (a deadline before the buckets read so far: the first one)
    if (b - cur_ < kRing) {
      ring_[at(b)].push_back(t);
      ++near_;
    } else {
      far_.push_back(t);
      std::push_heap(far_.begin(), far_.end(), timer_after);
    }
  }

  // Calls fire(timer) for every timer with when <= now, in (when, version) order, each
  // removed first. `fire` may push timers (later than now: they do not fire in this call).
  // Before a bucket's due timers fire, `ahead(timer)` is called on each of them, then
  // `ahead2(timer)`: the index prefetches what firing will read (the session's record,
  // then its class's table cell), so that the misses of a batch overlap instead of
  // following one another.
  // A NaN `now` fires nothing (its bucket would be the ring's far end: the callers refuse it
  // first).
  template <class Fire, class Ahead, class Ahead2>
  void due(double now, Fire&& fire, Ahead&& ahead, Ahead2&& ahead2) {
    if (empty() || std::isnan(now)) return;
    Firing firing(firing_);
    // (now before the buckets read so far: only the first holds timers that may be due)
    int64_t target = std::max(bucket(now), cur_);
    while (cur_ <= target) {
      if (near_ == 0) {  // nothing on the ring: jump to the next far timer's bucket
        if (far_.empty()) break;
        int64_t next = bucket(far_.front().when);
        if (next > target) break;
        if (next > cur_) cur_ = next;
      }
      pull_far();
      std::vector<Timer>& here = ring_[at(cur_)];
      // Only the bucket's due timers are sorted and fired (a bucket read before its end,
      // as every search within its millisecond reads it, holds mostly later ones, whose
      // order nothing reads until they are due); none due: the bucket stays as it is.
      const size_t n = static_cast<size_t>(
          std::partition(here.begin(), here.end(),
                         [now](const Timer& t) { return t.when <= now; }) - here.begin());
      if (n > 0) {
        batch_.swap(here);  // fire from a copy: `fire` may push into this bucket
        std::sort(batch_.begin(), batch_.begin() + static_cast<std::ptrdiff_t>(n),
                  timer_before);
        for (size_t j = 0; j < n; ++j) ahead(batch_[j]);
        for (size_t j = 0; j < n; ++j) ahead2(batch_[j]);
        size_t i = 0;
        try {
          for (; i < batch_.size() && batch_[i].when <= now; ++i) {
            --near_;
            fire(batch_[i]);
          }
        } catch (...) {
          // The timer being fired is gone (as the reference's heap popped it); the rest of
          // the batch goes back into its bucket, to fire in order at the next `due`.
          here.insert(here.end(), batch_.begin() + static_cast<std::ptrdiff_t>(i + 1),
                      batch_.end());
          batch_.clear();
          throw;
        }
        // Those not due yet go back (the bucket holds now: its later part waits), with any
        // pushed meanwhile.
        here.insert(here.end(), batch_.begin() + static_cast<std::ptrdiff_t>(i), batch_.end());
        batch_.clear();
      }
      if (cur_ == target) break;
      ++cur_;
    }
  }

  // Drops the timers `stale` says are stale.
  template <class Stale>
  void compact(Stale&& stale) {
    for (std::vector<Timer>& b : ring_) {
      size_t before = b.size();
      b.erase(std::remove_if(b.begin(), b.end(), stale), b.end());
      near_ -= static_cast<int64_t>(before - b.size());
    }
    far_.erase(std::remove_if(far_.begin(), far_.end(), stale), far_.end());
    std::make_heap(far_.begin(), far_.end(), timer_after);
  }

  void clear() {
    for (std::vector<Timer>& b : ring_) b.clear();
    far_.clear();
    near_ = 0;
  }

  // (timers on the ring, timers beyond it, ring buckets holding any): what tests read to
  // check where timers were placed (the order `due` gives does not show it).
  void layout(int64_t& ring, int64_t& far, int64_t& buckets) const {
    ring = near_, far = static_cast<int64_t>(far_.size()), buckets = 0;
    for (const std::vector<Timer>& b : ring_) buckets += b.empty() ? 0 : 1;
  }

 private:
  // Far timers whose bucket the ring now covers move onto it.
  void pull_far() {
    while (!far_.empty()) {
      int64_t b = bucket(far_.front().when);
      if (b - cur_ >= kRing) return;
      std::pop_heap(far_.begin(), far_.end(), timer_after);
      ring_[at(b < cur_ ? cur_ : b)].push_back(far_.back());
      ++near_;
      far_.pop_back();
    }
  }

  // Marks the wheel as inside `due` for a scope (`push` then moves `cur_` only forward),
  // also when a `fire` raises.
  struct Firing {
    explicit Firing(bool& flag) : flag_(flag) { flag_ = true; }
    ~Firing() { flag_ = false; }
    Firing(const Firing&) = delete;
    Firing& operator=(const Firing&) = delete;
    bool& flag_;
  };

  static int64_t at(int64_t b) { return ((b % kRing) + kRing) % kRing; }

  // floor(when / width), kept within +-2^61 (a deadline 10^16 s away is simply far).
  int64_t bucket(double when) const {
    double b = std::floor(when / width_);
    const double lim = 2305843009213693952.0;  // 2^61
    if (!(b < lim)) return static_cast<int64_t>(lim);
    if (!(b > -lim)) return -static_cast<int64_t>(lim);
    return static_cast<int64_t>(b);
  }

  std::vector<Timer> ring_[kRing];
  std::vector<Timer> far_;    // binary heap by (when, version), beyond the ring
  std::vector<Timer> batch_;  // the bucket being fired
  int64_t cur_ = 0;           // the first bucket not read to its end
  int64_t near_ = 0;          // timers on the ring
  bool firing_ = false;       // inside `due` (see `push`)
  double width_ = 1e-3;
};

}  // namespace timer_wheel
