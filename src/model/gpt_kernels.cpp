#include "model/gpt_kernels.hpp"

#include <cblas.h>

#include <algorithm>
#include <cmath>

namespace mics::model::kernels {

namespace {

// Reductions over rows are split into blocks of this many columns (one cache line of floats):
// each column's sum is then taken by one thread in row order, whatever the thread count.
constexpr int kColumnBlock = 16;

int column_blocks(int columns) {
  return (columns + kColumnBlock - 1) / kColumnBlock;
}

size_t offset(int64_t row, int64_t width) {
  return static_cast<size_t>(row * width);
}

// Loops over fewer elements run on the calling thread: waking the team costs more than the
// work (and much more on a loaded machine). Each output is computed the same way either way.
bool worth_threads(int64_t rows, int64_t width) {
  return rows * width >= 32768;
}

}  // namespace

void layernorm_forward(const float* x, const float* w, const float* b, float* out, float* mean,
                       float* rstd, int rows, int channels) {
#pragma omp parallel for schedule(static) if (worth_threads(rows, channels))
  for (int n = 0; n < rows; ++n) {
    const float* xr = x + offset(n, channels);
    float* yr = out + offset(n, channels);
    // Two passes in double: the variance of nearly constant rows stays accurate.
    double sum = 0;
    for (int c = 0; c < channels; ++c) sum += xr[c];
    const double m = sum / channels;
    double squares = 0;
    for (int c = 0; c < channels; ++c) {
      const double d = xr[c] - m;
      squares += d * d;
    }
    const float mf = static_cast<float>(m);
    const float s = static_cast<float>(1.0 / std::sqrt(squares / channels + kLayerNormEps));
    for (int c = 0; c < channels; ++c) yr[c] = (xr[c] - mf) * s * w[c] + b[c];
    mean[n] = mf;
    rstd[n] = s;
  }
}

void layernorm_backward(const float* dout, const float* x, const float* mean, const float* rstd,
                        const float* w, float* dx, float* dw, float* db, int rows, int channels,
                        bool accumulate_dx) {
#pragma omp parallel for schedule(static) if (worth_threads(rows, channels))
  for (int n = 0; n < rows; ++n) {
    const float* xr = x + offset(n, channels);
    const float* gr = dout + offset(n, channels);
    float* dxr = dx + offset(n, channels);
    const float m = mean[n], s = rstd[n];
    // dL/dxhat = dout * w; the normalisation couples the row through its mean and variance.
    double mean_g = 0, mean_gx = 0;
    for (int c = 0; c < channels; ++c) {
      const float g = gr[c] * w[c];
      mean_g += g;
      mean_gx += static_cast<double>(g) * ((xr[c] - m) * s);
    }
    const float a = static_cast<float>(mean_g / channels);
    const float bx = static_cast<float>(mean_gx / channels);
    for (int c = 0; c < channels; ++c) {
      const float xhat = (xr[c] - m) * s;
      const float v = s * (gr[c] * w[c] - a - xhat * bx);
      dxr[c] = accumulate_dx ? dxr[c] + v : v;
    }
  }
#pragma omp parallel for schedule(static) if (worth_threads(rows, channels))
  for (int block = 0; block < column_blocks(channels); ++block) {
    const int c0 = block * kColumnBlock, c1 = std::min(channels, c0 + kColumnBlock);
    float sw[kColumnBlock] = {}, sb[kColumnBlock] = {};
    for (int n = 0; n < rows; ++n) {
      const float* xr = x + offset(n, channels);
      const float* gr = dout + offset(n, channels);
      for (int c = c0; c < c1; ++c) {
        sw[c - c0] += gr[c] * ((xr[c] - mean[n]) * rstd[n]);
        sb[c - c0] += gr[c];
      }
    }
    for (int c = c0; c < c1; ++c) {
      dw[c] = sw[c - c0];
      db[c] = sb[c - c0];
    }
  }
}

void linear_forward(const float* in, const float* w, const float* b, const float* add, float* out,
                    int rows, int in_channels, int out_channels) {
#pragma omp parallel for schedule(static) if (worth_threads(rows, out_channels))
  for (int n = 0; n < rows; ++n) {
    float* yr = out + offset(n, out_channels);
    const float* ar = add ? add + offset(n, out_channels) : nullptr;
    for (int o = 0; o < out_channels; ++o) yr[o] = (b ? b[o] : 0.0f) + (ar ? ar[o] : 0.0f);
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, out_channels, in_channels, 1.0f, in,
              in_channels, w, in_channels, 1.0f, out, out_channels);
}

void linear_backward(const float* dout, const float* in, const float* w, float* din, float* dw,
                     float* db, int rows, int in_channels, int out_channels) {
  if (din)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, in_channels, out_channels, 1.0f,
                dout, out_channels, w, in_channels, 0.0f, din, in_channels);
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out_channels, in_channels, rows, 1.0f, dout,
              out_channels, in, in_channels, 0.0f, dw, in_channels);
  if (!db) return;
