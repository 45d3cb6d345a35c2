#include <cmath>
#include <cstdlib>

#include <gtest/gtest.h>

#include "base/dtype.hpp"
#include "base/error.hpp"
#include "base/knobs.hpp"
#include "base/strings.hpp"

namespace mics {

TEST(Strings, ParseSize) {
  EXPECT_EQ(parse_size("4096"), 4096);
  EXPECT_EQ(parse_size("64M"), 64 << 20);
  EXPECT_EQ(parse_size("1GiB"), int64_t{1} << 30);
  EXPECT_EQ(parse_size("2KB"), 2048);
  EXPECT_FALSE(parse_size("12Q").has_value());
  EXPECT_FALSE(parse_size("").has_value());
}

TEST(DType, Bf16RoundTripAndRounding) {
  for (float f : {0.0f, 1.0f, -2.5f, 3.140625f, 65504.0f, 1e-20f}) {
    float back = bf16_to_f32(f32_to_bf16(f));
    EXPECT_NEAR(back, f, std::fabs(f) * 1.0f / 128) << f;
  }
  // 1 + 2^-8 is exactly halfway between two bf16 values: ties go to even (1.0).
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 1.0f / 256)), 1.0f);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
}

TEST(DType, HalfReduceAccumulatesInF32) {
  uint16_t a[3] = {f32_to_f16(1.0f), f32_to_f16(2.0f), f32_to_f16(-1.0f)};
  uint16_t b[3] = {f32_to_f16(0.5f), f32_to_f16(2.0f), f32_to_f16(4.0f)};
  reduce_into(a, b, 3, DType::kF16, ReduceOp::kSum);
  EXPECT_EQ(f16_to_f32(a[0]), 1.5f);
  EXPECT_EQ(f16_to_f32(a[1]), 4.0f);
  EXPECT_EQ(f16_to_f32(a[2]), 3.0f);
  reduce_into(a, b, 3, DType::kF16, ReduceOp::kMax);
  EXPECT_EQ(f16_to_f32(a[2]), 4.0f);
}

// Setting `name` to `value` makes the next read of the knobs throw a kConfig error that names
// the variable and says what it takes (`expected`, when not empty).
void expect_knob_refused(const char* name, const char* value, const char* expected) {
  setenv(name, value, 1);
  try {
    reload_knobs_for_testing();
    ADD_FAILURE() << name << "=" << value << ": expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfig);
    EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
  }
}

TEST(Knobs, BadValueNamesTheVariable) {
  expect_knob_refused("MICS_TIMEOUT_S", "soon", "");
  setenv("MICS_TIMEOUT_S", "7.5", 1);
  reload_knobs_for_testing();
  EXPECT_EQ(knobs().timeout_s, 7.5);
  unsetenv("MICS_TIMEOUT_S");
  reload_knobs_for_testing();
}

// A switch takes 1 or 0 and nothing else (here the second CUDA stream's, default on).
TEST(Knobs, SwitchTakesOneOrZero) {
  EXPECT_TRUE(knobs().cuda_overlap_wgrad);
  setenv("MICS_CUDA_OVERLAP_WGRAD", "0", 1);
  reload_knobs_for_testing();
  EXPECT_FALSE(knobs().cuda_overlap_wgrad);
  expect_knob_refused("MICS_CUDA_OVERLAP_WGRAD", "off", "1 or 0");
  unsetenv("MICS_CUDA_OVERLAP_WGRAD");
  reload_knobs_for_testing();
  EXPECT_TRUE(knobs().cuda_overlap_wgrad);
}

// A choice takes one of its names (the residual stream's and its gradient's dtypes, default bf16).
TEST(Knobs, ChoiceTakesOneOfItsNames) {
  EXPECT_TRUE(knobs().cuda_residual_bf16);
  setenv("MICS_CUDA_RESIDUAL", "fp32", 1);
  reload_knobs_for_testing();
  EXPECT_FALSE(knobs().cuda_residual_bf16);
  expect_knob_refused("MICS_CUDA_RESIDUAL", "bfloat16", "bf16 or fp32");
  unsetenv("MICS_CUDA_RESIDUAL");
  reload_knobs_for_testing();
  EXPECT_TRUE(knobs().cuda_residual_bf16);
  EXPECT_TRUE(knobs().cuda_residual_grad_bf16);
  setenv("MICS_CUDA_RESIDUAL_GRAD", "fp32", 1);
  reload_knobs_for_testing();
  EXPECT_FALSE(knobs().cuda_residual_grad_bf16);
  expect_knob_refused("MICS_CUDA_RESIDUAL_GRAD", "fp16", "bf16 or fp32");
  unsetenv("MICS_CUDA_RESIDUAL_GRAD");
  reload_knobs_for_testing();
  EXPECT_TRUE(knobs().cuda_residual_grad_bf16);
}

}  // namespace mics

#include "topo/groups.hpp"
#include "topo/partition_auto.hpp"

namespace mics {

TEST(Topo, ValidPartitionSizes) {
  EXPECT_EQ(topo::valid_partition_sizes(8, 4), (std::vector<int>{1, 2, 4, 8}));
  EXPECT_EQ(topo::valid_partition_sizes(12, 4), (std::vector<int>{1, 2, 4, 12}));
  EXPECT_EQ(topo::valid_partition_sizes(6, 3), (std::vector<int>{1, 3, 6}));
  EXPECT_EQ(topo::resolve_partition_size(topo::Strategy::kMics, 0, 8, 4), 4);
  EXPECT_EQ(topo::resolve_partition_size(topo::Strategy::kZero3, 0, 8, 4), 8);
  EXPECT_EQ(topo::resolve_partition_size(topo::Strategy::kDdp, 0, 8, 4), 1);
  try {
    topo::resolve_partition_size(topo::Strategy::kMics, 3, 8, 4);
    FAIL() << "p=3 on 8 ranks must be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("valid here: 1, 2, 4, 8"), std::string::npos) << e.what();
  }
}

TEST(Topo, AutoPartitionSizePicksTheSmallestThatFits) {
  topo::MemoryEstimate e;
  e.parameters = 1'000'000'000;             // 16 GB of model states unsharded
  e.unit_sizes = {50'000'000, 50'000'000};  // 400 MB of gather buffers
  e.activation_bytes = 1'000'000'000;
  // p=4: 4 GB + 0.4 GB + 1 GB = 5.4 GB; p=2: 9.4 GB.
  auto choice = topo::choose_partition_size(e, 6'000'000'000ULL, 16, 8);
  EXPECT_EQ(choice.partition_size, 4);
  EXPECT_EQ(choice.bytes_per_rank, 4'000'000'000ULL + 400'000'000ULL + 1'000'000'000ULL);
  EXPECT_NE(choice.explanation.find("p=4"), std::string::npos);
  EXPECT_THROW(topo::choose_partition_size(e, 1'000'000'000ULL, 16, 8), Error);
}

}  // namespace mics
