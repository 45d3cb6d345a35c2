#pragma once
// The one thread that drives the communicators of an engine, so that collectives progress
// while the caller computes. Tasks run in submission order (every rank submits the same
// collectives in the same order); an exception in a task is handed to whoever waits on it,
// and every later task fails with the same error (the communicators are unusable then).
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <future>
#include <mutex>
#include <thread>

namespace mics::shard {

class CommThread {
 public:
  CommThread();
  ~CommThread();
  CommThread(const CommThread&) = delete;
  CommThread& operator=(const CommThread&) = delete;

  std::future<void> submit(std::function<void()> task);

 private:
  void run();

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::packaged_task<void()>> queue_;
  bool stopping_ = false;
  std::exception_ptr failure_;
  std::thread thread_;
};

}  // namespace mics::shard