#pragma omp parallel for schedule(static) if (worth_threads(rows, out_channels))
  for (int block = 0; block < column_blocks(out_channels); ++block) {
    const int o0 = block * kColumnBlock, o1 = std::min(out_channels, o0 + kColumnBlock);
    float sums[kColumnBlock] = {};
    for (int n = 0; n < rows; ++n) {
      const float* gr = dout + offset(n, out_channels);
      for (int o = o0; o < o1; ++o) sums[o - o0] += gr[o];
    }
    for (int o = o0; o < o1; ++o) db[o] = sums[o - o0];
  }
}

namespace {
constexpr float kGeluScale = 0.7978845608028654f;  // sqrt(2 / pi)
constexpr float kGeluCubic = 0.044715f;
}  // namespace

void gelu_forward(const float* x, float* out, size_t count) {
  const auto n = static_cast<int64_t>(count);
#pragma omp parallel for schedule(static) if (worth_threads(n, 1))
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    out[i] = 0.5f * v * (1.0f + std::tanh(kGeluScale * (v + kGeluCubic * v * v * v)));
  }
}

void gelu_backward(const float* x, const float* dout, float* dx, size_t count) {
  const auto n = static_cast<int64_t>(count);
#pragma omp parallel for schedule(static) if (worth_threads(n, 1))
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    const float t = std::tanh(kGeluScale * (v + kGeluCubic * v * v * v));
    const float dinner = kGeluScale * (1.0f + 3.0f * kGeluCubic * v * v);
    dx[i] = dout[i] * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * dinner);
  }
}

void attention_forward(const float* qkv, float* att, float* out, int batch, int seq_len,
                       int channels, int heads) {
  const int T = seq_len, C = channels, hs = channels / heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const size_t tt = static_cast<size_t>(T) * static_cast<size_t>(T);
  // Scores of every (b, h) as one T x T GEMM; the part above the diagonal is computed and
  // then masked (simpler than triangular blocks, at twice the flops of this GEMM).
  for (int b = 0; b < batch; ++b)
    for (int h = 0; h < heads; ++h) {
      const float* q = qkv + offset(int64_t{b} * T, 3 * C) + h * hs;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, scale, q, 3 * C, q + C, 3 * C,
                  0.0f, att + (static_cast<size_t>(b) * heads + h) * tt, T);
    }
  const int64_t total_rows = int64_t{batch} * heads * T;
#pragma omp parallel for schedule(static) if (worth_threads(total_rows, T))
  for (int64_t r = 0; r < total_rows; ++r) {
    const int t = static_cast<int>(r % T);
    float* row = att + static_cast<size_t>(r) * T;
    float mx = row[0];
    for (int j = 1; j <= t; ++j) mx = std::max(mx, row[j]);
    double sum = 0;
    for (int j = 0; j <= t; ++j) {
      row[j] = std::exp(row[j] - mx);
      sum += row[j];
    }
    const float inv = static_cast<float>(1.0 / sum);
    for (int j = 0; j <= t; ++j) row[j] *= inv;
    for (int j = t + 1; j < T; ++j) row[j] = 0.0f;
  }
  for (int b = 0; b < batch; ++b)
    for (int h = 0; h < heads; ++h) {
      const float* v = qkv + offset(int64_t{b} * T, 3 * C) + 2 * C + h * hs;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T, 1.0f,
                  att + (static_cast<size_t>(b) * heads + h) * tt, T, v, 3 * C, 0.0f,
                  out + offset(int64_t{b} * T, C) + h * hs, C);
    }
}

