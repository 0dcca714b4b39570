// Work sharing for the native ops' parallel loops that does not wait for threads
// the kernel has parked.
//
// The loops here (tables of a fused backward, of an id mapping, of fresh rows)
// hand out tasks from a shared counter. Run inside at::parallel_for, the region
// still ends at OpenMP's barrier: the caller waits for every thread of the
// team, including one that never got a core because another process holds it,
// and on a busy machine that wait (a scheduler time slice, milliseconds) is paid
// in every region of every step. Here the caller takes tasks itself and waits
// only for the helpers that have started: a helper that wakes after the tasks
// are all handed out does not join, so with one core taken the step runs at
// the speed of the cores it still has. On Linux the helpers are also kept off
// the caller's core: woken there (the scheduler's choice when the other cores
// are busy) a helper would only start once the caller had done every task.
//
// One pool per process (re-made in a forked child, whose pool threads do not
// exist); a second caller while the pool is in use runs its tasks on its own
// thread. Helpers sleep on a condition variable between calls.
#pragma once

#include <unistd.h>
#if defined(__linux__)
#include <pthread.h>
#include <sched.h>
#endif

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace recis {

// claim() returns the next task index, or -1 when every task is handed out.
using Claim = std::function<int64_t()>;
using TaskBody = std::function<void(const Claim&)>;

class TaskPool {
 public:
  // Runs body(claim) on the calling thread and on up to `helpers` pool threads;
  // each body loops over claim() until it returns -1 (so per-thread scratch
  // lives in the body, once per thread). Returns when every body that started
  // has returned; rethrows the first exception of any of them.
  void run(int64_t n, int64_t helpers, const TaskBody& body) {
    std::unique_lock<std::mutex> lk(mu_);
    if (helpers <= 0 || n <= 1 || body_ != nullptr) {
      lk.unlock();
      serial(n, body);
      return;
    }
    while (static_cast<int64_t>(threads_.size()) < helpers) {
      threads_.emplace_back([this] { loop(); });
      off_cpu_ = -1;  // the new thread has the caller's mask
    }
#if defined(__linux__)
    keep_off(sched_getcpu());
#endif
    body_ = &body;
    n_ = n;
    next_.store(0);
    wanted_ = helpers;
    error_ = nullptr;
    ++gen_;
    lk.unlock();
    wake_.notify_all();
    std::exception_ptr mine;
    try {
      body(claim_);
    } catch (...) {
      mine = std::current_exception();
      next_.store(n);  // the helpers stop taking tasks
    }
    lk.lock();
    body_ = nullptr;  // no helper joins from here on
    done_.wait(lk, [this] { return active_ == 0; });
    std::exception_ptr err = mine ? mine : error_;
    lk.unlock();
    if (err) std::rethrow_exception(err);
  }

  // This process's pool (a new one in a forked child; the parent's is left as is).
  // No lock: a fork while another thread held one would leave it held in the child.
  static TaskPool& get() {
    struct Owned {
      TaskPool* pool;
      pid_t pid;
    };
    static std::atomic<Owned*> current{nullptr};
    const pid_t me = getpid();
    Owned* seen = current.load();
    while (seen == nullptr || seen->pid != me) {
      // never deleted: a pool's threads live as long as the process (and the loser
      // of a race here is a pool that never started a thread)
      Owned* mine = new Owned{new TaskPool(), me};
      if (current.compare_exchange_strong(seen, mine)) return *mine->pool;
    }
    return *seen->pool;
  }

 private:
  TaskPool() : claim_([this] {
    const int64_t t = next_.fetch_add(1);
    return t < n_ ? t : int64_t{-1};
  }) {}

  // Helpers may run on every core the caller may use but its current one.
#if defined(__linux__)
  void keep_off(int cpu) {
    if (cpu < 0 || cpu == off_cpu_) return;
    cpu_set_t mask;
    if (sched_getaffinity(0, sizeof(mask), &mask) != 0) return;
    // the process's mask: the caller's own, as set by the user or the launcher
    if (!CPU_ISSET(cpu, &mask) || CPU_COUNT(&mask) < 2) return;
    CPU_CLR(cpu, &mask);
    for (auto& t : threads_) pthread_setaffinity_np(t.native_handle(), sizeof(mask), &mask);
    off_cpu_ = cpu;
  }
#endif

  static void serial(int64_t n, const TaskBody& body) {
    int64_t next = 0;
    body([&next, n] { return next < n ? next++ : int64_t{-1}; });
  }

  void loop() {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      wake_.wait(lk, [&] { return gen_ != seen; });
      seen = gen_;
      if (body_ == nullptr || wanted_ == 0) continue;
      --wanted_;
      ++active_;
      const TaskBody* body = body_;
      lk.unlock();
      std::exception_ptr err;
      try {
        (*body)(claim_);
      } catch (...) {
        err = std::current_exception();
        next_.store(n_);
      }
      lk.lock();
      if (err && !error_) error_ = err;
      if (--active_ == 0) done_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> threads_;
  const TaskBody* body_ = nullptr;  // the call in progress (nullptr: none to join)
  int64_t n_ = 0;
  std::atomic<int64_t> next_{0};
  int64_t wanted_ = 0;  // helpers that may still join the call in progress
  int64_t active_ = 0;  // helpers running its body
  uint64_t gen_ = 0;
  int off_cpu_ = -1;  // the core the helpers are kept off
  std::exception_ptr error_;
  const Claim claim_;
};

// n tasks over the calling thread and up to threads - 1 helpers (at most one
// thread per task).
inline void run_tasks(int64_t n, int64_t threads, const TaskBody& body) {
  const int64_t helpers = std::min<int64_t>(threads, n) - 1;
  TaskPool::get().run(n, helpers, body);
}

}  // namespace recis
