// Train a small MLP of our own with the sharded engine: the whole public API in one program.
//
//   mics launch -n 4 --nodes 2 -- build/examples/train_mlp --strategy mics [--partition-size 2]
//       [--steps 40] [--accum 2] [--batch 16] [--lr 0.01]
//
// Model: y = W2 tanh(W1 x + b1) + b2, two units (one per layer, weights then bias in one flat
// array). Data: samples of a fixed random "teacher" function, drawn from the sample's global
// index, so every rank builds its own micro-batches. Loss: mean squared error.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "mics/mics.hpp"

namespace {

constexpr int kIn = 16, kHidden = 64, kOut = 4;

// A float in [-1, 1) from (a, b): a hash, the same on every rank.
float rnd(uint64_t a, uint64_t b) {
  uint64_t x = a * 0x9e3779b97f4a7c15ULL + b * 0xc2b2ae3d27d4eb4fULL + 0x165667b19e3779f9ULL;
  x ^= x >> 31;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 29;
  return static_cast<float>(static_cast<double>(x >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

void sample(int64_t index, float* x, float* y) {
  for (int i = 0; i < kIn; ++i) x[i] = rnd(1000 + static_cast<uint64_t>(index), i);
  for (int o = 0; o < kOut; ++o) {
    float acc = 0;
    for (int i = 0; i < kIn; ++i) acc += rnd(7, static_cast<uint64_t>(o * kIn + i)) * x[i];
    y[o] = std::sin(acc);
  }
}

// Dense layer [out, in] + bias [out]: z = W x + b for one sample.
void dense(const float* p, const float* x, float* z, int in, int out) {
  for (int o = 0; o < out; ++o) {
    float acc = p[out * in + o];
    for (int i = 0; i < in; ++i) acc += p[o * in + i] * x[i];
    z[o] = acc;
  }
}

// Accumulates dW += dz x^T, db += dz, and (when dx) dx = W^T dz.
void dense_backward(const float* p, const float* x, const float* dz, float* g, float* dx, int in,
                    int out) {
  for (int o = 0; o < out; ++o) {
    for (int i = 0; i < in; ++i) g[o * in + i] += dz[o] * x[i];
    g[out * in + o] += dz[o];
  }
  if (dx)
    for (int i = 0; i < in; ++i) {
      float acc = 0;
      for (int o = 0; o < out; ++o) acc += p[o * in + i] * dz[o];
      dx[i] = acc;
    }
}

std::string flag(int argc, char** argv, const std::string& name, const std::string& fallback) {
  for (int i = 1; i + 1 < argc; ++i)
    if (name == argv[i]) return argv[i + 1];
  return fallback;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const auto strategy = mics::topo::parse_strategy(flag(argc, argv, "--strategy", "mics"));
    const int steps = std::stoi(flag(argc, argv, "--steps", "40"));
    const int batch = std::stoi(flag(argc, argv, "--batch", "16"));
    mics::shard::EngineOptions opt;
    opt.strategy = strategy;
    opt.partition_size = std::stoi(flag(argc, argv, "--partition-size", "0"));
    opt.grad_accum = std::stoi(flag(argc, argv, "--accum", "2"));
    opt.lr = std::stof(flag(argc, argv, "--lr", "0.01"));

    std::string config = "train_mlp";
    for (int i = 1; i < argc; ++i) config += std::string(" ") + argv[i];
    auto runtime = mics::comm::Runtime::start(config);
    const int rank = runtime->rank(), world = runtime->world_size();

    mics::shard::Engine engine(*runtime, opt);
    const int sizes[2][2] = {{kIn, kHidden}, {kHidden, kOut}};  // {in, out} per unit
    for (const auto& s : sizes)
      engine.add_unit("dense" + std::to_string(s[0]), static_cast<size_t>(s[1]) * (s[0] + 1));
    engine.finalize([&](int unit, float* p) {  // the same on every rank
      const int in = sizes[unit][0], out = sizes[unit][1];
      for (int k = 0; k < out * in; ++k) p[k] = rnd(50 + unit, k) / std::sqrt(float(in));
      for (int o = 0; o < out; ++o) p[out * in + o] = 0;
    });
    if (rank == 0)
      std::printf("train_mlp: %s, %d ranks, p = %d, r = %d, %d micro-steps x %d samples per rank\n",
                  mics::topo::to_string(strategy), world, engine.partition_size(),
                  engine.replicas(), opt.grad_accum, batch);

    std::vector<float> g0(engine.unit_size(0)), g1(engine.unit_size(1));
    std::vector<float> x(kIn * batch), y(kOut * batch), h(kHidden * batch), out(kOut * batch);
    double first_loss = 0, last_loss = 0;
    for (int step = 0; step < steps; ++step) {
      double loss = 0;
      for (int micro = 0; micro < opt.grad_accum; ++micro) {
        // This rank's micro-batch of the global batch (world x accum x batch samples).
        const int64_t first = ((int64_t{step} * opt.grad_accum + micro) * world + rank) * batch;
        for (int b = 0; b < batch; ++b) sample(first + b, &x[b * kIn], &y[b * kOut]);
        // Forward: gather each unit (prefetching the next), compute, release.
        engine.prefetch(1);
        const float* p0 = engine.gather(0);
        for (int b = 0; b < batch; ++b) {
          dense(p0, &x[b * kIn], &h[b * kHidden], kIn, kHidden);
          for (int k = 0; k < kHidden; ++k) h[b * kHidden + k] = std::tanh(h[b * kHidden + k]);
        }
        engine.release(0);
        const float* p1 = engine.gather(1);
        std::vector<float> dout(kOut * batch);
        for (int b = 0; b < batch; ++b) {
          dense(p1, &h[b * kHidden], &out[b * kOut], kHidden, kOut);
          for (int o = 0; o < kOut; ++o) {
            const float d = out[b * kOut + o] - y[b * kOut + o];
            loss += d * d / (batch * kOut) / opt.grad_accum;
            dout[b * kOut + o] = 2 * d / (batch * kOut);  // d(mean squared error)/d(out)
          }
        }
        engine.release(1);
        // Backward in reverse: re-gather, compute the unit's gradient, release, reduce.
        std::fill(g1.begin(), g1.end(), 0.0f);
        std::fill(g0.begin(), g0.end(), 0.0f);
        engine.prefetch(0);
        p1 = engine.gather(1);
        std::vector<float> dh(kHidden * batch);
        for (int b = 0; b < batch; ++b)
          dense_backward(p1, &h[b * kHidden], &dout[b * kOut], g1.data(), &dh[b * kHidden], kHidden,
                         kOut);
        engine.release(1);
        engine.reduce_gradients(1, g1.data());
        p0 = engine.gather(0);
        for (int b = 0; b < batch; ++b) {
          for (int k = 0; k < kHidden; ++k) {  // tanh' = 1 - tanh^2
            const float t = h[b * kHidden + k];
            dh[b * kHidden + k] *= 1 - t * t;
          }
          dense_backward(p0, &x[b * kIn], &dh[b * kHidden], g0.data(), nullptr, kIn, kHidden);
        }
        engine.release(0);
        engine.reduce_gradients(0, g0.data());
        const auto report = engine.step();
        if (report.boundary && rank == 0)
          std::printf("step %3d  loss %.5f  grad norm %.4f%s  step %.1f ms  exposed comm %.1f ms\n",
                      step, loss, report.grad_norm, report.skipped ? " (skipped)" : "",
                      1e3 * report.step_s, 1e3 * report.exposed_comm_s);
      }
      if (step == 0) first_loss = loss;
      last_loss = loss;
    }
    const auto traffic = engine.traffic();
    if (rank == 0)
      std::printf("loss %.5f -> %.5f; rank 0 sent %llu B on the node, %llu B over the network\n",
                  first_loss, last_loss,
                  static_cast<unsigned long long>(traffic.bytes(mics::fabric::Rail::kIntra)),
                  static_cast<unsigned long long>(traffic.bytes(mics::fabric::Rail::kInter)));
    runtime->finish();
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train_mlp: %s\n", e.what());
    return 1;
  }
}
