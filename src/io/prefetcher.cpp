// Prefetcher: one rank's micro-batches read ahead on a background thread.
#include <chrono>

#include <fmt/format.h>

#include "base/error.hpp"
#include "io/dataset.hpp"

namespace mics::io {

Prefetcher::Prefetcher(const TokenDataset& data, const Sampler& sampler, int rank, int world,
                       int grad_accum, int micro_batch, uint64_t first_step, int depth)
    : data_(data),
      sampler_(sampler),
      rank_(rank),
      world_(world),
      grad_accum_(grad_accum),
      micro_batch_(micro_batch),
      depth_(depth),
      next_step_(first_step) {
  if (world < 1 || rank < 0 || rank >= world || grad_accum < 1 || micro_batch < 1 || depth < 1)
    throw Error(ErrorKind::kInvalidArgument,
                fmt::format("rank {} of world {}, grad_accum {}, micro_batch {}, depth {}", rank,
                            world, grad_accum, micro_batch, depth),
                {.layer = "io",
                 .where = "starting the data prefetcher",
                 .hint = "need 0 <= rank < world and positive grad_accum, micro_batch, depth"});
  thread_ = std::thread([this] { run(); });
}

Prefetcher::~Prefetcher() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Prefetcher::run() {
  // next_step_ and next_micro_ belong to this thread once it runs.
  const auto T = static_cast<size_t>(data_.seq_len());
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      cv_.wait(lock, [&] { return stop_ || ready_.size() < static_cast<size_t>(depth_); });
      if (stop_) return;
    }
    MicroBatch mb;
    mb.step = next_step_;
    mb.micro = next_micro_;
    try {
      mb.inputs.resize(static_cast<size_t>(micro_batch_) * T);
      mb.targets.resize(static_cast<size_t>(micro_batch_) * T);
      for (int b = 0; b < micro_batch_; ++b) {
        const uint64_t pos =
            Sampler::position(mb.step, mb.micro, rank_, b, world_, grad_accum_, micro_batch_);
        const uint64_t seq = sampler_.sequence_at(pos);
        data_.sequence(seq, mb.inputs.data() + static_cast<size_t>(b) * T,
                       mb.targets.data() + static_cast<size_t>(b) * T);
      }
    } catch (const Error&) {
      std::lock_guard<std::mutex> lock(mutex_);
      error_ = std::current_exception();
      cv_.notify_all();
      return;
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lock(mutex_);
      error_ = std::make_exception_ptr(
          Error(ErrorKind::kIo,
                fmt::format("reading step {} micro-batch {}: {}", mb.step, mb.micro, e.what()),
                {.layer = "io", .where = "the data prefetcher thread"}));
      cv_.notify_all();
      return;
    }
    if (++next_micro_ == grad_accum_) {
      next_micro_ = 0;
      ++next_step_;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ready_.push_back(std::move(mb));
    }
    cv_.notify_all();
  }
}

MicroBatch Prefetcher::next() {
  std::unique_lock<std::mutex> lock(mutex_);
  if (ready_.empty() && !error_) {
    const auto t0 = std::chrono::steady_clock::now();
    cv_.wait(lock, [&] { return !ready_.empty() || error_; });
    wait_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  // Batches read before a failure are still good: hand them out first.
  if (ready_.empty()) std::rethrow_exception(error_);
  MicroBatch mb = std::move(ready_.front());
  ready_.pop_front();
  lock.unlock();
  cv_.notify_all();
  return mb;
}

double Prefetcher::wait_seconds() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return wait_s_;
}

}  // namespace mics::io