void attention_backward(const float* dout, const float* qkv, const float* att, float* dqkv,
                        float* scratch, int batch, int seq_len, int channels, int heads) {
  const int T = seq_len, C = channels, hs = channels / heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const size_t tt = static_cast<size_t>(T) * static_cast<size_t>(T);
  for (int b = 0; b < batch; ++b)
    for (int h = 0; h < heads; ++h) {
      const float* q = qkv + offset(int64_t{b} * T, 3 * C) + h * hs;
      const float* k = q + C;
      const float* v = q + 2 * C;
      float* dq = dqkv + offset(int64_t{b} * T, 3 * C) + h * hs;
      float* dk = dq + C;
      float* dv = dq + 2 * C;
      const float* dy = dout + offset(int64_t{b} * T, C) + h * hs;
      const float* p = att + (static_cast<size_t>(b) * heads + h) * tt;
      // dP = dY V^T and dV = P^T dY.
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, 1.0f, dy, C, v, 3 * C, 0.0f,
                  scratch, T);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, 1.0f, p, T, dy, C, 0.0f, dv,
                  3 * C);
      // Softmax backward per row: dS = P * (dP - sum_j P dP), zero where masked.
#pragma omp parallel for schedule(static) if (worth_threads(T, T))
      for (int t = 0; t < T; ++t) {
        const float* pr = p + static_cast<size_t>(t) * T;
        float* dr = scratch + static_cast<size_t>(t) * T;
        double dot = 0;
        for (int j = 0; j <= t; ++j) dot += static_cast<double>(pr[j]) * dr[j];
        const auto dotf = static_cast<float>(dot);
        for (int j = 0; j <= t; ++j) dr[j] = pr[j] * (dr[j] - dotf);
        for (int j = t + 1; j < T; ++j) dr[j] = 0.0f;
      }
      // S = scale Q K^T: dQ = scale dS K, dK = scale dS^T Q.
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T, scale, scratch, T, k, 3 * C,
                  0.0f, dq, 3 * C);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, scale, scratch, T, q, 3 * C,
                  0.0f, dk, 3 * C);
    }
}

float cross_entropy_forward(const float* logits, const int32_t* targets, float* lse, float* losses,
                            int rows, int vocab) {
#pragma omp parallel for schedule(static) if (worth_threads(rows, vocab))
  for (int n = 0; n < rows; ++n) {
    const float* lr = logits + offset(n, vocab);
    float mx = lr[0];
    for (int v = 1; v < vocab; ++v) mx = std::max(mx, lr[v]);
    double sum = 0;
    for (int v = 0; v < vocab; ++v) sum += std::exp(lr[v] - mx);
    const double log_sum = mx + std::log(sum);
    lse[n] = static_cast<float>(log_sum);
    losses[n] = static_cast<float>(log_sum - lr[targets[n]]);
  }
  double total = 0;  // in row order: the same whatever the thread count
  for (int n = 0; n < rows; ++n) total += losses[n];
  return static_cast<float>(total / rows);
}

void cross_entropy_backward(float* logits, const int32_t* targets, const float* lse, int rows,
                            int vocab) {
  const float inv_rows = 1.0f / static_cast<float>(rows);
#pragma omp parallel for schedule(static) if (worth_threads(rows, vocab))
  for (int n = 0; n < rows; ++n) {
    float* lr = logits + offset(n, vocab);
    for (int v = 0; v < vocab; ++v) lr[v] = std::exp(lr[v] - lse[n]) * inv_rows;
    lr[targets[n]] -= inv_rows;
  }
}

void embedding_forward(const int32_t* tokens, const float* wte, const float* wpe, float* out,
                       int batch, int seq_len, int channels) {
  const int rows = batch * seq_len;
#pragma omp parallel for schedule(static) if (worth_threads(rows, channels))
  for (int n = 0; n < rows; ++n) {
    const float* te = wte + offset(tokens[n], channels);
    const float* pe = wpe + offset(n % seq_len, channels);
    float* yr = out + offset(n, channels);
    for (int c = 0; c < channels; ++c) yr[c] = te[c] + pe[c];
  }
}

void embedding_backward(const int32_t* tokens, const float* dout, float* dwte, float* dwpe,
                        int batch, int seq_len, int channels) {
  const int rows = batch * seq_len;
  // Split by channel: a token seen twice is accumulated by one thread, in row order.
#pragma omp parallel for schedule(static) if (worth_threads(rows, channels))
  for (int block = 0; block < column_blocks(channels); ++block) {
    const int c0 = block * kColumnBlock, c1 = std::min(channels, c0 + kColumnBlock);
    for (int n = 0; n < rows; ++n) {
      const float* gr = dout + offset(n, channels);
      float* te = dwte + offset(tokens[n], channels);
      float* pe = dwpe + offset(n % seq_len, channels);
      for (int c = c0; c < c1; ++c) {
        te[c] += gr[c];
        pe[c] += gr[c];
      }
    }
  }
}

}  // namespace mics::model::kernels
