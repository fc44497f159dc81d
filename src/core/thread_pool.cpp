#include "core/thread_pool.h"

#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "core/error.h"

namespace mslm {
namespace {

thread_local bool tl_in_worker = false;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

// A fork-join pool tuned for many short parallel regions (a small model's forward pass runs
// thousands of them): workers spin briefly on a generation counter before sleeping, and only
// sleeping workers cost a futex wake. Work is claimed through one 64-bit word holding
// (generation, task count, next index), so a worker that wakes late can never claim a task of a
// newer region with the previous region's function.
class ThreadPool {
public:
    explicit ThreadPool(int n) : n_threads_(n) {
        for (int i = 1; i < n; ++i) workers_.emplace_back([this] { worker_loop(); });
    }
    ~ThreadPool() {
        {
            std::lock_guard<std::mutex> lock(mu_);
            stop_.store(true);
        }
        cv_.notify_all();
        for (auto& w : workers_) w.join();
    }
    int size() const { return n_threads_; }

    // Runs task(i) for i in [0, n_tasks) on the caller and the workers; n_tasks <= 65535.
    void run(int n_tasks, const std::function<void(int)>& task) {
        std::lock_guard<std::mutex> run_lock(run_mu_);  // one parallel region at a time
        task_ = &task;
        error_ = nullptr;
        pending_.store(n_tasks, std::memory_order_relaxed);
        const uint64_t gen = (generation_.load(std::memory_order_relaxed) + 1) & 0xffffffffu;
        claim_.store(pack(gen, n_tasks, 0), std::memory_order_release);
        generation_.store(gen, std::memory_order_release);
        {
            std::lock_guard<std::mutex> lock(mu_);
            if (sleepers_ > 0) cv_.notify_all();
        }
        tl_in_worker = true;
        drain(gen);
        tl_in_worker = false;
        for (int spins = 0; pending_.load(std::memory_order_acquire) != 0; ++spins) {
            if (spins < 4096)
                cpu_relax();
            else
                std::this_thread::yield();
        }
        task_ = nullptr;
        if (error_) std::rethrow_exception(error_);
    }

private:
    static uint64_t pack(uint64_t gen, uint64_t n, uint64_t idx) { return gen << 32 | n << 16 | idx; }

    // Claims and runs tasks of generation `gen` until none are left.
    void drain(uint64_t gen) {
        uint64_t state = claim_.load(std::memory_order_acquire);
        for (;;) {
            const uint64_t g = state >> 32, n = state >> 16 & 0xffff, idx = state & 0xffff;
            if (g != gen || idx >= n) return;
            if (!claim_.compare_exchange_weak(state, pack(g, n, idx + 1), std::memory_order_acq_rel,
                                              std::memory_order_acquire))
                continue;
            try {
                (*task_)(static_cast<int>(idx));
            } catch (...) {
                std::lock_guard<std::mutex> lock(error_mu_);
                if (!error_) error_ = std::current_exception();
            }
            pending_.fetch_sub(1, std::memory_order_acq_rel);
            state = claim_.load(std::memory_order_acquire);
        }
    }

    void worker_loop() {
        tl_in_worker = true;
        uint64_t seen = generation_.load(std::memory_order_acquire);
        for (;;) {
            uint64_t gen;
            int spins = 0;
            while ((gen = generation_.load(std::memory_order_acquire)) == seen) {
                if (stop_.load(std::memory_order_relaxed)) return;
                if (++spins < 2048) {
                    cpu_relax();
                    continue;
                }
                std::unique_lock<std::mutex> lock(mu_);
                ++sleepers_;
                cv_.wait(lock, [&] {
                    return stop_.load(std::memory_order_relaxed) ||
                           generation_.load(std::memory_order_acquire) != seen;
                });
                --sleepers_;
                spins = 0;
            }
            seen = gen;
            drain(gen);
        }
    }

    int n_threads_;
    std::vector<std::thread> workers_;
    std::mutex run_mu_, mu_, error_mu_;
    std::condition_variable cv_;
    int sleepers_ = 0;
    std::atomic<bool> stop_{false};
    std::atomic<uint64_t> generation_{0};
    std::atomic<uint64_t> claim_{0};
    std::atomic<int> pending_{0};
    const std::function<void(int)>* task_ = nullptr;
    std::exception_ptr error_;
};

int default_threads() {
    if (const char* env = std::getenv("MSLM_THREADS")) {
        int n = std::atoi(env);
        MSLM_CHECK(n > 0, "MSLM_THREADS={}: expected a positive integer", env);
        return n;
    }
    return std::max(1u, std::thread::hardware_concurrency());
}

std::mutex g_pool_mu;
std::unique_ptr<ThreadPool> g_pool;
int g_requested = 0;

ThreadPool& pool() {
    std::lock_guard<std::mutex> lock(g_pool_mu);
    if (!g_pool) {
        int n = g_requested > 0 ? g_requested : default_threads();
        g_pool = std::make_unique<ThreadPool>(n);
        openblas_set_num_threads(1);  // gemm.cpp splits products over this pool instead
    }
    return *g_pool;
}

}  // namespace

int num_threads() { return pool().size(); }

void set_num_threads(int n) {
    MSLM_CHECK(n > 0, "--threads {}: expected a positive integer", n);
    std::lock_guard<std::mutex> lock(g_pool_mu);
    g_requested = n;
    g_pool.reset();
}

void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t grain) {
    if (n <= 0) return;
    grain = std::max<int64_t>(grain, 1);
    int64_t max_chunks = (n + grain - 1) / grain;
    if (tl_in_worker || max_chunks == 1) {
        fn(0, n);
        return;
    }
    ThreadPool& p = pool();
    int64_t chunks = std::min<int64_t>({max_chunks, p.size(), 65535});
    if (chunks == 1) {
        fn(0, n);
        return;
    }
    int64_t step = (n + chunks - 1) / chunks;
    p.run(static_cast<int>(chunks), [&](int i) {
        int64_t begin = i * step;
        int64_t end = std::min(n, begin + step);
        if (begin < end) fn(begin, end);
    });
}

}  // namespace mslm
