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

class ThreadPool {
public:
    explicit ThreadPool(int n) : n_threads_(n) {
        for (int i = 1; i < n; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
    }
    ~ThreadPool() {
        {
            std::lock_guard<std::mutex> lock(mu_);
            stop_ = true;
        }
        cv_.notify_all();
        for (auto& w : workers_) w.join();
    }
    int size() const { return n_threads_; }

    // Runs task(i) for i in [0, n_tasks) on the caller and the workers.
    void run(int n_tasks, const std::function<void(int)>& task) {
        std::lock_guard<std::mutex> run_lock(run_mu_);  // one parallel region at a time
        {
            std::lock_guard<std::mutex> lock(mu_);
            task_ = &task;
            n_tasks_ = n_tasks;
            next_.store(0);
            pending_ = n_tasks;
            error_ = nullptr;
            ++generation_;
        }
        cv_.notify_all();
        tl_in_worker = true;
        drain();
        tl_in_worker = false;
        std::unique_lock<std::mutex> lock(mu_);
        done_cv_.wait(lock, [this] { return pending_ == 0; });
        task_ = nullptr;
        if (error_) std::rethrow_exception(error_);
    }

private:
    void drain() {
        for (;;) {
            int i = next_.fetch_add(1);
            if (i >= n_tasks_) return;
            try {
                (*task_)(i);
            } catch (...) {
                std::lock_guard<std::mutex> lock(mu_);
                if (!error_) error_ = std::current_exception();
            }
            std::lock_guard<std::mutex> lock(mu_);
            if (--pending_ == 0) done_cv_.notify_all();
        }
    }
    void worker_loop(int) {
        tl_in_worker = true;
        uint64_t seen = 0;
        for (;;) {
            {
                std::unique_lock<std::mutex> lock(mu_);
                cv_.wait(lock, [&] { return stop_ || (generation_ != seen && task_ != nullptr); });
                if (stop_) return;
                seen = generation_;
            }
            drain();
        }
    }

    int n_threads_;
    std::vector<std::thread> workers_;
    std::mutex mu_, run_mu_;
    std::condition_variable cv_, done_cv_;
    const std::function<void(int)>* task_ = nullptr;
    int n_tasks_ = 0;
    std::atomic<int> next_{0};
    int pending_ = 0;
    uint64_t generation_ = 0;
    bool stop_ = false;
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
    int64_t chunks = std::min<int64_t>(max_chunks, p.size());
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
