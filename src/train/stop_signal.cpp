#include "train/stop_signal.hpp"

#include <atomic>

namespace mics::train {

namespace {

std::atomic<int> g_requests{0};  // lock-free: written from the handler

void on_stop(int sig) {
  if (g_requests.fetch_add(1) > 0) {  // the second signal: do what it normally does
    std::signal(sig, SIG_DFL);
    std::raise(sig);
  }
}

}  // namespace

StopSignal::StopSignal() {
  g_requests = 0;
  struct sigaction sa{};
  sa.sa_handler = on_stop;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &sa, &old_term_);
  sigaction(SIGINT, &sa, &old_int_);
}

StopSignal::~StopSignal() {
  sigaction(SIGTERM, &old_term_, nullptr);
  sigaction(SIGINT, &old_int_, nullptr);
}

bool StopSignal::requested() const { return g_requests.load() > 0; }

}  // namespace mics::train
