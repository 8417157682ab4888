// The in-place paged attention's worker pool (csrc/paged_attn.cpp): threads started once per
// process and parked between calls. Included by paged_attn.cpp only. Where torch runs on
// libgomp the kernel runs in torch's own OpenMP team instead (kvsaga/kernels/inplace.py, `team`),
// and this pool serves the rest: other OpenMP runtimes, no libgomp found, a forked child.
#pragma once

#ifdef _WIN32
#include <process.h>
#else
#include <pthread.h>
#include <unistd.h>
#endif

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace kvattn {

// Worker threads kept across calls. Why: a decode step calls the kernel once per layer
// (30 calls for SmolLM2), each worth a millisecond or less; a std::thread started per call
// cost tens of microseconds to start and join, and on a busy machine it started so late
// that the caller had taken most tasks by then (the kernel's own threads ran 0.3 of the
// decode steps' 2+ CPU-s of attention: bench/generate.py --profile threads). Parked
// workers are woken through a condition variable instead.
//
// One call uses the pool at a time; a call that finds it busy (another Python thread in
// the kernel, the GIL being released) runs on its own thread alone. The pool is never
// destroyed (its workers sleep until the process exits), and a forked child, which has
// none of the parent's threads, starts a pool of its own on its first call.
#ifdef _WIN32
inline int64_t process_id() { return _getpid(); }
#else
inline int64_t process_id() { return getpid(); }
#endif

class Pool {
 public:
  // The pool of this process.
  static Pool& get() {
    static std::atomic<Pool*> current{nullptr};
    Pool* pool = current.load();
    if (pool != nullptr && pool->owner_ == process_id()) return *pool;
    auto* fresh = new Pool();  // a parent's pool is left as it is (its threads are not here)
    if (current.compare_exchange_strong(pool, fresh)) return *fresh;
    delete fresh;  // another thread installed one first (no worker started yet: safe)
    return *pool;
  }

  // Runs fn on `threads` threads (the caller and threads - 1 workers) and returns when
  // every one has returned; fn on the caller alone where the pool is busy. fn must not
  // throw (paged_attention catches its tasks' errors and raises them after this returns).
  void run(int64_t threads, const std::function<void()>& fn) {
    std::unique_lock<std::mutex> busy(call_, std::try_to_lock);
    if (threads <= 1 || !busy.owns_lock()) return fn();
    const auto helpers = static_cast<size_t>(threads - 1);
    {
      std::lock_guard<std::mutex> lock(m_);
      while (workers_.size() < helpers) {
        const size_t index = workers_.size();
        workers_.emplace_back([this, index] {
#ifdef __linux__
          // The name the benchmarks' per-thread CPU split looks for (bench/generate.py).
          pthread_setname_np(pthread_self(), "kvsaga-attn");
#endif
          work(index);
        });
      }
      job_ = &fn;
      active_ = helpers;
      running_ = helpers;
      ++generation_;
    }
    wake_.notify_all();
    fn();
    std::unique_lock<std::mutex> lock(m_);
    done_.wait(lock, [this] { return running_ == 0; });
    job_ = nullptr;
  }

 private:
  Pool() : owner_(process_id()) {}

  // Worker `index`: waits for each new job, runs it if the job wants that many workers.
  void work(size_t index) {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(m_);
    for (;;) {
      wake_.wait(lock, [this, seen] { return generation_ != seen; });
      seen = generation_;
      if (index >= active_) continue;
      const std::function<void()>* job = job_;
      lock.unlock();
      (*job)();
      lock.lock();
      if (--running_ == 0) done_.notify_one();
    }
  }

  const int64_t owner_;
  std::mutex call_;  // held by the call using the workers
  std::mutex m_;     // guards everything below
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  const std::function<void()>* job_ = nullptr;
  uint64_t generation_ = 0;
  size_t active_ = 0;   // workers 0 .. active_ - 1 run the current job
  size_t running_ = 0;  // of those, the ones still running it
};

}  // namespace kvattn
